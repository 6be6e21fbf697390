// `mechlens train`: grows a small model on a synthetic task (repeated random tokens for induction, or modular
// addition) with a config given on the command line, prints the loss curve and saves a checkpoint, which every
// other command opens with --model (load_model reads checkpoints).

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "../command.hpp"

namespace mechlens_cli {
namespace train_impl {

/// Mean cross-entropy of the logits (batch, pos, vocab) against `targets`, over the positions where `counted(t)`.
template <class Counted>
double mean_loss(mechlens::tensor_view<const float, 3> logits, const mechlens::tensor<std::int32_t, 2>& targets,
                 Counted&& counted) {
    double total = 0.0;
    mechlens::index_t n = 0;
    for (mechlens::index_t b = 0; b < logits.extent(0); ++b)
        for (mechlens::index_t t = 0; t < logits.extent(1); ++t) {
            if (!counted(t) || targets(b, t) < 0) continue;
            double largest = -std::numeric_limits<double>::infinity(), sum = 0.0;
            for (mechlens::index_t v = 0; v < logits.extent(2); ++v)
                largest = std::max(largest, static_cast<double>(logits(b, t, v)));
            for (mechlens::index_t v = 0; v < logits.extent(2); ++v)
                sum += std::exp(static_cast<double>(logits(b, t, v)) - largest);
            total += largest + std::log(sum) - static_cast<double>(logits(b, t, targets(b, t)));
            ++n;
        }
    return n > 0 ? total / static_cast<double>(n) : 0.0;
}

/// Fraction of rows whose argmax at position `t` is the target there.
double accuracy_at(mechlens::tensor_view<const float, 3> logits, const mechlens::tensor<std::int32_t, 2>& targets,
                   mechlens::index_t t) {
    mechlens::index_t right = 0;
    for (mechlens::index_t b = 0; b < logits.extent(0); ++b) {
        mechlens::index_t best = 0;
        for (mechlens::index_t v = 1; v < logits.extent(2); ++v)
            if (logits(b, t, v) > logits(b, t, best)) best = v;
        right += best == targets(b, t) ? 1 : 0;
    }
    return static_cast<double>(right) / static_cast<double>(logits.extent(0));
}

int run(arguments& args) {
    const std::string task = args.require("task");
    if (task != "induction" && task != "modadd")
        throw usage_error("--task must be induction or modadd, got '" + task + "'");
    auto number = [&](const char* key, auto fallback) {
        const auto text = args.get(key);
        return text ? parse_number<decltype(fallback)>(*text, std::string("--") + key) : fallback;
    };
    auto real = [&](const char* key, float fallback) {
        const auto text = args.get(key);
        if (!text) return fallback;
        try {
            std::size_t used = 0;
            const float value = std::stof(*text, &used);
            if (used != text->size() || !std::isfinite(value)) throw std::invalid_argument("trailing characters");
            return value;
        } catch (const std::exception&) {
            throw usage_error("invalid value '" + *text + "' for --" + key);
        }
    };
    mechlens::model_config c;
    c.d_model = number("d-model", mechlens::index_t{64});
    c.n_layers = number("layers", mechlens::index_t{2});
    c.n_heads = number("heads", mechlens::index_t{4});
    c.n_kv_heads = number("kv-heads", c.n_heads);
    c.d_mlp = number("d-mlp", mechlens::index_t{0});
    c.mlp = c.d_mlp > 0 ? mechlens::mlp_kind::gated_silu : mechlens::mlp_kind::none;
    const std::string norm = args.get("norm").value_or("rms"), positions = args.get("positions").value_or("rotary");
    if (norm != "rms" && norm != "none") throw usage_error("--norm must be rms or none");
    if (positions != "rotary" && positions != "learned") throw usage_error("--positions must be rotary or learned");
    c.norm = norm == "rms" ? mechlens::norm_kind::rms : mechlens::norm_kind::none;
    c.positions = positions == "rotary" ? mechlens::positional_kind::rotary : mechlens::positional_kind::learned;
    c.tied_unembed = false;

    const auto seed = number("seed", std::uint64_t{1});
    const auto batch = number("batch", mechlens::index_t{32});
    mechlens::train_options options;
    options.steps = number("steps", mechlens::index_t{1000});
    options.peak_lr = real("lr", 1e-3f);
    options.warmup_steps = number("warmup", std::min<mechlens::index_t>(100, options.steps / 10));
    options.min_lr = real("min-lr", options.peak_lr / 10.0f);
    options.weight_decay = real("weight-decay", task == "modadd" ? 1.0f : 0.01f);
    options.clip_norm = real("clip", 1.0f);
    const auto log_every =
        std::max<mechlens::index_t>(1, number("log-every", std::max<mechlens::index_t>(1, options.steps / 20)));
    const auto out = args.get("out");

    // Task data.
    mechlens::induction_options induction;
    mechlens::modular_addition_split modadd;
    if (task == "induction") {
        induction.batch = batch;
        induction.half_length = number("half", mechlens::index_t{16});
        induction.vocab = number("vocab", std::int32_t{64});
        induction.first_token = 1;
        induction.bos = 0;
        c.d_vocab = induction.vocab;
        c.n_ctx = 1 + 2 * induction.half_length;
    } else {
        const auto p = number("p", std::int32_t{53});
        modadd = mechlens::modular_addition(p, static_cast<double>(real("train-fraction", 0.3f)), seed);
        c.d_vocab = p + 1;
        c.n_ctx = 4;
    }
    args.reject_unknown();
    c.validate("mechlens train");

    mechlens::model_parameters params(c);
    mechlens::init_parameters(params, seed);
    std::fprintf(stderr,
                 "training a %td-layer model (d_model %td, %td heads, %s, %s norm, %s positions), %td parameters\n",
                 c.n_layers, c.d_model, c.n_heads, c.attn_only() ? "attention-only" : "gated MLP", norm.c_str(),
                 positions.c_str(), params.size());

    const mechlens::induction_batch held_out = task == "induction" ? mechlens::repeated_random_tokens(
                                                                         [&] {
                                                                             auto o = induction;
                                                                             o.batch = 64;
                                                                             return o;
                                                                         }(),
                                                                         seed ^ 0x5eedULL)
                                                                   : mechlens::induction_batch{};
    mechlens::backprop_tape<float> tape;
    mechlens::no_hooks none;
    double tokens_seen = 0.0, seconds = 0.0;
    auto next_batch = [&](mechlens::index_t step) {
        if (task == "induction")
            return mechlens::repeated_random_tokens(induction, seed * 1000003ULL + static_cast<std::uint64_t>(step))
                .data;
        return modadd.train;  // full-batch training, as in the grokking setups
    };
    const mechlens::adamw optimizer = mechlens::train(params, next_batch, options, [&](const mechlens::train_step& s) {
        tokens_seen += static_cast<double>(task == "induction" ? batch * c.n_ctx : modadd.train.batch() * 4);
        seconds += s.seconds;
        if (s.step % log_every != 0 && s.step + 1 != options.steps) return;
        if (task == "induction") {
            mechlens::taped_forward(params, mechlens::tensor_view<const std::int32_t, 2>(held_out.data.tokens.view()),
                                    tape, none);
            const mechlens::index_t first = held_out.prefix, repeat = held_out.prefix + held_out.half_length;
            const double first_half = mean_loss(tape.logits(), held_out.data.targets,
                                                [&](mechlens::index_t t) { return t >= first && t + 1 < repeat; });
            const double second_half =
                mean_loss(tape.logits(), held_out.data.targets, [&](mechlens::index_t t) { return t >= repeat; });
            std::printf("step %5td  loss %.4f  held-out first half %.4f  repeated half %.4f  lr %.2e  |g| %.3f\n",
                        s.step, static_cast<double>(s.loss), first_half, second_half,
                        static_cast<double>(s.learning_rate), s.grad_norm);
        } else {
            mechlens::taped_forward(params, mechlens::tensor_view<const std::int32_t, 2>(modadd.test.tokens.view()),
                                    tape, none);
            const double test_accuracy = accuracy_at(tape.logits(), modadd.test.targets, 2);
            mechlens::taped_forward(params, mechlens::tensor_view<const std::int32_t, 2>(modadd.train.tokens.view()),
                                    tape, none);
            const double train_accuracy = accuracy_at(tape.logits(), modadd.train.targets, 2);
            std::printf("step %5td  loss %.4f  train accuracy %.3f  test accuracy %.3f  lr %.2e  |g| %.3f\n", s.step,
                        static_cast<double>(s.loss), train_accuracy, test_accuracy,
                        static_cast<double>(s.learning_rate), s.grad_norm);
        }
        std::fflush(stdout);
    });
    std::fprintf(stderr, "%td steps in %.1f s (%.0f tokens/s)\n", options.steps, seconds, tokens_seen / seconds);
    if (out) {
        mechlens::save_checkpoint(*out, params, optimizer, {{"task", task}, {"seed", std::to_string(seed)}});
        std::fprintf(stderr, "saved %s\n", out->c_str());
    }
    return 0;
}

}  // namespace train_impl

const command train_command{
    "train",
    "--task induction|modadd [--d-model 64] [--layers 2] [--heads 4] [--kv-heads H] [--d-mlp 0]\n"
    "[--norm rms|none] [--positions rotary|learned] [--steps 1000] [--batch 32] [--lr 1e-3] [--min-lr LR]\n"
    "[--warmup W] [--weight-decay WD] [--clip 1] [--seed 1] [--log-every K] [--out FILE.safetensors]\n"
    "induction: [--vocab 64] [--half 16]; modadd: [--p 53] [--train-fraction 0.3]; --d-mlp 0 = attention-only\n"
    "the checkpoint FILE.safetensors is a --model for every command (it has no tokenizer: give --tokens)",
    train_impl::run};

}  // namespace mechlens_cli
