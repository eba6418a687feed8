// hops-call: lists the ops of a hops provider, or runs any one of them by
// name on random host tensors and reports output checksums and timing.
//
// There is no per-op code here: the command line is parsed against the op's
// argument descriptors, and its typed entry point `desc->fn` is called through
// a libffi call interface built from the same descriptors.

#include <dlfcn.h>
#include <ffi.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hops/hops.h"

namespace {

constexpr std::string_view kHelp = R"(usage:
  hops-call [--provider PATH] --list [OP]
  hops-call [--provider PATH] OP ARG=VALUE... [--dtype f32|f16|bf16] [--repeat N]
            [--seed S] [--threads N]

Runs any op of a hops provider on host (CPU) tensors, calling its typed entry
point through libffi, and prints a checksum of every output and the median
wall time of the calls.

  --provider PATH  the provider library (default: $HOPS_LIBRARY)
  --list [OP]      print every op (or OP) with its arguments, then exit
  --dtype T        dtype of the float tensors (default f32); an argument that
                   does not accept T gets its first accepted dtype (f32 for GDN
                   states, i32 for index tensors)
  --repeat N       timed calls after one untimed warm-up call (default 1)
  --seed S         seed of the random inputs (default 0)
  --threads N      upper bound on CPU worker threads (default 0: all)

Arguments, by the names --list shows:
  NAME=2x64x4x32        a tensor of that shape: inputs and inouts hold uniform
                        random values in [-1, 1], outputs start at zero
  NAME=[0,100,256]      a 1-D tensor holding these values (index tensors)
  NAME:T=...            either of the above with dtype T (f32 f16 bf16 f64 i32 i64)
  NAME=0.1  NAME=1      a scalar (f64, i64, or bool as 0/1/true/false)
Optional tensors left out are passed as NULL; scalars left out take their
descriptor default. Checksums (sum and sum of |x|, in float64) are those of
the warm-up call, so they do not depend on --repeat.

example:
  hops-call --provider build/plugin/libhops.so gdn_recurrent q=1x1x16x128 \
      k=1x1x16x128 v=1x1x32x128 g=1x1x32 beta=1x1x32 state=1x32x128x128 \
      o=1x1x32x128 --dtype bf16 --repeat 100
)";

// A mistake on the command line (exit status 2); other errors exit with 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void usage_error(fmt::format_string<Args...> format, Args&&... args) {
  throw UsageError(fmt::format(format, std::forward<Args>(args)...));
}

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw std::runtime_error(fmt::format(format, std::forward<Args>(args)...));
}

// ---- dtypes -----------------------------------------------------------------

struct DType {
  std::string_view name;
  uint32_t bit;  // HOPS_DTYPE_*
  DLDataType dl;
};

// In order of preference when an argument does not accept --dtype.
constexpr std::array<DType, 6> kDTypes{{
    {"f32", HOPS_DTYPE_F32, {kDLFloat, 32, 1}},
    {"f16", HOPS_DTYPE_F16, {kDLFloat, 16, 1}},
    {"bf16", HOPS_DTYPE_BF16, {kDLBfloat, 16, 1}},
    {"f64", HOPS_DTYPE_F64, {kDLFloat, 64, 1}},
    {"i32", HOPS_DTYPE_I32, {kDLInt, 32, 1}},
    {"i64", HOPS_DTYPE_I64, {kDLInt, 64, 1}},
}};

const DType& dtype_named(std::string_view name) {
  for (const DType& dtype : kDTypes) {
    if (dtype.name == name) return dtype;
  }
  usage_error("unknown dtype '{}' (expected f32, f16, bf16, f64, i32 or i64)", name);
}

std::string dtype_mask_names(uint32_t mask) {
  std::string names;
  for (const DType& dtype : kDTypes) {
    if (mask & dtype.bit) names += fmt::format("{}{}", names.empty() ? "" : "|", dtype.name);
  }
  return names;
}

// IEEE binary16 and bfloat16, rounding to nearest even.
uint16_t f16_from_float(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t magnitude = bits & 0x7fffffff;
  if (magnitude > 0x7f800000) return sign | 0x7e00;   // NaN
  if (magnitude >= 0x477ff000) return sign | 0x7c00;  // rounds to infinity
  if (magnitude < 0x38800000) {                       // subnormal: a multiple of 2^-24
    const float scaled = std::bit_cast<float>(magnitude) * 0x1p24f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  const uint32_t rebiased = magnitude - 0x38000000;  // exponent bias 127 -> 15
  return sign | static_cast<uint16_t>((rebiased + 0xfff + ((rebiased >> 13) & 1)) >> 13);
}

float f16_to_float(uint16_t half) {
  const float sign = half & 0x8000 ? -1.0f : 1.0f;
  const uint32_t exponent = (half >> 10) & 0x1f, mantissa = half & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  return sign * std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
}

uint16_t bf16_from_float(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

float bf16_to_float(uint16_t value) { return std::bit_cast<float>(uint32_t{value} << 16); }

// ---- host tensors -------------------------------------------------------------

std::string shape_text(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ","));
}

struct FreeDeleter {
  void operator()(void* memory) const { std::free(memory); }
};

// The whole of `text` as a number, or nothing.
template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// A compact row-major host tensor that owns its memory; dl() is what crosses the ABI.
class HostTensor {
 public:
  HostTensor(const DType& dtype, std::vector<int64_t> shape)
      : dtype_(&dtype), shape_(std::move(shape)) {
    size_ = 1;
    for (int64_t dim : shape_) {
      if (dim > 0 && size_ > (size_t{1} << 48) / static_cast<size_t>(dim)) {
        usage_error("shape {} is too large", shape_text(shape_));
      }
      size_ *= static_cast<size_t>(dim);
    }
    // Cache-line aligned, like the buffers of a real host; zeroed.
    const size_t bytes = std::max<size_t>(64, (size_ * dtype.dl.bits / 8 + 63) / 64 * 64);
    data_.reset(static_cast<std::byte*>(std::aligned_alloc(64, bytes)));
    if (!data_) fail("out of host memory for a tensor of {} bytes", bytes);
    std::memset(data_.get(), 0, bytes);
    dl_ = {data_.get(),
           {kDLCPU, 0},
           static_cast<int32_t>(shape_.size()),
           dtype.dl,
           shape_.data(),
           nullptr,
           0};
  }

  const DType& dtype() const { return *dtype_; }
  std::span<const int64_t> shape() const { return shape_; }
  size_t size() const { return size_; }
  const DLTensor* dl() const { return &dl_; }

  double get(size_t i) const {
    switch (dtype_->bit) {
      case HOPS_DTYPE_F32:
        return as<float>()[i];
      case HOPS_DTYPE_F16:
        return f16_to_float(as<uint16_t>()[i]);
      case HOPS_DTYPE_BF16:
        return bf16_to_float(as<uint16_t>()[i]);
      case HOPS_DTYPE_F64:
        return as<double>()[i];
      case HOPS_DTYPE_I32:
        return as<int32_t>()[i];
      default:
        return static_cast<double>(as<int64_t>()[i]);
    }
  }

  // Element i of a float tensor.
  void set(size_t i, double value) {
    switch (dtype_->bit) {
      case HOPS_DTYPE_F32:
        as<float>()[i] = static_cast<float>(value);
        break;
      case HOPS_DTYPE_F16:
        as<uint16_t>()[i] = f16_from_float(static_cast<float>(value));
        break;
      case HOPS_DTYPE_BF16:
        as<uint16_t>()[i] = bf16_from_float(static_cast<float>(value));
        break;
      default:  // f64; integer tensors are filled by set_text only
        as<double>()[i] = value;
        break;
    }
  }

  // Element i from its text: an integer dtype takes only an integer in its
  // range (std::from_chars: no nan, inf, fraction or exponent), a float
  // dtype any finite or infinite number.
  void set_text(size_t i, std::string_view text, const char* name) {
    if (dtype_->bit == HOPS_DTYPE_I32 || dtype_->bit == HOPS_DTYPE_I64) {
      const std::optional<int64_t> value = parse_number<int64_t>(text);
      const bool fits =
          value && (dtype_->bit == HOPS_DTYPE_I64 || (*value >= INT32_MIN && *value <= INT32_MAX));
      if (!fits) {
        usage_error("'{}' holds {}: entry {} must be an integer in its range, got '{}'", name,
                    dtype_->name, i, text);
      }
      if (dtype_->bit == HOPS_DTYPE_I32) {
        as<int32_t>()[i] = static_cast<int32_t>(*value);
      } else {
        as<int64_t>()[i] = *value;
      }
      return;
    }
    const std::optional<double> value = parse_number<double>(text);
    if (!value) usage_error("'{}': entry {} must be a number, got '{}'", name, i, text);
    set(i, *value);
  }

 private:
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(data_.get());
  }

  const DType* dtype_;
  std::vector<int64_t> shape_;  // dl_.shape points here; a move keeps the buffer
  size_t size_;
  std::unique_ptr<std::byte, FreeDeleter> data_;
  DLTensor dl_;
};

// ---- command line -------------------------------------------------------------

struct Options {
  bool help = false;
  bool list = false;
  std::string provider;
  std::string op;
  std::vector<std::string_view> arguments;  // NAME[:T]=VALUE
  const DType* dtype = &kDTypes[0];
  int64_t repeat = 1;
  uint64_t seed = 0;
  int64_t threads = 0;
};

template <class T>
T parse_option_number(std::string_view option, std::string_view text, T minimum) {
  const std::optional<T> value = parse_number<T>(text);
  if (!value || *value < minimum)
    usage_error("{} expects an integer >= {}, got '{}'", option, minimum, text);
  return *value;
}

Options parse_options(std::span<char*> argv) {
  Options options;
  if (const char* library = std::getenv("HOPS_LIBRARY")) options.provider = library;
  for (size_t i = 1; i < argv.size(); ++i) {
    const std::string_view word = argv[i];
    const auto value = [&] {
      if (i + 1 == argv.size()) usage_error("{} expects a value", word);
      return std::string_view(argv[++i]);
    };
    if (word == "--help" || word == "-h")
      options.help = true;
    else if (word == "--list")
      options.list = true;
    else if (word == "--provider")
      options.provider = value();
    else if (word == "--dtype")
      options.dtype = &dtype_named(value());
    else if (word == "--repeat")
      options.repeat = parse_option_number<int64_t>(word, value(), 1);
    else if (word == "--seed")
      options.seed = parse_option_number<uint64_t>(word, value(), 0);
    else if (word == "--threads")
      options.threads = parse_option_number<int64_t>(word, value(), 0);
    else if (word.starts_with("-"))
      usage_error("unknown option '{}'", word);
    else if (word.find('=') != std::string_view::npos)
      options.arguments.push_back(word);
    else if (options.op.empty())
      options.op = word;
    else
      usage_error("expected NAME=VALUE, got '{}'", word);
  }
  if (options.help) return options;
  if (options.provider.empty())
    usage_error("no provider: pass --provider PATH or set HOPS_LIBRARY");
  if (!options.list && options.op.empty()) usage_error("no op given (see --list)");
  if (options.threads > INT32_MAX) usage_error("--threads is out of range");
  return options;
}

// "2x64x4x32" -> {2, 64, 4, 32}
std::vector<int64_t> parse_shape(std::string_view text) {
  std::vector<int64_t> shape;
  for (size_t begin = 0; begin <= text.size();) {
    const size_t end = std::min(text.find('x', begin), text.size());
    const std::optional<int64_t> dim = parse_number<int64_t>(text.substr(begin, end - begin));
    if (!dim || *dim < 0) usage_error("expected a shape like 2x64x4x32, got '{}'", text);
    shape.push_back(*dim);
    begin = end + 1;
  }
  return shape;
}

// "[0,100,256]" -> {"0", "100", "256"}: each item is parsed by the tensor's
// dtype (set_values), so that integers never pass through a double.
std::vector<std::string_view> split_values(std::string_view text) {
  std::vector<std::string_view> items;
  if (!text.starts_with('[') || !text.ends_with(']')) {
    usage_error("expected values like [0,100,256], got '{}'", text);
  }
  const std::string_view list = text.substr(1, text.size() - 2);
  for (size_t begin = 0; !list.empty() && begin <= list.size();) {
    const size_t end = std::min(list.find(',', begin), list.size());
    items.push_back(list.substr(begin, end - begin));
    begin = end + 1;
  }
  return items;
}

// ---- provider -------------------------------------------------------------------

struct LibraryCloser {
  void operator()(void* library) const { dlclose(library); }
};

struct Provider {
  std::unique_ptr<void, LibraryCloser> library;  // keeps `api` and its descriptors alive
  const hops_api* api = nullptr;
};

Provider open_provider(const std::string& path) {
  Provider provider;
  provider.library.reset(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!provider.library) fail("cannot load provider: {}", dlerror());
  // POSIX guarantees that a dlsym result converts to a function pointer.
  const auto get_api =
      reinterpret_cast<hops_get_api_fn>(dlsym(provider.library.get(), "hops_get_api"));
  if (!get_api) fail("{} is not a hops provider: it does not export hops_get_api", path);
  provider.api = get_api(HOPS_ABI_MAJOR);
  if (!provider.api) fail("{} does not speak hops ABI {}", path, HOPS_ABI_MAJOR);
  if (!HOPS_HAS_FIELD(provider.api, hops_api, set_allocator)) {
    fail("{}: its hops_api table is smaller than ABI {}.0 requires ({} bytes)", path,
         HOPS_ABI_MAJOR, provider.api->struct_size);
  }
  return provider;
}

// A string from the provider; a sloppy one may leave it NULL.
std::string_view or_empty(const char* text) { return text ? text : ""; }

std::string_view kind_name(int32_t kind) {
  static constexpr std::array<std::string_view, 6> kNames{"in",  "out", "inout",
                                                          "i64", "f64", "bool"};
  return kind >= 0 && kind < static_cast<int32_t>(kNames.size()) ? kNames[kind] : "?";
}

bool is_tensor(const hops_arg_desc& arg) { return arg.kind <= HOPS_ARG_TENSOR_INOUT; }

std::string default_text(const hops_arg_desc& arg) {
  switch (arg.kind) {
    case HOPS_ARG_I64:
      return fmt::format("default {}", arg.default_i64);
    case HOPS_ARG_F64:
      return fmt::format("default {}", arg.default_f64);
    case HOPS_ARG_BOOL:
      return fmt::format("default {}", arg.default_i64 != 0);
    default:
      return "";
  }
}

void print_op(const hops_op_desc& op) {
  fmt::print("\n{} (since {}.{}): {}\n", or_empty(op.name), op.since_major, op.since_minor,
             or_empty(op.doc));
  using Row = std::array<std::string, 6>;  // name, kind, optional, dtypes, shape or default, doc
  std::vector<Row> rows;
  for (int32_t i = 0; i < op.num_args; ++i) {
    const hops_arg_desc& arg = *hops_op_arg(&op, i);
    const bool tensor = is_tensor(arg);
    rows.push_back({std::string(or_empty(arg.name)), std::string(kind_name(arg.kind)),
                    tensor && arg.optional ? "optional" : "",
                    tensor ? dtype_mask_names(arg.dtypes) : "",
                    tensor ? std::string(or_empty(arg.shape)) : default_text(arg),
                    std::string(or_empty(arg.doc))});
  }
  std::array<size_t, 6> width{};
  for (const Row& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const Row& row : rows) {
    fmt::print("  {:{}}  {:{}}  {:{}}  {:{}}  {:{}}  {}\n", row[0], width[0], row[1], width[1],
               row[2], width[2], row[3], width[3], row[4], width[4], row[5]);
  }
}

const hops_op_desc& find_op(const hops_api& api, const std::string& name) {
  const hops_op_desc* op = api.find_op(name.c_str());
  if (!op) usage_error("the provider has no op '{}' (see --list)", name);
  return *op;
}

void print_list(const Options& options, const hops_api& api) {
  fmt::print("provider {}: version {}, ABI {}.{}\n", options.provider, or_empty(api.version),
             api.abi_major, api.abi_minor);
  if (!options.op.empty()) return print_op(find_op(api, options.op));
  for (int32_t i = 0; i < api.backend_count(); ++i) {
    const hops_backend_info& backend = *api.backend_at(i);
    fmt::print("backend {}: {} ({})\n", or_empty(backend.name),
               backend.available ? "available" : "unavailable", or_empty(backend.detail));
  }
  for (int32_t i = 0; i < api.op_count(); ++i) print_op(*api.op_at(i));
}

// ---- binding the arguments of one call -----------------------------------------

// The values of a call in descriptor order, and the tensors they point to.
struct Arguments {
  std::vector<std::optional<HostTensor>> tensors;  // per argument; sized once, so addresses hold
  std::vector<hops_value> values;
};

// --dtype where the argument accepts it, else its first accepted dtype.
const DType& default_dtype(const hops_arg_desc& arg, const DType& preferred) {
  if (arg.dtypes & preferred.bit) return preferred;
  for (const DType& dtype : kDTypes) {
    if (arg.dtypes & dtype.bit) return dtype;
  }
  return preferred;  // an empty mask: let the provider say what it wants
}

HostTensor make_tensor(const hops_arg_desc& arg, const DType& dtype, std::string_view text,
                       std::mt19937_64& random) {
  if (text.starts_with('[')) {
    const std::vector<std::string_view> items = split_values(text);
    HostTensor tensor(dtype, {static_cast<int64_t>(items.size())});
    for (size_t i = 0; i < items.size(); ++i) tensor.set_text(i, items[i], arg.name);
    return tensor;
  }
  HostTensor tensor(dtype, parse_shape(text));
  if (arg.kind == HOPS_ARG_TENSOR_OUT) return tensor;
  if (!(dtype.bit & (HOPS_DTYPE_FLOATS | HOPS_DTYPE_F64))) {
    usage_error("'{}' is an integer tensor: give its values, e.g. {}=[0,4,7]", arg.name, arg.name);
  }
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  for (size_t i = 0; i < tensor.size(); ++i) tensor.set(i, uniform(random));
  return tensor;
}

hops_value parse_scalar(const hops_arg_desc& arg, std::string_view text) {
  hops_value value{};
  bool ok = false;
  if (arg.kind == HOPS_ARG_I64) {
    const auto number = parse_number<int64_t>(text);
    ok = number.has_value();
    value.i64 = number.value_or(0);
  } else if (arg.kind == HOPS_ARG_F64) {
    const auto number = parse_number<double>(text);
    ok = number.has_value();
    value.f64 = number.value_or(0.0);
  } else {
    ok = text == "0" || text == "1" || text == "false" || text == "true";
    value.boolean = text == "1" || text == "true";
  }
  if (!ok)
    usage_error("'{}' is a scalar of type {}, got '{}'", arg.name, kind_name(arg.kind), text);
  return value;
}

// The arguments the typed entry point takes: those of the op's first version
// (an argument appended in a later minor, since_minor above the op's, is
// reachable through api->call only and gets its default here).
int32_t typed_arity(const hops_op_desc& op) {
  int32_t n = 0;
  while (n < op.num_args) {
    const hops_arg_desc* arg = hops_op_arg(&op, n);
    if (HOPS_HAS_FIELD(arg, hops_arg_desc, since_minor) && arg->since_minor > op.since_minor) break;
    ++n;
  }
  return n;
}

Arguments bind_arguments(const hops_op_desc& op, const Options& options) {
  struct Given {
    std::string_view dtype, value;
  };
  std::vector<std::optional<Given>> given(op.num_args);
  for (std::string_view word : options.arguments) {
    const size_t equals = word.find('=');
    const std::string_view key = word.substr(0, equals), value = word.substr(equals + 1);
    const size_t colon = key.find(':');
    const std::string_view name = key.substr(0, colon);
    const std::string_view dtype = colon == std::string_view::npos ? "" : key.substr(colon + 1);
    int32_t index = 0;
    while (index < op.num_args && or_empty(hops_op_arg(&op, index)->name) != name) ++index;
    if (index == op.num_args) usage_error("{} has no argument '{}' (see --list)", op.name, name);
    if (index >= typed_arity(op)) {
      usage_error("argument '{}' came after {}'s first version: its typed entry cannot take it",
                  name, op.name);
    }
    if (given[index]) usage_error("argument '{}' is given twice", name);
    given[index] = Given{dtype, value};
  }

  Arguments arguments{std::vector<std::optional<HostTensor>>(op.num_args),
                      std::vector<hops_value>(op.num_args)};
  // Tensors are filled in descriptor order, so the inputs depend on --seed
  // alone and not on the order of the command line.
  std::mt19937_64 random(options.seed);
  for (int32_t i = 0; i < op.num_args; ++i) {
    const hops_arg_desc& arg = *hops_op_arg(&op, i);
    hops_value& value = arguments.values[i];
    if (!is_tensor(arg)) {
      if (given[i] && !given[i]->dtype.empty())
        usage_error("'{}' is a scalar and takes no dtype", arg.name);
      if (given[i])
        value = parse_scalar(arg, given[i]->value);
      else if (arg.kind == HOPS_ARG_F64)
        value.f64 = arg.default_f64;
      else if (arg.kind == HOPS_ARG_I64)
        value.i64 = arg.default_i64;
      else
        value.boolean = arg.default_i64 != 0;
    } else if (given[i]) {
      const DType& dtype = given[i]->dtype.empty() ? default_dtype(arg, *options.dtype)
                                                   : dtype_named(given[i]->dtype);
      value.tensor =
          arguments.tensors[i].emplace(make_tensor(arg, dtype, given[i]->value, random)).dl();
    } else if (!arg.optional) {
      usage_error("{} needs tensor '{}' {}", op.name, or_empty(arg.name), or_empty(arg.shape));
    }
  }
  return arguments;
}

// ---- calling through libffi -------------------------------------------------------

// A call of an op's typed entry point, `hops_status fn(const hops_exec*,
// <one parameter per argument of its first version>)`, with a call interface
// built from its descriptor and bound to the argument values once, so timed
// calls do only the call itself.
class TypedCall {
 public:
  TypedCall(const hops_op_desc& op, const hops_exec* exec, std::span<hops_value> values)
      : op_(op), exec_(exec) {
    if (!op.fn) fail("{} has no typed entry point", op.name);
    types_.push_back(&ffi_type_pointer);
    pointers_.push_back(&exec_);
    for (int32_t i = 0; i < typed_arity(op); ++i) {
      switch (hops_op_arg(&op, i)->kind) {
        case HOPS_ARG_I64:
          types_.push_back(&ffi_type_sint64);
          break;
        case HOPS_ARG_F64:
          types_.push_back(&ffi_type_double);
          break;
        case HOPS_ARG_BOOL:
          types_.push_back(&ffi_type_uint8);
          break;  // C's bool: one byte, 0 or 1
        default:
          types_.push_back(&ffi_type_pointer);
          break;
      }
      pointers_.push_back(&values[i]);  // every member of the hops_value union starts here
    }
    if (ffi_prep_cif(&cif_, FFI_DEFAULT_ABI, static_cast<unsigned>(types_.size()), &ffi_type_sint32,
                     types_.data()) != FFI_OK) {
      fail("libffi cannot describe the signature of {}", op.name);
    }
  }
  TypedCall(const TypedCall&) = delete;  // cif_ and pointers_ point into the object
  TypedCall& operator=(const TypedCall&) = delete;

  hops_status operator()() {
    ffi_sarg status = 0;  // libffi widens integer results to a full register
    ffi_call(&cif_, op_.fn, &status, pointers_.data());
    return static_cast<hops_status>(status);
  }

 private:
  const hops_op_desc& op_;
  const hops_exec* exec_;
  std::vector<ffi_type*> types_;
  std::vector<void*> pointers_;  // one per parameter: where its value is
  ffi_cif cif_{};
};

std::string duration_text(double seconds) {
  if (seconds < 1e-3) return fmt::format("{:.1f} us", seconds * 1e6);
  if (seconds < 1.0) return fmt::format("{:.3f} ms", seconds * 1e3);
  return fmt::format("{:.3f} s", seconds);
}

int run_op(const Options& options, const hops_api& api) {
  const hops_op_desc& op = find_op(api, options.op);
  Arguments arguments = bind_arguments(op, options);
  const hops_exec exec{
      sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, static_cast<int32_t>(options.threads), nullptr};
  TypedCall call(op, &exec, arguments.values);
  const auto checked_call = [&] {
    const hops_status status = call();
    if (status != HOPS_OK) fail("{}: {}", api.status_name(status), api.last_error());
  };

  checked_call();  // warm-up: caches, thread pool, scratch pools
  fmt::print("{}\n", op.name);
  for (int32_t i = 0; i < op.num_args; ++i) {
    const hops_arg_desc& arg = *hops_op_arg(&op, i);
    const std::optional<HostTensor>& tensor = arguments.tensors[i];
    if (!tensor || arg.kind == HOPS_ARG_TENSOR_IN) continue;
    double sum = 0, abs_sum = 0;
    for (size_t e = 0; e < tensor->size(); ++e) {
      sum += tensor->get(e);
      abs_sum += std::abs(tensor->get(e));
    }
    fmt::print("  {} {} {}: sum {:.9g}, sum|x| {:.9g}\n", arg.name, tensor->dtype().name,
               shape_text(tensor->shape()), sum, abs_sum);
  }

  std::vector<double> seconds;
  for (int64_t r = 0; r < options.repeat; ++r) {
    const auto start = std::chrono::steady_clock::now();
    checked_call();
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const size_t middle = seconds.size() / 2;
  const double median =
      seconds.size() % 2 ? seconds[middle] : (seconds[middle - 1] + seconds[middle]) / 2;
  fmt::print("time: median {} over {} call{}\n", duration_text(median), seconds.size(),
             seconds.size() == 1 ? "" : "s");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options({argv, static_cast<size_t>(argc)});
    if (options.help) {
      fmt::print("{}", kHelp);
      return 0;
    }
    const Provider provider = open_provider(options.provider);
    if (options.list) {
      print_list(options, *provider.api);
      return 0;
    }
    return run_op(options, *provider.api);
  } catch (const UsageError& e) {
    fmt::print(stderr, "hops-call: {}\n(hops-call --help shows the usage)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "hops-call: {}\n", e.what());
    return 1;
  }
}
