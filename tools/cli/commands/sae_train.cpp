// `mechlens sae train`: trains a sparse autoencoder (sae/training.hpp) on harvested activations (--activations DIR)
// or on activations harvested from a model first (--model, sae/harvest.hpp), and writes a SAELens folder.

#include <mechlens/mechlens.hpp>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"
#include "../documents.hpp"

namespace mechlens_cli {
namespace sae_train_impl {

/// Parses a finite decimal number or throws usage_error naming the option.
double parse_double(const std::string& text, const std::string& what) {
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value))
        throw usage_error("invalid value '" + text + "' for " + what);
    return value;
}

/// The training progress line, rewritten in place on stderr at most ten times a second (and at the end).
class training_line {
public:
    /// A line starting with `what` ("sae train", "transcoder train").
    explicit training_line(const char* what) : what_(what) {}
    void operator()(const mechlens::sae_training_progress& p) {
        const auto now = std::chrono::steady_clock::now();
        const bool last = p.step >= p.steps_total;
        if (!last && printed_ && now - last_print_ < std::chrono::milliseconds(100)) return;
        last_print_ = now;
        printed_ = true;
        std::fprintf(stderr, "\r%s: step %lld / %lld  %lld tokens  loss %.4g (mse %.4g)  L0 %.1f  dead %.1f%%  %.0f tok/s   ",
                     what_, static_cast<long long>(p.step), static_cast<long long>(p.steps_total),
                     static_cast<long long>(p.tokens), p.loss.total, p.loss.mse, p.loss.l0_norm,
                     100.0 * p.dead_fraction, p.tokens_per_second);
        std::fflush(stderr);
    }
    /// Ends the line when one was printed.
    void finish() const {
        if (printed_) std::fputc('\n', stderr);
    }

private:
    const char* what_;
    std::chrono::steady_clock::time_point last_print_{};
    bool printed_ = false;
};

/// Harvests `hooks` from --model into `dir` (a temporary directory inside --out) with harvest()'s defaults.
void harvest_from_model(arguments& args, const std::vector<std::string>& hooks, std::int64_t tokens_total,
                        std::uint64_t seed, const std::filesystem::path& dir) {
    const model_options model_opts = read_model_options(args);
    const std::vector<std::string> texts = args.all("text");
    const auto tokenizer_path = args.get("tokenizer");
    const auto context = parse_number<mechlens::index_t>(args.get("context").value_or("128"), "--context");
    args.reject_unknown();
    if (context <= 0) throw usage_error("--context must be positive");
    for (const std::string& t : texts)
        if (!std::filesystem::is_regular_file(t)) throw usage_error(concat("text file ", t, " does not exist"));
    const mechlens::transformer model = open_model(model_opts);
    const mechlens::model_config& c = model.config();
    if (context > c.n_ctx)
        throw usage_error(concat("--context ", std::to_string(context), " exceeds the model's n_ctx ", std::to_string(c.n_ctx)));
    mechlens::harvest_options options;
    for (const std::string& hook : hooks) options.sites.push_back(mechlens::parse_harvest_site(hook, c));
    std::optional<text_tokenizer> tokenizer = texts.empty() ? optional_tokenizer(model_opts.path, tokenizer_path)
                                                            : resolve_tokenizer(model_opts.path, tokenizer_path);
    const std::int32_t bos = tokenizer ? tokenizer->bos_id() : -1;
    mechlens::story_options story;
    story.seed = seed;
    const std::unique_ptr<mechlens::document_source> source =
        open_documents(model, texts, tokenizer, bos, story, "the model has no tokenizer: give --text to train on text");
    // Whole contexts covering tokens_total (the trainer cycles over what it gets).
    options.context = context;
    options.tokens_total = (tokens_total + context - 1) / context * context;
    options.seed = seed;
    options.bos = bos;
    options.model = model_opts.path.filename().string();
    std::filesystem::remove_all(dir);
    const mechlens::harvest_result r = mechlens::harvest(model, *source, dir, options);
    if (r.manifest.rows() == 0) throw usage_error("the text gives no whole context of --context tokens");
    std::fprintf(stderr, "harvested %lld rows of %s%s in %.1f s\n", static_cast<long long>(r.manifest.rows()),
                 hooks.front().c_str(), hooks.size() > 1 ? " and its target" : "", r.seconds);
}

int run(arguments& args) {
    const auto activations = args.get("activations");
    const auto model = args.get("model");
    const auto hook = args.get("hook");
    const std::string architecture = args.require("architecture");
    const std::filesystem::path out = args.require("out");
    mechlens::sae_trainer_options o;
    o.d_sae = parse_number<mechlens::index_t>(args.require("d-sae"), "--d-sae");
    const auto arch = mechlens::parse_sae_architecture(architecture);
    if (!arch) throw usage_error(concat("unknown --architecture '", architecture, "' (standard, topk, jumprelu, batchtopk)"));
    o.sae.architecture = *arch;
    const auto k = args.get("k");
    if (k) o.sae.k = parse_double(*k, "--k");
    if (const auto v = args.get("l1")) {
        o.l1_coefficient = parse_double(*v, "--l1");
        o.l0_coefficient = o.l1_coefficient;
    }
    if (const auto v = args.get("lr")) o.lr = parse_double(*v, "--lr");
    const bool jump = o.sae.architecture == mechlens::sae_architecture::jumprelu;
    if (const auto v = args.get("jumprelu-sparsity")) {
        if (!jump) throw usage_error(concat("--jumprelu-sparsity is for jumprelu, not ", architecture));
        if (*v != "step" && *v != "tanh") throw usage_error(concat("--jumprelu-sparsity '", *v, "': step or tanh"));
        o.jumprelu_sparsity_mode = *v == "tanh" ? mechlens::jumprelu_sparsity::tanh : mechlens::jumprelu_sparsity::step;
    }
    if (const auto v = args.get("tanh-scale")) {
        if (o.jumprelu_sparsity_mode != mechlens::jumprelu_sparsity::tanh)
            throw usage_error("--tanh-scale needs --jumprelu-sparsity tanh");
        o.jumprelu_tanh_scale = parse_double(*v, "--tanh-scale");
        if (!(o.jumprelu_tanh_scale > 0)) throw usage_error("--tanh-scale must be positive");
    }
    if (const auto v = args.get("pre-act-loss")) {
        if (!jump) throw usage_error(concat("--pre-act-loss is for jumprelu, not ", architecture));
        o.pre_act_loss_coefficient = parse_double(*v, "--pre-act-loss");
        if (!(o.pre_act_loss_coefficient >= 0)) throw usage_error("--pre-act-loss must be >= 0");
    }
    if (const auto v = args.get("normalize")) {
        const auto n = mechlens::parse_sae_normalization(*v);
        if (!n)
            throw usage_error(concat("unknown --normalize '", *v,
                                     "' (none, expected_average_only_in, constant_norm_rescale)"));
        o.sae.normalize_activations = *n;
    }
    if (const auto v = args.get("norm-estimate-batches")) {
        if (o.sae.normalize_activations != mechlens::sae_normalization::expected_average_only_in)
            throw usage_error("--norm-estimate-batches needs --normalize expected_average_only_in");
        o.n_batches_for_norm_estimate = parse_number<std::int64_t>(*v, "--norm-estimate-batches");
        if (o.n_batches_for_norm_estimate < 1) throw usage_error("--norm-estimate-batches must be at least 1");
    }
    o.batch_size = parse_number<mechlens::index_t>(args.get("batch").value_or("4096"), "--batch");
    o.tokens_total = parse_number<std::int64_t>(args.get("tokens-total").value_or("1000000"), "--tokens-total");
    o.seed = parse_number<std::uint64_t>(args.get("seed").value_or("0"), "--seed");
    o.lr_warm_up_steps = parse_number<std::int64_t>(args.get("lr-warm-up-steps").value_or("0"), "--lr-warm-up-steps");
    o.lr_decay_steps = parse_number<std::int64_t>(args.get("lr-decay-steps").value_or("0"), "--lr-decay-steps");
    o.coefficient_warm_up_steps =
        parse_number<std::int64_t>(args.get("l1-warm-up-steps").value_or("0"), "--l1-warm-up-steps");
    o.checkpoint_every_tokens =
        parse_number<std::int64_t>(args.get("checkpoint-every").value_or("0"), "--checkpoint-every");
    if (o.checkpoint_every_tokens > 0) o.checkpoint_dir = out / "checkpoints";
    const bool topish = o.sae.architecture == mechlens::sae_architecture::topk ||
                        o.sae.architecture == mechlens::sae_architecture::batchtopk;
    if (topish && !k) throw usage_error(concat("--architecture ", architecture, " needs --k"));
    if (!topish && k) throw usage_error(concat("--k is for topk and batchtopk, not ", architecture));
    if (o.d_sae <= 0) throw usage_error("--d-sae must be positive");
    if (o.batch_size <= 0) throw usage_error("--batch must be positive");
    if (o.tokens_total < o.batch_size)
        throw usage_error(concat("--tokens-total ", std::to_string(o.tokens_total), " is less than one --batch (",
                                 std::to_string(o.batch_size), ")"));
    if (topish && !(o.sae.k > 0 && o.sae.k <= static_cast<double>(o.d_sae)))
        throw usage_error("--k must be in (0, --d-sae]");
    if (!(o.lr > 0)) throw usage_error("--lr must be positive");
    if (activations.has_value() == model.has_value()) throw usage_error("give exactly one of --activations and --model");
    if (model && !hook) throw usage_error("--model needs --hook NAME");

    std::unique_ptr<mechlens::harvest_batches> data;
    const std::filesystem::path scratch = out / "harvest.tmp";
    std::string hook_name;
    if (activations) {
        args.reject_unknown();
        if (!std::filesystem::is_directory(*activations))
            throw usage_error(concat("--activations ", *activations, " is not a directory"));
        data = std::make_unique<mechlens::harvest_batches>(*activations, hook.value_or(""));
        const mechlens::harvest_manifest m = mechlens::read_harvest_manifest(*activations);
        for (const auto& s : m.sites)
            if (!hook || s.hook_name == *hook || hook->rfind(s.hook_name + ":", 0) == 0) {
                o.metadata.hook_name = s.hook_name;
                if (s.head >= 0) o.metadata.hook_head_index = s.head;
                break;
            }
        o.metadata.model_name = m.model;
    } else {
        harvest_from_model(args, {*hook}, o.tokens_total, o.seed, scratch);
        data = std::make_unique<mechlens::harvest_batches>(scratch, *hook);
        const mechlens::harvest_manifest m = mechlens::read_harvest_manifest(scratch);
        o.metadata.hook_name = m.sites.front().hook_name;
        if (m.sites.front().head >= 0) o.metadata.hook_head_index = m.sites.front().head;
        o.metadata.model_name = m.model;
    }
    o.sae.apply_b_dec_to_input = true;
    mechlens::sae_trainer trainer(o, data->width());
    training_line line("sae train");
    try {
        trainer.train(*data, std::ref(line));
    } catch (...) {
        line.finish();
        throw;
    }
    line.finish();
    mechlens::write_saelens_folder(out, trainer.saelens());
    std::filesystem::remove_all(scratch);
    std::printf("%s: %s SAE (%td -> %td latents) trained on %lld tokens of %s\n", out.string().c_str(),
                architecture.c_str(), data->width(), o.d_sae, static_cast<long long>(trainer.steps_done() * o.batch_size),
                o.metadata.hook_name.c_str());
    return 0;
}

/// Writes a transcoder as a SAELens-style folder: cfg.json (SAELens's transcoder architectures: transcoder,
/// skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder; d_in, d_sae, d_out, the input hook in
/// metadata.hook_name and the target in metadata.hook_name_out) and sae_weights.safetensors with W_enc, W_dec,
/// b_enc, b_dec, threshold (jumprelu) and W_skip stored as SAELens stores it, (d_out, d_in) = our W_skip transposed.
void write_transcoder_folder(const std::filesystem::path& dir, const mechlens::transcoder_weights& w, bool jumprelu,
                             const std::string& hook_in, const std::string& hook_out, const std::string& model) {
    mechlens::validate_transcoder(
        w, mechlens::transcoder_options(jumprelu ? mechlens::sae_architecture::jumprelu : mechlens::sae_architecture::standard),
        "write_transcoder_folder");
    std::filesystem::create_directories(dir);
    const mechlens::sae_weights& s = w.sae;
    const mechlens::index_t d = s.d_in;
    std::vector<float> skip_t(w.w_skip.size());  // (d_out, d_in)
    for (mechlens::index_t i = 0; i < d && !w.w_skip.empty(); ++i)
        for (mechlens::index_t o = 0; o < d; ++o)
            skip_t[static_cast<std::size_t>(o * d + i)] = w.w_skip[static_cast<std::size_t>(i * d + o)];
    std::vector<mechlens::safetensors_tensor_ref> tensors{{"W_enc", {d, s.d_sae}, s.w_enc.data()},
                                                          {"W_dec", {s.d_sae, d}, s.w_dec.data()},
                                                          {"b_enc", {s.d_sae}, s.b_enc.data()},
                                                          {"b_dec", {d}, s.b_dec.data()}};
    if (jumprelu) tensors.push_back({"threshold", {s.d_sae}, s.threshold.data()});
    if (!w.w_skip.empty()) tensors.push_back({"W_skip", {d, d}, skip_t.data()});
    mechlens::write_safetensors(dir / "sae_weights.safetensors", tensors);
    std::string architecture = jumprelu ? "jumprelu_" : "";
    architecture += w.w_skip.empty() ? "transcoder" : "skip_transcoder";
    std::FILE* f = std::fopen((dir / "cfg.json").string().c_str(), "wb");
    if (f == nullptr) throw usage_error(concat("cannot write ", (dir / "cfg.json").string()));
    std::fprintf(f,
                 "{\"architecture\": \"%s\", \"d_in\": %td, \"d_sae\": %td, \"d_out\": %td, \"dtype\": \"float32\", "
                 "\"device\": \"cpu\", \"apply_b_dec_to_input\": false, \"normalize_activations\": \"none\", "
                 "\"reshape_activations\": \"none\", \"metadata\": {\"sae_lens_version\": \"6.0.0\", "
                 "\"written_by\": \"mechlens\", \"hook_name\": \"%s\", \"hook_name_out\": \"%s\", "
                 "\"hook_head_index\": null, \"model_name\": \"%s\"}}\n",
                 architecture.c_str(), d, s.d_sae, d, hook_in.c_str(), hook_out.c_str(), model.c_str());
    if (std::fclose(f) != 0) throw usage_error(concat("cannot write ", (dir / "cfg.json").string()));
}

int run_transcoder(arguments& args) {
    const auto layer = parse_number<mechlens::index_t>(args.require("layer"), "--layer");
    const std::string architecture = args.get("architecture").value_or("standard");
    const std::filesystem::path out = args.require("out");
    mechlens::sae_trainer_options o;
    o.d_sae = parse_number<mechlens::index_t>(args.require("d-sae"), "--d-sae");
    const auto arch = mechlens::parse_sae_architecture(architecture);
    if (!arch || (*arch != mechlens::sae_architecture::standard && *arch != mechlens::sae_architecture::jumprelu))
        throw usage_error(concat("--architecture '", architecture, "' for a transcoder: standard or jumprelu"));
    o.sae.architecture = *arch;
    o.sae.apply_b_dec_to_input = false;
    o.skip = args.flag("skip");
    if (const auto v = args.get("l1")) {
        o.l1_coefficient = parse_double(*v, "--l1");
        o.l0_coefficient = o.l1_coefficient;
    }
    if (const auto v = args.get("lr")) o.lr = parse_double(*v, "--lr");
    o.batch_size = parse_number<mechlens::index_t>(args.get("batch").value_or("4096"), "--batch");
    o.tokens_total = parse_number<std::int64_t>(args.get("tokens-total").value_or("1000000"), "--tokens-total");
    o.seed = parse_number<std::uint64_t>(args.get("seed").value_or("0"), "--seed");
    if (o.d_sae <= 0) throw usage_error("--d-sae must be positive");
    if (o.batch_size <= 0) throw usage_error("--batch must be positive");
    if (o.tokens_total < o.batch_size)
        throw usage_error(concat("--tokens-total ", std::to_string(o.tokens_total), " is less than one --batch (",
                                 std::to_string(o.batch_size), ")"));
    if (!(o.lr > 0)) throw usage_error("--lr must be positive");
    if (layer < 0) throw usage_error("--layer must be >= 0");
    // SAELens's MLP transcoder pair: the MLP's input (after its norm) and the MLP's output.
    const std::string hook_in = concat("blocks.", std::to_string(layer), ".ln2.hook_normalized");
    const std::string hook_out = concat("blocks.", std::to_string(layer), ".hook_mlp_out");
    const std::filesystem::path scratch = out / "harvest.tmp";
    harvest_from_model(args, {hook_in, hook_out}, o.tokens_total, o.seed, scratch);
    mechlens::harvest_batches data(scratch, hook_in, hook_out);
    const std::string model = mechlens::read_harvest_manifest(scratch).model;
    mechlens::sae_trainer trainer(o, data.width());
    training_line line("transcoder train");
    try {
        trainer.train(data, std::ref(line));
    } catch (...) {
        line.finish();
        throw;
    }
    line.finish();
    write_transcoder_folder(out, trainer.weights(), o.sae.architecture == mechlens::sae_architecture::jumprelu, hook_in,
                            hook_out, model);
    // The same transcoder as circuit-tracer's per-layer file, which --transcoder OUT --layer L splices in.
    mechlens::write_circuit_tracer_transcoder(mechlens::circuit_tracer_layer_file(out, layer), trainer.weights(),
                                              mechlens::transcoder_options(o.sae.architecture));
    std::filesystem::remove_all(scratch);
    std::printf("%s: %s%s transcoder (%td -> %td latents -> %td) trained on %lld tokens, %s -> %s\n",
                out.string().c_str(), architecture.c_str(), o.skip ? " skip" : "", data.width(), o.d_sae, data.width(),
                static_cast<long long>(trainer.steps_done() * o.batch_size), hook_in.c_str(), hook_out.c_str());
    return 0;
}

}  // namespace sae_train_impl

const subcommand sae_train_subcommand{
    "train",
    "(--activations DIR [--hook NAME] | --model PATH --hook NAME [--text FILE]... [--context 128])\n"
    "--architecture standard|topk|jumprelu|batchtopk --d-sae N [--k K] [--l1 C] [--lr 3e-4] [--batch 4096]\n"
    "[--tokens-total 1000000] [--seed 0] [--lr-warm-up-steps 0] [--lr-decay-steps 0] [--l1-warm-up-steps 0]\n"
    "[--jumprelu-sparsity step|tanh] [--tanh-scale 4] [--pre-act-loss C]\n"
    "[--normalize none|expected_average_only_in|constant_norm_rescale] [--norm-estimate-batches 1000]\n"
    "[--checkpoint-every TOKENS] --out DIR\n"
    "trains an SAE with SAELens's training semantics on harvested activations (mechlens harvest) or on activations\n"
    "harvested from --model first (text, or stories sampled from the model); writes DIR/cfg.json and\n"
    "DIR/sae_weights.safetensors (a SAELens folder), checkpoints in DIR/checkpoints/ (docs/SAE.md).\n"
    "--l1 is the L1 coefficient (standard) or the L0/tanh coefficient (jumprelu), warmed up over --l1-warm-up-steps.\n"
    "jumprelu: --jumprelu-sparsity step is the L0 penalty through the straight-through estimator, tanh penalizes\n"
    "tanh(--tanh-scale * acts * ||W_dec row||); --pre-act-loss C adds C * relu(threshold - pre) * ||W_dec row|| on\n"
    "dead latents. --normalize expected_average_only_in scales inputs by sqrt(d_in) / mean ||x|| (estimated over\n"
    "--norm-estimate-batches batches, folded into the saved weights); constant_norm_rescale scales each row to norm\n"
    "sqrt(d_in) inside the SAE",
    sae_train_impl::run};

namespace sae_train_impl {

/// The subcommands of `mechlens transcoder`.
const subcommand transcoder_subcommands[] = {
    {"train",
     "--model PATH --layer L [--text FILE]... [--context 128] [--architecture standard|jumprelu] --d-sae N [--skip]\n"
     "[--l1 C] [--lr 3e-4] [--batch 4096] [--tokens-total 1000000] [--seed 0] --out DIR\n"
     "trains a transcoder from blocks.L.ln2.hook_normalized to blocks.L.hook_mlp_out (harvested from the model\n"
     "first; --skip adds an affine skip W_skip); writes DIR/cfg.json and DIR/sae_weights.safetensors (SAELens's\n"
     "transcoder layout, W_skip as (d_out, d_in))",
     run_transcoder},
};

}  // namespace sae_train_impl

const command transcoder_command{"transcoder", "SUBCOMMAND [options]: transcoders in place of an MLP", nullptr,
                                 sae_train_impl::transcoder_subcommands};

}  // namespace mechlens_cli
