// Lesson 04: grow, see, intervene. No shared files needed.
//
// 1. Grow: train a 2-layer attention-only transformer from scratch on sequences of repeated random tokens
//    ([BOS] t_1 .. t_n t_1 .. t_n). The first half is pure noise, so its loss can never beat chance, ln(vocab - 1).
//    The repeated half becomes predictable once the model learns to look back: find where the current token
//    appeared before and copy the token that followed it. That needs two heads working together (a previous-token
//    head in layer 0, an induction head in layer 1), and they appear suddenly: the repeated-half loss sits on a plateau
//    for a while, then falls off a cliff. The program reports the step of that phase change.
// 2. See: score every head with the previous-token, duplicate-token and induction detectors on held-out sequences
//    and name the circuit.
// 3. Intervene: ablate heads (zero their z, or replace it by its mean over other sequences) in the inference forward
//    pass and measure the loss again. Mean-ablating the induction heads sends the repeated half back to chance while
//    the first half barely moves; other heads matter much less.
// It writes mechlens_demo_report.html (self-contained: loss curves, head scores, attention patterns, ablations) and
// the grown model, mechlens_demo_model.safetensors, into --out (default: the current directory).
//
// Usage: example_04_grow_induction [--seed N] [--steps N] [--out DIR] [--threads N]
// Expected output (seed 1, 2500 steps, about 30 s on two idle cores): phase change at step 859; previous-token heads
// L0H0 L0H1, induction heads L1H0-L1H3; mean-ablating the induction heads moves the held-out losses from 3.98 / 0.10
// (first / repeated half) to 4.15 / 4.97, against chance 4.14. The README walks through the whole output.
// Same seed, same numbers (for the same --threads; the default, 1, is also the fastest for matrices this small).

#include <limits>
#include <mechlens/mechlens.hpp>
#include <mechlens/report.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using mechlens::index_t;

namespace {

struct demo_options {
    std::uint64_t seed = 1;
    index_t steps = 2500;
    fs::path out = ".";
    // Tunables, documented in --help; the defaults are the configuration the README walks through.
    index_t batch = 32;
    index_t half = 16;
    std::int32_t vocab = 64;
    index_t d_model = 64;
    float lr = 1e-3f;
    bool rms = true;
    bool rotary = true;
    int threads = 1;
};

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr,
                 "%s\nusage: example_04_grow_induction [--seed N] [--steps N] [--out DIR] [--threads N]\n"
                 "       tunables: [--batch N] [--half N] [--vocab N] [--d-model N] [--lr X] [--norm rms|none]\n"
                 "                 [--positions rotary|learned]\n",
                 what.c_str());
    std::exit(2);
}

demo_options parse(int argc, char** argv) {
    demo_options o;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") usage_error("Lesson 04: grow, see, intervene.");
        if (i + 1 >= argc) usage_error("missing value after " + flag);
        const std::string value = argv[++i];
        try {
            if (flag == "--seed")
                o.seed = std::stoull(value);
            else if (flag == "--steps")
                o.steps = std::stoll(value);
            else if (flag == "--out")
                o.out = value;
            else if (flag == "--threads")
                o.threads = std::stoi(value);
            else if (flag == "--batch")
                o.batch = std::stoll(value);
            else if (flag == "--half")
                o.half = std::stoll(value);
            else if (flag == "--vocab")
                o.vocab = static_cast<std::int32_t>(std::stol(value));
            else if (flag == "--d-model")
                o.d_model = std::stoll(value);
            else if (flag == "--lr")
                o.lr = std::stof(value);
            else if (flag == "--norm")
                o.rms = value == "rms";
            else if (flag == "--positions")
                o.rotary = value == "rotary";
            else
                usage_error("unknown option " + flag);
        } catch (const std::logic_error&) {
            usage_error("bad value '" + value + "' for " + flag);
        }
    }
    if (o.steps < 1 || o.batch < 1 || o.half < 2 || o.vocab < 3 || o.d_model < 8 || o.d_model % 8 != 0)
        usage_error("need steps >= 1, batch >= 1, half >= 2, vocab >= 3, d-model a multiple of 8");
    return o;
}

// Seeds for independent streams (training batches, held-out data, initial weights) derived from the user's seed.
std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
    mechlens::random_generator rng(seed * 0x9e3779b97f4a7c15ULL + stream * 0xd1b54a32d192ed03ULL + index);
    return rng.next();
}

// Mean next-token cross-entropy of `logits` (batch, pos, vocab) over two position groups: the unpredictable first
// half ([0, prefix + n): BOS and t_1 .. t_n predict fresh random tokens) and the induction positions (second copy).
struct half_losses {
    double first = 0.0, repeated = 0.0;
};

half_losses split_loss(mechlens::tensor_view<const float, 3> logits, const mechlens::induction_batch& data) {
    const index_t batch = logits.extent(0), pos = logits.extent(1), vocab = logits.extent(2);
    const index_t first_end = data.prefix + data.half_length;
    double first = 0.0, repeated = 0.0;
    index_t n_first = 0, n_repeated = 0;
    for (index_t b = 0; b < batch; ++b)
        for (index_t t = 0; t + 1 < pos; ++t) {
            const bool is_first = t<first_end, is_repeated = data.induction_mask(t)> 0.0f;
            if (!is_first && !is_repeated) continue;
            double top = -std::numeric_limits<double>::infinity();
            for (index_t v = 0; v < vocab; ++v) top = std::max(top, static_cast<double>(logits(b, t, v)));
            double sum = 0.0;
            for (index_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits(b, t, v)) - top);
            const double loss = top + std::log(sum) - static_cast<double>(logits(b, t, data.data.targets(b, t)));
            if (is_first) {
                first += loss;
                ++n_first;
            } else {
                repeated += loss;
                ++n_repeated;
            }
        }
    return {first / static_cast<double>(std::max<index_t>(n_first, 1)),
            repeated / static_cast<double>(std::max<index_t>(n_repeated, 1))};
}

std::string bar(double value, double full, int width) {
    const int n = std::clamp(static_cast<int>(std::lround(value / full * width)), 0, width);
    return std::string(static_cast<std::size_t>(n), '#') + std::string(static_cast<std::size_t>(width - n), ' ');
}

// One line of the ablation table.
struct ablation_row {
    std::string name;
    half_losses zero, mean;
};

// Moving average over the last `window` values (fewer at the start): the raw per-batch losses are noisy.
std::vector<double> smooth(const std::vector<double>& values, std::size_t window) {
    std::vector<double> out(values.size());
    double sum = 0.0;
    for (std::size_t i = 0; i < values.size(); ++i) {
        sum += values[i];
        if (i >= window) sum -= values[i - window];
        out[i] = sum / static_cast<double>(std::min(i + 1, window));
    }
    return out;
}

std::string head_name(index_t layer, index_t head);

// The HTML report: loss curves, head scores, attention patterns of the circuit on one sequence, ablations.
void write_report(const fs::path& path, const demo_options& opt, const mechlens::model_config& config, double chance,
                  const std::vector<double>& first, const std::vector<double>& repeated, index_t phase_step,
                  const mechlens::head_detector_scores& scores, const std::vector<index_t>& prev_heads,
                  const std::vector<index_t>& induction_heads, const mechlens::activation_cache& patterns,
                  const mechlens::induction_batch& held_out, const std::vector<ablation_row>& ablations,
                  const mechlens::patching_table& patched, const mechlens::patching_table& estimated,
                  double correlation) {
    mechlens::html_report report("mechlens lesson 04: grow, see, intervene");
    report.paragraph("A " + std::to_string(config.n_layers) + "-layer, " + std::to_string(config.n_heads) +
                     "-head attention-only transformer (d_model " + std::to_string(config.d_model) +
                     ") trained from scratch on [BOS] + n random tokens repeated once (vocabulary " +
                     std::to_string(config.d_vocab) + ", seed " + std::to_string(opt.seed) + ", " +
                     std::to_string(opt.steps) + " steps).");

    report.heading("1. Grow: the loss curve");
    std::vector<double> steps(first.size());
    for (std::size_t i = 0; i < steps.size(); ++i) steps[i] = static_cast<double>(i);
    mechlens::line_chart_options chart{
        .title = "Training loss (20-step moving average)", .x_label = "step", .y_label = "cross-entropy (nats)"};
    if (phase_step >= 0)
        chart.markers.push_back({static_cast<double>(phase_step), "phase change, step " + std::to_string(phase_step)});
    report.line_chart(
        {{"first half (random)", steps, smooth(first, 20), "#1f77b4", false},
         {"repeated half", steps, smooth(repeated, 20), "#d62728", false},
         {"chance ln(vocab-1)", {0.0, steps.empty() ? 1.0 : steps.back()}, {chance, chance}, "#888888", true}},
        chart);
    report.paragraph(phase_step >= 0 ? "Phase change at step " + std::to_string(phase_step) +
                                           ": the repeated-half loss (20-step average) fell below half of chance (" +
                                           mechlens::format_fixed(0.5 * chance, 2) + ")."
                                     : "No phase change within the training run.");

    report.heading("2. See: head detector scores");
    std::vector<std::vector<std::string>> rows;
    for (index_t l = 0; l < config.n_layers; ++l)
        for (index_t h = 0; h < config.n_heads; ++h) {
            const bool in_prev = l == 0 && std::find(prev_heads.begin(), prev_heads.end(), h) != prev_heads.end();
            const bool in_ind =
                l == 1 && std::find(induction_heads.begin(), induction_heads.end(), h) != induction_heads.end();
            rows.push_back({head_name(l, h), mechlens::format_fixed(static_cast<double>(scores.previous_token(l, h)), 2),
                            mechlens::format_fixed(static_cast<double>(scores.duplicate_token(l, h)), 2),
                            mechlens::format_fixed(static_cast<double>(scores.induction(l, h)), 2),
                            in_prev  ? "previous-token"
                            : in_ind ? "induction"
                                     : ""});
        }
    report.table({"head", "previous-token", "duplicate-token", "induction", "role"}, rows);

    report.heading("Attention patterns of the circuit on one held-out sequence", 3);
    report.paragraph(
        "Rows are queries, columns keys. The previous-token head puts its weight just below the "
        "diagonal; the induction head, in the repeated half, on the token after the earlier copy of the "
        "current token (an off-diagonal stripe n - 1 keys back).");
    const index_t pos = held_out.data.positions();
    std::vector<std::string> labels;
    for (index_t t = 0; t < pos; ++t)
        labels.push_back(t < held_out.prefix ? "BOS" : std::to_string(held_out.data.tokens(0, t)));
    report.begin_row();
    auto add_heads = [&](index_t layer, const std::vector<index_t>& heads, const char* role) {
        const mechlens::tensor_view<const float, 4> p =
            patterns.at(mechlens::site{mechlens::site_kind::attn_pattern, layer}).view<4>();  // (batch, head, q, k)
        for (const index_t h : heads) {
            mechlens::tensor<float, 2> one({pos, pos});
            for (index_t q = 0; q < pos; ++q)
                for (index_t k = 0; k < pos; ++k) one(q, k) = p(0, h, q, k);
            report.heatmap(one.view(), labels, labels,
                           {.title = head_name(layer, h) + " (" + role + ")",
                            .row_label = "query",
                            .col_label = "key",
                            .cell = 12});
        }
    };
    add_heads(0, prev_heads, "previous-token");
    add_heads(1, induction_heads, "induction");
    report.end_row();

    report.heading("3. Intervene: ablation");
    rows.clear();
    for (const ablation_row& r : ablations)
        rows.push_back({r.name, mechlens::format_fixed(r.zero.first, 3), mechlens::format_fixed(r.zero.repeated, 3),
                        mechlens::format_fixed(r.mean.first, 3), mechlens::format_fixed(r.mean.repeated, 3)});
    report.paragraph(
        "Loss on held-out sequences with the heads' outputs (hook_z) set to zero, or to their mean at "
        "each position over other sequences. Chance is " +
        mechlens::format_fixed(chance, 2) + ".");
    report.table(
        {"ablated heads", "zero: first half", "zero: repeated half", "mean: first half", "mean: repeated half"}, rows);

    report.heading("4. Patch: which heads carry the induction answer");
    report.paragraph("Each head's output (hook_z) from 16 repeated sequences written into the same sequences with a "
                     "fresh first half; metric log p(next token) at the second-last position (clean " +
                     mechlens::format_fixed(patched.clean, 2) + ", corrupt " + mechlens::format_fixed(patched.corrupt, 2) +
                     "); 1 = the clean value restored. Attribution patching estimates the same table from one "
                     "forward and one backward pass; correlation " + mechlens::format_fixed(correlation, 3) + ".");
    const auto as_matrix = [&](const mechlens::patching_table& t) {
        return mechlens::tensor_view<const float, 2>(t.values.data(), {config.n_layers, config.n_heads});
    };
    mechlens::patching_heatmap_options heat;
    report.begin_row();
    heat.title = "activation patching";
    report.raw(mechlens::svg_patching_by_head(as_matrix(patched), heat));
    heat.title = "attribution patching";
    report.raw(mechlens::svg_patching_by_head(as_matrix(estimated), heat));
    report.end_row();
    report.save(path);
}

std::string head_name(index_t layer, index_t head) {
    std::string name = "L";  // appended piece by piece: g++ 12 warns falsely (-Wrestrict) about "L" + std::string
    name += std::to_string(layer);
    name += 'H';
    name += std::to_string(head);
    return name;
}

}  // namespace

int run(const demo_options& opt);

int main(int argc, char** argv) {
    const demo_options opt = parse(argc, argv);
    try {
        return run(opt);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}

int run(const demo_options& opt) {
    // The matrices are tiny (d_model 64): one thread is fastest, and spinning OpenMP threads on a busy machine are
    // far slower still.
    mechlens::set_num_threads(std::max(opt.threads, 1));
    const auto start = std::chrono::steady_clock::now();

    // ---- the model: 2 layers, 4 heads, attention only, untied unembedding ----
    mechlens::model_config config;
    config.d_model = opt.d_model;
    config.n_layers = 2;
    config.n_heads = 4;
    config.n_kv_heads = 4;
    config.d_mlp = 0;
    config.d_vocab = opt.vocab;
    config.n_ctx = 1 + 2 * opt.half;
    config.tied_unembed = false;
    config.norm = opt.rms ? mechlens::norm_kind::rms : mechlens::norm_kind::none;
    config.positions = opt.rotary ? mechlens::positional_kind::rotary : mechlens::positional_kind::learned;
    config.mlp = mechlens::mlp_kind::none;
    config.validate("lesson 04");

    // Uniform init with std 1/sqrt(d_model) (uniform on [-a, a] has std a/sqrt(3)).
    const float init_scale = std::sqrt(3.0f / static_cast<float>(opt.d_model));
    mechlens::model_parameters params(config,
                                      mechlens::random_model(config, stream_seed(opt.seed, 1, 0), init_scale).weights);
    params.fill_norm_gains(1.0f);
    mechlens::model_parameters grads(config);

    const mechlens::induction_options data_options{
        .batch = opt.batch, .half_length = opt.half, .vocab = opt.vocab, .first_token = 1, .bos = 0};
    const double chance = std::log(static_cast<double>(opt.vocab - 1));

    mechlens::adamw optimizer(params.size(), {.lr = opt.lr, .weight_decay = 0.01f},
                              mechlens::decay_ranges(params.layout(), mechlens::decay_matrices));
    const mechlens::warmup_cosine schedule({.peak = opt.lr,
                                            .warmup_steps = std::min<index_t>(50, opt.steps / 10),
                                            .total_steps = opt.steps,
                                            .min = opt.lr / 10.0f});

    std::printf("Lesson 04: grow, see, intervene (seed %llu)\n\n", static_cast<unsigned long long>(opt.seed));
    std::printf("Model: %lld layers x %lld heads, d_model %lld, attention only, %s, %s positions, vocab %d\n",
                static_cast<long long>(config.n_layers), static_cast<long long>(config.n_heads),
                static_cast<long long>(config.d_model), opt.rms ? "RMSNorm" : "no norm",
                opt.rotary ? "rotary" : "learned", opt.vocab);
    std::printf("Data: [BOS] + %lld random tokens, repeated once; batch %lld; %lld steps of AdamW (lr %.0e)\n",
                static_cast<long long>(opt.half), static_cast<long long>(opt.batch), static_cast<long long>(opt.steps),
                static_cast<double>(opt.lr));
    std::printf("Chance loss ln(%d) = %.2f\n\n", opt.vocab - 1, chance);

    // ---- 1. grow ----
    std::vector<double> curve_first, curve_repeated;  // per step, training batch
    mechlens::backprop_tape<float> tape;
    const index_t print_every = std::max<index_t>(1, opt.steps / 25);
    std::printf("  step   first half   repeated half  (repeated-half loss, # = chance)\n");
    for (index_t step = 0; step < opt.steps; ++step) {
        // The half length varies from batch to batch: with a fixed one, a single layer-0 head could predict the
        // repeat from positions alone ("copy the token n - 1 back") and no circuit would be needed.
        mechlens::induction_options step_options = data_options;
        const std::uint64_t step_seed = stream_seed(opt.seed, 2, static_cast<std::uint64_t>(step));
        step_options.half_length =
            opt.half / 2 + static_cast<index_t>(step_seed % static_cast<std::uint64_t>(opt.half - opt.half / 2 + 1));
        const mechlens::induction_batch data = mechlens::repeated_random_tokens(step_options, step_seed);
        mechlens::forward_backward(params, data.data.tokens.view(), mechlens::metric::cross_entropy(), &grads,
                                   mechlens::no_hooks{}, tape);
        const half_losses losses = split_loss(tape.logits(), data);
        curve_first.push_back(losses.first);
        curve_repeated.push_back(losses.repeated);
        mechlens::clip_grad_norm(grads.flat(), 1.0f);
        optimizer.options().lr = schedule(step);
        optimizer.step(params.flat(), grads.flat());
        if (step % print_every == 0 || step + 1 == opt.steps)
            std::printf("  %5lld   %6.3f       %6.3f  |%s|\n", static_cast<long long>(step), losses.first,
                        losses.repeated, bar(losses.repeated, chance, 40).c_str());
    }
    const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // Phase change: the first step where the repeated-half loss, averaged over a 20-step window, falls below half
    // of chance.
    index_t phase_step = -1;
    const index_t window = std::min<index_t>(20, opt.steps);
    double window_sum = 0.0;
    for (index_t s = 0; s < opt.steps; ++s) {
        window_sum += curve_repeated[static_cast<std::size_t>(s)];
        if (s >= window) window_sum -= curve_repeated[static_cast<std::size_t>(s - window)];
        if (s + 1 >= window && window_sum / static_cast<double>(window) < 0.5 * chance) {
            phase_step = s;
            break;
        }
    }
    const double tokens = static_cast<double>(opt.steps * opt.batch * config.n_ctx);
    std::printf("\nTrained in %.1f s (%.0f tokens/s).\n", train_seconds, tokens / train_seconds);
    if (phase_step >= 0)
        std::printf("Phase change at step %lld: the repeated-half loss fell below half of chance (%.2f).\n\n",
                    static_cast<long long>(phase_step), 0.5 * chance);
    else
        std::printf("No phase change yet: the repeated-half loss never fell below half of chance (train longer).\n\n");

    // ---- 2. see ----
    const mechlens::transformer model(mechlens::loaded_model{config, params.weights()});
    mechlens::induction_options held_out_options = data_options;
    held_out_options.batch = 64;
    held_out_options.half_length = (opt.half / 2 + opt.half) / 2;  // the middle of the trained lengths
    const mechlens::induction_batch held_out =
        mechlens::repeated_random_tokens(held_out_options, stream_seed(opt.seed, 3, 0));
    const auto tokens_view = held_out.data.tokens.view();
    mechlens::caching_hooks<mechlens::kind_set::of({mechlens::site_kind::attn_pattern})> pattern_cache;
    const mechlens::tensor<float, 3> clean_logits = mechlens::forward_logits(model, tokens_view, pattern_cache);
    const mechlens::head_detector_scores scores = mechlens::detect_heads(pattern_cache.cache(), tokens_view);
    std::printf("Head scores on %lld held-out sequences (share of attention where each kind of head looks):\n",
                static_cast<long long>(held_out_options.batch));
    std::printf("  head   prev-token  duplicate  induction\n");
    for (index_t l = 0; l < config.n_layers; ++l)
        for (index_t h = 0; h < config.n_heads; ++h)
            std::printf("  %s     %5.2f      %5.2f      %5.2f\n", head_name(l, h).c_str(),
                        static_cast<double>(scores.previous_token(l, h)),
                        static_cast<double>(scores.duplicate_token(l, h)), static_cast<double>(scores.induction(l, h)));
    // The circuit: the previous-token heads of layer 0 and the induction heads of layer 1, i.e. the heads scoring at
    // least half the best score of their layer and at least 0.1 (a head attending uniformly scores about 1/pos,
    // 0.04 here). The work is often shared by several heads.
    auto pick = [&](const mechlens::tensor<float, 2>& table, index_t layer) {
        float best = 0.0f;
        for (index_t h = 0; h < config.n_heads; ++h) best = std::max(best, table(layer, h));
        std::vector<index_t> heads;
        for (index_t h = 0; h < config.n_heads; ++h)
            if (table(layer, h) >= std::max(0.5f * best, 0.1f)) heads.push_back(h);
        return heads;
    };
    const std::vector<index_t> prev_heads = pick(scores.previous_token, 0), induction_heads = pick(scores.induction, 1);
    std::printf("Circuit: previous-token head(s)");
    for (index_t h : prev_heads) std::printf(" %s", head_name(0, h).c_str());
    if (prev_heads.empty()) std::printf(" (none yet)");
    std::printf(", induction head(s)");
    for (index_t h : induction_heads) std::printf(" %s", head_name(1, h).c_str());
    if (induction_heads.empty()) std::printf(" (none yet)");
    std::printf("\n\n");

    // ---- 3. intervene ----
    // Zero-ablation removes a head's output entirely, including the constant part every input shares, which later
    // computation may rely on; mean-ablation (z replaced by its mean at each position over other sequences) removes
    // only what depends on the input, so it isolates what the head computes.
    mechlens::induction_options reference_options = held_out_options;
    reference_options.batch = 128;
    const mechlens::induction_batch reference =
        mechlens::repeated_random_tokens(reference_options, stream_seed(opt.seed, 4, 0));
    mechlens::caching_hooks<mechlens::kind_set::of({mechlens::site_kind::attn_z})> z_cache;
    mechlens::forward_logits(model, reference.data.tokens.view(), z_cache);
    std::vector<ablation_row> ablations;
    auto ablate = [&](const std::string& name, const std::vector<std::pair<index_t, std::vector<index_t>>>& heads) {
        if (std::all_of(heads.begin(), heads.end(), [](const auto& entry) { return entry.second.empty(); }))
            return;  // no such heads (the circuit has not formed yet)
        mechlens::ablate_hooks<> zero, mean;
        for (const auto& [layer, hs] : heads) {
            const mechlens::site z{mechlens::site_kind::attn_z, layer};
            zero.zero(z, {.heads = mechlens::index_set(hs)});
            mean.mean(z, z_cache.cache(), mechlens::mean_over::batch, {.heads = mechlens::index_set(hs)});
        }
        const mechlens::tensor<float, 3> zero_logits = mechlens::forward_logits(model, tokens_view, zero);
        const mechlens::tensor<float, 3> mean_logits = mechlens::forward_logits(model, tokens_view, mean);
        ablations.push_back({name, split_loss(zero_logits.view(), held_out), split_loss(mean_logits.view(), held_out)});
    };
    const half_losses clean = split_loss(clean_logits.view(), held_out);
    ablations.push_back({"none", clean, clean});
    auto names_of = [&](index_t layer, const std::vector<index_t>& hs) {
        std::string s;
        for (index_t h : hs) {
            if (!s.empty()) s += '+';
            s += head_name(layer, h);
        }
        return s;
    };
    ablate("induction " + names_of(1, induction_heads), {{1, induction_heads}});
    ablate("prev-token " + names_of(0, prev_heads), {{0, prev_heads}});
    for (index_t l = 0; l < config.n_layers; ++l)
        for (index_t h = 0; h < config.n_heads; ++h) {
            const auto& circuit = l == 0 ? prev_heads : induction_heads;
            if (std::find(circuit.begin(), circuit.end(), h) != circuit.end()) continue;
            ablate("other " + head_name(l, h), {{l, {h}}});
        }
    std::printf("Ablations on the held-out sequences (loss; chance %.2f):\n", chance);
    std::printf("                                      zero-ablated         mean-ablated\n");
    std::printf("  ablated                           first  repeated      first  repeated\n");
    for (const ablation_row& r : ablations)
        std::printf("  %-32s %6.3f    %6.3f     %6.3f    %6.3f\n", r.name.c_str(), r.zero.first, r.zero.repeated,
                    r.mean.first, r.mean.repeated);

    // ---- 4. patch ----
    // Clean: 16 held-out sequences. Corrupt: the same with the first copy replaced by fresh random tokens, so the
    // second copy repeats nothing. Metric: log p(t_n) at the second-last position, predicted by induction only in
    // the clean run. Activation patching of each head's output finds the heads that carry it; attribution patching
    // estimates the same table from one forward and one backward pass.
    const index_t pairs = 16, length = held_out.data.tokens.extent(1), n = held_out.half_length;
    const mechlens::induction_batch fresh = mechlens::repeated_random_tokens(
        [&] {
            mechlens::induction_options o = held_out_options;
            o.batch = pairs;
            return o;
        }(),
        stream_seed(opt.seed, 5, 0));
    mechlens::tensor<std::int32_t, 2> clean_tokens({pairs, length}), corrupt_tokens({pairs, length});
    std::vector<std::int32_t> answers;
    for (index_t b = 0; b < pairs; ++b) {
        for (index_t t = 0; t < length; ++t) {
            clean_tokens(b, t) = held_out.data.tokens(b, t);
            const bool first_copy = t >= held_out.prefix && t < held_out.prefix + n;
            corrupt_tokens(b, t) = first_copy ? fresh.data.tokens(b, t) : held_out.data.tokens(b, t);
        }
        answers.push_back(held_out.data.tokens(b, length - 1));
    }
    const auto answer = mechlens::answer_metric::log_probability(answers, -2);
    mechlens::activation_patcher patcher(model, clean_tokens.view(), corrupt_tokens.view(), answer);
    const mechlens::attribution_patcher estimate(model, clean_tokens.view(), corrupt_tokens.view(), answer);
    const auto head_grid = mechlens::patching_grid::by_layer_head();
    const mechlens::patching_table patched = patcher.sweep(head_grid), estimated = estimate.estimate(head_grid);
    const double correlation = mechlens::pearson_correlation(patched.values, estimated.values);
    std::printf("\nPatching each head's output (hook_z) from repeated into non-repeated sequences; log p(next token) "
                "%.2f clean, %.2f corrupt:\n", patched.clean, patched.corrupt);
    std::printf("  head   activation patching   attribution patching\n");
    for (index_t l = 0; l < config.n_layers; ++l)
        for (index_t h = 0; h < config.n_heads; ++h)
            std::printf("  %s   %8.3f              %8.3f\n", head_name(l, h).c_str(),
                        static_cast<double>(patched.values(l, h, 0)), static_cast<double>(estimated.values(l, h, 0)));
    std::printf("Correlation of attribution patching with activation patching over the %td heads: %.3f\n",
                config.n_layers * config.n_heads, correlation);

    // ---- report and model ----
    std::error_code ec;
    fs::create_directories(opt.out, ec);
    mechlens::save_checkpoint(
        opt.out / "mechlens_demo_model.safetensors", params,
        {{"lesson", "04_grow_induction"}, {"seed", std::to_string(opt.seed)}, {"steps", std::to_string(opt.steps)}});

    const fs::path report_path = opt.out / "mechlens_demo_report.html";
    write_report(report_path, opt, config, chance, curve_first, curve_repeated, phase_step, scores, prev_heads,
                 induction_heads, pattern_cache.cache(), held_out, ablations, patched, estimated, correlation);

    const double total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("\nWrote %s and %s (%.1f s in all).\n", (opt.out / "mechlens_demo_report.html").string().c_str(),
                (opt.out / "mechlens_demo_model.safetensors").string().c_str(), total_seconds);
    return 0;
}
