#pragma once
/// @file
/// Linear probes: L2-regularised logistic regression on activation rows, fitted by Newton's method.
///
/// For rows x_i (d) with labels y_i in {0, 1}, the probe (w, b) minimises
///   loss(w, b) = mean_i [ log(1 + exp(z_i)) - y_i z_i ] + (l2 / 2) ||w||^2,   z_i = w . x_i + b,
/// (the bias is not penalised). The loss is strictly convex for l2 > 0, so the minimum is unique and Newton's method
/// with a backtracking line search reaches it from w = 0 in a handful of steps on any data, separable or not:
///   g = X^T (p - y) / n + l2 w,   H = X^T diag(p (1 - p)) X / n + l2 I,   p_i = sigmoid(z_i),
/// with the bias as a last coordinate (no l2 on its diagonal). Everything is accumulated in double, rows in order,
/// so a fit is deterministic: the same rows give the same probe bit for bit on any machine with IEEE doubles.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/model/sampling.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// How a probe is fitted.
struct probe_options {
    double l2 = 1e-3;                   ///< Weight of the (l2 / 2) ||w||^2 penalty; must be > 0.
    int max_iterations = 100;           ///< Newton steps at most.
    double gradient_tolerance = 1e-10;  ///< Stop when every gradient entry is below this in magnitude.
};

/// A fitted logistic-regression probe and how the fit went.
struct logistic_probe {
    std::vector<double> weights;  ///< (d) the probe direction (not normalised).
    double bias = 0.0;            ///< The intercept.
    double loss = 0.0;            ///< The regularised training loss at the solution.
    double gradient_norm = 0.0;   ///< Largest |gradient entry| at the solution.
    int iterations = 0;           ///< Newton steps taken.
    bool converged = false;       ///< gradient_norm reached the tolerance.

    /// The logit w . x + b of one row of d values.
    [[nodiscard]] double logit(std::span<const float> row) const {
        if (row.size() != weights.size())
            throw shape_error("logistic_probe: a row of " + std::to_string(row.size()) + " values, the probe has " +
                              std::to_string(weights.size()));
        double z = bias;
        for (std::size_t i = 0; i < row.size(); ++i) z += weights[i] * static_cast<double>(row[i]);
        return z;
    }
    /// The predicted label (logit > 0) of one row.
    [[nodiscard]] int predict(std::span<const float> row) const { return logit(row) > 0.0 ? 1 : 0; }
    /// The unit vector along the weights (zero when the weights are zero).
    [[nodiscard]] std::vector<double> direction() const {
        double norm = 0.0;
        for (double w : weights) norm += w * w;
        norm = std::sqrt(norm);
        std::vector<double> out(weights.size(), 0.0);
        if (norm > 0.0)
            for (std::size_t i = 0; i < out.size(); ++i) out[i] = weights[i] / norm;
        return out;
    }
};

/// Accuracy and mean log-loss of a probe on labelled rows.
struct probe_evaluation {
    double accuracy = 0.0;  ///< Fraction of rows whose predicted label is right.
    double log_loss = 0.0;  ///< Mean -log p(label) (no penalty).
    std::int64_t rows = 0;  ///< Rows evaluated.
};

namespace detail {

/// log(1 + exp(z)) without overflow.
inline double softplus(double z) { return z > 0.0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z)); }

/// 1 / (1 + exp(-z)) without overflow.
inline double sigmoid(double z) {
    if (z >= 0.0) return 1.0 / (1.0 + std::exp(-z));
    const double e = std::exp(z);
    return e / (1.0 + e);
}

/// Throws shape_error unless `labels` has one 0/1 entry per row of `rows` and both classes occur.
inline void check_probe_data(tensor_view<const float, 2> rows, std::span<const int> labels, const char* who) {
    if (rows.extent(0) <= 0 || rows.extent(1) <= 0)
        throw shape_error(std::string(who) + ": no rows, or rows of width 0");
    if (static_cast<index_t>(labels.size()) != rows.extent(0))
        throw shape_error(std::string(who) + ": " + std::to_string(labels.size()) + " labels for " +
                          std::to_string(rows.extent(0)) + " rows");
    for (int y : labels)
        if (y != 0 && y != 1)
            throw std::invalid_argument(std::string(who) + ": labels must be 0 or 1, got " + std::to_string(y));
}

/// Solves the symmetric positive definite system a x = b in place (a: (m, m) row-major, overwritten by its
/// Cholesky factor; b becomes x). Returns false when a is not positive definite to working precision.
inline bool cholesky_solve(std::vector<double>& a, std::vector<double>& b, std::size_t m) {
    for (std::size_t j = 0; j < m; ++j) {
        double diagonal = a[j * m + j];
        for (std::size_t k = 0; k < j; ++k) diagonal -= a[j * m + k] * a[j * m + k];
        if (!(diagonal > 0.0)) return false;
        const double root = std::sqrt(diagonal);
        a[j * m + j] = root;
        for (std::size_t i = j + 1; i < m; ++i) {
            double sum = a[i * m + j];
            for (std::size_t k = 0; k < j; ++k) sum -= a[i * m + k] * a[j * m + k];
            a[i * m + j] = sum / root;
        }
    }
    for (std::size_t i = 0; i < m; ++i) {  // L y = b
        double sum = b[i];
        for (std::size_t k = 0; k < i; ++k) sum -= a[i * m + k] * b[k];
        b[i] = sum / a[i * m + i];
    }
    for (std::size_t i = m; i-- > 0;) {  // L^T x = y
        double sum = b[i];
        for (std::size_t k = i + 1; k < m; ++k) sum -= a[k * m + i] * b[k];
        b[i] = sum / a[i * m + i];
    }
    return true;
}

/// The regularised loss of (w, b) on the rows; `z` receives each row's logit (rows).
inline double probe_loss(tensor_view<const float, 2> rows, std::span<const int> labels, const std::vector<double>& w,
                         double b, double l2, std::vector<double>& z) {
    const index_t n = rows.extent(0), d = rows.extent(1);
    z.resize(static_cast<std::size_t>(n));
    double sum = 0.0;
    for (index_t r = 0; r < n; ++r) {
        double logit = b;
        for (index_t i = 0; i < d; ++i) logit += w[static_cast<std::size_t>(i)] * static_cast<double>(rows(r, i));
        z[static_cast<std::size_t>(r)] = logit;
        sum += softplus(logit) - (labels[static_cast<std::size_t>(r)] == 1 ? logit : 0.0);
    }
    double penalty = 0.0;
    for (double v : w) penalty += v * v;
    return sum / static_cast<double>(n) + 0.5 * l2 * penalty;
}

}  // namespace detail

/// Fits an L2-regularised logistic-regression probe to `rows` (n, d) with `labels` (n) in {0, 1} by Newton's method
/// with a backtracking line search (see the file comment). Throws shape_error or std::invalid_argument for
/// inconsistent data or options; a fit that stops at max_iterations returns with converged = false.
inline logistic_probe fit_logistic_probe(tensor_view<const float, 2> rows, std::span<const int> labels,
                                         const probe_options& options = {}) {
    detail::check_probe_data(rows, labels, "fit_logistic_probe");
    if (!(options.l2 > 0.0) || !std::isfinite(options.l2))
        throw std::invalid_argument("fit_logistic_probe: l2 must be a positive number (it makes the fit unique)");
    if (options.max_iterations < 1) throw std::invalid_argument("fit_logistic_probe: max_iterations must be >= 1");
    const index_t n = rows.extent(0), d = rows.extent(1);
    const auto m = static_cast<std::size_t>(d) + 1;  // weights, then the bias
    const double inv_n = 1.0 / static_cast<double>(n);
    logistic_probe probe;
    probe.weights.assign(static_cast<std::size_t>(d), 0.0);
    std::vector<double> z, trial_z, gradient(m), hessian(m * m), step(m), trial_w(static_cast<std::size_t>(d)), x(m);
    probe.loss = detail::probe_loss(rows, labels, probe.weights, probe.bias, options.l2, z);
    for (int iteration = 0;; ++iteration) {
        // Gradient and Hessian at the current point, the bias as coordinate d (x_d = 1).
        std::fill(gradient.begin(), gradient.end(), 0.0);
        std::fill(hessian.begin(), hessian.end(), 0.0);
        for (index_t r = 0; r < n; ++r) {
            for (index_t i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] = static_cast<double>(rows(r, i));
            x[m - 1] = 1.0;
            const double p = detail::sigmoid(z[static_cast<std::size_t>(r)]);
            const double residual = p - static_cast<double>(labels[static_cast<std::size_t>(r)]);
            const double curvature = p * (1.0 - p);
            for (std::size_t i = 0; i < m; ++i) {
                gradient[i] += residual * x[i];
                const double ci = curvature * x[i];
                for (std::size_t j = 0; j <= i; ++j) hessian[i * m + j] += ci * x[j];
            }
        }
        for (std::size_t i = 0; i < m; ++i) {
            gradient[i] *= inv_n;
            if (i + 1 < m) gradient[i] += options.l2 * probe.weights[i];
            for (std::size_t j = 0; j <= i; ++j) {
                hessian[i * m + j] *= inv_n;
                hessian[j * m + i] = hessian[i * m + j];
            }
            if (i + 1 < m) hessian[i * m + i] += options.l2;
        }
        probe.gradient_norm = 0.0;
        for (double g : gradient) probe.gradient_norm = std::max(probe.gradient_norm, std::abs(g));
        probe.iterations = iteration;
        if (probe.gradient_norm <= options.gradient_tolerance) {
            probe.converged = true;
            return probe;
        }
        if (iteration == options.max_iterations) return probe;
        // The bias's diagonal has no l2: when every row is confidently classified it can vanish, so a tiny ridge
        // keeps the system solvable (it only shortens the step).
        step = gradient;
        std::vector<double> factor = hessian;
        if (!detail::cholesky_solve(factor, step, m)) {
            factor = hessian;
            step = gradient;
            factor[m * m - 1] += options.l2;
            if (!detail::cholesky_solve(factor, step, m)) return probe;
        }
        // Backtracking (Armijo) along the Newton direction -step.
        double slope = 0.0;
        for (std::size_t i = 0; i < m; ++i) slope -= gradient[i] * step[i];
        // Once the predicted decrease (the Newton decrement, -slope) is below what the loss can resolve in double,
        // the iterate is deep in Newton's quadratic region: the full step is taken without comparing losses.
        const bool resolvable = -slope > 1e-13 * (1.0 + std::abs(probe.loss));
        double t = 1.0;
        bool moved = false;
        for (int halving = 0; halving < 60; ++halving, t *= 0.5) {
            for (std::size_t i = 0; i + 1 < m; ++i) trial_w[i] = probe.weights[i] - t * step[i];
            const double trial_b = probe.bias - t * step[m - 1];
            const double trial_loss = detail::probe_loss(rows, labels, trial_w, trial_b, options.l2, trial_z);
            if (!resolvable || trial_loss <= probe.loss + 1e-4 * t * slope) {
                probe.weights.swap(trial_w);
                probe.bias = trial_b;
                probe.loss = trial_loss;
                z.swap(trial_z);
                moved = true;
                break;
            }
        }
        if (!moved) return probe;  // no decrease left at double precision: as converged as it gets
    }
}

/// Accuracy and mean log-loss of `probe` on `rows` (n, d) with `labels` (n).
inline probe_evaluation evaluate_probe(const logistic_probe& probe, tensor_view<const float, 2> rows,
                                       std::span<const int> labels) {
    detail::check_probe_data(rows, labels, "evaluate_probe");
    if (rows.extent(1) != static_cast<index_t>(probe.weights.size()))
        throw shape_error("evaluate_probe: rows of width " + std::to_string(rows.extent(1)) + ", the probe has " +
                          std::to_string(probe.weights.size()));
    probe_evaluation out;
    out.rows = rows.extent(0);
    std::int64_t right = 0;
    double loss = 0.0;
    for (index_t r = 0; r < rows.extent(0); ++r) {
        double z = probe.bias;
        for (index_t i = 0; i < rows.extent(1); ++i)
            z += probe.weights[static_cast<std::size_t>(i)] * static_cast<double>(rows(r, i));
        const int y = labels[static_cast<std::size_t>(r)];
        right += (z > 0.0 ? 1 : 0) == y ? 1 : 0;
        loss += detail::softplus(z) - (y == 1 ? z : 0.0);
    }
    out.accuracy = static_cast<double>(right) / static_cast<double>(out.rows);
    out.log_loss = loss / static_cast<double>(out.rows);
    return out;
}

/// A deterministic split of `n` rows into training and held-out indices: a seeded shuffle, then the last
/// round(held_out_fraction * n) rows (at least one of each when n >= 2) are held out. Each part is sorted.
struct probe_split {
    std::vector<index_t> train;     ///< Row indices to fit on.
    std::vector<index_t> held_out;  ///< Row indices to evaluate on.

    /// The split of n rows (see the struct comment); throws std::invalid_argument for a fraction outside (0, 1).
    static probe_split make(index_t n, double held_out_fraction, std::uint64_t seed) {
        if (!(held_out_fraction > 0.0 && held_out_fraction < 1.0))
            throw std::invalid_argument("probe_split: held_out_fraction must be in (0, 1)");
        if (n < 2) throw std::invalid_argument("probe_split: at least two rows are needed");
        std::vector<index_t> order(static_cast<std::size_t>(n));
        std::iota(order.begin(), order.end(), index_t{0});
        random_generator rng(seed);
        for (std::size_t i = order.size() - 1; i > 0; --i) {  // Fisher-Yates
            const auto j = static_cast<std::size_t>(rng.next() % static_cast<std::uint64_t>(i + 1));
            std::swap(order[i], order[j]);
        }
        auto held = static_cast<index_t>(std::llround(held_out_fraction * static_cast<double>(n)));
        held = std::clamp<index_t>(held, 1, n - 1);
        probe_split out;
        out.train.assign(order.begin(), order.end() - held);
        out.held_out.assign(order.end() - held, order.end());
        std::sort(out.train.begin(), out.train.end());
        std::sort(out.held_out.begin(), out.held_out.end());
        return out;
    }
};

MECHLENS_END_NAMESPACE
