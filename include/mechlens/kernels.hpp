#pragma once
/// @file
/// SIMD kernels (xsimd) with scalar references, and matrix products through Eigen.

#include "mechlens/kernels/simd.hpp"
#include "mechlens/kernels/vector_ops.hpp"
#include "mechlens/kernels/norm.hpp"
#include "mechlens/kernels/softmax.hpp"
#include "mechlens/kernels/activation.hpp"
#include "mechlens/kernels/generic.hpp"
#include "mechlens/kernels/rope.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/kernels/encoded_matmul.hpp"
#include "mechlens/kernels/reference.hpp"
