/* Shared objects named like backend modules that the loader must refuse.
 * libhops_broken.so lacks the entry symbol; built with HOPS_LEGACY_MODULE
 * (libhops_legacy.so) it exports only the unversioned entry of backend-module
 * interface 1, whose struct this libhops.so must not read. */
#if defined(HOPS_LEGACY_MODULE)
static const char kNotAModule[64] = "interface 1 laid out its struct differently";
const void* hops_backend_init_v1(void) { return kNotAModule; }
#else
int hops_not_a_backend(void) { return 0; }
#endif
