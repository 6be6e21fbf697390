#pragma once
/// @file
/// Harvesting activations for SAE training: a model runs over a packed token stream (harvest_source.hpp) in
/// batches of fixed-length contexts, and the rows of one or more hook sites, one row per token position (float32,
/// (tokens, width)), are streamed to sharded `.safetensors` files of bounded size. A manifest (`manifest.json`)
/// lists the shards and records where the token stream stands after the last one, so an interrupted harvest resumes
/// there and produces the same files as an uninterrupted run, bit for bit. docs/HARVEST.md has the details.
///
/// Memory is bounded: one shard's rows per site, plus one batch of activations in the capturing policy.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/detail/throughput.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/io/json.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/model/forward.hpp"
#include "mechlens/model/sampling.hpp"
#include "mechlens/sae/harvest_source.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One harvested site: a hook site, and for a per-head site (hook_q, hook_z, ...) either one head (SAELens's
/// `hook_head_index`: rows of d_head) or every head flattened head-major (rows of n_heads * d_head, as SAELens
/// flattens (batch, pos, head, d_head) when no head index is given).
struct harvest_site {
    site where;         ///< The hook site.
    index_t head = -1;  ///< The head kept, or -1 for all heads (and for sites without a head axis).
    friend bool operator==(const harvest_site&, const harvest_site&) = default;  ///< Same site and head.
};

/// `blocks.1.attn.hook_z` or, with one head, `blocks.1.attn.hook_z:head=3`.
inline std::string to_string(const harvest_site& s) {
    std::string out = to_string(s.where);
    if (s.head >= 0) {
        out += ":head=";
        out += std::to_string(s.head);
    }
    return out;
}

/// True for kinds with one row per token position: every site but attention scores and patterns.
constexpr bool is_harvestable(site_kind kind) noexcept { return detail::axes_of(kind).key < 0; }

/// Parses `NAME` or `NAME:head=H` for a model with config `c`; throws unknown_hook_error (with suggestions) for an
/// unknown name, std::invalid_argument for a site without one row per position, a head on a site without a head
/// axis, or a head out of range.
inline harvest_site parse_harvest_site(std::string_view spec, const model_config& c) {
    harvest_site out;
    const std::size_t colon = spec.find(':');
    out.where = site_from_name(spec.substr(0, colon), c);
    const std::string name = to_string(out.where);
    if (!is_harvestable(out.where.kind))
        throw std::invalid_argument(name + " has no fixed width per token (its last axis is the key positions); "
                                           "harvest takes sites with one row per position");
    if (colon == std::string_view::npos) return out;
    const std::string_view option = spec.substr(colon + 1);
    index_t head = -1;
    if (option.rfind("head=", 0) == 0 && option.size() > 5) {
        head = 0;
        for (const char ch : option.substr(5)) {
            if (ch < '0' || ch > '9' || head > 100000) {
                head = -1;
                break;
            }
            head = head * 10 + (ch - '0');
        }
    }
    if (head < 0)
        throw std::invalid_argument("expected NAME or NAME:head=H, got '" + std::string(spec) + "'");
    if (detail::axes_of(out.where.kind).head < 0) throw std::invalid_argument(name + " has no head axis");
    if (head >= detail::head_count(c, out.where.kind))
        throw std::invalid_argument(name + ": head " + std::to_string(head) + " is outside [0, " +
                                    std::to_string(detail::head_count(c, out.where.kind)) + ")");
    out.head = head;
    return out;
}

/// Floats per row of a harvested site: the site's width, times its head count when every head is kept.
inline index_t harvest_width(const harvest_site& s, const model_config& c) {
    const index_t width = site_width(c, s.where.kind);
    return detail::axes_of(s.where.kind).head >= 0 && s.head < 0 ? width * detail::head_count(c, s.where.kind) : width;
}

/// How harvest() runs.
struct harvest_options {
    std::vector<harvest_site> sites;    ///< What to harvest (at least one, no duplicates).
    index_t context = 128;              ///< Tokens per context (at most n_ctx).
    std::int64_t tokens_total = 0;      ///< Tokens to harvest, rounded down to whole contexts (at least one).
    index_t shard_rows = 65536;         ///< Rows per shard, rounded down to whole contexts (at least one context).
    index_t batch_contexts = 8;         ///< Contexts per forward pass.
    bool shuffle = false;               ///< Permute the rows inside each shard (same permutation for every site).
    std::uint64_t seed = 0;             ///< Seed of the shuffle (shard i's permutation depends on (seed, i) only).
    std::int32_t bos = 1;               ///< BOS of the packed contexts (-1: none).
    std::string model;                  ///< The model's name or path, recorded in the manifest.
    std::uint64_t stop_after_shards = 0;  ///< Return after writing this many shards (0: run to the end); an interruption.
};

/// One harvested site as the manifest records it.
struct harvest_site_record {
    std::string hook_name;  ///< TransformerLens name of the site.
    index_t head = -1;      ///< SAELens's hook_head_index, or -1.
    index_t width = 0;      ///< Floats per row.
    std::string directory;  ///< Folder of its shards, relative to the harvest directory.
};

/// One shard: the same rows at every site.
struct harvest_shard {
    index_t rows = 0;                ///< Rows in the shard.
    std::uint64_t first_context = 0; ///< Index of its first context in the packed stream.
};

/// The contents of `manifest.json`: the settings, the shards written, and where to resume.
struct harvest_manifest {
    std::string model;                         ///< The model's name or path.
    std::string source;                        ///< Where the tokens came from (document_source::describe).
    index_t context = 0;                       ///< Tokens per context.
    std::int64_t tokens_total = 0;             ///< Tokens asked for.
    index_t shard_rows = 0;                    ///< Rows per full shard (a multiple of context).
    index_t batch_contexts = 0;                ///< Contexts per forward pass.
    bool shuffle = false;                      ///< Rows permuted inside each shard.
    std::uint64_t seed = 0;                    ///< Seed of the permutation.
    std::int32_t bos = -1;                     ///< BOS of the packed contexts (-1: none).
    std::vector<harvest_site_record> sites;    ///< The harvested sites.
    std::vector<harvest_shard> shards;         ///< Shards written, in order.
    std::uint64_t contexts_done = 0;           ///< Contexts in the shards written.
    harvest_cursor resume;                     ///< Where the token stream continues after them.
    bool complete = false;                     ///< True when tokens_total was reached or the source ended.

    /// Rows in all shards.
    [[nodiscard]] std::int64_t rows() const noexcept {
        std::int64_t total = 0;
        for (const harvest_shard& s : shards) total += s.rows;
        return total;
    }
    /// The path of shard `shard` of site `site_index`, relative to the harvest directory.
    [[nodiscard]] std::filesystem::path shard_path(std::size_t site_index, std::size_t shard) const {
        std::string number = std::to_string(shard);
        if (number.size() < 5) number.insert(0, 5 - number.size(), '0');
        std::string name = "shard_";
        name += number;
        name += ".safetensors";
        return std::filesystem::path(sites.at(site_index).directory) / name;
    }
};

/// The manifest's file name inside a harvest directory.
inline constexpr std::string_view harvest_manifest_name = "manifest.json";

/// Writes `manifest.json` into `directory` atomically (a temporary file renamed over it), so an interruption
/// leaves the previous manifest or the new one, never half of one. Throws format_error naming the file on failure.
inline void write_harvest_manifest(const std::filesystem::path& directory, const harvest_manifest& m) {
    using detail::json_quote;
    std::string j = "{\n  \"format\": \"mechlens.harvest\",\n  \"version\": 1,\n";
    j += "  \"model\": " + json_quote(m.model) + ",\n";
    j += "  \"source\": " + json_quote(m.source) + ",\n";
    j += "  \"context\": " + std::to_string(m.context) + ",\n";
    j += "  \"tokens_total\": " + std::to_string(m.tokens_total) + ",\n";
    j += "  \"shard_rows\": " + std::to_string(m.shard_rows) + ",\n";
    j += "  \"batch_contexts\": " + std::to_string(m.batch_contexts) + ",\n";
    j += std::string("  \"shuffle\": ") + (m.shuffle ? "true" : "false") + ",\n";
    j += "  \"seed\": " + std::to_string(m.seed) + ",\n";
    j += "  \"bos\": " + std::to_string(m.bos) + ",\n";
    j += "  \"sites\": [";
    for (std::size_t i = 0; i < m.sites.size(); ++i) {
        const harvest_site_record& s = m.sites[i];
        j += i == 0 ? "\n    " : ",\n    ";
        j += "{\"hook_name\": " + json_quote(s.hook_name) + ", \"hook_head_index\": " +
             (s.head < 0 ? std::string("null") : std::to_string(s.head)) + ", \"width\": " + std::to_string(s.width) +
             ", \"directory\": " + json_quote(s.directory) + "}";
    }
    j += "\n  ],\n  \"shards\": [";
    for (std::size_t i = 0; i < m.shards.size(); ++i) {
        j += i == 0 ? "\n    " : ",\n    ";
        j += "{\"rows\": " + std::to_string(m.shards[i].rows) +
             ", \"first_context\": " + std::to_string(m.shards[i].first_context) + "}";
    }
    j += m.shards.empty() ? "],\n" : "\n  ],\n";
    j += "  \"rows\": " + std::to_string(m.rows()) + ",\n";
    j += "  \"contexts_done\": " + std::to_string(m.contexts_done) + ",\n";
    j += "  \"resume\": {\"document\": " + std::to_string(m.resume.document) +
         ", \"offset\": " + std::to_string(m.resume.offset) + "},\n";
    j += std::string("  \"complete\": ") + (m.complete ? "true" : "false") + "\n}\n";
    const std::filesystem::path target = directory / harvest_manifest_name;
    const std::filesystem::path temporary = directory / "manifest.json.tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) detail::format_fail(temporary.string(), "cannot open for writing");
        out.write(j.data(), static_cast<std::streamsize>(j.size()));
        out.close();
        if (!out) detail::format_fail(temporary.string(), "write failed");
    }
    std::error_code error;
    std::filesystem::rename(temporary, target, error);
    if (error) detail::format_fail(target.string(), "cannot replace: " + error.message());
}

/// Reads `manifest.json` from a harvest directory; throws format_error naming the file and the field when it is
/// missing, not JSON or not a harvest manifest.
inline harvest_manifest read_harvest_manifest(const std::filesystem::path& directory) {
    const std::filesystem::path path = directory / harvest_manifest_name;
    const json_value root = read_json_file(path);
    if (!root.is_object()) detail::format_fail(path.string(), "the manifest is not a JSON object");
    if (root.at("format").as_string() != "mechlens.harvest")
        detail::format_fail(path.string(), "not a mechlens harvest manifest (format is not \"mechlens.harvest\")");
    if (root.at("version").as_int64() != 1)
        detail::format_fail(path.string(), "unsupported harvest manifest version " +
                                               std::to_string(root.at("version").as_int64()));
    harvest_manifest m;
    m.model = root.at("model").as_string();
    m.source = root.at("source").as_string();
    m.context = static_cast<index_t>(root.at("context").as_int64());
    m.tokens_total = root.at("tokens_total").as_int64();
    m.shard_rows = static_cast<index_t>(root.at("shard_rows").as_int64());
    m.batch_contexts = static_cast<index_t>(root.at("batch_contexts").as_int64());
    m.shuffle = root.at("shuffle").as_bool();
    m.seed = root.at("seed").as_uint64();
    m.bos = static_cast<std::int32_t>(root.at("bos").as_int64());
    if (m.context <= 0 || m.shard_rows <= 0 || m.shard_rows % m.context != 0)
        detail::format_fail(path.string(), "context and shard_rows must be positive, shard_rows a multiple of context");
    for (const json_value& s : root.at("sites").items()) {
        harvest_site_record r;
        r.hook_name = s.at("hook_name").as_string();
        const json_value& head = s.at("hook_head_index");
        r.head = head.is_null() ? -1 : static_cast<index_t>(head.as_int64());
        r.width = static_cast<index_t>(s.at("width").as_int64());
        r.directory = s.at("directory").as_string();
        if (r.width <= 0 || r.directory.empty() || r.directory.find("..") != std::string::npos ||
            r.directory.find('/') != std::string::npos || r.directory.find('\\') != std::string::npos)
            detail::format_fail(path.string(), "site '" + r.hook_name.substr(0, 200) + "' has a bad width or directory");
        m.sites.push_back(std::move(r));
    }
    if (m.sites.empty()) detail::format_fail(path.string(), "the manifest lists no sites");
    for (const json_value& s : root.at("shards").items()) {
        harvest_shard shard;
        shard.rows = static_cast<index_t>(s.at("rows").as_int64());
        shard.first_context = s.at("first_context").as_uint64();
        if (shard.rows <= 0 || shard.rows > m.shard_rows)
            detail::format_fail(path.string(), "a shard has " + std::to_string(shard.rows) + " rows");
        m.shards.push_back(shard);
    }
    m.contexts_done = root.at("contexts_done").as_uint64();
    m.resume.document = root.at("resume").at("document").as_uint64();
    m.resume.offset = root.at("resume").at("offset").as_uint64();
    m.complete = root.at("complete").as_bool();
    return m;
}

/// What harvest() reports after each batch.
struct harvest_progress {
    std::int64_t tokens_done = 0;    ///< Tokens harvested, earlier runs of a resumed harvest included.
    std::int64_t tokens_total = 0;   ///< Tokens asked for (whole contexts).
    double tokens_per_second = 0.0;  ///< Throughput of this run so far.
    double eta_seconds = 0.0;        ///< Time left at that throughput.
    std::size_t shards = 0;          ///< Shards written so far.
};

/// What harvest() did.
struct harvest_result {
    harvest_manifest manifest;         ///< The manifest as written last.
    bool resumed = false;              ///< True when an earlier run's manifest was found and continued.
    bool source_ended = false;         ///< True when the documents ran out before tokens_total.
    std::int64_t tokens_this_run = 0;  ///< Tokens run through the model by this call.
    double seconds = 0.0;              ///< Wall time of this call.
    index_t peak_buffered_rows = 0;    ///< Most rows held at once: shard buffer plus the batch being copied.
};

namespace detail {

/// The rows of every harvested site for one batch, filled by harvest_hooks: (batch * pos, width) each.
struct harvest_batch {
    std::vector<harvest_site> sites;          ///< What to capture.
    std::vector<index_t> widths;              ///< Floats per row of each site.
    std::vector<std::vector<float>> rows;     ///< (batch * pos, width) per site.
    tensor<float, 3> logits;                  ///< (batch, pos, d_vocab_out), when a site comes after the blocks.
};

/// Copies the wanted heads of a (batch, pos, ...) activation into dense (batch * pos, width) rows.
template <std::size_t R>
void copy_harvest_rows(const tensor_view<float, R>& x, index_t head, std::vector<float>& out) {
    const index_t batch = x.extent(0), positions = x.extent(1);
    if constexpr (R == 3) {
        const index_t width = x.extent(2);
        out.resize(static_cast<std::size_t>(batch * positions * width));
        if (x.is_contiguous()) {
            std::memcpy(out.data(), x.data(), out.size() * sizeof(float));
            return;
        }
        float* o = out.data();
        for (index_t b = 0; b < batch; ++b)
            for (index_t p = 0; p < positions; ++p)
                for (index_t i = 0; i < width; ++i) *o++ = x(b, p, i);
    } else {
        const index_t heads = x.extent(2), width = x.extent(3);
        const index_t first = head < 0 ? 0 : head, last = head < 0 ? heads : head + 1;
        out.resize(static_cast<std::size_t>(batch * positions * (last - first) * width));
        if (head < 0 && x.is_contiguous()) {
            std::memcpy(out.data(), x.data(), out.size() * sizeof(float));
            return;
        }
        float* o = out.data();
        for (index_t b = 0; b < batch; ++b)
            for (index_t p = 0; p < positions; ++p)
                for (index_t h = first; h < last; ++h)
                    for (index_t i = 0; i < width; ++i) *o++ = x(b, p, h, i);
    }
}

/// The capturing policy: hands every harvested site's rows to a harvest_batch. `Kinds` is what the forward pass
/// fires; sites outside the batch's list are ignored at run time.
template <kind_set Kinds>
struct harvest_hooks {
    harvest_batch* batch = nullptr;  ///< Where rows go.

    /// The compile-time half of the filter.
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Copies the rows of each harvested site that `s` is.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> x, const hook_context&) {
        for (std::size_t i = 0; i < batch->sites.size(); ++i)
            if (batch->sites[i].where == s) copy_harvest_rows(x, batch->sites[i].head, batch->rows[i]);
    }
};

/// The kinds the forward pass produces at no extra cost (views of buffers it computes anyway).
inline constexpr kind_set free_kinds = [] {
    kind_set set;
    for (const site_traits& row : site_traits_table)
        if (row.computed == site_computation::always) set = set | kind_set::of({row.kind});
    return set;
}();

/// Runs one batch through as much of the model as the sites need: the embeddings and the blocks up to the last
/// harvested layer, or the whole forward pass (every position's logits) when a site comes after the blocks.
template <kind_set Kinds>
void harvest_forward(const transformer& model, tensor_view<const std::int32_t, 2> tokens, harvest_batch& batch,
                     workspace& ws, kv_cache& cache) {
    harvest_hooks<Kinds> hooks{&batch};
    bool after_blocks = false;
    index_t last_layer = -1;
    for (const harvest_site& s : batch.sites) {
        after_blocks = after_blocks || site_traits_of(s.where.kind).scope == site_scope::after_blocks;
        last_layer = std::max(last_layer, s.where.layer);
    }
    if (after_blocks) {
        const extents<3> shape{tokens.extent(0), tokens.extent(1), model.config().vocab_out()};
        if (batch.logits.shape() != shape) batch.logits = tensor<float, 3>(shape);
        forward(model, tokens, batch.logits.view(), ws, hooks);
        return;
    }
    const forward_span span{tokens.extent(0), tokens.extent(1), 0};
    cache.reset(model.config(), span.batch, span.positions);
    embed_span(model, span, tokens, ws, hooks);
    run_blocks(model, span, 0, last_layer + 1, cache, ws, hooks);
}

/// harvest_forward with the narrowest policy the sites allow: only the free kinds (no unfused norm steps, no
/// masked scores), else every kind but attn.hook_result, else every kind.
inline void harvest_batch_forward(const transformer& model, tensor_view<const std::int32_t, 2> tokens,
                                  harvest_batch& batch, workspace& ws, kv_cache& cache) {
    kind_set needed;
    for (const harvest_site& s : batch.sites) needed = needed | kind_set::of({s.where.kind});
    if (needed.contains(site_kind::attn_result))
        harvest_forward<kind_set::all()>(model, tokens, batch, ws, cache);
    else if ((needed - free_kinds).bits == 0)
        harvest_forward<free_kinds>(model, tokens, batch, ws, cache);
    else
        harvest_forward<kind_set::all_but_result()>(model, tokens, batch, ws, cache);
}

/// The permutation of shard `shard`'s `rows` rows: Fisher-Yates driven by splitmix64 seeded from (seed, shard).
inline std::vector<index_t> shard_permutation(std::uint64_t seed, std::size_t shard, index_t rows) {
    std::vector<index_t> order(static_cast<std::size_t>(rows));
    for (index_t i = 0; i < rows; ++i) order[static_cast<std::size_t>(i)] = i;
    random_generator rng(seed ^ (0xd1b54a32d192ed03ULL * (static_cast<std::uint64_t>(shard) + 1)));
    for (std::size_t i = order.size(); i > 1; --i) {
        const std::size_t j = static_cast<std::size_t>(rng.next() % i);
        std::swap(order[i - 1], order[j]);
    }
    return order;
}

/// "blocks.1.attn.hook_z" or "blocks.1.attn.hook_z.head3": a site's shard folder.
inline std::string harvest_directory_name(const harvest_site& s) {
    std::string out = to_string(s.where);
    if (s.head >= 0) {
        out += ".head";
        out += std::to_string(s.head);
    }
    return out;
}

/// Throws std::invalid_argument naming the first setting in which an existing manifest differs from a new run's.
inline void check_resumable(const harvest_manifest& old, const harvest_manifest& now,
                            const std::filesystem::path& directory) {
    auto differ = [&](const std::string& what, const std::string& a, const std::string& b) {
        throw std::invalid_argument(directory.string() + " holds a harvest with another " + what + " (" + a +
                                    ", now " + b + "); resume with the same settings or use a new directory");
    };
    if (old.model != now.model) differ("model", old.model, now.model);
    if (old.source != now.source) differ("source", old.source, now.source);
    if (old.context != now.context) differ("context length", std::to_string(old.context), std::to_string(now.context));
    if (old.shard_rows != now.shard_rows)
        differ("shard size", std::to_string(old.shard_rows), std::to_string(now.shard_rows));
    if (old.shuffle != now.shuffle || (old.shuffle && old.seed != now.seed))
        differ("shuffle setting", old.shuffle ? "seed " + std::to_string(old.seed) : "off",
               now.shuffle ? "seed " + std::to_string(now.seed) : "off");
    if (old.bos != now.bos) differ("BOS", std::to_string(old.bos), std::to_string(now.bos));
    std::string a, b;
    for (const auto& s : old.sites) a += s.hook_name + (s.head >= 0 ? ":head=" + std::to_string(s.head) : "") + " ";
    for (const auto& s : now.sites) b += s.hook_name + (s.head >= 0 ? ":head=" + std::to_string(s.head) : "") + " ";
    if (a != b) differ("list of sites", a, b);
}

}  // namespace detail

/// Harvests `options.sites` of `model` over the documents of `source` into `directory` (created when needed):
/// contexts of `options.context` tokens packed SAELens's way, `options.batch_contexts` per forward pass, rows
/// written in shards `<site>/shard_NNNNN.safetensors` (one F32 tensor `activations` (rows, width) each) listed in
/// `manifest.json`. When the directory already holds a manifest, the harvest resumes after its last shard (the
/// settings must match; tokens_total may grow). Calls `progress` after every batch. Throws std::invalid_argument
/// for bad options, format_error for an unwritable directory or a bad manifest.
inline harvest_result harvest(const transformer& model, document_source& source, const std::filesystem::path& directory,
                              const harvest_options& options,
                              const std::function<void(const harvest_progress&)>& progress = {}) {
    const model_config& c = model.config();
    const auto start_time = std::chrono::steady_clock::now();
    if (options.sites.empty()) throw std::invalid_argument("harvest: no sites to harvest");
    if (options.context <= 0 || options.context > c.n_ctx)
        throw std::invalid_argument("harvest: the context length " + std::to_string(options.context) +
                                    " is outside [1, n_ctx = " + std::to_string(c.n_ctx) + "]");
    if (options.tokens_total < options.context)
        throw std::invalid_argument("harvest: tokens_total " + std::to_string(options.tokens_total) +
                                    " is less than one context of " + std::to_string(options.context) + " tokens");
    if (options.batch_contexts <= 0) throw std::invalid_argument("harvest: batch_contexts must be positive");
    if (options.shard_rows <= 0) throw std::invalid_argument("harvest: shard_rows must be positive");
    if (options.bos >= c.d_vocab)
        throw std::invalid_argument("harvest: BOS " + std::to_string(options.bos) + " is outside the vocabulary");
    for (std::size_t i = 0; i < options.sites.size(); ++i) {
        const harvest_site& s = options.sites[i];
        if (!is_harvestable(s.where.kind) || !has_site_kind(c, s.where.kind) || s.where.layer >= c.n_layers ||
            s.where.extension >= 0)
            throw std::invalid_argument("harvest: " + to_string(s) + " cannot be harvested from this model");
        if (std::find(options.sites.begin(), options.sites.begin() + static_cast<std::ptrdiff_t>(i), s) !=
            options.sites.begin() + static_cast<std::ptrdiff_t>(i))
            throw std::invalid_argument("harvest: " + to_string(s) + " is listed twice");
    }
    const index_t T = options.context;
    const index_t contexts_per_shard = std::max<index_t>(1, options.shard_rows / T);

    harvest_manifest m;
    m.model = options.model;
    m.source = source.describe();
    m.context = T;
    m.tokens_total = options.tokens_total;
    m.shard_rows = contexts_per_shard * T;
    m.batch_contexts = options.batch_contexts;
    m.shuffle = options.shuffle;
    m.seed = options.shuffle ? options.seed : 0;
    m.bos = options.bos;
    for (const harvest_site& s : options.sites)
        m.sites.push_back({to_string(s.where), s.head, harvest_width(s, c), detail::harvest_directory_name(s)});

    std::error_code error;
    std::filesystem::create_directories(directory, error);
    if (error || !std::filesystem::is_directory(directory))
        detail::format_fail(directory.string(), "cannot create the output directory" +
                                                    (error ? ": " + error.message() : std::string()));
    harvest_result result;
    if (std::filesystem::exists(directory / harvest_manifest_name)) {
        harvest_manifest old = read_harvest_manifest(directory);
        detail::check_resumable(old, m, directory);
        m.shards = std::move(old.shards);
        m.contexts_done = old.contexts_done;
        m.resume = old.resume;
        result.resumed = true;
    }
    for (const harvest_site_record& s : m.sites) {
        std::filesystem::create_directories(directory / s.directory, error);
        if (error) detail::format_fail((directory / s.directory).string(), "cannot create: " + error.message());
    }
    const auto contexts_total = static_cast<std::uint64_t>(options.tokens_total / T);
    m.complete = m.contexts_done >= contexts_total;
    write_harvest_manifest(directory, m);  // also proves the directory writable before any work
    result.manifest = m;
    if (m.complete) return result;

    context_packer packer(source, T, options.bos, m.resume);
    detail::harvest_batch batch;
    batch.sites = options.sites;
    batch.rows.resize(options.sites.size());
    for (const harvest_site& s : options.sites) batch.widths.push_back(harvest_width(s, c));
    std::vector<std::vector<float>> shard(options.sites.size());  // (buffered rows, width) per site
    for (std::size_t i = 0; i < shard.size(); ++i)
        shard[i].reserve(static_cast<std::size_t>(m.shard_rows * batch.widths[i]));
    index_t buffered = 0;  // rows in `shard`
    std::uint64_t buffered_first_context = m.contexts_done;
    std::size_t shards_this_run = 0;
    workspace ws;
    kv_cache cache;
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(options.batch_contexts * T));
    std::vector<harvest_cursor> cursors(static_cast<std::size_t>(options.batch_contexts));
    std::uint64_t contexts_seen = m.contexts_done;  // through the model, flushed or buffered

    auto flush = [&](harvest_cursor after) {
        const auto shard_index = m.shards.size();
        std::vector<index_t> order;
        if (options.shuffle) order = detail::shard_permutation(options.seed, shard_index, buffered);
        std::vector<float> permuted;
        for (std::size_t i = 0; i < shard.size(); ++i) {
            const index_t width = batch.widths[i];
            const float* data = shard[i].data();
            if (options.shuffle) {
                permuted.resize(shard[i].size());
                for (index_t r = 0; r < buffered; ++r)
                    std::memcpy(permuted.data() + r * width, shard[i].data() + order[static_cast<std::size_t>(r)] * width,
                                static_cast<std::size_t>(width) * sizeof(float));
                data = permuted.data();
            }
            write_safetensors(directory / m.shard_path(i, shard_index), {{"activations", {buffered, width}, data}},
                              {{"format", "mechlens.harvest"},
                               {"hook_name", m.sites[i].hook_name},
                               {"hook_head_index", m.sites[i].head < 0 ? "null" : std::to_string(m.sites[i].head)},
                               {"shard", std::to_string(shard_index)}});
            shard[i].clear();
        }
        m.shards.push_back({buffered, buffered_first_context});
        m.contexts_done += static_cast<std::uint64_t>(buffered / T);
        m.resume = after;
        buffered_first_context = m.contexts_done;
        buffered = 0;
        ++shards_this_run;
    };

    bool stopped = false;
    while (contexts_seen < contexts_total && !stopped) {
        const auto want = static_cast<index_t>(
            std::min<std::uint64_t>(static_cast<std::uint64_t>(options.batch_contexts), contexts_total - contexts_seen));
        index_t got = 0;
        while (got < want &&
               packer.next(std::span<std::int32_t>(tokens.data() + got * T, static_cast<std::size_t>(T))))
            cursors[static_cast<std::size_t>(got++)] = packer.cursor();
        if (got < want) result.source_ended = true;
        if (got == 0) break;
        detail::harvest_batch_forward(model, tensor_view<const std::int32_t, 2>(tokens.data(), {got, T}), batch, ws,
                                      cache);
        result.peak_buffered_rows = std::max(result.peak_buffered_rows, buffered + got * T);
        for (index_t j = 0; j < got; ++j) {
            for (std::size_t i = 0; i < shard.size(); ++i) {
                const auto first = static_cast<std::ptrdiff_t>(j * T * batch.widths[i]);
                const auto count = static_cast<std::ptrdiff_t>(T * batch.widths[i]);
                shard[i].insert(shard[i].end(), batch.rows[i].begin() + first, batch.rows[i].begin() + first + count);
            }
            buffered += T;
            ++contexts_seen;
            if (buffered == m.shard_rows) {
                flush(cursors[static_cast<std::size_t>(j)]);
                if (options.stop_after_shards > 0 && shards_this_run >= options.stop_after_shards) {
                    stopped = true;
                    break;
                }
                write_harvest_manifest(directory, m);
            }
        }
        result.tokens_this_run += got * T;
        if (progress) {
            const double seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
            harvest_progress p;
            p.tokens_done = static_cast<std::int64_t>(contexts_seen) * T;
            p.tokens_total = static_cast<std::int64_t>(contexts_total) * T;
            const detail::throughput_estimate rate =
                detail::estimate_throughput(result.tokens_this_run, p.tokens_total - p.tokens_done, seconds);
            p.tokens_per_second = rate.per_second;
            p.eta_seconds = rate.eta_seconds;
            p.shards = m.shards.size();
            progress(p);
        }
        if (result.source_ended) break;
    }
    if (!stopped) {
        if (buffered > 0) flush(packer.cursor());
        m.complete = true;
    }
    write_harvest_manifest(directory, m);
    result.manifest = m;
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
    return result;
}

MECHLENS_END_NAMESPACE
