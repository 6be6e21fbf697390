#pragma once
/// @file
/// Zero-copy interop between tensor views and Eigen::Map.

#include "mechlens/detail/third_party.hpp"

#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Row-major dynamic Eigen matrix of T.
template <class T>
using row_major_matrix = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Eigen map of a row-major matrix whose rows may be strided (unit stride within a row).
template <class T>
using matrix_map = Eigen::Map<std::conditional_t<std::is_const_v<T>, const row_major_matrix<T>, row_major_matrix<T>>,
                              Eigen::Unaligned, Eigen::OuterStride<>>;

/// Eigen map of a contiguous vector.
template <class T>
using vector_map = Eigen::Map<std::conditional_t<std::is_const_v<T>, const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>,
                                                 Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>>>;

/// Maps a rank-2 view whose last axis is dense as an Eigen row-major matrix; throws shape_error otherwise.
template <class T>
matrix_map<T> as_matrix(const tensor_view<T, 2>& view) {
    if (view.stride(1) != 1 && view.extent(1) > 1)
        throw shape_error("as_matrix: the last axis must be dense (stride 1), got stride " +
                          std::to_string(view.stride(1)));
    return matrix_map<T>(view.data(), view.extent(0), view.extent(1), Eigen::OuterStride<>(view.stride(0)));
}

/// Maps a dense rank-1 view as an Eigen column vector; throws shape_error otherwise.
template <class T>
vector_map<T> as_vector(const tensor_view<T, 1>& view) {
    if (view.stride(0) != 1 && view.extent(0) > 1)
        throw shape_error("as_vector: the view must be dense, got stride " + std::to_string(view.stride(0)));
    return vector_map<T>(view.data(), view.extent(0));
}

MECHLENS_END_NAMESPACE
