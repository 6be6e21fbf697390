// Harvesting activations (sae/harvest.hpp): SAELens's packing of documents into contexts, rows equal to a caching
// forward pass bit for bit, shard boundaries, resuming, shuffling, bounded memory, the reader and the token sources.

#include <mechlens/mechlens.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_harvest {

namespace fs = std::filesystem;
using mechlens::index_t;

namespace {

/// Documents held in memory.
class vector_documents final : public mechlens::document_source {
public:
    explicit vector_documents(std::vector<std::vector<std::int32_t>> documents) : documents_(std::move(documents)) {}
    bool next(std::vector<std::int32_t>& tokens) override {
        if (next_ >= documents_.size()) return false;
        tokens = documents_[next_++];
        return true;
    }
    void skip(std::uint64_t documents) override {
        next_ = std::min<std::size_t>(documents_.size(), next_ + static_cast<std::size_t>(documents));
    }
    [[nodiscard]] std::string describe() const override { return "test documents"; }

private:
    std::vector<std::vector<std::int32_t>> documents_;
    std::size_t next_ = 0;
};

mechlens::model_config small_config() {
    mechlens::model_config c;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 48;
    c.d_vocab = 40;
    c.n_ctx = 32;
    return c;
}

const mechlens::transformer& small_model() {
    static const mechlens::transformer model(mechlens::random_model(small_config(), 7, 0.2f));
    return model;
}

/// `count` documents of varied lengths (0 to 30 tokens) over ids 2..39.
std::vector<std::vector<std::int32_t>> some_documents(int count, std::uint64_t seed = 3) {
    mechlens::random_generator rng(seed);
    std::vector<std::vector<std::int32_t>> out;
    for (int d = 0; d < count; ++d) {
        std::vector<std::int32_t> doc(static_cast<std::size_t>(rng.next() % 31));
        for (auto& t : doc) t = static_cast<std::int32_t>(2 + rng.next() % 38);
        out.push_back(doc);
    }
    return out;
}

fs::path fresh_dir(const std::string& name) {
    const fs::path dir = mechlens_test::scratch_dir() / "harvest" / name;
    fs::remove_all(dir);
    return dir;
}

std::vector<char> file_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Every row of one site, through the reader.
std::vector<float> read_all(const fs::path& dir, const std::string& hook = {}) {
    mechlens::harvest_reader reader(dir, hook);
    std::vector<float> all, batch;
    while (reader.next(batch, 13) > 0) all.insert(all.end(), batch.begin(), batch.end());
    return all;
}

/// The same rows from caching_hooks forward passes over the same contexts, batch by batch.
template <mechlens::kind_set Kinds = mechlens::kind_set::all_but_result()>
std::vector<float> cached_rows(const std::vector<std::vector<std::int32_t>>& documents, index_t context,
                               index_t contexts, index_t batch, const mechlens::harvest_site& s) {
    const auto& model = small_model();
    vector_documents source(documents);
    mechlens::context_packer packer(source, context, 1);
    std::vector<float> out;
    for (index_t done = 0; done < contexts;) {
        const index_t b = std::min(batch, contexts - done);
        std::vector<std::int32_t> tokens(static_cast<std::size_t>(b * context));
        for (index_t j = 0; j < b; ++j)
            REQUIRE(packer.next(std::span<std::int32_t>(tokens.data() + j * context, static_cast<std::size_t>(context))));
        mechlens::caching_hooks<Kinds> hooks;
        (void)mechlens::forward_logits(model, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {b, context}),
                                       hooks);
        const mechlens::cached_activation& a = hooks.cache().at(s.where);
        if (a.shape.size() == 3 || s.head < 0) {
            out.insert(out.end(), a.values.begin(), a.values.end());
        } else {
            const auto v = a.view<4>();
            for (index_t i = 0; i < v.extent(0); ++i)
                for (index_t p = 0; p < v.extent(1); ++p)
                    for (index_t k = 0; k < v.extent(3); ++k) out.push_back(v(i, p, s.head, k));
        }
        done += b;
    }
    return out;
}

mechlens::harvest_options options_for(std::vector<std::string> names, index_t context, std::int64_t tokens,
                                      index_t shard_rows, index_t batch) {
    mechlens::harvest_options o;
    for (const auto& n : names) o.sites.push_back(mechlens::parse_harvest_site(n, small_config()));
    o.context = context;
    o.tokens_total = tokens;
    o.shard_rows = shard_rows;
    o.batch_contexts = batch;
    o.model = "random";
    return o;
}

}  // namespace

TEST_CASE("harvest: contexts are packed as SAELens packs them (BOS first, BOS between documents)", "[harvest]") {
    vector_documents source({{5, 6, 7}, {8, 9}, {}, {10, 11, 12, 13, 14}, {1, 20}, {21}});
    mechlens::context_packer packer(source, 4, 1);
    std::vector<std::int32_t> c(4);
    const std::vector<std::vector<std::int32_t>> expected{
        {1, 5, 6, 7}, {1, 8, 9, 1}, {1, 10, 11, 12}, {1, 13, 14, 1}, {1, 20, 1, 21}};
    // The empty document is skipped; a document continuing in a new context gets that context's BOS; one starting
    // with BOS ({1, 20}) gets no separator of its own.
    for (std::size_t i = 0; i < 4; ++i) {
        REQUIRE(packer.next(c));
        CHECK(c == expected[i]);
    }
    const mechlens::harvest_cursor at = packer.cursor();
    CHECK(at.document == 4);  // {1, 20}, whose BOS ended the fourth context
    CHECK(at.offset == 1);
    REQUIRE(packer.next(c));
    CHECK(c == expected[4]);
    CHECK_FALSE(packer.next(c));  // the stream has ended

    // Resuming from a cursor gives the same contexts as reading on.
    vector_documents again({{5, 6, 7}, {8, 9}, {}, {10, 11, 12, 13, 14}, {1, 20}, {21}});
    mechlens::context_packer first(again, 4, 1);
    for (int i = 0; i < 2; ++i) REQUIRE(first.next(c));
    vector_documents third_source({{5, 6, 7}, {8, 9}, {}, {10, 11, 12, 13, 14}, {1, 20}, {21}});
    mechlens::context_packer resumed(third_source, 4, 1, first.cursor());
    for (std::size_t i = 2; i < 5; ++i) {
        REQUIRE(resumed.next(c));
        CHECK(c == expected[i]);
    }

    // Without BOS, documents are concatenated back to back.
    vector_documents plain({{5, 6, 7}, {8, 9}, {10}});
    mechlens::context_packer no_bos(plain, 3, -1);
    c.resize(3);
    REQUIRE(no_bos.next(c));
    CHECK(c == std::vector<std::int32_t>{5, 6, 7});
    REQUIRE(no_bos.next(c));
    CHECK(c == std::vector<std::int32_t>{8, 9, 10});
}

TEST_CASE("harvest: rows equal a caching_hooks forward over the same contexts, bit for bit", "[harvest]") {
    const auto docs = some_documents(60);
    const index_t T = 12, B = 3;
    const std::int64_t N = 10 * T;
    SECTION("residual-stream sites (partial pass: only the blocks needed)") {
        const fs::path dir = fresh_dir("equal_resid");
        vector_documents source(docs);
        const auto o = options_for({"blocks.0.hook_resid_post", "hook_embed", "blocks.1.mlp.hook_post"}, T, N, 40, B);
        const auto r = mechlens::harvest(small_model(), source, dir, o);
        CHECK(r.manifest.complete);
        CHECK(r.manifest.rows() == N);
        for (const auto& s : o.sites) {
            const std::vector<float> got = read_all(dir, mechlens::to_string(s));
            CHECK(got.size() == static_cast<std::size_t>(N * mechlens::harvest_width(s, small_config())));
            CHECK(got == cached_rows(docs, T, N / T, B, s));
        }
    }
    SECTION("per-head sites flattened or one head, a norm site, and the logits (whole forward pass)") {
        const fs::path dir = fresh_dir("equal_heads");
        vector_documents source(docs);
        const auto o = options_for({"blocks.1.attn.hook_z", "blocks.1.attn.hook_z:head=2", "blocks.0.ln2.hook_normalized",
                                    "blocks.0.attn.hook_k:head=1", "unembed.hook_out"},
                                   T, N, 1000, B);
        (void)mechlens::harvest(small_model(), source, dir, o);
        for (const auto& s : o.sites) CHECK(read_all(dir, mechlens::to_string(s)) == cached_rows(docs, T, N / T, B, s));
        const auto m = mechlens::read_harvest_manifest(dir);
        REQUIRE(m.sites.size() == 5);
        CHECK(m.sites[0].width == 4 * 8);  // n_heads * d_head
        CHECK(m.sites[1].width == 8);
        CHECK(m.sites[1].head == 2);
        CHECK(m.sites[1].directory == "blocks.1.attn.hook_z.head2");
        CHECK(m.sites[4].width == 40);
    }
    SECTION("the batch size does not change a bit (batch-invariant kernels)") {
        const fs::path one = fresh_dir("batch1"), four = fresh_dir("batch4");
        vector_documents a(docs), b(docs);
        (void)mechlens::harvest(small_model(), a, one, options_for({"blocks.1.hook_resid_post"}, T, N, 48, 1));
        (void)mechlens::harvest(small_model(), b, four, options_for({"blocks.1.hook_resid_post"}, T, N, 48, 4));
        CHECK(read_all(one) == read_all(four));
    }
}

TEST_CASE("harvest: shards hold whole contexts, at most shard_rows rows, listed in the manifest", "[harvest]") {
    const fs::path dir = fresh_dir("shards");
    vector_documents source(some_documents(80));
    // 20 rows per shard round down to 2 contexts of 8; 56 tokens are 7 contexts: shards of 16, 16, 16 and 8 rows.
    const auto o = options_for({"blocks.1.hook_resid_post"}, 8, 60, 20, 3);
    const auto r = mechlens::harvest(small_model(), source, dir, o);
    const auto& m = r.manifest;
    CHECK(m.shard_rows == 16);
    REQUIRE(m.shards.size() == 4);
    CHECK(m.shards[0].rows == 16);
    CHECK(m.shards[3].rows == 8);
    CHECK(m.shards[2].first_context == 4);
    CHECK(m.shards[3].first_context == 6);
    CHECK(m.contexts_done == 7);
    CHECK(m.complete);
    for (std::size_t i = 0; i < 4; ++i) {
        const auto file = mechlens::read_safetensors(dir / m.shard_path(0, i));
        REQUIRE(file.tensors.size() == 1);
        CHECK(file.tensors[0].shape == std::vector<index_t>{m.shards[i].rows, 32});
        CHECK(file.metadata.at("hook_name") == "blocks.1.hook_resid_post");
    }
    // The manifest reads back as written.
    const auto back = mechlens::read_harvest_manifest(dir);
    CHECK(back.rows() == 56);
    CHECK(back.source == "test documents");
    CHECK(back.resume.document == m.resume.document);
    // Bounded memory: never more than one shard plus one batch of rows.
    CHECK(r.peak_buffered_rows <= m.shard_rows + o.batch_contexts * o.context);
    CHECK(r.peak_buffered_rows > 0);
}

TEST_CASE("harvest: an interrupted harvest resumes and ends as an uninterrupted one, bit for bit", "[harvest]") {
    const auto docs = some_documents(120);
    const bool shuffle = GENERATE(false, true);
    auto o = options_for({"blocks.0.hook_resid_mid", "blocks.1.attn.hook_z:head=3"}, 10, 150, 30, 2);
    o.shuffle = shuffle;
    o.seed = 99;
    const fs::path whole = fresh_dir(shuffle ? "whole_shuffled" : "whole"),
                   parts = fresh_dir(shuffle ? "parts_shuffled" : "parts");
    vector_documents a(docs);
    const auto full = mechlens::harvest(small_model(), a, whole, o);
    REQUIRE(full.manifest.shards.size() == 5);

    // Stop after 2 shards, then after 1 more, then run to the end; each run starts with a new source.
    auto stopped = o;
    stopped.stop_after_shards = 2;
    vector_documents b(docs);
    const auto first = mechlens::harvest(small_model(), b, parts, stopped);
    CHECK_FALSE(first.manifest.complete);
    CHECK(first.manifest.shards.size() == 2);
    stopped.stop_after_shards = 1;
    vector_documents c(docs);
    const auto second = mechlens::harvest(small_model(), c, parts, stopped);
    CHECK(second.resumed);
    CHECK(second.manifest.shards.size() == 3);
    // A crash in the middle of a shard (here: an exception from the progress callback) loses only that shard.
    vector_documents d(docs);
    int calls = 0;
    CHECK_THROWS_AS(mechlens::harvest(small_model(), d, parts, o,
                                      [&](const mechlens::harvest_progress&) {
                                          if (++calls == 1) throw std::runtime_error("interrupted");
                                      }),
                    std::runtime_error);
    vector_documents e(docs);
    const auto last = mechlens::harvest(small_model(), e, parts, o);
    CHECK(last.resumed);
    CHECK(last.manifest.complete);
    CHECK(last.tokens_this_run == 60);  // the two shards left

    REQUIRE(last.manifest.shards.size() == full.manifest.shards.size());
    for (std::size_t site = 0; site < 2; ++site)
        for (std::size_t i = 0; i < full.manifest.shards.size(); ++i)
            CHECK(file_bytes(parts / full.manifest.shard_path(site, i)) ==
                  file_bytes(whole / full.manifest.shard_path(site, i)));
    CHECK(file_bytes(parts / "manifest.json") == file_bytes(whole / "manifest.json"));

    // A finished harvest run again does nothing; other settings are refused.
    vector_documents f(docs);
    CHECK(mechlens::harvest(small_model(), f, parts, o).tokens_this_run == 0);
    auto other = o;
    other.context = 12;
    vector_documents g(docs);
    CHECK_THROWS_WITH(mechlens::harvest(small_model(), g, parts, other),
                      Catch::Contains("holds a harvest with another context length (10, now 12)"));
}

TEST_CASE("harvest: shuffling permutes the rows of each shard, deterministically for a seed", "[harvest]") {
    const auto docs = some_documents(100);
    auto o = options_for({"blocks.1.hook_resid_post"}, 8, 96, 32, 3);
    const fs::path plain = fresh_dir("unshuffled"), s1 = fresh_dir("seed1"), s1b = fresh_dir("seed1b"),
                   s2 = fresh_dir("seed2");
    vector_documents a(docs), b(docs), c(docs), d(docs);
    (void)mechlens::harvest(small_model(), a, plain, o);
    o.shuffle = true;
    o.seed = 1;
    const auto r = mechlens::harvest(small_model(), b, s1, o);
    (void)mechlens::harvest(small_model(), c, s1b, o);
    o.seed = 2;
    (void)mechlens::harvest(small_model(), d, s2, o);
    for (std::size_t i = 0; i < r.manifest.shards.size(); ++i)
        CHECK(file_bytes(s1 / r.manifest.shard_path(0, i)) == file_bytes(s1b / r.manifest.shard_path(0, i)));
    const std::vector<float> x = read_all(plain), y = read_all(s1), z = read_all(s2);
    CHECK(x != y);
    CHECK(y != z);
    // Each shard's rows are a permutation of the unshuffled shard's rows.
    const std::size_t width = 32, shard = 32;
    for (std::size_t first = 0; first < x.size(); first += shard * width) {
        std::vector<std::vector<float>> rx, ry;
        for (std::size_t row = 0; row < shard; ++row) {
            rx.emplace_back(x.begin() + static_cast<std::ptrdiff_t>(first + row * width),
                            x.begin() + static_cast<std::ptrdiff_t>(first + (row + 1) * width));
            ry.emplace_back(y.begin() + static_cast<std::ptrdiff_t>(first + row * width),
                            y.begin() + static_cast<std::ptrdiff_t>(first + (row + 1) * width));
        }
        CHECK(rx != ry);
        std::sort(rx.begin(), rx.end());
        std::sort(ry.begin(), ry.end());
        CHECK(rx == ry);
    }
}

TEST_CASE("harvest: the reader returns batches across shard boundaries", "[harvest]") {
    const fs::path dir = fresh_dir("reader");
    vector_documents source(some_documents(50));
    (void)mechlens::harvest(small_model(), source, dir, options_for({"hook_embed", "blocks.0.hook_resid_pre"}, 8, 40, 16, 2));
    mechlens::harvest_reader reader(dir, "blocks.0.hook_resid_pre");
    CHECK(reader.width() == 32);
    CHECK(reader.rows() == 40);
    std::vector<float> batch;
    CHECK(reader.next(batch, 25) == 25);  // shards of 16, 16, 8
    CHECK(batch.size() == 25 * 32);
    CHECK(reader.next(batch, 25) == 15);
    CHECK(reader.next(batch, 25) == 0);
    reader.rewind();
    CHECK(reader.next(batch, 100) == 40);
    // hook_embed equals resid_pre of block 0 (rotary positions: nothing is added in between).
    CHECK(read_all(dir, "hook_embed") == read_all(dir, "blocks.0.hook_resid_pre"));
    CHECK_THROWS_WITH(mechlens::harvest_reader(dir, "blocks.1.hook_resid_pre"),
                      Catch::Contains("holds no site 'blocks.1.hook_resid_pre' (it holds hook_embed, blocks.0.hook_resid_pre)"));
}

TEST_CASE("harvest: site names and option errors", "[harvest]") {
    const auto c = small_config();
    CHECK(mechlens::to_string(mechlens::parse_harvest_site("blocks.1.attn.hook_q:head=3", c)) ==
          "blocks.1.attn.hook_q:head=3");
    CHECK_THROWS_WITH(mechlens::parse_harvest_site("blocks.1.hook_resid_pots", c),
                      Catch::Contains("did you mean blocks.1.hook_resid_post"));
    CHECK_THROWS_WITH(mechlens::parse_harvest_site("blocks.0.attn.hook_pattern", c),
                      Catch::Contains("has no fixed width per token"));
    CHECK_THROWS_WITH(mechlens::parse_harvest_site("blocks.0.hook_resid_pre:head=1", c),
                      Catch::Contains("has no head axis"));
    CHECK_THROWS_WITH(mechlens::parse_harvest_site("blocks.0.attn.hook_k:head=2", c),
                      Catch::Contains("head 2 is outside [0, 2)"));
    CHECK_THROWS_WITH(mechlens::parse_harvest_site("blocks.0.attn.hook_z:heads=1", c),
                      Catch::Contains("expected NAME or NAME:head=H"));
    vector_documents source(some_documents(5));
    CHECK_THROWS_WITH(mechlens::harvest(small_model(), source, fresh_dir("errors"),
                                        options_for({"hook_embed"}, 16, 10, 64, 1)),
                      Catch::Contains("tokens_total 10 is less than one context of 16 tokens"));
    CHECK_THROWS_WITH(mechlens::harvest(small_model(), source, fresh_dir("errors"),
                                        options_for({"hook_embed"}, 64, 100, 64, 1)),
                      Catch::Contains("outside [1, n_ctx = 32]"));
    CHECK_THROWS_WITH(mechlens::harvest(small_model(), source, fresh_dir("errors"),
                                        options_for({"hook_embed", "hook_embed"}, 8, 100, 64, 1)),
                      Catch::Contains("hook_embed is listed twice"));
    // The documents run out: the harvest ends with what it has.
    vector_documents few({{3, 4, 5, 6, 7, 8, 9, 10, 11, 12}});
    const auto r = mechlens::harvest(small_model(), few, fresh_dir("short"), options_for({"hook_embed"}, 4, 400, 64, 2));
    CHECK(r.source_ended);
    CHECK(r.manifest.complete);
    CHECK(r.manifest.rows() == 12);  // [1 3 4 5] [1 6 7 8] [1 9 10 11]; [1 12 ...] is incomplete and dropped
}

TEST_CASE("harvest: text files split into documents at <|endoftext|> lines", "[harvest]") {
    const fs::path dir = fresh_dir("text");
    fs::create_directories(dir);
    {
        std::ofstream(dir / "a.txt") << "ab\ncd\n<|endoftext|>\nef\r\n";
        std::ofstream(dir / "b.txt") << "gh";
    }
    // One token per byte.
    auto bytes = [](std::string_view text) {
        std::vector<std::int32_t> out;
        for (const char ch : text) out.push_back(static_cast<unsigned char>(ch));
        return out;
    };
    mechlens::text_documents docs({dir / "a.txt", dir / "b.txt"}, bytes);
    std::vector<std::int32_t> t;
    REQUIRE(docs.next(t));
    CHECK(t == bytes("ab\ncd"));
    REQUIRE(docs.next(t));
    CHECK(t == bytes("ef"));
    REQUIRE(docs.next(t));
    CHECK(t == bytes("gh"));
    CHECK_FALSE(docs.next(t));
    mechlens::text_documents skipping({dir / "a.txt", dir / "b.txt"}, bytes);
    skipping.skip(2);
    REQUIRE(skipping.next(t));
    CHECK(t == bytes("gh"));
    CHECK(skipping.describe() == "text: a.txt b.txt");
    CHECK_THROWS_WITH(mechlens::text_documents({dir / "missing.txt"}, bytes),
                      Catch::Contains("missing.txt does not exist or cannot be read"));
}

TEST_CASE("harvest: stories sampled from the model depend only on (seed, story)", "[harvest]") {
    mechlens::story_options o;
    o.seed = 5;
    o.bos = 1;
    o.eos = 2;
    o.max_length = 20;
    mechlens::sampled_stories all(small_model(), o), skipped(small_model(), o), other(small_model(), o);
    std::vector<std::int32_t> a, b;
    for (int i = 0; i < 3; ++i) REQUIRE(all.next(a));
    skipped.skip(2);
    REQUIRE(skipped.next(b));
    CHECK(a == b);
    CHECK_FALSE(a.empty());
    CHECK(a.size() <= 20);
    o.seed = 6;
    mechlens::sampled_stories reseeded(small_model(), o);
    reseeded.skip(2);
    REQUIRE(reseeded.next(b));
    CHECK(a != b);
    // Harvesting from them twice gives the same files.
    const fs::path d1 = fresh_dir("stories1"), d2 = fresh_dir("stories2");
    o.seed = 5;
    mechlens::sampled_stories s1(small_model(), o), s2(small_model(), o);
    const auto r1 = mechlens::harvest(small_model(), s1, d1, options_for({"blocks.1.hook_resid_post"}, 16, 64, 32, 2));
    (void)mechlens::harvest(small_model(), s2, d2, options_for({"blocks.1.hook_resid_post"}, 16, 64, 32, 2));
    CHECK(r1.manifest.rows() == 64);
    CHECK(read_all(d1) == read_all(d2));
    CHECK(r1.manifest.source == "sampled from the model: temperature 1, seed 5, at most 20 tokens per story");
}

TEST_CASE("harvest: stories260K over text, equal to caching_hooks", "[harvest][stories260K]") {
    const fs::path model_path = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(model_path);
    const mechlens::transformer model(mechlens::load_model(model_path));
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(mechlens_test::model_file("stories260K/tok512.bin"));
    const fs::path dir = fresh_dir("stories260K");
    fs::create_directories(dir);
    std::ofstream(dir / "story.txt") << "Once upon a time, there was a little girl named Lily. She loved to play.\n"
                                        "<|endoftext|>\nTom had a red ball. He threw it to the dog.\n";
    auto encode = [&](std::string_view text) { return tokenizer.encode(text, false); };
    mechlens::text_documents docs({dir / "story.txt"}, encode);
    mechlens::harvest_options o;
    o.sites = {mechlens::parse_harvest_site("blocks.2.hook_resid_post", model.config())};
    o.context = 8;
    o.tokens_total = 32;
    o.shard_rows = 16;
    o.batch_contexts = 4;
    const auto r = mechlens::harvest(model, docs, dir / "out", o);
    REQUIRE(r.manifest.rows() == 32);
    // The same four contexts through caching_hooks in one batch.
    mechlens::text_documents again({dir / "story.txt"}, encode);
    mechlens::context_packer packer(again, 8, 1);
    std::vector<std::int32_t> tokens(32);
    for (int j = 0; j < 4; ++j) REQUIRE(packer.next(std::span<std::int32_t>(tokens.data() + 8 * j, 8)));
    CHECK(tokens[0] == 1);
    CHECK(tokens[8] == 1);
    mechlens::caching_hooks<> hooks;
    (void)mechlens::forward_logits(model, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {4, 8}), hooks);
    CHECK(read_all(dir / "out") == hooks.cache()["blocks.2.hook_resid_post"].values);
}

}  // namespace test_harvest
