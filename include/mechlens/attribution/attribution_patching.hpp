#pragma once
/// @file
/// Attribution patching: the first-order estimate of every activation-patching cell from one forward and one
/// backward pass of the corrupt prompts, (d metric / d activation at the corrupt run) . (clean - corrupt) summed over
/// the cell's elements, normalised like activation patching. Exact when the metric is linear in the patched
/// activation; elsewhere its agreement with true patching is measured, not assumed (pearson_correlation).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/attribution/activation_patching.hpp"
#include "mechlens/attribution/answer_metric.hpp"
#include "mechlens/grad/backward.hpp"
#include "mechlens/grad/observers.hpp"
#include "mechlens/hooks/caching.hpp"
#include "mechlens/hooks/compose.hpp"
#include "mechlens/hooks/dynamic.hpp"
#include "mechlens/model/forward.hpp"
#include "mechlens/model/parameters.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Pearson correlation of two equally shaped tables over their finite cells (NaN with fewer than two such cells or
/// no spread).
inline double pearson_correlation(const tensor<float, 3>& a, const tensor<float, 3>& b) {
    if (a.shape() != b.shape()) throw shape_error("pearson_correlation: tables of different shapes");
    double n = 0, sum_a = 0, sum_b = 0;
    for (index_t i = 0; i < a.size(); ++i)
        if (std::isfinite(a.data()[i]) && std::isfinite(b.data()[i])) {
            n += 1;
            sum_a += static_cast<double>(a.data()[i]);
            sum_b += static_cast<double>(b.data()[i]);
        }
    if (n < 2) return std::numeric_limits<double>::quiet_NaN();
    const double mean_a = sum_a / n, mean_b = sum_b / n;
    double cov = 0, var_a = 0, var_b = 0;
    for (index_t i = 0; i < a.size(); ++i)
        if (std::isfinite(a.data()[i]) && std::isfinite(b.data()[i])) {
            const double x = static_cast<double>(a.data()[i]) - mean_a, y = static_cast<double>(b.data()[i]) - mean_b;
            cov += x * y;
            var_a += x * x;
            var_b += y * y;
        }
    if (var_a == 0 || var_b == 0) return std::numeric_limits<double>::quiet_NaN();
    return cov / std::sqrt(var_a * var_b);
}

/// Estimates patching tables by attribution patching: caches both runs and the corrupt run's gradient at every site
/// (but attn.hook_result) once, then any grid is a sum. Keeps a copy of the weights as model_parameters for the
/// backward pass.
class attribution_patcher {
public:
    /// Runs the clean and corrupt prompts (same shape) and one backward pass of `metric` over the corrupt ones. With
    /// `splices` (run-time hooks holding SAEs or transcoders, kept only for the constructor), every pass runs them:
    /// the caches hold what the rest of the model used (a host's spliced output) and its gradient.
    attribution_patcher(const transformer& model, tensor_view<const std::int32_t, 2> clean,
                        tensor_view<const std::int32_t, 2> corrupt, answer_metric measure,
                        dynamic_hooks* splices = nullptr)
        : config_(model.config()), metric_(std::move(measure)) {
        if (clean.shape() != corrupt.shape())
            throw shape_error("attribution_patcher: clean tokens " + detail::format_extents(clean.shape()) +
                              " and corrupt tokens " + detail::format_extents(corrupt.shape()) + " differ in shape");
        prompts_ = clean.extent(0);
        length_ = clean.extent(1);
        metric_.check(config_.vocab_out());
        if (metric_.prompts() != prompts_)
            throw std::invalid_argument("attribution_patcher: the metric has answers for " +
                                        std::to_string(metric_.prompts()) + " prompts, the batch has " +
                                        std::to_string(prompts_));
        const index_t answer = metric_.resolve_position(length_);
        const auto clean_window = clean.slice(1, 0, answer + 1), corrupt_window = corrupt.slice(1, 0, answer + 1);

        tensor<float, 3> logits({prompts_, 1, config_.vocab_out()});
        workspace ws;
        caching_hooks<> clean_hooks, corrupt_hooks;
        auto run = [&](tensor_view<const std::int32_t, 2> window, caching_hooks<>& cache) {
            if (splices != nullptr)
                forward(model, window, logits.view(), ws, compose(*splices, cache));
            else
                forward(model, window, logits.view(), ws, cache);
        };
        run(clean_window, clean_hooks);
        clean_metric_ = metric_.mean(logits.view(), length_);
        run(corrupt_window, corrupt_hooks);
        corrupt_metric_ = metric_.mean(logits.view(), length_);
        clean_cache_ = clean_hooks.take();
        corrupt_cache_ = corrupt_hooks.take();

        answer_metric at_answer = metric_;
        at_answer.position = answer;  // the window ends at the answer
        gradient_cache<> gradients;  // the gradient pass reads the model's own weights, no copy
        if (splices != nullptr)  // the cache sees each gradient before a splice turns it into its input's
            (void)forward_backward(model, corrupt_window, at_answer.as_grad_metric(),
                                   static_cast<model_parameters*>(nullptr), compose(*splices, gradients));
        else
            (void)forward_backward(model, corrupt_window, at_answer.as_grad_metric(),
                                   static_cast<model_parameters*>(nullptr), gradients);
        gradient_cache_ = gradients.take();
    }

    /// The metric of the clean run (mean over prompts).
    [[nodiscard]] double clean_metric() const noexcept { return clean_metric_; }
    /// The metric of the corrupt run (mean over prompts).
    [[nodiscard]] double corrupt_metric() const noexcept { return corrupt_metric_; }
    /// d(mean metric)/d(site) of the corrupt run at every site but attn.hook_result.
    [[nodiscard]] const activation_cache& gradients() const noexcept { return gradient_cache_; }

    /// The estimated table of `grid`, laid out as activation_patcher's: values normalised by (clean - corrupt),
    /// raw = corrupt metric + estimated change. Throws std::invalid_argument for grids the model has no sites for.
    [[nodiscard]] patching_table estimate(const patching_grid& grid) const {
        (void)detail::with_site_kind(grid.kind, [](auto) { return 0; });  // rejects unsweepable kinds
        if (!has_site_kind(config_, grid.kind))
            throw std::invalid_argument("attribution patching: this model has no " +
                                        std::string(site_suffix(grid.kind)) + " site");
        const site_axes axes = detail::axes_of(grid.kind);
        if (grid.per_head && axes.head < 0)
            throw std::invalid_argument("attribution patching: " + std::string(site_suffix(grid.kind)) +
                                        " has no head axis to split");
        const index_t layers = is_block_site(grid.kind) ? config_.n_layers : 1;
        const index_t heads = grid.per_head ? detail::head_count(config_, grid.kind) : 1;
        const index_t positions = grid.per_position ? length_ : 1;
        std::vector<double> change(static_cast<std::size_t>(layers * heads * positions), 0.0);
        for (index_t l = 0; l < layers; ++l) {
            const site s{grid.kind, is_block_site(grid.kind) ? l : -1};
            const cached_activation& clean = clean_cache_.at(s);
            const cached_activation& corrupt = corrupt_cache_.at(s);
            const cached_activation& gradient = gradient_cache_.at(s);
            if (clean.shape != corrupt.shape || clean.shape != gradient.shape || clean.positions != gradient.positions)
                throw shape_error("attribution patching: the runs' " + to_string(s) + " shapes differ");
            // Walk every element with its (position, head) coordinates; masked scores (-inf - -inf) count as 0.
            const std::vector<index_t>& shape = clean.shape;
            index_t inner = 1;
            for (std::size_t a = static_cast<std::size_t>(axes.position) + 1; a < shape.size(); ++a) inner *= shape[a];
            const index_t head_stride = axes.head < 0 ? 1 : stride_of(shape, static_cast<std::size_t>(axes.head));
            const index_t head_extent = axes.head < 0 ? 1 : shape[static_cast<std::size_t>(axes.head)];
            for (index_t i = 0; i < clean.size(); ++i) {
                const auto k = static_cast<std::size_t>(i);
                const double delta = static_cast<double>(clean.values[k]) - static_cast<double>(corrupt.values[k]);
                if (!std::isfinite(delta)) continue;
                const index_t position = clean.position(i / inner % shape[static_cast<std::size_t>(axes.position)]);
                const index_t head = axes.head < 0 ? 0 : i / head_stride % head_extent;
                const index_t cell = (l * heads + (grid.per_head ? head : 0)) * positions +
                                     (grid.per_position ? position : 0);
                change[static_cast<std::size_t>(cell)] += static_cast<double>(gradient.values[k]) * delta;
            }
        }
        patching_table table;
        table.grid = grid;
        table.values = tensor<float, 3>({layers, heads, positions});
        table.raw = tensor<float, 3>({layers, heads, positions});
        table.clean = clean_metric_;
        table.corrupt = corrupt_metric_;
        const double span = clean_metric_ - corrupt_metric_;
        for (index_t i = 0; i < table.values.size(); ++i) {
            const double delta = change[static_cast<std::size_t>(i)];
            table.raw.data()[i] = static_cast<float>(corrupt_metric_ + delta);
            table.values.data()[i] =
                span == 0.0 ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(delta / span);
        }
        return table;
    }

private:
    static index_t stride_of(const std::vector<index_t>& shape, std::size_t axis) {
        index_t stride = 1;
        for (std::size_t a = axis + 1; a < shape.size(); ++a) stride *= shape[a];
        return stride;
    }

    model_config config_;
    answer_metric metric_;
    index_t prompts_ = 0, length_ = 0;
    activation_cache clean_cache_, corrupt_cache_, gradient_cache_;
    double clean_metric_ = 0.0, corrupt_metric_ = 0.0;
};

MECHLENS_END_NAMESPACE
