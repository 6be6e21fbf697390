#pragma once
/// @file
/// Integrated gradients at any hook site the gradient pass fires (token embeddings being the usual case), with
/// Gauss-Legendre or Riemann quadrature and several path steps stacked on the batch axis; plus saliency and
/// gradient x input, which need one backward pass each.
///
/// Each takes optional splices (a dynamic_hooks holding SAEs or transcoders): every pass then goes through them, and
/// the site may be one of their extension sites (`blocks.2.hook_resid_post.hook_sae_acts_post`), whose attributions
/// summed over positions (per_channel) rank the features. At a model site that hosts a splice the attribution is to
/// the splice's output, what the rest of the model reads.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numbers>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/attribution/answer_metric.hpp"
#include "mechlens/grad/backward.hpp"
#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/compose.hpp"
#include "mechlens/hooks/dynamic.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/tensor.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// How the path integral over alpha in [0, 1] is approximated.
enum class integration_rule : std::uint8_t {
    gauss_legendre,     ///< Gauss-Legendre nodes and weights: exact for polynomials of degree 2n - 1.
    riemann_left,       ///< alpha = i / n, i = 0 .. n-1, weights 1 / n.
    riemann_right,      ///< alpha = (i + 1) / n, weights 1 / n.
    riemann_middle,     ///< alpha = (i + 1/2) / n, weights 1 / n.
    riemann_trapezoid,  ///< n evenly spaced points including 0 and 1 (n >= 2), end weights halved.
};

/// Nodes and weights of a quadrature rule on [0, 1], nodes ascending.
struct quadrature {
    std::vector<double> alphas;   ///< Where the integrand is evaluated.
    std::vector<double> weights;  ///< Their weights; they sum to 1.
};

/// The name of a rule, as the command line spells it ("gauss_legendre", "riemann_left", ...).
inline std::string to_string(integration_rule rule) {
    switch (rule) {
        case integration_rule::gauss_legendre:
            return "gauss_legendre";
        case integration_rule::riemann_left:
            return "riemann_left";
        case integration_rule::riemann_right:
            return "riemann_right";
        case integration_rule::riemann_middle:
            return "riemann_middle";
        case integration_rule::riemann_trapezoid:
            return "riemann_trapezoid";
    }
    return "unknown";
}

/// The `steps` nodes and weights of `rule` on [0, 1]. Gauss-Legendre nodes are the roots of the Legendre polynomial
/// P_steps found by Newton's method in double. Throws std::invalid_argument for steps < 1 (< 2 for the trapezoid).
inline quadrature integration_points(integration_rule rule, index_t steps) {
    if (steps < 1)
        throw std::invalid_argument("integration_points: " + std::to_string(steps) + " steps; need at least 1");
    if (rule == integration_rule::riemann_trapezoid && steps < 2)
        throw std::invalid_argument("integration_points: the trapezoid rule needs at least 2 steps (both ends)");
    const auto n = static_cast<std::size_t>(steps);
    const double count = static_cast<double>(steps);
    quadrature q{std::vector<double>(n), std::vector<double>(n)};
    switch (rule) {
        case integration_rule::gauss_legendre:
            for (std::size_t i = 0; i < n; ++i) {
                // Tricomi's estimate of the i-th largest root on [-1, 1], then Newton on P_n(x) = 0.
                double x = std::cos(std::numbers::pi * (static_cast<double>(i) + 0.75) / (count + 0.5));
                double derivative = 1.0;
                for (int iteration = 0; iteration < 100; ++iteration) {
                    double p = x, previous = 1.0;  // P_1 and P_0; the recurrence climbs to P_n and P_(n-1)
                    for (index_t k = 2; k <= steps; ++k) {
                        const double kd = static_cast<double>(k);
                        const double next = ((2.0 * kd - 1.0) * x * p - (kd - 1.0) * previous) / kd;
                        previous = p;
                        p = next;
                    }
                    derivative = count * (x * p - previous) / (x * x - 1.0);
                    const double change = p / derivative;
                    x -= change;
                    if (std::abs(change) <= 1e-16) break;
                }
                // Roots come largest first: alpha = (1 - x) / 2 lists them in ascending order.
                q.alphas[i] = 0.5 * (1.0 - x);
                q.weights[i] = 1.0 / ((1.0 - x * x) * derivative * derivative);  // half of 2 / ((1-x^2) P'^2)
            }
            break;
        case integration_rule::riemann_left:
        case integration_rule::riemann_right:
        case integration_rule::riemann_middle: {
            const double shift = rule == integration_rule::riemann_left    ? 0.0
                                 : rule == integration_rule::riemann_right ? 1.0
                                                                           : 0.5;
            for (std::size_t i = 0; i < n; ++i) {
                q.alphas[i] = (static_cast<double>(i) + shift) / count;
                q.weights[i] = 1.0 / count;
            }
            break;
        }
        case integration_rule::riemann_trapezoid:
            for (std::size_t i = 0; i < n; ++i) {
                q.alphas[i] = static_cast<double>(i) / (count - 1.0);
                q.weights[i] = (i == 0 || i + 1 == n ? 0.5 : 1.0) / (count - 1.0);
            }
            break;
    }
    return q;
}

/// Where the integration path starts: x(alpha) = baseline + alpha (x - baseline), x being the site's activation
/// on the prompts.
class ig_baseline {
public:
    /// What the baseline is made of.
    enum class source : std::uint8_t {
        zeros,       ///< The zero activation.
        tokens,      ///< The site's activation on other tokens (a corrupted prompt, or all pad/BOS ids).
        activation,  ///< An explicit activation tensor.
    };

    /// The zero activation.
    static ig_baseline zeros() { return ig_baseline{}; }
    /// The site's activation when the model reads `ids` (rows, pos) instead: rows is 1 (shared by every prompt) or
    /// the number of prompts, pos the prompts' length.
    static ig_baseline from_tokens(tensor_view<const std::int32_t, 2> ids) {
        ig_baseline b;
        b.source_ = source::tokens;
        b.token_rows_ = ids.extent(0);
        b.token_positions_ = ids.extent(1);
        for (index_t r = 0; r < ids.extent(0); ++r)
            for (index_t p = 0; p < ids.extent(1); ++p) b.tokens_.push_back(ids(r, p));
        return b;
    }
    /// The site's activation when every position reads token `id` (a pad or BOS token, say).
    static ig_baseline repeated_token(std::int32_t id) {
        ig_baseline b;
        b.source_ = source::tokens;
        b.tokens_ = {id};
        return b;
    }
    /// An explicit activation shaped like the site's, with batch extent 1 (shared) or the number of prompts.
    static ig_baseline from_activation(cached_activation value) {
        ig_baseline b;
        b.source_ = source::activation;
        b.activation_ = std::move(value);
        return b;
    }

    /// What the baseline is made of.
    [[nodiscard]] source kind() const noexcept { return source_; }
    /// The baseline tokens as (prompts, positions) for prompts of that shape; throws shape_error when they differ.
    [[nodiscard]] std::vector<std::int32_t> tokens_for(index_t prompts, index_t positions) const {
        if (token_rows_ == 0)  // repeated_token
            return std::vector<std::int32_t>(static_cast<std::size_t>(prompts * positions), tokens_.front());
        if (token_positions_ != positions || (token_rows_ != 1 && token_rows_ != prompts))
            throw shape_error("integrated gradients: baseline tokens are (" + std::to_string(token_rows_) + ", " +
                              std::to_string(token_positions_) + "), the prompts (" + std::to_string(prompts) + ", " +
                              std::to_string(positions) + "); need the same length and 1 or " +
                              std::to_string(prompts) + " rows");
        std::vector<std::int32_t> out;
        for (index_t r = 0; r < prompts; ++r) {
            const auto row = tokens_.begin() + (token_rows_ == 1 ? 0 : r) * positions;
            out.insert(out.end(), row, row + positions);
        }
        return out;
    }
    /// The explicit activation (empty unless kind() is source::activation).
    [[nodiscard]] const cached_activation& activation() const noexcept { return activation_; }

private:
    source source_ = source::zeros;
    std::vector<std::int32_t> tokens_{};  // (token_rows_, token_positions_), or one id when token_rows_ is 0
    index_t token_rows_ = 0, token_positions_ = 0;
    cached_activation activation_{};
};

/// Knobs of integrated_gradients.
struct integrated_gradients_options {
    integration_rule rule = integration_rule::gauss_legendre;  ///< Quadrature rule.
    index_t steps = 32;                                        ///< Number of quadrature nodes (alphas).
    /// Alphas evaluated together, stacked on the batch axis (rows = alphas x prompts); 0 puts every step in one
    /// pass. Larger chunks amortise the weight reads at the price of a bigger tape.
    index_t batch_steps = 8;
    /// Called after each chunk with (steps done, steps in all); may be empty.
    std::function<void(index_t, index_t)> progress{};
};

/// Integrated-gradient attributions of an answer_metric to one hook site, prompt by prompt.
struct integrated_gradients_result {
    site where{};                      ///< The site attributed.
    quadrature points{};               ///< The alphas and weights used.
    cached_activation attributions{};  ///< (x - baseline) * sum_i w_i grad(alpha_i), shaped like the site (batch, ...).
    tensor<double, 2> per_position{};  ///< (batch, pos): attributions summed over all but the position axis.
    /// (batch, channel): attributions summed over all but the last axis; at an SAE or transcoder latent site, each
    /// feature's attribution summed over positions.
    tensor<double, 2> per_channel{};
    std::vector<double> totals{};      ///< Per prompt: the sum of its attributions.
    std::vector<double> input_values{};     ///< Per prompt: F(x), the metric on the unmodified prompt.
    std::vector<double> baseline_values{};  ///< Per prompt: F(baseline), the metric with the site set to the baseline.
    double input_mean = 0.0;                ///< Mean of input_values (the metric answer_metric::mean reports).
    double baseline_mean = 0.0;             ///< Mean of baseline_values.
    /// Per prompt: totals - (F(x) - F(baseline)); zero for an exact integral (completeness).
    std::vector<double> completeness_errors{};
    /// The completeness error of the mean metric: mean of completeness_errors.
    double completeness_error = 0.0;

    /// The largest |completeness error| relative to |F(x) - F(baseline)| of its prompt.
    [[nodiscard]] double relative_completeness_error() const noexcept {
        double worst = 0.0;
        for (std::size_t i = 0; i < completeness_errors.size(); ++i) {
            const double change = std::abs(input_values[i] - baseline_values[i]);
            worst = std::max(worst, std::abs(completeness_errors[i]) / std::max(change, 1e-30));
        }
        return worst;
    }
};

/// A gradient-based attribution at one site from a single backward pass (saliency or gradient x input).
struct gradient_attribution_result {
    site where{};                        ///< The site attributed.
    cached_activation values{};          ///< Shaped like the site (batch, ...).
    tensor<double, 2> per_position{};    ///< (batch, pos): values summed over all but the position axis.
    /// (batch, channel): values summed over all but the last axis (per feature at an SAE or transcoder latent site).
    tensor<double, 2> per_channel{};
    std::vector<double> input_values{};  ///< Per prompt: F(x).
};

namespace detail {

/// Throws std::invalid_argument unless `where` is a site the gradient pass fires, with a path that makes sense: a
/// model site, or an extension site that an attached splice of `splices` declares.
inline void ig_check_site(const model_config& c, const site& where, const std::string& who,
                          const dynamic_hooks* splices) {
    if (where.extension >= 0) {
        if (splices == nullptr || splices->extension_width(where) == 0)
            throw std::invalid_argument(who + ": " + to_string(where) +
                                        " is an extension site, and no splice attached to the hooks given declares it");
        return;
    }
    const std::string name(site_suffix(where.kind));
    if (where.kind == site_kind::attn_result)
        throw std::invalid_argument(who +
                                    ": attn.hook_result is not computed by the gradient pass; attribute to "
                                    "attn.hook_z (per head) instead");
    if (where.kind == site_kind::attn_scores)
        throw std::invalid_argument(who +
                                    ": attn.hook_attn_scores holds -inf at masked entries, so no straight path "
                                    "reaches it; use attn.hook_pattern");
    if (!has_site_kind(c, where.kind))
        throw std::invalid_argument(who + ": the model has no " + name + " site (" +
                                    missing_kind_reason(c, where.kind) + ")");
    if (is_block_site(where.kind) && (where.layer < 0 || where.layer >= c.n_layers))
        throw std::invalid_argument(who + ": layer " + std::to_string(where.layer) + " of " + name +
                                    " is outside a model with " + std::to_string(c.n_layers) + " layers");
    if (!is_block_site(where.kind) && where.layer != -1)
        throw std::invalid_argument(who + ": " + name + " is a global site; its layer must be -1, not " +
                                    std::to_string(where.layer));
}

/// Throws std::invalid_argument for empty prompts or a metric that cannot answer them.
inline void ig_check_inputs(const model_config& c, tensor_view<const std::int32_t, 2> tokens,
                            const answer_metric& answer, const std::string& who) {
    if (tokens.extent(0) < 1 || tokens.extent(1) < 1) throw std::invalid_argument(who + ": no prompt tokens");
    answer.check(c.vocab_out());
    (void)answer.resolve_position(tokens.extent(1));
    if (tokens.extent(0) % answer.prompts() != 0)
        throw std::invalid_argument(who + ": " + std::to_string(tokens.extent(0)) + " prompts but the metric has " +
                                    std::to_string(answer.prompts()) +
                                    " answers; the prompt count must be a multiple of it");
}

/// The hook policy behind every attribution here: at its one site it can copy the activation out, overwrite it with
/// points on the path (batch row r = step r / prompts, prompt r % prompts), accumulate weighted gradients per prompt,
/// or copy the gradient out.
struct ig_probe {
    site target{};                       ///< The one site it acts at.
    index_t prompts = 1;                 ///< Prompts per path step.
    bool copy_activation = false;        ///< Copy the activation into `activation`.
    bool copy_gradient = false;          ///< Copy the gradient into `gradient`.
    const float* input = nullptr;        ///< (prompts, row): x, when overwriting.
    const float* baseline = nullptr;     ///< (prompts, row): the baseline, when overwriting.
    std::vector<double> alphas{};        ///< One per path step of this pass; empty = leave the activation alone.
    std::vector<double> weights{};       ///< One per path step; empty = do not accumulate gradients.
    std::vector<double>* sum = nullptr;  ///< (prompts, row): sum_i w_i grad(alpha_i).
    cached_activation activation{};      ///< The copied activation.
    cached_activation gradient{};        ///< The copied gradient.
    bool fired = false;                  ///< True once the forward pass reached the site.

    /// Every site the passes fire: the target is only known at run time, and a comparison per site is cheap.
    static constexpr bool wants(site_kind kind) noexcept { return kind != site_kind::attn_result; }
    /// As wants.
    static constexpr bool wants_gradient(site_kind kind) noexcept { return kind != site_kind::attn_result; }

    /// Copies or overwrites the target's activation.
    template <std::size_t Rank>
    void on_activation(const site& s, tensor_view<float, Rank> view, const hook_context&) {
        if (s != target) return;
        fired = true;
        float* data = dense(view);
        const index_t rows = view.extent(0), width = view.size() / std::max<index_t>(rows, 1);
        if (copy_activation) activation = copy(view);
        if (alphas.empty()) return;
        for (index_t r = 0; r < rows; ++r) {
            const double alpha = alphas[static_cast<std::size_t>(r / prompts)];
            const index_t offset = (r % prompts) * width;
            for (index_t i = 0; i < width; ++i) {
                const double b = static_cast<double>(baseline[offset + i]);
                data[r * width + i] = static_cast<float>(b + alpha * (static_cast<double>(input[offset + i]) - b));
            }
        }
    }
    /// Accumulates or copies the target's gradient.
    template <std::size_t Rank>
    void on_gradient(const site& s, tensor_view<float, Rank> view, const hook_context&) {
        if (s != target) return;
        const float* data = dense(view);
        const index_t rows = view.extent(0), width = view.size() / std::max<index_t>(rows, 1);
        if (copy_gradient) gradient = copy(view);
        if (weights.empty()) return;
        for (index_t r = 0; r < rows; ++r) {
            const double w = weights[static_cast<std::size_t>(r / prompts)];
            double* out = sum->data() + (r % prompts) * width;
            for (index_t i = 0; i < width; ++i) out[i] += w * static_cast<double>(data[r * width + i]);
        }
    }

private:
    template <std::size_t Rank>
    static float* dense(tensor_view<float, Rank> view) {
        // The gradient pass hands out views of dense (rows, width) buffers; a strided one would be a bug there.
        if (!view.is_contiguous()) throw std::logic_error("ig_probe: the site's view is not contiguous");
        return view.data();
    }
    template <std::size_t Rank>
    static cached_activation copy(tensor_view<float, Rank> view) {
        cached_activation out;
        out.shape.assign(view.shape().begin(), view.shape().end());
        out.values.assign(view.data(), view.data() + view.size());
        return out;
    }
};

/// `tokens` (prompts, pos) repeated `times` times along the batch axis: (times * prompts, pos).
inline std::vector<std::int32_t> ig_repeat_rows(tensor_view<const std::int32_t, 2> tokens, index_t times) {
    std::vector<std::int32_t> out;
    out.reserve(static_cast<std::size_t>(times * tokens.size()));
    for (index_t t = 0; t < times; ++t)
        for (index_t r = 0; r < tokens.extent(0); ++r)
            for (index_t p = 0; p < tokens.extent(1); ++p) out.push_back(tokens(r, p));
    return out;
}

/// Calls `pass(policy)` with `probe` attached: alone without splices; after the splices at a model site (it sees and
/// replaces what the rest of the model reads, and its gradient); inside them, registered at the extension site, when
/// the target is one.
template <class Pass>
void ig_with_probe(ig_probe& probe, dynamic_hooks* splices, Pass&& pass) {
    if (splices == nullptr) {
        pass(probe);
    } else if (probe.target.extension < 0) {
        auto spliced = compose(*splices, probe);
        pass(spliced);
    } else {
        const scoped_hooks activation = splices->scoped(probe.target, as_callback(probe));
        const scoped_hooks gradient = splices->scoped_gradient(probe.target, as_gradient_callback(probe));
        pass(*splices);
    }
}

/// A forward pass only (no backward) of `tokens` with `probe` attached (through `splices` when not null); returns
/// the metric of each batch row.
template <class Model>
    requires detail::gradient_model_of<Model, float>
std::vector<double> ig_probe_forward(const Model& params, tensor_view<const std::int32_t, 2> tokens,
                                     const answer_metric& answer, ig_probe& probe, backprop_tape<float>& tape,
                                     dynamic_hooks* splices) {
    ig_with_probe(probe, splices, [&](auto& policy) { taped_forward(params, tokens, tape, policy); });
    if (!probe.fired) throw std::logic_error("attribution: the forward pass never reached " + to_string(probe.target));
    return answer.values(tape.logits(), tokens.extent(1));
}

/// Sums `values` (shaped like a site of kind `kind`, batch first) over every axis but batch and position.
inline tensor<double, 2> ig_sum_per_position(const std::vector<double>& values, const std::vector<index_t>& shape,
                                             site_kind kind) {
    const std::size_t axis = position_axis(kind);
    const index_t batch = shape.at(0), positions = shape.at(axis);
    index_t outer = 1, inner = 1;  // elements between batch and position axes, and after the position axis
    for (std::size_t a = 1; a < axis; ++a) outer *= shape[a];
    for (std::size_t a = axis + 1; a < shape.size(); ++a) inner *= shape[a];
    tensor<double, 2> out({batch, positions});
    for (index_t b = 0; b < batch; ++b)
        for (index_t o = 0; o < outer; ++o)
            for (index_t p = 0; p < positions; ++p)
                for (index_t i = 0; i < inner; ++i)
                    out(b, p) += values[static_cast<std::size_t>(((b * outer + o) * positions + p) * inner + i)];
    return out;
}

/// Sums `values` (shaped like a site, batch first) over every axis but batch and the last: (batch, channel).
inline tensor<double, 2> ig_sum_per_channel(const std::vector<double>& values, const std::vector<index_t>& shape) {
    const index_t batch = shape.at(0), channels = shape.back();
    const index_t rows = static_cast<index_t>(values.size()) / std::max<index_t>(batch * channels, 1);
    tensor<double, 2> out({batch, channels});
    for (index_t b = 0; b < batch; ++b)
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < channels; ++i)
                out(b, i) += values[static_cast<std::size_t>((b * rows + r) * channels + i)];
    return out;
}

/// Runs one forward and backward pass at x, returning the probe with the activation and gradient copied.
template <class Model>
    requires detail::gradient_model_of<Model, float>
ig_probe ig_activation_and_gradient(const Model& params, tensor_view<const std::int32_t, 2> tokens,
                                    const answer_metric& answer, const site& where, const std::string& who,
                                    std::vector<double>& input_values, dynamic_hooks* splices) {
    ig_check_site(detail::config_of(params), where, who, splices);
    ig_check_inputs(detail::config_of(params), tokens, answer, who);
    ig_probe probe;
    probe.target = where;
    probe.copy_activation = probe.copy_gradient = true;
    backprop_tape<float> tape;
    // The summed metric gives each prompt its own metric's gradient, not 1/prompts of it.
    ig_with_probe(probe, splices, [&](auto& policy) {
        (void)forward_backward(params, tokens, answer.as_grad_metric(true), static_cast<model_parameters*>(nullptr),
                               policy, tape);
    });
    if (!probe.fired) throw std::logic_error(who + ": the forward pass never reached " + to_string(where));
    input_values = answer.values(tape.logits(), tokens.extent(1));
    return probe;
}

}  // namespace detail

/// Integrated gradients of `metric` with respect to the activation at `where`, for the prompts `tokens`
/// (prompts, pos): x is the site's activation on the prompts, the path x(alpha) = baseline + alpha (x - baseline)
/// replaces it in the forward pass (everything upstream stays as the prompt has it), and d metric / d site is read
/// at each alpha. Each prompt's attributions approximate F(x) - F(baseline) of its own metric (completeness).
/// With `splices` (run-time hooks holding SAEs or transcoders) every pass goes through them, and `where` may be one of
/// their extension sites (an SAE's latents: the path then runs over the features, and per_channel ranks them).
/// Throws std::invalid_argument for a site the model lacks or the gradient pass does not fire, zero steps, or a
/// metric that does not fit the prompts; shape_error for a baseline of the wrong shape.
template <class Model>
    requires detail::gradient_model_of<Model, float>
integrated_gradients_result integrated_gradients(const Model& params, tensor_view<const std::int32_t, 2> tokens,
                                                 const answer_metric& answer, const site& where,
                                                 const ig_baseline& baseline = ig_baseline::zeros(),
                                                 const integrated_gradients_options& options = {},
                                                 dynamic_hooks* splices = nullptr) {
    const std::string who = "integrated_gradients at " + to_string(where);
    const model_config& c = detail::config_of(params);
    detail::ig_check_site(c, where, who, splices);
    detail::ig_check_inputs(c, tokens, answer, who);
    if (options.batch_steps < 0)
        throw std::invalid_argument(who + ": batch_steps is " + std::to_string(options.batch_steps) +
                                    "; use 0 for all steps at once");
    integrated_gradients_result result;
    result.where = where;
    result.points = integration_points(options.rule, options.steps);
    const index_t prompts = tokens.extent(0), positions = tokens.extent(1);
    backprop_tape<float> tape;

    // x and F(x) from the unmodified prompts.
    detail::ig_probe probe;
    probe.target = where;
    probe.copy_activation = true;
    result.input_values = detail::ig_probe_forward(params, tokens, answer, probe, tape, splices);
    const cached_activation input = std::move(probe.activation);  // (prompts, ...)
    const index_t width = input.size() / prompts;                 // elements of one prompt's activation

    // The baseline, expanded to one row per prompt.
    std::vector<float> base(static_cast<std::size_t>(input.size()), 0.0f);  // (prompts, ...)
    if (baseline.kind() == ig_baseline::source::tokens) {
        const std::vector<std::int32_t> ids = baseline.tokens_for(prompts, positions);
        for (std::int32_t id : ids)
            if (id < 0 || id >= c.d_vocab)
                throw std::invalid_argument(who + ": baseline token " + std::to_string(id) + " is outside [0, " +
                                            std::to_string(c.d_vocab) + ")");
        detail::ig_probe capture;
        capture.target = where;
        capture.copy_activation = true;
        (void)detail::ig_probe_forward(params, tensor_view<const std::int32_t, 2>(ids.data(), {prompts, positions}),
                                       answer, capture, tape, splices);
        base = std::move(capture.activation.values);
    } else if (baseline.kind() == ig_baseline::source::activation) {
        const cached_activation& given = baseline.activation();
        std::vector<index_t> expected = input.shape;
        const bool shared = !given.shape.empty() && given.shape[0] == 1;
        if (shared) expected[0] = 1;
        if (given.shape != expected || given.size() != (shared ? width : input.size())) {
            std::string shape;
            for (index_t e : input.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(e);
            throw shape_error(who + ": the baseline activation must be shaped like the site, (" + shape +
                              "), or have batch extent 1");
        }
        for (index_t r = 0; r < prompts; ++r)
            std::copy_n(given.values.begin() + (shared ? 0 : r * width), width, base.begin() + r * width);
    }

    // F(baseline): the prompts with the site set to the baseline (alpha = 0).
    {
        detail::ig_probe at_baseline;
        at_baseline.target = where;
        at_baseline.prompts = prompts;
        at_baseline.input = input.values.data();
        at_baseline.baseline = base.data();
        at_baseline.alphas = {0.0};
        result.baseline_values = detail::ig_probe_forward(params, tokens, answer, at_baseline, tape, splices);
    }

    // The path: chunks of alphas stacked on the batch axis, each row its own prompt's metric (the summed metric).
    std::vector<double> gradient_sum(static_cast<std::size_t>(input.size()), 0.0);  // (prompts, ...)
    const index_t steps = options.steps;
    const index_t chunk = options.batch_steps == 0 ? steps : std::min(options.batch_steps, steps);
    const metric summed = answer.as_grad_metric(true);
    for (index_t first = 0; first < steps; first += chunk) {
        const index_t count = std::min(chunk, steps - first);
        const std::vector<std::int32_t> ids = detail::ig_repeat_rows(tokens, count);
        detail::ig_probe path;
        path.target = where;
        path.prompts = prompts;
        path.input = input.values.data();
        path.baseline = base.data();
        path.sum = &gradient_sum;
        const auto begin = static_cast<std::size_t>(first), end = static_cast<std::size_t>(first + count);
        path.alphas.assign(result.points.alphas.begin() + static_cast<std::ptrdiff_t>(begin),
                           result.points.alphas.begin() + static_cast<std::ptrdiff_t>(end));
        path.weights.assign(result.points.weights.begin() + static_cast<std::ptrdiff_t>(begin),
                            result.points.weights.begin() + static_cast<std::ptrdiff_t>(end));
        detail::ig_with_probe(path, splices, [&](auto& policy) {
            (void)forward_backward(params,
                                   tensor_view<const std::int32_t, 2>(ids.data(), {count * prompts, positions}), summed,
                                   static_cast<model_parameters*>(nullptr), policy, tape);
        });
        if (options.progress) options.progress(first + count, steps);
    }

    // Attributions (x - baseline) * average gradient, summed in double before the one rounding to float.
    std::vector<double> attribution(gradient_sum.size());  // (prompts, ...)
    for (std::size_t i = 0; i < attribution.size(); ++i)
        attribution[i] = (static_cast<double>(input.values[i]) - static_cast<double>(base[i])) * gradient_sum[i];
    result.attributions.shape = input.shape;
    result.attributions.values.resize(attribution.size());
    std::transform(attribution.begin(), attribution.end(), result.attributions.values.begin(),
                   [](double v) { return static_cast<float>(v); });
    result.per_position = detail::ig_sum_per_position(attribution, input.shape, where.kind);
    result.per_channel = detail::ig_sum_per_channel(attribution, input.shape);

    result.totals.assign(static_cast<std::size_t>(prompts), 0.0);
    for (index_t r = 0; r < prompts; ++r)
        for (index_t i = 0; i < width; ++i)
            result.totals[static_cast<std::size_t>(r)] += attribution[static_cast<std::size_t>(r * width + i)];
    for (std::size_t r = 0; r < result.totals.size(); ++r) {
        result.completeness_errors.push_back(result.totals[r] - (result.input_values[r] - result.baseline_values[r]));
        result.input_mean += result.input_values[r] / static_cast<double>(prompts);
        result.baseline_mean += result.baseline_values[r] / static_cast<double>(prompts);
        result.completeness_error += result.completeness_errors[r] / static_cast<double>(prompts);
    }
    return result;
}

/// Integrated gradients at the token embeddings (`hook_embed`), the classic case: the baseline is typically zeros
/// or a pad/BOS token's embedding (ig_baseline::repeated_token). Positions are attributed through the tokens only;
/// learned position embeddings stay as they are.
template <class Model>
    requires detail::gradient_model_of<Model, float>
integrated_gradients_result embedding_integrated_gradients(const Model& params,
                                                                  tensor_view<const std::int32_t, 2> tokens,
                                                                  const answer_metric& answer,
                                                                  const ig_baseline& baseline = ig_baseline::zeros(),
                                                                  const integrated_gradients_options& options = {}) {
    return integrated_gradients(params, tokens, answer, site{site_kind::embed, -1}, baseline, options);
}

/// Saliency: |d metric / d site| at the prompts' own activation, each prompt's own metric, one backward pass
/// (through `splices` when given; `where` may then be one of their extension sites).
template <class Model>
    requires detail::gradient_model_of<Model, float>
gradient_attribution_result saliency(const Model& params, tensor_view<const std::int32_t, 2> tokens,
                                     const answer_metric& answer, const site& where, dynamic_hooks* splices = nullptr) {
    gradient_attribution_result out;
    out.where = where;
    detail::ig_probe probe = detail::ig_activation_and_gradient(
        params, tokens, answer, where, "saliency at " + to_string(where), out.input_values, splices);
    out.values = std::move(probe.gradient);
    std::vector<double> magnitude(out.values.values.size());
    for (std::size_t i = 0; i < magnitude.size(); ++i) {
        out.values.values[i] = std::abs(out.values.values[i]);
        magnitude[i] = static_cast<double>(out.values.values[i]);
    }
    out.per_position = detail::ig_sum_per_position(magnitude, out.values.shape, where.kind);
    out.per_channel = detail::ig_sum_per_channel(magnitude, out.values.shape);
    return out;
}

/// Gradient x input: x * d metric / d site at the prompts' own activation x (integrated gradients with a zero
/// baseline and a single step at alpha = 1), one backward pass (through `splices` when given; `where` may then be one
/// of their extension sites).
template <class Model>
    requires detail::gradient_model_of<Model, float>
gradient_attribution_result gradient_times_input(const Model& params, tensor_view<const std::int32_t, 2> tokens,
                                                 const answer_metric& answer, const site& where,
                                                 dynamic_hooks* splices = nullptr) {
    gradient_attribution_result out;
    out.where = where;
    detail::ig_probe probe = detail::ig_activation_and_gradient(
        params, tokens, answer, where, "gradient_times_input at " + to_string(where), out.input_values, splices);
    out.values = std::move(probe.gradient);
    std::vector<double> product(out.values.values.size());
    for (std::size_t i = 0; i < product.size(); ++i) {
        product[i] = static_cast<double>(out.values.values[i]) * static_cast<double>(probe.activation.values[i]);
        out.values.values[i] = static_cast<float>(product[i]);
    }
    out.per_position = detail::ig_sum_per_position(product, out.values.shape, where.kind);
    out.per_channel = detail::ig_sum_per_channel(product, out.values.shape);
    return out;
}

MECHLENS_END_NAMESPACE
