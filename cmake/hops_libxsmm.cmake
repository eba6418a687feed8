# libxsmm (Debian's libxsmm-dev): JIT-generated small GEMMs for the CPU
# backend's chunked kernels (backends/cpu/xsmm_gemm.cpp). Optional: without it
# the hand-written register tiles (small_gemm.cpp) do every product.
#
# HOPS_WITH_LIBXSMM: AUTO (use it when found), ON (fail without it), OFF.
# Defines the target hops_libxsmm (INTERFACE) when it is used.
set(HOPS_WITH_LIBXSMM AUTO CACHE STRING "Use libxsmm for the CPU backend's small GEMMs: AUTO (when found), ON or OFF")
set_property(CACHE HOPS_WITH_LIBXSMM PROPERTY STRINGS AUTO ON OFF)

set(HOPS_LIBXSMM_ENABLED OFF)
if(HOPS_WITH_LIBXSMM STREQUAL "AUTO" OR HOPS_WITH_LIBXSMM)
  # pkg-config first (libxsmm.pc); its Libs name the library, not where the
  # BLAS stubs go, so both archives are looked up by name beside it.
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(PC_LIBXSMM QUIET libxsmm)
  endif()
  find_path(LIBXSMM_INCLUDE_DIR libxsmm.h HINTS ${PC_LIBXSMM_INCLUDE_DIRS})
  find_library(LIBXSMM_LIBRARY xsmm HINTS ${PC_LIBXSMM_LIBRARY_DIRS})
  # libxsmm falls back to ?gemm_ for shapes it does not JIT; hops never calls
  # those paths (it takes its own tiles instead), so the stubs stand in for BLAS.
  find_library(LIBXSMM_NOBLAS_LIBRARY xsmmnoblas HINTS ${PC_LIBXSMM_LIBRARY_DIRS})
  if(LIBXSMM_INCLUDE_DIR AND LIBXSMM_LIBRARY AND LIBXSMM_NOBLAS_LIBRARY)
    set(HOPS_LIBXSMM_ENABLED ON)
    add_library(hops_libxsmm INTERFACE)
    target_include_directories(hops_libxsmm SYSTEM INTERFACE ${LIBXSMM_INCLUDE_DIR})
    # The stubs after the library: a static link resolves left to right.
    target_link_libraries(hops_libxsmm INTERFACE ${LIBXSMM_LIBRARY} ${LIBXSMM_NOBLAS_LIBRARY}
                          Threads::Threads ${CMAKE_DL_LIBS} m rt)
    target_compile_definitions(hops_libxsmm INTERFACE HOPS_HAVE_LIBXSMM)
  elseif(NOT HOPS_WITH_LIBXSMM STREQUAL "AUTO")
    hops_require(HOPS_LIBXSMM_ENABLED "libxsmm (libxsmm.h, libxsmm.a, libxsmmnoblas.a)" libxsmm-dev)
  endif()
endif()
message(STATUS "hops: libxsmm ${HOPS_WITH_LIBXSMM} -> ${HOPS_LIBXSMM_ENABLED}")
