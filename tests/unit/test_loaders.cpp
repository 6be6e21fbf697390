// File loaders: memory-mapped llama2.c .bin and GGUF models, GGUF vocabularies, .npy, and hostile inputs.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_loaders {

using mechlens::index_t;
namespace fs = std::filesystem;

namespace {

std::string read_file_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary | std::ios::ate);
    std::string bytes(static_cast<std::size_t>(in.tellg()), '\0');
    in.seekg(0);
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return bytes;
}

fs::path write_scratch(const std::string& name, const std::string& bytes) {
    const fs::path p = mechlens_test::scratch_dir() / ("loaders_" + name);
    // Unlink first: rewriting a truncated file makes ext4 flush it to disk on close (auto_da_alloc), which is slow.
    fs::remove(p);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
}

/// The GGUF model `f32` written as Q8_0 by quantize_gguf to the scratch file "loaders_" + name (replaced if there).
fs::path quantised_scratch(const fs::path& f32, const std::string& name) {
    const fs::path p = mechlens_test::scratch_dir() / ("loaders_" + name);
    fs::remove(p);
    (void)mechlens::quantize_gguf(f32, p);
    return p;
}

template <class T>
T get_raw(const std::string& bytes, std::size_t offset) {
    T v{};
    std::memcpy(&v, bytes.data() + offset, sizeof(T));
    return v;
}

template <class T>
void put_raw(std::string& bytes, std::size_t offset, T v) {
    std::memcpy(bytes.data() + offset, &v, sizeof(T));
}

template <class T>
void append_raw(std::string& bytes, T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// The format_error message `load` throws; fails the test when it throws nothing or something else.
std::string error_of(const std::function<void()>& load) {
    try {
        load();
    } catch (const mechlens::format_error& e) {
        return e.what();
    } catch (const std::exception& e) {
        FAIL("expected format_error, got: " << e.what());
    }
    FAIL("expected format_error, nothing was thrown");
    return {};
}

// Loads `bytes` from a scratch file with `loader`; requires a format_error naming the file and containing `problem`.
void require_rejected(const std::string& name, const std::string& bytes, const std::string& problem,
                      const std::function<void(const fs::path&)>& loader) {
    const fs::path p = write_scratch(name, bytes);
    const std::string message = error_of([&] { loader(p); });
    INFO(name << ": " << message);
    REQUIRE(message.find(p.string()) != std::string::npos);
    REQUIRE(message.find(problem) != std::string::npos);
}

void load_bin(const fs::path& p) { (void)mechlens::load_llama2c(p); }
void load_gguf_file(const fs::path& p) { (void)mechlens::load_gguf(p); }

template <class T, std::size_t R>
bool bitwise_equal(const mechlens::tensor_view<const float, R>& a, const mechlens::tensor_view<T, R>& b) {
    return a.shape() == b.shape() &&
           std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}

// Binary16 bits of a float that half represents exactly (normal range or zero).
std::uint16_t half_bits(float f) {
    const auto b = std::bit_cast<std::uint32_t>(f);
    const auto sign = static_cast<std::uint16_t>((b >> 16) & 0x8000u);
    if ((b & 0x7fffffffu) == 0) return sign;
    const int e = static_cast<int>((b >> 23) & 0xffu) - 127 + 15;
    REQUIRE((e > 0 && e < 31 && (b & 0x1fffu) == 0));
    return static_cast<std::uint16_t>(sign | (static_cast<std::uint32_t>(e) << 10) | ((b >> 13) & 0x3ffu));
}

// A tiny GGUF writer, free to write nonsense: the hostile tests need exactly that.
struct gguf_writer {
    struct tensor {
        std::string name;
        std::vector<std::uint64_t> dims;
        std::uint32_t type = 0;
        std::string data;
        std::optional<std::uint64_t> offset;  // default: laid out after the previous tensor, aligned
    };
    std::string magic = "GGUF";
    std::uint32_t version = 3;
    std::optional<std::uint64_t> tensor_count, kv_count;  // overrides of the true counts
    std::uint64_t alignment = 32;
    std::vector<std::pair<std::string, std::string>> kvs;  // key -> type + encoded value
    std::vector<tensor> tensors;

    static std::string str(const std::string& s) {
        std::string out;
        append_raw<std::uint64_t>(out, s.size());
        return out + s;
    }
    void kv_raw(const std::string& key, std::uint32_t type, const std::string& value) {
        std::string v;
        append_raw(v, type);
        kvs.emplace_back(key, v + value);
    }
    template <class T>
    void kv(const std::string& key, std::uint32_t type, T value) {
        std::string v;
        append_raw(v, value);
        kv_raw(key, type, v);
    }
    void kv_u32(const std::string& key, std::uint32_t v) { kv(key, 4, v); }
    void kv_f32(const std::string& key, float v) { kv(key, 6, v); }
    void kv_str(const std::string& key, const std::string& v) { kv_raw(key, 8, str(v)); }
    template <class T>
    void kv_array(const std::string& key, std::uint32_t element_type, const std::vector<T>& values) {
        std::string v;
        append_raw(v, element_type);
        append_raw<std::uint64_t>(v, values.size());
        for (const T& x : values) {
            if constexpr (std::is_same_v<T, std::string>)
                v += str(x);
            else
                append_raw(v, x);
        }
        kv_raw(key, 9, v);
    }
    void erase_kv(const std::string& key) {
        std::erase_if(kvs, [&](const auto& p) { return p.first == key; });
    }
    void erase_tensor(const std::string& name) {
        std::erase_if(tensors, [&](const tensor& t) { return t.name == name; });
    }
    tensor& find(const std::string& name) {
        for (tensor& t : tensors)
            if (t.name == name) return t;
        FAIL("no tensor " << name);
        return tensors.front();
    }

    std::string bytes() const {
        std::string out = magic;
        append_raw(out, version);
        append_raw<std::uint64_t>(out, tensor_count.value_or(tensors.size()));
        append_raw<std::uint64_t>(out, kv_count.value_or(kvs.size()));
        for (const auto& [key, value] : kvs) out += str(key) + value;
        std::uint64_t next = 0;
        std::vector<std::uint64_t> offsets;
        for (const tensor& t : tensors) {
            offsets.push_back(t.offset.value_or(next));
            next = (offsets.back() + t.data.size() + alignment - 1) / alignment * alignment;
            out += str(t.name);
            append_raw<std::uint32_t>(out, static_cast<std::uint32_t>(t.dims.size()));
            for (std::uint64_t d : t.dims) append_raw(out, d);
            append_raw(out, t.type);
            append_raw(out, offsets.back());
        }
        out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
        const std::size_t data_start = out.size();
        for (std::size_t i = 0; i < tensors.size(); ++i) {
            if (offsets[i] > (1u << 24)) continue;  // hostile offsets point nowhere
            out.resize(std::max<std::size_t>(out.size(), data_start + offsets[i]), '\0');
            out.replace(data_start + offsets[i], std::min(tensors[i].data.size(), out.size() - data_start - offsets[i]),
                        tensors[i].data);
        }
        return out;
    }
};

// Deterministic weight values, exact in binary16: multiples of 1/8 in [-1, 1].
float synthetic_value(std::size_t tensor_index, std::size_t i) {
    return static_cast<float>(static_cast<int>((i * 7 + tensor_index * 3) % 17) - 8) * 0.125f;
}

// d_model 32, 4 heads of 8, 2 kv heads, d_mlp 48, 2 layers, vocab 16, context 64; type 0 = F32, 1 = F16.
gguf_writer tiny_llama(std::uint32_t type) {
    gguf_writer w;
    w.kv_str("general.architecture", "llama");
    w.kv_u32("llama.embedding_length", 32);
    w.kv_u32("llama.block_count", 2);
    w.kv_u32("llama.feed_forward_length", 48);
    w.kv_u32("llama.attention.head_count", 4);
    w.kv_u32("llama.attention.head_count_kv", 2);
    w.kv_u32("llama.context_length", 64);
    w.kv_f32("llama.rope.freq_base", 500000.0f);
    w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
    w.kv_array<std::string>(
        "tokenizer.ggml.tokens", 8,
        {"<unk>", "<s>", "</s>", "\xE2\x96\x81the", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"});
    auto add = [&](const std::string& name, std::vector<std::uint64_t> dims) {
        gguf_writer::tensor t{name, dims, type, {}, {}};
        std::size_t n = 1;
        for (auto d : dims) n *= d;
        for (std::size_t i = 0; i < n; ++i) {
            const float v = synthetic_value(w.tensors.size(), i);
            if (type == 0)
                append_raw(t.data, v);
            else
                append_raw(t.data, half_bits(v));
        }
        w.tensors.push_back(std::move(t));
    };
    add("token_embd.weight", {32, 16});
    for (int l = 0; l < 2; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        add(p + "attn_norm.weight", {32});
        add(p + "attn_q.weight", {32, 32});
        add(p + "attn_k.weight", {32, 16});
        add(p + "attn_v.weight", {32, 16});
        add(p + "attn_output.weight", {32, 32});
        add(p + "ffn_norm.weight", {32});
        add(p + "ffn_gate.weight", {32, 48});
        add(p + "ffn_up.weight", {32, 48});
        add(p + "ffn_down.weight", {48, 32});
    }
    add("output_norm.weight", {32});
    return w;
}

}  // namespace

TEST_CASE("loaders: mapped_file maps whole files and names the file in every error", "[loaders]") {
    const fs::path p = write_scratch("mapped.bin", "hello mapping");
    auto m = mechlens::mapped_file::open(p);
    REQUIRE(m->size() == 13);
    REQUIRE(std::memcmp(m->data(), "hello mapping", 13) == 0);
    REQUIRE(m->path() == p);
    REQUIRE(m->contains(m->data() + 5, 8));
    REQUIRE_FALSE(m->contains(m->data() + 5, 9));
    mechlens::mapped_file moved(p);
    mechlens::mapped_file target = std::move(moved);
    REQUIRE(target.size() == 13);
    REQUIRE(moved.data() == nullptr);  // NOLINT(bugprone-use-after-move): documented state after a move

    const fs::path missing = mechlens_test::scratch_dir() / "loaders_does_not_exist.bin";
    REQUIRE(error_of([&] { (void)mechlens::mapped_file::open(missing); }).find(missing.string()) != std::string::npos);
    const std::string dir_error = error_of([&] { (void)mechlens::mapped_file::open(mechlens_test::scratch_dir()); });
    REQUIRE(dir_error.find("directory") != std::string::npos);
    const fs::path empty = write_scratch("empty.bin", "");
    for (auto* load : {+[](const fs::path& q) { (void)mechlens::mapped_file::open(q); }, &load_bin, &load_gguf_file,
                       +[](const fs::path& q) { (void)mechlens::load_model(q); },
                       +[](const fs::path& q) { (void)mechlens::read_npy(q); }}) {
        const std::string e = error_of([&] { load(empty); });
        REQUIRE(e.find(empty.string()) != std::string::npos);
        REQUIRE(e.find("empty file") != std::string::npos);
        REQUIRE(error_of([&] { load(missing); }).find(missing.string()) != std::string::npos);
    }
}

TEST_CASE("loaders: stories260K.bin config, weights at known offsets, zero-copy views", "[loaders]") {
    const fs::path path = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const std::string raw = read_file_bytes(path);
    const auto m = mechlens::load_llama2c(path);
    const auto& c = m.config;
    REQUIRE(c.d_model == 64);
    REQUIRE(c.d_mlp == 172);
    REQUIRE(c.n_layers == 5);
    REQUIRE(c.n_heads == 8);
    REQUIRE(c.n_kv_heads == 4);
    REQUIRE(c.d_vocab == 512);
    REQUIRE(c.n_ctx == 512);
    REQUIRE(c.tied_unembed);
    REQUIRE(c.rope == mechlens::rope_layout::adjacent_pairs);
    REQUIRE(c.rope_theta == 10000.0f);
    REQUIRE(c.norm_eps == 1e-5f);

    // Offsets computed here from the documented layout, independently of the loader.
    const std::size_t V = 512, D = 64, L = 5, KV = 32, H = 172;
    const std::size_t emb = 28, rms_att = emb + 4 * V * D, wq = rms_att + 4 * L * D, wk = wq + 4 * L * D * D,
                      wv = wk + 4 * L * KV * D, wo = wv + 4 * L * KV * D, rms_ffn = wo + 4 * L * D * D,
                      w1 = rms_ffn + 4 * L * D, w2 = w1 + 4 * L * H * D, w3 = w2 + 4 * L * D * H,
                      fin = w3 + 4 * L * H * D;
    const auto& w = m.weights;
    REQUIRE(w.token_embedding(0, 0) == get_raw<float>(raw, emb));
    REQUIRE(w.token_embedding(3, 5) == get_raw<float>(raw, emb + 4 * (3 * D + 5)));
    REQUIRE(w.layers[2].attn_norm(7) == get_raw<float>(raw, rms_att + 4 * (2 * D + 7)));
    REQUIRE(w.layers[2].w_q(1, 2) == get_raw<float>(raw, wq + 4 * (2 * D * D + 1 * D + 2)));
    REQUIRE(w.layers[4].w_k(31, 63) == get_raw<float>(raw, wk + 4 * (4 * KV * D + 31 * D + 63)));
    REQUIRE(w.layers[1].w_v(10, 3) == get_raw<float>(raw, wv + 4 * (1 * KV * D + 10 * D + 3)));
    REQUIRE(w.layers[3].w_o(5, 60) == get_raw<float>(raw, wo + 4 * (3 * D * D + 5 * D + 60)));
    REQUIRE(w.layers[0].mlp_norm(63) == get_raw<float>(raw, rms_ffn + 4 * 63));
    REQUIRE(w.layers[1].w_gate(171, 0) == get_raw<float>(raw, w1 + 4 * (1 * H * D + 171 * D)));
    REQUIRE(w.layers[4].w_down(63, 171) == get_raw<float>(raw, w2 + 4 * (4 * D * H + 63 * H + 171)));
    REQUIRE(w.layers[2].w_up(100, 7) == get_raw<float>(raw, w3 + 4 * (2 * H * D + 100 * D + 7)));
    REQUIRE(w.final_norm(13) == get_raw<float>(raw, fin + 4 * 13));
    REQUIRE(w.token_embedding(0, 0) == -0.29474878311157227f);
    REQUIRE(w.unembed.data() == w.token_embedding.data());

    // Zero copy: every view lies inside the mapping and nothing was converted.
    const mechlens::loader_storage* s = mechlens::loader_storage_of(w);
    REQUIRE(s != nullptr);
    REQUIRE(s->converted.empty());
    REQUIRE(s->file->size() == raw.size());
    REQUIRE(mechlens::views_mapping(w, w.token_embedding));
    REQUIRE(mechlens::views_mapping(w, w.final_norm));
    for (const auto& l : w.layers)
        REQUIRE((mechlens::views_mapping(w, l.w_q) && mechlens::views_mapping(w, l.w_down) &&
                 mechlens::views_mapping(w, l.attn_norm)));
    REQUIRE(mechlens::loader_storage_of(mechlens::model_weights{}) == nullptr);
}

TEST_CASE("loaders: stories260K .bin and .gguf hold bitwise-identical weights", "[loaders]") {
    const fs::path bin = mechlens_test::model_file("stories260K/stories260K.bin");
    const fs::path gguf = mechlens_test::model_file("stories260K/stories260K.gguf");
    MECHLENS_REQUIRE_FILE_OR_SKIP(bin);
    MECHLENS_REQUIRE_FILE_OR_SKIP(gguf);
    const auto a = mechlens::load_model(bin);
    const auto b = mechlens::load_model(gguf);
    REQUIRE(a.config.tied_unembed);
    REQUIRE_FALSE(b.config.tied_unembed);  // the converter wrote an untied copy of the embedding
    REQUIRE(b.config.d_model == 64);
    REQUIRE(b.config.d_mlp == 172);
    REQUIRE(b.config.n_layers == 5);
    REQUIRE(b.config.n_heads == 8);
    REQUIRE(b.config.n_kv_heads == 4);
    REQUIRE(b.config.d_vocab == 512);
    REQUIRE(b.config.n_ctx == 2048);  // llama.context_length says 2048; the .bin's seq_len is 512
    REQUIRE(b.config.rope_theta == a.config.rope_theta);
    REQUIRE(b.config.norm_eps == a.config.norm_eps);
    REQUIRE(b.config.rope == a.config.rope);

    const auto& x = a.weights;
    const auto& y = b.weights;
    REQUIRE(bitwise_equal(x.token_embedding, y.token_embedding));
    REQUIRE(bitwise_equal(x.token_embedding, y.unembed));
    REQUIRE(y.unembed.data() != y.token_embedding.data());
    REQUIRE(bitwise_equal(x.final_norm, y.final_norm));
    for (std::size_t l = 0; l < 5; ++l) {
        INFO("layer " << l);
        const auto &p = x.layers[l], &q = y.layers[l];
        REQUIRE(bitwise_equal(p.attn_norm, q.attn_norm));
        REQUIRE(bitwise_equal(p.w_q, q.w_q));
        REQUIRE(bitwise_equal(p.w_k, q.w_k));
        REQUIRE(bitwise_equal(p.w_v, q.w_v));
        REQUIRE(bitwise_equal(p.w_o, q.w_o));
        REQUIRE(bitwise_equal(p.mlp_norm, q.mlp_norm));
        REQUIRE(bitwise_equal(p.w_gate, q.w_gate));
        REQUIRE(bitwise_equal(p.w_up, q.w_up));
        REQUIRE(bitwise_equal(p.w_down, q.w_down));
        REQUIRE((mechlens::views_mapping(y, q.w_q) && mechlens::views_mapping(y, q.w_up)));
    }
    REQUIRE(mechlens::loader_storage_of(y)->converted.empty());
    REQUIRE(mechlens::views_mapping(y, y.unembed));
}

TEST_CASE("loaders: aidreams260K.bin loads", "[loaders]") {
    const fs::path path = mechlens_test::model_file("aidreams260K/aidreams260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const auto m = mechlens::load_model(path);
    REQUIRE(m.config.n_layers == 4);
    REQUIRE(m.config.n_heads == 4);
    REQUIRE(m.config.n_kv_heads == 4);
    REQUIRE(m.config.d_model == 64);
    REQUIRE(m.config.d_mlp == 172);
    REQUIRE(m.config.d_vocab == 512);
    REQUIRE(m.config.n_ctx == 128);
    REQUIRE(m.weights.layers.size() == 4);
    REQUIRE(m.weights.token_embedding(0, 0) == get_raw<float>(read_file_bytes(path), 28));
}

TEST_CASE("loaders: gguf_file exposes version, metadata, tensor infos and the vocabulary", "[loaders]") {
    const fs::path path = mechlens_test::model_file("stories260K/stories260K.gguf");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const mechlens::gguf_file g(path);
    REQUIRE(g.version() == 3);
    REQUIRE(g.alignment() == 32);
    REQUIRE(g.tensors().size() == 48);
    REQUIRE(g.metadata().size() == 19);
    REQUIRE(g.data_offset() == 14176);
    REQUIRE(g.get_string("general.architecture") == "llama");
    REQUIRE(g.get_int("llama.attention.head_count_kv") == 4);
    REQUIRE(g.at("llama.block_count").type() == mechlens::gguf_type::uint32);
    REQUIRE(g.get_float("llama.attention.layer_norm_rms_epsilon") == static_cast<double>(1e-5f));
    const auto& k = g.tensor("blk.0.attn_k.weight");
    REQUIRE(k.dims == std::vector<std::uint64_t>{64, 32});  // ggml order: columns first
    REQUIRE(k.type == mechlens::ggml_type::f32);
    REQUIRE(k.offset == 278784);
    REQUIRE(k.n_bytes == 64 * 32 * 4);
    REQUIRE(g.find_tensor("blk.9.attn_k.weight") == nullptr);
    REQUIRE(g.find("no.such.key") == nullptr);
    const std::string missing = error_of([&] { (void)g.get_int("no.such.key"); });
    REQUIRE((missing.find("no.such.key") != std::string::npos && missing.find(path.string()) != std::string::npos));
    REQUIRE(error_of([&] { (void)g.get_int("general.name"); }).find("expected an integer") != std::string::npos);
    REQUIRE(error_of([&] { (void)g.tensor("nope"); }).find("missing tensor 'nope'") != std::string::npos);

    const mechlens::vocabulary v = mechlens::load_gguf_vocabulary(path);
    REQUIRE(v.pieces.size() == 512);
    REQUIRE(v.scores.size() == 512);
    REQUIRE(v.kinds.size() == 512);
    REQUIRE(v.bos_id == 1);
    REQUIRE(v.eos_id == 2);
    REQUIRE(v.unknown_id == 0);
    REQUIRE(v.pieces[1] == "<s>");
    REQUIRE(v.kinds[0] == mechlens::token_kind::unknown);
    REQUIRE(v.kinds[1] == mechlens::token_kind::control);
    REQUIRE(v.kinds[3] == mechlens::token_kind::byte);
    REQUIRE(v.kinds[300] == mechlens::token_kind::normal);
    std::size_t with_space = 0;
    for (const std::string& p : v.pieces) {
        REQUIRE(p.find("\xE2\x96\x81") == std::string::npos);
        with_space += p.size() > 1 && p[0] == ' ';
    }
    REQUIRE(with_space > 50);
    const auto& tokens = g.get_array("tokenizer.ggml.tokens", mechlens::gguf_type::string);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        const std::string* stored = tokens[i].as_string();
        REQUIRE(stored != nullptr);
        const std::string raw = stored ? *stored : std::string();
        std::string expected;
        for (std::size_t at = 0; at < raw.size(); ++at) {
            if (raw.compare(at, 3, "\xE2\x96\x81") == 0) {
                expected += ' ';
                at += 2;
            } else {
                expected += raw[at];
            }
        }
        REQUIRE(v.pieces[i] == expected);
    }
    REQUIRE(g.get_array("tokenizer.ggml.scores", mechlens::gguf_type::float32)[300].as_float() ==
            static_cast<double>(v.scores[300]));
}

TEST_CASE("loaders: llama2.c files truncated anywhere or with corrupt headers are rejected", "[loaders]") {
    const fs::path path = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const std::string good = read_file_bytes(path);
    std::vector<std::size_t> cuts{1, 4, 27, 28, 29, 100, good.size() / 2, good.size() - 4, good.size() - 1};
    for (std::size_t at = 31; at < good.size(); at += 4099) cuts.push_back(at);
    for (std::size_t at : cuts) require_rejected("cut.bin", good.substr(0, at), "truncated", load_bin);
    require_rejected("cut_exact.bin", good.substr(0, 1000), "truncated: needs 1056540 bytes, has 1000", load_bin);
    require_rejected("trailing.bin", good + "xxxx", "trailing", load_bin);

    struct corruption {
        std::size_t field;
        std::int32_t value;
        const char* problem;
    };
    const std::vector<corruption> corruptions{
        {0, 0, "dim = 0 must be positive"},
        {0, -64, "dim = -64 must be positive"},
        {1, -1, "hidden_dim = -1"},
        {2, 0, "n_layers = 0"},
        {3, 0, "n_heads = 0"},
        {4, -4, "n_kv_heads = -4"},
        {5, 0, "vocab_size = 0"},
        {6, 0, "seq_len = 0"},
        {3, 7, "not a multiple of n_heads"},
        {4, 3, "not a multiple of n_kv_heads"},
        {0, 1 << 30, "outside"},
        {5, INT32_MIN, "outside"},
        {5, -512, "truncated: needs 1187612 bytes"},
        {0, 0x616b3432, "ak42"},
    };
    for (const corruption& c : corruptions) {
        std::string bad = good;
        put_raw<std::int32_t>(bad, 4 * c.field, c.value);
        require_rejected("corrupt.bin", bad, c.problem, load_bin);
    }
    // Every extent within bounds, yet n_layers * dim * dim overflows 64 bits.
    std::string huge = good.substr(0, 28);
    const std::int32_t fields[7] = {1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 1 << 24, 1 << 24};
    std::memcpy(huge.data(), fields, sizeof fields);
    require_rejected("overflow.bin", huge, "overflows", load_bin);
}

TEST_CASE("loaders: llama2.c unshared classifier is read from the end", "[loaders]") {
    const fs::path path = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    std::string bytes = read_file_bytes(path);
    put_raw<std::int32_t>(bytes, 20, -512);
    std::string classifier(512 * 64 * 4, '\0');
    for (std::size_t i = 0; i < 512 * 64; ++i) put_raw<float>(classifier, 4 * i, static_cast<float>(i) * 0.5f);
    const auto m = mechlens::load_llama2c(write_scratch("unshared.bin", bytes + classifier));
    REQUIRE_FALSE(m.config.tied_unembed);
    REQUIRE(m.config.d_vocab == 512);
    REQUIRE(m.weights.unembed.data() != m.weights.token_embedding.data());
    REQUIRE(m.weights.unembed(3, 2) == static_cast<float>(3 * 64 + 2) * 0.5f);
    REQUIRE(m.weights.token_embedding(0, 0) == get_raw<float>(bytes, 28));
}

TEST_CASE("loaders: GGUF files truncated anywhere or with corrupt headers are rejected", "[loaders]") {
    const fs::path path = mechlens_test::model_file("stories260K/stories260K.gguf");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const std::string good = read_file_bytes(path);
    std::vector<std::size_t> cuts;
    for (std::size_t at = 1; at < 14200; at += 13) cuts.push_back(at);  // header, kvs, tensor infos
    for (std::size_t at = 14200; at < good.size(); at += 60013) cuts.push_back(at);
    cuts.push_back(good.size() - 1);
    for (std::size_t at : cuts) {
        const fs::path p = write_scratch("cut.gguf", good.substr(0, at));
        const std::string e = error_of([&] { (void)mechlens::load_model(p); });
        INFO("cut at " << at << ": " << e);
        REQUIRE(e.find(p.string()) != std::string::npos);
        REQUIRE((e.find("truncated") != std::string::npos || e.find("cannot fit") != std::string::npos));
    }
    auto corrupt = [&](std::size_t offset, auto value, const char* problem) {
        std::string bad = good;
        put_raw(bad, offset, value);
        require_rejected("corrupt.gguf", bad, problem, load_gguf_file);
    };
    corrupt(0, std::uint32_t{0x46554746}, "bad magic");
    corrupt(4, std::uint32_t{1}, "unsupported GGUF version 1");
    corrupt(4, std::uint32_t{4}, "unsupported GGUF version 4");
    corrupt(4, std::uint32_t{0x03000000}, "big-endian");
    corrupt(8, std::uint64_t{1} << 60, "tensor_count");
    corrupt(16, std::uint64_t{1} << 60, "metadata_kv_count");
    corrupt(24, std::uint64_t{1} << 62, "truncated");               // first key's length
    corrupt(24 + 8 + 21, std::uint32_t{13}, "unknown value type");  // type of "tokenizer.ggml.tokens"
    corrupt(24 + 8 + 21 + 4, std::uint32_t{13}, "unknown value type");
    corrupt(24 + 8 + 21 + 8, std::uint64_t{1} << 61, "cannot fit");  // its element count
    corrupt(24 + 8 + 21 + 16, std::uint64_t{1} << 40, "truncated");  // its first string's length
}

TEST_CASE("loaders: random header corruptions either load or throw format_error, nothing else", "[loaders]") {
    std::mt19937 rng(20240611u);  // fixed seed: failures reproduce
    const std::string tiny = tiny_llama(1).bytes();
    const std::size_t tiny_header = mechlens::gguf_file(write_scratch("tiny.gguf", tiny)).data_offset();
    std::size_t rejected = 0;
    for (int i = 0; i < 400; ++i) {
        std::string bad = tiny;
        for (int flips = 1 + static_cast<int>(rng() % 3); flips > 0; --flips) {
            const std::size_t at = rng() % tiny_header;
            const unsigned old = static_cast<unsigned char>(bad[at]);
            bad[at] = static_cast<char>(rng() % 2 ? rng() % 256 : old ^ (1u << (rng() % 8)));
        }
        const fs::path p = write_scratch("fuzz.gguf", bad);
        try {
            const auto m = mechlens::load_model(p);
            mechlens::validate_weights(m.config, m.weights);
            (void)mechlens::load_gguf_vocabulary(p);
        } catch (const mechlens::format_error& e) {
            ++rejected;
            REQUIRE(std::string(e.what()).find(p.string()) != std::string::npos);
        }
    }
    REQUIRE(rejected > 100);
}

TEST_CASE("loaders: synthetic GGUF models, F32 in place and F16 converted", "[loaders]") {
    for (std::uint32_t type : {0u, 1u}) {
        INFO("type " << type);
        const gguf_writer w = tiny_llama(type);
        const fs::path p = write_scratch(type ? "tiny_f16.gguf" : "tiny_f32.gguf", w.bytes());
        const auto m = mechlens::load_model(p);
        REQUIRE(m.config.d_model == 32);
        REQUIRE(m.config.n_heads == 4);
        REQUIRE(m.config.n_kv_heads == 2);
        REQUIRE(m.config.d_mlp == 48);
        REQUIRE(m.config.n_layers == 2);
        REQUIRE(m.config.d_vocab == 16);
        REQUIRE(m.config.n_ctx == 64);
        REQUIRE(m.config.rope_theta == 500000.0f);
        REQUIRE(m.config.norm_eps == 1e-6f);
        REQUIRE(m.config.tied_unembed);
        REQUIRE(m.weights.unembed.data() == m.weights.token_embedding.data());
        // Tensor order in tiny_llama: embedding, then 9 per layer, then output_norm.
        const auto& w1 = m.weights.layers[1];
        for (index_t r = 0; r < 16; ++r)
            for (index_t c = 0; c < 32; ++c)
                REQUIRE(m.weights.token_embedding(r, c) == synthetic_value(0, static_cast<std::size_t>(r * 32 + c)));
        for (index_t r = 0; r < 16; ++r)
            for (index_t c = 0; c < 32; ++c)
                REQUIRE(w1.w_k(r, c) == synthetic_value(12, static_cast<std::size_t>(r * 32 + c)));
        for (index_t r = 0; r < 32; ++r)
            for (index_t c = 0; c < 48; ++c)
                REQUIRE(w1.w_down(r, c) == synthetic_value(18, static_cast<std::size_t>(r * 48 + c)));
        REQUIRE(m.weights.final_norm(31) == synthetic_value(19, 31));
        const auto* s = mechlens::loader_storage_of(m.weights);
        REQUIRE(s != nullptr);
        REQUIRE(s->converted.size() == (type == 0 ? 0u : 20u));
        REQUIRE(mechlens::views_mapping(m.weights, w1.w_k) == (type == 0));
        const auto v = mechlens::load_gguf_vocabulary(p);
        REQUIRE(v.pieces[3] == " the");
        REQUIRE(v.bos_id == 1);  // defaults when the file does not say
        REQUIRE(v.kinds[5] == mechlens::token_kind::normal);
    }
    gguf_writer aligned = tiny_llama(0);
    aligned.alignment = 64;
    aligned.kv_u32("general.alignment", 64);
    const mechlens::gguf_file g(write_scratch("tiny_aligned.gguf", aligned.bytes()));
    REQUIRE(g.alignment() == 64);
    REQUIRE(g.data_offset() % 64 == 0);
    REQUIRE(mechlens::load_gguf(g).weights.layers[0].w_q(3, 4) == synthetic_value(2, 3 * 32 + 4));

    REQUIRE(mechlens::detail::half_to_float(0x3C00) == 1.0f);
    REQUIRE(mechlens::detail::half_to_float(0xC000) == -2.0f);
    REQUIRE(mechlens::detail::half_to_float(0x7BFF) == 65504.0f);
    REQUIRE(mechlens::detail::half_to_float(0x0400) == std::ldexp(1.0f, -14));
    REQUIRE(mechlens::detail::half_to_float(0x0001) == std::ldexp(1.0f, -24));
    REQUIRE(mechlens::detail::half_to_float(0x83FF) == -std::ldexp(1023.0f, -24));
    REQUIRE(std::signbit(mechlens::detail::half_to_float(0x8000)));
    REQUIRE(std::isinf(mechlens::detail::half_to_float(0xFC00)));
    REQUIRE(std::isnan(mechlens::detail::half_to_float(0x7E00)));

    // Misaligned F32 data (impossible from a real mapping) is copied rather than viewed.
    std::vector<std::byte> buffer(4 * 8 + 1);
    const float values[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    std::memcpy(buffer.data() + 1, values, sizeof values);
    mechlens::detail::weight_builder builder(nullptr);
    const float* copied = builder.f32(buffer.data() + 1, 8);
    REQUIRE(reinterpret_cast<std::uintptr_t>(copied) % alignof(float) == 0);
    REQUIRE(std::memcmp(copied, values, sizeof values) == 0);
}

TEST_CASE("loaders: hostile synthetic GGUF files are rejected with clear messages", "[loaders]") {
    using mod = std::function<void(gguf_writer&)>;
    const std::vector<std::pair<mod, const char*>> cases{
        {[](gguf_writer& w) {
             w.version = 2;
             w.tensor_count = std::uint64_t{1} << 60;
         },
         "tensor_count"},
        {[](gguf_writer& w) { w.kv_count = std::uint64_t{1} << 40; }, "metadata_kv_count"},
        {[](gguf_writer& w) { w.kv_count = w.kvs.size() + 1; }, ""},  // tensor infos parsed as a key: any error
        {[](gguf_writer& w) {
             w.kv_raw("x", 8, gguf_writer::str("abc").replace(0, 8, std::string("\0\0\0\0\0\1\0\0", 8)));
         },
         "truncated"},
        {[](gguf_writer& w) { w.kv("x", 7, std::uint8_t{2}); }, "must be 0 or 1"},
        {[](gguf_writer& w) { w.kv("x", 99, std::uint8_t{2}); }, "unknown value type 99"},
        {[](gguf_writer& w) {
             std::string nested;
             for (int i = 0; i < 6; ++i) {
                 append_raw<std::uint32_t>(nested, 9);
                 append_raw<std::uint64_t>(nested, 1);
             }
             append_raw<std::uint32_t>(nested, 4);
             append_raw<std::uint64_t>(nested, 0);
             w.kv_raw("x", 9, nested);
         },
         "deeper"},
        {[](gguf_writer& w) {
             w.kv_array<std::uint32_t>("x", 4, {1, 2});
             w.kvs.back().second.replace(8, 8, std::string("\0\0\0\0\0\0\0\x10", 8));
         },
         "cannot fit"},
        {[](gguf_writer& w) { w.kv_u32("llama.block_count", 2); }, "duplicate metadata key 'llama.block_count'"},
        {[](gguf_writer& w) { w.kv_u32("general.alignment", 12); }, "general.alignment"},
        {[](gguf_writer& w) {
             w.find("blk.0.attn_q.weight").dims = {32, 32, 1, 1, 1};
         },
         "n_dims 5"},
        {[](gguf_writer& w) { w.find("blk.0.attn_q.weight").dims = {}; }, "n_dims 0"},
        {[](gguf_writer& w) {
             w.find("blk.0.attn_q.weight").dims = {1ull << 32, 1ull << 32, 2};
         },
         "overflows"},
        {[](gguf_writer& w) { w.find("output_norm.weight").offset = std::uint64_t{1} << 40; }, "truncated: data of"},
        {[](gguf_writer& w) { w.find("output_norm.weight").offset = ~std::uint64_t{0} - 31; }, "overflows"},
        {[](gguf_writer& w) { w.find("output_norm.weight").offset = 4; }, "not a multiple of the alignment"},
        {[](gguf_writer& w) {
             auto& t = w.find("blk.0.attn_q.weight");
             t.type = 9;  // Q8_1: a known layout (range-checked) that no loader decodes
             t.data.assign(32 * 32 / 32 * 40, '\0');
         },
         "unsupported tensor type Q8_1 for blk.0.attn_q.weight"},
        {[](gguf_writer& w) { w.find("blk.1.ffn_up.weight").type = 16; }, "unsupported tensor type IQ2_XXS"},
        {[](gguf_writer& w) { w.find("blk.1.ffn_down.weight").type = 2; }, "block size"},
        {[](gguf_writer& w) { w.erase_tensor("blk.1.ffn_down.weight"); }, "missing tensor 'blk.1.ffn_down.weight'"},
        {[](gguf_writer& w) { w.erase_kv("llama.block_count"); }, "missing metadata key 'llama.block_count'"},
        {[](gguf_writer& w) { w.erase_kv("general.architecture"); }, "general.architecture"},
        {[](gguf_writer& w) {
             w.erase_kv("llama.embedding_length");
             w.kv_str("llama.embedding_length", "32");
         },
         "expected an integer"},
        {[](gguf_writer& w) {
             w.erase_kv("general.architecture");
             w.kv_str("general.architecture", "mamba");
         },
         "architecture 'mamba' is not supported (only 'llama', 'gpt2')"},
        {[](gguf_writer& w) {
             w.find("blk.0.attn_k.weight").dims = {16, 32};
         },
         "blk.0.attn_k.weight' has ggml dims [16, 32]"},
        {[](gguf_writer& w) {
             w.find("blk.1.attn_norm.weight").dims = {32, 1};
         },
         "blk.1.attn_norm.weight"},
        {[](gguf_writer& w) { w.tensors.push_back(w.tensors[3]); }, "duplicate tensor 'blk.0.attn_k.weight'"},
        {[](gguf_writer& w) {
             w.erase_kv("llama.attention.head_count");
             w.kv_u32("llama.attention.head_count", 3);
         },
         "not a multiple of n_heads"},
        {[](gguf_writer& w) { w.kv_u32("llama.rope.dimension_count", 4); }, "partial rotary"},
        {[](gguf_writer& w) { w.kv_u32("llama.vocab_size", 17); }, "llama.vocab_size"},
        {[](gguf_writer& w) {
             w.erase_kv("llama.rope.freq_base");
             w.kv("llama.rope.freq_base", 12, 1e300);
         },
         "not a finite float"},
    };
    for (std::size_t i = 0; i < cases.size(); ++i) {
        gguf_writer w = tiny_llama(0);
        cases[i].first(w);
        INFO("case " << i);
        require_rejected("hostile.gguf", w.bytes(), cases[i].second, load_gguf_file);
    }
    gguf_writer bad_types = tiny_llama(0);
    bad_types.kv_array<std::int32_t>("tokenizer.ggml.token_type", 5, std::vector<std::int32_t>(16, 9));
    require_rejected("bad_vocab.gguf", bad_types.bytes(), "token_type[0] = 9",
                     [](const fs::path& p) { (void)mechlens::load_gguf_vocabulary(p); });
    gguf_writer bad_bos = tiny_llama(0);
    bad_bos.kv_u32("tokenizer.ggml.bos_token_id", 16);
    require_rejected("bad_bos.gguf", bad_bos.bytes(), "bos_token_id = 16",
                     [](const fs::path& p) { (void)mechlens::load_gguf_vocabulary(p); });

    // Truncating a valid synthetic file at every byte of its header, and across its data, is always caught.
    const std::string good = tiny_llama(1).bytes();
    const std::size_t header_end = mechlens::gguf_file(write_scratch("tiny.gguf", good)).data_offset();
    for (std::size_t at = 1; at < good.size(); at += at < header_end ? 1 : 509) {
        const fs::path p = write_scratch("cut_tiny.gguf", good.substr(0, at));
        const std::string e = error_of([&] { (void)mechlens::load_gguf(p); });
        INFO("cut at " << at << ": " << e);
        REQUIRE(e.find(p.string()) != std::string::npos);
    }
}

TEST_CASE("loaders: npy round trips and writes NumPy's exact header", "[loaders]") {
    const fs::path dir = mechlens_test::scratch_dir();
    const std::vector<float> values{1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
    mechlens::write_npy(dir / "loaders_a.npy", values.data(), {2, 3});
    const std::string bytes = read_file_bytes(dir / "loaders_a.npy");
    const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    REQUIRE(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
    const auto header_length = get_raw<std::uint16_t>(bytes, 8);
    REQUIRE((10 + header_length) % 64 == 0);
    REQUIRE(header_length == 118);
    REQUIRE(bytes.substr(10, dict.size()) == dict);
    REQUIRE(bytes.substr(10 + dict.size(), header_length - dict.size() - 1) ==
            std::string(header_length - dict.size() - 1, ' '));
    REQUIRE(bytes[9 + header_length] == '\n');
    REQUIRE(bytes.size() == 10u + header_length + 6u * 4u);
    const auto a = mechlens::read_npy(dir / "loaders_a.npy");
    REQUIRE(a.shape == std::vector<index_t>{2, 3});
    REQUIRE(a.data == values);

    // Strided views are written in logical C order: the transpose of a (2, 3) tensor.
    mechlens::tensor<float, 2> t({2, 3});
    for (index_t i = 0; i < 6; ++i) t.data()[i] = values[static_cast<std::size_t>(i)];
    mechlens::tensor_view<const float, 2> transposed(t.data(), {3, 2}, {1, 3});
    mechlens::write_npy(dir / "loaders_t.npy", transposed);
    const auto tt = mechlens::read_npy(dir / "loaders_t.npy");
    REQUIRE(tt.shape == std::vector<index_t>{3, 2});
    REQUIRE(tt.data == std::vector<float>{1.5f, 0.0f, -2.0f, 1e-30f, 3.25f, -7.0f});

    mechlens::tensor<std::int32_t, 1> ints({5});
    for (index_t i = 0; i < 5; ++i) ints(i) = static_cast<std::int32_t>(i * i) - 3;
    mechlens::write_npy(dir / "loaders_i.npy", ints);
    const std::string ibytes = read_file_bytes(dir / "loaders_i.npy");
    REQUIRE(ibytes.find("{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }") == 10);
    REQUIRE(mechlens::read_npy(dir / "loaders_i.npy").data == std::vector<float>{-3, -2, 1, 6, 13});

    mechlens::write_npy(dir / "loaders_0d.npy", values.data(), {});
    REQUIRE(read_file_bytes(dir / "loaders_0d.npy").find("'shape': (), }") != std::string::npos);
    const auto zero_d = mechlens::read_npy(dir / "loaders_0d.npy");
    REQUIRE((zero_d.shape.empty() && zero_d.data == std::vector<float>{1.5f}));

    // Hand-written files in the other accepted dtypes and versions.
    auto npy = [](std::uint8_t major, const std::string& dict_text, const std::string& data) {
        std::string out("\x93NUMPY", 6);
        out += static_cast<char>(major);
        out += '\0';
        std::string header = dict_text + "\n";
        if (major == 1)
            append_raw<std::uint16_t>(out, static_cast<std::uint16_t>(header.size()));
        else
            append_raw<std::uint32_t>(out, static_cast<std::uint32_t>(header.size()));
        return out + header + data;
    };
    std::string f8, i8;
    for (double d : {0.5, -1.25, 1e10}) append_raw(f8, d);
    for (std::int64_t i : {std::int64_t{-5}, std::int64_t{1} << 40}) append_raw(i8, i);
    const auto r8 = mechlens::read_npy(
        write_scratch("f8.npy", npy(2, "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (3,)}", f8)));
    REQUIRE(r8.data == std::vector<float>{0.5f, -1.25f, 1e10f});
    const auto ri8 = mechlens::read_npy(
        write_scratch("i8.npy", npy(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (1L, 2L), }", i8)));
    REQUIRE(ri8.shape == std::vector<index_t>{1, 2});
    REQUIRE(ri8.data == std::vector<float>{-5.0f, 1099511627776.0f});

    auto read = [](const fs::path& p) { (void)mechlens::read_npy(p); };
    const std::string f4(24, '\0');
    require_rejected("bad1.npy", "\x93NUMPZ" + bytes.substr(6), "bad magic", read);
    require_rejected("bad2.npy", npy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", f4), "dtype '>f4'",
                     read);
    require_rejected("bad3.npy", npy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (6,), }", f4), "dtype '<f2'",
                     read);
    require_rejected("bad4.npy", npy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f4),
                     "fortran_order", read);
    require_rejected("bad5.npy", npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", f4), "truncated",
                     read);
    require_rejected("bad6.npy", npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", f4), "malformed",
                     read);
    require_rejected("bad7.npy", npy(1, "{'descr': '<f4', 'shape': (6,), }", f4), "missing", read);
    require_rejected("bad8.npy", npy(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", f4),
                     "structured", read);
    require_rejected("bad9.npy", npy(4, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", f4), "version 4.0",
                     read);
    require_rejected(
        "bad10.npy",
        npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", f4),
        "overflows", read);
    for (std::size_t at = 6; at < bytes.size(); at += 3)
        require_rejected("cut.npy", bytes.substr(0, at), "truncated", read);
}

TEST_CASE("loaders: every committed NumPy-written fixture reads back", "[loaders]") {
    const fs::path dir = mechlens_test::fixtures_dir();
    MECHLENS_REQUIRE_FILE_OR_SKIP(dir);
    std::size_t files = 0;
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
        if (entry.path().extension() != ".npy") continue;
        const mechlens::npy_array a =
            mechlens::read_npy(entry.path());  // written by numpy.save, growth padding and all
        std::size_t count = 1;
        for (index_t e : a.shape) count *= static_cast<std::size_t>(e);
        REQUIRE(a.data.size() == count);
        ++files;
    }
    REQUIRE(files > 0);
}

// ---- Regressions found while fuzzing the parsers (tests/fuzz, docs/FUZZING.md) ----------------------------------

TEST_CASE("loaders: GGUF tensors that reuse the same bytes cannot multiply the converted memory", "[loaders][fuzz]") {
    // Every F16 tensor info points at data offset 0: a small file whose conversion used to allocate once per
    // tensor. Valid files never overlap, so the loader refuses conversions beyond 8 times the file size (the densest
    // decodable blocks, Q4_0 and Q4_K, become 7.1 times their bytes of floats).
    gguf_writer w = tiny_llama(1);
    for (gguf_writer::tensor& t : w.tensors) t.offset = 0;
    const std::string bytes = w.bytes();
    REQUIRE_NOTHROW(mechlens::gguf_file(write_scratch("alias_f16.gguf", bytes)));  // the container itself is fine
    require_rejected("alias_f16.gguf", bytes, "tensors overlap", load_gguf_file);
    // The same model without aliasing still loads.
    REQUIRE_NOTHROW(load_gguf_file(write_scratch("alias_none.gguf", tiny_llama(1).bytes())));
}

namespace {

// A checkpoint-shaped safetensors file with a tiny config (changed by `overrides`) but almost no parameters.
std::string hostile_checkpoint(const std::map<std::string, std::string>& overrides) {
    std::map<std::string, std::string> meta{
        {"d_model", "4"},   {"n_layers", "1"},      {"n_heads", "2"},          {"n_kv_heads", "1"},
        {"d_mlp", "4"},     {"d_vocab", "4"},       {"n_ctx", "4"},            {"rope_theta", "10000"},
        {"norm_eps", "1e-05"}, {"tied_unembed", "true"}, {"rope", "adjacent_pairs"}, {"norm", "rms"},
        {"positions", "rotary"}, {"mlp", "gated_silu"}};
    for (const auto& [k, v] : overrides) meta[k] = v;
    std::map<std::string, std::string> metadata{{"mechlens.format", "checkpoint"}};
    for (const auto& [k, v] : meta) metadata["mechlens.config." + k] = v;
    const std::vector<float> values(16, 0.5f);
    const fs::path p = mechlens_test::scratch_dir() / "loaders_hostile_checkpoint.safetensors";
    // Four one-float tensors beside the embedding, so the file has as many tensors as one layer needs.
    mechlens::write_safetensors(p,
                                {{"token_embedding", {4, 4}, values.data()},
                                 {"a", {1}, values.data()},
                                 {"b", {1}, values.data()},
                                 {"c", {1}, values.data()},
                                 {"d", {1}, values.data()}},
                                metadata);
    return read_file_bytes(p);
}

void load_checkpoint_file(const fs::path& p) { (void)mechlens::load_checkpoint(p); }

}  // namespace

TEST_CASE("loaders: checkpoint configs larger than the file are rejected before allocating", "[loaders][fuzz]") {
    // d_vocab * d_model = 2^48 floats: model_parameters used to be allocated (std::bad_alloc, or an ASan abort)
    // before any tensor was compared with the config.
    require_rejected("ckpt_huge_dims.safetensors", hostile_checkpoint({{"d_model", "16777216"}, {"d_vocab", "16777216"}}),
                     "the config implies (16777216, 16777216)", load_checkpoint_file);
    // 2^24 layers of tiny tensors: parameter_layout alone built 2^27 entries (gigabytes, seconds).
    require_rejected("ckpt_many_layers.safetensors", hostile_checkpoint({{"n_layers", "16777216"}}), "layers",
                     load_checkpoint_file);
    // The tiny config itself: its first missing tensor is named, still before model_parameters exists.
    require_rejected("ckpt_missing.safetensors", hostile_checkpoint({}), "lacks tensor 'blocks.0.attn_norm'",
                     load_checkpoint_file);
}

TEST_CASE("loaders: safetensors headers with many keys parse in n log n, duplicates still found", "[loaders][fuzz]") {
    // 200000 distinct metadata keys: the old duplicate check compared each key with every earlier one (2e10
    // string comparisons, minutes); sorting makes it a fraction of a second.
    constexpr int n = 200000;
    std::string header = "{\"__metadata__\":{";
    for (int i = 0; i < n; ++i) header += (i ? ",\"" : "\"") + std::to_string(i) + "\":\"\"";
    const auto file = [](std::string text) {
        text += std::string((8 - text.size() % 8) % 8, ' ');
        std::string out;
        append_raw<std::uint64_t>(out, text.size());
        return out + text;
    };
    const mechlens::safetensors_file many = mechlens::read_safetensors(write_scratch("many_keys.safetensors",
                                                                                     file(header + "}}")));
    REQUIRE(many.metadata.size() == static_cast<std::size_t>(n));
    require_rejected("many_keys_dup.safetensors", file(header + ",\"77\":\"x\"}}"), "duplicate key \"77\"",
                     [](const fs::path& p) { (void)mechlens::read_safetensors(p); });
}

TEST_CASE("loaders: safetensors tensors naming the same bytes are rejected before any copy", "[loaders][fuzz]") {
    // 64 tensors of 1 MiB all at data_offsets [0, 1 MiB]: each used to be copied (64 MiB for a 1 MiB file)
    // before the tiling check found the overlap.
    constexpr int tensors = 64;
    constexpr std::size_t floats = std::size_t{1} << 18;
    std::string header = "{";
    for (int i = 0; i < tensors; ++i)
        header += (i ? ",\"t" : "\"t") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[" +
                  std::to_string(floats) + "],\"data_offsets\":[0," + std::to_string(floats * 4) + "]}";
    header += "}";
    std::string bytes;
    append_raw<std::uint64_t>(bytes, header.size());
    bytes += header + std::string(floats * 4, '\0');
    require_rejected("alias.safetensors", bytes, "overlapping tensors",
                     [](const fs::path& p) { (void)mechlens::read_safetensors(p); });
}

TEST_CASE("loaders: in-memory parse_npy and parse_safetensors agree with the file readers", "[loaders][fuzz]") {
    const std::vector<float> values{1.5f, -2.0f, 0.25f, 8.0f, 0.0f, -0.5f};
    const fs::path npy_path = mechlens_test::scratch_dir() / "loaders_parse.npy";
    mechlens::write_npy(npy_path, values.data(), {2, 3});
    const std::string npy_bytes = read_file_bytes(npy_path);
    const mechlens::npy_array a =
        mechlens::parse_npy(reinterpret_cast<const std::byte*>(npy_bytes.data()), npy_bytes.size(), "memory.npy");
    REQUIRE(a.shape == mechlens::read_npy(npy_path).shape);
    REQUIRE(a.data == values);
    const std::string npy_error = error_of([&] {
        (void)mechlens::parse_npy(reinterpret_cast<const std::byte*>(npy_bytes.data()), 9, "memory.npy");
    });
    REQUIRE(npy_error.find("memory.npy") != std::string::npos);

    const fs::path st_path = mechlens_test::scratch_dir() / "loaders_parse.safetensors";
    mechlens::write_safetensors(st_path, {{"w", {3, 2}, values.data()}}, {{"k", "v"}});
    const std::string st_bytes = read_file_bytes(st_path);
    const mechlens::safetensors_file f = mechlens::parse_safetensors(
        reinterpret_cast<const std::byte*>(st_bytes.data()), st_bytes.size(), "memory.safetensors");
    REQUIRE(f.tensors.size() == 1);
    REQUIRE(f.tensors[0].values == values);
    REQUIRE(f.metadata.at("k") == "v");
    const std::string st_error = error_of([&] {
        (void)mechlens::parse_safetensors(reinterpret_cast<const std::byte*>(st_bytes.data()), st_bytes.size() - 1,
                                          "memory.safetensors");
    });
    REQUIRE(st_error.find("memory.safetensors") != std::string::npos);
}

TEST_CASE("loaders: a GGUF block_count beyond the tensors it has is rejected before sizing the layers", "[loaders][fuzz]") {
    // Found by fuzz_gguf: block_count 2949121 made load_gguf resize its layer vector (about 1 GB) before it
    // looked up the first block tensor.
    gguf_writer w = tiny_llama(0);
    w.erase_kv("llama.block_count");
    w.kv_u32("llama.block_count", 2949121);
    require_rejected("many_blocks.gguf", w.bytes(), "llama.block_count = 2949121 needs", load_gguf_file);
    // Exactly enough tensors passes this check, and the missing block tensor is then named.
    gguf_writer three = tiny_llama(0);
    three.erase_kv("llama.block_count");
    three.kv_u32("llama.block_count", 3);
    for (int i = 0; i < 9; ++i) three.tensors.push_back({"pad." + std::to_string(i), {1}, 0, std::string(4, '\0'), {}});
    require_rejected("three_blocks.gguf", three.bytes(), "missing tensor 'blk.2.attn_norm.weight'", load_gguf_file);
}

// ---------------------------------------------------------------------------------------------------------------
// load_model on training checkpoints (save_checkpoint, `mechlens train --out`)

namespace {

// Logits (1, pos, vocab) of `model` on a fixed token sequence within its vocabulary and context.
mechlens::tensor<float, 3> fixed_logits(const mechlens::transformer& model) {
    const mechlens::model_config& c = model.config();
    std::vector<std::int32_t> tokens;
    for (index_t p = 0; p < std::min<index_t>(c.n_ctx, 7); ++p)
        tokens.push_back(static_cast<std::int32_t>((3 * p + 1) % c.d_vocab));
    return mechlens::forward_logits(
        model, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {1, static_cast<index_t>(tokens.size())}));
}

void load_model_file(const fs::path& p) { (void)mechlens::load_model(p); }

}  // namespace

TEST_CASE("loaders: load_model opens training checkpoints, logits bitwise equal to the saved model", "[loaders]") {
    using namespace mechlens;
    model_config llama{16, 2, 4, 2, 24, 37, 32};  // RMSNorm, rotary, gated MLP, GQA
    llama.tied_unembed = false;
    llama.rope = rope_layout::split_halves;
    model_config grown{16, 2, 2, 2, 0, 16, 13};  // what `mechlens train --norm none --positions learned` grows
    grown.norm = norm_kind::none;
    grown.positions = positional_kind::learned;
    grown.mlp = mlp_kind::none;
    grown.tied_unembed = false;
    model_config gpt{8, 1, 2, 1, 32, 11, 9};  // plain GELU MLP, tied unembedding
    gpt.positions = positional_kind::learned;
    gpt.mlp = mlp_kind::plain_gelu;
    std::uint64_t seed = 40;
    for (const model_config& config : {llama, grown, gpt}) {
        const model_parameters params(config, random_model(config, ++seed, 0.5f).weights);
        const fs::path path = mechlens_test::scratch_dir() / ("loaders_ckpt_" + std::to_string(seed) + ".safetensors");
        // One file with the optimizer state too: load_model ignores it.
        if (seed % 2 == 0) {
            adamw optimizer(params.size());
            save_checkpoint(path, params, optimizer, {{"task", "test"}});
        } else {
            save_checkpoint(path, params);
        }
        INFO(path);
        const loaded_model loaded = load_model(path);
        CHECK(loaded.config.d_model == config.d_model);
        CHECK(loaded.config.n_layers == config.n_layers);
        CHECK(loaded.config.d_vocab == config.d_vocab);
        CHECK(loaded.config.n_ctx == config.n_ctx);
        CHECK(loaded.config.norm == config.norm);
        CHECK(loaded.config.positions == config.positions);
        CHECK(loaded.config.mlp == config.mlp);
        CHECK(loaded.config.tied_unembed == config.tied_unembed);
        CHECK(loaded.config.rope == config.rope);
        REQUIRE(loaded.weights.storage != nullptr);
        // The views keep their buffer alive on their own: only `reloaded` holds it from here on.
        const transformer reloaded(load_model(path));
        const tensor<float, 3> want = fixed_logits(transformer(loaded_model{config, params.weights()}));
        const tensor<float, 3> got = fixed_logits(reloaded);
        REQUIRE(got.size() == want.size());
        CHECK(std::memcmp(got.data(), want.data(), static_cast<std::size_t>(got.size()) * sizeof(float)) == 0);
        // The same checkpoint through load_checkpoint_model.
        const tensor<float, 3> direct = fixed_logits(transformer(load_checkpoint_model(path)));
        CHECK(std::memcmp(direct.data(), want.data(), static_cast<std::size_t>(got.size()) * sizeof(float)) == 0);
    }
}

TEST_CASE("loaders: load_model rejects truncated checkpoints and safetensors that are not checkpoints", "[loaders]") {
    using namespace mechlens;
    model_config config{8, 1, 2, 2, 16, 10, 8};
    const model_parameters params(config, random_model(config, 5).weights);
    const fs::path good = mechlens_test::scratch_dir() / "loaders_ckpt_good.safetensors";
    save_checkpoint(good, params);
    const std::string bytes = read_file_bytes(good);
    REQUIRE(sniff_model_format(good) == model_format::checkpoint);
    // The other formats: GGUF magic, and a llama2.c header (dim 64, hidden_dim 172, then 123 = '{' layers).
    const auto sniff = [](const std::string& b) {
        return sniff_model_format(reinterpret_cast<const std::byte*>(b.data()), b.size());
    };
    CHECK(sniff("GGUF") == model_format::gguf);
    std::string llama2c;
    for (const std::int32_t field : {64, 172, 123, 8, 4, 512, 512}) append_raw(llama2c, field);
    CHECK(sniff(llama2c) == model_format::llama2c);
    CHECK(sniff(bytes.substr(0, 9)) == model_format::checkpoint);
    CHECK(sniff(bytes.substr(0, 8)) == model_format::llama2c);

    // Cut anywhere: in the length (read as a llama2.c header, rejected), the JSON header or the tensor data.
    for (const std::size_t keep : {std::size_t{0}, std::size_t{5}, std::size_t{9}, std::size_t{100},
                                   bytes.size() / 2, bytes.size() - 1}) {
        INFO("kept " << keep << " of " << bytes.size() << " bytes");
        require_rejected("ckpt_truncated.safetensors", bytes.substr(0, keep), "", load_model_file);
    }
    // Cut inside the tensor data: the safetensors reader says so, not the llama2.c loader.
    require_rejected("ckpt_truncated.safetensors", bytes.substr(0, bytes.size() - 1), "data bytes", load_model_file);

    // Valid safetensors without the checkpoint metadata, e.g. an activation cache written by `mechlens cache`.
    const std::vector<float> values(12, 0.25f);
    const fs::path cache = mechlens_test::scratch_dir() / "loaders_not_a_checkpoint.safetensors";
    write_safetensors(cache, {{"blocks.0.hook_resid_post", {1, 3, 4}, values.data()}}, {{"format", "mechlens"}});
    const std::string message = error_of([&] { (void)load_model(cache); });
    INFO(message);
    CHECK(message.find(cache.string()) != std::string::npos);
    CHECK(message.find("not a mechlens checkpoint") != std::string::npos);
    CHECK(message.find("lacks mechlens.format") != std::string::npos);
    // A checkpoint marker with another value is named too.
    write_safetensors(cache, {{"x", {3}, values.data()}}, {{"mechlens.format", "cache"}});
    CHECK(error_of([&] { (void)load_model(cache); }).find("mechlens.format is 'cache'") != std::string::npos);
    // A checkpoint whose tensors do not match its config: the same checks as load_checkpoint.
    std::map<std::string, std::string> metadata = read_safetensors(good).metadata;
    metadata["mechlens.config.d_vocab"] = "11";
    std::vector<safetensors_tensor_ref> tensors;
    for (const parameter_entry& e : params.layout())
        tensors.push_back({e.name,
                           e.rank == 2 ? std::vector<index_t>{e.shape[0], e.shape[1]} : std::vector<index_t>{e.shape[0]},
                           params.flat().data() + e.offset});
    const fs::path mismatched = mechlens_test::scratch_dir() / "loaders_ckpt_mismatched.safetensors";
    write_safetensors(mismatched, tensors, metadata);
    CHECK(error_of([&] { (void)load_model(mismatched); }).find("tensor 'token_embedding' has shape (10, 8)") !=
          std::string::npos);
}


// ---- Quantised GGUF tensors (io/ggml_quants.hpp) -----------------------------------------------------------------

TEST_CASE("loaders: GGUF quantised blocks decode bit for bit as llama.cpp's gguf-py decodes them", "[loaders][quant]") {
    // tests/reference/ggml_quants_reference.py: random blocks of every type (finite scales) beside the values
    // gguf-py's dequantize() gives, which that script's own decoder, written from the layouts, matched bit for bit.
    const mechlens::gguf_file g(mechlens_test::fixtures_dir() / "ggml_quants" / "blocks.gguf");
    std::size_t checked = 0;
    for (const char* name : {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}) {
        INFO(name);
        const mechlens::gguf_tensor_info& blocks = g.tensor(std::string(name) + ".blocks");
        const mechlens::gguf_tensor_info& values = g.tensor(std::string(name) + ".values");
        REQUIRE(mechlens::to_string(blocks.type) == name);
        REQUIRE(mechlens::ggml_type_decodable(blocks.type));
        REQUIRE(values.type == mechlens::ggml_type::f32);
        REQUIRE(blocks.n_elements == values.n_elements);
        std::vector<float> decoded(blocks.n_elements, -1.0f), expected(values.n_elements);
        mechlens::dequantize_ggml(blocks.type, g.tensor_data(blocks), blocks.n_elements, decoded.data());
        std::memcpy(expected.data(), g.tensor_data(values), expected.size() * sizeof(float));
        std::size_t differing = 0;
        for (std::size_t i = 0; i < decoded.size(); ++i)
            if (std::bit_cast<std::uint32_t>(decoded[i]) != std::bit_cast<std::uint32_t>(expected[i])) ++differing;
        CHECK(differing == 0);
        checked += decoded.size();
    }
    CHECK(checked == 10 * 1024);

    // Partial blocks and types without a decoder are refused, naming the type.
    const mechlens::gguf_tensor_info& q4k = g.tensor("Q4_K.blocks");
    std::vector<float> out(1024);
    CHECK_THROWS_WITH(mechlens::dequantize_ggml(q4k.type, g.tensor_data(q4k), 255, out.data()),
                      Catch::Contains("not whole blocks of 256"));
    CHECK_THROWS_WITH(mechlens::dequantize_ggml(static_cast<mechlens::ggml_type>(10), g.tensor_data(q4k), 256,
                                                out.data()),
                      Catch::Contains("Q2_K is not decodable"));
}

TEST_CASE("loaders: a GGUF model with Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and BF16 weights runs as its decoded F32 twin",
          "[loaders][quant]") {
    // The same tiny LLaMA twice: once with each matrix stored in a quantised type (random blocks, finite scales),
    // once with those matrices stored as the F32 values they decode to. Every hook site and the logits must agree
    // bit for bit: the loader puts each decoded tensor where the F32 one goes.
    const std::uint32_t types[] = {8, 2, 3, 6, 7, 30};
    gguf_writer quantised = tiny_llama(0), decoded = tiny_llama(0);
    std::mt19937_64 rng(42);
    std::size_t matrix = 0;
    for (std::size_t i = 0; i < quantised.tensors.size(); ++i) {
        gguf_writer::tensor& q = quantised.tensors[i];
        if (q.dims.size() != 2) continue;  // norms stay F32, as llama.cpp's quantiser leaves them
        auto type = static_cast<mechlens::ggml_type>(types[matrix++ % std::size(types)]);
        if (q.dims[0] % 32 != 0) type = mechlens::ggml_type::bf16;  // ffn_down's rows of 48 are not whole blocks
        const auto [per_block, bytes] = mechlens::detail::ggml_block_layout(type);
        const std::uint64_t count = q.dims[0] * q.dims[1];
        q.type = static_cast<std::uint32_t>(type);
        q.data.assign(count / per_block * bytes, '\0');
        for (char& c : q.data) c = static_cast<char>(rng() & 0xFFu);
        for (std::uint64_t b = 0; b < count / per_block; ++b) {
            if (type == mechlens::ggml_type::bf16) {  // an exponent well inside the finite range
                q.data[2 * b + 1] = static_cast<char>((q.data[2 * b + 1] & 0x80) | 0x3E);
                continue;
            }
            const int halves = (type == mechlens::ggml_type::q4_1 || type == mechlens::ggml_type::q5_1) ? 2 : 1;
            for (int h = 0; h < halves; ++h) {  // a scale of about 2^-7: finite, and the logits stay moderate
                const std::size_t at = b * bytes + 2 * static_cast<std::size_t>(h);
                q.data[at + 1] = static_cast<char>((q.data[at + 1] & 0x83) | 0x20);
            }
        }
        std::vector<float> values(count);
        mechlens::dequantize_ggml(type, reinterpret_cast<const std::byte*>(q.data.data()), count, values.data());
        gguf_writer::tensor& f = decoded.tensors[i];
        f.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
    }
    REQUIRE(matrix == 1 + 2 * 7);
    const auto quantised_model = mechlens::load_model(write_scratch("tiny_quantised.gguf", quantised.bytes()));
    const auto decoded_model = mechlens::load_model(write_scratch("tiny_decoded.gguf", decoded.bytes()));
    const mechlens::transformer a(quantised_model), b(decoded_model);
    mechlens::tensor<std::int32_t, 2> tokens({2, 6});
    for (index_t i = 0; i < 12; ++i) tokens.data()[i] = static_cast<std::int32_t>((i * 5 + 1) % 16);
    mechlens::caching_hooks<> hooks_a, hooks_b;
    const auto logits_a = mechlens::forward_logits(a, tokens.view(), hooks_a);
    const auto logits_b = mechlens::forward_logits(b, tokens.view(), hooks_b);
    const mechlens::activation_cache cache_a = hooks_a.take(), cache_b = hooks_b.take();
    REQUIRE(logits_a.size() == logits_b.size());
    bool all_finite = true;
    for (index_t i = 0; i < logits_a.size(); ++i) {
        REQUIRE(std::bit_cast<std::uint32_t>(logits_a.data()[i]) == std::bit_cast<std::uint32_t>(logits_b.data()[i]));
        all_finite = all_finite && std::isfinite(logits_a.data()[i]);
    }
    CHECK(all_finite);
    REQUIRE(cache_a.sites() == cache_b.sites());
    REQUIRE(cache_a.size() > 20u);
    for (const mechlens::site& where : cache_a.sites()) {
        INFO(mechlens::to_string(where));
        const auto& x = cache_a.at(where).values;
        const auto& y = cache_b.at(where).values;
        REQUIRE(x.size() == y.size());
        CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
    }
    // The F32 twin views its mapping. Of the 15 quantised matrices, the Q8_0 ones (every sixth) are multiplied by
    // their blocks and their floats reserved to be decoded when read; the others are decoded into owned buffers.
    REQUIRE(quantised_model.weights.on_demand != nullptr);
    CHECK(quantised_model.weights.on_demand->size() == 3u);
    CHECK(quantised_model.weights.encoded.size() == 3u);
    CHECK(mechlens::loader_storage_of(quantised_model.weights)->converted.size() == 12u);
    CHECK(decoded_model.weights.on_demand == nullptr);
}

// ---- Encoding: float to half, Q8_0, and quantising a GGUF model (io/gguf_quantize.hpp) ---------------------------

TEST_CASE("loaders: float_to_half rounds every binary16 value, midpoint and overflow as IEEE round-to-nearest-even",
          "[loaders][quant]") {
    using mechlens::detail::float_to_half;
    using mechlens::detail::half_to_float;
    std::size_t round_trips = 0, ties = 0;
    for (std::uint32_t h = 0; h < 0x10000u; ++h) {
        const auto bits = static_cast<std::uint16_t>(h);
        if ((bits & 0x7c00u) == 0x7c00u && (bits & 0x3ffu) != 0) {  // NaN: stays NaN
            REQUIRE(std::isnan(half_to_float(float_to_half(half_to_float(bits)))));
            continue;
        }
        REQUIRE(float_to_half(half_to_float(bits)) == bits);
        ++round_trips;
        // Between this finite half and the next one up in magnitude: the midpoint goes to the even one, anything
        // off the midpoint to the nearer one (midpoints are exact in float: halves have 11 significant bits).
        if ((bits & 0x7fffu) >= 0x7bffu) continue;
        const auto up = static_cast<std::uint16_t>(bits + 1);
        const float low = half_to_float(bits), high = half_to_float(up);
        const float middle = low + (high - low) * 0.5f;
        REQUIRE(float_to_half(middle) == ((bits & 1u) == 0 ? bits : up));
        REQUIRE(float_to_half(std::nextafter(middle, low)) == bits);
        REQUIRE(float_to_half(std::nextafter(middle, high)) == up);
        ++ties;
    }
    CHECK(round_trips == 63490u);  // 65536 less 2 x 1023 NaNs
    CHECK(ties == 63486u);     // the finite ones below the largest, 0x7bff, of either sign
    CHECK(float_to_half(65519.996f) == 0x7bffu);  // below the midpoint 65520: the largest finite half
    CHECK(float_to_half(65520.0f) == 0x7c00u);     // the midpoint rounds to even, which is infinity
    CHECK(float_to_half(-1e30f) == 0xfc00u);
    CHECK(float_to_half(0x1p-25f) == 0x0000u);     // half the smallest subnormal: ties to zero
    CHECK(float_to_half(std::nextafter(0x1p-25f, 1.0f)) == 0x0001u);
    CHECK(float_to_half(-0x1p-26f) == 0x8000u);
    CHECK(std::isnan(half_to_float(float_to_half(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("loaders: quantize_q8_0 encodes bit for bit as llama.cpp's reference quantiser", "[loaders][quant]") {
    // tests/reference/ggml_quants_reference.py: floats (zeros, a lone value, ties, scales 1e-6 to 1e3) beside the
    // blocks gguf-py's quantize() makes of them, matched bit for bit by that script's own quantiser.
    const mechlens::gguf_file g(mechlens_test::fixtures_dir() / "ggml_quants" / "blocks.gguf");
    const mechlens::gguf_tensor_info& source = g.tensor("Q8_0.source");
    const mechlens::gguf_tensor_info& encoded = g.tensor("Q8_0.encoded");
    REQUIRE(source.type == mechlens::ggml_type::f32);
    REQUIRE(encoded.type == mechlens::ggml_type::q8_0);
    REQUIRE(source.n_elements == 1024u);
    std::vector<float> values(source.n_elements);
    std::memcpy(values.data(), g.tensor_data(source), values.size() * sizeof(float));
    REQUIRE(mechlens::ggml_encoded_bytes(mechlens::ggml_type::q8_0, values.size()) == encoded.n_bytes);
    std::vector<std::byte> mine(encoded.n_bytes, std::byte{0xAA});
    mechlens::quantize_q8_0(values.data(), values.size(), mine.data());
    std::size_t differing_blocks = 0;
    for (std::size_t b = 0; b < mine.size() / 34; ++b)
        differing_blocks += std::memcmp(mine.data() + 34 * b, g.tensor_data(encoded) + 34 * b, 34) != 0;
    CHECK(differing_blocks == 0);
    // Decoding gives each value back to within half a step of its block (d / 2, d = max|x| / 127 as a half).
    std::vector<float> decoded(values.size());
    mechlens::dequantize_ggml(mechlens::ggml_type::q8_0, mine.data(), values.size(), decoded.data());
    for (std::size_t b = 0; b < values.size() / 32; ++b) {
        float amax = 0.0f;
        for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(values[32 * b + j]));
        const float d = mechlens::detail::ggml_half_at(mine.data() + 34 * b);
        for (std::size_t j = 0; j < 32; ++j) {
            INFO("block " << b << " element " << j);
            // Half of a step, plus the error of d's own rounding to a half carried by |q| <= 127 steps.
            CHECK(std::fabs(decoded[32 * b + j] - values[32 * b + j]) <=
                  0.5f * d + 127.0f * std::fabs(d - amax / 127.0f) + 1e-30f);
        }
    }
    // Partial blocks and non-finite values are refused before anything is written.
    std::vector<std::byte> untouched(34, std::byte{0x55});
    CHECK_THROWS_WITH(mechlens::quantize_q8_0(values.data(), 31, untouched.data()),
                      Catch::Contains("not whole blocks of 32"));
    std::vector<float> with_nan(values.begin(), values.begin() + 32);
    with_nan[5] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(mechlens::quantize_q8_0(with_nan.data(), 32, untouched.data()),
                      Catch::Contains("value 5 is not finite"));
    CHECK(std::all_of(untouched.begin(), untouched.end(), [](std::byte b) { return b == std::byte{0x55}; }));
}

TEST_CASE("loaders: quantize_gguf stores a model's matrices as Q8_0 as llama-quantize does, and the file opens",
          "[loaders][quant]") {
    const fs::path f32_path = write_scratch("tiny_for_q8.gguf", tiny_llama(0).bytes());
    const fs::path q8_path = mechlens_test::scratch_dir() / "loaders_tiny_q8.gguf";
    fs::remove(q8_path);
    std::size_t progress_calls = 0;
    const mechlens::gguf_quantize_report report =
        mechlens::quantize_gguf(f32_path, q8_path, [&](const mechlens::gguf_quantized_tensor&) { ++progress_calls; });
    const mechlens::gguf_file in(f32_path), out(q8_path);
    REQUIRE(report.tensors.size() == in.tensors().size());
    CHECK(progress_calls == in.tensors().size());
    // Metadata: everything copied, with the file type of a mostly-Q8_0 file and ggml's quantisation version.
    CHECK(out.get_int("general.file_type") == 7);
    CHECK(out.get_int("general.quantization_version") == 2);
    CHECK(out.metadata().size() == in.metadata().size() + 2);
    for (const auto& [key, value] : in.metadata()) {
        INFO(key);
        REQUIRE(out.find(key) != nullptr);
        CHECK(out.at(key).type() == value.type());
        std::string written, read;
        mechlens::detail::append_gguf_payload(written, value, value.type());
        mechlens::detail::append_gguf_payload(read, out.at(key), out.at(key).type());
        CHECK(written == read);
    }
    // Tensors: the matrices with rows of whole blocks become Q8_0 (the embedding and every projection but ffn_down),
    // ffn_down's rows of 48 become F16, the norms stay F32 byte for byte.
    std::size_t q8 = 0, f16 = 0, kept = 0;
    std::uint64_t bytes_out = 0;
    for (std::size_t i = 0; i < in.tensors().size(); ++i) {
        const mechlens::gguf_tensor_info& a = in.tensors()[i];
        const mechlens::gguf_tensor_info& b = out.tensors()[i];
        INFO(a.name);
        REQUIRE(b.name == a.name);
        REQUIRE(b.dims == a.dims);
        CHECK(report.tensors[i].to == b.type);
        bytes_out += b.n_bytes;
        std::vector<float> values(a.n_elements);
        std::memcpy(values.data(), in.tensor_data(a), values.size() * sizeof(float));
        if (a.dims.size() == 1) {
            CHECK(b.type == mechlens::ggml_type::f32);
            CHECK(std::memcmp(in.tensor_data(a), out.tensor_data(b), a.n_bytes) == 0);
            CHECK(report.tensors[i].why == "1-D");
            ++kept;
        } else if (a.dims[0] % 32 != 0) {
            CHECK(b.type == mechlens::ggml_type::f16);
            CHECK(report.tensors[i].why == "rows of 48 are not whole blocks of 32");
            std::vector<float> back(values.size());
            mechlens::dequantize_ggml(b.type, out.tensor_data(b), b.n_elements, back.data());
            CHECK(back == values);  // the synthetic values are exact in binary16
            ++f16;
        } else {
            CHECK(b.type == mechlens::ggml_type::q8_0);
            CHECK(report.tensors[i].why.empty());
            std::vector<std::byte> expected(b.n_bytes);
            mechlens::quantize_q8_0(values.data(), values.size(), expected.data());
            CHECK(std::memcmp(expected.data(), out.tensor_data(b), b.n_bytes) == 0);
            ++q8;
        }
    }
    CHECK(q8 == 13u);
    CHECK(f16 == 2u);
    CHECK(kept == 5u);
    CHECK(report.bytes_out == bytes_out);
    CHECK(report.bytes_in > 3 * report.bytes_out);

    // The file opens as a model, and runs bit for bit as an F32 file of the values its blocks decode to (written by
    // write_gguf with the same metadata): what quantize_gguf wrote is what the loader reads.
    std::vector<std::vector<float>> decoded_values;
    std::vector<mechlens::gguf_tensor_to_write> decoded_tensors;
    for (const mechlens::gguf_tensor_info& t : out.tensors()) {
        decoded_values.emplace_back(t.n_elements);
        mechlens::dequantize_ggml(t.type, out.tensor_data(t), t.n_elements, decoded_values.back().data());
    }
    for (std::size_t i = 0; i < out.tensors().size(); ++i)
        decoded_tensors.push_back({out.tensors()[i].name, out.tensors()[i].dims, decoded_values[i],
                                   mechlens::ggml_type::f32, {}});
    std::vector<std::pair<std::string, mechlens::gguf_value>> metadata(out.metadata().begin(), out.metadata().end());
    const fs::path twin_path = mechlens_test::scratch_dir() / "loaders_tiny_q8_decoded.gguf";
    mechlens::write_gguf(twin_path, metadata, decoded_tensors);
    const mechlens::transformer q8_model(mechlens::load_model(q8_path)), twin(mechlens::load_model(twin_path)),
        f32_model(mechlens::load_model(f32_path));
    mechlens::tensor<std::int32_t, 2> tokens({2, 6});
    for (index_t i = 0; i < 12; ++i) tokens.data()[i] = static_cast<std::int32_t>((i * 5 + 1) % 16);
    const auto from_q8 = mechlens::forward_logits(q8_model, tokens.view());
    const auto from_twin = mechlens::forward_logits(twin, tokens.view());
    const auto from_f32 = mechlens::forward_logits(f32_model, tokens.view());
    REQUIRE(from_q8.size() == from_twin.size());
    CHECK(std::memcmp(from_q8.data(), from_twin.data(), static_cast<std::size_t>(from_q8.size()) * sizeof(float)) ==
          0);
    CHECK(std::memcmp(from_q8.data(), from_f32.data(), static_cast<std::size_t>(from_q8.size()) * sizeof(float)) !=
          0);  // Q8_0 did round something

    // Refusals: the output is the input; a file that is not GGUF; nothing is written for either.
    CHECK_THROWS_WITH(mechlens::quantize_gguf(f32_path, f32_path), Catch::Contains("is the input file"));
    CHECK(read_file_bytes(f32_path) == tiny_llama(0).bytes());
    const fs::path not_gguf = write_scratch("not_a_model.gguf", "GGUF but truncated");
    const fs::path never = mechlens_test::scratch_dir() / "loaders_never_q8.gguf";
    fs::remove(never);
    CHECK_THROWS_AS(mechlens::quantize_gguf(not_gguf, never), mechlens::format_error);
    CHECK_FALSE(fs::exists(never));
    // A weight that is not finite: Q8_0 cannot store it; the tensor is named and nothing is written.
    gguf_writer with_inf = tiny_llama(0);
    with_inf.tensors[2].data.replace(8, 4, std::string("\x00\x00\x80\x7f", 4));
    const fs::path inf_path = write_scratch("tiny_inf.gguf", with_inf.bytes());
    CHECK_THROWS_WITH(mechlens::quantize_gguf(inf_path, never),
                      Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("value 2 is not finite"));
    CHECK_FALSE(fs::exists(never));
    // A directory that does not exist: format_error naming the path. An existing file is replaced only once the
    // new one is complete, and no partial file stays behind.
    const fs::path nowhere = mechlens_test::scratch_dir() / "no_such_directory" / "q8.gguf";
    CHECK_THROWS_WITH(mechlens::quantize_gguf(f32_path, nowhere),
                      Catch::Contains(nowhere.string()) && Catch::Contains("cannot open for writing"));
    const std::string before = read_file_bytes(q8_path);
    (void)mechlens::quantize_gguf(f32_path, q8_path);
    CHECK(read_file_bytes(q8_path) == before);
    CHECK_FALSE(fs::exists(q8_path.string() + ".partial"));
}

TEST_CASE("loaders: quantize_gguf writes the tensors and keys llama.cpp's llama-quantize writes, byte for byte",
          "[loaders][quant]") {
    // tests/reference/gguf_quantize_reference.py: a small random LLaMA (rows of whole blocks, per-row scales over
    // three decades) and what llama.cpp's `llama-quantize IN OUT Q8_0` (c392e50) made of it.
    const fs::path fixtures = mechlens_test::fixtures_dir() / "ggml_quants";
    const fs::path mine = mechlens_test::scratch_dir() / "loaders_tiny_llama_q8_0.gguf";
    fs::remove(mine);
    (void)mechlens::quantize_gguf(fixtures / "tiny_llama_f32.gguf", mine);
    const mechlens::gguf_file ours(mine), theirs(fixtures / "tiny_llama_q8_0.gguf");
    REQUIRE(ours.tensors().size() == theirs.tensors().size());
    std::size_t q8 = 0;
    for (const mechlens::gguf_tensor_info& t : theirs.tensors()) {
        INFO(t.name);
        const mechlens::gguf_tensor_info* o = ours.find_tensor(t.name);
        REQUIRE(o != nullptr);
        CHECK(o->type == t.type);
        CHECK(o->dims == t.dims);
        REQUIRE(o->n_bytes == t.n_bytes);
        CHECK(std::memcmp(ours.tensor_data(*o), theirs.tensor_data(t), t.n_bytes) == 0);
        q8 += t.type == mechlens::ggml_type::q8_0;
    }
    CHECK(q8 == 9u);  // every matrix; the three norms stay F32
    REQUIRE(ours.metadata().size() == theirs.metadata().size());
    for (const auto& [key, value] : theirs.metadata()) {
        INFO(key);
        REQUIRE(ours.find(key) != nullptr);
        std::string a, b;
        mechlens::detail::append_gguf_payload(a, ours.at(key), ours.at(key).type());
        mechlens::detail::append_gguf_payload(b, value, value.type());
        CHECK(a == b);
    }
}

TEST_CASE("loaders: stories260K quantised to Q8_0 continues the story as the F32 model does", "[loaders][quant]") {
    const fs::path f32_path = mechlens_test::model_file("stories260K/stories260K.gguf");
    MECHLENS_REQUIRE_FILE_OR_SKIP(f32_path);
    const fs::path q8_path = mechlens_test::scratch_dir() / "loaders_stories260K_q8_0.gguf";
    fs::remove(q8_path);
    const mechlens::gguf_quantize_report report = mechlens::quantize_gguf(f32_path, q8_path);
    std::size_t q8 = 0, f16 = 0;
    for (const mechlens::gguf_quantized_tensor& t : report.tensors) {
        q8 += t.to == mechlens::ggml_type::q8_0;
        f16 += t.to == mechlens::ggml_type::f16;
    }
    CHECK(q8 == 32u);  // token_embd, output, and per layer wq, wk, wv, wo, w1, w3
    CHECK(f16 == 5u);  // ffn_down: rows of 172
    const mechlens::transformer f32_model(mechlens::load_model(f32_path)), q8_model(mechlens::load_model(q8_path));
    const std::vector<std::int32_t> prompt{1, 403, 407, 261, 378};  // "Once upon a time"
    mechlens::generation_options options;
    options.max_new_tokens = 30;
    const auto expected = mechlens::generate(f32_model, prompt, options, [](std::int32_t) {});
    const auto got = mechlens::generate(q8_model, prompt, options, [](std::int32_t) {});
    CHECK(got == expected);
    // The logits along that story: Q8_0's rounding moves them by a small fraction of their spread.
    std::vector<std::int32_t> story = prompt;
    story.insert(story.end(), expected.begin(), expected.end());
    const mechlens::tensor_view<const std::int32_t, 2> batch(story.data(), {1, static_cast<index_t>(story.size())});
    const auto exact = mechlens::forward_logits(f32_model, batch);
    const auto approximate = mechlens::forward_logits(q8_model, batch);
    double spread = 0.0, worst = 0.0, squared = 0.0;
    for (index_t i = 0; i < exact.size(); ++i) {
        const double difference = static_cast<double>(exact.data()[i]) - static_cast<double>(approximate.data()[i]);
        spread = std::max(spread, std::fabs(static_cast<double>(exact.data()[i])));
        worst = std::max(worst, std::fabs(difference));
        squared += difference * difference;
    }
    WARN("stories260K Q8_0 vs F32 logits over " << story.size() << " positions: max |difference| " << worst
                                                 << ", rms " << std::sqrt(squared / static_cast<double>(exact.size()))
                                                 << ", max |logit| " << spread);
}

TEST_CASE("loaders: a Q8_0 model decodes from its blocks with the bits of its decoded floats, hooks and cache included",
          "[loaders][quant]") {
    const fs::path f32_path = mechlens_test::model_file("stories260K/stories260K.gguf");
    MECHLENS_REQUIRE_FILE_OR_SKIP(f32_path);
    const fs::path q8_path = quantised_scratch(f32_path, "stories260K_q8_0_blocks.gguf");
    mechlens::loaded_model loaded = mechlens::load_model(q8_path);
    // Every Q8_0 matrix keeps its blocks: token_embd, output, and per layer wq, wk, wv, wo, w1, w3 (w2 is F16).
    REQUIRE(loaded.weights.encoded.size() == 32u);
    const auto& layer0 = loaded.weights.layers[0];
    const auto w_q = mechlens::encoded_blocks_of(loaded.weights, layer0.w_q);
    REQUIRE(w_q.has_value());
    CHECK(w_q->format == mechlens::kernels::block_format::q8_0);
    CHECK(w_q->rows == 64);
    CHECK_FALSE(mechlens::encoded_blocks_of(loaded.weights, layer0.w_down).has_value());
    // Rows of a matrix have the blocks of those rows; a copy of the floats has none.
    const auto some_rows = mechlens::encoded_blocks_of(loaded.weights, layer0.w_q.slice(0, 8, 24));
    REQUIRE(some_rows.has_value());
    CHECK(some_rows->rows == 16);
    CHECK(some_rows->blocks == w_q->blocks + 8 * w_q->row_bytes);
    mechlens::tensor<float, 2> copy({layer0.w_q.extent(0), layer0.w_q.extent(1)});
    // The floats of a matrix kept as blocks are read through readable(), which decodes that matrix alone.
    REQUIRE(loaded.weights.on_demand != nullptr);
    CHECK(loaded.weights.on_demand->decoded_bytes() == 0u);
    std::copy_n(mechlens::readable(loaded.weights, layer0.w_q).data(), copy.size(), copy.data());
    CHECK(loaded.weights.on_demand->decoded_bytes() == static_cast<std::size_t>(layer0.w_q.size()) * sizeof(float));
    CHECK_FALSE(mechlens::encoded_blocks_of(loaded.weights, copy.view()).has_value());
    CHECK_FALSE(mechlens::encoded_blocks_of(loaded.weights, layer0.w_q.slice(1, 0, 32)).has_value());

    // The same model without its blocks: every product on the decoded floats. And one whose blocks are zeros in
    // place of the file's: if decoding really reads the blocks, its logits must differ.
    mechlens::loaded_model floats_only = mechlens::load_model(q8_path), zero_blocks = loaded;
    mechlens::decode_all_floats(floats_only.weights);
    floats_only.weights.encoded.clear();
    std::vector<std::vector<std::byte>> zeros;
    for (mechlens::kernels::encoded_matrix& m : zero_blocks.weights.encoded) {
        zeros.emplace_back(static_cast<std::size_t>(m.rows) * m.row_bytes, std::byte{0});
        m.blocks = zeros.back().data();
    }
    const mechlens::transformer blocks_model(std::move(loaded)), floats_model(std::move(floats_only)),
        zeros_model(std::move(zero_blocks));
    // A prompt, then token by token through the KV cache (one row per product: the blocks' kernel), caching every
    // site: logits and every cached activation have the same bits.
    const std::vector<std::int32_t> story{1, 403, 407, 261, 378, 430, 271, 263, 412, 267, 445, 260, 300};
    const auto run = [&](const mechlens::transformer& model, mechlens::activation_cache& cache) {
        const mechlens::model_config& c = model.config();
        mechlens::kv_cache kv(c, 1, static_cast<index_t>(story.size()));
        mechlens::workspace ws;
        mechlens::caching_hooks<> hooks;
        std::vector<float> all_logits;
        mechlens::tensor<float, 3> logits({1, 1, c.vocab_out()});
        for (std::size_t t = 0; t < story.size(); ++t) {
            const mechlens::tensor_view<const std::int32_t, 2> token(&story[t], {1, 1});
            mechlens::forward(model, token, kv, logits.view(), ws, hooks);
            all_logits.insert(all_logits.end(), logits.data(), logits.data() + logits.size());
        }
        cache = hooks.take();
        return all_logits;
    };
    mechlens::activation_cache from_blocks, from_floats, from_zeros;
    const std::vector<float> logits_blocks = run(blocks_model, from_blocks);
    const std::vector<float> logits_floats = run(floats_model, from_floats);
    const std::vector<float> logits_zeros = run(zeros_model, from_zeros);
    CHECK(logits_zeros != logits_floats);
    REQUIRE(logits_blocks.size() == logits_floats.size());
    CHECK(std::memcmp(logits_blocks.data(), logits_floats.data(), logits_blocks.size() * sizeof(float)) == 0);
    REQUIRE(from_blocks.size() == from_floats.size());
    REQUIRE(from_blocks.size() > 50u);
    for (const mechlens::site& s : from_floats.sites()) {
        INFO(mechlens::to_string(s));
        const mechlens::cached_activation& a = from_blocks.at(s);
        const mechlens::cached_activation& b = from_floats.at(s);
        REQUIRE(a.shape == b.shape);
        CHECK(std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0);
    }
    // Caching every default site decoded no float copy (the embedding rows came from the blocks too): only the
    // W_Q read through readable() above is decoded. The per-head results (hook_result) slice W_O by columns, across
    // its blocks: caching them decodes each block's W_O and nothing else, with the same bits as the floats model.
    const std::size_t w_q_bytes = static_cast<std::size_t>(layer0.w_q.size()) * sizeof(float);
    CHECK(blocks_model.stored_weights().on_demand->decoded_bytes() == w_q_bytes);
    std::size_t w_o_bytes = 0;
    for (const auto& layer : blocks_model.stored_weights().layers)
        w_o_bytes += static_cast<std::size_t>(layer.w_o.size()) * sizeof(float);
    const auto head_results = [&](const mechlens::transformer& model) {
        mechlens::caching_hooks<mechlens::kind_set::all()> hooks;
        const mechlens::tensor_view<const std::int32_t, 2> prompt(story.data(), {1, 6});
        (void)mechlens::forward_logits(model, prompt, hooks);
        return hooks.take().at(mechlens::site{mechlens::site_kind::attn_result, 3}).values;
    };
    CHECK(head_results(blocks_model) == head_results(floats_model));
    CHECK(blocks_model.stored_weights().on_demand->decoded_bytes() == w_q_bytes + w_o_bytes);
    // And a steered decode (an intervention at a site between two encoded products) stays identical too.
    const auto steered = [&](const mechlens::transformer& model) {
        mechlens::generation_options options;
        options.max_new_tokens = 12;
        mechlens::steer_hooks<mechlens::kind_set::of({mechlens::site_kind::resid_mid})> hooks;
        std::vector<float> direction(static_cast<std::size_t>(model.config().d_model));
        for (std::size_t i = 0; i < direction.size(); ++i) direction[i] = std::sin(0.37f * static_cast<float>(i));
        hooks.add(mechlens::site{mechlens::site_kind::resid_mid, 2}, direction, 4.0f);
        const std::vector<std::int32_t> prompt(story.begin(), story.begin() + 5);
        return mechlens::generate(model, prompt, options, [](std::int32_t) {}, hooks);
    };
    CHECK(steered(blocks_model) == steered(floats_model));
}

TEST_CASE("loaders: a quantised model's floats are decoded only when something reads them as floats",
          "[loaders][quant]") {
    const fs::path f32_path = mechlens_test::model_file("stories260K/stories260K.gguf");
    MECHLENS_REQUIRE_FILE_OR_SKIP(f32_path);
    const fs::path q8_path = quantised_scratch(f32_path, "stories260K_q8_0_on_demand.gguf");
    const mechlens::transformer model(mechlens::load_model(q8_path));
    const mechlens::decoded_on_demand& on_demand = *model.stored_weights().on_demand;
    REQUIRE(on_demand.size() == 32u);  // token_embd, output, and per layer wq, wk, wv, wo, w1, w3
    const mechlens::model_config& c = model.config();
    const std::size_t matrix_floats = 2 * static_cast<std::size_t>(c.d_vocab * c.d_model) +
                                      static_cast<std::size_t>(c.n_layers) *
                                          static_cast<std::size_t>(2 * 64 * 64 + 2 * 32 * 64 + 2 * c.d_mlp * 64);
    CHECK(on_demand.reserved_bytes() == matrix_floats * sizeof(float));

    // A prefill (many rows: blocks of w decoded into a cache-sized buffer), a generation through the KV cache (one
    // row: decoded in registers) and a model_parameters copy (decoded row by row into the copy) decode no float copy.
    const std::vector<std::int32_t> prompt{1, 403, 407, 261, 378};  // "Once upon a time"
    const mechlens::tensor_view<const std::int32_t, 2> batch(prompt.data(), {1, 5});
    const auto prefill = mechlens::forward_logits(model, batch);
    mechlens::generation_options options;
    options.max_new_tokens = 8;
    const auto story = mechlens::generate(model, prompt, options, [](std::int32_t) {});
    CHECK(story.size() == 8u);
    const mechlens::model_parameters copy(c, model.stored_weights());
    // An activation-patching sweep with a logit-difference metric: its answer logits come from the unembedding's
    // blocks (rows of it), not from decoded floats.
    const std::vector<std::int32_t> corrupt_prompt{1, 403, 407, 261, 300};
    const mechlens::tensor_view<const std::int32_t, 2> corrupt(corrupt_prompt.data(), {1, 5});
    mechlens::activation_patcher patcher(model, batch, corrupt,
                                         mechlens::answer_metric::logit_difference({story[0]}, {story[1]}));
    const mechlens::patching_table swept =
        patcher.sweep(mechlens::patching_grid::by_layer_position(mechlens::site_kind::resid_pre));
    CHECK(on_demand.decoded_bytes() == 0u);
    // The logit lens reads W_U element by element, as floats: that one matrix is decoded, and nothing else.
    mechlens::tensor<float, 3> resid({1, 1, c.d_model});
    resid.fill(0.5f);
    (void)mechlens::unembed_residual(model, resid.view());
    CHECK(on_demand.decoded_bytes() == static_cast<std::size_t>(c.vocab_out() * c.d_model) * sizeof(float));

    // weights() decodes them all, to the dequantizer's floats; a transformer on the copy gives the same logits.
    const mechlens::model_weights& floats = model.weights();
    CHECK(on_demand.decoded_bytes() == on_demand.reserved_bytes());
    const mechlens::gguf_file g(q8_path);
    const mechlens::gguf_tensor_info& embd = g.tensor("token_embd.weight");
    std::vector<float> expected(embd.n_elements);
    mechlens::dequantize_ggml(embd.type, g.tensor_data(embd), embd.n_elements, expected.data());
    REQUIRE(static_cast<std::size_t>(floats.token_embedding.size()) == expected.size());
    CHECK(std::memcmp(floats.token_embedding.data(), expected.data(), expected.size() * sizeof(float)) == 0);
    const mechlens::model_weights copied_weights = copy.weights();
    const auto copied_embedding = copied_weights.token_embedding;
    CHECK(std::memcmp(copied_embedding.data(), expected.data(), expected.size() * sizeof(float)) == 0);
    const mechlens::transformer copied(mechlens::loaded_model{c, copy.weights()});
    const auto from_copy = mechlens::forward_logits(copied, batch);
    mechlens::activation_patcher copied_patcher(copied, batch, corrupt,
                                                mechlens::answer_metric::logit_difference({story[0]}, {story[1]}));
    const mechlens::patching_table copied_swept =
        copied_patcher.sweep(mechlens::patching_grid::by_layer_position(mechlens::site_kind::resid_pre));
    CHECK(copied_swept.raw.size() == swept.raw.size());
    CHECK(std::memcmp(copied_swept.raw.data(), swept.raw.data(),
                      static_cast<std::size_t>(swept.raw.size()) * sizeof(float)) == 0);
    REQUIRE(from_copy.size() == prefill.size());
    CHECK(std::memcmp(from_copy.data(), prefill.data(), static_cast<std::size_t>(prefill.size()) * sizeof(float)) == 0);
}

}  // namespace test_loaders
