#pragma once
/// @file
/// Contrastive directions: from activations of a positive and a negative prompt set (one row per prompt, e.g. the
/// residual stream at the last token of a layer), the direction that separates them.
///   mean_difference (CAA):  mean(positive) - mean(negative), not normalised (its length is the shift's size).
///   pca:  the first principal component of the paired differences positive_i - negative_i after centring them
///         (as a PCA of the differences computes it), a unit vector oriented so that it points along the mean
///         difference (its sign is otherwise arbitrary).
/// Accumulation is in double, rows in order.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/detail/third_party.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// How a contrastive direction is computed (see the file comment).
enum class direction_method : std::uint8_t {
    mean_difference,  ///< Difference of the two sets' means (contrastive activation addition).
    pca,              ///< First principal component of the centred paired differences.
};

/// The name of a method as the CLI spells it ("mean", "pca").
inline const char* to_string(direction_method m) { return m == direction_method::pca ? "pca" : "mean"; }

/// A contrastive direction and what it was computed from.
struct contrastive_direction {
    std::vector<double> direction;        ///< (d) the direction (see direction_method for its length).
    std::vector<double> mean_difference;  ///< (d) mean(positive) - mean(negative), whatever the method.
    double explained_variance = 0.0;      ///< pca: the first component's share of the differences' variance.
};

namespace detail {

/// The (d) mean of the rows of `rows` (n, d).
inline std::vector<double> row_mean(tensor_view<const float, 2> rows) {
    std::vector<double> mean(static_cast<std::size_t>(rows.extent(1)), 0.0);
    for (index_t r = 0; r < rows.extent(0); ++r)
        for (index_t i = 0; i < rows.extent(1); ++i)
            mean[static_cast<std::size_t>(i)] += static_cast<double>(rows(r, i));
    for (double& m : mean) m /= static_cast<double>(rows.extent(0));
    return mean;
}

}  // namespace detail

/// The direction separating `positive` (n_pos, d) from `negative` (n_neg, d) by `method`; pca needs paired sets
/// (n_pos == n_neg >= 2). Throws shape_error for empty or mismatched sets.
inline contrastive_direction find_contrastive_direction(tensor_view<const float, 2> positive,
                                                        tensor_view<const float, 2> negative,
                                                        direction_method method = direction_method::mean_difference) {
    if (positive.extent(0) <= 0 || negative.extent(0) <= 0 || positive.extent(1) <= 0)
        throw shape_error("find_contrastive_direction: both prompt sets need at least one row of positive width");
    if (positive.extent(1) != negative.extent(1))
        throw shape_error("find_contrastive_direction: positive rows have width " + std::to_string(positive.extent(1)) +
                          ", negative rows " + std::to_string(negative.extent(1)));
    const index_t d = positive.extent(1);
    contrastive_direction out;
    const std::vector<double> mean_pos = detail::row_mean(positive), mean_neg = detail::row_mean(negative);
    out.mean_difference.resize(static_cast<std::size_t>(d));
    for (std::size_t i = 0; i < out.mean_difference.size(); ++i) out.mean_difference[i] = mean_pos[i] - mean_neg[i];
    if (method == direction_method::mean_difference) {
        out.direction = out.mean_difference;
        return out;
    }
    const index_t n = positive.extent(0);
    if (negative.extent(0) != n || n < 2)
        throw shape_error(
            "find_contrastive_direction: pca pairs the sets row by row and needs as many positive as "
            "negative rows (at least 2), got " +
            std::to_string(n) + " and " + std::to_string(negative.extent(0)));
    // Centred paired differences (n, d).
    Eigen::MatrixXd centred(n, d);
    for (index_t r = 0; r < n; ++r)
        for (index_t i = 0; i < d; ++i)
            centred(r, i) = static_cast<double>(positive(r, i)) - static_cast<double>(negative(r, i)) -
                            out.mean_difference[static_cast<std::size_t>(i)];
    // The top eigenvector of the smaller of the two Gram matrices (n x n or d x d); they share their non-zero
    // eigenvalues, and v = centred^T u maps the first's eigenvectors to the second's.
    Eigen::VectorXd v;
    double top = 0.0, trace = 0.0;
    if (n < d) {
        const Eigen::MatrixXd gram = centred * centred.transpose();
        const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(gram);
        if (solver.info() != Eigen::Success) throw std::runtime_error("find_contrastive_direction: eigensolver failed");
        top = solver.eigenvalues()(n - 1);
        trace = gram.trace();
        v = centred.transpose() * solver.eigenvectors().col(n - 1);
    } else {
        const Eigen::MatrixXd covariance = centred.transpose() * centred;
        const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(covariance);
        if (solver.info() != Eigen::Success) throw std::runtime_error("find_contrastive_direction: eigensolver failed");
        top = solver.eigenvalues()(d - 1);
        trace = covariance.trace();
        v = solver.eigenvectors().col(d - 1);
    }
    const double norm = v.norm();
    if (!(norm > 0.0) || !(trace > 0.0))
        throw std::invalid_argument(
            "find_contrastive_direction: the paired differences do not vary (every pair "
            "differs by the same vector): use the mean difference");
    double along = 0.0;
    for (index_t i = 0; i < d; ++i) along += v(i) * out.mean_difference[static_cast<std::size_t>(i)];
    const double sign = along < 0.0 ? -1.0 : 1.0;
    out.direction.resize(static_cast<std::size_t>(d));
    for (index_t i = 0; i < d; ++i) out.direction[static_cast<std::size_t>(i)] = sign * v(i) / norm;
    out.explained_variance = top / trace;
    return out;
}

MECHLENS_END_NAMESPACE
