// gdn_gating.cl: the Qwen3.5 gate of the gdn family. Tensors are [..., HV];
// lead_offset() (common.cl) turns a row number into each tensor's offset.

// g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b); one item per element.
kernel void gdn_gating(global const uchar* A_log, long A_log_off, int A_log_dtype, long A_log_st,
                       global const x_t* a, long a_off, long8 a_lead, long a_last,
                       global const uchar* b, long b_off, int b_dtype, long8 b_lead, long b_last,
                       global const uchar* dt_bias, long dt_off, int dt_dtype, long dt_st,
                       global uchar* g, long g_off, int g_dtype, long8 g_lead, long g_last,
                       global uchar* beta, long beta_off, int beta_dtype, long8 beta_lead,
                       long beta_last,
                       long8 shape, int dims, long rows, long HV, float softplus_beta,
                       float softplus_threshold) {
  const long item = get_global_id(0);
  if (item >= rows * HV) return;
  const long row = item / HV, h = item % HV;
  const float rate = exp(load_any(A_log, A_log_off + h * A_log_st, A_log_dtype));
  const float bias = load_any(dt_bias, dt_off + h * dt_st, dt_dtype);
  const float a_value = LOAD_X(a, a_off + lead_offset(row, shape, a_lead, dims) + h * a_last);
  const float b_value =
      load_any(b, b_off + lead_offset(row, shape, b_lead, dims) + h * b_last, b_dtype);
  store_any(g, g_off + lead_offset(row, shape, g_lead, dims) + h * g_last, g_dtype,
            -rate * softplus_f(a_value + bias, softplus_beta, softplus_threshold));
  store_any(beta, beta_off + lead_offset(row, shape, beta_lead, dims) + h * beta_last, beta_dtype,
            sigmoid_f(b_value));
}
