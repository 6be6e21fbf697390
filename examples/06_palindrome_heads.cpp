// Lesson 06: how does a trained classifier tell a palindrome? A TransformerLens model, opened from the `.pt` file
// torch.save wrote, taken apart with attention patterns, activation patching and direct logit attribution.
//
// ARENA's palindrome classifier (2 attention-only layers, 2 heads each, LayerNorm) reads START, 20 values in 0..30
// and END, and its logits at END say "not a palindrome" (class 0) or "palindrome" (class 1). To compare value i with
// its mirror 21 - i, some head must look from one position at the mirrored one. We look for such heads in the
// attention patterns, then check with patching which heads carry the answer: clean prompts are palindromes, each
// corrupt prompt the same sequence with one value of the second half changed. Writes palindrome.html.
//
// Needs the ARENA models: set MECHLENS_MODELS to the folder holding arena/palindrome/ (default: ../shared/models).
// Usage: example_06_palindrome_heads [--out DIR]

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using mechlens::index_t;
using mechlens::patching_grid;
using mechlens::site;
using mechlens::site_kind;

namespace {

constexpr std::int32_t start_token = 31, end_token = 32;
constexpr index_t length = 22;  // START, 20 values, END

std::string head_name(index_t layer, index_t head) { return "L" + std::to_string(layer) + "H" + std::to_string(head); }

}  // namespace

int main(int argc, char** argv) {
    fs::path out_dir = ".";
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--out") out_dir = argv[++i];
    const char* env = std::getenv("MECHLENS_MODELS");
    const fs::path models = env && *env ? fs::path(env) : fs::path(MECHLENS_DEFAULT_MODELS);
    const fs::path model_dir = models / "arena" / "palindrome";
    if (!fs::exists(model_dir / "config.json")) {
        std::printf("This lesson needs ARENA's palindrome classifier, which is not in %s.\n"
                    "Put its config.json and palindrome_classifier.pt in <dir>/arena/palindrome/ and set "
                    "MECHLENS_MODELS=<dir>.\n",
                    model_dir.string().c_str());
        return 0;
    }
    mechlens::set_num_threads(1);
    // A TransformerLens directory (config.json + the state dict torch.save wrote) is a model like any other.
    const mechlens::transformer model(mechlens::load_model(model_dir));
    const mechlens::model_config& c = model.config();
    std::printf("%s: %td layers, %td heads of width %td, LayerNorm, %td output classes\n", model_dir.string().c_str(),
                c.n_layers, c.n_heads, c.d_head(), c.vocab_out());

    // 1. Prompts: palindromes (clean) and the same with one second-half value changed (corrupt).
    const index_t prompts = 8;
    mechlens::random_generator rng(6);
    auto draw = [&](std::int32_t n) { return static_cast<std::int32_t>(rng.uniform() * static_cast<double>(n)) % n; };
    mechlens::tensor<std::int32_t, 2> clean({prompts, length}), corrupt({prompts, length});
    for (index_t b = 0; b < prompts; ++b) {
        clean(b, 0) = start_token;
        clean(b, length - 1) = end_token;
        for (index_t i = 1; i <= 10; ++i) clean(b, i) = clean(b, length - 1 - i) = draw(31);
        for (index_t p = 0; p < length; ++p) corrupt(b, p) = clean(b, p);
        const index_t changed = 11 + static_cast<index_t>(draw(10));  // a position of the second half
        corrupt(b, changed) = (clean(b, changed) + 1 + draw(30)) % 31;
    }
    const auto logits = mechlens::forward_logits(model, clean.view());
    const auto corrupt_logits = mechlens::forward_logits(model, corrupt.view());
    int right = 0;
    for (index_t b = 0; b < prompts; ++b)
        right += (logits(b, length - 1, 1) > logits(b, length - 1, 0)) +
                 (corrupt_logits(b, length - 1, 0) > corrupt_logits(b, length - 1, 1));
    std::printf("classified right: %d of %td (the palindromes and their one-value changes)\n\n", right, 2 * prompts);

    // 2. Attention patterns: how much does each head look from position q to its mirror 21 - q?
    mechlens::caching_hooks<> cache;
    (void)mechlens::forward_logits(model, clean.view(), cache);
    std::printf("Mean attention from each position of the second half (11..20) to its mirror (21 - q):\n");
    double best_mirror = -1.0;
    index_t mirror_layer = 0, mirror_head = 0;
    for (index_t l = 0; l < c.n_layers; ++l) {
        const auto pattern = cache.cache().at(site{site_kind::attn_pattern, l}).view<4>();  // (b, head, q, k)
        for (index_t h = 0; h < c.n_heads; ++h) {
            double mirror = 0.0;
            for (index_t b = 0; b < prompts; ++b)
                for (index_t q = 11; q <= 20; ++q) mirror += static_cast<double>(pattern(b, h, q, length - 1 - q));
            mirror /= static_cast<double>(prompts * 10);
            std::printf("  %s  %.3f\n", head_name(l, h).c_str(), mirror);
            if (mirror > best_mirror) best_mirror = mirror, mirror_layer = l, mirror_head = h;
        }
    }
    std::printf("%s attends to the mirrored position most (%.2f of its attention on average).\n\n",
                head_name(mirror_layer, mirror_head).c_str(), best_mirror);

    // 3. Activation patching: which heads, and which positions, carry "palindrome" to the END position?
    const std::vector<std::int32_t> yes(static_cast<std::size_t>(prompts), 1), no(static_cast<std::size_t>(prompts), 0);
    const auto metric = mechlens::answer_metric::logit_difference(yes, no);
    mechlens::activation_patcher patcher(model, clean.view(), corrupt.view(), metric);
    std::printf("logit(palindrome) - logit(not) at END: clean %+.2f, corrupt %+.2f (mean over prompts)\n",
                patcher.clean_metric(), patcher.corrupt_metric());
    const auto heads = patcher.sweep(patching_grid::by_layer_head(site_kind::attn_z));
    std::printf("Patching each head's hook_z from the clean runs (1 = the clean answer, 0 = the corrupt):\n");
    double best_patch = -1e300;
    index_t patch_layer = 0, patch_head = 0;
    for (index_t l = 0; l < c.n_layers; ++l)
        for (index_t h = 0; h < c.n_heads; ++h) {
            const double v = static_cast<double>(heads.values(l, h, 0));
            std::printf("  %s  %+.3f\n", head_name(l, h).c_str(), v);
            if (v > best_patch) best_patch = v, patch_layer = l, patch_head = h;
        }
    const auto resid = patcher.sweep(patching_grid::by_layer_position(site_kind::resid_pre));

    // 4. Direct logit attribution on the first palindrome: who writes "palindrome" into the END logits?
    const auto dla = mechlens::direct_logit_attribution(model, cache.cache(), 0, length - 1, 1, 0);
    std::printf("\nDirect logit attribution at END of the first palindrome (total %+.2f):\n", dla.total);
    std::vector<std::size_t> order(dla.values.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return dla.values[a] > dla.values[b]; });
    for (std::size_t i = 0; i < 4 && i < order.size(); ++i)
        std::printf("  %-10s %+.3f\n", dla.components[order[i]].c_str(), dla.values[order[i]]);
    const bool agree = patch_layer == mirror_layer && patch_head == mirror_head;
    std::printf("\n%s: %s restores %.2f of the clean answer when patched alone; %s looks at mirrors the most.\n",
                agree ? "Agreement" : "Disagreement", head_name(patch_layer, patch_head).c_str(), best_patch,
                head_name(mirror_layer, mirror_head).c_str());
    std::printf("The layer-0 mirror head compares each value with its mirror; the layer-1 heads read that comparison "
                "at END and write the verdict (direct logit attribution).\n\n");

    // 5. The report.
    std::vector<std::string> token_text;
    for (index_t p = 0; p < length; ++p) {
        const std::int32_t t = clean(0, p);
        token_text.push_back(t == start_token ? "START" : t == end_token ? "END" : std::to_string(t));
    }
    mechlens::html_report report("How a transformer tells a palindrome (ARENA's classifier)");
    report.paragraph("Clean prompts: 8 palindromes of 20 values. Corrupt: each with one second-half value changed. "
                     "Metric: logit(palindrome) - logit(not) at END; 1 = clean, 0 = corrupt.");
    mechlens::patching_heatmap_options options;
    options.title = "Activation patching, blocks.L.hook_resid_pre by (layer, position)";
    report.raw(mechlens::svg_patching_by_position(
        mechlens::tensor_view<const float, 2>(resid.values.data(), {c.n_layers, length}), token_text, options));
    options.title = "Activation patching, attn.hook_z by (layer, head)";
    report.raw(mechlens::svg_patching_by_head(
        mechlens::tensor_view<const float, 2>(heads.values.data(), {c.n_layers, c.n_heads}), options));
    mechlens::bar_chart_options bars;
    bars.title = "Direct logit attribution at END, first palindrome";
    report.raw(mechlens::svg_logit_attribution(dla, bars));
    const auto pattern = cache.cache().at(site{site_kind::attn_pattern, mirror_layer}).view<4>();
    report.raw(mechlens::html_attention_grid(pattern[0], mirror_layer, token_text, {mirror_head}));
    const fs::path report_path = out_dir / "palindrome.html";
    report.save(report_path);
    std::printf("Wrote %s\n", report_path.string().c_str());
    return 0;
}
