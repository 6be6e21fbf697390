#pragma once
/// @file
/// Hyper-parameters of a decoder-only transformer, kept apart from weights and run state.

#include <cstdint>
#include <string>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// How rotary embedding pairs the dimensions of a head.
enum class rope_layout {
    adjacent_pairs,  ///< (0,1), (2,3), ...: llama2.c, GGUF/llama.cpp "normal" rope.
    split_halves,    ///< (i, i + d_head/2): Hugging Face LLaMA, GPT-NeoX.
};

/// The normalisation before attention, before the MLP and before the unembedding.
enum class norm_kind : std::uint8_t {
    rms,    ///< RMSNorm with a gain (LLaMA); fires the ln*.hook_scale and ln*.hook_normalized sites.
    none,   ///< No normalisation (TransformerLens's normalization_type None): the ln* sites do not exist.
    layer,  ///< LayerNorm with a gain and a bias (GPT-2, TransformerLens "LN"): centred, then as RMSNorm, plus bias.
};

/// How positions enter the model.
enum class positional_kind : std::uint8_t {
    rotary,   ///< Rotary embedding of queries and keys (LLaMA); fires attn.hook_rot_q/rot_k.
    learned,  ///< A learned (n_ctx, d_model) table added to the token embedding (GPT-2); fires hook_pos_embed.
};

/// The MLP of each block.
enum class mlp_kind : std::uint8_t {
    gated_silu,  ///< silu(x W_gate^T) * (x W_up^T), then W_down (LLaMA); fires mlp.hook_pre, hook_pre_linear, hook_post.
    plain_gelu,  ///< gelu_tanh(x W_up^T), then W_down (GPT-2's gelu_new); fires mlp.hook_pre, hook_post.
    none,        ///< Attention-only blocks (TransformerLens's attn_only): no MLP and no ln2/mlp sites.
    plain_relu,  ///< relu(x W_up^T), then W_down (TransformerLens act_fn "relu").
    plain_gelu_erf,  ///< gelu(x W_up^T) with the exact erf form, then W_down (TransformerLens act_fn "gelu").
};

/// Which keys a query attends to (TransformerLens's attention_dir).
enum class attention_dir : std::uint8_t {
    causal,         ///< Query p sees keys 0..p (decoders).
    bidirectional,  ///< Every query sees every key of the call (encoders, classifiers such as BERT).
};

/// Hyper-parameters of a LLaMA-family decoder; names follow TransformerLens where it has one.
struct model_config {
    index_t d_model = 0;     ///< Residual stream width ("dim").
    index_t n_layers = 0;    ///< Number of transformer blocks.
    index_t n_heads = 0;     ///< Query heads per block.
    index_t n_kv_heads = 0;  ///< Key/value heads per block (grouped-query attention when < n_heads).
    index_t d_mlp = 0;       ///< MLP hidden width ("hidden_dim").
    index_t d_vocab = 0;     ///< Vocabulary size.
    index_t n_ctx = 0;       ///< Maximum context length.
    float rope_theta = 10000.0f;                     ///< Rotary base frequency.
    float norm_eps = 1e-5f;                          ///< Epsilon inside RMSNorm.
    bool tied_unembed = true;                        ///< Unembedding shares the token embedding matrix.
    rope_layout rope = rope_layout::adjacent_pairs;  ///< Rotary pairing convention.
    norm_kind norm = norm_kind::rms;                 ///< Normalisation layers.
    positional_kind positions = positional_kind::rotary;  ///< Rotary or learned positions.
    mlp_kind mlp = mlp_kind::gated_silu;             ///< MLP type, or none for attention-only blocks.
    bool linear_biases = false;  ///< Biases on Q, K, V, O, the MLP's in and out and the unembedding (GPT-2).
    attention_dir attention = attention_dir::causal;  ///< Causal or bidirectional attention.
    index_t d_vocab_out = 0;  ///< Width of the logits when it differs from d_vocab (classifier heads); 0: d_vocab.
    index_t d_head_size = 0;  ///< Width of one head when it is not d_model / n_heads (TransformerLens's d_head); 0: that.
    bool parallel_attn_mlp = false;  ///< Attention and MLP both read resid_pre (GPT-NeoX use_parallel_residual).
    index_t rotary_dim_size = 0;  ///< Rotated dims per head (split-halves within the first rotary_dim); 0: d_head.

    /// True for attention-only blocks (no MLP).
    [[nodiscard]] constexpr bool attn_only() const noexcept { return mlp == mlp_kind::none; }
    /// True when the blocks and the unembedding are preceded by a normalisation layer.
    [[nodiscard]] constexpr bool has_norm() const noexcept { return norm != norm_kind::none; }
    /// True for a plain (ungated) MLP of any activation.
    [[nodiscard]] constexpr bool plain_mlp() const noexcept { return !attn_only() && mlp != mlp_kind::gated_silu; }
    /// The number of logits per position: d_vocab_out when set, else d_vocab.
    [[nodiscard]] constexpr index_t vocab_out() const noexcept { return d_vocab_out > 0 ? d_vocab_out : d_vocab; }
    /// True for causal attention.
    [[nodiscard]] constexpr bool causal() const noexcept { return attention == attention_dir::causal; }
    /// True for rotary positions.
    [[nodiscard]] constexpr bool rotary() const noexcept { return positions == positional_kind::rotary; }

    /// Width of one head.
    [[nodiscard]] constexpr index_t d_head() const noexcept {
        return d_head_size > 0 ? d_head_size : n_heads > 0 ? d_model / n_heads : 0;
    }
    /// Dimensions of each head that rotary embedding rotates (GPT-NeoX's rotary_pct * d_head); d_head by default.
    [[nodiscard]] constexpr index_t rotary_dim() const noexcept { return rotary_dim_size > 0 ? rotary_dim_size : d_head(); }
    /// Query heads that share one key/value head.
    [[nodiscard]] constexpr index_t group_size() const noexcept { return n_kv_heads > 0 ? n_heads / n_kv_heads : 0; }

    /// Throws format_error (prefixed with `where`) unless the hyper-parameters are consistent.
    void validate(const std::string& where = "model_config") const {
        auto fail = [&](const std::string& what) { throw format_error(where + ": " + what); };
        constexpr index_t limit = index_t{1} << 24;  // generous bound that keeps every product below 2^63
        auto in_range = [&](index_t v, const char* name) {
            if (v <= 0 || v > limit)
                fail(std::string(name) + " = " + std::to_string(v) + " is outside [1, " + std::to_string(limit) + "]");
        };
        in_range(d_model, "d_model");
        in_range(n_layers, "n_layers");
        in_range(n_heads, "n_heads");
        in_range(n_kv_heads, "n_kv_heads");
        if (!attn_only()) in_range(d_mlp, "d_mlp");
        in_range(d_vocab, "d_vocab");
        if (d_vocab_out != 0) in_range(d_vocab_out, "d_vocab_out");
        if (tied_unembed && vocab_out() != d_vocab)
            fail("a tied unembedding needs d_vocab_out (" + std::to_string(vocab_out()) + ") = d_vocab (" +
                 std::to_string(d_vocab) + ")");
        in_range(n_ctx, "n_ctx");
        if (d_head_size != 0)
            in_range(d_head_size, "d_head");
        else if (d_model % n_heads != 0)
            fail("d_model " + std::to_string(d_model) + " is not a multiple of n_heads " + std::to_string(n_heads) +
                 " (set d_head_size for heads of another width)");
        if (n_heads % n_kv_heads != 0)
            fail("n_heads " + std::to_string(n_heads) + " is not a multiple of n_kv_heads " +
                 std::to_string(n_kv_heads));
        if (rotary() && d_head() % 2 != 0)
            fail("d_head " + std::to_string(d_head()) + " must be even for rotary embedding");
        if (!(rope_theta > 0.0f)) fail("rope_theta must be positive");
        if (linear_biases && mlp == mlp_kind::gated_silu)
            fail("linear biases with a gated MLP are not supported (no model family mechlens reads has them)");
        if (!(norm_eps > 0.0f)) fail("norm_eps must be positive");
    }
};

MECHLENS_END_NAMESPACE
