#pragma once
/// @file
/// Tensors: owning aligned storage, strided views, Eigen interop.

#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"
#include "mechlens/tensor/tensor.hpp"
#include "mechlens/tensor/eigen.hpp"
#include "mechlens/tensor/half.hpp"
