#pragma once
/// @file
/// Thread count control for the OpenMP-parallel parts (attention heads, Eigen's GEMM).

#include "mechlens/detail/namespace.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

MECHLENS_BEGIN_NAMESPACE

/// Sets the threads the calling thread's later passes may use (no effect when built without OpenMP). It sets
/// OpenMP's per-thread count, which Eigen's GEMM also follows; it leaves Eigen's own global override
/// (Eigen::setNbThreads) alone, so the gradient pass can keep small products serial.
inline void set_num_threads(int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
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
