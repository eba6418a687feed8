// Every op of the plugin, in the order the ABI lists them. Adding an op adds
// one line here (append only: indices are part of the ABI) plus its files.
#include "ops/conv1d.hpp"
#include "ops/gdn.hpp"
#include "ops/norm.hpp"
#include "registry.hpp"

namespace hops {

std::span<const OpDef* const> all_ops() {
  static const OpDef* const table[] = {
      &op_def<GdnChunkFwd>(),     &op_def<GdnRecurrent>(), &op_def<GdnGating>(),
      &op_def<GatedRmsNorm>(),    &op_def<Conv1dFwd>(),    &op_def<Conv1dUpdate>(),
      &op_def<GatedRmsNormBwd>(), &op_def<Conv1dBwd>(),    &op_def<GdnChunkBwd>(),
  };
  return table;
}

}  // namespace hops
