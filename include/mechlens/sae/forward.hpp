#pragma once
/// @file
/// The steps of a sparse autoencoder's forward pass, shared by the splice (float, hooks fired between the steps) and
/// the training loss (float or double). Every step reads and writes dense row-major (rows, width) views:
///   scale    = sqrt(d_in) / ||x||  (constant_norm_rescale), else 1              (rows)
///   sae_in   = x * scale - b_dec (apply_b_dec_to_input) or x * scale          (rows, d_in)
///   pre      = sae_in W_enc + b_enc                                           (rows, d_sae)
///   score    = pre * ||W_dec row|| (rescale_acts_by_decoder_norm), else pre   (rows, d_sae)
///   acts     = the architecture's activation of score                         (rows, d_sae)
///   recons   = (acts / ||W_dec row|| when rescaling) W_dec + b_dec            (rows, d_in)
///   output   = recons / scale                                                 (rows, d_in)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// Flat index of (row, col) in a dense row-major matrix of `cols` columns.
constexpr std::size_t sae_at(index_t row, index_t col, index_t cols) noexcept {
    return static_cast<std::size_t>(row * cols + col);
}

}  // namespace detail

/// The Euclidean norm of each decoder row, ||W_dec[j, :]|| (d_sae).
template <class T>
std::vector<T> sae_decoder_norms(const basic_sae_weights<T>& w) {
    std::vector<T> norms(static_cast<std::size_t>(w.d_sae));
    for (index_t j = 0; j < w.d_sae; ++j) {
        T sum = 0;
        for (index_t i = 0; i < w.d_in; ++i) sum += w.w_dec[detail::sae_at(j, i, w.d_in)] * w.w_dec[detail::sae_at(j, i, w.d_in)];
        norms[static_cast<std::size_t>(j)] = std::sqrt(sum);
    }
    return norms;
}

/// Per-row input scale (rows): sqrt(d_in) / ||x_row|| for constant_norm_rescale, else 1.
template <class T>
void sae_input_scale(tensor_view<const T, 2> x, const sae_options& options, std::vector<T>& scale) {
    const index_t rows = x.extent(0), d_in = x.extent(1);
    scale.assign(static_cast<std::size_t>(rows), T(1));
    if (options.normalize_activations != sae_normalization::constant_norm_rescale) return;
    for (index_t r = 0; r < rows; ++r) {
        T sum = 0;
        for (index_t i = 0; i < d_in; ++i) sum += x(r, i) * x(r, i);
        scale[static_cast<std::size_t>(r)] = std::sqrt(static_cast<T>(d_in)) / std::sqrt(sum);
    }
}

/// sae_in = x * scale - b_dec (or without b_dec), (rows, d_in).
template <class T>
void sae_prepare_input(tensor_view<const T, 2> x, const std::vector<T>& scale, const basic_sae_weights<T>& w,
                       const sae_options& options, tensor_view<T, 2> sae_in) {
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t i = 0; i < w.d_in; ++i)
            sae_in(r, i) = x(r, i) * scale[static_cast<std::size_t>(r)] -
                           (options.apply_b_dec_to_input ? w.b_dec[static_cast<std::size_t>(i)] : T(0));
}

/// pre = sae_in W_enc + b_enc, (rows, d_sae).
template <class T>
void sae_encode(tensor_view<const T, 2> sae_in, const basic_sae_weights<T>& w, tensor_view<T, 2> pre) {
    for (index_t r = 0; r < sae_in.extent(0); ++r) {
        T* out = &pre(r, 0);
        for (index_t j = 0; j < w.d_sae; ++j) out[j] = w.b_enc[static_cast<std::size_t>(j)];
        for (index_t i = 0; i < w.d_in; ++i) {
            const T v = sae_in(r, i);
            const T* row = w.w_enc.data() + detail::sae_at(i, 0, w.d_sae);
            for (index_t j = 0; j < w.d_sae; ++j) out[j] += v * row[j];
        }
    }
}

/// The latents kept at each position: 1 where the activation passed its input through (the gradient of acts
/// with respect to score is 1 there and 0 elsewhere), (rows, d_sae).
using sae_kept_mask = std::vector<unsigned char>;

/// acts = the architecture's activation of pre (rows, d_sae); `norms` are the decoder norms (used when rescaling);
/// `kept` receives the mask of latents the gradient flows through.
template <class T>
void sae_activate(tensor_view<const T, 2> pre, const basic_sae_weights<T>& w, const sae_options& options,
                  const std::vector<T>& norms, tensor_view<T, 2> acts, sae_kept_mask& kept) {
    const index_t rows = pre.extent(0), d_sae = w.d_sae;
    const bool rescale = options.rescale_acts_by_decoder_norm && (options.architecture == sae_architecture::topk ||
                                                                  options.architecture == sae_architecture::batchtopk);
    kept.assign(static_cast<std::size_t>(rows * d_sae), 0);
    auto score = [&](index_t r, index_t j) {
        return rescale ? pre(r, j) * norms[static_cast<std::size_t>(j)] : pre(r, j);
    };
    for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < d_sae; ++j) acts(r, j) = T(0);
    switch (options.architecture) {
        case sae_architecture::standard:
        case sae_architecture::jumprelu:
            for (index_t r = 0; r < rows; ++r)
                for (index_t j = 0; j < d_sae; ++j) {
                    const T p = pre(r, j);
                    const bool on = p > T(0) && (options.architecture == sae_architecture::standard ||
                                                 p > w.threshold[static_cast<std::size_t>(j)]);
                    if (!on) continue;
                    acts(r, j) = p;
                    kept[detail::sae_at(r, j, d_sae)] = 1;
                }
            return;
        case sae_architecture::topk: {
            // The k largest scores of each row (ties to the lower index), then ReLU.
            const auto k = static_cast<std::size_t>(options.k);
            std::vector<index_t> order(static_cast<std::size_t>(d_sae));
            for (index_t r = 0; r < rows; ++r) {
                std::iota(order.begin(), order.end(), index_t{0});
                std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k) - 1, order.end(),
                                 [&](index_t a, index_t b) {
                                     const T sa = score(r, a), sb = score(r, b);
                                     return sa > sb || (sa == sb && a < b);
                                 });
                for (std::size_t m = 0; m < k; ++m) {
                    const index_t j = order[m];
                    const T s = score(r, j);
                    if (!(s > T(0))) continue;
                    acts(r, j) = s;
                    kept[detail::sae_at(r, j, d_sae)] = 1;
                }
            }
            return;
        }
        case sae_architecture::batchtopk: {
            // The int(k * rows) largest ReLU'd scores of the whole batch.
            const auto total = static_cast<std::size_t>(options.k * static_cast<double>(rows));
            const auto count = static_cast<std::size_t>(rows * d_sae);
            if (total == 0 || count == 0) return;
            std::vector<std::size_t> order(count);
            std::iota(order.begin(), order.end(), std::size_t{0});
            auto relu_score = [&](std::size_t f) {
                const auto r = static_cast<index_t>(f / static_cast<std::size_t>(d_sae));
                const auto j = static_cast<index_t>(f % static_cast<std::size_t>(d_sae));
                return std::max(score(r, j), T(0));
            };
            const std::size_t take = std::min(total, count);
            std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(take) - 1, order.end(),
                             [&](std::size_t a, std::size_t b) {
                                 const T sa = relu_score(a), sb = relu_score(b);
                                 return sa > sb || (sa == sb && a < b);
                             });
            for (std::size_t m = 0; m < take; ++m) {
                const auto r = static_cast<index_t>(order[m] / static_cast<std::size_t>(d_sae));
                const auto j = static_cast<index_t>(order[m] % static_cast<std::size_t>(d_sae));
                const T s = score(r, j);
                if (!(s > T(0))) continue;
                acts(r, j) = s;
                kept[order[m]] = 1;
            }
            return;
        }
    }
}

/// True when the decoder divides the latents by the decoder norms (rescale_acts_by_decoder_norm on topk/batchtopk).
constexpr bool sae_rescales(const sae_options& options) noexcept {
    return options.rescale_acts_by_decoder_norm &&
           (options.architecture == sae_architecture::topk || options.architecture == sae_architecture::batchtopk);
}

/// recons = (acts, divided by the decoder norms when rescaling) W_dec + b_dec, (rows, d_in). Zero latents are
/// skipped, so sparse activations decode in O(rows * active * d_in).
template <class T>
void sae_decode(tensor_view<const T, 2> acts, const basic_sae_weights<T>& w, const sae_options& options,
                const std::vector<T>& norms, tensor_view<T, 2> recons) {
    const bool rescale = sae_rescales(options);
    for (index_t r = 0; r < acts.extent(0); ++r) {
        T* out = &recons(r, 0);
        for (index_t i = 0; i < w.d_in; ++i) out[i] = w.b_dec[static_cast<std::size_t>(i)];
        for (index_t j = 0; j < w.d_sae; ++j) {
            T a = acts(r, j);
            if (a == T(0)) continue;
            if (rescale) a /= norms[static_cast<std::size_t>(j)];
            const T* row = w.w_dec.data() + detail::sae_at(j, 0, w.d_in);
            for (index_t i = 0; i < w.d_in; ++i) out[i] += a * row[i];
        }
    }
}

/// output = recons / scale, row by row (rows, d_in).
template <class T>
void sae_restore_scale(tensor_view<const T, 2> recons, const std::vector<T>& scale, tensor_view<T, 2> output) {
    for (index_t r = 0; r < recons.extent(0); ++r)
        for (index_t i = 0; i < recons.extent(1); ++i) output(r, i) = recons(r, i) / scale[static_cast<std::size_t>(r)];
}

/// d(latents) = d(recons) W_dec^T, divided by the decoder norms when rescaling, (rows, d_sae).
template <class T>
void sae_decode_backward(tensor_view<const T, 2> d_recons, const basic_sae_weights<T>& w, const sae_options& options,
                         const std::vector<T>& norms, tensor_view<T, 2> d_acts) {
    const bool rescale = sae_rescales(options);
    for (index_t r = 0; r < d_recons.extent(0); ++r) {
        const T* g = &d_recons(r, 0);
        for (index_t j = 0; j < w.d_sae; ++j) {
            const T* row = w.w_dec.data() + detail::sae_at(j, 0, w.d_in);
            T sum = 0;
            for (index_t i = 0; i < w.d_in; ++i) sum += g[i] * row[i];
            d_acts(r, j) = rescale ? sum / norms[static_cast<std::size_t>(j)] : sum;
        }
    }
}

/// d(pre) from d(acts): through the kept latents only, times the decoder norm when rescaling (rows, d_sae).
template <class T>
void sae_activate_backward(tensor_view<const T, 2> d_acts, const sae_kept_mask& kept, const sae_options& options,
                           const std::vector<T>& norms, tensor_view<T, 2> d_pre) {
    const bool rescale = sae_rescales(options);
    const index_t d_sae = d_acts.extent(1);
    for (index_t r = 0; r < d_acts.extent(0); ++r)
        for (index_t j = 0; j < d_sae; ++j)
            d_pre(r, j) = kept[detail::sae_at(r, j, d_sae)] == 0
                              ? T(0)
                              : (rescale ? d_acts(r, j) * norms[static_cast<std::size_t>(j)] : d_acts(r, j));
}

/// d(sae_in) = d(pre) W_enc^T, (rows, d_in).
template <class T>
void sae_encode_backward(tensor_view<const T, 2> d_pre, const basic_sae_weights<T>& w, tensor_view<T, 2> d_sae_in) {
    for (index_t r = 0; r < d_pre.extent(0); ++r) {
        const T* g = &d_pre(r, 0);
        for (index_t i = 0; i < w.d_in; ++i) {
            const T* row = w.w_enc.data() + detail::sae_at(i, 0, w.d_sae);
            T sum = 0;
            for (index_t j = 0; j < w.d_sae; ++j) sum += g[j] * row[j];
            d_sae_in(r, i) = sum;
        }
    }
}

/// d(x) from d(sae_in) and d(output) through the input scale (constant_norm_rescale's scale depends on x; without
/// it this is d(sae_in)), (rows, d_in). `recons` is the decoder's output before restore_scale.
template <class T>
void sae_scale_backward(tensor_view<const T, 2> x, const std::vector<T>& scale, const sae_options& options,
                        tensor_view<const T, 2> recons, tensor_view<const T, 2> d_output,
                        tensor_view<const T, 2> d_sae_in, tensor_view<T, 2> d_x) {
    const index_t rows = x.extent(0), d_in = x.extent(1);
    const bool rescaled = options.normalize_activations == sae_normalization::constant_norm_rescale;
    for (index_t r = 0; r < rows; ++r) {
        const T s = scale[static_cast<std::size_t>(r)];
        if (!rescaled) {
            for (index_t i = 0; i < d_in; ++i) d_x(r, i) = d_sae_in(r, i);
            continue;
        }
        // d(scale) collects output = recons / scale and sae_in = x * scale - b_dec; scale = sqrt(d_in) / ||x||.
        T d_scale = 0, norm2 = 0;
        for (index_t i = 0; i < d_in; ++i) {
            d_scale += -d_output(r, i) * recons(r, i) / (s * s) + d_sae_in(r, i) * x(r, i);
            norm2 += x(r, i) * x(r, i);
        }
        for (index_t i = 0; i < d_in; ++i) d_x(r, i) = d_sae_in(r, i) * s - d_scale * s * x(r, i) / norm2;
    }
}

MECHLENS_END_NAMESPACE
