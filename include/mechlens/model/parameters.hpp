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
#include <type_traits>
#include <utility>
#include <vector>

#include "mechlens/model/config.hpp"
#include "mechlens/model/parameter_table.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One named parameter tensor inside a model_parameters buffer (rank 1 or 2; a rank-1 tensor has extent[1] == 0).
struct parameter_entry {
    std::string name;      ///< "token_embedding", "blocks.0.w_q", "final_norm", ... (table name, block-prefixed).
    index_t offset = 0;    ///< First element in the flat buffer.
    std::size_t rank = 0;  ///< 1 or 2.
    extents<2> shape{};    ///< Extents; shape[1] unused for rank 1.
    parameter_id id = parameter_id::token_embedding;  ///< Its row of the parameter table.
    index_t layer = -1;                                ///< Its block, -1 for model-wide parameters.
    /// Number of elements.
    [[nodiscard]] index_t size() const noexcept { return rank == 1 ? shape[0] : shape[0] * shape[1]; }
};

/// Floats in a flat buffer laid out by `layout`.
inline index_t layout_size(const std::vector<parameter_entry>& layout) noexcept {
    index_t n = 0;
    for (const parameter_entry& e : layout) n += e.size();
    return n;
}

/// The parameters a config implies, derived from the parameter table: the model-wide rows before the blocks, every
/// block's rows, then the model-wide rows after them, with their offsets in one flat buffer. Weights the config does
/// not use are left out; a tied unembedding is not stored twice.
inline std::vector<parameter_entry> parameter_layout(const model_config& c) {
    c.validate("parameter_layout");
    std::vector<parameter_entry> out;
    index_t offset = 0;
    auto add = [&](const parameter_traits& row, index_t layer) {
        if (!parameter_stored(row, c)) return;
        std::string name = layer < 0 ? std::string(row.name)
                                     : "blocks." + std::to_string(layer) + "." + std::string(row.name);
        parameter_entry e{std::move(name), offset, row.rank, row.shape(c), row.id, layer};
        offset += e.size();
        out.push_back(std::move(e));
    };
    for (const parameter_traits& row : parameter_table)
        if (stored_before_blocks(row.id)) add(row, -1);
    for (index_t l = 0; l < c.n_layers; ++l)
        for (const parameter_traits& row : parameter_table)
            if (row.per_block) add(row, l);
    for (const parameter_traits& row : parameter_table)
        if (stored_after_blocks(row.id)) add(row, -1);
    return out;
}

/// The view of parameter `id` in block `layer` (-1 for model-wide ones) of `model` (model_weights or
/// basic_model_parameters), as a rank-2 view (a gain of width n is (n, 1)); empty when the model has none.
template <class Model>
auto view_of(Model& model, parameter_id id, index_t layer) {
    using element = std::remove_pointer_t<decltype(model.token_embedding.data())>;
    tensor_view<element, 2> found;
    auto pick = [&](parameter_id candidate, index_t candidate_layer, const auto& view) {
        if (candidate != id || candidate_layer != layer) return;
        if constexpr (std::remove_cvref_t<decltype(view)>::rank == 1)
            found = tensor_view<element, 2>(view.data(), {view.extent(0), view.extent(0) > 0 ? 1 : 0});
        else
            found = view;
    };
    for_each_view(model, pick);
    return found;
}

/// Points every view of `model` (model_weights or basic_model_parameters, its layers already sized) at its entry of
/// `layout` in the flat buffer starting at `base`; views without an entry are left as they are.
template <class Model, class Element>
void bind_layout(Model& model, const std::vector<parameter_entry>& layout, Element* base) {
    for (const parameter_entry& e : layout)
        for_each_view(model, [&](parameter_id id, index_t block, auto& view) {
            if (id != e.id || block != e.layer) return;
            using view_type = std::remove_cvref_t<decltype(view)>;
            if constexpr (view_type::rank == 1)
                view = view_type(base + e.offset, {e.shape[0]});
            else
                view = view_type(base + e.offset, e.shape);
        });
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
    using layer = basic_layer_weights<T>;

    /// No model: an empty buffer.
    basic_model_parameters() = default;
    /// Zero-filled parameters for `config` (norm gains too: call fill_norm_gains(1) for a fresh model).
    explicit basic_model_parameters(const model_config& config)
        : config_(config),
          layout_(parameter_layout(config)),
          buffer_(std::make_shared<std::vector<T>>(static_cast<std::size_t>(layout_size(layout_)), T{0})) {
        bind();
    }
    /// A copy of `weights` (converted to T), which must have the shapes `config` implies (throws shape_error
    /// otherwise). A quantised matrix kept as blocks is decoded row by row straight into the copy, without the float
    /// copy transformer::weights() would make.
    basic_model_parameters(const model_config& config, const model_weights& weights) : basic_model_parameters(config) {
        validate_weights(config, weights);
        std::vector<float> row;
        for_each_view(*this, [&](parameter_id id, index_t block, auto destination) {
            if (id == parameter_id::unembed && config.tied_unembed) return;
            const auto source = view_of(weights, id, block);
            if (source.size() == 0) return;
            if (!source.is_contiguous()) throw shape_error("model_parameters: weights must be contiguous");
            const auto convert = [](float x) { return static_cast<T>(x); };
            if constexpr (std::remove_cvref_t<decltype(source)>::rank == 2) {
                if (const auto blocks = encoded_blocks_of(weights, source)) {
                    row.resize(static_cast<std::size_t>(source.extent(1)));
                    for (index_t r = 0; r < source.extent(0); ++r) {
                        kernels::decode_encoded_rows(*blocks, r, 1, row.data());
                        std::transform(row.begin(), row.end(), destination.data() + r * source.extent(1), convert);
                    }
                    return;
                }
            }
            const auto& floats = readable(weights, source);
            std::transform(floats.data(), floats.data() + floats.size(), destination.data(), convert);
        });
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
        for (const parameter_entry& e : layout_)
            if (traits_of(e.id).norm_gain) {
                const std::span<T> gain = flat().subspan(static_cast<std::size_t>(e.offset),
                                                         static_cast<std::size_t>(e.size()));
                std::fill(gain.begin(), gain.end(), value);
            }
    }

    /// Read-only views for a transformer (loaded_model{config(), weights()}); they keep the buffer alive.
    [[nodiscard]] model_weights weights() const requires std::same_as<T, float> {
        model_weights w;
        w.layers.resize(layers.size());
        for_each_view(w, [&](parameter_id id, index_t block, auto& view) {
            const tensor_view<const float, 2> source = view_of(*this, id, block);
            if constexpr (std::remove_cvref_t<decltype(view)>::rank == 1)
                view = tensor_view<const float, 1>(source.data(), {source.extent(0)});
            else
                view = source;
        });
        w.storage = buffer_;
        return w;
    }

    tensor_view<T, 2> token_embedding;  ///< (d_vocab, d_model)
    tensor_view<T, 2> pos_embedding;    ///< (n_ctx, d_model) with learned positions, else empty.
    std::vector<layer> layers;          ///< One entry per block.
    tensor_view<T, 1> final_norm;       ///< (d_model), empty without norms.
    tensor_view<T, 1> final_norm_bias;  ///< (d_model), LayerNorm only.
    tensor_view<T, 2> unembed;          ///< (d_vocab_out, d_model); the same memory as token_embedding when tied.
    tensor_view<T, 1> unembed_bias;     ///< (d_vocab_out), with linear biases.

private:
    void bind() {
        layers.assign(static_cast<std::size_t>(config_.n_layers), layer{});
        if (!buffer_) return;
        bind_layout(*this, layout_, buffer_->data());
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
