// The gdn family's calls besides its reference cases: the typed entry
// points fed by argument name, the wrong calls and the threaded calls.
#include <cmath>
#include <cstddef>
#include <cstring>

#include "gdn_calls.hpp"

namespace hops::conformance {

// ---- typed calls -------------------------------------------------------------------

hops_status gdn_chunk_fwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_chunk_fwd_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("g"), a.tensor("beta"),
      a.tensor("initial_state"), a.tensor("cu_seqlens"), a.tensor("A_log"), a.tensor("dt_bias"),
      a.tensor("o"), a.tensor("final_state"), a.f64("scale"), a.flag("use_qk_l2norm"),
      a.flag("state_v_first"));
}

hops_status gdn_recurrent_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_recurrent_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("g"), a.tensor("beta"),
      a.tensor("state"), a.tensor("state_indices"), a.tensor("cu_seqlens"), a.tensor("A_log"),
      a.tensor("dt_bias"), a.tensor("o"), a.f64("scale"), a.flag("use_qk_l2norm"),
      a.flag("state_v_first"));
}

hops_status gdn_gating_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_gating_fn>(op)(exec, a.tensor("A_log"), a.tensor("a"), a.tensor("b"),
                                       a.tensor("dt_bias"), a.tensor("g"), a.tensor("beta"),
                                       a.f64("softplus_beta"), a.f64("softplus_threshold"));
}

hops_status gdn_chunk_bwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_chunk_bwd_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("g"), a.tensor("beta"),
      a.tensor("initial_state"), a.tensor("cu_seqlens"), a.tensor("do"), a.tensor("d_final_state"),
      a.tensor("dq"), a.tensor("dk"), a.tensor("dv"), a.tensor("dg"), a.tensor("dbeta"),
      a.tensor("dh0"), a.f64("scale"), a.flag("use_qk_l2norm"), a.flag("state_v_first"));
}

// ---- gdn_chunk_fwd: B=1 T=5 H=2 HV=4 K=8 V=6, with both states -------------

Invocation gdn_chunk_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Array64 g = random.uniform({1, 5, 4}, -0.2, -0.01);
  Invocation call(ctx, op);
  call.tensor("q", filled(d, DType::f32, random, {1, 5, 2, 8}))
      .tensor("k", filled(d, DType::f32, random, {1, 5, 2, 8}))
      .tensor("v", filled(d, DType::f32, random, {1, 5, 4, 6}))
      .tensor("g", Tensor::input(d, DType::f32, g))
      .tensor("beta", filled(d, DType::f32, random, {1, 5, 4}))
      .tensor("initial_state", filled(d, DType::f32, random, {1, 4, 8, 6}))
      .tensor("o", f32(d, {1, 5, 4, 6}))
      .tensor("final_state", f32(d, {1, 4, 8, 6}))
      .flag("use_qk_l2norm", true);
  return call;
}

std::vector<BadCall> gdn_chunk_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  auto without_states = [](Invocation& call) {
    call.tensor("initial_state", {}).tensor("final_state", {});
  };
  // Varlen calls drop the states: N changes with cu_seqlens.
  auto varlen = [&](const std::vector<int64_t>& cu, DType dtype = DType::i32) {
    Tensor t = Tensor::indices(*ctx.host, dtype == DType::f32 ? DType::i32 : dtype, cu);
    if (dtype == DType::f32) {
      Array64 values({static_cast<int64_t>(cu.size())});
      for (size_t i = 0; i < cu.size(); ++i) values.data[i] = static_cast<double>(cu[i]);
      t = Tensor::input(d, DType::f32, values);
    }
    return [=](Invocation& call) {
      without_states(call);
      call.tensor("cu_seqlens", t);
    };
  };
  // q viewed backwards along K: valid memory, negative stride.
  const Tensor reversed_q = f32(d, {1, 5, 2, 8}).view(7, {1, 5, 2, 8}, {80, 16, 8, -1});
  return {
      {"q is NULL", {"q"}, set("q", {})},
      {"q has dtype int32", {"q"}, set("q", Tensor::empty(d, DType::i32, {1, 5, 2, 8}))},
      {"q has dtype float32x2 (lanes=2)",
       {"q"},
       patch("q", [](DLTensor& t) { t.dtype.lanes = 2; })},
      {"k is bf16 while q is f32", {"k"}, set("k", Tensor::empty(d, DType::bf16, {1, 5, 2, 8}))},
      {"o is f16 while q is f32", {"o"}, set("o", Tensor::empty(d, DType::f16, {1, 5, 4, 6}))},
      {"initial_state is f16",
       {"initial_state"},
       set("initial_state", Tensor::empty(d, DType::f16, {1, 4, 8, 6}))},
      {"q has rank 3", {"q"}, set("q", f32(d, {1, 5, 16}))},
      {"k has K=9 while q has K=8", {"k"}, set("k", f32(d, {1, 5, 2, 9}))},
      {"HV=4 is not a multiple of H=3",
       {"q", "k", "v"},
       [q = f32(d, {1, 5, 3, 8}), k = f32(d, {1, 5, 3, 8})](Invocation& call) {
         call.tensor("q", q).tensor("k", k);
       }},
      {"o has V=7 while v has V=6", {"o"}, set("o", f32(d, {1, 5, 4, 7}))},
      {"g has HV=3 while v has HV=4", {"g"}, set("g", f32(d, {1, 5, 3}))},
      {"o aliases v", {"o", "v"}, same_as("o", "v")},
      {"final_state aliases initial_state",
       {"final_state", "initial_state"},
       same_as("final_state", "initial_state")},
      {"o has a zero stride", {"o"}, patch("o", [](DLTensor& t) { t.strides[3] = 0; })},
      {"q has a negative stride", {"q"}, set("q", reversed_q)},
      {"v has data NULL with 120 elements",
       {"v"},
       patch("v", [](DLTensor& t) { t.data = nullptr; })},
      // Vulkan: a device that none of the runner's backends uses, so it is
      // foreign whichever backend is under test.
      {"q lives on kDLVulkan, the call on the backend's device",
       {"q"},
       patch("q",
             [](DLTensor& t) {
               t.device = {kDLVulkan, 0};
             })},
      {"cu_seqlens does not start at 0: [1,5]", {"cu_seqlens"}, varlen({1, 5})},
      {"cu_seqlens decreases: [0,3,2,5]", {"cu_seqlens"}, varlen({0, 3, 2, 5})},
      {"cu_seqlens ends at 4, T=5: [0,2,4]", {"cu_seqlens"}, varlen({0, 2, 4})},
      {"cu_seqlens has dtype f32", {"cu_seqlens"}, varlen({0, 2, 5}, DType::f32)},
      {"cu_seqlens with B=2",
       {"cu_seqlens"},
       [cu = varlen({0, 5}), qk = f32(d, {2, 5, 2, 8}), v = f32(d, {2, 5, 4, 6}),
        o = f32(d, {2, 5, 4, 6}), gate = f32(d, {2, 5, 4})](Invocation& call) {
         cu(call);
         call.tensor("q", qk).tensor("k", qk).tensor("v", v).tensor("o", o);
         call.tensor("g", gate).tensor("beta", gate);
       }},
      {"state_v_first with [N,HV,K,V] states (K != V)",
       {"initial_state", "final_state"},
       [](Invocation& call) { call.flag("state_v_first", true); }},
      {"A_log without dt_bias", {"A_log", "dt_bias"}, set("A_log", f32(d, {4}))},
      {"scale is NaN", {"scale"}, [](Invocation& call) { call.f64("scale", NAN); }},
      {"beta_mode is 3", {"beta_mode"}, [](Invocation& call) { call.i64("beta_mode", 3); }},
      {"exec struct_size is 0", {"exec"}, [](Invocation& call) { call.exec().struct_size = 0; }},
      {"exec struct_size ends before the stream",
       {"exec"},
       [](Invocation& call) { call.exec().struct_size = offsetof(hops_exec, stream); }},
      {"exec device kDLVulkan, tensors on the backend's device",
       {"exec", "q"},
       [](Invocation& call) {
         call.exec().device = {kDLVulkan, 0};
       }},
      // From ABI 1.1 a shorter list gives the trailing arguments their
      // defaults, but a required one cannot be left out (a 1.0 provider
      // takes only the full list); a longer list is wrong.
      ctx.api.abi_minor >= 1 ? BadCall{"api->call with num_args 9, leaving out the required 'o'",
                                       {"o"},
                                       [](Invocation& call) { call.num_args(9); }}
                             : BadCall{"api->call with num_args one short (ABI 1.0)",
                                       {},
                                       [](Invocation& call) { call.num_args(13); }},
      {"api->call with num_args one past the descriptor's (15 arguments since 1.3)",
       {},
       [](Invocation& call) { call.num_args(16); }},
      // Issue 11's memory-safety classes: a zero divisor, a zero dim hiding a
      // huge one, strides whose spans overflow, an enum out of its range.
      {"HV=0 (v, g, beta, o with no value heads)",
       {"v"},
       [](Invocation& call) {
         for (std::string_view name : {"v", "g", "beta", "o"}) {
           call.patch(name, [](DLTensor& t) { t.shape[2] = 0; });
         }
         call.tensor("initial_state", {}).tensor("final_state", {});
       }},
      {"T=0 with V=2^60 (v and o)",
       {"v"},
       [](Invocation& call) {
         for (std::string_view name : {"q", "k", "v", "g", "beta", "o"}) {
           call.patch(name, [name](DLTensor& t) {
             t.shape[1] = 0;
             if (name == "v" || name == "o") t.shape[3] = int64_t{1} << 60;
           });
         }
         call.tensor("initial_state", {}).tensor("final_state", {});
       }},
      {"T=0 with K=2^20 and V=2^30: a state [HV,K,V] of 2^52 elements",
       {"v"},
       [](Invocation& call) {
         for (std::string_view name : {"q", "k", "v", "g", "beta", "o"}) {
           call.patch(name, [name](DLTensor& t) {
             t.shape[1] = 0;
             if (name == "q" || name == "k") t.shape[3] = int64_t{1} << 20;
             if (name == "v" || name == "o") t.shape[3] = int64_t{1} << 30;
           });
         }
         call.tensor("initial_state", {}).tensor("final_state", {});
       }},
      {"o has the stride 2^62 along T",
       {"o"},
       patch("o", [](DLTensor& t) { t.strides[1] = int64_t{1} << 62; })},
      {"q has the stride 2^62 along T",
       {"q"},
       patch("q", [](DLTensor& t) { t.strides[1] = int64_t{1} << 62; })},
      {"q has device_type 999",
       {"q"},
       patch("q",
             [](DLTensor& t) {
               const int32_t type = 999;
               std::memcpy(&t.device.device_type, &type, sizeof type);
             })},
      {"exec device_type 999",
       {"exec"},
       [](Invocation& call) {
         const int32_t type = 999;
         std::memcpy(&call.exec().device.device_type, &type, sizeof type);
       }},
  };
}

// ---- gdn_recurrent: N=3 T=1 H=HV=2 K=V=4, pool S=4, state_indices [2,-1,0] ----

Invocation gdn_recurrent_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Array64 g = random.uniform({3, 1, 2}, -0.2, -0.01);
  Invocation call(ctx, op);
  call.tensor("q", filled(d, DType::f32, random, {3, 1, 2, 4}))
      .tensor("k", filled(d, DType::f32, random, {3, 1, 2, 4}))
      .tensor("v", filled(d, DType::f32, random, {3, 1, 2, 4}))
      .tensor("g", Tensor::input(d, DType::f32, g))
      .tensor("beta", filled(d, DType::f32, random, {3, 1, 2}))
      .tensor("state", filled(d, DType::f32, random, {4, 2, 4, 4}))
      .tensor("state_indices", Tensor::indices(d, DType::i32, {2, -1, 0}))
      .tensor("o", f32(d, {3, 1, 2, 4}))
      .flag("use_qk_l2norm", true);
  return call;
}

std::vector<BadCall> gdn_recurrent_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  auto slots = [&](const std::vector<int64_t>& values) {
    return set("state_indices", Tensor::indices(*ctx.host, DType::i32, values));
  };
  return {
      {"state_indices entry 4 >= S=4", {"state_indices"}, slots({2, -1, 4})},
      {"beta_mode is -2", {"beta_mode"}, [](Invocation& call) { call.i64("beta_mode", -2); }},
      {"state_indices entry -2", {"state_indices"}, slots({2, -2, 0})},
      {"state_indices names slot 0 twice", {"state_indices"}, slots({0, -1, 0})},
      {"state_indices has 2 entries for N=3", {"state_indices"}, slots({2, 0})},
      {"state_indices has dtype f32", {"state_indices"}, set("state_indices", f32(d, {3}))},
      {"no state_indices and N=3 > S=2",
       {"state_indices", "state"},
       [state = f32(d, {2, 2, 4, 4})](Invocation& call) {
         call.tensor("state_indices", {}).tensor("state", state);
       }},
      {"state is f16", {"state"}, set("state", Tensor::empty(d, DType::f16, {4, 2, 4, 4}))},
      {"state has HV=3", {"state"}, set("state", f32(d, {4, 3, 4, 4}))},
      {"o aliases q", {"o", "q"}, same_as("o", "q")},
      {"o overlaps the state pool",
       {"o", "state"},
       [](Invocation& call) {
         call.tensor("o", call.tensor("state").view(0, {3, 1, 2, 4}, {8, 8, 4, 1}));
       }},
  };
}

// ---- gdn_gating: a, b, g, beta [4,6], A_log and dt_bias [6] -------------------

Invocation gdn_gating_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("A_log", filled(d, DType::f32, random, {6}))
      .tensor("a", filled(d, DType::f32, random, {4, 6}))
      .tensor("b", filled(d, DType::f32, random, {4, 6}))
      .tensor("dt_bias", filled(d, DType::f32, random, {6}))
      .tensor("g", f32(d, {4, 6}))
      .tensor("beta", f32(d, {4, 6}));
  return call;
}

std::vector<BadCall> gdn_gating_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"b has shape [4,5] while a has [4,6]", {"b"}, set("b", f32(d, {4, 5}))},
      {"A_log has 5 entries for HV=6", {"A_log"}, set("A_log", f32(d, {5}))},
      {"dt_bias is NULL", {"dt_bias"}, set("dt_bias", {})},
      {"g aliases beta", {"g", "beta"}, same_as("g", "beta")},
      {"softplus_beta is NaN",
       {"softplus_beta"},
       [](Invocation& call) { call.f64("softplus_beta", NAN); }},
  };
}

// ---- gdn_chunk_bwd: B=1 T=5 H=2 HV=4 K=8 V=6, both states and dh0 ----------

Invocation gdn_chunk_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Array64 g = random.uniform({1, 5, 4}, -0.2, -0.01);
  Invocation call(ctx, op);
  call.tensor("q", filled(d, DType::f32, random, {1, 5, 2, 8}))
      .tensor("k", filled(d, DType::f32, random, {1, 5, 2, 8}))
      .tensor("v", filled(d, DType::f32, random, {1, 5, 4, 6}))
      .tensor("g", Tensor::input(d, DType::f32, g))
      .tensor("beta", filled(d, DType::f32, random, {1, 5, 4}))
      .tensor("initial_state", filled(d, DType::f32, random, {1, 4, 8, 6}))
      .tensor("do", filled(d, DType::f32, random, {1, 5, 4, 6}))
      .tensor("d_final_state", filled(d, DType::f32, random, {1, 4, 8, 6}))
      .tensor("dq", f32(d, {1, 5, 2, 8}))
      .tensor("dk", f32(d, {1, 5, 2, 8}))
      .tensor("dv", f32(d, {1, 5, 4, 6}))
      .tensor("dg", f32(d, {1, 5, 4}))
      .tensor("dbeta", f32(d, {1, 5, 4}))
      .tensor("dh0", f32(d, {1, 4, 8, 6}))
      .flag("use_qk_l2norm", true);
  return call;
}

std::vector<BadCall> gdn_chunk_bwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"do is NULL", {"do"}, set("do", {})},
      {"do is bf16 while q is f32", {"do"}, set("do", Tensor::empty(d, DType::bf16, {1, 5, 4, 6}))},
      {"do has V=7 while v has V=6", {"do"}, set("do", f32(d, {1, 5, 4, 7}))},
      {"d_final_state is f16",
       {"d_final_state"},
       set("d_final_state", Tensor::empty(d, DType::f16, {1, 4, 8, 6}))},
      {"d_final_state has HV=3", {"d_final_state"}, set("d_final_state", f32(d, {1, 3, 8, 6}))},
      {"dh0 without initial_state", {"dh0"}, set("initial_state", {})},
      {"dh0 has N=2 for one sequence", {"dh0"}, set("dh0", f32(d, {2, 4, 8, 6}))},
      {"dq has H=4 while q has H=2", {"dq"}, set("dq", f32(d, {1, 5, 4, 8}))},
      {"dk is NULL", {"dk"}, set("dk", {})},
      {"dv is f16 while q is f32", {"dv"}, set("dv", Tensor::empty(d, DType::f16, {1, 5, 4, 6}))},
      {"dg is bf16 while g is f32", {"dg"}, set("dg", Tensor::empty(d, DType::bf16, {1, 5, 4}))},
      {"dbeta has HV=3 while beta has HV=4", {"dbeta"}, set("dbeta", f32(d, {1, 5, 3}))},
      {"dq aliases q", {"dq", "q"}, same_as("dq", "q")},
      {"dv aliases do", {"dv", "do"}, same_as("dv", "do")},
      {"dk overlaps dq (rows 1-4 of dq are rows 0-3 of dk)",
       {"dk", "dq"},
       [both = f32(d, {1, 6, 2, 8})](Invocation& call) {
         call.tensor("dq", both.view(0, {1, 5, 2, 8}, {80, 16, 8, 1}));
         call.tensor("dk", both.view(16, {1, 5, 2, 8}, {80, 16, 8, 1}));
       }},
      {"dh0 aliases d_final_state", {"dh0", "d_final_state"}, same_as("dh0", "d_final_state")},
      {"dg has a zero stride", {"dg"}, patch("dg", [](DLTensor& t) { t.strides[1] = 0; })},
      {"state_v_first with [N,HV,K,V] states (K != V)",
       {"initial_state", "d_final_state", "dh0"},
       [](Invocation& call) { call.flag("state_v_first", true); }},
      {"cu_seqlens ends at 4, T=5: [0,2,4]",
       {"cu_seqlens"},
       set("cu_seqlens", Tensor::indices(*ctx.host, DType::i32, {0, 2, 4}))},
      {"scale is -1", {"scale"}, [](Invocation& call) { call.f64("scale", -1.0); }},
      {"T=0 with V=2^60 (v, do, dv)",
       {"v", "do", "dv"},
       [](Invocation& call) {
         for (std::string_view name :
              {"q", "k", "v", "g", "beta", "do", "dq", "dk", "dv", "dg", "dbeta"}) {
           call.patch(name, [name](DLTensor& t) {
             t.shape[1] = 0;
             if (name == "v" || name == "do" || name == "dv") t.shape[3] = int64_t{1} << 60;
           });
         }
         call.tensor("initial_state", {}).tensor("d_final_state", {}).tensor("dh0", {});
       }},
      {"HV=0 (v, g, beta and their gradients with no value heads)",
       {"v"},
       [](Invocation& call) {
         for (std::string_view name : {"v", "g", "beta", "do", "dv", "dg", "dbeta"}) {
           call.patch(name, [](DLTensor& t) { t.shape[2] = 0; });
         }
         call.tensor("initial_state", {}).tensor("d_final_state", {}).tensor("dh0", {});
       }},
      {"dv has the stride 2^62 along T",
       {"dv"},
       patch("dv", [](DLTensor& t) { t.strides[1] = int64_t{1} << 62; })},
  };
}

// ---- threads: medium calls --------------------------------------------------------

Invocation gdn_chunk_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("q", random_input(ctx, random, {2, 200, 2, 32}, -1, 1))
      .tensor("k", random_input(ctx, random, {2, 200, 2, 32}, -1, 1))
      .tensor("v", random_input(ctx, random, {2, 200, 4, 32}, -1, 1))
      .tensor("g", random_input(ctx, random, {2, 200, 4}, -0.2, -0.01))
      .tensor("beta", random_input(ctx, random, {2, 200, 4}, 0, 1))
      .tensor("initial_state", random_input(ctx, random, {2, 4, 32, 32}, -1, 1))
      .tensor("o", Tensor::empty(ctx.device, DType::f32, {2, 200, 4, 32}))
      .tensor("final_state", Tensor::empty(ctx.device, DType::f32, {2, 4, 32, 32}))
      .flag("use_qk_l2norm", true);
  return call;
}

Invocation gdn_chunk_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("q", random_input(ctx, random, {1, 300, 2, 32}, -1, 1))
      .tensor("k", random_input(ctx, random, {1, 300, 2, 32}, -1, 1))
      .tensor("v", random_input(ctx, random, {1, 300, 6, 32}, -1, 1))
      .tensor("g", random_input(ctx, random, {1, 300, 6}, -0.2, -0.01))
      .tensor("beta", random_input(ctx, random, {1, 300, 6}, 0, 1))
      .tensor("initial_state", random_input(ctx, random, {3, 6, 32, 32}, -1, 1))
      .tensor("cu_seqlens", Tensor::indices(ctx.index_device(), DType::i32, {0, 100, 101, 300}))
      .tensor("do", random_input(ctx, random, {1, 300, 6, 32}, -1, 1))
      .tensor("d_final_state", random_input(ctx, random, {3, 6, 32, 32}, -1, 1))
      .tensor("dq", Tensor::empty(ctx.device, DType::f32, {1, 300, 2, 32}))
      .tensor("dk", Tensor::empty(ctx.device, DType::f32, {1, 300, 2, 32}))
      .tensor("dv", Tensor::empty(ctx.device, DType::f32, {1, 300, 6, 32}))
      .tensor("dg", Tensor::empty(ctx.device, DType::f32, {1, 300, 6}))
      .tensor("dbeta", Tensor::empty(ctx.device, DType::f32, {1, 300, 6}))
      .tensor("dh0", Tensor::empty(ctx.device, DType::f32, {3, 6, 32, 32}))
      .flag("use_qk_l2norm", true);
  return call;
}

}  // namespace hops::conformance
