#pragma once
/// @file
/// The norm op: RMSNorm with a gain, LayerNorm with a gain and a bias, or nothing (models without norms), from the
/// residual stream to a sublayer's input, firing `*.hook_scale` and `*.hook_normalized`. Its inference forward (SIMD
/// kernels, float), its taped forward and its backward (any floating type), and the step-level entry points the
/// interpreters call.

#include <cstdint>
#include <type_traits>
#include <vector>

#include "mechlens/grad/observers.hpp"
#include "mechlens/grad/tape.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/kernels/generic.hpp"
#include "mechlens/kernels/norm.hpp"
#include "mechlens/model/block.hpp"
#include "mechlens/model/ops/common.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/model/workspace.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// The gain (a rank-1 view) of block parameter row `id` in `layer` (a basic_layer_weights): the view type of the
/// layer's own, so a gradient layer yields a mutable view.
template <class Layer>
auto gain_view(Layer& layer, parameter_id id) {
    std::remove_cvref_t<decltype(layer.attn_norm)> found;
    for_each_block_view(layer, [&](parameter_id candidate, auto& view) {
        if constexpr (std::remove_cvref_t<decltype(view)>::rank == 1)
            if (candidate == id) found = view;
    });
    return found;
}

/// RMSNorm or LayerNorm of every row of `x` into `out`; when hooked, fires the scale and the normalized rows before
/// the gain ((x - mean) / scale for LayerNorm, x / scale for RMSNorm), and applies whatever the hooks wrote, then the
/// gain (and the bias), in TransformerLens's order. Hooked and unhooked runs round alike.
template <site_kind ScaleSite, site_kind NormalizedSite, class Policy>
void normalize_rows(Policy& policy, index_t layer, const hook_context& ctx, const forward_shape& s,
                    const model_config& c, tensor_view<const float, 2> x, tensor_view<const float, 1> gain,
                    tensor_view<const float, 1> bias, tensor_view<float, 2> out, detail::scratch_buffer& scale_buffer) {
    const index_t width = x.extent(1);
    const bool layer_norm = c.norm == norm_kind::layer;
    if constexpr (wants_any<Policy, ScaleSite, NormalizedSite>) {
        tensor_view<float, 2> scale = scale_buffer.matrix(s.rows(), 1);  // (batch * pos, 1)
        for (index_t r = 0; r < s.rows(); ++r) {
            if (layer_norm) {
                const kernels::layernorm_stats stats = kernels::layernorm_moments(&x(r, 0), width, c.norm_eps);
                scale(r, 0) = stats.scale;
                for (index_t i = 0; i < width; ++i) out(r, i) = x(r, i) - stats.mean;  // centred, as the kernel
            } else {
                scale(r, 0) = kernels::rms_scale(&x(r, 0), width, c.norm_eps);
                for (index_t i = 0; i < width; ++i) out(r, i) = x(r, i);
            }
        }
        fire<ScaleSite>(policy, layer, ctx, [&] { return as_sequence(scale, s); });
        for (index_t r = 0; r < s.rows(); ++r) {
            const float divisor = scale(r, 0);  // divide, as the kernels do, so hooked runs round alike
            for (index_t i = 0; i < width; ++i) out(r, i) = out(r, i) / divisor;
        }
        fire<NormalizedSite>(policy, layer, ctx, [&] { return as_sequence(out, s); });
        for (index_t r = 0; r < s.rows(); ++r) {
            if (layer_norm)
                kernels::gain_and_bias(&out(r, 0), &out(r, 0), gain.data(), bias.data(), width);
            else
                for (index_t i = 0; i < width; ++i) out(r, i) *= gain(i);
        }
    } else {
        (void)policy, (void)layer, (void)ctx, (void)scale_buffer;
        for (index_t r = 0; r < s.rows(); ++r) {
            if (layer_norm)
                kernels::layernorm(&out(r, 0), &x(r, 0), gain.data(), bias.data(), width, c.norm_eps);
            else
                kernels::rmsnorm(&out(r, 0), &x(r, 0), gain.data(), width, c.norm_eps);
        }
    }
}

/// The input of a sublayer: the norm of `x` written to `out` (firing the norm's sites), or `x` itself when the
/// model has no norms, like TransformerLens's nn.Identity (no ln sites then).
template <site_kind ScaleSite, site_kind NormalizedSite, class Policy>
tensor_view<const float, 2> normalize(Policy& policy, index_t layer, const hook_context& ctx, const forward_shape& s,
                                      const model_config& c, tensor_view<const float, 2> x,
                                      tensor_view<const float, 1> gain, tensor_view<const float, 1> bias,
                                      tensor_view<float, 2> out, detail::scratch_buffer& scale_buffer) {
    if (!c.has_norm()) return x;
    normalize_rows<ScaleSite, NormalizedSite>(policy, layer, ctx, s, c, x, gain, bias, out, scale_buffer);
    return out;
}

/// A per-thread scratch vector of row centres for taped_norm (reused across calls: no allocation per step).
template <class T>
std::vector<T>& norm_centres() {
    thread_local std::vector<T> centres;
    return centres;
}

/// The centre a norm subtracts from row `row` of x: its mean for LayerNorm, 0 for RMSNorm.
template <class T>
double norm_centre(const model_config& c, const T* row) {
    return c.norm == norm_kind::layer ? kernels::generic::mean(row, c.d_model) : 0.0;
}

/// Norm forward with hooks: scale, normalized ((x - centre) / scale), then input = normalized * gain (+ bias).
template <site_kind ScaleSite, site_kind NormalizedSite, class T, class Policy>
void taped_norm(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c, index_t batch,
                index_t positions, const T* x, tensor_view<const T, 1> gain, tensor_view<const T, 1> bias, T* scale,
                T* normalized, T* input) {
    const index_t rows = batch * positions, d = c.d_model;
    const bool layer_norm = c.norm == norm_kind::layer;
    std::vector<T>& centres = detail::norm_centres<T>();  // per row: the mean (LayerNorm) or 0 (RMSNorm)
    centres.resize(static_cast<std::size_t>(rows));
    for (index_t r = 0; r < rows; ++r) {
        const double centre = norm_centre(c, x + r * d);
        centres[static_cast<std::size_t>(r)] = static_cast<T>(centre);
        scale[r] = static_cast<T>(layer_norm ? kernels::generic::centred_rms_scale(x + r * d, d, centre, c.norm_eps)
                                             : kernels::generic::rms_scale(x + r * d, d, c.norm_eps));
    }
    fire<ScaleSite>(hooks, layer, ctx, [&] { return sequence_view(scale, batch, positions, index_t{1}); });
    for (index_t r = 0; r < rows; ++r) {  // (x - centre) / scale in one pass; x - 0 is x exactly for RMSNorm
        const T centre = centres[static_cast<std::size_t>(r)], s = scale[r];
        for (index_t i = 0; i < d; ++i) normalized[r * d + i] = (x[r * d + i] - centre) / s;
    }
    fire<NormalizedSite>(hooks, layer, ctx, [&] { return sequence_view(normalized, batch, positions, d); });
    for (index_t r = 0; r < rows; ++r)
        for (index_t i = 0; i < d; ++i)
            input[r * d + i] = normalized[r * d + i] * gain(i) + (layer_norm ? bias(i) : T{0});
}

/// Norm backward: from d(input) (rows, d) adds d(x) into `dx` and, when non-null, d(gain) and d(bias) into those.
/// Observers see d(normalized) and d(scale).
template <site_kind ScaleSite, site_kind NormalizedSite, class T, class Policy>
void norm_backward(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c, index_t batch,
                   index_t positions, const T* x, tensor_view<const T, 1> gain, const T* scale, const T* normalized,
                   T* d_input, T* d_scale, T* dx, T* d_gain, T* d_bias) {
    const index_t rows = batch * positions, d = c.d_model;
    if (d_gain != nullptr)
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d; ++i) d_gain[i] += d_input[r * d + i] * normalized[r * d + i];
    if (d_bias != nullptr)
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d; ++i) d_bias[i] += d_input[r * d + i];
    for (index_t r = 0; r < rows; ++r)  // d(normalized), in place
        for (index_t i = 0; i < d; ++i) d_input[r * d + i] *= gain(i);
    observe_gradient<NormalizedSite>(hooks, layer, ctx, [&] { return sequence_view(d_input, batch, positions, d); });
    for (index_t r = 0; r < rows; ++r) {  // normalized = xc / scale: d(scale) = -sum(d_n * xc) / scale^2
        const double centre = norm_centre(c, x + r * d);
        double dot = 0.0;
        for (index_t i = 0; i < d; ++i)
            dot += static_cast<double>(d_input[r * d + i]) * (static_cast<double>(x[r * d + i]) - centre);
        d_scale[r] = static_cast<T>(-dot / (static_cast<double>(scale[r]) * static_cast<double>(scale[r])));
    }
    observe_gradient<ScaleSite>(hooks, layer, ctx,
                                [&] { return sequence_view(d_scale, batch, positions, index_t{1}); });
    for (index_t r = 0; r < rows; ++r) {  // scale = sqrt(mean(xc^2) + eps): d(scale)/dxc_i = xc_i / (d * scale)
        const double centre = norm_centre(c, x + r * d);
        const T s = scale[r], through_scale = d_scale[r] / (static_cast<T>(d) * s);
        T* d_row = dx + r * d;
        if (c.norm == norm_kind::layer) {  // xc = x - mean(x): d(x) = d(xc) - mean(d(xc))
            double sum = 0.0;
            for (index_t i = 0; i < d; ++i)
                sum += static_cast<double>(d_input[r * d + i] / s +
                                           through_scale * static_cast<T>(static_cast<double>(x[r * d + i]) - centre));
            const T mean_gradient = static_cast<T>(sum / static_cast<double>(d));
            for (index_t i = 0; i < d; ++i)
                d_row[i] += d_input[r * d + i] / s +
                            through_scale * static_cast<T>(static_cast<double>(x[r * d + i]) - centre) - mean_gradient;
        } else {
            for (index_t i = 0; i < d; ++i) d_row[i] += d_input[r * d + i] / s + through_scale * x[r * d + i];
        }
    }
}


/// Norm step, inference: the sublayer input for the rows in `x` (a view into `out` or `x` itself), see normalize.
template <block_step Step, class Policy>
tensor_view<const float, 2> norm_step(Policy& policy, index_t layer, const hook_context& ctx, const forward_shape& s,
                                      const model_config& c, tensor_view<const float, 2> x,
                                      tensor_view<const float, 1> gain, tensor_view<const float, 1> bias,
                                      tensor_view<float, 2> out, detail::scratch_buffer& scale_buffer) {
    static_assert(Step.op == block_op::norm);
    return normalize<Step.first_site, Step.second_site>(policy, layer, ctx, s, c, x, gain, bias, out, scale_buffer);
}

/// Norm step, taped forward: returns the sublayer input, `x` itself without norms, else the tape's gained rows.
template <block_step Step, class T, class Policy>
const T* taped_norm_step(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c,
                         const taped_shape& s, const T* x, tensor_view<const T, 1> gain, tensor_view<const T, 1> bias,
                         norm_tape<T>& tape) {
    static_assert(Step.op == block_op::norm);
    if (!c.has_norm()) return x;
    taped_norm<Step.first_site, Step.second_site>(hooks, layer, ctx, c, s.batch, s.positions, x, gain, bias,
                                                  tape.scale.data(), tape.normalized.data(), tape.input.data());
    return tape.input.data();
}

/// Norm step, backward: adds the gradient of the step's input `x` into `d_stream`, from the sublayer input's
/// gradient, which is in `d_input` with norms and in `d_branch` without (then the step is the identity). Adds the
/// gain's and the bias's gradients into `d_gain` and `d_bias` when they are non-null.
template <block_step Step, class T, class Policy>
void norm_step_backward(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c,
                        const taped_shape& s, const T* x, tensor_view<const T, 1> gain, const norm_tape<T>& tape,
                        T* d_input, T* d_branch, T* d_scale, T* d_stream, T* d_gain, T* d_bias) {
    static_assert(Step.op == block_op::norm);
    if (c.has_norm()) {
        norm_backward<Step.first_site, Step.second_site>(hooks, layer, ctx, c, s.batch, s.positions, x, gain,
                                                         tape.scale.data(), tape.normalized.data(), d_input, d_scale,
                                                         d_stream, d_gain, d_bias);
    } else {
        for (index_t i = 0; i < s.rows() * c.d_model; ++i) d_stream[i] += d_branch[i];
    }
}

}  // namespace detail
MECHLENS_END_NAMESPACE
