#pragma once
/// @file
/// Thread count control for the OpenMP-parallel parts (attention heads, Eigen's GEMM).

#include <Eigen/Core>

#include "mechlens/detail/namespace.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

MECHLENS_BEGIN_NAMESPACE

/// Sets the threads used by later forward passes (no effect when built without OpenMP).
inline void set_num_threads(int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#endif
    Eigen::setNbThreads(threads);
}

/// Threads later forward passes may use (1 without OpenMP).
inline int num_threads() noexcept {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

MECHLENS_END_NAMESPACE
