// Attribution through splices: activation patching, integrated gradients, saliency and gradient x input with SAEs and
// transcoders spliced in (error term on: results unchanged; replacing: they change, and patching equals the spliced
// model run on the patched input by hand), and integrated gradients over an SAE's latents (completeness against
// forward passes computed here, features ranked per channel).
#include <mechlens/mechlens.hpp>

#include "sae_test_support.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_splice_attribution {

using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

namespace {

/// Three blocks, so that cells resume in the middle of the model.
mechlens::model_config small_config() {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 3;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 24;
    c.d_vocab = 13;
    c.n_ctx = 8;
    return c;
}

/// A random standard SAE of width d_in: roughly half its latents fire on a typical row.
mechlens::sae_weights random_sae(index_t d_in, index_t d_sae, std::uint64_t seed) {
    mechlens::random_generator rng(seed);
    return mechlens_test::random_sae_weights(rng, d_in, d_sae);
}

/// relu(x) - relu(-x) = x in value and gradient: an SAE with zero reconstruction error.
mechlens::sae_weights identity_sae(index_t d_in) { return mechlens_test::identity_sae_weights(d_in); }

/// A random transcoder with a skip connection.
mechlens::transcoder_weights random_transcoder(index_t d_in, index_t d_tc, std::uint64_t seed) {
    mechlens::random_generator rng(seed);
    mechlens::transcoder_weights w;
    w.sae = random_sae(d_in, d_tc, seed);
    mechlens_test::fill_uniform(rng, w.w_skip, static_cast<std::size_t>(d_in * d_in), 0.3f);
    return w;
}

mechlens::sae_options sae_with_error_term(bool on) {
    mechlens::sae_options options;
    options.error_term = on;
    return options;
}

mechlens::sae_options transcoder_with_error_term(bool on) {
    mechlens::sae_options options = mechlens::transcoder_options();
    options.error_term = on;
    return options;
}

/// Two prompt pairs of six tokens that first differ at position 2, and a logit difference at the last position.
struct prompt_pairs {
    std::vector<std::int32_t> clean_ids{1, 5, 9, 2, 11, 3, 1, 7, 6, 2, 10, 4};
    std::vector<std::int32_t> corrupt_ids{1, 5, 4, 2, 11, 3, 1, 7, 6, 2, 12, 4};
    std::vector<std::int32_t> correct{3, 4}, wrong{7, 8};
    mechlens::answer_metric metric = mechlens::answer_metric::logit_difference(correct, wrong);
    [[nodiscard]] mechlens::tensor_view<const std::int32_t, 2> clean() const { return {clean_ids.data(), {2, 6}}; }
    [[nodiscard]] mechlens::tensor_view<const std::int32_t, 2> corrupt() const { return {corrupt_ids.data(), {2, 6}}; }
    /// The metric of full-sequence logits (batch, pos, vocab), by hand: mean over prompts of the last position's
    /// logit difference.
    [[nodiscard]] double by_hand(const mechlens::tensor<float, 3>& logits) const {
        double sum = 0.0;
        const index_t last = logits.extent(1) - 1;
        for (index_t b = 0; b < logits.extent(0); ++b) {
            const auto k = static_cast<std::size_t>(b);
            sum += static_cast<double>(logits(b, last, correct[k])) - static_cast<double>(logits(b, last, wrong[k]));
        }
        return sum / static_cast<double>(logits.extent(0));
    }
};

/// Largest |a - b| over two equally shaped tables.
double max_gap(const mechlens::tensor<float, 3>& a, const mechlens::tensor<float, 3>& b) {
    REQUIRE(a.shape() == b.shape());
    double gap = 0.0;
    for (index_t i = 0; i < a.size(); ++i)
        gap = std::max(gap, std::abs(static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i])));
    return gap;
}

/// max |a - b| / max |b|.
double relative_gap(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double diff = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    return scale > 0.0 ? diff / scale : diff;
}

/// Calls fn(flat index, element) for every element of a rank-3 or rank-4 activation, in row-major order.
template <class Fn>
void for_each_element(mechlens::activation_view view, Fn&& fn) {
    const index_t outer = view.rank == 4 ? view.shape[3] : 1;
    std::size_t flat = 0;
    for (index_t b = 0; b < view.shape[0]; ++b)
        for (index_t p = 0; p < view.shape[1]; ++p)
            for (index_t i = 0; i < view.shape[2]; ++i)
                for (index_t j = 0; j < outer; ++j) {
                    float& x = view.data[b * view.strides[0] + p * view.strides[1] + i * view.strides[2] +
                                         (view.rank == 4 ? j * view.strides[3] : 0)];
                    fn(flat++, x, p, i);
                }
}

/// The metric of the corrupt prompts run through `splices` with one site's activation, at one position (or all)
/// and one head (or all), overwritten by the clean run's (also through the splices), all computed here with
/// run-time callbacks placed after the splices and the logits read by hand.
double patched_by_hand(const mechlens::transformer& model, mechlens::dynamic_hooks& splices, const prompt_pairs& pairs,
                       const site& where, index_t position, index_t head) {
    const mechlens::model_config& c = model.config();
    std::vector<float> clean;
    mechlens::dynamic_hooks recorder(c);
    (void)recorder.add(where, [&](const site&, mechlens::activation_view view, const mechlens::hook_context&) {
        clean.assign(static_cast<std::size_t>(view.size()), 0.0f);
        for_each_element(view, [&](std::size_t k, float& x, index_t, index_t) { clean[k] = x; });
    });
    (void)mechlens::forward_logits(model, pairs.clean(), mechlens::compose(splices, recorder));
    mechlens::dynamic_hooks writer(c);
    const bool heads = mechlens::site_rank(where.kind) == 4;
    (void)writer.add(where, [&](const site&, mechlens::activation_view view, const mechlens::hook_context& ctx) {
        for_each_element(view, [&](std::size_t k, float& x, index_t p, index_t i) {
            const bool at_position = position < 0 || p + ctx.start_position == position;
            const bool at_head = head < 0 || !heads || i == head;
            if (at_position && at_head) x = clean[k];
        });
    });
    return pairs.by_hand(mechlens::forward_logits(model, pairs.corrupt(), mechlens::compose(splices, writer)));
}

/// The metric `read` of the logits of `tokens` run through `splices` with the latents at `latents` set to zero (by a
/// callback registered for this pass only).
template <class Read>
double zeroed_metric(const mechlens::transformer& model, mechlens::dynamic_hooks& splices,
                     mechlens::tensor_view<const std::int32_t, 2> tokens, const site& latents, Read&& read) {
    const mechlens::scoped_hooks zero =
        splices.scoped(latents, [](const site&, mechlens::activation_view view, const mechlens::hook_context&) {
            for_each_element(view, [](std::size_t, float& x, index_t, index_t) { x = 0.0f; });
        });
    return read(mechlens::forward_logits(model, tokens, splices));
}

}  // namespace

TEST_CASE("splices in activation patching: the error term changes no table, a replacing SAE does",
          "[attribution][patching][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const prompt_pairs pairs;
    mechlens::activation_patcher plain(model, pairs.clean(), pairs.corrupt(), pairs.metric);

    // The identity SAE (no error at all) at a cell's resume point, a random SAE with its error term after attention.
    mechlens::dynamic_hooks error_term(c);
    (void)error_term.splice("blocks.1.hook_resid_pre",
                            std::make_shared<mechlens::sae_splice>(identity_sae(c.d_model), sae_with_error_term(true)));
    (void)error_term.splice("blocks.2.hook_attn_out", std::make_shared<mechlens::sae_splice>(
                                                          random_sae(c.d_model, 40, 3), sae_with_error_term(true)));
    (void)error_term.splice("blocks.0.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(
                                                         random_transcoder(c.d_model, 32, 5),
                                                         transcoder_with_error_term(true)));
    mechlens::activation_patcher unchanged(model, pairs.clean(), pairs.corrupt(), pairs.metric, &error_term);

    mechlens::dynamic_hooks replacing(c);
    (void)replacing.splice("blocks.1.hook_resid_pre", std::make_shared<mechlens::sae_splice>(
                                                          random_sae(c.d_model, 40, 3), sae_with_error_term(false)));
    mechlens::activation_patcher changed(model, pairs.clean(), pairs.corrupt(), pairs.metric, &replacing);

    // x_hat + (x - x_hat) is x to within a rounding of x_hat's size; through three blocks that stays below 1e-5.
    CHECK(std::abs(unchanged.clean_metric() - plain.clean_metric()) <= 1e-5);
    CHECK(std::abs(unchanged.corrupt_metric() - plain.corrupt_metric()) <= 1e-5);
    CHECK(std::abs(changed.clean_metric() - plain.clean_metric()) > 1e-2);
    double worst_unchanged = 0.0, least_changed = 1e30;
    for (const auto& grid :
         {mechlens::patching_grid::by_layer_position(site_kind::resid_pre),
          mechlens::patching_grid::by_layer_position(site_kind::attn_out),
          mechlens::patching_grid::by_layer_position(site_kind::mlp_out),
          mechlens::patching_grid::by_layer_position(site_kind::resid_post),
          mechlens::patching_grid::by_layer_head(), mechlens::patching_grid::by_layer_head_position(),
          mechlens::patching_grid::by_layer_position(site_kind::embed),
          mechlens::patching_grid::by_layer_position(site_kind::ln_final_normalized)}) {
        INFO(grid.describe());
        const mechlens::patching_table reference = plain.sweep(grid);
        const double gap = max_gap(unchanged.sweep(grid).raw, reference.raw);
        CHECK(gap <= 1e-5);
        worst_unchanged = std::max(worst_unchanged, gap);
        const double change = max_gap(changed.sweep(grid).raw, reference.raw);
        CHECK(change > 1e-3);
        least_changed = std::min(least_changed, change);
    }
    WARN("activation patching, error-term splices: largest |raw - plain raw| " << worst_unchanged
         << "; replacing SAE: smallest largest change " << least_changed);
}

TEST_CASE("splices in activation patching: every cell equals the spliced model run on the patched input",
          "[attribution][patching][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const prompt_pairs pairs;
    // Replacing splices: an SAE at a block's input (where cells resume), one at the stream after block 0 (the same
    // stream, one site earlier) and a transcoder reading block 2's MLP input.
    mechlens::dynamic_hooks splices(c);
    (void)splices.splice("blocks.1.hook_resid_pre", std::make_shared<mechlens::sae_splice>(
                                                        random_sae(c.d_model, 40, 3), sae_with_error_term(false)));
    (void)splices.splice("blocks.0.hook_resid_post", std::make_shared<mechlens::sae_splice>(
                                                         random_sae(c.d_model, 24, 4), sae_with_error_term(false)));
    (void)splices.splice("blocks.2.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(
                                                      random_transcoder(c.d_model, 32, 5),
                                                      transcoder_with_error_term(false)));
    mechlens::activation_patcher patcher(model, pairs.clean(), pairs.corrupt(), pairs.metric, &splices);
    CHECK(patcher.clean_metric() == pairs.by_hand(mechlens::forward_logits(model, pairs.clean(), splices)));
    CHECK(patcher.corrupt_metric() == pairs.by_hand(mechlens::forward_logits(model, pairs.corrupt(), splices)));

    double worst = 0.0, worst_naive = 0.0;
    index_t cells = 0, moved = 0;
    for (const auto& grid : {mechlens::patching_grid::by_layer_position(site_kind::resid_pre),
                             mechlens::patching_grid::by_layer_position(site_kind::resid_post),
                             mechlens::patching_grid::by_layer_position(site_kind::attn_out),
                             mechlens::patching_grid::by_layer_position(site_kind::mlp_out),
                             mechlens::patching_grid::by_layer_head(),
                             mechlens::patching_grid::by_layer_position(site_kind::embed)}) {
        INFO(grid.describe());
        const mechlens::patching_table fast = patcher.sweep(grid);
        worst_naive = std::max(worst_naive, max_gap(fast.raw, patcher.sweep_naive(grid).raw));
        for (const mechlens::patching_cell& cell : patcher.cells(grid)) {
            const site where{grid.kind, cell.layer};
            const double expected = patched_by_hand(model, splices, pairs, where, cell.position, cell.head);
            const float got = fast.raw(std::max<index_t>(cell.layer, 0), std::max<index_t>(cell.head, 0),
                                       std::max<index_t>(cell.position, 0));  // the table holds floats
            INFO(mechlens::to_string(where) << " head " << cell.head << " position " << cell.position);
            CHECK(got == static_cast<float>(expected));  // the fast sweep's rows are the full forward's, bit for bit
            worst = std::max(worst, std::abs(static_cast<double>(got) - expected));
            ++cells;
            if (std::abs(expected - patcher.corrupt_metric()) > 1e-3) ++moved;
        }
    }
    WARN("activation patching through replacing splices: " << cells << " cells (" << moved
         << " move the metric), largest |fast sweep - by hand| " << worst << ", |fast - naive sweep| " << worst_naive);
    CHECK(moved > cells / 4);
    CHECK(worst_naive == 0.0);
}

TEST_CASE("splices in activation patching: a batchtopk SAE, which couples rows, gets full passes of the prompt batch",
          "[attribution][patching][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 11, 0.3f));
    const prompt_pairs pairs;
    mechlens::sae_options batch_top = sae_with_error_term(false);
    batch_top.architecture = mechlens::sae_architecture::batchtopk;
    batch_top.k = 3.5;  // on average 3.5 latents per row, chosen over all the batch's rows
    mechlens::dynamic_hooks splices(c);
    (void)splices.splice("blocks.1.hook_resid_pre",
                         std::make_shared<mechlens::sae_splice>(random_sae(c.d_model, 40, 6), batch_top));
    CHECK_FALSE(splices.splices_rows_independent());
    mechlens::activation_patcher patcher(model, pairs.clean(), pairs.corrupt(), pairs.metric, &splices);

    // A stacked, resumed sweep would hand the SAE other rows than the spliced model's own forward pass does; every
    // cell must be the spliced model run on the patched prompt batch.
    index_t cells = 0, moved = 0;
    for (const auto& grid : {mechlens::patching_grid::by_layer_position(site_kind::resid_pre),
                             mechlens::patching_grid::by_layer_position(site_kind::mlp_out)}) {
        INFO(grid.describe());
        const mechlens::patching_table fast = patcher.sweep(grid);
        for (const mechlens::patching_cell& cell : patcher.cells(grid)) {
            const site where{grid.kind, cell.layer};
            const double expected = patched_by_hand(model, splices, pairs, where, cell.position, cell.head);
            const float got = fast.raw(std::max<index_t>(cell.layer, 0), 0, std::max<index_t>(cell.position, 0));
            INFO(mechlens::to_string(where) << " position " << cell.position);
            CHECK(got == static_cast<float>(expected));
            ++cells;
            if (std::abs(expected - patcher.corrupt_metric()) > 1e-3) ++moved;
        }
    }
    CHECK(moved > cells / 4);

    // Per-row splices keep the fast path.
    mechlens::dynamic_hooks per_row(c);
    (void)per_row.splice("blocks.1.hook_resid_pre", std::make_shared<mechlens::sae_splice>(
                                                        random_sae(c.d_model, 40, 6), sae_with_error_term(false)));
    CHECK(per_row.splices_rows_independent());
}

TEST_CASE("splices in integrated gradients, saliency and gradient x input: a zero-error SAE changes nothing, a "
          "replacing one does",
          "[attribution][ig][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const prompt_pairs pairs;
    mechlens::dynamic_hooks identity(c), replacing(c);
    (void)identity.splice("blocks.1.hook_resid_pre",
                          std::make_shared<mechlens::sae_splice>(identity_sae(c.d_model), sae_with_error_term(true)));
    (void)replacing.splice("blocks.1.hook_resid_pre", std::make_shared<mechlens::sae_splice>(
                                                          random_sae(c.d_model, 40, 3), sae_with_error_term(false)));
    mechlens::integrated_gradients_options options;
    options.steps = 16;
    const auto baseline = mechlens::ig_baseline::from_tokens(pairs.corrupt());
    // Upstream of the splice (gradients pass through it), at its host (its output), and downstream.
    for (const site where : {site{site_kind::embed, -1}, site{site_kind::resid_pre, 1}, site{site_kind::attn_out, 2}}) {
        INFO(mechlens::to_string(where));
        const auto plain = mechlens::integrated_gradients(model, pairs.clean(), pairs.metric, where, baseline, options);
        const auto same =
            mechlens::integrated_gradients(model, pairs.clean(), pairs.metric, where, baseline, options, &identity);
        const auto other =
            mechlens::integrated_gradients(model, pairs.clean(), pairs.metric, where, baseline, options, &replacing);
        const double ig_same = relative_gap(same.attributions.values, plain.attributions.values);
        const double ig_other = relative_gap(other.attributions.values, plain.attributions.values);
        // relu(x) - relu(-x) adds one exact term per element, forward and backward: the results are bit for bit.
        CHECK(ig_same == 0.0);
        CHECK(ig_other > 1e-2);
        CHECK(same.input_mean == plain.input_mean);
        CHECK(std::abs(other.input_mean - plain.input_mean) > 1e-2);

        const auto saliency_plain = mechlens::saliency(model, pairs.clean(), pairs.metric, where);
        const auto saliency_same = mechlens::saliency(model, pairs.clean(), pairs.metric, where, &identity);
        const auto saliency_other = mechlens::saliency(model, pairs.clean(), pairs.metric, where, &replacing);
        const double sal_same = relative_gap(saliency_same.values.values, saliency_plain.values.values);
        CHECK(sal_same == 0.0);
        CHECK(relative_gap(saliency_other.values.values, saliency_plain.values.values) > 1e-2);

        const auto gxi_plain = mechlens::gradient_times_input(model, pairs.clean(), pairs.metric, where);
        const auto gxi_same = mechlens::gradient_times_input(model, pairs.clean(), pairs.metric, where, &identity);
        const auto gxi_other = mechlens::gradient_times_input(model, pairs.clean(), pairs.metric, where, &replacing);
        const double gxi_gap = relative_gap(gxi_same.values.values, gxi_plain.values.values);
        CHECK(gxi_gap == 0.0);
        CHECK(relative_gap(gxi_other.values.values, gxi_plain.values.values) > 1e-2);
        WARN(mechlens::to_string(where) << ", zero-error SAE at blocks.1.hook_resid_pre: relative gaps IG " << ig_same
             << ", saliency " << sal_same << ", gradient x input " << gxi_gap << "; replacing SAE: IG " << ig_other);
    }
}

TEST_CASE("integrated gradients over SAE and transcoder latents: completeness against forward passes run here, "
          "features ranked per channel",
          "[attribution][ig][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const prompt_pairs pairs;
    struct case_ {
        const char* name;
        const char* host;
        std::shared_ptr<const mechlens::splice> module;
    };
    const case_ cases[] = {
        {"SAE, error term", "blocks.1.hook_resid_post",
         std::make_shared<mechlens::sae_splice>(random_sae(c.d_model, 40, 3), sae_with_error_term(true))},
        {"SAE, replacing", "blocks.1.hook_resid_post",
         std::make_shared<mechlens::sae_splice>(random_sae(c.d_model, 40, 3), sae_with_error_term(false))},
        {"transcoder, error term", "blocks.0.hook_mlp_out",
         std::make_shared<mechlens::transcoder_splice>(random_transcoder(c.d_model, 32, 5),
                                                       transcoder_with_error_term(true))},
    };
    for (const case_& k : cases) {
        INFO(k.name);
        mechlens::dynamic_hooks splices(c);
        (void)splices.splice(k.host, k.module);
        const site latents = *mechlens::parse_site(std::string(k.host) + ".hook_sae_acts_post");
        const index_t width = splices.extension_width(latents);

        // F(x) and F(0 latents), each from a forward pass of the spliced model, with the metric read by hand.
        const double f_input = pairs.by_hand(mechlens::forward_logits(model, pairs.clean(), splices));
        const double f_zero = zeroed_metric(model, splices, pairs.clean(), latents, [&](const mechlens::tensor<float, 3>& logits) {
            return pairs.by_hand(logits);
        });
        REQUIRE(std::abs(f_input - f_zero) > 1e-2);

        std::vector<double> errors;
        for (const index_t steps : {4, 8, 16, 32}) {
            mechlens::integrated_gradients_options options;
            options.steps = steps;
            const auto r = mechlens::integrated_gradients(model, pairs.clean(), pairs.metric, latents,
                                                          mechlens::ig_baseline::zeros(), options, &splices);
            REQUIRE(r.attributions.shape == std::vector<index_t>{2, 6, width});
            REQUIRE(r.per_channel.extent(0) == 2);
            REQUIRE(r.per_channel.extent(1) == width);
            // The gradient pass's forward against the inference pass: float rounding of |F| ~ 1.
            CHECK(std::abs(r.input_mean - f_input) <= 1e-5);
            CHECK(std::abs(r.baseline_mean - f_zero) <= 1e-5);
            // per_channel sums the attributions over positions; its rows sum to each prompt's total.
            double channel_error = 0.0;
            for (index_t b = 0; b < 2; ++b) {
                double row = 0.0;
                for (index_t j = 0; j < width; ++j) {
                    double over_positions = 0.0;
                    for (index_t p = 0; p < 6; ++p)
                        over_positions += static_cast<double>(
                            r.attributions.values[static_cast<std::size_t>((b * 6 + p) * width + j)]);
                    channel_error = std::max(channel_error, std::abs(over_positions - r.per_channel(b, j)));
                    row += r.per_channel(b, j);
                }
                channel_error = std::max(channel_error, std::abs(row - r.totals[static_cast<std::size_t>(b)]));
            }
            CHECK(channel_error <= 1e-5);
            // Completeness against the passes above: the mean of the totals is F(x) - F(baseline).
            double total = 0.0;
            for (double t : r.totals) total += t / 2.0;
            errors.push_back(std::abs(total - (f_input - f_zero)));
        }
        WARN(k.name << " latents: F(x) " << f_input << ", F(0) " << f_zero << ", |sum of attributions - (F(x) - "
                    "F(0))| at 4, 8, 16, 32 steps: " << errors[0] << ' ' << errors[1] << ' ' << errors[2] << ' '
                    << errors[3]);
        // The bound of the smooth site in test_integrated_gradients.cpp (32 Gauss-Legendre nodes).
        CHECK(errors[3] <= 1e-4);

        // Gradient x input is integrated gradients from zero with one step at alpha = 1; saliency its gradient's size.
        mechlens::integrated_gradients_options one_step;
        one_step.rule = mechlens::integration_rule::riemann_right;
        one_step.steps = 1;
        const auto ig1 = mechlens::integrated_gradients(model, pairs.clean(), pairs.metric, latents,
                                                        mechlens::ig_baseline::zeros(), one_step, &splices);
        const auto gxi = mechlens::gradient_times_input(model, pairs.clean(), pairs.metric, latents, &splices);
        const auto sal = mechlens::saliency(model, pairs.clean(), pairs.metric, latents, &splices);
        CHECK(relative_gap(gxi.values.values, ig1.attributions.values) <= 1e-6);
        REQUIRE(sal.per_channel.extent(1) == width);
        REQUIRE(gxi.per_channel.extent(1) == width);
        index_t inactive_with_gradient = 0;
        for (std::size_t i = 0; i < sal.values.values.size(); ++i)
            if (gxi.values.values[i] == 0.0f && sal.values.values[i] > 0.0f) ++inactive_with_gradient;
        CHECK(inactive_with_gradient > 0);  // a latent at zero still has a gradient; its gradient x input is 0
    }

    // An extension site needs the hooks that declare it.
    mechlens::dynamic_hooks splices(c);
    (void)splices.splice("blocks.1.hook_resid_post", std::make_shared<mechlens::sae_splice>(random_sae(c.d_model, 40, 3)));
    const site latents = *mechlens::parse_site("blocks.1.hook_resid_post.hook_sae_acts_post");
    CHECK_THROWS_WITH(mechlens::integrated_gradients(model, pairs.clean(), pairs.metric, latents),
                      Catch::Contains("is an extension site"));
    CHECK_THROWS_AS(mechlens::saliency(model, pairs.clean(), pairs.metric, latents), std::invalid_argument);
    mechlens::dynamic_hooks empty(c);
    CHECK_THROWS_AS(mechlens::gradient_times_input(model, pairs.clean(), pairs.metric, latents, &empty),
                    std::invalid_argument);
}

TEST_CASE("integrated gradients over an SAE's latents on stories260K: completeness within the quadrature error",
          "[attribution][ig][splice][stories]") {
    const std::filesystem::path bin = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(bin);
    const mechlens::transformer model(mechlens::load_model(bin));
    const mechlens::model_config& c = model.config();
    // "Once upon a time" (BOS first) and eight more token ids.
    const std::vector<std::int32_t> ids{1, 403, 407, 261, 378, 11, 316, 330, 260, 363, 451, 429, 390};
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, static_cast<index_t>(ids.size())});
    const auto plain = mechlens::forward_logits(model, tokens);
    // The metric: the clean top token against the second one at the last position.
    index_t top = 0, second = 1;
    const index_t last = tokens.extent(1) - 1;
    for (index_t v = 0; v < c.vocab_out(); ++v) {
        if (plain(0, last, v) > plain(0, last, top)) {
            second = top;
            top = v;
        } else if (v != top && plain(0, last, v) > plain(0, last, second)) {
            second = v;
        }
    }
    const auto metric = mechlens::answer_metric::logit_difference({static_cast<std::int32_t>(top)},
                                                                  {static_cast<std::int32_t>(second)});
    for (const bool error_term : {true, false}) {
        INFO("error term " << error_term);
        mechlens::dynamic_hooks splices(c);
        (void)splices.splice("blocks.2.hook_resid_post", std::make_shared<mechlens::sae_splice>(
                                                             random_sae(c.d_model, 128, 9), sae_with_error_term(error_term)));
        const site latents = *mechlens::parse_site("blocks.2.hook_resid_post.hook_sae_acts_post");
        const auto spliced = mechlens::forward_logits(model, tokens, splices);
        const double f_input = static_cast<double>(spliced(0, last, top)) - static_cast<double>(spliced(0, last, second));
        const double f_zero = zeroed_metric(model, splices, tokens, latents, [&](const mechlens::tensor<float, 3>& l) {
            return static_cast<double>(l(0, last, top)) - static_cast<double>(l(0, last, second));
        });
        std::vector<double> errors;
        mechlens::integrated_gradients_result r;
        for (const index_t steps : {8, 16, 32, 64}) {
            mechlens::integrated_gradients_options options;
            options.steps = steps;
            r = mechlens::integrated_gradients(model, tokens, metric, latents, mechlens::ig_baseline::zeros(), options,
                                               &splices);
            errors.push_back(std::abs(r.totals[0] - (f_input - f_zero)));
        }
        const double error = errors.back();
        // The top features by |attribution summed over positions|.
        std::vector<index_t> order(static_cast<std::size_t>(r.per_channel.extent(1)));
        for (std::size_t j = 0; j < order.size(); ++j) order[j] = static_cast<index_t>(j);
        std::sort(order.begin(), order.end(),
                  [&](index_t a, index_t b) { return std::abs(r.per_channel(0, a)) > std::abs(r.per_channel(0, b)); });
        WARN("stories260K, random SAE at blocks.2.hook_resid_post (" << (error_term ? "error term" : "replacing")
             << "): F(x) " << f_input << ", F(0 latents) " << f_zero << ", |completeness error| at 8, 16, 32, 64 steps "
             << errors[0] << ' ' << errors[1] << ' ' << errors[2] << ' ' << errors[3]
             << "; top feature " << order[0] << " (" << r.per_channel(0, order[0]) << ")");
        CHECK(std::abs(f_input - f_zero) > 0.1);
        // The gradient pass's forward against the inference pass: float rounding of |F| ~ 7 (the reference IG test's
        // 1e-4). The path from zero latents swings F by ~13, like the embedding path there: it needs 64 nodes.
        CHECK(std::abs(r.input_mean - f_input) <= 1e-4);
        CHECK(errors.back() <= 0.02 * errors.front());
        CHECK(error <= 1e-4);
        CHECK(std::abs(r.per_channel(0, order[0])) > std::abs(r.per_channel(0, order[order.size() / 2])));
    }
}

}  // namespace test_splice_attribution
