# Finds Eigen 3.4 and xsimd 8.1. Debian's xsimd 8.1 package links a bare `xtl` target without finding it;
# supply an empty INTERFACE IMPORTED one when nothing else did (xsimd needs xtl only for optional xtl types).
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(xsimd 8.1 REQUIRED)
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()

# When cross-compiling with the build machine's header-only packages, a package whose include directory is the
# build machine's /usr/include (xsimd, Catch2) would put that directory, and so the build machine's C library
# headers, ahead of the target's. mechlens_isolate_host_headers(target subdir...) points `target` instead at a
# folder in the build tree holding links to just `subdir...` of /usr/include.
function(mechlens_isolate_host_headers target)
  if(NOT CMAKE_CROSSCOMPILING)
    return()
  endif()
  get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
  set(isolated "${CMAKE_BINARY_DIR}/host-headers")
  set(kept)
  foreach(dir IN LISTS dirs)
    if(dir STREQUAL "/usr/include")
      foreach(subdir IN LISTS ARGN)
        if(NOT EXISTS "${isolated}/${subdir}")
          file(MAKE_DIRECTORY "${isolated}")
          file(CREATE_LINK "/usr/include/${subdir}" "${isolated}/${subdir}" SYMBOLIC)
        endif()
      endforeach()
      list(APPEND kept "${isolated}")
    else()
      list(APPEND kept "${dir}")
    endif()
  endforeach()
  set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${kept}")
endfunction()
mechlens_isolate_host_headers(xsimd xsimd)
mechlens_isolate_host_headers(Eigen3::Eigen Eigen)
