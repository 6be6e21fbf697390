# Cross build for 64-bit ARM (the edge CPU) with Debian's g++-aarch64-linux-gnu; tests run under qemu-user.
# xsimd selects its NEON (neon64) kernels, which every AArch64 CPU has.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)

# Libraries and headers come from the ARM64 sysroot only. Packages (CMake config files) may come from the build
# machine too: Eigen, xsimd and Catch2 are header-only, and cmake/mechlensDependencies.cmake keeps the build
# machine's /usr/include (its C library headers are for x86-64) out of the cross compiler's search path.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# ctest (and Catch2's test discovery at build time) run the ARM64 executables through user-mode emulation.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)

# Debian installs xsimd's (architecture-independent) CMake package under the build machine's multiarch libdir.
if(NOT xsimd_DIR)
  file(GLOB mechlens_xsimd_dirs /usr/lib/*-linux-gnu/cmake/xsimd)
  if(mechlens_xsimd_dirs)
    list(GET mechlens_xsimd_dirs 0 mechlens_xsimd_dir)
    set(xsimd_DIR "${mechlens_xsimd_dir}" CACHE PATH "xsimd's CMake package (header-only, shared with the build machine)")
  endif()
endif()
