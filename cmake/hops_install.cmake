# What `cmake --install` lays out (docs/INSTALL.md), by component:
#   runtime      libhops.so and the backend modules beside it (they are looked for
#                in libhops.so's own folder)
#   provider     providers.d/hops.json, the manifest through which hosts find it
#   development  hops.h, hops.hpp, the dlpack.h they were built against,
#                hopsConfig.cmake (+ version file, targets hops::hops and
#                hops::headers) and hops.pc
#   tools        hops-call and hops-conformance, where built
# A wheel (scikit-build-core, pyproject.toml) takes only the runtime, into the
# Python package's hops/lib/, where the shim's discovery looks for it.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

if(SKBUILD)
  set(HOPS_INSTALL_LIBDIR hops/lib)
else()
  set(HOPS_INSTALL_LIBDIR ${CMAKE_INSTALL_LIBDIR})
endif()
set(HOPS_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/hops)
# DLPack's header beside ours, on an include path of its own: hops.h includes
# <dlpack/dlpack.h>, and its layout is part of the ABI, so hosts compile
# against the copy hops was built with, not whatever the system has.
set(HOPS_INSTALL_DLPACKDIR ${CMAKE_INSTALL_INCLUDEDIR}/hops/dlpack)
set(HOPS_INSTALL_PROVIDERS_DIR "" CACHE STRING
    "Where the provider manifest goes; empty: /etc/hops/providers.d for the prefix /usr, else <prefix>/${CMAKE_INSTALL_DATADIR}/hops/providers.d")

# ---- runtime -----------------------------------------------------------------------
target_include_directories(hops INTERFACE $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
                           $<INSTALL_INTERFACE:${HOPS_INSTALL_DLPACKDIR}>)
install(TARGETS hops EXPORT hopsTargets LIBRARY DESTINATION ${HOPS_INSTALL_LIBDIR} COMPONENT runtime)
# The backend modules: every MODULE library built beside libhops.so, where its
# loader looks (test modules such as tests/unit's are built elsewhere).
get_target_property(hops_folder hops BINARY_DIR)
function(hops_backend_modules directory out)
  get_property(targets DIRECTORY ${directory} PROPERTY BUILDSYSTEM_TARGETS)
  get_property(subdirectories DIRECTORY ${directory} PROPERTY SUBDIRECTORIES)
  set(modules "")
  foreach(target IN LISTS targets)
    get_target_property(type ${target} TYPE)
    get_target_property(folder ${target} LIBRARY_OUTPUT_DIRECTORY)
    if(type STREQUAL "MODULE_LIBRARY" AND folder STREQUAL hops_folder)
      list(APPEND modules ${target})
    endif()
  endforeach()
  foreach(subdirectory IN LISTS subdirectories)
    hops_backend_modules(${subdirectory} found)
    list(APPEND modules ${found})
  endforeach()
  set(${out} ${modules} PARENT_SCOPE)
endfunction()
hops_backend_modules(${PROJECT_SOURCE_DIR} HOPS_BACKEND_MODULES)
if(HOPS_BACKEND_MODULES)
  install(TARGETS ${HOPS_BACKEND_MODULES} LIBRARY DESTINATION ${HOPS_INSTALL_LIBDIR} COMPONENT runtime)
endif()
if(SKBUILD)
  return()  # a wheel holds the runtime only
endif()

# ---- provider manifest ---------------------------------------------------------------
# Written at install time, when the final prefix is known (`cmake --install
# --prefix` may differ from the configured one). Inside the prefix the library
# is named relative to the manifest, so the tree can be moved; /etc names it by
# its absolute path. Priority 0: a vendor's provider (higher) is preferred.
file(STRINGS ${PROJECT_SOURCE_DIR}/abi/include/hops/hops.h abi_line REGEX "^#define HOPS_ABI_MAJOR ")
string(REGEX REPLACE "^#define HOPS_ABI_MAJOR ([0-9]+).*" "\\1" HOPS_ABI_MAJOR "${abi_line}")
install(CODE "
  set(providers_dir \"${HOPS_INSTALL_PROVIDERS_DIR}\")
  if(NOT providers_dir)
    if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
      set(providers_dir /etc/hops/providers.d)
    else()
      set(providers_dir \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_DATADIR}/hops/providers.d\")
    endif()
  elseif(NOT IS_ABSOLUTE \"\${providers_dir}\")
    set(providers_dir \"\${CMAKE_INSTALL_PREFIX}/\${providers_dir}\")
  endif()
  set(library \"\${CMAKE_INSTALL_PREFIX}/${HOPS_INSTALL_LIBDIR}/libhops.so\")
  string(FIND \"\${providers_dir}/\" \"\${CMAKE_INSTALL_PREFIX}/\" in_prefix)
  if(in_prefix EQUAL 0)
    file(RELATIVE_PATH library \"\${providers_dir}\" \"\${library}\")
  endif()
  set(manifest \"\$ENV{DESTDIR}\${providers_dir}/hops.json\")
  message(STATUS \"Installing: \${manifest} (library: \${library})\")
  file(WRITE \"\${manifest}\" \"{\\\"library\\\": \\\"\${library}\\\", \\\"abi\\\": ${HOPS_ABI_MAJOR}, \\\"priority\\\": 0}\\n\")
" COMPONENT provider)

# ---- development ---------------------------------------------------------------------
install(FILES ${PROJECT_SOURCE_DIR}/abi/include/hops/hops.h ${PROJECT_SOURCE_DIR}/abi/include/hops/hops.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/hops COMPONENT development)
install(FILES ${DLPACK_INCLUDE_DIR}/dlpack/dlpack.h DESTINATION ${HOPS_INSTALL_DLPACKDIR}/dlpack
        COMPONENT development)

# hops::headers: the headers alone, for hosts that dlopen a provider (as the
# ABI intends: any provider, found at run time); hops::hops links libhops.so.
add_library(hops_installed_headers INTERFACE)
set_target_properties(hops_installed_headers PROPERTIES EXPORT_NAME headers)
target_include_directories(hops_installed_headers INTERFACE
                           $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
                           $<INSTALL_INTERFACE:${HOPS_INSTALL_DLPACKDIR}>)
install(TARGETS hops_installed_headers EXPORT hopsTargets)
install(EXPORT hopsTargets NAMESPACE hops:: DESTINATION ${HOPS_INSTALL_CMAKEDIR} COMPONENT development)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/hopsConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/hopsConfig.cmake
                              INSTALL_DESTINATION ${HOPS_INSTALL_CMAKEDIR})
# 0.x: minor versions may break, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/hopsConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/hopsConfig.cmake ${PROJECT_BINARY_DIR}/hopsConfigVersion.cmake
        DESTINATION ${HOPS_INSTALL_CMAKEDIR} COMPONENT development)

# hops.pc finds its prefix from its own folder (${pcfiledir}), so it stays right
# under `cmake --install --prefix` and when the tree moves.
set(pc_dir ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
file(RELATIVE_PATH up /prefix/${pc_dir} /prefix)  # ../../ for lib/pkgconfig
string(REGEX REPLACE "/$" "" up "${up}")
set(HOPS_PC_PREFIX "\${pcfiledir}/${up}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/hops.pc.in ${PROJECT_BINARY_DIR}/hops.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/hops.pc DESTINATION ${pc_dir} COMPONENT development)

# ---- tools ---------------------------------------------------------------------------
foreach(tool hops-call hops-conformance)
  if(TARGET ${tool})
    install(TARGETS ${tool} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT tools)
  endif()
endforeach()
