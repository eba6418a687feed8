// norm.cl: gated_rmsnorm and its backward. Tensors are [..., last]; the host
// merges the leading dims where it can and passes at most 7 of them,
// innermost first, in long8s: lead_offset() (common.cl) turns a row number
// into each tensor's offset.

// y = x rsqrt(mean(x^2) + eps) w silu(z); one work-group per row, its size a
// power of two, `partial` one float per item.
kernel void gated_rmsnorm(global const x_t* x, long x_off, long8 x_lead, long x_last,
                          global const x_t* z, long z_off, long8 z_lead, long z_last,
                          global const uchar* w, long w_off, int w_dtype, long w_st,
                          global x_t* y, long y_off, long8 y_lead, long y_last,
                          long8 shape, int dims, long D, float eps, local float* partial) {
  const long row = get_group_id(0);
  const int lid = get_local_id(0), size = get_local_size(0);
  const long xo = x_off + lead_offset(row, shape, x_lead, dims);
  float sum = 0.0f;
  for (long d = lid; d < D; d += size) {
    const float value = LOAD_X(x, xo + d * x_last);
    sum += value * value;
  }
  partial[lid] = sum;
  for (int half_size = size / 2; half_size > 0; half_size /= 2) {
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid < half_size) partial[lid] += partial[lid + half_size];
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  const float inverse_rms = 1.0f / sqrt(partial[0] / (float)D + eps);
  const long zo = z_off + lead_offset(row, shape, z_lead, dims);
  const long yo = y_off + lead_offset(row, shape, y_lead, dims);
  for (long d = lid; d < D; d += size) {
    const float value = LOAD_X(x, xo + d * x_last) * inverse_rms *
                        load_any(w, w_off + d * w_st, w_dtype) * silu_f(LOAD_X(z, zo + d * z_last));
    STORE_X(y, yo + d * y_last, value);
  }
}

// CPU devices: a work-item per row, 16 channels at a time as float16 (x, z
// and y have last stride 1 and D % 16 == 0): no barriers, explicit SIMD.
kernel void gated_rmsnorm_rows(global const x_t* x, long x_off, long8 x_lead, long x_last,
                               global const x_t* z, long z_off, long8 z_lead, long z_last,
                               global const uchar* w, long w_off, int w_dtype, long w_st,
                               global x_t* y, long y_off, long8 y_lead, long y_last,
                               long8 shape, int dims, long D, float eps, long rows) {
  const long row = get_global_id(0);
  if (row >= rows) return;
  const long xo = x_off + lead_offset(row, shape, x_lead, dims);
  float16 squares = (float16)(0.0f);
  for (long d = 0; d < D; d += 16) {
    const float16 value = LOAD16_X(x, xo + d);
    squares += value * value;
  }
  const float8 half_sum = squares.lo + squares.hi;
  const float4 quarter_sum = half_sum.lo + half_sum.hi;
  const float2 pair = quarter_sum.lo + quarter_sum.hi;
  const float inverse_rms = 1.0f / sqrt((pair.x + pair.y) / (float)D + eps);
  const long zo = z_off + lead_offset(row, shape, z_lead, dims);
  const long yo = y_off + lead_offset(row, shape, y_lead, dims);
  for (long d = 0; d < D; d += 16) {
    const float16 weight = gather_any16(w, w_off + d * w_st, w_st, w_dtype);
    STORE16_X(y, yo + d, LOAD16_X(x, xo + d) * inverse_rms * weight * silu_f16(LOAD16_X(z, zo + d)));
  }
}

// Backward of gated_rmsnorm (docs/OPS.md): a work-group walks a block of
// `rows_per_group` rows in order, each row with local reductions of sum x^2
// and sum dn x (`sums`: two floats per item). Besides dx and dz, the block's
// share of dweight goes to partial[group * D + d]: channel d belongs to one
// work-item of the group, so no atomics; gated_rmsnorm_bwd_dweight adds the
// shares up in group order.
kernel void gated_rmsnorm_bwd(global const x_t* x, long x_off, long8 x_lead, long x_last,
                              global const x_t* z, long z_off, long8 z_lead, long z_last,
                              global const uchar* w, long w_off, int w_dtype, long w_st,
                              global const x_t* dy, long dy_off, long8 dy_lead, long dy_last,
                              global x_t* dx, long dx_off, long8 dx_lead, long dx_last,
                              global x_t* dz, long dz_off, long8 dz_lead, long dz_last,
                              long8 shape, int dims, long D, float eps, long rows,
                              long rows_per_group, global float* partial, local float* sums) {
  const long group = get_group_id(0);
  const int lid = get_local_id(0), size = get_local_size(0);
  global float* share = partial + group * D;
  for (long d = lid; d < D; d += size) share[d] = 0.0f;
  const long last = min((group + 1) * rows_per_group, rows);
  for (long row = group * rows_per_group; row < last; ++row) {
    const long xo = x_off + lead_offset(row, shape, x_lead, dims);
    const long zo = z_off + lead_offset(row, shape, z_lead, dims);
    const long dyo = dy_off + lead_offset(row, shape, dy_lead, dims);
    float squares = 0.0f, dn_x = 0.0f;
    for (long d = lid; d < D; d += size) {
      const float xd = LOAD_X(x, xo + d * x_last);
      const float dn =
          LOAD_X(dy, dyo + d * dy_last) * load_any(w, w_off + d * w_st, w_dtype) *
          silu_f(LOAD_X(z, zo + d * z_last));
      squares += xd * xd;
      dn_x += dn * xd;
    }
    barrier(CLK_LOCAL_MEM_FENCE);  // the previous row's readers of sums are done
    sums[lid] = squares;
    sums[size + lid] = dn_x;
    work_group_sum_pairs(sums, lid, size);
    const float inverse_rms = 1.0f / sqrt(sums[0] / (float)D + eps);
    const float correction = inverse_rms * inverse_rms * sums[size] / (float)D;
    const long dxo = dx_off + lead_offset(row, shape, dx_lead, dims);
    const long dzo = dz_off + lead_offset(row, shape, dz_lead, dims);
    for (long d = lid; d < D; d += size) {
      const float xd = LOAD_X(x, xo + d * x_last), zd = LOAD_X(z, zo + d * z_last);
      const float dyd = LOAD_X(dy, dyo + d * dy_last);
      const float weight = load_any(w, w_off + d * w_st, w_dtype);
      const float n = xd * inverse_rms, silu_z = silu_f(zd);
      STORE_X(dx, dxo + d * dx_last, inverse_rms * (dyd * weight * silu_z - xd * correction));
      STORE_X(dz, dzo + d * dz_last, dyd * n * weight * silu_grad_f(zd));
      share[d] += dyd * n * silu_z;
    }
  }
}

// dweight[d]: the groups' shares added in group order, one item per channel.
kernel void gated_rmsnorm_bwd_dweight(global const float* partial, long groups, long D,
                                      global uchar* dw, long dw_off, int dw_dtype, long dw_st) {
  const long d = get_global_id(0);
  if (d >= D) return;
  float sum = 0.0f;
  for (long group = 0; group < groups; ++group) sum += partial[group * D + d];
  store_any(dw, dw_off + d * dw_st, dw_dtype, sum);
}

// CPU devices: gated_rmsnorm_bwd with a work-item per block of rows, 16
// channels at a time as float16 (x, z, dy, dx and dz have last stride 1 and
// D % 16 == 0): no barriers, explicit SIMD; the same dweight shares.
kernel void gated_rmsnorm_bwd_rows(global const x_t* x, long x_off, long8 x_lead, long x_last,
                                   global const x_t* z, long z_off, long8 z_lead, long z_last,
                                   global const uchar* w, long w_off, int w_dtype, long w_st,
                                   global const x_t* dy, long dy_off, long8 dy_lead, long dy_last,
                                   global x_t* dx, long dx_off, long8 dx_lead, long dx_last,
                                   global x_t* dz, long dz_off, long8 dz_lead, long dz_last,
                                   long8 shape, int dims, long D, float eps, long rows,
                                   long rows_per_group, global float* partial, long blocks) {
  const long block = get_global_id(0);
  if (block >= blocks) return;
  global float* share = partial + block * D;
  for (long d = 0; d < D; d += 16) vstore16((float16)(0.0f), 0, share + d);
  const long last = min((block + 1) * rows_per_group, rows);
  for (long row = block * rows_per_group; row < last; ++row) {
    const long xo = x_off + lead_offset(row, shape, x_lead, dims);
    const long zo = z_off + lead_offset(row, shape, z_lead, dims);
    const long dyo = dy_off + lead_offset(row, shape, dy_lead, dims);
    float16 squares = (float16)(0.0f), dn_x = (float16)(0.0f);
    for (long d = 0; d < D; d += 16) {
      const float16 xd = LOAD16_X(x, xo + d);
      const float16 weight = gather_any16(w, w_off + d * w_st, w_st, w_dtype);
      squares += xd * xd;
      dn_x += LOAD16_X(dy, dyo + d) * weight * silu_f16(LOAD16_X(z, zo + d)) * xd;
    }
    const float inverse_rms = 1.0f / sqrt(sum16(squares) / (float)D + eps);
    const float correction = inverse_rms * inverse_rms * sum16(dn_x) / (float)D;
    const long dxo = dx_off + lead_offset(row, shape, dx_lead, dims);
    const long dzo = dz_off + lead_offset(row, shape, dz_lead, dims);
    for (long d = 0; d < D; d += 16) {
      const float16 xd = LOAD16_X(x, xo + d), zd = LOAD16_X(z, zo + d);
      const float16 dyd = LOAD16_X(dy, dyo + d);
      const float16 weight = gather_any16(w, w_off + d * w_st, w_st, w_dtype);
      const float16 gate = 1.0f / (1.0f + exp(-zd));
      const float16 n = xd * inverse_rms, silu_z = zd * gate;
      STORE16_X(dx, dxo + d, inverse_rms * (dyd * weight * silu_z - xd * correction));
      STORE16_X(dz, dzo + d, dyd * n * weight * gate * (1.0f + zd * (1.0f - gate)));
      vstore16(vload16(0, share + d) + dyd * n * silu_z, 0, share + d);
    }
  }
}
