// The op families of the plugin, one line each. A family's ops, their checks
// and their ABI indices are in plugin/ops/<family>.{hpp,cpp}; op_at() lists
// them by index (append-only: an index is part of the ABI).
#include "ops/attn.hpp"
#include "ops/conv1d.hpp"
#include "ops/gdn.hpp"
#include "ops/moe.hpp"
#include "ops/moe_ep.hpp"
#include "ops/norm.hpp"
#include "registry.hpp"

namespace hops {

std::span<const OpDef* const> all_ops() {
  static const std::vector<const OpDef*> table = abi_order({
      gdn_ops(),
      conv1d_ops(),
      norm_ops(),
      attn_ops(),
      moe_ops(),
      moe_ep_ops(),
  });
  return table;
}

}  // namespace hops
