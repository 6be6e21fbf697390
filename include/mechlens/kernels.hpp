#pragma once
/// @file
/// SIMD kernels (xsimd) with scalar references, and matrix products through Eigen.
