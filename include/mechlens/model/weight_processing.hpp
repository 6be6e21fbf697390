#pragma once
/// @file
/// TransformerLens's weight processing, as opt-in functions on owned parameters: folding the norms' gains and biases
/// into the weights that read them (fold_ln), centring the weights that write to the residual stream, centring the
/// unembedding, and folding the value biases into the output bias. Each leaves the model's log-probabilities
/// unchanged (up to rounding) and makes the parameters easier to read: after fold_layer_norms a LayerNorm model's
/// norms are plain centring and scaling (TransformerLens's LNPre), so direct logit attribution reads each component
/// along one direction.

#include <initializer_list>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/model/parameters.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// Throws std::invalid_argument naming `who` when the unembedding is the token embedding's memory: processing one
/// would change the other (call untie_unembedding first).
template <class T>
void require_untied(const basic_model_parameters<T>& p, const char* who) {
    if (p.config().tied_unembed)
        throw std::invalid_argument(std::string(who) +
                                    ": the unembedding is tied to the token embedding; call untie_unembedding first");
}

/// Folds a norm's gain `g` and bias `beta` (may be empty) into a matrix `w` (out, in) that reads its output, and
/// its bias `b` (out, may be empty): b += w beta, then w *= g per input column; with `centre`, each row of w then
/// loses its mean (the norm's output has mean zero, so that mean reads nothing).
template <class T>
void fold_norm_into(tensor_view<T, 2> w, tensor_view<T, 1> b, tensor_view<const T, 1> g, tensor_view<const T, 1> beta,
                    bool centre) {
    const index_t out = w.extent(0), in = w.extent(1);
    if (beta.size() > 0)
        for (index_t o = 0; o < out; ++o) {
            double sum = 0.0;
            for (index_t i = 0; i < in; ++i) sum += static_cast<double>(w(o, i)) * static_cast<double>(beta(i));
            b(o) = static_cast<T>(static_cast<double>(b(o)) + sum);
        }
    for (index_t o = 0; o < out; ++o) {
        for (index_t i = 0; i < in; ++i) w(o, i) *= g(i);
        if (centre) {
            double mean = 0.0;
            for (index_t i = 0; i < in; ++i) mean += static_cast<double>(w(o, i));
            mean /= static_cast<double>(in);
            for (index_t i = 0; i < in; ++i) w(o, i) = static_cast<T>(static_cast<double>(w(o, i)) - mean);
        }
    }
}

/// Subtracts from every column of `w` (rows, cols) its mean over the rows (the residual axis when rows = d_model).
template <class T>
void centre_columns(tensor_view<T, 2> w) {
    for (index_t j = 0; j < w.extent(1); ++j) {
        double mean = 0.0;
        for (index_t i = 0; i < w.extent(0); ++i) mean += static_cast<double>(w(i, j));
        mean /= static_cast<double>(w.extent(0));
        for (index_t i = 0; i < w.extent(0); ++i) w(i, j) = static_cast<T>(static_cast<double>(w(i, j)) - mean);
    }
}

/// Subtracts from every row of `w` (rows, cols) its mean over the columns.
template <class T>
void centre_rows(tensor_view<T, 2> w) {
    for (index_t i = 0; i < w.extent(0); ++i) {
        double mean = 0.0;
        for (index_t j = 0; j < w.extent(1); ++j) mean += static_cast<double>(w(i, j));
        mean /= static_cast<double>(w.extent(1));
        for (index_t j = 0; j < w.extent(1); ++j) w(i, j) = static_cast<T>(static_cast<double>(w(i, j)) - mean);
    }
}

/// Subtracts from a vector its mean.
template <class T>
void centre_vector(tensor_view<T, 1> v) {
    if (v.size() == 0) return;
    double mean = 0.0;
    for (index_t i = 0; i < v.extent(0); ++i) mean += static_cast<double>(v(i));
    mean /= static_cast<double>(v.extent(0));
    for (index_t i = 0; i < v.extent(0); ++i) v(i) = static_cast<T>(static_cast<double>(v(i)) - mean);
}

}  // namespace detail

/// A copy of `params` whose unembedding is its own matrix (tied_unembed false), equal to the token embedding: the
/// same model, ready for processing that must change one and not the other.
template <class T>
basic_model_parameters<T> untie_unembedding(const basic_model_parameters<T>& params) {
    model_config c = params.config();
    c.tied_unembed = false;
    basic_model_parameters<T> out(c);
    const std::span<const T> all = params.flat();
    for (const parameter_entry& e : out.layout()) {
        // The unembedding starts as the token embedding; every other tensor is copied from its own entry.
        const parameter_id from = e.id == parameter_id::unembed ? parameter_id::token_embedding : e.id;
        for (const parameter_entry& source : params.layout())
            if (source.id == from && source.layer == e.layer) {
                const auto begin = all.begin() + source.offset;
                std::copy(begin, begin + source.size(), out.flat().begin() + e.offset);
            }
    }
    return out;
}

/// fold_ln: folds every norm's gain (and a LayerNorm's bias) into the weights reading its output (W_Q, W_K, W_V and
/// their biases after ln1; W_in / W_gate and b_in after ln2; W_U and b_U after ln_final), then sets the gains to 1
/// and the norm biases to 0. With LayerNorm and `center_weights`, the reading weights also lose their mean over the
/// residual axis, as TransformerLens does. Needs an untied unembedding, and linear biases to fold a LayerNorm's bias
/// into; throws std::invalid_argument otherwise. A model without norms is left as it is.
template <class T>
void fold_layer_norms(basic_model_parameters<T>& p, bool center_weights = true) {
    const model_config& c = p.config();
    if (!c.has_norm()) return;
    detail::require_untied(p, "fold_layer_norms");
    const bool layer_norm = c.norm == norm_kind::layer, centre = layer_norm && center_weights;
    if (layer_norm && !c.linear_biases)
        throw std::invalid_argument("fold_layer_norms: a LayerNorm's bias needs the linear biases to fold into");
    auto fold = [&](tensor_view<T, 1> gain, tensor_view<T, 1> bias, std::initializer_list<tensor_view<T, 2>> readers,
                    std::initializer_list<tensor_view<T, 1>> reader_biases) {
        const tensor_view<const T, 1> g(gain), beta(bias);
        auto b = reader_biases.begin();
        for (const tensor_view<T, 2>& w : readers) {
            if (w.size() > 0) detail::fold_norm_into(w, *b, g, beta, centre);
            ++b;
        }
        for (index_t i = 0; i < gain.extent(0); ++i) gain(i) = T{1};
        for (index_t i = 0; i < bias.extent(0); ++i) bias(i) = T{0};
    };
    for (auto& layer : p.layers) {
        fold(layer.attn_norm, layer.attn_norm_bias, {layer.w_q, layer.w_k, layer.w_v}, {layer.b_q, layer.b_k, layer.b_v});
        // A gated MLP has no biases (model_config::validate), so W_gate's bias slot is an empty view.
        if (!c.attn_only())
            fold(layer.mlp_norm, layer.mlp_norm_bias, {layer.w_gate, layer.w_up}, {tensor_view<T, 1>{}, layer.b_up});
    }
    fold(p.final_norm, p.final_norm_bias, {p.unembed}, {p.unembed_bias});
}

/// center_writing_weights: removes the mean over the residual axis from everything that writes to the residual
/// stream (the token and position embeddings, W_O and b_O, W_out and b_out). Every reader of the stream is a
/// LayerNorm, which subtracts that mean anyway, so nothing downstream changes. Throws std::invalid_argument unless
/// the model has LayerNorm and an untied unembedding.
template <class T>
void center_writing_weights(basic_model_parameters<T>& p) {
    const model_config& c = p.config();
    if (c.norm != norm_kind::layer)
        throw std::invalid_argument("center_writing_weights: only valid when every reader of the residual stream is a "
                                    "LayerNorm (this model's norm is not)");
    detail::require_untied(p, "center_writing_weights");
    detail::centre_rows(p.token_embedding);  // (d_vocab, d_model): each embedding vector
    if (p.pos_embedding.size() > 0) detail::centre_rows(p.pos_embedding);
    for (auto& layer : p.layers) {
        detail::centre_columns(layer.w_o);  // (d_model, heads * d_head): each column writes along d_model
        detail::centre_vector(layer.b_o);
        if (layer.w_down.size() > 0) detail::centre_columns(layer.w_down);
        detail::centre_vector(layer.b_down);
    }
}

/// center_unembed: removes from the unembedding (and its bias) the mean over the vocabulary, which adds the same
/// amount to every logit of a position and so changes no probability. Needs an untied unembedding.
template <class T>
void center_unembed(basic_model_parameters<T>& p) {
    detail::require_untied(p, "center_unembed");
    detail::centre_columns(p.unembed);  // (d_vocab_out, d_model): each column loses its mean over the vocabulary
    detail::centre_vector(p.unembed_bias);
}

/// fold_value_biases: since each row of an attention pattern sums to 1, the value bias reaches the output as
/// W_O b_V whatever the pattern; moves it into b_O and zeroes b_V (grouped heads: each query head's share of its key/
/// value head's bias). Needs linear biases (std::invalid_argument otherwise).
template <class T>
void fold_value_biases(basic_model_parameters<T>& p) {
    const model_config& c = p.config();
    if (!c.linear_biases) throw std::invalid_argument("fold_value_biases: the model has no linear biases");
    const index_t d_head = c.d_head(), group = c.group_size();
    for (auto& layer : p.layers) {
        for (index_t o = 0; o < c.d_model; ++o) {
            double sum = static_cast<double>(layer.b_o(o));
            for (index_t h = 0; h < c.n_heads; ++h)
                for (index_t k = 0; k < d_head; ++k)
                    sum += static_cast<double>(layer.w_o(o, h * d_head + k)) *
                           static_cast<double>(layer.b_v((h / group) * d_head + k));
            layer.b_o(o) = static_cast<T>(sum);
        }
        for (index_t i = 0; i < layer.b_v.extent(0); ++i) layer.b_v(i) = T{0};
    }
}

MECHLENS_END_NAMESPACE
