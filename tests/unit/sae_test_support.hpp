#pragma once
// Helpers shared by the SAE and transcoder unit tests: random and identity SAE weights, random token contexts, one
// prompt as a batch, and a hook that copies what fires.

#include <mechlens/mechlens.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mechlens_test {

/// `n` values drawn uniformly from shift + [-scale, scale) into `v`.
inline void fill_uniform(mechlens::random_generator& rng, std::vector<float>& v, std::size_t n, float scale,
                         float shift = 0.0f) {
    v.resize(n);
    for (float& x : v) x = shift + scale * (2.0f * static_cast<float>(rng.uniform()) - 1.0f);
}

/// Random SAE weights drawn from `rng` (W_enc, W_dec within +-0.5, b_enc within b_enc_shift +-0.2, b_dec +-0.2):
/// with no shift, roughly half the latents fire on a typical residual row.
inline mechlens::sae_weights random_sae_weights(mechlens::random_generator& rng, mechlens::index_t d_in,
                                                mechlens::index_t d_sae, float b_enc_shift = 0.0f) {
    mechlens::sae_weights w;
    w.d_in = d_in;
    w.d_sae = d_sae;
    const auto size = [](mechlens::index_t n) { return static_cast<std::size_t>(n); };
    fill_uniform(rng, w.w_enc, size(d_in * d_sae), 0.5f);
    fill_uniform(rng, w.w_dec, size(d_sae * d_in), 0.5f);
    fill_uniform(rng, w.b_enc, size(d_sae), 0.2f, b_enc_shift);
    fill_uniform(rng, w.b_dec, size(d_in), 0.2f);
    return w;
}

/// The exact ReLU identity: W_enc = [I, -I], W_dec = [I; -I], no biases (relu(x) - relu(-x) = x in value and
/// gradient), an SAE with zero reconstruction error.
inline mechlens::sae_weights identity_sae_weights(mechlens::index_t d_in) {
    mechlens::sae_weights w;
    w.d_in = d_in;
    w.d_sae = 2 * d_in;
    const auto at = [](mechlens::index_t i) { return static_cast<std::size_t>(i); };
    w.w_enc.assign(at(d_in * w.d_sae), 0.0f);
    w.w_dec.assign(at(w.d_sae * d_in), 0.0f);
    w.b_enc.assign(at(w.d_sae), 0.0f);
    w.b_dec.assign(at(d_in), 0.0f);
    for (mechlens::index_t i = 0; i < d_in; ++i) {
        w.w_enc[at(i * w.d_sae + i)] = 1.0f;
        w.w_enc[at(i * w.d_sae + d_in + i)] = -1.0f;
        w.w_dec[at(i * d_in + i)] = 1.0f;
        w.w_dec[at((d_in + i) * d_in + i)] = -1.0f;
    }
    return w;
}

/// `n` contexts of `T` random tokens in [2, vocab), each starting with BOS = 1.
inline std::vector<std::int32_t> random_contexts(mechlens::index_t n, mechlens::index_t T, std::int32_t vocab,
                                                 std::uint64_t seed) {
    mechlens::random_generator rng(seed);
    std::vector<std::int32_t> out(static_cast<std::size_t>(n * T));
    for (mechlens::index_t r = 0; r < n; ++r)
        for (mechlens::index_t p = 0; p < T; ++p)
            out[static_cast<std::size_t>(r * T + p)] =
                p == 0 ? 1 : static_cast<std::int32_t>(2 + rng.next() % static_cast<std::uint64_t>(vocab - 2));
    return out;
}

/// One prompt as a (1, tokens) batch.
inline mechlens::tensor_view<const std::int32_t, 2> as_batch(const std::vector<std::int32_t>& ids) {
    return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {1, static_cast<mechlens::index_t>(ids.size())});
}

/// Copies every firing of the sites it is registered at, by name (the last firing wins).
struct snapshots {
    std::map<std::string, std::vector<float>> values;  ///< Site name -> (batch * pos * width) values.
    /// A callback that records into `values`.
    mechlens::hook_callback callback() {
        return [this](const mechlens::site& s, mechlens::activation_view view, const mechlens::hook_context&) {
            const auto v = view.as<3>();  // (batch, pos, width)
            std::vector<float>& out = values[mechlens::to_string(s)];
            out.clear();
            for (mechlens::index_t b = 0; b < v.extent(0); ++b)
                for (mechlens::index_t p = 0; p < v.extent(1); ++p)
                    for (mechlens::index_t i = 0; i < v.extent(2); ++i) out.push_back(v(b, p, i));
        };
    }
};

}  // namespace mechlens_test
