#pragma once
// A small, self-contained llama2.c-format inference engine: one token at a time, plain loops, its own structs,
// loader and kernels. It knows nothing of mechlens's model code; the only mechlens it uses is hooks/engine.hpp,
// through the lines marked `// hook` below. Delete those lines and `Hooks` and it is an ordinary engine; keep them
// and every mechlens hook policy (caching, ablation, patching, steering, your own) works on it.

#include <mechlens/hooks/engine.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace tiny {

/// The seven int32 of a llama2.c checkpoint header.
struct config {
    int dim = 0;                    ///< Residual stream width.
    int hidden_dim = 0;             ///< MLP width.
    int n_layers = 0;               ///< Blocks.
    int n_heads = 0;                ///< Query heads.
    int n_kv_heads = 0;             ///< Key/value heads (fewer than n_heads: grouped-query attention).
    int vocab_size = 0;             ///< Tokens.
    int seq_len = 0;                ///< Longest context.
    bool shared_classifier = true;  ///< The unembedding is the token embedding.
    [[nodiscard]] int head_size() const { return dim / n_heads; }
    [[nodiscard]] int kv_dim() const { return n_kv_heads * head_size(); }
};

/// The weights as offsets into one float array, in the file's order; matrices are (out, in) row-major.
struct weights {
    std::vector<float> data;
    std::size_t token_embedding = 0;  // (vocab, dim)
    std::size_t rms_att = 0;          // (layer, dim)
    std::size_t wq = 0;               // (layer, dim, dim)
    std::size_t wk = 0;               // (layer, kv_dim, dim)
    std::size_t wv = 0;               // (layer, kv_dim, dim)
    std::size_t wo = 0;               // (layer, dim, dim)
    std::size_t rms_ffn = 0;          // (layer, dim)
    std::size_t w1 = 0;               // (layer, hidden, dim): gate
    std::size_t w2 = 0;               // (layer, dim, hidden): down
    std::size_t w3 = 0;               // (layer, hidden, dim): up
    std::size_t rms_final = 0;        // (dim)
    std::size_t classifier = 0;       // (vocab, dim)
    [[nodiscard]] const float* at(std::size_t offset) const { return data.data() + offset; }
};

/// A loaded model.
struct model {
    config c;
    weights w;
};

/// Reads a llama2.c `.bin` checkpoint; throws std::runtime_error naming the file and the problem.
inline model load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::int32_t h[7];
    if (bytes.size() < sizeof h) throw std::runtime_error(path + ": shorter than the 28-byte header");
    std::memcpy(h, bytes.data(), sizeof h);
    for (std::int32_t v : h)
        if (v == 0 || v > (1 << 20) || v < -(1 << 20)) throw std::runtime_error(path + ": implausible header value");
    model m;
    config& c = m.c;
    c = {h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6], h[5] > 0};
    if (c.dim < 0 || c.hidden_dim < 0 || c.n_layers < 0 || c.n_heads < 0 || c.n_kv_heads < 0 || c.seq_len < 0 ||
        c.dim % c.n_heads != 0 || c.n_heads % c.n_kv_heads != 0 || c.head_size() % 2 != 0)
        throw std::runtime_error(path + ": inconsistent header");

    // Every size below is at most 2^20 * 2^20 * 2^20 = 2^60 floats: no overflow in 64 bits.
    const auto L = static_cast<std::size_t>(c.n_layers), D = static_cast<std::size_t>(c.dim),
               H = static_cast<std::size_t>(c.hidden_dim), V = static_cast<std::size_t>(c.vocab_size),
               KV = static_cast<std::size_t>(c.kv_dim()), half = static_cast<std::size_t>(c.head_size() / 2),
               S = static_cast<std::size_t>(c.seq_len);
    weights& w = m.w;
    std::size_t n = 0;
    auto take = [&](std::size_t count) {
        const std::size_t at = n;
        n += count;
        return at;
    };
    w.token_embedding = take(V * D);
    w.rms_att = take(L * D);
    w.wq = take(L * D * D);
    w.wk = take(L * KV * D);
    w.wv = take(L * KV * D);
    w.wo = take(L * D * D);
    w.rms_ffn = take(L * D);
    w.w1 = take(L * H * D);
    w.w2 = take(L * D * H);
    w.w3 = take(L * H * D);
    w.rms_final = take(D);
    (void)take(2 * S * half);  // precomputed rotary tables: recomputed below instead
    w.classifier = c.shared_classifier ? w.token_embedding : take(V * D);
    if ((bytes.size() - sizeof h) / sizeof(float) < n)
        throw std::runtime_error(path + ": truncated: the header promises " + std::to_string(n) + " floats");
    w.data.resize(n);
    std::memcpy(w.data.data(), bytes.data() + sizeof h, n * sizeof(float));
    return m;
}

/// Scratch buffers and the key/value cache of one sequence.
struct run_state {
    std::vector<float> x, xb, xb2, hb, hb2, q, k, v, att, logits, key_cache, value_cache;
    explicit run_state(const config& c) {
        const auto D = static_cast<std::size_t>(c.dim), H = static_cast<std::size_t>(c.hidden_dim),
                   KV = static_cast<std::size_t>(c.kv_dim()), S = static_cast<std::size_t>(c.seq_len),
                   L = static_cast<std::size_t>(c.n_layers);
        x.resize(D), xb.resize(D), xb2.resize(D), hb.resize(H), hb2.resize(H), q.resize(D), k.resize(KV), v.resize(KV);
        att.resize(static_cast<std::size_t>(c.n_heads) * S);  // (n_heads, seq_len)
        logits.resize(static_cast<std::size_t>(c.vocab_size));
        key_cache.resize(L * S * KV);    // (layer, seq_len, kv_dim)
        value_cache.resize(L * S * KV);  // (layer, seq_len, kv_dim)
    }
};

/// out = W x for W (rows, cols) row-major.
inline void matmul(float* out, const float* x, const float* W, int rows, int cols) {
    for (int r = 0; r < rows; ++r) {
        const float* row = W + static_cast<std::ptrdiff_t>(r) * cols;
        float sum = 0.0f;
        for (int i = 0; i < cols; ++i) sum += row[i] * x[i];
        out[r] = sum;
    }
}

/// out = x / sqrt(mean(x^2) + 1e-5) * gain.
inline void rmsnorm(float* out, const float* x, const float* gain, int n) {
    float squares = 0.0f;
    for (int i = 0; i < n; ++i) squares += x[i] * x[i];
    const float scale = std::sqrt(squares / static_cast<float>(n) + 1e-5f);
    for (int i = 0; i < n; ++i) out[i] = x[i] / scale * gain[i];
}

/// Softmax of x[0..n) in place, shifted by the maximum for range.
inline void softmax(float* x, int n) {
    float top = x[0];
    for (int i = 1; i < n; ++i) top = std::fmax(top, x[i]);
    float total = 0.0f;
    for (int i = 0; i < n; ++i) total += (x[i] = std::exp(x[i] - top));
    for (int i = 0; i < n; ++i) x[i] /= total;
}

/// Rotates the adjacent pairs (2i, 2i+1) of every head of `vec` by position * 10000^(-2i / head_size).
inline void rope(float* vec, int width, int head_size, int pos) {
    for (int j = 0; j < width; j += 2) {
        const int i = (j % head_size) / 2;
        const double angle = pos * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(head_size));
        const auto cos = static_cast<float>(std::cos(angle)), sin = static_cast<float>(std::sin(angle));
        const float a = vec[j], b = vec[j + 1];
        vec[j] = a * cos - b * sin;
        vec[j + 1] = a * sin + b * cos;
    }
}

/// Runs `token` at position `pos` and leaves the next-token logits in s.logits. `hooks` is any mechlens hook
/// policy; with mechlens::no_hooks every `// hook` line compiles to nothing.
template <class Hooks = mechlens::no_hooks>
void forward(const model& m, run_state& s, int token, int pos, Hooks&& hooks = Hooks{}) {
    using mechlens::site_kind;
    const config& c = m.c;
    const weights& w = m.w;
    if (token < 0 || token >= c.vocab_size) throw std::out_of_range("tiny::forward: token " + std::to_string(token));
    if (pos < 0 || pos >= c.seq_len) throw std::out_of_range("tiny::forward: position " + std::to_string(pos));
    const int D = c.dim, H = c.hidden_dim, KV = c.kv_dim(), hs = c.head_size(), group = c.n_heads / c.n_kv_heads;
    const mechlens::index_t d = D, hidden = H, heads = c.n_heads, kv_heads = c.n_kv_heads, p = pos;
    auto layer_matrix = [&](std::size_t base, int l, int rows, int cols) {
        return w.at(base +
                    static_cast<std::size_t>(l) * static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols));
    };

    std::memcpy(s.x.data(), w.at(w.token_embedding + static_cast<std::size_t>(token) * static_cast<std::size_t>(D)),
                static_cast<std::size_t>(D) * sizeof(float));
    mechlens::fire_site<site_kind::embed>(hooks, -1, s.x.data(), {1, 1, d}, p);  // hook

    for (int l = 0; l < c.n_layers; ++l) {
        mechlens::fire_site<site_kind::resid_pre>(hooks, l, s.x.data(), {1, 1, d}, p);  // hook
        rmsnorm(s.xb.data(), s.x.data(), layer_matrix(w.rms_att, l, 1, D), D);
        matmul(s.q.data(), s.xb.data(), layer_matrix(w.wq, l, D, D), D, D);
        matmul(s.k.data(), s.xb.data(), layer_matrix(w.wk, l, KV, D), KV, D);
        matmul(s.v.data(), s.xb.data(), layer_matrix(w.wv, l, KV, D), KV, D);
        mechlens::fire_site<site_kind::attn_q>(hooks, l, s.q.data(), {1, 1, heads, hs}, p);     // hook
        mechlens::fire_site<site_kind::attn_k>(hooks, l, s.k.data(), {1, 1, kv_heads, hs}, p);  // hook
        mechlens::fire_site<site_kind::attn_v>(hooks, l, s.v.data(), {1, 1, kv_heads, hs}, p);  // hook
        rope(s.q.data(), D, hs, pos);
        rope(s.k.data(), KV, hs, pos);
        mechlens::fire_site<site_kind::attn_rot_q>(hooks, l, s.q.data(), {1, 1, heads, hs}, p);     // hook
        mechlens::fire_site<site_kind::attn_rot_k>(hooks, l, s.k.data(), {1, 1, kv_heads, hs}, p);  // hook

        const std::size_t layer_cache = static_cast<std::size_t>(l) * static_cast<std::size_t>(c.seq_len * KV);
        float* keys = s.key_cache.data() + layer_cache;      // (seq_len, kv_dim)
        float* values = s.value_cache.data() + layer_cache;  // (seq_len, kv_dim)
        std::memcpy(keys + pos * KV, s.k.data(), static_cast<std::size_t>(KV) * sizeof(float));
        std::memcpy(values + pos * KV, s.v.data(), static_cast<std::size_t>(KV) * sizeof(float));

        // Scores then pattern, in place in att: (n_heads, seq_len), of which keys 0..pos are in use.
        const mechlens::tensor_view<float, 4> att(s.att.data(), {1, heads, 1, p + 1},
                                                  {heads * c.seq_len, c.seq_len, c.seq_len, 1});
        const float inverse_sqrt = 1.0f / std::sqrt(static_cast<float>(hs));
        for (int h = 0; h < c.n_heads; ++h) {
            const float* q = s.q.data() + h * hs;
            for (int t = 0; t <= pos; ++t) {
                const float* key = keys + t * KV + (h / group) * hs;
                float dot = 0.0f;
                for (int i = 0; i < hs; ++i) dot += q[i] * key[i];
                s.att[static_cast<std::size_t>(h * c.seq_len + t)] = dot * inverse_sqrt;
            }
        }
        mechlens::fire_site<site_kind::attn_scores>(hooks, l, att, p);  // hook
        for (int h = 0; h < c.n_heads; ++h) softmax(s.att.data() + h * c.seq_len, pos + 1);
        mechlens::fire_site<site_kind::attn_pattern>(hooks, l, att, p);  // hook
        for (int h = 0; h < c.n_heads; ++h) {
            float* z = s.xb.data() + h * hs;
            const float* pattern = s.att.data() + h * c.seq_len;
            for (int i = 0; i < hs; ++i) z[i] = 0.0f;
            for (int t = 0; t <= pos; ++t) {
                const float* value = values + t * KV + (h / group) * hs;
                for (int i = 0; i < hs; ++i) z[i] += pattern[t] * value[i];
            }
        }
        mechlens::fire_site<site_kind::attn_z>(hooks, l, s.xb.data(), {1, 1, heads, hs}, p);  // hook
        matmul(s.xb2.data(), s.xb.data(), layer_matrix(w.wo, l, D, D), D, D);
        mechlens::fire_site<site_kind::attn_out>(hooks, l, s.xb2.data(), {1, 1, d}, p);  // hook
        for (int i = 0; i < D; ++i) s.x[static_cast<std::size_t>(i)] += s.xb2[static_cast<std::size_t>(i)];
        mechlens::fire_site<site_kind::resid_mid>(hooks, l, s.x.data(), {1, 1, d}, p);  // hook

        rmsnorm(s.xb.data(), s.x.data(), layer_matrix(w.rms_ffn, l, 1, D), D);
        matmul(s.hb.data(), s.xb.data(), layer_matrix(w.w1, l, H, D), H, D);
        matmul(s.hb2.data(), s.xb.data(), layer_matrix(w.w3, l, H, D), H, D);
        mechlens::fire_site<site_kind::mlp_pre>(hooks, l, s.hb.data(), {1, 1, hidden}, p);          // hook
        mechlens::fire_site<site_kind::mlp_pre_linear>(hooks, l, s.hb2.data(), {1, 1, hidden}, p);  // hook
        for (int i = 0; i < H; ++i) {
            const float g = s.hb[static_cast<std::size_t>(i)];
            s.hb[static_cast<std::size_t>(i)] = g / (1.0f + std::exp(-g)) * s.hb2[static_cast<std::size_t>(i)];
        }
        mechlens::fire_site<site_kind::mlp_post>(hooks, l, s.hb.data(), {1, 1, hidden}, p);  // hook
        matmul(s.xb.data(), s.hb.data(), layer_matrix(w.w2, l, D, H), D, H);
        mechlens::fire_site<site_kind::mlp_out>(hooks, l, s.xb.data(), {1, 1, d}, p);  // hook
        for (int i = 0; i < D; ++i) s.x[static_cast<std::size_t>(i)] += s.xb[static_cast<std::size_t>(i)];
        mechlens::fire_site<site_kind::resid_post>(hooks, l, s.x.data(), {1, 1, d}, p);  // hook
    }

    rmsnorm(s.x.data(), s.x.data(), w.at(w.rms_final), D);
    matmul(s.logits.data(), s.x.data(), w.at(w.classifier), c.vocab_size, D);
    mechlens::fire_site<site_kind::unembed_out>(hooks, -1, s.logits.data(), {1, 1, c.vocab_size}, p);  // hook
}

}  // namespace tiny
