#pragma once
/// @file
/// Evaluation of a sparse autoencoder spliced in at its hook site, over held-out token contexts, with SAELens's
/// definitions (`sae_lens/evals.py`, version 6):
///   L0              mean over tokens of the number of latents with acts != 0
///   FVU             sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean(x)||^2, mean(x) the per-dimension mean over every
///                   evaluated token (SAELens's ExplainedVarianceCalculator: Var(x) = E||x||^2 - ||E x||^2);
///                   explained variance = 1 - FVU
///   cosine          mean over tokens of cos(x_t, x_hat_t)
///   CE clean        mean next-token cross-entropy (natural log) of the unmodified model
///   CE spliced      the same with the host activation replaced by the reconstruction (no error term)
///   CE ablated      the same with the host activation zero-ablated at every position
///   CE recovered    (CE ablated - CE spliced) / (CE ablated - CE clean)   (SAELens's ce_loss_score)
///   dead fraction   latents never active over the evaluated tokens
///   dense fraction  latents active on more than `dense_threshold` (10 %) of the evaluated tokens, the "high
///                   frequency" latents of Rajamanoharan et al. 2024 (JumpReLU SAEs, section 5)
/// Tokens in `ignore_tokens` (SAELens's exclude_special_tokens: BOS and friends) are left out of every metric: their
/// rows are not counted, the spliced pass keeps their original activation (as SAELens's replacement hook does), and
/// predictions made at them are not counted in the cross-entropies. Memory: one batch of contexts (activations,
/// three sets of logits' worth of workspace) and per-latent counters; sums are accumulated in double.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/detail/throughput.hpp"
#include "mechlens/hooks/dynamic.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/site_traits.hpp"
#include "mechlens/hooks/splice.hpp"
#include "mechlens/kernels/generic.hpp"
#include "mechlens/model/forward.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/harvest_source.hpp"
#include "mechlens/sae/sparse_autoencoder.hpp"
#include "mechlens/sae/transcoder.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Fills `context` with the next context's tokens and returns true, or returns false when there are no more.
using context_supplier = std::function<bool(std::span<std::int32_t> context)>;

/// What evaluate_sae reads and how.
struct sae_eval_options {
    index_t context = 128;                    ///< Tokens per context.
    std::int64_t tokens_total = 0;            ///< Tokens to evaluate, rounded down to whole contexts.
    index_t batch_contexts = 8;               ///< Contexts per forward pass.
    std::vector<std::int32_t> ignore_tokens;  ///< Token ids left out of every metric (e.g. BOS).
    double dense_threshold = 0.1;             ///< A latent active on more than this fraction of tokens is dense.
};

/// How far an evaluation is, handed to the progress callback after every batch.
struct sae_eval_progress {
    std::int64_t tokens_done = 0;    ///< Tokens run so far (ignored ones included).
    std::int64_t tokens_total = 0;   ///< Tokens that will be run.
    double seconds = 0.0;            ///< Since the start.
    double tokens_per_second = 0.0;  ///< tokens_done / seconds.
    double eta_seconds = 0.0;        ///< Time left at that rate.

    /// The report after `done` of `total` tokens, timed from `started`.
    static sae_eval_progress at(std::int64_t done, std::int64_t total, std::chrono::steady_clock::time_point started) {
        sae_eval_progress p;
        p.tokens_done = done;
        p.tokens_total = total;
        p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        const detail::throughput_estimate rate = detail::estimate_throughput(done, total - done, p.seconds);
        p.tokens_per_second = rate.per_second;
        p.eta_seconds = rate.eta_seconds;
        return p;
    }
};

/// Called after every batch.
using sae_eval_callback = std::function<void(const sae_eval_progress&)>;

/// The metrics of one evaluation (definitions in the file comment).
struct sae_eval_result {
    std::int64_t contexts = 0;            ///< Contexts run (fewer than asked when the supplier ran out).
    std::int64_t tokens = 0;              ///< Tokens counted in the activation metrics (ignored ones left out).
    std::int64_t predictions = 0;         ///< Next-token predictions counted in the cross-entropies.
    double l0 = 0.0;                      ///< Mean active latents per token.
    double l1 = 0.0;                      ///< Mean sum of |acts| per token.
    double mse = 0.0;                     ///< Mean ||x - x_hat||^2 per token.
    double total_variance = 0.0;          ///< Mean ||x - mean(x)||^2 per token.
    double fvu = 0.0;                     ///< Fraction of variance unexplained, mse / total_variance.
    double explained_variance = 0.0;      ///< 1 - fvu.
    double cosine = 0.0;                  ///< Mean cos(x, x_hat).
    double ce_clean = 0.0;                ///< Cross-entropy of the unmodified model.
    double ce_spliced = 0.0;              ///< With the reconstruction in place of the activation.
    double ce_ablated = 0.0;              ///< With the activation zeroed.
    double ce_recovered = 0.0;            ///< (ablated - spliced) / (ablated - clean).
    double dead_fraction = 0.0;           ///< Latents never active.
    double dense_fraction = 0.0;          ///< Latents active on more than dense_threshold of the tokens.
    std::vector<std::int64_t> active_counts;  ///< (d_sae) tokens on which each latent was active.
    double seconds = 0.0;                 ///< Wall-clock time.
};

namespace detail {

/// Running per-dimension mean and sum of squared deviations (Chan et al.'s parallel update), in double.
class running_variance {
public:
    explicit running_variance(index_t width)
        : mean_(static_cast<std::size_t>(width), 0.0), m2_(mean_.size(), 0.0), batch_(2 * mean_.size(), 0.0) {}
    /// Merges the rows of `rows` (n, width) whose flag in `counted` is set.
    void add(const std::vector<double>& rows, const std::vector<unsigned char>& counted) {
        const std::size_t width = mean_.size();
        std::fill(batch_.begin(), batch_.end(), 0.0);  // (2, width): the batch's mean, then its squared deviations
        double* mean = batch_.data();
        double* m2 = batch_.data() + width;
        std::int64_t n = 0;
        for (std::size_t r = 0; r < counted.size(); ++r) {
            if (counted[r] == 0) continue;
            ++n;
            for (std::size_t i = 0; i < width; ++i) {
                const double delta = rows[r * width + i] - mean[i];
                mean[i] += delta / static_cast<double>(n);
                m2[i] += delta * (rows[r * width + i] - mean[i]);
            }
        }
        if (n == 0) return;
        const auto total = static_cast<double>(count_ + n);
        for (std::size_t i = 0; i < width; ++i) {
            const double delta = mean[i] - mean_[i];
            mean_[i] += delta * static_cast<double>(n) / total;
            m2_[i] += m2[i] + delta * delta * static_cast<double>(count_) * static_cast<double>(n) / total;
        }
        count_ += n;
    }
    /// Sum over dimensions of the squared deviations from the mean, over every row added.
    [[nodiscard]] double sum_of_squares() const {
        double s = 0.0;
        for (double v : m2_) s += v;
        return s;
    }

private:
    std::vector<double> mean_, m2_;  // (width) each, over every row so far
    std::vector<double> batch_;      // (2, width) scratch
    std::int64_t count_ = 0;
};

/// True when `token` is one of `ignored`.
inline bool ignored_token(const std::vector<std::int32_t>& ignored, std::int32_t token) {
    return std::find(ignored.begin(), ignored.end(), token) != ignored.end();
}

/// Sum over the counted positions of the next-token cross-entropy of `logits` (batch, pos, vocab) for `tokens`
/// (batch, pos); position p predicts token p + 1 and counts unless token p is ignored. Adds the count to `count`.
inline double cross_entropy_sum(tensor_view<const float, 3> logits, tensor_view<const std::int32_t, 2> tokens,
                                const std::vector<std::int32_t>& ignored, std::int64_t& count) {
    double sum = 0.0;
    const index_t vocab = logits.extent(2);
    for (index_t b = 0; b < tokens.extent(0); ++b)
        for (index_t p = 0; p + 1 < tokens.extent(1); ++p) {
            if (ignored_token(ignored, tokens(b, p))) continue;
            const float* row = &logits(b, p, 0);
            sum += kernels::generic::softmax_denominator(row, vocab).log_sum() -
                   static_cast<double>(row[tokens(b, p + 1)]);
            ++count;
        }
    return sum;
}

/// Throws std::invalid_argument unless `hook` names a site of the model that can host an SAE of width d_in.
inline site sae_host_site(const transformer& model, std::string_view hook, index_t d_in, const char* who) {
    const site where = site_from_name(hook, model.config());
    if (!can_host_splice(where.kind))
        throw std::invalid_argument(std::string(who) + ": " + to_string(where) +
                                    " cannot hold an SAE (hosts are rank-3 sites outside the norms)");
    const index_t width = site_width(model.config(), where.kind);
    if (width != d_in)
        throw std::invalid_argument(std::string(who) + ": the SAE reads " + std::to_string(d_in) + " values per token but " +
                                    to_string(where) + " has " + std::to_string(width));
    return where;
}

/// Throws std::invalid_argument unless the run options make sense for `model`.
inline void check_eval_options(const transformer& model, const sae_eval_options& o, const char* who) {
    if (o.context < 2) throw std::invalid_argument(std::string(who) + ": the context must hold at least 2 tokens");
    if (o.context > model.config().n_ctx)
        throw std::invalid_argument(std::string(who) + ": the context of " + std::to_string(o.context) +
                                    " tokens exceeds the model's n_ctx " + std::to_string(model.config().n_ctx));
    if (o.tokens_total < o.context)
        throw std::invalid_argument(std::string(who) + ": tokens_total " + std::to_string(o.tokens_total) +
                                    " is less than one context of " + std::to_string(o.context));
    if (o.batch_contexts <= 0) throw std::invalid_argument(std::string(who) + ": batch_contexts must be positive");
    if (!(o.dense_threshold >= 0.0 && o.dense_threshold <= 1.0))
        throw std::invalid_argument(std::string(who) + ": dense_threshold must be in [0, 1]");
}

}  // namespace detail

namespace detail {

/// The evaluation loop of evaluate_sae and evaluate_transcoder: `module` (built without its error term, `d_sae`
/// latents at `.hook_sae_acts_post`, output at `.hook_sae_output`) spliced in at `host`, whose activation, as the
/// host's own callbacks see it before the splice, is what the module reconstructs (width `d_in`).
inline sae_eval_result evaluate_splice(const transformer& model, const site& host,
                                       const std::shared_ptr<const splice>& splice_module, index_t d_in, index_t d_sae,
                                       const context_supplier& next, const sae_eval_options& o,
                                       const sae_eval_callback& progress, const char* who) {
    const model_config& c = model.config();
    const index_t T = o.context;
    const std::int64_t contexts_total = o.tokens_total / T;
    const std::string host_name = to_string(host);

    sae_eval_result result;
    result.active_counts.assign(static_cast<std::size_t>(d_sae), 0);
    detail::running_variance variance(d_in);
    double l0_sum = 0.0, l1_sum = 0.0, resid_sum = 0.0, cosine_sum = 0.0;
    double ce_sums[3] = {0.0, 0.0, 0.0};
    std::int64_t ce_counts[3] = {0, 0, 0};

    // One batch's state, shared with the callbacks below.
    std::vector<std::int32_t> tokens;        // (batch, T)
    std::vector<unsigned char> counted;      // (batch * T) 1 unless the token is ignored
    std::vector<double> x_rows;              // (batch * T, d_in) the activation reconstructed
    std::vector<float> ignored_rows;         // (batch * T, d_in) original rows, restored at ignored positions
    index_t batch = 0;

    dynamic_hooks hooks(c);
    workspace ws;
    tensor<float, 3> logits;
    const auto started = std::chrono::steady_clock::now();
    std::int64_t done_contexts = 0;
    while (done_contexts < contexts_total) {
        const index_t want = static_cast<index_t>(std::min<std::int64_t>(o.batch_contexts, contexts_total - done_contexts));
        tokens.resize(static_cast<std::size_t>(want * T));
        batch = 0;
        while (batch < want && next(std::span<std::int32_t>(tokens.data() + batch * T, static_cast<std::size_t>(T))))
            ++batch;
        if (batch == 0) break;
        tokens.resize(static_cast<std::size_t>(batch * T));
        for (const std::int32_t t : tokens)
            if (t < 0 || t >= c.d_vocab)
                throw std::invalid_argument(std::string(who) + ": token id " + std::to_string(t) +
                                            " is outside the vocabulary of " + std::to_string(c.d_vocab));
        const tensor_view<const std::int32_t, 2> ids(tokens.data(), {batch, T});
        const index_t rows = batch * T;
        counted.assign(static_cast<std::size_t>(rows), 1);
        bool any_ignored = false;
        for (index_t r = 0; r < rows; ++r)
            if (detail::ignored_token(o.ignore_tokens, tokens[static_cast<std::size_t>(r)])) {
                counted[static_cast<std::size_t>(r)] = 0;
                any_ignored = true;
            }
        const extents<3> shape{batch, T, c.vocab_out()};
        if (logits.shape() != shape) logits = tensor<float, 3>(shape);

        // Clean.
        forward(model, ids, logits.view(), ws, hooks);
        ce_sums[0] += detail::cross_entropy_sum(logits.view(), ids, o.ignore_tokens, ce_counts[0]);

        // Spliced: the reconstruction replaces the activation (the original stays at ignored positions).
        {
            auto splice_guard = hooks.scoped_splice(host_name, splice_module);
            auto input_guard = hooks.scoped(host_name, [&](const site&, activation_view v, const hook_context&) {
                const auto x = v.as<3>();  // (batch, T, d_in) the activation the splice reconstructs
                x_rows.resize(static_cast<std::size_t>(rows * d_in));
                if (any_ignored) ignored_rows.resize(x_rows.size());
                for (index_t b = 0; b < batch; ++b)
                    for (index_t p = 0; p < T; ++p)
                        for (index_t i = 0; i < d_in; ++i) {
                            const std::size_t k = static_cast<std::size_t>((b * T + p) * d_in + i);
                            x_rows[k] = static_cast<double>(x(b, p, i));
                            if (any_ignored) ignored_rows[k] = x(b, p, i);
                        }
            });
            auto acts_guard = hooks.scoped(host_name + ".hook_sae_acts_post", [&](const site&, activation_view v,
                                                                                  const hook_context&) {
                const auto acts = v.as<3>();  // (batch, T, d_sae)
                for (index_t b = 0; b < batch; ++b)
                    for (index_t p = 0; p < T; ++p) {
                        if (counted[static_cast<std::size_t>(b * T + p)] == 0) continue;
                        for (index_t j = 0; j < d_sae; ++j) {
                            const float a = acts(b, p, j);
                            if (a == 0.0f) continue;
                            l0_sum += 1.0;
                            l1_sum += std::abs(static_cast<double>(a));
                            ++result.active_counts[static_cast<std::size_t>(j)];
                        }
                    }
            });
            auto output_guard = hooks.scoped(host_name + ".hook_sae_output", [&](const site&, activation_view v,
                                                                                 const hook_context&) {
                const auto out = v.as<3>();  // (batch, T, d_in) x_hat
                for (index_t b = 0; b < batch; ++b)
                    for (index_t p = 0; p < T; ++p) {
                        const std::size_t r = static_cast<std::size_t>(b * T + p);
                        if (counted[r] == 0) {  // keep the original activation, as SAELens does
                            for (index_t i = 0; i < d_in; ++i)
                                out(b, p, i) = ignored_rows[r * static_cast<std::size_t>(d_in) + static_cast<std::size_t>(i)];
                            continue;
                        }
                        double resid = 0.0, dot = 0.0, xx = 0.0, hh = 0.0;
                        for (index_t i = 0; i < d_in; ++i) {
                            const double xi = x_rows[r * static_cast<std::size_t>(d_in) + static_cast<std::size_t>(i)];
                            const double hi = static_cast<double>(out(b, p, i));
                            resid += (xi - hi) * (xi - hi);
                            dot += xi * hi;
                            xx += xi * xi;
                            hh += hi * hi;
                        }
                        resid_sum += resid;
                        if (xx > 0.0 && hh > 0.0)
                            cosine_sum += dot / (std::sqrt(xx) * std::sqrt(hh));
                        else if (xx == 0.0 && hh == 0.0)
                            cosine_sum += 1.0;
                    }
            });
            forward(model, ids, logits.view(), ws, hooks);
        }
        variance.add(x_rows, counted);
        ce_sums[1] += detail::cross_entropy_sum(logits.view(), ids, o.ignore_tokens, ce_counts[1]);

        // Zero-ablated at every position (SAELens's standard_zero_ablate_hook).
        {
            auto zero_guard = hooks.scoped(host, [](const site&, activation_view v, const hook_context&) {
                const auto x = v.as<3>();  // (batch, T, width)
                for (index_t b = 0; b < x.extent(0); ++b)
                    for (index_t p = 0; p < x.extent(1); ++p)
                        for (index_t i = 0; i < x.extent(2); ++i) x(b, p, i) = 0.0f;
            });
            forward(model, ids, logits.view(), ws, hooks);
        }
        ce_sums[2] += detail::cross_entropy_sum(logits.view(), ids, o.ignore_tokens, ce_counts[2]);

        for (const unsigned char k : counted) result.tokens += k;
        done_contexts += batch;
        if (progress) {
            progress(sae_eval_progress::at(done_contexts * T, contexts_total * T, started));
        }
        if (batch < want) break;  // the supplier ran out
    }
    if (done_contexts == 0) throw std::invalid_argument(std::string(who) + ": the token source yielded no context");
    result.contexts = done_contexts;
    result.predictions = ce_counts[0];
    const auto n = static_cast<double>(result.tokens);
    if (result.tokens > 0) {
        result.l0 = l0_sum / n;
        result.l1 = l1_sum / n;
        result.mse = resid_sum / n;
        result.total_variance = variance.sum_of_squares() / n;
        result.cosine = cosine_sum / n;
    }
    // As SAELens: a constant input explains everything when the reconstruction is exact, nothing otherwise.
    if (result.total_variance < 1e-10)
        result.fvu = result.mse < 1e-10 ? 0.0 : 1.0;
    else
        result.fvu = result.mse / result.total_variance;
    result.explained_variance = 1.0 - result.fvu;
    auto mean = [&](int k) { return ce_counts[k] > 0 ? ce_sums[k] / static_cast<double>(ce_counts[k]) : 0.0; };
    result.ce_clean = mean(0);
    result.ce_spliced = mean(1);
    result.ce_ablated = mean(2);
    result.ce_recovered = (result.ce_ablated - result.ce_spliced) / (result.ce_ablated - result.ce_clean);
    std::int64_t dead = 0, dense = 0;
    for (const std::int64_t count : result.active_counts) {
        dead += count == 0 ? 1 : 0;
        dense += static_cast<double>(count) > o.dense_threshold * n ? 1 : 0;
    }
    result.dead_fraction = static_cast<double>(dead) / static_cast<double>(d_sae);
    result.dense_fraction = static_cast<double>(dense) / static_cast<double>(d_sae);
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return result;
}

}  // namespace detail

/// Evaluates the SAE (`weights`, `options`; the error term is switched off) spliced in at `hook` over the contexts
/// `next` supplies, `o.batch_contexts` per forward pass, until `o.tokens_total` tokens (whole contexts) or the
/// supplier ends. Three forward passes per batch: clean, spliced, zero-ablated. Throws std::invalid_argument for a
/// host the SAE cannot sit at, bad options, or a supplier that yields no context; shape_error for bad weights.
inline sae_eval_result evaluate_sae(const transformer& model, std::string_view hook, const sae_weights& weights,
                                    sae_options options, const context_supplier& next, const sae_eval_options& o,
                                    const sae_eval_callback& progress = {}) {
    const char* who = "evaluate_sae";
    detail::check_eval_options(model, o, who);
    validate_sae(weights, options, who);
    const site host = detail::sae_host_site(model, hook, weights.d_in, who);
    options.error_term = false;
    return detail::evaluate_splice(model, host, std::make_shared<sae_splice>(weights, options), weights.d_in,
                                   weights.d_sae, next, o, progress, who);
}

/// Evaluates the transcoder (`weights`, `options`; the error term is switched off) in place of block `layer`'s MLP
/// (reading mlp_input_site, replacing `blocks.L.hook_mlp_out`) as evaluate_sae does an SAE: x is the MLP's output,
/// x_hat the transcoder's; CE ablated zeroes the MLP's output. Throws as evaluate_sae, and std::invalid_argument
/// for a layer out of range or a model without MLPs.
inline sae_eval_result evaluate_transcoder(const transformer& model, index_t layer, const transcoder_weights& weights,
                                           sae_options options, const context_supplier& next,
                                           const sae_eval_options& o, const sae_eval_callback& progress = {}) {
    const char* who = "evaluate_transcoder";
    detail::check_eval_options(model, o, who);
    validate_transcoder(weights, options, who);
    const model_config& c = model.config();
    if (layer < 0 || layer >= c.n_layers)
        throw std::invalid_argument(std::string(who) + ": layer " + std::to_string(layer) + " is outside 0.." +
                                    std::to_string(c.n_layers - 1));
    const site_kind input = mlp_input_site(c);
    site host;
    host.kind = site_kind::mlp_out;
    host.layer = layer;
    if (c.d_model != weights.sae.d_in)
        throw shape_error(std::string(who) + ": the transcoder's d_in " + std::to_string(weights.sae.d_in) +
                          " disagrees with d_model " + std::to_string(c.d_model));
    options.error_term = false;
    return detail::evaluate_splice(model, host, std::make_shared<transcoder_splice>(weights, options, input),
                                   weights.sae.d_in, weights.sae.d_sae, next, o, progress, who);
}

/// evaluate_sae over contexts packed from `packer` (SAELens's packing; see sae/harvest_source.hpp).
inline sae_eval_result evaluate_sae(const transformer& model, std::string_view hook, const sae_weights& weights,
                                    const sae_options& options, context_packer& packer, const sae_eval_options& o,
                                    const sae_eval_callback& progress = {}) {
    return evaluate_sae(model, hook, weights, options,
                        context_supplier([&packer](std::span<std::int32_t> context) { return packer.next(context); }), o,
                        progress);
}

/// evaluate_sae over the rows of `contexts` (n, T), which set o.context and o.tokens_total.
inline sae_eval_result evaluate_sae(const transformer& model, std::string_view hook, const sae_weights& weights,
                                    const sae_options& options, tensor_view<const std::int32_t, 2> contexts,
                                    sae_eval_options o, const sae_eval_callback& progress = {}) {
    o.context = contexts.extent(1);
    o.tokens_total = static_cast<std::int64_t>(contexts.extent(0)) * contexts.extent(1);
    index_t row = 0;
    return evaluate_sae(model, hook, weights, options,
                        context_supplier([&](std::span<std::int32_t> context) {
                            if (row >= contexts.extent(0)) return false;
                            for (index_t p = 0; p < contexts.extent(1); ++p)
                                context[static_cast<std::size_t>(p)] = contexts(row, p);
                            ++row;
                            return true;
                        }),
                        o, progress);
}

MECHLENS_END_NAMESPACE
