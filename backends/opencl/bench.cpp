// hops-opencl-bench: times ops on the OpenCL backend against the CPU backend
// of the same libhops.so, on Qwen3.5-35B-A3B-sized shapes, as a host would
// call them (the public ABI, buffers made by the host), and prints a
// markdown table: median wall time per call, OpenCL including clFinish.
//
//   hops-opencl-bench [--provider build/plugin/libhops.so] [--tokens 1024] [--repeat 5]
//                     [--op NAME] [--dtype f32|bf16]
//
// The OpenCL device is the plugin's: HOPS_OPENCL_DEVICE (see docs/OPENCL.md).
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "device_select.hpp"
#include "hops/hops.h"

namespace {

using namespace hops::opencl;  // the backend's cl.hpp: RAII handles and check()

struct Options {
  std::string provider = "build/plugin/libhops.so";
  int64_t tokens = 1024;
  int repeat = 5;
  std::string op;     // empty: all
  bool bf16 = false;  // activations in bf16 instead of f32
};

// One tensor argument of a benchmark: its shape, value range and dtype.
struct ArgSpec {
  const char* name;
  std::vector<int64_t> shape;
  float low = -1.0f, high = 1.0f;
  bool f32 = false;    // always f32 (GDN states), whatever --dtype says
  bool index = false;  // int32 values given in `values`, kept in host memory unless on_device
  std::vector<int64_t> values = {};
  bool on_device = false;  // an index tensor in a cl_mem for the OpenCL call
};

struct Bench {
  const char* op;
  std::string shape;  // for the table
  std::vector<ArgSpec> args;
  std::map<std::string, int64_t> flags;  // bool/i64 scalars
};

// The MoE ops' index tensors for T tokens routed to k distinct experts of
// E each (uniformly at random): the ids and what moe_dispatch makes of them.
struct Routing {
  std::vector<int64_t> ids, counts, row_map;
};

Routing route(int64_t T, int64_t E, int64_t k) {
  std::mt19937 rng(1);
  Routing routing{{}, std::vector<int64_t>(static_cast<size_t>(E)), {}};
  std::vector<int64_t> experts(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) experts[static_cast<size_t>(e)] = e;
    std::shuffle(experts.begin(), experts.end(), rng);
    routing.ids.insert(routing.ids.end(), experts.begin(), experts.begin() + k);
  }
  for (int64_t id : routing.ids) ++routing.counts[static_cast<size_t>(id)];
  std::vector<int64_t> next(static_cast<size_t>(E));
  for (int64_t e = 1; e < E; ++e) {
    next[static_cast<size_t>(e)] = next[static_cast<size_t>(e - 1)] + routing.counts[e - 1];
  }
  for (int64_t id : routing.ids) routing.row_map.push_back(next[static_cast<size_t>(id)]++);
  return routing;
}

// A device-resident index tensor of `values` (an output: zeros of its size).
ArgSpec device_index(const char* name, std::vector<int64_t> shape, std::vector<int64_t> values) {
  return {name, std::move(shape), 0, 0, false, true, std::move(values), true};
}

std::vector<Bench> benches(int64_t T) {
  const int64_t H = 16, HV = 32, K = 128, V = 128, D = 8192, N = 8;
  std::vector<int64_t> slots(N);
  for (int64_t n = 0; n < N; ++n) slots[static_cast<size_t>(n)] = n;
  // Attention as Qwen3.5's full-attention layers: 16 query and 2 kv heads of
  // D = 256, causal; decode: one sequence, 4096 cached tokens in 16-row blocks.
  const int64_t Hq = 16, Hkv = 2, Dh = 256, context = 4096, block = 16;
  std::vector<int64_t> blocks(context / block), cache_slots(T);
  for (size_t b = 0; b < blocks.size(); ++b) blocks[b] = static_cast<int64_t>(b);
  for (size_t t = 0; t < cache_slots.size(); ++t) cache_slots[t] = static_cast<int64_t>(t);
  // The MoE layer of issue 15's CPU table (Qwen3.5-35B-A3B's expert width
  // and top-8, 64 experts): rows R = T k, indices on the device.
  const int64_t E = 64, k = 8, Hd = 2048, I = 512, R = T * k;
  const Routing routing = route(T, E, k);
  const std::vector<int64_t> no_slots(static_cast<size_t>(R)), no_counts(static_cast<size_t>(E));
  const std::string moe_shape = fmt::format("T={} Hd={} E={} k={} I={}", T, Hd, E, k, I);
  return {
      {"gdn_chunk_fwd",
       fmt::format("T={} H={} HV={} K=V={}", T, H, HV, K),
       {{"q", {1, T, H, K}},
        {"k", {1, T, H, K}},
        {"v", {1, T, HV, V}},
        {"g", {1, T, HV}, -0.2f, -0.01f},
        {"beta", {1, T, HV}, 0.0f, 1.0f},
        {"o", {1, T, HV, V}},
        {"final_state", {1, HV, K, V}, -1, 1, true}},
       {{"use_qk_l2norm", 1}}},
      {"conv1d_fwd",
       fmt::format("T={} D={} W=4", T, D),
       {{"x", {1, T, D}}, {"weight", {D, 4}}, {"bias", {D}}, {"y", {1, T, D}}},
       {}},
      {"gdn_recurrent",
       fmt::format("decode N={} HV={} K=V={}", N, HV, K),
       {{"q", {N, 1, H, K}},
        {"k", {N, 1, H, K}},
        {"v", {N, 1, HV, V}},
        {"g", {N, 1, HV}, -0.2f, -0.01f},
        {"beta", {N, 1, HV}, 0.0f, 1.0f},
        {"state", {N, HV, K, V}, -1, 1, true},
        {"state_indices", {N}, 0, 0, false, true, slots},
        {"o", {N, 1, HV, V}}},
       {{"use_qk_l2norm", 1}}},
      {"conv1d_update",
       fmt::format("decode N={} D={} W=4", N, D),
       {{"x", {N, D}},
        {"state", {N, D, 3}},
        {"weight", {D, 4}},
        {"state_indices", {N}, 0, 0, false, true, slots},
        {"y", {N, D}}},
       {}},
      {"gated_rmsnorm",
       fmt::format("rows={} D={}", T * HV, V),
       {{"x", {T, HV, V}}, {"z", {T, HV, V}}, {"weight", {V}}, {"y", {T, HV, V}}},
       {}},
      {"gdn_gating",
       fmt::format("rows={} HV={}", T, HV),
       {{"A_log", {HV}},
        {"a", {T, HV}},
        {"b", {T, HV}},
        {"dt_bias", {HV}},
        {"g", {T, HV}},
        {"beta", {T, HV}}},
       {}},
      {"gdn_chunk_bwd",
       fmt::format("T={} H={} HV={} K=V={}", T, H, HV, K),
       {{"q", {1, T, H, K}},
        {"k", {1, T, H, K}},
        {"v", {1, T, HV, V}},
        {"g", {1, T, HV}, -0.2f, -0.01f},
        {"beta", {1, T, HV}, 0.0f, 1.0f},
        {"do", {1, T, HV, V}},
        {"d_final_state", {1, HV, K, V}, -1, 1, true},
        {"dq", {1, T, H, K}},
        {"dk", {1, T, H, K}},
        {"dv", {1, T, HV, V}},
        {"dg", {1, T, HV}},
        {"dbeta", {1, T, HV}}},
       {{"use_qk_l2norm", 1}}},
      {"conv1d_bwd",
       fmt::format("T={} D={} W=4", T, D),
       {{"x", {1, T, D}},
        {"weight", {D, 4}},
        {"bias", {D}},
        {"dy", {1, T, D}},
        {"dx", {1, T, D}},
        {"dweight", {D, 4}},
        {"dbias", {D}}},
       {}},
      {"gated_rmsnorm_bwd",
       fmt::format("rows={} D={}", T * HV, V),
       {{"x", {T, HV, V}},
        {"z", {T, HV, V}},
        {"weight", {V}},
        {"dy", {T, HV, V}},
        {"dx", {T, HV, V}},
        {"dz", {T, HV, V}},
        {"dweight", {V}}},
       {}},
      {"attn_prefill",
       fmt::format("T={} Hq={} Hkv={} D={} causal", T, Hq, Hkv, Dh),
       {{"q", {1, T, Hq, Dh}},
        {"k", {1, T, Hkv, Dh}},
        {"v", {1, T, Hkv, Dh}},
        {"o", {1, T, Hq, Dh}},
        {"lse", {1, Hq, T}, -1, 1, true}},
       {}},
      {"attn_prefill_bwd",
       fmt::format("T={} Hq={} Hkv={} D={} causal", T, Hq, Hkv, Dh),
       {{"q", {1, T, Hq, Dh}},
        {"k", {1, T, Hkv, Dh}},
        {"v", {1, T, Hkv, Dh}},
        {"o", {1, T, Hq, Dh}},
        {"lse", {1, Hq, T}, 5, 9, true},  // about ln of the keys seen
        {"do", {1, T, Hq, Dh}},
        {"dq", {1, T, Hq, Dh}},
        {"dk", {1, T, Hkv, Dh}},
        {"dv", {1, T, Hkv, Dh}}},
       {}},
      {"attn_decode",
       fmt::format("decode N=1 context={} Hq={} Hkv={} D={}", context, Hq, Hkv, Dh),
       {{"q", {1, 1, Hq, Dh}},
        {"k_cache", {context / block, block, Hkv, Dh}},
        {"v_cache", {context / block, block, Hkv, Dh}},
        {"block_table", {1, context / block}, 0, 0, false, true, blocks},
        {"seq_lens", {1}, 0, 0, false, true, {context}},
        {"o", {1, 1, Hq, Dh}}},
       {}},
      {"kv_cache_write",
       fmt::format("T={} Hkv={} D={}", T, Hkv, Dh),
       {{"k", {T, Hkv, Dh}},
        {"v", {T, Hkv, Dh}},
        {"k_cache", {(T + block - 1) / block, block, Hkv, Dh}},
        {"v_cache", {(T + block - 1) / block, block, Hkv, Dh}},
        {"slot_mapping", {T}, 0, 0, false, true, cache_slots}},
       {}},
      {"moe_route",
       fmt::format("T={} E={} k={}", T, E, k),
       {{"logits", {T, E}, -4, 4},
        {"topk_weights", {T, k}},
        device_index("topk_ids", {T, k}, no_slots)},
       {}},
      {"moe_dispatch",
       moe_shape,
       {{"x", {T, Hd}},
        device_index("topk_ids", {T, k}, routing.ids),
        {"rows", {R, Hd}},
        device_index("counts", {E}, no_counts),
        device_index("row_map", {T, k}, no_slots)},
       {}},
      {"moe_expert_mlp",
       moe_shape,
       {{"rows", {R, Hd}},
        device_index("counts", {E}, routing.counts),
        {"gate_up_proj", {E, 2 * I, Hd}, -0.05f, 0.05f},
        {"down_proj", {E, Hd, I}, -0.05f, 0.05f},
        {"out", {R, Hd}}},
       {}},
      {"moe_combine",
       moe_shape,
       {{"rows", {R, Hd}},
        device_index("row_map", {T, k}, routing.row_map),
        {"topk_weights", {T, k}, 0, 1},
        {"y", {T, Hd}}},
       {}},
      {"moe_dispatch_bwd",
       moe_shape,
       {{"d_rows", {R, Hd}}, device_index("row_map", {T, k}, routing.row_map), {"dx", {T, Hd}}},
       {}},
      {"moe_expert_mlp_bwd",
       moe_shape,
       {{"rows", {R, Hd}},
        device_index("counts", {E}, routing.counts),
        {"gate_up_proj", {E, 2 * I, Hd}, -0.05f, 0.05f},
        {"down_proj", {E, Hd, I}, -0.05f, 0.05f},
        {"d_out", {R, Hd}},
        {"d_rows", {R, Hd}},
        {"d_gate_up_proj", {E, 2 * I, Hd}},
        {"d_down_proj", {E, Hd, I}}},
       {}},
      {"moe_combine_bwd",
       moe_shape,
       {{"rows", {R, Hd}},
        device_index("row_map", {T, k}, routing.row_map),
        {"topk_weights", {T, k}, 0, 1},
        {"dy", {T, Hd}},
        {"d_rows", {R, Hd}},
        {"d_topk_weights", {T, k}}},
       {}},
  };
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// A tensor's bytes on the host, and the same bytes in a cl_mem.
struct Tensor {
  std::vector<int64_t> shape;
  DLDataType dtype{};
  std::vector<std::byte> host;
  MemHandle buffer;  // none for index tensors that stay on the host
};

std::vector<std::byte> random_bytes(const ArgSpec& spec, bool bf16, std::mt19937& rng) {
  const int64_t n = numel(spec.shape);
  std::uniform_real_distribution<float> uniform(spec.low, spec.high);
  std::vector<std::byte> bytes;
  if (spec.index) {
    for (int64_t v : spec.values) {
      const auto i = static_cast<int32_t>(v);
      bytes.insert(bytes.end(), reinterpret_cast<const std::byte*>(&i),
                   reinterpret_cast<const std::byte*>(&i) + 4);
    }
  } else if (bf16) {
    for (int64_t i = 0; i < n; ++i) {
      const auto bits = static_cast<uint16_t>(std::bit_cast<uint32_t>(uniform(rng)) >> 16);
      bytes.insert(bytes.end(), reinterpret_cast<const std::byte*>(&bits),
                   reinterpret_cast<const std::byte*>(&bits) + 2);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float x = uniform(rng);
      bytes.insert(bytes.end(), reinterpret_cast<const std::byte*>(&x),
                   reinterpret_cast<const std::byte*>(&x) + 4);
    }
  }
  return bytes;
}

class OpenCl {
 public:
  OpenCl() {
    // The device the plugin selects (HOPS_OPENCL_DEVICE, docs/OPENCL.md).
    std::string error;
    const auto devices = list_devices(&error);
    // NOLINTNEXTLINE(concurrency-mt-unsafe): a single-threaded tool
    const auto selection = select_device(devices, std::getenv("HOPS_OPENCL_DEVICE"));
    if (!selection.device) throw std::runtime_error(devices.empty() ? error : selection.detail);
    device_ = selection.device->device;
    name_ = selection.detail;
    cl_int status = CL_SUCCESS;
    context_ = ContextHandle(clCreateContext(nullptr, 1, &device_, nullptr, nullptr, &status));
    check(status, "clCreateContext");
    queue_ = QueueHandle(clCreateCommandQueue(context_.get(), device_, 0, &status));
    check(status, "clCreateCommandQueue");
  }

  MemHandle upload(const std::vector<std::byte>& bytes) const {
    cl_int status = CL_SUCCESS;
    MemHandle buffer(clCreateBuffer(context_.get(), CL_MEM_READ_WRITE,
                                    std::max<size_t>(bytes.size(), 1), nullptr, &status));
    check(status, "clCreateBuffer");
    check(clEnqueueWriteBuffer(queue_.get(), buffer.get(), CL_TRUE, 0, bytes.size(), bytes.data(),
                               0, nullptr, nullptr),
          "clEnqueueWriteBuffer");
    return buffer;
  }
  cl_command_queue queue() const { return queue_.get(); }
  const std::string& name() const { return name_; }

 private:
  cl_device_id device_ = nullptr;
  ContextHandle context_;
  QueueHandle queue_;
  std::string name_;
};

using Clock = std::chrono::steady_clock;

// Median wall time of `repeat` calls after one warm-up, in milliseconds.
template <class Call>
double median_ms(int repeat, Call&& call) {
  call();
  std::vector<double> times;
  for (int r = 0; r < repeat; ++r) {
    const auto start = Clock::now();
    call();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void run(const Options& options) {
  void* library = dlopen(options.provider.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    // NOLINTNEXTLINE(concurrency-mt-unsafe): a single-threaded tool
    throw std::runtime_error(fmt::format("cannot open {}: {}", options.provider, dlerror()));
  }
  const auto get_api =
      reinterpret_cast<const hops_api* (*)(uint32_t)>(dlsym(library, "hops_get_api"));
  const hops_api* api = get_api ? get_api(HOPS_ABI_MAJOR) : nullptr;
  if (!api) throw std::runtime_error("no hops_get_api");
  const OpenCl cl;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): a single-threaded tool
  const char* threads = std::getenv("HOPS_NUM_THREADS");
  fmt::print("OpenCL device: {}\nCPU backend: {} threads (HOPS_NUM_THREADS)\n\n", cl.name(),
             threads ? threads : "all");
  fmt::print(
      "| op | shape | dtype | CPU ms | OpenCL ms | OpenCL / CPU |\n|---|---|---|---:|---:|---:|\n");
  std::mt19937 rng(0);
  for (const Bench& bench : benches(options.tokens)) {
    if (!options.op.empty() && options.op != bench.op) continue;
    const hops_op_desc* op = api->find_op(bench.op);
    if (!op) continue;
    std::map<std::string, Tensor> tensors;
    for (const ArgSpec& spec : bench.args) {
      const bool bf16 = options.bf16 && !spec.f32 && !spec.index;
      Tensor t{spec.shape,
               spec.index ? DLDataType{kDLInt, 32, 1}
               : bf16     ? DLDataType{kDLBfloat, 16, 1}
                          : DLDataType{kDLFloat, 32, 1},
               random_bytes(spec, bf16, rng), MemHandle()};
      if (!spec.index || spec.on_device) t.buffer = cl.upload(t.host);
      tensors.emplace(spec.name, std::move(t));
    }
    // The argument list for the host's tensors or for their cl_mem twins.
    auto call_on = [&](bool opencl) {
      std::vector<DLTensor> dl(static_cast<size_t>(op->num_args));
      std::vector<hops_value> values(static_cast<size_t>(op->num_args));
      for (int32_t i = 0; i < op->num_args; ++i) {
        const hops_arg_desc& arg = *hops_op_arg(op, i);
        hops_value& value = values[static_cast<size_t>(i)];
        const int64_t flag =
            bench.flags.contains(arg.name) ? bench.flags.at(arg.name) : arg.default_i64;
        if (arg.kind == HOPS_ARG_F64) value.f64 = arg.default_f64;
        if (arg.kind == HOPS_ARG_I64) value.i64 = flag;
        if (arg.kind == HOPS_ARG_BOOL) value.boolean = flag != 0;
        if (arg.kind > HOPS_ARG_TENSOR_INOUT) continue;
        value.tensor = nullptr;
        auto found = tensors.find(arg.name);
        if (found == tensors.end()) continue;
        Tensor& t = found->second;
        const bool device = opencl && t.buffer;
        DLTensor& d = dl[static_cast<size_t>(i)];
        d.data = device ? static_cast<void*>(t.buffer.get()) : static_cast<void*>(t.host.data());
        d.device = device ? DLDevice{kDLOpenCL, 0} : DLDevice{kDLCPU, 0};
        d.ndim = static_cast<int32_t>(t.shape.size());
        d.dtype = t.dtype;
        d.shape = t.shape.data();
        value.tensor = &d;
      }
      const hops_exec exec{sizeof(hops_exec),
                           opencl ? DLDevice{kDLOpenCL, 0} : DLDevice{kDLCPU, 0},
                           opencl ? cl.queue() : nullptr,
                           0,
                           0,
                           nullptr};
      if (api->call(op, &exec, values.data(), op->num_args) != HOPS_OK) {
        throw std::runtime_error(fmt::format("{}: {}", bench.op, api->last_error()));
      }
      if (opencl) check(clFinish(cl.queue()), "clFinish");
    };
    const double cpu = median_ms(options.repeat, [&] { call_on(false); });
    const double opencl = median_ms(options.repeat, [&] { call_on(true); });
    fmt::print("| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} |\n", bench.op, bench.shape,
               options.bf16 ? "bf16" : "f32", cpu, opencl, opencl / cpu);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--provider" && has_value) {
      options.provider = argv[++i];
    } else if (arg == "--tokens" && has_value) {
      options.tokens = std::atoll(argv[++i]);
    } else if (arg == "--repeat" && has_value) {
      options.repeat = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--op" && has_value) {
      options.op = argv[++i];
    } else if (arg == "--dtype" && has_value) {
      options.bf16 = std::string(argv[++i]) == "bf16";
    } else {
      fmt::print(stderr,
                 "usage: hops-opencl-bench [--provider PATH] [--tokens T] [--repeat N] [--op NAME] "
                 "[--dtype f32|bf16]\n");
      return 2;
    }
  }
  try {
    run(options);
  } catch (const std::exception& e) {
    fmt::print(stderr, "hops-opencl-bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
