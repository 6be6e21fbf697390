#pragma once
/// @file
/// Feature dashboards for a sparse autoencoder, as one self-contained HTML page (no scripts, fonts or stylesheets
/// from elsewhere): for each chosen latent, its top-activating contexts (tokens shaded by the latent's activation,
/// the max token outlined), a histogram of its non-zero activations, its activation density, and the tokens its
/// decoder row promotes and suppresses through the unembedding (the "logit weights"); an index at the top links to
/// each feature. Collection runs over a token stream with bounded memory: a heap of the top k tokens per feature,
/// a fixed number of histogram bins per feature, and one batch of activations.
///
/// Logit weights: W_dec[j] · diag(g) · W_U^T, with g the final norm's gain (RMSNorm or LayerNorm; none without
/// norms) and, for LayerNorm, W_dec[j] centred first (LayerNorm removes the mean of whatever is added to the
/// stream). The per-token 1 / scale of the norm is left out: it is positive, so it changes no ranking. The
/// unembedding bias is left out: it does not depend on the feature. Only for SAEs on d_model-wide sites of the
/// residual stream (hook_embed, hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out); elsewhere the page says so.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/dynamic.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/site_traits.hpp"
#include "mechlens/model/forward.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/report/html.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/evaluate.hpp"
#include "mechlens/sae/sparse_autoencoder.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One top-activating token of a feature, with a window of its context around it.
struct feature_context {
    float activation = 0.0f;            ///< The feature's activation at the token.
    std::int64_t context_index = 0;     ///< Which context of the stream (0-based).
    index_t position = 0;               ///< The token's position in its context.
    index_t first = 0;                  ///< Position of window_tokens[0] in the context.
    std::vector<std::int32_t> tokens;   ///< (window) the tokens around it, the token included.
    std::vector<float> activations;     ///< (window) the feature's activation at each of them.
};

/// Counts of non-zero activations in equal bins over [0, bins * width); when a value falls beyond the last bin,
/// the width doubles and neighbouring bins merge, so memory stays fixed and every count stays exact.
class activation_histogram {
public:
    /// `bins` bins (even, at least 2).
    explicit activation_histogram(index_t bins = 40) : counts_(static_cast<std::size_t>(std::max<index_t>(2, bins & ~index_t{1})), 0) {}
    /// Counts `value` (> 0).
    void add(float value) {
        const double v = static_cast<double>(value);
        if (width_ == 0.0) width_ = v / (static_cast<double>(counts_.size()) * 0.5);  // the first value at mid-range
        while (v >= width_ * static_cast<double>(counts_.size())) {
            const std::size_t half = counts_.size() / 2;
            for (std::size_t i = 0; i < half; ++i) counts_[i] = counts_[2 * i] + counts_[2 * i + 1];
            std::fill(counts_.begin() + static_cast<std::ptrdiff_t>(half), counts_.end(), 0);
            width_ *= 2.0;
        }
        ++counts_[static_cast<std::size_t>(v / width_)];
    }
    /// Width of one bin (0 before the first value).
    [[nodiscard]] double width() const noexcept { return width_; }
    /// (bins) counts; bin i covers [i * width, (i + 1) * width).
    [[nodiscard]] const std::vector<std::int64_t>& counts() const noexcept { return counts_; }

private:
    std::vector<std::int64_t> counts_;
    double width_ = 0.0;
};

/// What was seen of one feature over the stream.
struct feature_summary {
    index_t feature = 0;                ///< The latent's index.
    std::int64_t tokens = 0;            ///< Tokens seen (ignored ones left out).
    std::int64_t active = 0;            ///< Tokens on which the latent was non-zero.
    double activation_sum = 0.0;        ///< Sum of its non-zero activations.
    activation_histogram histogram;     ///< Its non-zero activations.
    std::vector<feature_context> top;   ///< The top k tokens, highest first (ties: earlier context, position).
    /// Fraction of tokens on which the latent is active.
    [[nodiscard]] double density() const noexcept {
        return tokens > 0 ? static_cast<double>(active) / static_cast<double>(tokens) : 0.0;
    }
};

/// How feature activity is collected.
struct feature_collector_options {
    index_t top_k = 10;            ///< Top-activating tokens kept per feature.
    index_t window_before = 10;    ///< Tokens of context shown before the top token.
    index_t window_after = 4;      ///< And after it.
    index_t histogram_bins = 40;   ///< Bins of the activation histogram.
    std::vector<std::int32_t> ignore_tokens;  ///< Token ids never counted nor shown as top tokens (e.g. BOS).
};

/// Collects the activity of chosen features batch by batch: a bounded heap of top tokens, a histogram and counts.
class feature_collector {
public:
    /// Watches `features` (each in [0, d_sae), no duplicates); throws std::invalid_argument otherwise.
    feature_collector(std::vector<index_t> features, index_t d_sae, feature_collector_options options = {})
        : options_(std::move(options)) {
        if (features.empty()) throw std::invalid_argument("feature_collector: no features chosen");
        if (options_.top_k <= 0 || options_.window_before < 0 || options_.window_after < 0)
            throw std::invalid_argument("feature_collector: top_k must be positive and the windows non-negative");
        for (std::size_t i = 0; i < features.size(); ++i) {
            if (features[i] < 0 || features[i] >= d_sae)
                throw std::invalid_argument("feature " + std::to_string(features[i]) + " is outside the SAE's " +
                                            std::to_string(d_sae) + " latents");
            for (std::size_t k = 0; k < i; ++k)
                if (features[k] == features[i])
                    throw std::invalid_argument("feature " + std::to_string(features[i]) + " is chosen twice");
            feature_summary s{features[i], 0, 0, 0.0, activation_histogram(options_.histogram_bins), {}};
            summaries_.push_back(std::move(s));
        }
    }

    /// Adds one batch: `tokens` (batch, T) and the SAE's activations `acts` (batch, T, d_sae) for them; the batch's
    /// first context is context number `first_context` of the stream.
    void add(tensor_view<const std::int32_t, 2> tokens, tensor_view<const float, 3> acts, std::int64_t first_context) {
        const index_t batch = tokens.extent(0), T = tokens.extent(1);
        for (feature_summary& s : summaries_) {
            for (index_t b = 0; b < batch; ++b)
                for (index_t p = 0; p < T; ++p) {
                    if (detail::ignored_token(options_.ignore_tokens, tokens(b, p))) continue;
                    ++s.tokens;
                    const float a = acts(b, p, s.feature);
                    if (a == 0.0f) continue;
                    ++s.active;
                    s.activation_sum += static_cast<double>(a);
                    if (a > 0.0f) s.histogram.add(a);
                    const std::int64_t context = first_context + b;
                    if (static_cast<index_t>(s.top.size()) == options_.top_k && !better(a, context, p, s.top.front()))
                        continue;
                    feature_context c;
                    c.activation = a;
                    c.context_index = context;
                    c.position = p;
                    c.first = std::max<index_t>(0, p - options_.window_before);
                    const index_t last = std::min<index_t>(T, p + options_.window_after + 1);
                    for (index_t q = c.first; q < last; ++q) {
                        c.tokens.push_back(tokens(b, q));
                        c.activations.push_back(acts(b, q, s.feature));
                    }
                    if (static_cast<index_t>(s.top.size()) == options_.top_k) {
                        std::pop_heap(s.top.begin(), s.top.end(), worse_first);
                        s.top.back() = std::move(c);
                    } else {
                        s.top.push_back(std::move(c));
                    }
                    std::push_heap(s.top.begin(), s.top.end(), worse_first);
                }
        }
    }

    /// What was collected, one summary per feature in the order chosen, top tokens highest first.
    [[nodiscard]] std::vector<feature_summary> summaries() const {
        std::vector<feature_summary> out = summaries_;
        for (feature_summary& s : out)
            std::sort(s.top.begin(), s.top.end(), [](const feature_context& a, const feature_context& b) {
                return better(a.activation, a.context_index, a.position, b);
            });
        return out;
    }

private:
    /// True when (a, context, position) ranks above `c`: higher activation, then earlier context and position.
    static bool better(float a, std::int64_t context, index_t position, const feature_context& c) {
        if (a != c.activation) return a > c.activation;
        if (context != c.context_index) return context < c.context_index;
        return position < c.position;
    }
    /// Heap order with the worst kept entry at the front.
    static bool worse_first(const feature_context& a, const feature_context& b) {
        return better(a.activation, a.context_index, a.position, b);
    }

    feature_collector_options options_;
    std::vector<feature_summary> summaries_;
};

/// Runs `model` over the contexts `next` supplies (o.context tokens each, until o.tokens_total or the supplier
/// ends; o.batch_contexts per pass) with the SAE spliced in at `hook`, and collects the activity of `features`.
/// Only the blocks up to the host run. Throws as evaluate_sae and feature_collector do.
inline std::vector<feature_summary> collect_feature_activity(const transformer& model, std::string_view hook,
                                                             const sae_weights& weights, sae_options options,
                                                             const context_supplier& next, const sae_eval_options& o,
                                                             const std::vector<index_t>& features,
                                                             const feature_collector_options& collector_options = {},
                                                             const sae_eval_callback& progress = {}) {
    const char* who = "collect_feature_activity";
    detail::check_eval_options(model, o, who);
    validate_sae(weights, options, who);
    const site host = detail::sae_host_site(model, hook, weights.d_in, who);
    feature_collector collector(features, weights.d_sae, collector_options);
    const model_config& c = model.config();
    const index_t T = o.context;
    const std::int64_t contexts_total = o.tokens_total / T;
    options.error_term = true;  // the rest of the pass is not looked at; keep it the model's own
    dynamic_hooks hooks(c);
    const std::string host_name = to_string(host);
    auto splice_guard = hooks.scoped_splice(host_name, std::make_shared<sae_splice>(weights, options));
    std::vector<std::int32_t> tokens;  // (batch, T)
    index_t batch = 0;
    std::int64_t done = 0;
    auto acts_guard = hooks.scoped(host_name + ".hook_sae_acts_post",
                                   [&](const site&, activation_view v, const hook_context&) {
                                       const tensor_view<float, 3> acts = v.as<3>();  // (batch, T, d_sae)
                                       collector.add(tensor_view<const std::int32_t, 2>(tokens.data(), {batch, T}),
                                                     acts, done);
                                   });
    workspace ws;
    kv_cache cache;
    tensor<float, 3> logits;
    const auto started = std::chrono::steady_clock::now();
    while (done < contexts_total) {
        const index_t want = static_cast<index_t>(std::min<std::int64_t>(o.batch_contexts, contexts_total - done));
        tokens.resize(static_cast<std::size_t>(want * T));
        batch = 0;
        while (batch < want && next(std::span<std::int32_t>(tokens.data() + batch * T, static_cast<std::size_t>(T))))
            ++batch;
        if (batch == 0) break;
        const tensor_view<const std::int32_t, 2> ids(tokens.data(), {batch, T});
        const forward_span span{batch, T, 0};
        if (site_traits_of(host.kind).scope == site_scope::after_blocks) {
            const extents<3> shape{batch, T, c.vocab_out()};
            if (logits.shape() != shape) logits = tensor<float, 3>(shape);
            forward(model, ids, logits.view(), ws, hooks);
        } else {
            cache.reset(c, batch, T);
            embed_span(model, span, ids, ws, hooks);
            run_blocks(model, span, 0, host.layer + 1, cache, ws, hooks);
        }
        done += batch;
        if (progress) {
            progress(sae_eval_progress::at(done * T, contexts_total * T, started));
        }
        if (batch < want) break;
    }
    if (done == 0) throw std::invalid_argument(std::string(who) + ": the token source yielded no context");
    return collector.summaries();
}

/// A token and how much a feature moves its logit.
struct logit_weight {
    std::int32_t token = 0;  ///< The token.
    double weight = 0.0;     ///< W_dec[j] · diag(gain) · W_U[token] (see the file comment).
};

/// The tokens a feature's decoder row promotes most and suppresses most.
struct feature_logit_weights {
    std::vector<logit_weight> promoted;    ///< The k largest weights, largest first (ties: lower token id).
    std::vector<logit_weight> suppressed;  ///< The k smallest, smallest first.
};

/// True when an SAE at `host` writes into the residual stream, d_model wide, so its logit weights mean something.
inline bool has_logit_weights(site_kind host) noexcept {
    switch (host) {
        case site_kind::embed:
        case site_kind::resid_pre:
        case site_kind::resid_mid:
        case site_kind::resid_post:
        case site_kind::attn_out:
        case site_kind::mlp_out: return true;
        default: return false;
    }
}

/// The k tokens feature `feature`'s decoder row promotes and suppresses (see the file comment), computed in
/// double. Throws std::invalid_argument when the SAE is not d_model wide or the feature is out of range.
inline feature_logit_weights logit_weights(const transformer& model, const sae_weights& w, index_t feature,
                                           index_t k = 10) {
    const model_config& c = model.config();
    if (w.d_in != c.d_model)
        throw std::invalid_argument("logit_weights: the SAE is " + std::to_string(w.d_in) +
                                    " wide, not d_model = " + std::to_string(c.d_model));
    if (feature < 0 || feature >= w.d_sae)
        throw std::invalid_argument("logit_weights: feature " + std::to_string(feature) + " is outside [0, " +
                                    std::to_string(w.d_sae) + ")");
    const auto& weights = model.weights();
    const index_t d = c.d_model, vocab = c.vocab_out();
    std::vector<double> direction(static_cast<std::size_t>(d));  // (d_model)
    double mean = 0.0;
    for (index_t i = 0; i < d; ++i) {
        direction[static_cast<std::size_t>(i)] = static_cast<double>(w.w_dec[static_cast<std::size_t>(feature * d + i)]);
        mean += direction[static_cast<std::size_t>(i)];
    }
    mean /= static_cast<double>(d);
    for (index_t i = 0; i < d; ++i) {
        double& v = direction[static_cast<std::size_t>(i)];
        if (c.norm == norm_kind::layer) v -= mean;
        if (c.has_norm()) v *= static_cast<double>(weights.final_norm(i));
    }
    std::vector<logit_weight> all(static_cast<std::size_t>(vocab));  // (vocab)
    for (index_t t = 0; t < vocab; ++t) {
        double s = 0.0;
        for (index_t i = 0; i < d; ++i) s += direction[static_cast<std::size_t>(i)] * static_cast<double>(weights.unembed(t, i));
        all[static_cast<std::size_t>(t)] = {static_cast<std::int32_t>(t), s};
    }
    const auto n = static_cast<std::ptrdiff_t>(std::min(k, vocab));
    feature_logit_weights out;
    auto higher = [](const logit_weight& a, const logit_weight& b) {
        return a.weight != b.weight ? a.weight > b.weight : a.token < b.token;
    };
    auto lower = [](const logit_weight& a, const logit_weight& b) {
        return a.weight != b.weight ? a.weight < b.weight : a.token < b.token;
    };
    std::partial_sort(all.begin(), all.begin() + n, all.end(), higher);
    out.promoted.assign(all.begin(), all.begin() + n);
    std::partial_sort(all.begin(), all.begin() + n, all.end(), lower);
    out.suppressed.assign(all.begin(), all.begin() + n);
    return out;
}

/// One feature's dashboard: what was collected, and its logit weights when the host has them.
struct feature_dashboard {
    feature_summary summary;                      ///< Top contexts, histogram, density.
    std::optional<feature_logit_weights> logits;  ///< Absent for hosts outside the residual stream.
};

/// The text shown for a token (e.g. the tokenizer's piece); the page escapes it.
using token_text = std::function<std::string(std::int32_t token)>;

/// What the page says about where the figures come from.
struct dashboard_page_info {
    std::string title = "SAE feature dashboards";  ///< Page title and first heading.
    std::vector<std::string> lines;                ///< Lines of text under the title (model, SAE, hook, tokens).
};

/// The dashboards of `summaries` for the SAE `w` at `hook`, with logit weights (k per side) when the host writes
/// into the residual stream.
inline std::vector<feature_dashboard> build_feature_dashboards(const transformer& model, std::string_view hook,
                                                               const sae_weights& w,
                                                               std::vector<feature_summary> summaries, index_t k = 10) {
    const site host = site_from_name(hook, model.config());
    std::vector<feature_dashboard> out;
    for (feature_summary& s : summaries) {
        feature_dashboard d{std::move(s), std::nullopt};
        if (has_logit_weights(host.kind) && w.d_in == model.config().d_model)
            d.logits = logit_weights(model, w, d.summary.feature, k);
        out.push_back(std::move(d));
    }
    return out;
}

namespace detail {

/// A token's text for the page: escaped, newlines shown as a return arrow, an empty piece as a middle dot.
inline std::string dashboard_token(const token_text& text, std::int32_t token) {
    std::string piece = text ? text(token) : "#" + std::to_string(token);
    std::string out;
    for (const char ch : piece) {
        if (ch == '\n')
            out += "\u21b5";
        else
            out += ch;
    }
    if (out.empty()) out = "\u00b7";
    return html_escape(out);
}

/// An inline `<svg>` bar chart of a histogram: counts over [0, bins * width).
inline std::string histogram_svg(const activation_histogram& h) {
    const double W = 360, H = 150, left = 44, right = 10, top = 10, bottom = 30;
    const auto& counts = h.counts();
    std::size_t used = 0;  // bins up to the last non-empty one
    std::int64_t most = 0;
    for (std::size_t i = 0; i < counts.size(); ++i)
        if (counts[i] > 0) {
            used = i + 1;
            most = std::max(most, counts[i]);
        }
    std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"360\" height=\"150\" viewBox=\"0 0 360 150\" "
                      "role=\"img\"><title>histogram of non-zero activations</title>";
    svg += "<rect x=\"0\" y=\"0\" width=\"360\" height=\"150\" fill=\"#ffffff\"/>";
    if (used == 0 || most == 0) return svg + "<text x=\"180\" y=\"75\" text-anchor=\"middle\" font-size=\"12\">never active</text></svg>";
    const double bar = (W - left - right) / static_cast<double>(used);
    for (std::size_t i = 0; i < used; ++i) {
        const double height = (H - top - bottom) * static_cast<double>(counts[i]) / static_cast<double>(most);
        svg += "<rect x=\"" + format_fixed(left + bar * static_cast<double>(i), 1) + "\" y=\"" +
               format_fixed(H - bottom - height, 1) + "\" width=\"" + format_fixed(std::max(bar - 1.0, 0.5), 1) +
               "\" height=\"" + format_fixed(height, 1) + "\" fill=\"#3a6fb0\"><title>[" +
               format_fixed(h.width() * static_cast<double>(i), 3) + ", " +
               format_fixed(h.width() * static_cast<double>(i + 1), 3) + "): " + std::to_string(counts[i]) +
               "</title></rect>";
    }
    const std::string axis = format_fixed(H - bottom, 1);
    svg += "<line x1=\"" + format_fixed(left, 1) + "\" y1=\"" + axis + "\" x2=\"" + format_fixed(W - right, 1) +
           "\" y2=\"" + axis + "\" stroke=\"#444\"/>";
    svg += "<text x=\"" + format_fixed(left, 1) + "\" y=\"" + format_fixed(H - bottom + 14, 1) +
           "\" font-size=\"11\" text-anchor=\"middle\">0</text>";
    svg += "<text x=\"" + format_fixed(W - right, 1) + "\" y=\"" + format_fixed(H - bottom + 14, 1) +
           "\" font-size=\"11\" text-anchor=\"end\">" + format_fixed(h.width() * static_cast<double>(used), 3) + "</text>";
    svg += "<text x=\"" + format_fixed((left + W - right) / 2, 1) + "\" y=\"" + format_fixed(H - 4, 1) +
           "\" font-size=\"11\" text-anchor=\"middle\">activation</text>";
    svg += "<text x=\"" + format_fixed(left - 4, 1) + "\" y=\"" + format_fixed(top + 10, 1) +
           "\" font-size=\"11\" text-anchor=\"end\">" + std::to_string(most) + "</text>";
    svg += "<text x=\"" + format_fixed(left - 4, 1) + "\" y=\"" + axis + "\" font-size=\"11\" text-anchor=\"end\">0</text>";
    return svg + "</svg>";
}

/// One top context as a line of shaded tokens; the top token outlined.
inline std::string context_line(const feature_context& c, double scale, const token_text& text) {
    std::string out = "<div class=\"ctx\"><span class=\"act\">" + format_fixed(static_cast<double>(c.activation), 3) + "</span> ";
    for (std::size_t i = 0; i < c.tokens.size(); ++i) {
        const double f = scale > 0.0 ? static_cast<double>(c.activations[i]) / scale : 0.0;
        const bool top = c.first + static_cast<index_t>(i) == c.position;
        out += "<span class=\"tok";
        out += top ? " max" : "";
        out += f > 0.55 ? " dark" : "";
        out += "\" style=\"background:" + ramp_color(std::max(f, 0.0)) + "\" title=\"" +
               format_fixed(static_cast<double>(c.activations[i]), 3) + "\">" + dashboard_token(text, c.tokens[i]) + "</span>";
    }
    return out + "<span class=\"where\">context " + std::to_string(c.context_index) + ", position " +
           std::to_string(c.position) + "</span></div>\n";
}

/// A two-column table of logit weights, token text escaped.
inline std::string logit_table(const std::vector<logit_weight>& rows, const char* heading, const token_text& text) {
    std::string out = "<table class=\"logits\"><thead><tr><th>" + std::string(heading) +
                      "</th><th>weight</th></tr></thead><tbody>";
    for (const logit_weight& r : rows)
        out += "<tr><td class=\"t\">" + dashboard_token(text, r.token) + "</td><td>" +
               (r.weight >= 0 ? "+" : "") + format_fixed(r.weight, 3) + "</td></tr>";
    return out + "</tbody></table>";
}

}  // namespace detail

/// The whole page: a header, an index linking to each feature (#feature-J), then one section per feature.
inline std::string feature_dashboard_html(const std::vector<feature_dashboard>& features, const token_text& text,
                                          const dashboard_page_info& info = {}) {
    html_report page(info.title);
    page.style(
        ".ctx{font-family:monospace;white-space:pre;margin:2px 0;line-height:1.7;text-align:left}\n"
        ".tok{padding:1px 0;border-radius:2px}\n.tok.dark{color:#fff}\n"
        ".tok.max{outline:2px solid #d62728;outline-offset:0}\n"
        ".act{display:inline-block;width:4.5em;color:#555;font-size:0.9em}\n"
        ".where{color:#999;font-size:0.8em;margin-left:1em}\n"
        "table.logits td.t{font-family:monospace;white-space:pre;text-align:left}\n"
        "section.feature{border-top:2px solid #ddd;margin-top:2em}\n");
    for (const std::string& line : info.lines) page.paragraph(line);
    std::string index = "<h2 id=\"index\">Features</h2>\n<table class=\"index\"><thead><tr><th>feature</th>"
                        "<th>density</th><th>max activation</th><th>mean when active</th></tr></thead><tbody>\n";
    for (const feature_dashboard& f : features) {
        const feature_summary& s = f.summary;
        const std::string id = std::to_string(s.feature);
        index += "<tr><td><a href=\"#feature-" + id + "\">" + id + "</a></td><td>" + format_fixed(100.0 * s.density(), 3) +
                 " %</td><td>" + (s.top.empty() ? std::string("-") : format_fixed(static_cast<double>(s.top.front().activation), 3)) +
                 "</td><td>" + (s.active > 0 ? format_fixed(s.activation_sum / static_cast<double>(s.active), 3) : "-") +
                 "</td></tr>\n";
    }
    page.raw(index + "</tbody></table>\n");
    for (const feature_dashboard& f : features) {
        const feature_summary& s = f.summary;
        const std::string id = std::to_string(s.feature);
        std::string html = "<section class=\"feature\" id=\"feature-" + id + "\">\n<h2>Feature " + id + "</h2>\n<p>";
        html += "active on " + std::to_string(s.active) + " of " + std::to_string(s.tokens) + " tokens (density " +
                format_fixed(100.0 * s.density(), 3) + " %";
        if (s.active > 0) html += ", log10 density " + format_fixed(std::log10(s.density()), 2);
        html += "). <a href=\"#index\">index</a></p>\n<div class=\"row\">\n<figure>" + detail::histogram_svg(s.histogram) +
                "<figcaption>non-zero activations</figcaption></figure>\n";
        if (f.logits) {
            html += "<figure>" + detail::logit_table(f.logits->promoted, "promoted", text) + "</figure>\n";
            html += "<figure>" + detail::logit_table(f.logits->suppressed, "suppressed", text) + "</figure>\n";
        } else {
            html += "<p>No logit weights: the SAE does not write into the residual stream.</p>\n";
        }
        html += "</div>\n<h3>Top activations</h3>\n";
        if (s.top.empty()) html += "<p>Never active on these tokens.</p>\n";
        const double scale = s.top.empty() ? 0.0 : static_cast<double>(s.top.front().activation);
        for (const feature_context& c : s.top) html += detail::context_line(c, scale, text);
        page.raw(html + "</section>\n");
    }
    return page.str();
}

MECHLENS_END_NAMESPACE
