#pragma once
/// @file
/// Training losses of sparse autoencoders and their exact gradients, with SAELens's definitions (no optimizer: a
/// training loop calls sae_loss_and_gradients on each batch). For a batch x (n, d_in), with output the SAE's
/// reconstruction (sae/forward.hpp) and n_j = ||W_dec row j||:
///   mse        = mean over rows of sum_i (output - x)^2                                       every architecture
///   l1         = l1_coefficient * mean over rows of sum_j |acts_j| * n_j                       standard
///   l0 (step)  = l0_coefficient * mean over rows of sum_j H(pre_j - threshold_j)               jumprelu
///   l0 (tanh)  = l0_coefficient * mean over rows of sum_j tanh(tanh_scale * acts_j * n_j)      jumprelu
///   pre_act    = pre_act_coefficient * mean over rows of sum_j relu(threshold_j - pre_j) * dead_j * n_j
///                                                                                  jumprelu, with dead latents
///   aux        = aux_coefficient * min(dead / k_aux, 1) * mean over rows of sum_i (aux_output - residual)^2
///                with k_aux = min(d_in / 2, dead), residual = x - output (detached), aux_output the decoding of
///                the k_aux largest scores among dead latents (not ReLU'd)     topk, batchtopk, with dead latents
/// The threshold's gradient uses SAELens's straight-through estimator with a rectangle kernel of width bandwidth:
/// through acts, d(threshold_j) += -(threshold_j / bandwidth) * rect((pre - threshold_j) / bandwidth) * d(acts);
/// through the step, -(1 / bandwidth) * rect(...) * d(step). The pre-activations get gradients through the kept
/// latents only. SAELens trains log(threshold): its gradient is threshold * d(threshold).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/forward.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// JumpReLU's sparsity penalty (SAELens's jumprelu_sparsity_loss_mode).
enum class jumprelu_sparsity : std::uint8_t {
    step,  ///< The L0 norm, its threshold gradient through the straight-through estimator.
    tanh,  ///< sum_j tanh(tanh_scale * acts_j * ||W_dec row j||).
};

/// The training coefficients of SAELens's training configurations (defaults are SAELens's).
struct sae_training_options {
    double l1_coefficient = 1.0;          ///< standard: weight of the L1 penalty.
    double l0_coefficient = 1.0;          ///< jumprelu: weight of the L0 (or tanh) penalty.
    double jumprelu_bandwidth = 0.05;     ///< jumprelu: width of the straight-through estimator's rectangle.
    jumprelu_sparsity sparsity = jumprelu_sparsity::step;  ///< jumprelu: which penalty.
    double jumprelu_tanh_scale = 4.0;     ///< jumprelu tanh penalty: the scale inside tanh.
    double pre_act_loss_coefficient = 0;  ///< jumprelu: weight of the pre-activation loss on dead latents (0: off).
    double aux_loss_coefficient = 1.0;    ///< topk, batchtopk: weight of the auxiliary loss on dead latents.
    /// (d_sae) latents counted as dead (for aux and pre_act); empty means none, as SAELens without a mask.
    std::vector<unsigned char> dead;
};

/// Each loss term (zero where the architecture has none) and their sum.
template <class T>
struct sae_loss_terms {
    T mse = 0;      ///< Reconstruction error.
    T l1 = 0;       ///< standard's L1 penalty.
    T l0 = 0;       ///< jumprelu's L0 or tanh penalty.
    T pre_act = 0;  ///< jumprelu's pre-activation loss.
    T aux = 0;      ///< topk's and batchtopk's auxiliary loss.
    T total = 0;    ///< The sum of the above.
};

/// One training step's forward values, losses and gradients.
template <class T>
struct sae_training_pass {
    std::vector<T> sae_in;      ///< (n, d_in) x * scale - b_dec
    std::vector<T> hidden_pre;  ///< (n, d_sae) pre-activations (before rescaling by decoder norms)
    std::vector<T> acts;        ///< (n, d_sae) feature activations
    std::vector<T> output;      ///< (n, d_in) the reconstruction in the input's scale
    sae_loss_terms<T> loss;     ///< The loss terms.
    basic_sae_weights<T> grad;  ///< d(total) for each parameter, in the parameters' layout (threshold: jumprelu).
};

namespace detail {

/// SAELens's rectangle kernel: 1 on (-1/2, 1/2), else 0.
template <class T>
constexpr T sae_rectangle(T u) noexcept {
    return (u > T(-0.5) && u < T(0.5)) ? T(1) : T(0);
}

}  // namespace detail

/// The training loss of `w` (with `options`' architecture) on the batch `x` (n, d_in) and its exact gradients.
/// Throws shape_error for weights or a batch that disagree, std::invalid_argument for a bad dead mask or
/// coefficients.
template <class T>
sae_training_pass<T> sae_loss_and_gradients(const basic_sae_weights<T>& w, const sae_options& options,
                                            const sae_training_options& training, tensor_view<const T, 2> x) {
    validate_sae(w, options, "sae_loss_and_gradients");
    const index_t n = x.extent(0), d_in = w.d_in, d_sae = w.d_sae;
    if (x.extent(1) != d_in || n <= 0) {
        std::string message = "sae_loss_and_gradients: the batch is (";
        message += std::to_string(n);
        message += ", ";
        message += std::to_string(x.extent(1));
        message += "), expected (n > 0, d_in = ";
        message += std::to_string(d_in);
        message += ")";
        throw shape_error(message);
    }
    if (!training.dead.empty() && static_cast<index_t>(training.dead.size()) != d_sae)
        throw std::invalid_argument("sae_loss_and_gradients: the dead mask needs d_sae entries");
    if (options.architecture == sae_architecture::jumprelu && !(training.jumprelu_bandwidth > 0))
        throw std::invalid_argument("sae_loss_and_gradients: jumprelu_bandwidth must be positive");
    const auto nd = static_cast<std::size_t>(n * d_in), ns = static_cast<std::size_t>(n * d_sae);
    const T inv_n = T(1) / static_cast<T>(n);
    auto view = [](std::vector<T>& v, index_t rows, index_t cols) { return tensor_view<T, 2>(v.data(), {rows, cols}); };
    auto cview = [](const std::vector<T>& v, index_t rows, index_t cols) {
        return tensor_view<const T, 2>(v.data(), {rows, cols});
    };

    sae_training_pass<T> out;
    basic_sae_weights<T>& g = out.grad;
    g.d_in = d_in;
    g.d_sae = d_sae;
    g.w_enc.assign(w.w_enc.size(), T(0));
    g.w_dec.assign(w.w_dec.size(), T(0));
    g.b_enc.assign(w.b_enc.size(), T(0));
    g.b_dec.assign(w.b_dec.size(), T(0));
    g.threshold.assign(w.threshold.size(), T(0));

    // Forward.
    const std::vector<T> norms = sae_decoder_norms(w);  // (d_sae)
    std::vector<T> scale;                                // (n)
    sae_input_scale<T>(x, options, scale);
    out.sae_in.resize(nd);
    sae_prepare_input<T>(x, scale, w, options, view(out.sae_in, n, d_in));
    out.hidden_pre.resize(ns);
    sae_encode<T>(cview(out.sae_in, n, d_in), w, view(out.hidden_pre, n, d_sae));
    out.acts.resize(ns);
    sae_kept_mask kept;
    sae_activate<T>(cview(out.hidden_pre, n, d_sae), w, options, norms, view(out.acts, n, d_sae), kept);
    std::vector<T> recons(nd);  // (n, d_in) before undoing the scale
    sae_decode<T>(cview(out.acts, n, d_sae), w, options, norms, view(recons, n, d_in));
    out.output.resize(nd);
    sae_restore_scale<T>(cview(recons, n, d_in), scale, view(out.output, n, d_in));

    // d(recons) (n, d_in), d(acts) (n, d_sae), d(pre) (n, d_sae) and d(norms) (d_sae) collect every term.
    std::vector<T> d_recons(nd, T(0)), d_acts(ns, T(0)), d_pre(ns, T(0)), d_norms(static_cast<std::size_t>(d_sae), T(0));
    sae_loss_terms<T>& loss = out.loss;
    for (std::size_t f = 0; f < nd; ++f) {
        const T diff = out.output[f] - x(static_cast<index_t>(f / static_cast<std::size_t>(d_in)),
                                         static_cast<index_t>(f % static_cast<std::size_t>(d_in)));
        loss.mse += diff * diff;
        d_recons[f] = T(2) * diff * inv_n / scale[f / static_cast<std::size_t>(d_in)];
    }
    loss.mse *= inv_n;

    auto dead = [&](index_t j) { return !training.dead.empty() && training.dead[static_cast<std::size_t>(j)] != 0; };
    const index_t dead_count = static_cast<index_t>(std::count_if(training.dead.begin(), training.dead.end(),
                                                                  [](unsigned char d) { return d != 0; }));
    const auto sj = [](index_t j) { return static_cast<std::size_t>(j); };
    switch (options.architecture) {
        case sae_architecture::standard: {
            const auto c = static_cast<T>(training.l1_coefficient);
            for (index_t r = 0; r < n; ++r)
                for (index_t j = 0; j < d_sae; ++j) {
                    const T a = out.acts[detail::sae_at(r, j, d_sae)];
                    loss.l1 += std::abs(a) * norms[sj(j)];
                    const T sign = a > T(0) ? T(1) : (a < T(0) ? T(-1) : T(0));
                    d_acts[detail::sae_at(r, j, d_sae)] += c * inv_n * sign * norms[sj(j)];
                    d_norms[sj(j)] += c * inv_n * std::abs(a);
                }
            loss.l1 *= c * inv_n;
            break;
        }
        case sae_architecture::jumprelu: {
            const auto c = static_cast<T>(training.l0_coefficient), bw = static_cast<T>(training.jumprelu_bandwidth);
            for (index_t r = 0; r < n; ++r)
                for (index_t j = 0; j < d_sae; ++j) {
                    const std::size_t f = detail::sae_at(r, j, d_sae);
                    const T p = out.hidden_pre[f], t = w.threshold[sj(j)];
                    if (training.sparsity == jumprelu_sparsity::step) {
                        loss.l0 += p > t ? T(1) : T(0);
                        g.threshold[sj(j)] += -(T(1) / bw) * detail::sae_rectangle((p - t) / bw) * c * inv_n;
                    } else {
                        const T ts = static_cast<T>(training.jumprelu_tanh_scale);
                        const T th = std::tanh(ts * out.acts[f] * norms[sj(j)]);
                        loss.l0 += th;
                        const T d = c * inv_n * (T(1) - th * th) * ts;
                        d_acts[f] += d * norms[sj(j)];
                        d_norms[sj(j)] += d * out.acts[f];
                    }
                    if (training.pre_act_loss_coefficient != 0 && dead(j) && t - p > T(0)) {
                        const T pc = static_cast<T>(training.pre_act_loss_coefficient) * inv_n;
                        loss.pre_act += (t - p) * norms[sj(j)];
                        g.threshold[sj(j)] += pc * norms[sj(j)];
                        d_pre[f] -= pc * norms[sj(j)];
                        d_norms[sj(j)] += pc * (t - p);
                    }
                }
            loss.l0 *= c * inv_n;
            loss.pre_act *= static_cast<T>(training.pre_act_loss_coefficient) * inv_n;
            break;
        }
        case sae_architecture::topk:
        case sae_architecture::batchtopk: {
            if (dead_count == 0) break;
            index_t k_aux = d_in / 2;
            if (k_aux == 0) break;  // SAELens divides by zero here; no latent can be asked to help with d_in = 1
            const T aux_scale = std::min(static_cast<T>(dead_count) / static_cast<T>(k_aux), T(1));
            k_aux = std::min(k_aux, dead_count);
            const bool rescale = sae_rescales(options);
            std::vector<T> aux_acts(ns, T(0));  // (n, d_sae) decoded latents: pre of the chosen dead latents
            std::vector<index_t> candidates;
            for (index_t j = 0; j < d_sae; ++j)
                if (dead(j)) candidates.push_back(j);
            for (index_t r = 0; r < n; ++r) {
                auto score = [&](index_t j) {
                    const T p = out.hidden_pre[detail::sae_at(r, j, d_sae)];
                    return rescale ? p * norms[sj(j)] : p;
                };
                std::nth_element(candidates.begin(), candidates.begin() + (k_aux - 1), candidates.end(),
                                 [&](index_t a, index_t b) {
                                     const T sa = score(a), sb = score(b);
                                     return sa > sb || (sa == sb && a < b);
                                 });
                for (index_t m = 0; m < k_aux; ++m) {
                    const index_t j = candidates[static_cast<std::size_t>(m)];
                    aux_acts[detail::sae_at(r, j, d_sae)] = out.hidden_pre[detail::sae_at(r, j, d_sae)];
                }
            }
            sae_options plain = options;  // aux_acts already hold the decoded values
            plain.rescale_acts_by_decoder_norm = false;
            std::vector<T> aux_recons(nd);  // (n, d_in)
            sae_decode<T>(cview(aux_acts, n, d_sae), w, plain, norms, view(aux_recons, n, d_in));
            std::vector<T> d_aux(nd);  // (n, d_in) d(aux_recons)
            const T c = static_cast<T>(training.aux_loss_coefficient) * aux_scale;
            for (std::size_t f = 0; f < nd; ++f) {
                const std::size_t r = f / static_cast<std::size_t>(d_in);
                const T residual = x(static_cast<index_t>(r), static_cast<index_t>(f % static_cast<std::size_t>(d_in))) -
                                   out.output[f];
                const T diff = aux_recons[f] / scale[r] - residual;
                loss.aux += diff * diff;
                d_aux[f] = c * T(2) * diff * inv_n / scale[r];
            }
            loss.aux *= c * inv_n;
            // Back through the aux decoder: b_dec, W_dec and the chosen pre-activations.
            for (index_t r = 0; r < n; ++r) {
                for (index_t i = 0; i < d_in; ++i) g.b_dec[sj(i)] += d_aux[detail::sae_at(r, i, d_in)];
                for (index_t j = 0; j < d_sae; ++j) {
                    const std::size_t f = detail::sae_at(r, j, d_sae);
                    if (aux_acts[f] == T(0)) continue;
                    T sum = 0;
                    for (index_t i = 0; i < d_in; ++i) {
                        const T gi = d_aux[detail::sae_at(r, i, d_in)];
                        g.w_dec[detail::sae_at(j, i, d_in)] += aux_acts[f] * gi;
                        sum += gi * w.w_dec[detail::sae_at(j, i, d_in)];
                    }
                    d_pre[f] += sum;
                }
            }
            break;
        }
    }
    loss.total = loss.mse + loss.l1 + loss.l0 + loss.pre_act + loss.aux;

    // Back through the main decoder.
    const bool rescale = sae_rescales(options);
    for (index_t r = 0; r < n; ++r)
        for (index_t i = 0; i < d_in; ++i) g.b_dec[sj(i)] += d_recons[detail::sae_at(r, i, d_in)];
    for (index_t r = 0; r < n; ++r)
        for (index_t j = 0; j < d_sae; ++j) {
            const T a = out.acts[detail::sae_at(r, j, d_sae)];
            if (a == T(0)) continue;
            const T decoded = rescale ? a / norms[sj(j)] : a;
            for (index_t i = 0; i < d_in; ++i)
                g.w_dec[detail::sae_at(j, i, d_in)] += decoded * d_recons[detail::sae_at(r, i, d_in)];
        }
    std::vector<T> d_from_decoder(ns);  // (n, d_sae)
    sae_decode_backward<T>(cview(d_recons, n, d_in), w, options, norms, view(d_from_decoder, n, d_sae));
    for (std::size_t f = 0; f < ns; ++f) d_acts[f] += d_from_decoder[f];
    // Through the activation; jumprelu's threshold through the straight-through estimator.
    std::vector<T> d_through(ns);  // (n, d_sae)
    sae_activate_backward<T>(cview(d_acts, n, d_sae), kept, options, norms, view(d_through, n, d_sae));
    for (std::size_t f = 0; f < ns; ++f) d_pre[f] += d_through[f];
    if (options.architecture == sae_architecture::jumprelu) {
        const auto bw = static_cast<T>(training.jumprelu_bandwidth);
        for (index_t r = 0; r < n; ++r)
            for (index_t j = 0; j < d_sae; ++j) {
                const std::size_t f = detail::sae_at(r, j, d_sae);
                const T t = w.threshold[sj(j)];
                g.threshold[sj(j)] += -(t / bw) * detail::sae_rectangle((out.hidden_pre[f] - t) / bw) * d_acts[f];
            }
    }
    // Through the encoder.
    for (index_t r = 0; r < n; ++r)
        for (index_t j = 0; j < d_sae; ++j) g.b_enc[sj(j)] += d_pre[detail::sae_at(r, j, d_sae)];
    for (index_t r = 0; r < n; ++r)
        for (index_t i = 0; i < d_in; ++i) {
            const T v = out.sae_in[detail::sae_at(r, i, d_in)];
            T* row = g.w_enc.data() + detail::sae_at(i, 0, d_sae);
            const T* gp = d_pre.data() + detail::sae_at(r, 0, d_sae);
            for (index_t j = 0; j < d_sae; ++j) row[j] += v * gp[j];
        }
    if (options.apply_b_dec_to_input) {
        std::vector<T> d_sae_in(nd);  // (n, d_in)
        sae_encode_backward<T>(cview(d_pre, n, d_sae), w, view(d_sae_in, n, d_in));
        for (index_t r = 0; r < n; ++r)
            for (index_t i = 0; i < d_in; ++i) g.b_dec[sj(i)] -= d_sae_in[detail::sae_at(r, i, d_in)];
    }
    // Through the decoder norms: d||W_dec row j|| / dW_dec[j, i] = W_dec[j, i] / ||W_dec row j||.
    for (index_t j = 0; j < d_sae; ++j) {
        if (d_norms[sj(j)] == T(0) || norms[sj(j)] == T(0)) continue;
        for (index_t i = 0; i < d_in; ++i)
            g.w_dec[detail::sae_at(j, i, d_in)] += d_norms[sj(j)] * w.w_dec[detail::sae_at(j, i, d_in)] / norms[sj(j)];
    }
    return out;
}

/// BatchTopK's running global threshold after a training step (SAELens's update_topk_threshold): moves `current`
/// towards the smallest positive activation of the batch by `rate`; unchanged when no activation is positive.
template <class T>
double batchtopk_threshold_update(double current, const std::vector<T>& acts, double rate) {
    double smallest = std::numeric_limits<double>::infinity();
    for (T a : acts)
        if (a > T(0)) smallest = std::min(smallest, static_cast<double>(a));
    if (smallest == std::numeric_limits<double>::infinity()) return current;
    return (1.0 - rate) * current + rate * smallest;
}

MECHLENS_END_NAMESPACE
