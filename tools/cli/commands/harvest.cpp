// `mechlens harvest`: activations at hook sites over a token stream (text files, or stories sampled from the model),
// written as sharded safetensors with a manifest; run again on the same --out to resume (sae/harvest.hpp).

#include <mechlens/mechlens.hpp>

#include <chrono>
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
namespace harvest_impl {

/// "1:02:03" or "2:03".
std::string clock_time(double seconds) {
    const auto total = static_cast<long long>(seconds + 0.5);
    char text[32];
    if (total >= 3600)
        std::snprintf(text, sizeof text, "%lld:%02lld:%02lld", total / 3600, total / 60 % 60, total % 60);
    else
        std::snprintf(text, sizeof text, "%lld:%02lld", total / 60, total % 60);
    return text;
}

/// The progress line, rewritten in place on stderr at most ten times a second (and always at the end).
class progress_line {
public:
    void operator()(const mechlens::harvest_progress& p) {
        const auto now = std::chrono::steady_clock::now();
        const bool last = p.tokens_done >= p.tokens_total;
        if (!last && printed_ && now - last_print_ < std::chrono::milliseconds(100)) return;
        last_print_ = now;
        printed_ = true;
        std::fprintf(stderr, "\rharvest: %lld / %lld tokens (%.1f%%)  %.0f tok/s  ETA %s  %zu shard%s   ",
                     static_cast<long long>(p.tokens_done), static_cast<long long>(p.tokens_total),
                     100.0 * static_cast<double>(p.tokens_done) / static_cast<double>(p.tokens_total),
                     p.tokens_per_second, clock_time(p.eta_seconds).c_str(), p.shards, p.shards == 1 ? "" : "s");
        std::fflush(stderr);
    }
    /// Ends the line when one was printed.
    void finish() const {
        if (printed_) std::fputc('\n', stderr);
    }

private:
    std::chrono::steady_clock::time_point last_print_{};
    bool printed_ = false;
};

int run(arguments& args) {
    const model_options model_opts = read_model_options(args);
    const std::vector<std::string> hooks = args.all("hook");
    const std::vector<std::string> texts = args.all("text");
    const auto tokenizer_path = args.get("tokenizer");
    const auto tokens_total = parse_number<std::int64_t>(args.require("tokens-total"), "--tokens-total");
    const auto context = parse_number<mechlens::index_t>(args.require("context"), "--context");
    const std::filesystem::path out = args.require("out");
    const auto shard_rows = parse_number<mechlens::index_t>(args.get("shard-rows").value_or("65536"), "--shard-rows");
    const auto batch = parse_number<mechlens::index_t>(args.get("batch").value_or("8"), "--batch");
    const bool shuffle = args.flag("shuffle");
    const auto seed = parse_number<std::uint64_t>(args.get("seed").value_or("0"), "--seed");
    const auto bos_text = args.get("bos");
    const auto story_length =
        parse_number<mechlens::index_t>(args.get("story-length").value_or("256"), "--story-length");
    const auto stop_after = parse_number<std::uint64_t>(args.get("stop-after-shards").value_or("0"), "--stop-after-shards");
    args.reject_unknown();
    if (hooks.empty()) throw usage_error("give at least one --hook NAME");
    if (context <= 0) throw usage_error("--context must be positive");
    if (tokens_total < context)
        throw usage_error(concat("--tokens-total ", std::to_string(tokens_total), " is less than one context (--context ",
                                 std::to_string(context), ")"));
    if (shard_rows <= 0 || batch <= 0 || story_length <= 0)
        throw usage_error("--shard-rows, --batch and --story-length must be positive");
    for (const std::string& t : texts)
        if (!std::filesystem::is_regular_file(t)) throw usage_error(concat("text file ", t, " does not exist"));

    const mechlens::transformer model = open_model(model_opts);
    const mechlens::model_config& c = model.config();
    mechlens::harvest_options options;
    for (const std::string& h : hooks) options.sites.push_back(mechlens::parse_harvest_site(h, c));
    if (context > c.n_ctx)
        throw usage_error(concat("--context ", std::to_string(context), " exceeds the model's n_ctx ",
                                 std::to_string(c.n_ctx)));

    // Text needs the tokenizer; sampled stories only its BOS and EOS (or --bos for a model without one).
    std::optional<text_tokenizer> tokenizer = texts.empty() ? optional_tokenizer(model_opts.path, tokenizer_path)
                                                            : resolve_tokenizer(model_opts.path, tokenizer_path);
    std::int32_t bos = tokenizer ? tokenizer->bos_id() : -1;
    if (bos_text) bos = parse_number<std::int32_t>(*bos_text, "--bos");
    if (bos >= c.d_vocab) throw usage_error(concat("--bos ", std::to_string(bos), " is outside the vocabulary"));
    mechlens::story_options story;
    story.seed = seed;
    story.max_length = story_length;
    const std::unique_ptr<mechlens::document_source> source = open_documents(
        model, texts, tokenizer, bos, story, "the model has no tokenizer: give --bos ID to sample stories from it, or --text");

    options.context = context;
    options.tokens_total = tokens_total;
    options.shard_rows = shard_rows;
    options.batch_contexts = batch;
    options.shuffle = shuffle;
    options.seed = seed;
    options.bos = bos;
    options.model = model_opts.path.filename().string();
    options.stop_after_shards = stop_after;
    progress_line line;
    mechlens::harvest_result result;
    try {
        result = mechlens::harvest(model, *source, out, options, std::ref(line));
    } catch (...) {
        line.finish();
        throw;
    }
    line.finish();
    const mechlens::harvest_manifest& m = result.manifest;
    std::printf("%s: %lld rows of %zu site%s in %zu shard%s (%s)\n", out.string().c_str(),
                static_cast<long long>(m.rows()), m.sites.size(), m.sites.size() == 1 ? "" : "s", m.shards.size(),
                m.shards.size() == 1 ? "" : "s", m.complete ? "complete" : "interrupted: run again to resume");
    for (const mechlens::harvest_site_record& s : m.sites)
        std::printf("  %s%s (rows, %td) in %s/\n", s.hook_name.c_str(),
                    s.head >= 0 ? concat(":head=", std::to_string(s.head)).c_str() : "", s.width, s.directory.c_str());
    std::fprintf(stderr, "%s%lld tokens in %.1f s (%.0f tok/s)%s\n", result.resumed ? "resumed: " : "",
                 static_cast<long long>(result.tokens_this_run), result.seconds,
                 result.seconds > 0.0 ? static_cast<double>(result.tokens_this_run) / result.seconds : 0.0,
                 result.source_ended ? "; the text ran out before --tokens-total" : "");
    return 0;
}

}  // namespace harvest_impl

const command harvest_command{
    "harvest",
    "--model PATH --hook NAME [--hook NAME]... [--text FILE]... --tokens-total N --context T --out DIR\n"
    "[--shard-rows 65536] [--batch 8] [--shuffle] [--seed 0] [--tokenizer PATH] [--bos ID] [--story-length 256]\n"
    "[--stop-after-shards K] (stop early, as an interruption would)\n"
    "activations at hook sites (NAME or NAME:head=H), one float32 row per token, in DIR/<site>/shard_NNNNN.safetensors\n"
    "with DIR/manifest.json; documents end at <|endoftext|> lines; without --text, stories sampled from the model\n"
    "(temperature 1, --seed); the same command on the same DIR resumes an interrupted harvest (docs/HARVEST.md)",
    harvest_impl::run};

}  // namespace mechlens_cli
