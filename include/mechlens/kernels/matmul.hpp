#pragma once
/// @file
/// Linear layers y = x w^T on tensor views, with weights stored (out_features, in_features) row-major as in
/// llama2.c and GGUF; the products run on the batch-invariant tiled kernel of gemm.hpp.

#include <string>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/gemm.hpp"
#include "mechlens/kernels/vector_ops.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

namespace detail {

/// Throws shape_error naming `what` unless x is (rows, in), w is (out, in) and y is (rows, out).
inline void require_linear_shapes(const tensor_view<const float, 2>& x, const tensor_view<const float, 2>& w,
                                  const tensor_view<float, 2>& y, const char* what) {
    if (x.extent(1) != w.extent(1) || y.extent(0) != x.extent(0) || y.extent(1) != w.extent(0))
        throw shape_error(std::string(what) + ": need x (rows, in), w (out, in), y (rows, out); got x " +
                          mechlens::detail::format_extents(x.shape()) + ", w " +
                          mechlens::detail::format_extents(w.shape()) + ", y " +
                          mechlens::detail::format_extents(y.shape()));
    const auto dense = [](index_t extent, index_t stride) { return extent <= 1 || stride == 1; };
    if (!dense(x.extent(1), x.stride(1)) || !dense(w.extent(1), w.stride(1)) || !dense(y.extent(1), y.stride(1)))
        throw shape_error(std::string(what) + ": the last axis of x, w and y must be dense (stride 1)");
}

/// y = x w^T (accumulate == false) or y += x w^T, shapes already checked. Goes through the batch-invariant
/// tiled kernel (gemm.hpp): each output element is reduced in the same order for any number of rows.
inline void linear_product(const tensor_view<const float, 2>& x, const tensor_view<const float, 2>& w,
                           const tensor_view<float, 2>& y, bool accumulate) {
    if (y.extent(0) == 0 || y.extent(1) == 0) return;
    if (x.extent(1) == 0) {  // an empty sum
        if (!accumulate)
            for (index_t r = 0; r < y.extent(0); ++r)
                for (index_t o = 0; o < y.extent(1); ++o) y(r, o) = 0.0f;
        return;
    }
    const gemm_operands operands{x.data(), x.stride(0), w.data(), w.stride(0), y.data(), y.stride(0),
                                 x.extent(1), accumulate};
    gemm_xwt(operands, x.extent(0), w.extent(0));
}

/// Throws shape_error unless `bias` is a dense (outputs) vector.
inline void require_bias(const tensor_view<const float, 1>& bias, index_t outputs, const char* what) {
    if (bias.extent(0) != outputs)  // the message names "<what> bias"; built only when it is thrown
        require_shape(bias, {outputs}, (std::string(what) + " bias").c_str());
    if (bias.stride(0) != 1 && bias.extent(0) > 1)
        throw shape_error(std::string(what) + ": the bias must be dense, got stride " + std::to_string(bias.stride(0)));
}

/// y[r] += bias for every row of y (rows dense, bias checked by require_bias).
inline void add_bias_to_rows(const tensor_view<const float, 1>& bias, const tensor_view<float, 2>& y) {
    for (index_t r = 0; r < y.extent(0); ++r) {
        float* row = y.data() + r * y.stride(0);
        add(row, row, bias.data(), y.extent(1));
    }
}

}  // namespace detail

/// y = x w^T for x (rows, in), w (out, in), y (rows, out). Rows of x and y may be strided but each row must be
/// dense; y must not overlap x or w. Throws shape_error on mismatched or non-dense shapes.
inline void linear(tensor_view<const float, 2> x, tensor_view<const float, 2> w, tensor_view<float, 2> y) {
    detail::require_linear_shapes(x, w, y, "kernels::linear");
    detail::linear_product(x, w, y, false);
}

/// y += x w^T, with the same shapes and rules as linear().
inline void linear_accumulate(tensor_view<const float, 2> x, tensor_view<const float, 2> w, tensor_view<float, 2> y) {
    detail::require_linear_shapes(x, w, y, "kernels::linear_accumulate");
    detail::linear_product(x, w, y, true);
}

/// y = x w^T + bias for bias of shape (out) (GPT-2 style layers); otherwise as linear().
inline void linear(tensor_view<const float, 2> x, tensor_view<const float, 2> w, tensor_view<const float, 1> bias,
                   tensor_view<float, 2> y) {
    detail::require_linear_shapes(x, w, y, "kernels::linear");
    detail::require_bias(bias, w.extent(0), "kernels::linear");
    detail::linear_product(x, w, y, false);
    detail::add_bias_to_rows(bias, y);
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
