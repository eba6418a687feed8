"""Large host outputs on transparent huge pages.

A fresh output of tens of MiB from numpy or torch's CPU allocator is a new
anonymous mapping of 4 KiB pages, and the kernel that writes it first takes a
page fault per page: a 64 MiB conv1d_fwd output cost more than the op itself on
the 2-core Xeon (docs/DECISIONS.md, "Large host outputs on huge pages"). Outputs
of at least HUGE_PAGE_MIN_BYTES come instead from a mapping of their own advised
MADV_HUGEPAGE, which Linux backs with 2 MiB pages where transparent huge pages
are "madvise" or "always": one fault per 2 MiB. The mapping is unmapped when the
last array viewing it is freed, so nothing is kept between calls.

HOPS_HUGE_PAGES=0 (read at import) turns this off; so do a kernel with
transparent huge pages "never" and platforms without MADV_HUGEPAGE.
"""

import mmap
import os

import numpy as np

HUGE_PAGE_MIN_BYTES = 4 << 20  # below it, faults cost less than the mapping


def _huge_pages_usable() -> bool:
    if os.environ.get("HOPS_HUGE_PAGES", "1") == "0" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return "[never]" not in setting.read()
    except OSError:
        return False


HUGE_PAGES = _huge_pages_usable()


def huge_page_bytes(nbytes: int) -> np.ndarray | None:
    """A writable uint8 array of nbytes on a fresh mapping advised MADV_HUGEPAGE (its
    contents undefined, as np.empty's), or None where huge pages do not apply."""
    if not HUGE_PAGES or nbytes < HUGE_PAGE_MIN_BYTES:
        return None
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(mapping, dtype=np.uint8)  # keeps the mapping alive
