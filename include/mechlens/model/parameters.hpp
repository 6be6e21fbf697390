#pragma once
/// @file
/// Owned, mutable model parameters in one flat buffer: what training updates, what gradients fill, and what a
/// transformer can run on directly (weights() hands out views that share ownership of the buffer).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/model/config.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One named parameter tensor inside a model_parameters buffer (rank 1 or 2; a rank-1 tensor has extent[1] == 0).
struct parameter_entry {
    std::string name;      ///< "token_embedding", "blocks.0.w_q", "final_norm", ... (model_weights field names).
    index_t offset = 0;    ///< First element in the flat buffer.
    std::size_t rank = 0;  ///< 1 or 2.
    extents<2> shape{};    ///< Extents; shape[1] unused for rank 1.
    /// Number of elements.
    [[nodiscard]] index_t size() const noexcept { return rank == 1 ? shape[0] : shape[0] * shape[1]; }
};

/// The parameters a config implies, in a fixed order, with their offsets in one flat buffer. Weights the config
/// does not use (see layer_weights) are left out; a tied unembedding is not stored twice.
inline std::vector<parameter_entry> parameter_layout(const model_config& c) {
    c.validate("parameter_layout");
    const index_t d = c.d_model, q = c.n_heads * c.d_head(), kv = c.n_kv_heads * c.d_head();
    std::vector<parameter_entry> out;
    index_t offset = 0;
    auto add = [&](std::string name, std::size_t rank, index_t rows, index_t cols) {
        parameter_entry e{std::move(name), offset, rank, {rows, rank == 1 ? 0 : cols}};
        offset += e.size();
        out.push_back(std::move(e));
    };
    add("token_embedding", 2, c.d_vocab, d);
    if (!c.rotary()) add("pos_embedding", 2, c.n_ctx, d);
    for (index_t l = 0; l < c.n_layers; ++l) {
        const std::string p = "blocks." + std::to_string(l) + ".";
        if (c.has_norm()) add(p + "attn_norm", 1, d, 0);
        add(p + "w_q", 2, q, d);
        add(p + "w_k", 2, kv, d);
        add(p + "w_v", 2, kv, d);
        add(p + "w_o", 2, d, q);
        if (!c.attn_only()) {
            if (c.has_norm()) add(p + "mlp_norm", 1, d, 0);
            if (c.mlp == mlp_kind::gated_silu) add(p + "w_gate", 2, c.d_mlp, d);
            add(p + "w_up", 2, c.d_mlp, d);
            add(p + "w_down", 2, d, c.d_mlp);
        }
    }
    if (c.has_norm()) add("final_norm", 1, d, 0);
    if (!c.tied_unembed) add("unembed", 2, c.d_vocab, d);
    return out;
}

/// Owned, mutable parameters of one model in a single flat buffer of T, with views laid out like model_weights.
/// Copies are deep. A transformer built from weights() (float only) runs on this buffer and sees later in-place
/// updates. Gradients use the same type, so every parameter has its gradient at the same offset.
template <class T>
class basic_model_parameters {
public:
    /// The scalar type.
    using value_type = T;
    /// Mutable views of one block's parameters; unused ones are empty.
    struct layer {
        tensor_view<T, 1> attn_norm;  ///< (d_model)
        tensor_view<T, 2> w_q;        ///< (n_heads * d_head, d_model)
        tensor_view<T, 2> w_k;        ///< (n_kv_heads * d_head, d_model)
        tensor_view<T, 2> w_v;        ///< (n_kv_heads * d_head, d_model)
        tensor_view<T, 2> w_o;        ///< (d_model, n_heads * d_head)
        tensor_view<T, 1> mlp_norm;   ///< (d_model)
        tensor_view<T, 2> w_gate;     ///< (d_mlp, d_model)
        tensor_view<T, 2> w_up;       ///< (d_mlp, d_model)
        tensor_view<T, 2> w_down;     ///< (d_model, d_mlp)
    };

    /// No model: an empty buffer.
    basic_model_parameters() = default;
    /// Zero-filled parameters for `config` (norm gains too: call fill_norm_gains(1) for a fresh model).
    explicit basic_model_parameters(const model_config& config)
        : config_(config),
          layout_(parameter_layout(config)),
          buffer_(std::make_shared<std::vector<T>>(static_cast<std::size_t>(total(layout_)), T{0})) {
        bind();
    }
    /// A copy of `weights` (converted to T), which must have the shapes `config` implies (throws shape_error
    /// otherwise).
    basic_model_parameters(const model_config& config, const model_weights& weights) : basic_model_parameters(config) {
        validate_weights(config, weights);
        auto copy_in = [](auto destination, auto source) {
            if (source.size() == 0) return;
            if (!source.is_contiguous()) throw shape_error("model_parameters: weights must be contiguous");
            std::transform(source.data(), source.data() + source.size(), destination.data(),
                           [](float x) { return static_cast<T>(x); });
        };
        copy_in(token_embedding, weights.token_embedding);
        copy_in(pos_embedding, weights.pos_embedding);
        for (std::size_t l = 0; l < layers.size(); ++l) {
            const layer_weights& w = weights.layers[l];
            copy_in(layers[l].attn_norm, w.attn_norm);
            copy_in(layers[l].w_q, w.w_q);
            copy_in(layers[l].w_k, w.w_k);
            copy_in(layers[l].w_v, w.w_v);
            copy_in(layers[l].w_o, w.w_o);
            copy_in(layers[l].mlp_norm, w.mlp_norm);
            copy_in(layers[l].w_gate, w.w_gate);
            copy_in(layers[l].w_up, w.w_up);
            copy_in(layers[l].w_down, w.w_down);
        }
        copy_in(final_norm, weights.final_norm);
        if (!config.tied_unembed) copy_in(unembed, weights.unembed);
    }
    /// Deep copy.
    basic_model_parameters(const basic_model_parameters& other)
        : config_(other.config_),
          layout_(other.layout_),
          buffer_(other.buffer_ ? std::make_shared<std::vector<T>>(*other.buffer_) : nullptr) {
        bind();
    }
    /// Deep copy.
    basic_model_parameters& operator=(const basic_model_parameters& other) {
        if (this != &other) *this = basic_model_parameters(other);
        return *this;
    }
    basic_model_parameters(basic_model_parameters&&) noexcept = default;  ///< Takes the buffer; views stay valid.
    basic_model_parameters& operator=(basic_model_parameters&&) noexcept =
        default;  ///< Takes the buffer; views stay valid.
    ~basic_model_parameters() = default;

    /// Hyper-parameters.
    [[nodiscard]] const model_config& config() const noexcept { return config_; }
    /// Every stored tensor, in buffer order.
    [[nodiscard]] const std::vector<parameter_entry>& layout() const noexcept { return layout_; }
    /// All parameters as one flat span (what optimizers step over).
    [[nodiscard]] std::span<T> flat() noexcept { return buffer_ ? std::span<T>(*buffer_) : std::span<T>(); }
    /// All parameters as one flat span.
    [[nodiscard]] std::span<const T> flat() const noexcept {
        return buffer_ ? std::span<const T>(*buffer_) : std::span<const T>();
    }
    /// Number of scalars.
    [[nodiscard]] index_t size() const noexcept { return buffer_ ? static_cast<index_t>(buffer_->size()) : 0; }
    /// The stored tensor named `name` as a flat span; throws std::invalid_argument for an unknown name.
    [[nodiscard]] std::span<T> find(const std::string& name) {
        for (const parameter_entry& e : layout_)
            if (e.name == name)
                return flat().subspan(static_cast<std::size_t>(e.offset), static_cast<std::size_t>(e.size()));
        throw std::invalid_argument("model_parameters: no parameter named '" + name + "'");
    }
    /// Sets every scalar to `value`.
    void fill(T value) noexcept { std::fill(flat().begin(), flat().end(), value); }
    /// Sets every norm gain to `value` (1 for a fresh model).
    void fill_norm_gains(T value) noexcept {
        auto set = [value](tensor_view<T, 1> g) { std::fill(g.data(), g.data() + g.size(), value); };
        for (layer& l : layers) {
            if (l.attn_norm.size() > 0) set(l.attn_norm);
            if (l.mlp_norm.size() > 0) set(l.mlp_norm);
        }
        if (final_norm.size() > 0) set(final_norm);
    }

    /// Read-only views for a transformer (loaded_model{config(), weights()}); they keep the buffer alive.
    [[nodiscard]] model_weights weights() const requires std::same_as<T, float> {
        model_weights w;
        w.token_embedding = token_embedding;
        w.pos_embedding = pos_embedding;
        for (const layer& l : layers)
            w.layers.push_back(
                layer_weights{l.attn_norm, l.w_q, l.w_k, l.w_v, l.w_o, l.mlp_norm, l.w_gate, l.w_up, l.w_down});
        w.final_norm = final_norm;
        w.unembed = unembed;
        w.storage = buffer_;
        return w;
    }

    tensor_view<T, 2> token_embedding;  ///< (d_vocab, d_model)
    tensor_view<T, 2> pos_embedding;    ///< (n_ctx, d_model) with learned positions, else empty.
    std::vector<layer> layers;          ///< One entry per block.
    tensor_view<T, 1> final_norm;       ///< (d_model), empty without norms.
    tensor_view<T, 2> unembed;          ///< (d_vocab, d_model); the same memory as token_embedding when tied.

private:
    static index_t total(const std::vector<parameter_entry>& layout) noexcept {
        index_t n = 0;
        for (const parameter_entry& e : layout) n += e.size();
        return n;
    }
    void bind() {
        layers.assign(static_cast<std::size_t>(config_.n_layers), layer{});
        if (!buffer_) return;
        T* base = buffer_->data();
        for (const parameter_entry& e : layout_) {
            const tensor_view<T, 2> m(base + e.offset, e.shape);
            const tensor_view<T, 1> v(base + e.offset, {e.shape[0]});
            const std::string& n = e.name;
            if (n == "token_embedding")
                token_embedding = m;
            else if (n == "pos_embedding")
                pos_embedding = m;
            else if (n == "final_norm")
                final_norm = v;
            else if (n == "unembed")
                unembed = m;
            else {
                const std::size_t dot = n.find('.', 7);  // "blocks.L.field"
                layer& l = layers[static_cast<std::size_t>(std::stoll(n.substr(7, dot - 7)))];
                const std::string field = n.substr(dot + 1);
                if (field == "attn_norm")
                    l.attn_norm = v;
                else if (field == "w_q")
                    l.w_q = m;
                else if (field == "w_k")
                    l.w_k = m;
                else if (field == "w_v")
                    l.w_v = m;
                else if (field == "w_o")
                    l.w_o = m;
                else if (field == "mlp_norm")
                    l.mlp_norm = v;
                else if (field == "w_gate")
                    l.w_gate = m;
                else if (field == "w_up")
                    l.w_up = m;
                else if (field == "w_down")
                    l.w_down = m;
            }
        }
        if (config_.tied_unembed) unembed = token_embedding;
    }

    model_config config_;
    std::vector<parameter_entry> layout_;
    std::shared_ptr<std::vector<T>> buffer_;
};

/// Float parameters: what training updates and what transformer runs on.
using model_parameters = basic_model_parameters<float>;
/// Double parameters: for finite-difference checks of the backward pass.
using model_parameters_f64 = basic_model_parameters<double>;

MECHLENS_END_NAMESPACE
