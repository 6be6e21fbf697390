#pragma once
/// @file
/// Loader for Karpathy's llama2.c legacy checkpoint format (`.bin`), viewing the weights inside the mapping.

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/loader_storage.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/weights.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// Bytes of the legacy llama2.c header: seven little-endian int32.
inline constexpr std::size_t llama2c_header_bytes = 28;

/// llama2.c's versioned export (`export.py --version 1/2`) starts with this uint32 ("ak42").
inline constexpr std::uint32_t llama2c_versioned_magic = 0x616b3432u;

/// Loads a llama2.c legacy checkpoint from an existing mapping.
inline loaded_model load_llama2c_mapped(std::shared_ptr<const mapped_file> file) {
    const std::string where = file->path().string();
    byte_reader reader(file->data(), file->size(), where);
    static constexpr std::array<const char*, 7> names{"dim",        "hidden_dim", "n_layers", "n_heads",
                                                      "n_kv_heads", "vocab_size", "seq_len"};
    std::array<std::int64_t, 7> h{};
    for (std::size_t i = 0; i < h.size(); ++i)
        h[i] = reader.read<std::int32_t>(std::string("header field ") + names[i]);

    if (static_cast<std::uint32_t>(h[0]) == llama2c_versioned_magic)
        reader.fail("llama2.c export version " + std::to_string(h[1]) +
                    " (magic \"ak42\") is not supported; only the legacy format is");
    for (std::size_t i = 0; i < h.size(); ++i)
        if (i != 5 && h[i] <= 0)
            reader.fail(std::string("header field ") + names[i] + " = " + std::to_string(h[i]) + " must be positive");
    if (h[5] == 0) reader.fail("header field vocab_size = 0 must be non-zero");

    model_config config;
    config.d_model = h[0];
    config.d_mlp = h[1];
    config.n_layers = h[2];
    config.n_heads = h[3];
    config.n_kv_heads = h[4];
    config.d_vocab = h[5] < 0 ? -h[5] : h[5];  // int64: negating INT32_MIN is fine here
    config.n_ctx = h[6];
    config.tied_unembed = h[5] > 0;  // a negative vocab_size flags a separate classifier at the end
    config.rope = rope_layout::adjacent_pairs;
    config.rope_theta = 10000.0f;
    config.norm_eps = 1e-5f;
    config.validate(where);  // bounds every extent by 2^24 and checks divisibility before any size is computed

    const auto u = [](index_t v) { return static_cast<std::uint64_t>(v); };
    const std::uint64_t d = u(config.d_model), hidden = u(config.d_mlp), layers = u(config.n_layers),
                        vocab = u(config.d_vocab), head = u(config.d_head()), kv = u(config.n_kv_heads) * head;
    const auto mul3 = [&](std::uint64_t a, std::uint64_t b, std::uint64_t c, const char* what) {
        return checked_mul(checked_mul(a, b, where, what), c, where, what);
    };
    // Floats per array, in file order.
    struct section {
        const char* name;
        std::uint64_t floats;
    };
    const std::array<section, 14> sections{{
        {"token_embedding", checked_mul(vocab, d, where, "token_embedding")},
        {"rms_att", checked_mul(layers, d, where, "rms_att")},
        {"wq", mul3(layers, d, d, "wq")},
        {"wk", mul3(layers, kv, d, "wk")},
        {"wv", mul3(layers, kv, d, "wv")},
        {"wo", mul3(layers, d, d, "wo")},
        {"rms_ffn", checked_mul(layers, d, where, "rms_ffn")},
        {"w1", mul3(layers, hidden, d, "w1")},
        {"w2", mul3(layers, d, hidden, "w2")},
        {"w3", mul3(layers, hidden, d, "w3")},
        {"rms_final", d},
        {"freq_cis_real", checked_mul(u(config.n_ctx), head / 2, where, "freq_cis_real")},
        {"freq_cis_imag", checked_mul(u(config.n_ctx), head / 2, where, "freq_cis_imag")},
        {"wcls", config.tied_unembed ? 0 : checked_mul(vocab, d, where, "wcls")},
    }};
    std::uint64_t needed = llama2c_header_bytes;
    for (const section& s : sections)
        needed = checked_add(needed, checked_mul(s.floats, sizeof(float), where, s.name), where, s.name);
    if (needed > file->size())
        reader.fail("truncated: needs " + std::to_string(needed) + " bytes, has " + std::to_string(file->size()));
    if (needed < file->size())
        reader.fail("has " + std::to_string(file->size()) + " bytes, but its header implies exactly " +
                    std::to_string(needed) + " (trailing data: not a legacy llama2.c checkpoint?)");

    // Every size now fits in the file, hence in index_t.
    weight_builder builder(file);
    std::array<const float*, 14> base{};
    for (std::size_t i = 0; i < sections.size(); ++i) {
        const std::byte* bytes = reader.take(sections[i].floats * sizeof(float), sections[i].name);
        const bool used = sections[i].floats > 0 && i != 11 && i != 12;  // the freq_cis tables are recomputed
        if (used) base[i] = builder.f32(bytes, static_cast<index_t>(sections[i].floats));
    }

    loaded_model out;
    out.config = config;
    model_weights& w = out.weights;
    w.layers.resize(static_cast<std::size_t>(config.n_layers));
    // Each array holds one parameter-table row for every layer, stacked.
    for_each_view(w, [&](parameter_id id, index_t layer, auto& view) {
        const parameter_traits& row = traits_of(id);
        if (!parameter_stored(row, config) || row.llama2c_section < 0) return;
        const index_t per_layer = parameter_size(row, config);
        const float* start =
            base[static_cast<std::size_t>(row.llama2c_section)] + std::max<index_t>(layer, 0) * per_layer;
        const extents<2> e = row.shape(config);
        using view_type = std::remove_cvref_t<decltype(view)>;
        if constexpr (view_type::rank == 1)
            view = view_type(start, {e[0]});
        else
            view = view_type(start, e);
    });
    if (config.tied_unembed) w.unembed = w.token_embedding;
    w.storage = builder.finish();
    try {
        validate_weights(out.config, out.weights);
    } catch (const shape_error& e) {
        reader.fail(e.what());
    }
    return out;
}

}  // namespace detail

/// Loads a llama2.c legacy `.bin` checkpoint; F32 weights are views into a shared read-only mapping of the file.
///
/// Layout: seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
/// vocab_size means an unshared classifier), then float32 arrays token_embedding, rms_att, wq, wk, wv, wo, rms_ffn,
/// w1 (gate), w2 (down), w3 (up), rms_final, the unused freq_cis tables, and wcls when unshared. Throws
/// format_error naming the file on any inconsistency, including a size that differs from what the header implies.
inline loaded_model load_llama2c(const std::filesystem::path& path) {
    return detail::load_llama2c_mapped(mapped_file::open(path));
}

MECHLENS_END_NAMESPACE
