// `mechlens sae SUBCOMMAND`: sparse autoencoders in SAELens folders. `eval` splices one in at its hook and measures
// it (sae/evaluate.hpp); `dashboard` writes feature dashboards as one HTML page (sae/dashboard.hpp). A subcommand is
// one row of the table at the end of this file.

#include <mechlens/mechlens.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"
#include "../documents.hpp"

namespace mechlens_cli {
namespace sae_impl {

/// The progress line of a long run, rewritten in place on stderr at most ten times a second (and at the end).
class progress_line {
public:
    explicit progress_line(const char* what) : what_(what) {}
    void operator()(const mechlens::sae_eval_progress& p) {
        const auto now = std::chrono::steady_clock::now();
        const bool last = p.tokens_done >= p.tokens_total;
        if (!last && printed_ && now - last_print_ < std::chrono::milliseconds(100)) return;
        last_print_ = now;
        printed_ = true;
        std::fprintf(stderr, "\r%s: %lld / %lld tokens (%.1f%%)  %.0f tok/s  ETA %.0f s   ", what_,
                     static_cast<long long>(p.tokens_done), static_cast<long long>(p.tokens_total),
                     100.0 * static_cast<double>(p.tokens_done) / static_cast<double>(p.tokens_total),
                     p.tokens_per_second, p.eta_seconds);
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

/// What `eval` and `dashboard` share: the model, the SAE and where it sits, and the token stream.
struct sae_run {
    model_options model_opts;
    std::filesystem::path sae_dir;
    std::optional<std::string> hook;
    std::vector<std::string> texts;
    std::optional<std::string> tokenizer_path;
    std::int64_t tokens_total = 0;
    mechlens::index_t context = 0;
    mechlens::index_t batch = 0;
    std::uint64_t seed = 0;
    mechlens::index_t story_length = 0;
    std::optional<std::string> bos;
    bool include_bos = false;
};

/// Reads the shared options (each subcommand reads its own, then calls reject_unknown).
sae_run read_sae_run(arguments& args, const char* default_tokens) {
    sae_run r;
    r.model_opts = read_model_options(args);
    r.sae_dir = args.require("sae");
    r.hook = args.get("hook");
    r.texts = args.all("text");
    r.tokenizer_path = args.get("tokenizer");
    r.tokens_total = parse_number<std::int64_t>(args.get("tokens-total").value_or(default_tokens), "--tokens-total");
    r.context = parse_number<mechlens::index_t>(args.get("context").value_or("128"), "--context");
    r.batch = parse_number<mechlens::index_t>(args.get("batch").value_or("8"), "--batch");
    r.seed = parse_number<std::uint64_t>(args.get("seed").value_or("0"), "--seed");
    r.story_length = parse_number<mechlens::index_t>(args.get("story-length").value_or("256"), "--story-length");
    r.bos = args.get("bos");
    r.include_bos = args.flag("include-bos");
    return r;
}

/// Everything opened: the model, the SAE, its host, the documents and how they are described.
struct opened_run {
    mechlens::transformer model;
    mechlens::saelens_sae sae;
    std::string hook;
    std::optional<text_tokenizer> tokenizer;
    std::unique_ptr<mechlens::document_source> documents;
    std::int32_t bos = -1;
    mechlens::sae_eval_options options;
    std::string source;  ///< One line: where the tokens come from.
};

opened_run open_run(const sae_run& r) {
    if (r.context < 2) throw usage_error("--context must be at least 2");
    if (r.tokens_total < r.context)
        throw usage_error(concat("--tokens-total ", std::to_string(r.tokens_total), " is less than one context (--context ",
                                 std::to_string(r.context), ")"));
    if (r.batch <= 0 || r.story_length <= 0) throw usage_error("--batch and --story-length must be positive");
    for (const std::string& t : r.texts)
        if (!std::filesystem::is_regular_file(t)) throw usage_error(concat("text file ", t, " does not exist"));
    if (!std::filesystem::is_directory(r.sae_dir))
        throw usage_error(concat("--sae ", r.sae_dir.string(), " is not a folder (expected SAELens's cfg.json and "
                                                               "sae_weights.safetensors)"));
    opened_run o{open_model(r.model_opts), mechlens::read_saelens_folder(r.sae_dir), {}, {}, {}, -1, {}, {}};
    const mechlens::model_config& c = o.model.config();
    if (o.sae.metadata.hook_head_index)
        throw usage_error("the SAE reads one head (hook_head_index); per-head SAEs are not supported here");
    o.hook = r.hook ? *r.hook : o.sae.metadata.hook_name;
    if (o.hook.empty()) throw usage_error("the SAE's cfg.json names no hook: give --hook NAME");
    if (r.context > c.n_ctx)
        throw usage_error(concat("--context ", std::to_string(r.context), " exceeds the model's n_ctx ", std::to_string(c.n_ctx)));

    o.tokenizer = r.texts.empty() ? optional_tokenizer(r.model_opts.path, r.tokenizer_path)
                                  : resolve_tokenizer(r.model_opts.path, r.tokenizer_path);
    o.bos = o.tokenizer ? o.tokenizer->bos_id() : -1;
    if (r.bos) o.bos = parse_number<std::int32_t>(*r.bos, "--bos");
    if (o.bos >= c.d_vocab) throw usage_error(concat("--bos ", std::to_string(o.bos), " is outside the vocabulary"));
    mechlens::story_options story;
    story.seed = r.seed;
    story.max_length = r.story_length;
    o.documents = open_documents(o.model, r.texts, o.tokenizer, o.bos, story,
                                 "the model has no tokenizer: give --bos ID to sample stories from it, or --text");
    o.source = o.documents->describe();
    if (r.texts.empty()) o.source = "stories " + o.source + " (no --text given)";
    o.options.context = r.context;
    o.options.tokens_total = r.tokens_total;
    o.options.batch_contexts = r.batch;
    if (!r.include_bos && o.bos >= 0) o.options.ignore_tokens = {o.bos};
    return o;
}

/// "standard, d_in 64, d_sae 128".
std::string describe_sae(const mechlens::saelens_sae& s) {
    return concat(std::string(mechlens::to_string(s.options.architecture)), ", d_in ", std::to_string(s.weights.d_in),
                  ", d_sae ", std::to_string(s.weights.d_sae));
}

/// A JSON number: finite values as %.10g, others as null.
std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char text[40];
    std::snprintf(text, sizeof text, "%.10g", v);
    return text;
}

int run_eval(arguments& args) {
    const sae_run r = read_sae_run(args, "8192");
    const bool json = args.flag("json");
    const double dense = parse_number<double>(args.get("dense-threshold").value_or("0.1"), "--dense-threshold");
    args.reject_unknown();
    if (!(dense >= 0.0 && dense <= 1.0)) throw usage_error("--dense-threshold must be in [0, 1]");
    opened_run o = open_run(r);
    o.options.dense_threshold = dense;
    mechlens::context_packer packer(*o.documents, o.options.context, o.bos);
    progress_line line("sae eval");
    mechlens::sae_eval_result e;
    try {
        e = mechlens::evaluate_sae(o.model, o.hook, o.sae.weights, o.sae.options, packer, o.options, std::ref(line));
    } catch (const std::invalid_argument& error) {
        line.finish();
        throw usage_error(error.what());
    }
    line.finish();
    const auto d_sae = static_cast<double>(o.sae.weights.d_sae);
    const std::string bos_note = o.options.ignore_tokens.empty() ? "" : "; BOS positions left out (--include-bos keeps them)";
    if (json) {
        std::printf("{\"sae\": %s, \"hook\": %s, \"contexts\": %lld, \"context\": %td, \"tokens\": %lld, "
                    "\"predictions\": %lld, \"l0\": %s, \"l1\": %s, \"mse\": %s, \"fvu\": %s, \"explained_variance\": %s, "
                    "\"cosine\": %s, \"ce_clean\": %s, \"ce_spliced\": %s, \"ce_ablated\": %s, \"ce_recovered\": %s, "
                    "\"dead_fraction\": %s, \"dense_fraction\": %s, \"dense_threshold\": %s}\n",
                    mechlens::detail::json_quote(r.sae_dir.string()).c_str(), mechlens::detail::json_quote(o.hook).c_str(),
                    static_cast<long long>(e.contexts), o.options.context, static_cast<long long>(e.tokens),
                    static_cast<long long>(e.predictions), json_number(e.l0).c_str(), json_number(e.l1).c_str(),
                    json_number(e.mse).c_str(), json_number(e.fvu).c_str(), json_number(e.explained_variance).c_str(),
                    json_number(e.cosine).c_str(), json_number(e.ce_clean).c_str(), json_number(e.ce_spliced).c_str(),
                    json_number(e.ce_ablated).c_str(), json_number(e.ce_recovered).c_str(),
                    json_number(e.dead_fraction).c_str(), json_number(e.dense_fraction).c_str(), json_number(dense).c_str());
    } else {
        std::printf("SAE %s at %s (%s)\n", r.sae_dir.string().c_str(), o.hook.c_str(), describe_sae(o.sae).c_str());
        std::printf("tokens: %lld counted in %lld contexts of %td, from %s%s\n", static_cast<long long>(e.tokens),
                    static_cast<long long>(e.contexts), o.options.context, o.source.c_str(), bos_note.c_str());
        std::printf("L0                 %10.4f   mean active latents per token\n", e.l0);
        std::printf("FVU                %10.4f   explained variance %.4f\n", e.fvu, e.explained_variance);
        std::printf("cosine             %10.4f   mean cos(x, x_hat)\n", e.cosine);
        std::printf("CE clean           %10.4f\n", e.ce_clean);
        std::printf("CE spliced         %10.4f   reconstruction in place of the activation\n", e.ce_spliced);
        std::printf("CE zero-ablated    %10.4f\n", e.ce_ablated);
        std::printf("CE recovered       %10.4f   (ablated - spliced) / (ablated - clean)\n", e.ce_recovered);
        std::printf("dead latents       %10.4f   %.0f of %.0f never active\n", e.dead_fraction, e.dead_fraction * d_sae, d_sae);
        std::printf("dense latents      %10.4f   %.0f of %.0f active on more than %.4g%% of tokens\n", e.dense_fraction,
                    e.dense_fraction * d_sae, d_sae, 100.0 * dense);
    }
    std::fprintf(stderr, "%lld tokens in %.1f s\n", static_cast<long long>(e.contexts * o.options.context), e.seconds);
    return 0;
}

/// "3,17,200" -> {3, 17, 200}.
std::vector<mechlens::index_t> parse_features(const std::string& text) {
    std::vector<mechlens::index_t> out;
    std::size_t begin = 0;
    while (begin <= text.size()) {
        const std::size_t comma = std::min(text.find(',', begin), text.size());
        out.push_back(parse_number<mechlens::index_t>(text.substr(begin, comma - begin), "--features"));
        begin = comma + 1;
    }
    return out;
}

int run_dashboard(arguments& args) {
    const sae_run r = read_sae_run(args, "8192");
    const std::string features_text = args.require("features");
    const std::filesystem::path out = args.require("out");
    const auto top_k = parse_number<mechlens::index_t>(args.get("top-k").value_or("10"), "--top-k");
    args.reject_unknown();
    const std::vector<mechlens::index_t> features = parse_features(features_text);
    if (top_k <= 0) throw usage_error("--top-k must be positive");
    opened_run o = open_run(r);
    for (const mechlens::index_t f : features)
        if (f < 0 || f >= o.sae.weights.d_sae)
            throw usage_error(concat("--features: ", std::to_string(f), " is outside the SAE's ",
                                     std::to_string(o.sae.weights.d_sae), " latents"));
    mechlens::feature_collector_options co;
    co.top_k = top_k;
    co.ignore_tokens = o.options.ignore_tokens;
    mechlens::context_packer packer(*o.documents, o.options.context, o.bos);
    progress_line line("sae dashboard");
    std::vector<mechlens::feature_summary> summaries;
    try {
        summaries = mechlens::collect_feature_activity(
            o.model, o.hook, o.sae.weights, o.sae.options,
            mechlens::context_supplier([&packer](std::span<std::int32_t> c) { return packer.next(c); }), o.options,
            features, co, std::ref(line));
    } catch (const std::invalid_argument& error) {
        line.finish();
        throw usage_error(error.what());
    }
    line.finish();
    const std::int64_t tokens = summaries.empty() ? 0 : summaries.front().tokens;
    const auto dashboards = mechlens::build_feature_dashboards(o.model, o.hook, o.sae.weights, std::move(summaries));
    mechlens::dashboard_page_info info;
    info.title = "SAE feature dashboards: " + r.sae_dir.filename().string();
    info.lines = {"model: " + r.model_opts.path.filename().string() + "; SAE " + r.sae_dir.string() + " at " + o.hook +
                      " (" + describe_sae(o.sae) + ")",
                  "tokens: " + std::to_string(tokens) + " counted, in contexts of " + std::to_string(o.options.context) +
                      ", from " + o.source + (o.options.ignore_tokens.empty() ? "" : "; BOS positions left out"),
                  "Logit weights: the decoder row through the final norm's gain and the unembedding (docs/SAE.md)."};
    const std::optional<text_tokenizer>& tokenizer = o.tokenizer;
    const std::string html = mechlens::feature_dashboard_html(dashboards, [&tokenizer](std::int32_t t) {
        if (!tokenizer) return "#" + std::to_string(t);
        return tokenizer->piece(-1, t);  // the piece as it reads inside a text (its leading space kept)
    }, info);
    std::ofstream file(out, std::ios::binary | std::ios::trunc);
    if (file) file.write(html.data(), static_cast<std::streamsize>(html.size()));
    if (file) file.close();
    if (!file) throw usage_error(concat(out.string(), ": cannot write the dashboard"));
    std::printf("wrote %s: dashboards of %zu feature%s over %lld tokens\n", out.string().c_str(), features.size(),
                features.size() == 1 ? "" : "s", static_cast<long long>(tokens));
    return 0;
}

/// What both subcommands take after their own options.
#define MECHLENS_SAE_SOURCE_USAGE                                                                          \
    "[--hook NAME] [--text FILE]... [--tokens-total 8192] [--context 128] [--batch 8] [--tokenizer PATH]\n" \
    "[--bos ID] [--seed 0] [--story-length 256] [--include-bos] (--hook defaults to cfg.json's hook_name)\n"

/// The subcommands of `mechlens sae`: one row each.
const subcommand sae_subcommands[] = {
    {"eval",
     "--model PATH --sae DIR [--dense-threshold 0.1] [--json]\n" MECHLENS_SAE_SOURCE_USAGE
     "splices the SAELens SAE in DIR at its hook and prints L0, FVU, cosine, CE clean/spliced/zero-ablated, CE\n"
     "recovered, dead and dense latent fractions; without --text, on stories sampled from the model; BOS positions\n"
     "left out unless --include-bos (docs/SAE.md)",
     run_eval},
    {"dashboard",
     "--model PATH --sae DIR --features 3,17,... --out FILE.html [--top-k 10]\n" MECHLENS_SAE_SOURCE_USAGE
     "one self-contained HTML page: per feature its top contexts, activation histogram, density and logit weights",
     run_dashboard},
    sae_train_subcommand,  // commands/sae_train.cpp
};

#undef MECHLENS_SAE_SOURCE_USAGE

}  // namespace sae_impl

const command sae_command{"sae", "SUBCOMMAND [options]: sparse autoencoders in SAELens folders", nullptr,
                          sae_impl::sae_subcommands};

}  // namespace mechlens_cli
