# Finds Eigen 3.4 and xsimd 8.1. Debian's xsimd 8.1 package links a bare `xtl` target without finding it;
# supply an empty INTERFACE IMPORTED one when nothing else did (xsimd needs xtl only for optional xtl types).
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(xsimd 8.1 REQUIRED)
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
