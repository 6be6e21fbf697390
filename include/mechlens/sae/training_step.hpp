#pragma once
/// @file
/// The trainer's fast loss-and-gradient step: the same losses and gradients as sae_loss_and_gradients (the exact
/// reference, sae/loss.hpp), computed the way a training loop needs them. One dense product (the encoder, with the
/// batch-invariant GEMM in float); everything after it runs on the sparse latents: each row's kept latents, its
/// auxiliary (dead) latents and, for jumprelu, the latents inside the threshold's estimator window and (with the
/// pre-activation loss) the dead latents below their thresholds. Row work runs
/// in parallel over rows, parameter gradients in parallel over latents (each latent's rows summed in row order),
/// so the results do not depend on the thread count. No allocation once the buffers have grown to the batch.
///
/// Parameters live in one flat buffer (sae_parameter_layout), in layouts chosen for the step (Adam and gradient
/// clipping are element-wise or global, so layout does not change them): W_enc transposed, log(threshold) in
/// place of threshold, W_skip transposed. A transcoder (target y differs from input x, optional skip) is the same
/// step with y and the skip.
/// Supported: the four architectures with normalize_activations none, expected_average_only_in (the trainer scales
/// the data outside) and constant_norm_rescale; jumprelu with the step or tanh penalty and the pre-activation loss.
/// constant_norm_rescale (SAELens 6): each row is scaled by s = sqrt(d_in) / ||x|| before encoding and an SAE's
/// output divided by s, the MSE taken against the raw row; the step works in the scaled space, where that is the
/// MSE against s x weighted per row by 1 / s^2 (the auxiliary loss likewise; sparsity terms are on the latents of
/// the scaled row). A transcoder (SAELens's Transcoder) scales only its encoder's input: the decoder writes the
/// target's space unscaled, the skip reads the raw input. A standard SAE under constant_norm_rescale always takes
/// the sparse path.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/gemm.hpp"
#include "mechlens/kernels/vector_ops.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/loss.hpp"
#include "mechlens/sae/transcoder_definition.hpp"

#if defined(_OPENMP)
/// A static OpenMP loop over independent iterations (rows or latents), run serially when `parallel` is false.
#define MECHLENS_SAE_PARALLEL_FOR _Pragma("omp parallel for schedule(static) if(parallel)")
#else
#define MECHLENS_SAE_PARALLEL_FOR
#endif

MECHLENS_BEGIN_NAMESPACE

/// Where each parameter sits in the trainer's flat buffer (offsets in elements; size 0 when absent).
struct sae_parameter_layout {
    index_t d_in = 0;           ///< Input width (and the target's).
    index_t d_sae = 0;          ///< Latents.
    index_t w_enc_t = 0;        ///< (d_sae, d_in) W_enc transposed.
    index_t w_dec = 0;          ///< (d_sae, d_in)
    index_t b_enc = 0;          ///< (d_sae)
    index_t b_dec = 0;          ///< (d_in)
    index_t log_threshold = 0;  ///< (d_sae) jumprelu only: log(threshold), as SAELens trains it.
    index_t w_skip_t = 0;       ///< (d_in, d_in) W_skip transposed, transcoders with a skip only.
    bool threshold = false;     ///< log_threshold is present.
    bool skip = false;          ///< w_skip_t is present.
    index_t size = 0;           ///< Total elements.

    /// The layout for an SAE of this shape; `threshold` for jumprelu, `skip` for a transcoder's W_skip.
    static sae_parameter_layout make(index_t d_in, index_t d_sae, bool threshold, bool skip) {
        if (d_in <= 0 || d_sae <= 0)
            throw shape_error("sae_parameter_layout: d_in and d_sae must be positive, got " + std::to_string(d_in) +
                              " and " + std::to_string(d_sae));
        sae_parameter_layout l;
        l.d_in = d_in;
        l.d_sae = d_sae;
        l.threshold = threshold;
        l.skip = skip;
        index_t at = 0;
        l.w_enc_t = at;
        at += d_sae * d_in;
        l.w_dec = at;
        at += d_sae * d_in;
        l.b_enc = at;
        at += d_sae;
        l.b_dec = at;
        at += d_in;
        l.log_threshold = at;
        if (threshold) at += d_sae;
        l.w_skip_t = at;
        if (skip) at += d_in * d_in;
        l.size = at;
        return l;
    }
};

/// Packs transcoder (or SAE, with w_skip empty) weights into a flat buffer of `layout`; thresholds must be > 0.
template <class T>
void pack_sae_parameters(const basic_transcoder_weights<T>& w, const sae_parameter_layout& l, std::span<T> flat) {
    const basic_sae_weights<T>& s = w.sae;
    if (s.d_in != l.d_in || s.d_sae != l.d_sae || static_cast<index_t>(flat.size()) != l.size ||
        (l.threshold && static_cast<index_t>(s.threshold.size()) != l.d_sae) ||
        (l.skip && static_cast<index_t>(w.w_skip.size()) != l.d_in * l.d_in))
        throw shape_error("pack_sae_parameters: the weights do not fit the layout");
    const auto at = [](index_t i) { return static_cast<std::size_t>(i); };
    for (index_t i = 0; i < l.d_in; ++i)
        for (index_t j = 0; j < l.d_sae; ++j) flat[at(l.w_enc_t + j * l.d_in + i)] = s.w_enc[at(i * l.d_sae + j)];
    std::copy(s.w_dec.begin(), s.w_dec.end(), flat.begin() + l.w_dec);
    std::copy(s.b_enc.begin(), s.b_enc.end(), flat.begin() + l.b_enc);
    std::copy(s.b_dec.begin(), s.b_dec.end(), flat.begin() + l.b_dec);
    if (l.threshold)
        for (index_t j = 0; j < l.d_sae; ++j) {
            if (!(s.threshold[at(j)] > T(0)))
                throw std::invalid_argument("pack_sae_parameters: jumprelu thresholds must be positive");
            flat[at(l.log_threshold + j)] = std::log(s.threshold[at(j)]);
        }
    if (l.skip)
        for (index_t i = 0; i < l.d_in; ++i)
            for (index_t o = 0; o < l.d_in; ++o) flat[at(l.w_skip_t + o * l.d_in + i)] = w.w_skip[at(i * l.d_in + o)];
}

/// The weights held in a flat buffer of `layout` (SAELens's layout: W_enc (d_in, d_sae), threshold = exp(log)).
template <class T>
basic_transcoder_weights<T> unpack_sae_parameters(std::span<const T> flat, const sae_parameter_layout& l) {
    if (static_cast<index_t>(flat.size()) != l.size)
        throw shape_error("unpack_sae_parameters: the buffer does not fit the layout");
    const auto at = [](index_t i) { return static_cast<std::size_t>(i); };
    basic_transcoder_weights<T> w;
    basic_sae_weights<T>& s = w.sae;
    s.d_in = l.d_in;
    s.d_sae = l.d_sae;
    s.w_enc.resize(at(l.d_in * l.d_sae));
    for (index_t i = 0; i < l.d_in; ++i)
        for (index_t j = 0; j < l.d_sae; ++j) s.w_enc[at(i * l.d_sae + j)] = flat[at(l.w_enc_t + j * l.d_in + i)];
    s.w_dec.assign(flat.begin() + l.w_dec, flat.begin() + l.w_dec + l.d_sae * l.d_in);
    s.b_enc.assign(flat.begin() + l.b_enc, flat.begin() + l.b_enc + l.d_sae);
    s.b_dec.assign(flat.begin() + l.b_dec, flat.begin() + l.b_dec + l.d_in);
    if (l.threshold) {
        s.threshold.resize(at(l.d_sae));
        for (index_t j = 0; j < l.d_sae; ++j) s.threshold[at(j)] = std::exp(flat[at(l.log_threshold + j)]);
    }
    if (l.skip) {
        w.w_skip.resize(at(l.d_in * l.d_in));
        for (index_t i = 0; i < l.d_in; ++i)
            for (index_t o = 0; o < l.d_in; ++o) w.w_skip[at(i * l.d_in + o)] = flat[at(l.w_skip_t + o * l.d_in + i)];
    }
    return w;
}

/// The loss coefficients of one step (after their warm-up).
struct sae_step_coefficients {
    double l1 = 0;            ///< standard: L1 coefficient.
    double l0 = 0;            ///< jumprelu: L0 (step) coefficient.
    double bandwidth = 0.05;  ///< jumprelu: the straight-through estimator's width.
    double aux = 1;           ///< topk, batchtopk: auxiliary loss coefficient.
    jumprelu_sparsity sparsity = jumprelu_sparsity::step;  ///< jumprelu: the L0 (step) or tanh penalty.
    double tanh_scale = 4.0;  ///< jumprelu tanh penalty: the scale inside tanh.
    double pre_act = 0;       ///< jumprelu: pre-activation loss coefficient on dead latents (0: off).
};

/// What one step measured (means over the batch's rows).
struct sae_step_result {
    double mse = 0;      ///< Reconstruction error, sum over the output's width.
    double l1 = 0;       ///< standard: the weighted L1 term.
    double l0 = 0;       ///< jumprelu: the weighted L0 term.
    double aux = 0;      ///< topk, batchtopk: the auxiliary term.
    double pre_act = 0;  ///< jumprelu: the weighted pre-activation term.
    double total = 0;    ///< The sum of the terms.
    double l0_norm = 0;  ///< Mean number of non-zero latents per row (the L0 "norm" SAELens logs).
    /// Smallest positive latent activation of the batch (what batchtopk's threshold estimate follows), +inf if none.
    double smallest_positive = std::numeric_limits<double>::infinity();
};

namespace detail {

/// y (rows, outputs) = x (rows, depth) w^T, w (outputs, depth): the batch-invariant float GEMM.
inline void sae_gemm_xwt(const float* x, index_t rows, const float* w, index_t outputs, index_t depth, float* y,
                         bool accumulate = false) {
    kernels::detail::gemm_xwt({x, depth, w, depth, y, outputs, depth, accumulate}, rows, outputs);
}

/// The register tile of sae_gemm_xtw: y[j0 + t][i0 + q * W + lane] for t < RM, q < QN, each the fused
/// multiply-add chain over the rows r in order, from zero.
template <index_t RM, index_t QN, bool FullLast>
inline void sae_xtw_tile(const float* a, index_t rows, index_t a_cols, const float* b, index_t b_cols, float* y,
                         index_t j0, index_t i0) noexcept {
    using kernels::float_batch;
    constexpr index_t lanes = kernels::simd_width;
    constexpr auto R = static_cast<std::size_t>(RM), Q = static_cast<std::size_t>(QN);
    const index_t tail = std::min(lanes, b_cols - i0 - (QN - 1) * lanes);  // lanes of the last vector
    float_batch acc[R][Q];
    for (std::size_t t = 0; t < R; ++t)
        for (std::size_t q = 0; q < Q; ++q) acc[t][q] = float_batch(0.0f);
    for (index_t r = 0; r < rows; ++r) {
        const float* b_row = b + r * b_cols + i0;
        float_batch bv[Q];
        for (std::size_t q = 0; q + 1 < Q; ++q)
            bv[q] = float_batch::load_unaligned(b_row + static_cast<index_t>(q) * lanes);
        if constexpr (FullLast)
            bv[Q - 1] = float_batch::load_unaligned(b_row + (QN - 1) * lanes);
        else
            bv[Q - 1] = kernels::detail::load_partial(b_row + (QN - 1) * lanes, tail, 0.0f);
        const float* a_row = a + r * a_cols + j0;
        for (std::size_t t = 0; t < R; ++t) {
            const float_batch av(a_row[t]);
            for (std::size_t q = 0; q < Q; ++q) acc[t][q] = kernels::fused_multiply_add(av, bv[q], acc[t][q]);
        }
    }
    for (std::size_t t = 0; t < R; ++t) {
        float* y_row = y + (j0 + static_cast<index_t>(t)) * b_cols + i0;
        for (std::size_t q = 0; q + 1 < Q; ++q) acc[t][q].store_unaligned(y_row + static_cast<index_t>(q) * lanes);
        alignas(64) float last[static_cast<std::size_t>(lanes)];
        acc[t][Q - 1].store_aligned(last);
        for (index_t l = 0; l < tail; ++l) y_row[(QN - 1) * lanes + l] = last[static_cast<std::size_t>(l)];
    }
}

/// y (a_cols, b_cols) = a^T b for a (rows, a_cols) and b (rows, b_cols), both row-major: every element is the fused
/// multiply-add chain over the rows in order, whatever the thread count (threads split the rows of y). The weight
/// gradients of the dense standard-SAE step, without transposing the (rows x latents) matrices.
inline void sae_gemm_xtw(const float* a, index_t rows, index_t a_cols, const float* b, index_t b_cols, float* y) {
    constexpr index_t lanes = kernels::simd_width, tile_rows = 6;
    const index_t vectors = (b_cols + lanes - 1) / lanes;
    const index_t tiles = (a_cols + tile_rows - 1) / tile_rows;
    const bool parallel = static_cast<double>(rows) * static_cast<double>(a_cols) * static_cast<double>(b_cols) >=
                          static_cast<double>(1 << 20);
    (void)parallel;  // read by the OpenMP pragma only
    // Whether the tile's last vector of columns is whole (chosen outside the loop over rows).
    const auto tile_of = [&]<index_t RM, index_t QN>(index_t j0, index_t i0) {
        if (b_cols - i0 - (QN - 1) * lanes >= lanes)
            sae_xtw_tile<RM, QN, true>(a, rows, a_cols, b, b_cols, y, j0, i0);
        else
            sae_xtw_tile<RM, QN, false>(a, rows, a_cols, b, b_cols, y, j0, i0);
    };
    // Tiles of RM rows of y by `width` vectors (1 to 4) of its columns.
    const auto run = [&]<index_t RM>(index_t width, index_t j0, index_t i0) {
        switch (width) {
            case 4: tile_of.template operator()<RM, 4>(j0, i0); break;
            case 3: tile_of.template operator()<RM, 3>(j0, i0); break;
            case 2: tile_of.template operator()<RM, 2>(j0, i0); break;
            default: tile_of.template operator()<RM, 1>(j0, i0); break;
        }
    };
    MECHLENS_SAE_PARALLEL_FOR
    for (index_t tile = 0; tile < tiles; ++tile) {
        const index_t j0 = tile * tile_rows, height = std::min(tile_rows, a_cols - j0);
        for (index_t v = 0; v < vectors; v += 4) {
            const index_t width = std::min<index_t>(4, vectors - v), i0 = v * lanes;
            if (height == tile_rows)
                run.template operator()<tile_rows>(width, j0, i0);
            else  // the last rows of y one at a time
                for (index_t j = j0; j < j0 + height; ++j) run.template operator()<1>(width, j, i0);
        }
    }
}

/// y (a_cols, b_cols) = a^T b in double, summed over the rows in order (tests).
inline void sae_gemm_xtw(const double* a, index_t rows, index_t a_cols, const double* b, index_t b_cols, double* y) {
    for (index_t j = 0; j < a_cols; ++j)
        for (index_t i = 0; i < b_cols; ++i) {
            double s = 0;
            for (index_t r = 0; r < rows; ++r) s += a[r * a_cols + j] * b[r * b_cols + i];
            y[j * b_cols + i] = s;
        }
}

/// y (rows, outputs) = x (rows, depth) w^T in double (tests).
inline void sae_gemm_xwt(const double* x, index_t rows, const double* w, index_t outputs, index_t depth, double* y,
                         bool accumulate = false) {
    for (index_t r = 0; r < rows; ++r)
        for (index_t o = 0; o < outputs; ++o) {
            double s = 0;
            for (index_t i = 0; i < depth; ++i) s += x[r * depth + i] * w[o * depth + i];
            y[r * outputs + o] = accumulate ? y[r * outputs + o] + s : s;
        }
}

/// Sum of a[i] * b[i].
inline float sae_dot(const float* a, const float* b, index_t n) { return kernels::dot(a, b, n); }
/// Sum of a[i] * b[i] in double.
inline double sae_dot(const double* a, const double* b, index_t n) {
    double s = 0;
    for (index_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}
/// y += a * x.
inline void sae_axpy(float* y, float a, const float* x, index_t n) { kernels::axpy(y, a, x, n); }
/// y += a * x in double.
inline void sae_axpy(double* y, double a, const double* x, index_t n) {
    for (index_t i = 0; i < n; ++i) y[i] += a * x[i];
}

/// One latent of one row that the step touches.
template <class T>
struct sae_entry {
    std::int32_t row = 0;  ///< Batch row.
    std::int32_t col = 0;  ///< Latent.
    T decoded = 0;         ///< What the main decoder multiplies W_dec's row by (0 when not kept).
    T aux = 0;             ///< What the auxiliary decoder multiplies it by (0 when not chosen).
    T d_acts = 0;          ///< jumprelu: d(loss)/d(acts) (for the threshold's estimator).
    T d_pre = 0;           ///< d(loss)/d(pre).
    T pre = 0;             ///< The pre-activation.
    bool kept = false;     ///< The latent fired (acts != 0).
};

}  // namespace detail

/// The fast training step for one SAE or transcoder shape (float for training, double for tests); reuse one per
/// training run so its buffers are allocated once.
template <class T>
class sae_training_step {
public:
    /// A step for `options`' architecture over parameters of `layout`; throws std::invalid_argument for a layout
    /// that does not fit the architecture or a k out of range.
    sae_training_step(const sae_parameter_layout& layout, const sae_options& options) : l_(layout), o_(options) {
        if ((o_.architecture == sae_architecture::jumprelu) != l_.threshold)
            throw std::invalid_argument("sae_training_step: jumprelu needs the threshold in the layout, others not");
        if ((o_.architecture == sae_architecture::topk || o_.architecture == sae_architecture::batchtopk) &&
            (!(o_.k > 0) || o_.k > static_cast<double>(l_.d_sae)))
            throw std::invalid_argument("sae_training_step: k must be in (0, d_sae]");
    }

    /// A standard SAE whose firing latents exceed this fraction of the batch's (rows x latents) takes the dense
    /// path (GEMMs for the decoder and every gradient); 0 forces it, anything above 1 forbids it, and a negative
    /// value (the default) picks it by shape (dense_threshold). The two paths differ only in rounding; the choice
    /// depends on the data and shapes alone, never on the thread count.
    double dense_fraction = -1;

    /// The firing fraction above which the dense path runs: dense_fraction, or by shape when it is negative.
    /// Measured on one core (batch 4096; docs/PERFORMANCE.md, "SAE training"): the dense step costs the same as the
    /// sparse one at about 17 % firing when W_dec fits in 1 MiB (d_in 64, 1024 or 2048 latents), and at about 8 %
    /// when it does not (d_in 512, 8192 latents: the sparse path's per-latent passes then miss the caches).
    [[nodiscard]] double dense_threshold() const noexcept {
        if (dense_fraction >= 0) return dense_fraction;
        const double decoder_bytes =
            static_cast<double>(l_.d_sae) * static_cast<double>(l_.d_in) * static_cast<double>(sizeof(T));
        return decoder_bytes > 1024.0 * 1024.0 ? 0.05 : 0.15;
    }

    /// The step trains a transcoder: under constant_norm_rescale only the encoder's input is scaled, the output
    /// is compared unscaled with y (SAELens's Transcoder.decode does not undo the scale). Without normalization
    /// this changes nothing.
    bool transcoder = false;

    /// The layout of the parameter buffers.
    [[nodiscard]] const sae_parameter_layout& layout() const noexcept { return l_; }
    /// (d_sae) 1 for each latent that fired in the last step.
    [[nodiscard]] const std::vector<unsigned char>& fired() const noexcept { return fired_; }

    /// Losses of `params` on the batch x (n, d_in) with target y (n, d_in; pass x for an SAE) and their gradients
    /// written to `grads` (same layout). `dead` (d_sae, or empty) marks the latents the auxiliary loss may use.
    sae_step_result compute(std::span<const T> params, std::span<T> grads, const T* x, const T* y, index_t n,
                            const sae_step_coefficients& c, const std::vector<unsigned char>& dead) {
        const index_t d_in = l_.d_in, d_sae = l_.d_sae;
        if (static_cast<index_t>(params.size()) != l_.size || static_cast<index_t>(grads.size()) != l_.size)
            throw shape_error("sae_training_step: parameter or gradient buffer does not fit the layout");
        if (n <= 0 || n > std::numeric_limits<std::int32_t>::max())
            throw shape_error("sae_training_step: the batch needs between 1 and 2^31 - 1 rows");
        if (!dead.empty() && static_cast<index_t>(dead.size()) != d_sae)
            throw std::invalid_argument("sae_training_step: the dead mask needs d_sae entries");
        resize(n);
        const auto at = [](index_t i) { return static_cast<std::size_t>(i); };
        // constant_norm_rescale: the encoder reads x s (n, d_in); an SAE's target is x s with row weight 1 / s^2.
        const bool normalized = o_.normalize_activations == sae_normalization::constant_norm_rescale;
        const bool weighted = normalized && !transcoder;
        const T* encoder_in = x;  // (n, d_in)
        const T* target = y;      // (n, d_in)
        if (normalized) {
            scaled_in_.resize(static_cast<std::size_t>(n * d_in));
            row_weight_.resize(static_cast<std::size_t>(n));
            const T root_d = std::sqrt(static_cast<T>(d_in));
            for (index_t r = 0; r < n; ++r) {
                T sum = 0;
                for (index_t i = 0; i < d_in; ++i) sum += x[r * d_in + i] * x[r * d_in + i];
                const T s = root_d / std::sqrt(sum);
                for (index_t i = 0; i < d_in; ++i) scaled_in_[at(r * d_in + i)] = x[r * d_in + i] * s;
                row_weight_[at(r)] = T(1) / (s * s);
            }
            encoder_in = scaled_in_.data();
            if (!transcoder) target = scaled_in_.data();
        }
        const T* w_enc_t = params.data() + l_.w_enc_t;  // (d_sae, d_in)
        const T* w_dec = params.data() + l_.w_dec;      // (d_sae, d_in)
        const T* b_enc = params.data() + l_.b_enc;      // (d_sae)
        const T* b_dec = params.data() + l_.b_dec;      // (d_in)
        const T* log_t = params.data() + l_.log_threshold;  // (d_sae)
        const T* w_skip_t = params.data() + l_.w_skip_t;    // (d_in, d_in)
        std::fill(grads.begin(), grads.end(), T(0));
        const auto inv_n = T(1) / static_cast<T>(n);
        const sae_architecture arch = o_.architecture;
        const bool rescale = sae_rescales(o_);
        const bool parallel = static_cast<double>(n) * static_cast<double>(d_sae) >= 65536.0;

        // Decoder norms (d_sae) and thresholds (d_sae).
        for (index_t j = 0; j < d_sae; ++j) {
            const T* row = w_dec + j * d_in;
            T s = 0;
            for (index_t i = 0; i < d_in; ++i) s += row[i] * row[i];
            norms_[at(j)] = std::sqrt(s);
            if (l_.threshold) threshold_[at(j)] = std::exp(log_t[j]);
        }
        // sae_in = x - b_dec (or x), (n, d_in); pre = sae_in W_enc + b_enc, (n, d_sae).
        const bool sub = o_.apply_b_dec_to_input;
        MECHLENS_SAE_PARALLEL_FOR
        for (index_t r = 0; r < n; ++r)
            for (index_t i = 0; i < d_in; ++i)
                sae_in_[at(r * d_in + i)] = sub ? encoder_in[r * d_in + i] - b_dec[i] : encoder_in[r * d_in + i];
        detail::sae_gemm_xwt(sae_in_.data(), n, w_enc_t, d_sae, d_in, pre_.data());

        // Batchtopk: the value a latent must reach, the int(k n)-th largest ReLU'd score of the batch.
        T batch_cut = 0;
        std::size_t batch_take = 0;
        if (arch == sae_architecture::batchtopk) {
            batch_take = std::min(static_cast<std::size_t>(o_.k * static_cast<double>(n)), at(n * d_sae));
            MECHLENS_SAE_PARALLEL_FOR
            for (index_t r = 0; r < n; ++r)
                for (index_t j = 0; j < d_sae; ++j) {
                    const T p = pre_[at(r * d_sae + j)] + b_enc[j];
                    pre_[at(r * d_sae + j)] = p;
                    scores_[at(r * d_sae + j)] = std::max(rescale ? p * norms_[at(j)] : p, T(0));
                }
            if (batch_take > 0) {
                std::nth_element(scores_.begin(), scores_.begin() + static_cast<std::ptrdiff_t>(batch_take) - 1,
                                 scores_.end(), std::greater<T>());
                batch_cut = scores_[batch_take - 1];
            }
        } else {
            MECHLENS_SAE_PARALLEL_FOR
            for (index_t r = 0; r < n; ++r)
                for (index_t j = 0; j < d_sae; ++j) pre_[at(r * d_sae + j)] += b_enc[j];
        }
        // Batchtopk ties at the cut go to the lowest flat index, as in the reference: count the latents above it.
        std::size_t cut_ties_allowed = 0;
        if (arch == sae_architecture::batchtopk && batch_take > 0) {
            std::size_t above = 0;
            for (index_t f = 0; f < n * d_sae; ++f) {
                const T p = pre_[at(f)];
                const T s = std::max(rescale ? p * norms_[at(f % d_sae)] : p, T(0));
                if (s > batch_cut) ++above;
            }
            cut_ties_allowed = batch_take - above;
        }

        // Auxiliary loss: k_aux = min(d_in / 2, dead), scaled by min(dead / (d_in / 2), 1).
        index_t dead_count = 0;
        for (unsigned char d : dead) dead_count += d != 0 ? 1 : 0;
        const bool topish = arch == sae_architecture::topk || arch == sae_architecture::batchtopk;
        index_t k_aux = topish && dead_count > 0 ? d_in / 2 : 0;
        T aux_scale = 0;
        if (k_aux > 0) {
            aux_scale = std::min(static_cast<T>(dead_count) / static_cast<T>(k_aux), T(1));
            k_aux = std::min(k_aux, dead_count);
            dead_list_.clear();
            for (index_t j = 0; j < d_sae; ++j)
                if (dead[at(j)] != 0) dead_list_.push_back(static_cast<std::int32_t>(j));
        }
        const T bw = static_cast<T>(c.bandwidth);
        // jumprelu's pre-activation loss: every dead latent below its threshold, in every row.
        dead_mask_ = dead.empty() ? nullptr : dead.data();
        pre_act_on_ = arch == sae_architecture::jumprelu && c.pre_act != 0 && dead_count > 0;

        // A standard SAE with many latents firing (early training) runs the decoder and every gradient as dense
        // products: the sparse path's per-latent work only pays while few latents fire.
        bool dense = false;
        if (arch == sae_architecture::standard && !normalized) {
            std::size_t positive = 0;
            for (std::size_t f = 0; f < at(n * d_sae); ++f) positive += pre_[f] > T(0) ? 1u : 0u;
            dense = static_cast<double>(positive) > dense_threshold() * static_cast<double>(n * d_sae);
        }
        last_dense_ = dense;
        entries_.clear();
        if (!dense) {
            // Select each row's entries (row order within each thread's contiguous block of rows).
            const int threads = thread_count(parallel);
            if (static_cast<int>(thread_entries_.size()) < threads) thread_entries_.resize(static_cast<std::size_t>(threads));
            if (static_cast<int>(thread_order_.size()) < threads) {
                thread_order_.resize(static_cast<std::size_t>(threads));
                thread_scores_.resize(static_cast<std::size_t>(threads));
                thread_sorted_.resize(static_cast<std::size_t>(threads));
            }
    #if defined(_OPENMP)
    #pragma omp parallel num_threads(threads) if (threads > 1)
    #endif
            {
                int t = 0;
    #if defined(_OPENMP)
                t = omp_get_thread_num();
    #endif
                std::vector<detail::sae_entry<T>>& out = thread_entries_[static_cast<std::size_t>(t)];
                std::vector<std::int32_t>& order = thread_order_[static_cast<std::size_t>(t)];
                std::vector<T>& scores = thread_scores_[static_cast<std::size_t>(t)];
                std::vector<T>& sorted = thread_sorted_[static_cast<std::size_t>(t)];
                out.clear();
                const index_t r0 = n * t / threads, r1 = n * (t + 1) / threads;
                for (index_t r = r0; r < r1; ++r) select_row(r, out, order, scores, sorted, batch_cut, k_aux, bw);
            }
            entries_.clear();
            for (int t = 0; t < threads; ++t)
                entries_.insert(entries_.end(), thread_entries_[static_cast<std::size_t>(t)].begin(),
                                thread_entries_[static_cast<std::size_t>(t)].end());
            // Batchtopk: drop the ties at the cut beyond the ones the reference keeps (lowest flat index first).
            if (arch == sae_architecture::batchtopk) {
                for (detail::sae_entry<T>& e : entries_) {
                    if (!e.kept) continue;
                    const T s = std::max(rescale ? e.pre * norms_[at(e.col)] : e.pre, T(0));
                    if (s == batch_cut) {
                        if (cut_ties_allowed > 0)
                            --cut_ties_allowed;
                        else {
                            e.kept = false;
                            e.decoded = 0;
                        }
                    }
                }
            }
            row_start_.assign(at(n + 1), 0);
            for (const detail::sae_entry<T>& e : entries_) ++row_start_[static_cast<std::size_t>(e.row) + 1];
            for (index_t r = 0; r < n; ++r) row_start_[at(r + 1)] += row_start_[at(r)];
        }

        const bool skip = l_.skip;
        const bool has_aux = k_aux > 0;
        const T c_l1 = static_cast<T>(c.l1), c_l0 = static_cast<T>(c.l0);
        const T c_aux = static_cast<T>(c.aux) * aux_scale;
        const bool tanh_penalty = c.sparsity == jumprelu_sparsity::tanh;
        const T tanh_scale = static_cast<T>(c.tanh_scale), c_pre = static_cast<T>(c.pre_act);
        if (dense) {
            dense_standard(params, grads, x, y, n, c_l1);
        } else {
            // Forward decode: out = b_dec + sum decoded_j W_dec[j] (+ x W_skip); aux_out likewise, (n, d_in).
            if (l_.skip) detail::sae_gemm_xwt(x, n, w_skip_t, d_in, d_in, out_.data());
            MECHLENS_SAE_PARALLEL_FOR
            for (index_t r = 0; r < n; ++r) {
                T* o = out_.data() + r * d_in;
                T* a = aux_out_.data() + r * d_in;
                for (index_t i = 0; i < d_in; ++i) {
                    o[i] = skip ? o[i] + b_dec[i] : b_dec[i];
                    if (has_aux) a[i] = b_dec[i];
                }
                for (std::size_t e = row_start_[at(r)]; e < row_start_[at(r + 1)]; ++e) {
                    const detail::sae_entry<T>& en = entries_[e];
                    if (en.decoded != T(0)) detail::sae_axpy(o, en.decoded, w_dec + en.col * d_in, d_in);
                    if (en.aux != T(0)) detail::sae_axpy(a, en.aux, w_dec + en.col * d_in, d_in);
                }
            }
            // Row losses, d(out) and d(aux_out), then d(acts) and d(pre) of each entry.
            MECHLENS_SAE_PARALLEL_FOR
            for (index_t r = 0; r < n; ++r) {
                const T* o = out_.data() + r * d_in;
                const T* yr = target + r * d_in;
                T* d = d_out_.data() + r * d_in;
                T mse = 0, aux = 0, sparsity = 0, fired = 0, pre_act = 0;
                const T row_weight = weighted ? row_weight_[at(r)] : T(1);
                const T row_scale = weighted ? inv_n * row_weight : inv_n;  // d(mean) / d(row's sum)
                for (index_t i = 0; i < d_in; ++i) {
                    const T diff = o[i] - yr[i];
                    mse += diff * diff;
                    d[i] = T(2) * diff * row_scale;
                }
                if (has_aux) {
                    const T* a = aux_out_.data() + r * d_in;
                    T* da = d_aux_.data() + r * d_in;
                    for (index_t i = 0; i < d_in; ++i) {
                        const T diff = a[i] - (yr[i] - o[i]);
                        aux += diff * diff;
                        da[i] = c_aux * T(2) * diff * row_scale;
                    }
                }
                for (std::size_t e = row_start_[at(r)]; e < row_start_[at(r + 1)]; ++e) {
                    detail::sae_entry<T>& en = entries_[e];
                    const T* wrow = w_dec + en.col * d_in;
                    const T nj = norms_[static_cast<std::size_t>(en.col)];
                    if (en.kept) fired += 1;
                    T dp = 0;
                    switch (arch) {
                        case sae_architecture::standard:
                            if (en.kept) {
                                sparsity += en.decoded * nj;
                                dp = detail::sae_dot(d, wrow, d_in) + c_l1 * inv_n * nj;
                            }
                            break;
                        case sae_architecture::jumprelu: {
                            en.d_acts = detail::sae_dot(d, wrow, d_in);
                            if (tanh_penalty) {
                                const T th = en.kept ? std::tanh(tanh_scale * en.decoded * nj) : T(0);
                                en.d_acts += c_l0 * inv_n * (T(1) - th * th) * tanh_scale * nj;
                                sparsity += th;
                            } else if (en.kept) {
                                sparsity += T(1);
                            }
                            if (en.kept) dp = en.d_acts;
                            const T below = threshold_[static_cast<std::size_t>(en.col)] - en.pre;
                            if (pre_act_on_ && dead_mask_[en.col] != 0 && below > T(0)) {
                                pre_act += below * nj;
                                dp -= c_pre * inv_n * nj;
                            }
                            break;
                        }
                        case sae_architecture::topk:
                        case sae_architecture::batchtopk:
                            if (en.kept) dp = rescale ? (detail::sae_dot(d, wrow, d_in) / nj) * nj : detail::sae_dot(d, wrow, d_in);
                            if (en.aux != T(0)) dp += detail::sae_dot(d_aux_.data() + r * d_in, wrow, d_in);
                            break;
                    }
                    en.d_pre = dp;
                }
                row_mse_[at(r)] = weighted ? mse * row_weight : mse;
                row_aux_[at(r)] = weighted ? aux * row_weight : aux;
                row_sparsity_[at(r)] = sparsity;
                row_fired_[at(r)] = fired;
                row_pre_act_[at(r)] = pre_act;
            }

            // Columns: each latent's entries in row order (a counting sort of the entries by latent).
            col_start_.assign(at(d_sae + 1), 0);
            for (const detail::sae_entry<T>& e : entries_) ++col_start_[static_cast<std::size_t>(e.col) + 1];
            for (index_t j = 0; j < d_sae; ++j) col_start_[at(j + 1)] += col_start_[at(j)];
            col_entries_.resize(entries_.size());
            col_fill_.assign(col_start_.begin(), col_start_.end() - 1);
            for (std::size_t e = 0; e < entries_.size(); ++e)
                col_entries_[col_fill_[static_cast<std::size_t>(entries_[e].col)]++] = static_cast<std::uint32_t>(e);

            // Parameter gradients, one latent at a time.
            T* g_w_enc_t = grads.data() + l_.w_enc_t;
            T* g_w_dec = grads.data() + l_.w_dec;
            T* g_b_enc = grads.data() + l_.b_enc;
            T* g_log_t = grads.data() + l_.log_threshold;
            MECHLENS_SAE_PARALLEL_FOR
            for (index_t j = 0; j < d_sae; ++j) {
                T* gd = g_w_dec + j * d_in;
                T* ge = g_w_enc_t + j * d_in;
                T b = 0, acts_sum = 0, gt = 0, d_norm = 0;  // d_norm: jumprelu's d(loss)/d||W_dec row j||
                const T t = l_.threshold ? threshold_[at(j)] : T(0);
                bool any = false;
                for (std::size_t q = col_start_[at(j)]; q < col_start_[at(j + 1)]; ++q) {
                    const detail::sae_entry<T>& en = entries_[col_entries_[q]];
                    const index_t r = en.row;
                    if (en.decoded != T(0)) detail::sae_axpy(gd, en.decoded, d_out_.data() + r * d_in, d_in);
                    if (en.aux != T(0)) detail::sae_axpy(gd, en.aux, d_aux_.data() + r * d_in, d_in);
                    if (en.d_pre != T(0)) detail::sae_axpy(ge, en.d_pre, sae_in_.data() + r * d_in, d_in);
                    b += en.d_pre;
                    if (en.kept) {
                        acts_sum += en.decoded;
                        any = true;
                    }
                    if (l_.threshold) {
                        const T rect = detail::sae_rectangle((en.pre - t) / bw);
                        if (!tanh_penalty) gt += -(T(1) / bw) * rect * c_l0 * inv_n;
                        gt += -(t / bw) * rect * en.d_acts;
                        if (tanh_penalty && en.kept) {
                            const T th = std::tanh(tanh_scale * en.decoded * norms_[at(j)]);
                            d_norm += c_l0 * inv_n * (T(1) - th * th) * tanh_scale * en.decoded;
                        }
                        if (pre_act_on_ && dead_mask_[j] != 0 && t - en.pre > T(0)) {
                            gt += c_pre * inv_n * norms_[at(j)];
                            d_norm += c_pre * inv_n * (t - en.pre);
                        }
                    }
                }
                g_b_enc[j] = b;
                if (arch == sae_architecture::standard && acts_sum != T(0) && norms_[at(j)] != T(0)) {
                    const T dn = c_l1 * inv_n * acts_sum / norms_[at(j)];
                    detail::sae_axpy(gd, dn, w_dec + j * d_in, d_in);
                }
                if (d_norm != T(0) && norms_[at(j)] != T(0)) detail::sae_axpy(gd, d_norm / norms_[at(j)], w_dec + j * d_in, d_in);
                if (l_.threshold) g_log_t[j] = gt * t;
                fired_[at(j)] = any ? 1 : 0;
            }
        }
        // b_dec: through both decoders and, when subtracted from the input, through the encoder.
        T* g_b_dec = grads.data() + l_.b_dec;
        for (index_t r = 0; r < n; ++r) {
            for (index_t i = 0; i < d_in; ++i) g_b_dec[i] += d_out_[at(r * d_in + i)];
            if (has_aux)
                for (index_t i = 0; i < d_in; ++i) g_b_dec[i] += d_aux_[at(r * d_in + i)];
        }
        const T* g_b_enc_all = grads.data() + l_.b_enc;
        if (sub)
            for (index_t j = 0; j < d_sae; ++j)
                if (g_b_enc_all[j] != T(0)) detail::sae_axpy(g_b_dec, -g_b_enc_all[j], w_enc_t + j * d_in, d_in);
        // W_skip^T (d_out, d_in) = d(out)^T x.
        if (l_.skip) {
            transpose(d_out_.data(), n, d_in, d_out_t_.data());
            transpose(x, n, d_in, x_t_.data());
            detail::sae_gemm_xwt(d_out_t_.data(), d_in, x_t_.data(), d_in, n, grads.data() + l_.w_skip_t);
        }

        // Batch means, summed in row order.
        sae_step_result res;
        for (index_t r = 0; r < n; ++r) {
            res.mse += static_cast<double>(row_mse_[at(r)]);
            res.aux += static_cast<double>(row_aux_[at(r)]);
            res.l0_norm += static_cast<double>(row_fired_[at(r)]);
            if (arch == sae_architecture::standard) res.l1 += static_cast<double>(row_sparsity_[at(r)]);
            if (arch == sae_architecture::jumprelu) res.l0 += static_cast<double>(row_sparsity_[at(r)]);
            if (pre_act_on_) res.pre_act += static_cast<double>(row_pre_act_[at(r)]);
        }
        const double dn = static_cast<double>(n);
        res.mse /= dn;
        res.aux *= static_cast<double>(c_aux) / dn;
        res.l1 *= c.l1 / dn;
        res.l0 *= c.l0 / dn;
        res.pre_act *= c.pre_act / dn;
        res.l0_norm /= dn;
        res.total = res.mse + res.l1 + res.l0 + res.aux + res.pre_act;
        for (const detail::sae_entry<T>& e : entries_)
            if (e.kept) {
                const T a = rescale ? e.decoded * norms_[static_cast<std::size_t>(e.col)] : e.decoded;
                res.smallest_positive = std::min(res.smallest_positive, static_cast<double>(a));
            }
        return res;
    }

    /// The activations of the last step as SAELens's hook_sae_acts_post (n, d_sae), dense (tests).
    [[nodiscard]] std::vector<T> last_acts(index_t n) const {
        if (last_dense_) return std::vector<T>(acts_.begin(), acts_.begin() + n * l_.d_sae);
        std::vector<T> acts(static_cast<std::size_t>(n * l_.d_sae), T(0));
        const bool rescale = sae_rescales(o_);
        for (const detail::sae_entry<T>& e : entries_)
            if (e.kept)
                acts[static_cast<std::size_t>(e.row) * static_cast<std::size_t>(l_.d_sae) +
                     static_cast<std::size_t>(e.col)] =
                    rescale ? e.decoded * norms_[static_cast<std::size_t>(e.col)] : e.decoded;
        return acts;
    }

private:
    static int thread_count(bool parallel) {
#if defined(_OPENMP)
        return parallel ? std::max(1, omp_get_max_threads()) : 1;
#else
        (void)parallel;
        return 1;
#endif
    }

    /// out (cols, rows) = a (rows, cols)^T, through a 16 x 16 tile on the stack: each tile reads 16 cache lines of a
    /// and writes 16 of out, each line whole. (Copying element by element straight across would touch a line of out
    /// per element, and rows 4 KiB apart share a cache set: that took a third of a standard SAE's dense step.)
    static void transpose(const T* a, index_t rows, index_t cols, T* out) {
        constexpr index_t tile = 16;
        const bool parallel = static_cast<double>(rows) * static_cast<double>(cols) >= 65536.0;
        (void)parallel;  // read by the OpenMP pragma only
        MECHLENS_SAE_PARALLEL_FOR
        for (index_t r0 = 0; r0 < rows; r0 += tile) {
            const index_t r_end = std::min(rows, r0 + tile);
            T block[tile][tile];  // block[c - c0][r - r0]
            for (index_t c0 = 0; c0 < cols; c0 += tile) {
                const index_t c_end = std::min(cols, c0 + tile);
                for (index_t r = r0; r < r_end; ++r)
                    for (index_t c = c0; c < c_end; ++c) block[c - c0][r - r0] = a[r * cols + c];
                for (index_t c = c0; c < c_end; ++c)
                    for (index_t r = r0; r < r_end; ++r) out[c * rows + r] = block[c - c0][r - r0];
            }
        }
    }

    void resize(index_t n) {
        const auto nd = static_cast<std::size_t>(n * l_.d_in), ns = static_cast<std::size_t>(n * l_.d_sae);
        const auto rows = static_cast<std::size_t>(n), ds = static_cast<std::size_t>(l_.d_sae);
        sae_in_.resize(nd);
        pre_.resize(ns);
        if (o_.architecture == sae_architecture::batchtopk) scores_.resize(ns);
        out_.resize(nd);
        aux_out_.resize(nd);
        d_out_.resize(nd);
        d_aux_.resize(nd);
        if (l_.skip) {
            d_out_t_.resize(nd);
            x_t_.resize(nd);
        }
        norms_.resize(ds);
        threshold_.resize(ds);
        fired_.resize(ds);
        row_mse_.resize(rows);
        row_aux_.resize(rows);
        row_sparsity_.resize(rows);
        row_fired_.resize(rows);
        row_pre_act_.resize(rows);
    }

    /// The k candidates with the largest score (ties to the lower latent), in latent order, into `out`:
    /// candidate(m) for m < count gives latents in increasing order. A strided sample of the scores gives a value
    /// that about 2k scores exceed; only those are quickselected, which is exact whenever at least k exceed it
    /// (otherwise all scores are). The result does not depend on the sample.
    template <class Candidate, class Score>
    static void top_k(std::size_t k, std::size_t count, Candidate candidate, Score score, std::vector<std::int32_t>& out,
                      std::vector<T>& scores, std::vector<T>& sorted) {
        out.clear();
        scores.resize(count);
        for (std::size_t m = 0; m < count; ++m) scores[m] = score(candidate(m));
        if (k >= count) {
            for (std::size_t m = 0; m < count; ++m) out.push_back(candidate(m));
            return;
        }
        T floor = -std::numeric_limits<T>::infinity();
        const std::size_t stride = count / (4 * k);
        if (stride >= 2) {
            sorted.clear();
            for (std::size_t m = 0; m < count; m += stride) sorted.push_back(scores[m]);
            const std::size_t rank = (2 * k) / stride;  // about 2k scores of the row beat the sample's rank-th
            std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(rank), sorted.end(),
                             std::greater<T>());
            floor = sorted[rank];
        }
        sorted.clear();
        for (std::size_t m = 0; m < count; ++m)
            if (scores[m] > floor) sorted.push_back(scores[m]);
        if (sorted.size() < k) sorted.assign(scores.begin(), scores.end());
        std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k) - 1, sorted.end(),
                         std::greater<T>());
        const T kth = sorted[k - 1];
        std::size_t above = 0;
        for (std::size_t m = 0; m < count; ++m) above += scores[m] > kth ? 1u : 0u;
        std::size_t ties = k - above;
        for (std::size_t m = 0; m < count; ++m) {
            if (scores[m] > kth) {
                out.push_back(candidate(m));
            } else if (scores[m] == kth && ties > 0) {
                out.push_back(candidate(m));
                --ties;
            }
        }
    }

    /// The dense path of a standard SAE (pre_ holds the pre-activations): fills out_, d_out_, the row terms,
    /// fired_ and the gradients of W_enc, W_dec and b_enc. Every product is the batch-invariant GEMM.
    void dense_standard(std::span<const T> params, std::span<T> grads, const T* x, const T* y, index_t n, T c_l1) {
        const index_t d_in = l_.d_in, d_sae = l_.d_sae;
        const auto at = [](index_t i) { return static_cast<std::size_t>(i); };
        const auto ns = at(n * d_sae);
        const bool parallel = static_cast<double>(n) * static_cast<double>(d_sae) >= 65536.0;
        (void)parallel;  // read by the OpenMP pragmas only
        const T inv_n = T(1) / static_cast<T>(n);
        const T* w_dec = params.data() + l_.w_dec;  // (d_sae, d_in)
        const T* b_dec = params.data() + l_.b_dec;  // (d_in)
        acts_.resize(ns);    // (n, d_sae), then d(pre) in place of d(acts)
        d_acts_.resize(ns);  // (n, d_sae)
        w_dec_t_.resize(at(d_in * d_sae));  // (d_in, d_sae)
        MECHLENS_SAE_PARALLEL_FOR
        for (index_t f = 0; f < n * d_sae; ++f) acts_[at(f)] = pre_[at(f)] > T(0) ? pre_[at(f)] : T(0);
        transpose(w_dec, d_sae, d_in, w_dec_t_.data());
        // out = acts W_dec + b_dec (+ x W_skip), (n, d_in).
        if (l_.skip) detail::sae_gemm_xwt(x, n, params.data() + l_.w_skip_t, d_in, d_in, out_.data());
        detail::sae_gemm_xwt(acts_.data(), n, w_dec_t_.data(), d_in, d_sae, out_.data(), l_.skip);
        for (index_t r = 0; r < n; ++r) {
            T mse = 0, sparsity = 0, fired = 0;
            for (index_t i = 0; i < d_in; ++i) {
                T& o = out_[at(r * d_in + i)];
                o += b_dec[i];
                const T diff = o - y[r * d_in + i];
                mse += diff * diff;
                d_out_[at(r * d_in + i)] = T(2) * diff * inv_n;
            }
            for (index_t j = 0; j < d_sae; ++j) {
                const T a = acts_[at(r * d_sae + j)];
                sparsity += a * norms_[at(j)];
                fired += a > T(0) ? T(1) : T(0);
            }
            row_mse_[at(r)] = mse;
            row_aux_[at(r)] = 0;
            row_sparsity_[at(r)] = sparsity;
            row_fired_[at(r)] = fired;
        }
        // d(acts) = d(out) W_dec^T; d(pre) = (d(acts) + c / n * n_j) where the latent fired, (n, d_sae).
        detail::sae_gemm_xwt(d_out_.data(), n, w_dec, d_sae, d_in, d_acts_.data());
        pull_.resize(at(d_sae));  // c / n * n_j, as the sparse path rounds it
        for (index_t j = 0; j < d_sae; ++j) pull_[at(j)] = c_l1 * inv_n * norms_[at(j)];
        {
            // Through raw pointers, so that the compiler sees no aliasing and vectorizes the loop.
            T* d_acts = d_acts_.data();
            const T* acts = acts_.data();
            const T* pull = pull_.data();
            MECHLENS_SAE_PARALLEL_FOR
            for (index_t r = 0; r < n; ++r) {
                T* d = d_acts + r * d_sae;
                const T* a = acts + r * d_sae;
                for (index_t j = 0; j < d_sae; ++j) d[j] = a[j] > T(0) ? d[j] + pull[j] : T(0);
            }
        }
        // W_dec (d_sae, d_in) = acts^T d(out), plus the L1's pull through the decoder norms.
        T* g_w_dec = grads.data() + l_.w_dec;
        detail::sae_gemm_xtw(acts_.data(), n, d_sae, d_out_.data(), d_in, g_w_dec);
        // Column sums of acts and of d(pre), each over the rows in order.
        col_sum_.assign(at(d_sae), T(0));
        for (index_t r = 0; r < n; ++r) {
            const T* a = acts_.data() + r * d_sae;
            T* sum = col_sum_.data();
            for (index_t j = 0; j < d_sae; ++j) sum[j] += a[j];
        }
        for (index_t j = 0; j < d_sae; ++j) {
            const T sum = col_sum_[at(j)];
            fired_[at(j)] = sum > T(0) ? 1 : 0;
            if (sum != T(0) && norms_[at(j)] != T(0))
                detail::sae_axpy(g_w_dec + j * d_in, c_l1 * inv_n * sum / norms_[at(j)], w_dec + j * d_in, d_in);
        }
        // W_enc^T (d_sae, d_in) = d(pre)^T sae_in; b_enc = column sums of d(pre).
        detail::sae_gemm_xtw(d_acts_.data(), n, d_sae, sae_in_.data(), d_in, grads.data() + l_.w_enc_t);
        T* g_b_enc = grads.data() + l_.b_enc;
        for (index_t r = 0; r < n; ++r) {
            const T* d = d_acts_.data() + r * d_sae;
            for (index_t j = 0; j < d_sae; ++j) g_b_enc[j] += d[j];
        }
    }

    /// Appends row r's entries in latent order: kept latents, aux latents and (jumprelu) the estimator's window.
    void select_row(index_t r, std::vector<detail::sae_entry<T>>& out, std::vector<std::int32_t>& order,
                    std::vector<T>& scores, std::vector<T>& sorted, T batch_cut, index_t k_aux, T bw) const {
        const index_t d_sae = l_.d_sae;
        const T* pre = pre_.data() + r * d_sae;
        const bool rescale = sae_rescales(o_);
        const auto row = static_cast<std::int32_t>(r);
        const std::size_t first = out.size();
        auto score = [&](std::int32_t j) { return rescale ? pre[j] * norms_[static_cast<std::size_t>(j)] : pre[j]; };
        auto add = [&](std::int32_t j) -> detail::sae_entry<T>& {
            detail::sae_entry<T> e;
            e.row = row;
            e.col = j;
            e.pre = pre[j];
            out.push_back(e);
            return out.back();
        };
        switch (o_.architecture) {
            case sae_architecture::standard:
                for (std::int32_t j = 0; j < d_sae; ++j)
                    if (pre[j] > T(0)) {
                        detail::sae_entry<T>& e = add(j);
                        e.kept = true;
                        e.decoded = pre[j];
                    }
                break;
            case sae_architecture::jumprelu:
                for (std::int32_t j = 0; j < d_sae; ++j) {
                    const T p = pre[j], t = threshold_[static_cast<std::size_t>(j)];
                    const bool on = p > T(0) && p > t;
                    const bool pre_act = pre_act_on_ && dead_mask_[j] != 0 && t - p > T(0);
                    if (on || pre_act || detail::sae_rectangle((p - t) / bw) != T(0)) {
                        detail::sae_entry<T>& e = add(j);
                        e.kept = on;
                        e.decoded = on ? p : T(0);
                    }
                }
                break;
            case sae_architecture::topk: {
                const auto k = static_cast<std::size_t>(o_.k);
                top_k(k, static_cast<std::size_t>(d_sae), [](std::size_t m) { return static_cast<std::int32_t>(m); }, score,
                      order, scores, sorted);
                for (std::size_t m = 0; m < k; ++m) {
                    const std::int32_t j = order[m];
                    const T s = score(j);
                    if (!(s > T(0))) continue;
                    detail::sae_entry<T>& e = add(j);
                    e.kept = true;
                    e.decoded = rescale ? s / norms_[static_cast<std::size_t>(j)] : s;
                }
                break;
            }
            case sae_architecture::batchtopk:
                for (std::int32_t j = 0; j < d_sae; ++j) {
                    const T s = std::max(score(j), T(0));
                    if (s > T(0) && s >= batch_cut) {
                        detail::sae_entry<T>& e = add(j);
                        e.kept = true;
                        e.decoded = rescale ? s / norms_[static_cast<std::size_t>(j)] : s;
                    }
                }
                break;
        }
        if (k_aux <= 0) return;
        // The k_aux largest scores among dead latents (ties to the lower index); merged into the row's entries.
        top_k(static_cast<std::size_t>(k_aux), dead_list_.size(), [&](std::size_t m) { return dead_list_[m]; }, score,
              order, scores, sorted);
        const std::size_t last = out.size();
        std::size_t q = first;
        for (index_t m = 0; m < k_aux; ++m) {
            const std::int32_t j = order[static_cast<std::size_t>(m)];
            while (q < last && out[q].col < j) ++q;
            if (q < last && out[q].col == j)
                out[q].aux = pre[j];
            else
                add(j).aux = pre[j];
        }
        std::sort(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
                  [](const detail::sae_entry<T>& a, const detail::sae_entry<T>& b) { return a.col < b.col; });
    }

    sae_parameter_layout l_;
    sae_options o_;
    bool last_dense_ = false;      // the last step took the dense path
    std::vector<T> sae_in_;        // (n, d_in)
    std::vector<T> pre_;           // (n, d_sae)
    std::vector<T> scores_;        // (n, d_sae) batchtopk: ReLU'd scores, partially sorted
    std::vector<T> out_;           // (n, d_in) the reconstruction
    std::vector<T> aux_out_;       // (n, d_in) the auxiliary reconstruction
    std::vector<T> d_out_;         // (n, d_in)
    std::vector<T> d_aux_;         // (n, d_in)
    std::vector<T> d_out_t_;       // (d_in, n) transcoder skip
    std::vector<T> x_t_;           // (d_in, n) transcoder skip
    std::vector<T> acts_;          // (n, d_sae) dense path
    std::vector<T> d_acts_;        // (n, d_sae) dense path: d(acts), then d(pre)
    std::vector<T> pull_;          // (d_sae) dense path: the L1 term's pull c / n * n_j per latent
    std::vector<T> col_sum_;       // (d_sae) dense path: column sums of acts
    std::vector<T> w_dec_t_;       // (d_in, d_sae) dense path
    std::vector<T> norms_;         // (d_sae)
    std::vector<T> threshold_;     // (d_sae)
    std::vector<unsigned char> fired_;  // (d_sae)
    std::vector<T> row_mse_, row_aux_, row_sparsity_, row_fired_;  // (n) each
    std::vector<T> row_pre_act_;   // (n) jumprelu's pre-activation term of each row
    std::vector<T> scaled_in_;     // (n, d_in) constant_norm_rescale: x * s
    std::vector<T> row_weight_;    // (n) constant_norm_rescale: 1 / s^2
    const unsigned char* dead_mask_ = nullptr;  // (d_sae) the dead mask of the current step, or null
    bool pre_act_on_ = false;      // the current step has a pre-activation loss
    std::vector<std::int32_t> dead_list_;
    std::vector<std::vector<detail::sae_entry<T>>> thread_entries_;
    std::vector<std::vector<std::int32_t>> thread_order_;
    std::vector<std::vector<T>> thread_scores_, thread_sorted_;  // per thread: (d_sae) scratch for top_k
    std::vector<detail::sae_entry<T>> entries_;  // (nnz) in row order
    std::vector<std::size_t> row_start_;         // (n + 1)
    std::vector<std::size_t> col_start_;         // (d_sae + 1)
    std::vector<std::size_t> col_fill_;          // (d_sae)
    std::vector<std::uint32_t> col_entries_;     // (nnz) entry indices in latent order, rows ascending
};

MECHLENS_END_NAMESPACE
