#pragma once
/// @file
/// Eigen's symmetric eigensolver, for the few places that need one (principal components of contrastive
/// directions). GCC 12's false -Wmaybe-uninitialized positives inside Eigen's AVX-512 packets are silenced for this
/// include alone, as in third_party.hpp.

#include "mechlens/detail/third_party.hpp"

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <Eigen/Eigenvalues>
#pragma GCC diagnostic pop
#else
#include <Eigen/Eigenvalues>
#endif
