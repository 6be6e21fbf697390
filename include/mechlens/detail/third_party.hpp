#pragma once
/// @file
/// The third-party headers mechlens builds on (Eigen's core and its symmetric eigensolver, xsimd), included in one
/// place.
///
/// GCC 12 warns "'__Y' may be used uninitialized" (or "is used uninitialized") inside its own AVX-512 intrinsic headers (GCC bug 105593, fixed
/// in GCC 13): `_mm512_undefined_ps()` and its kin initialise a register from itself on purpose. The warning is
/// raised after Eigen's and xsimd's AVX-512 packet functions are inlined, so it names a line of avx512fintrin.h that
/// is not treated as a system header at that point, and `-Werror` turns every AVX-512 build into a failure. GCC
/// consults diagnostic pragmas at each location of the inlining chain, and every such chain passes through Eigen or
/// xsimd: silencing -Wmaybe-uninitialized and -Wuninitialized for these two headers alone, on GCC 12 and older only, removes the false
/// positive while the warning stays live for every line of mechlens and of the code that includes it.

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <xsimd/xsimd.hpp>
#pragma GCC diagnostic pop
#else
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <xsimd/xsimd.hpp>
#endif
