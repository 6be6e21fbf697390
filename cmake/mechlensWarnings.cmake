# Strict warnings, -march=native and sanitizers for mechlens's own executables only; dependencies stay quiet
# because their targets are imported and so their headers are system includes.
set(CMAKE_CXX_EXTENSIONS OFF)  # -std=c++20, not gnu++20

function(mechlens_own_target target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion -Wshadow -Wnon-virtual-dtor -Wold-style-cast
    -Wcast-align -Wunused -Woverloaded-virtual -Wnull-dereference -Wdouble-promotion -Wformat=2
    -Wimplicit-fallthrough)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  # GCC fuses a*b+c into one FMA even in ISO C++ mode; the kernels ask for fma explicitly where they want it, and
  # everything else rounds exactly as written, so results do not depend on the optimiser's choices.
  target_compile_options(${target} PRIVATE -ffp-contract=off)
  if(MECHLENS_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(MECHLENS_MARCH)
    target_compile_options(${target} PRIVATE -march=${MECHLENS_MARCH})
  elseif(MECHLENS_NATIVE)
    target_compile_options(${target} PRIVATE -march=native)
  endif()
  if(MECHLENS_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-sanitize-recover=all
                                             -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
  if(MECHLENS_TSAN)
    target_compile_options(${target} PRIVATE -fsanitize=thread -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=thread)
  endif()
endfunction()
