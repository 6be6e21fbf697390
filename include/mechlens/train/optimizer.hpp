#pragma once
/// @file
/// AdamW with decoupled weight decay (as torch.optim.AdamW) over one flat parameter buffer, weight-decay ranges
/// chosen from a parameter_layout, and global gradient-norm clipping (as torch.nn.utils.clip_grad_norm_).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/model/parameters.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Hyper-parameters of AdamW; the defaults are torch.optim.AdamW's.
struct adamw_options {
    float lr = 1e-3f;            ///< Learning rate (change it between steps to follow a schedule).
    float beta1 = 0.9f;          ///< Decay of the first-moment (mean) estimate.
    float beta2 = 0.999f;        ///< Decay of the second-moment (uncentred variance) estimate.
    float eps = 1e-8f;           ///< Added to the bias-corrected root of the second moment.
    float weight_decay = 1e-2f;  ///< Decoupled decay: p -= lr * weight_decay * p before the Adam step.
};

/// A half-open range [offset, offset + size) of a flat parameter buffer.
struct parameter_range {
    index_t offset = 0;  ///< First element.
    index_t size = 0;    ///< Number of elements.
    friend bool operator==(const parameter_range&, const parameter_range&) = default;  ///< Same offset and size.
};

/// Predicate for decay_ranges: decay matrices (rank 2, embeddings included) but not norm gains (rank 1), as
/// nanoGPT and minGPT do.
inline bool decay_matrices(const parameter_entry& entry) noexcept { return entry.rank == 2; }

/// Predicate for decay_ranges: decay the block matrices only, neither norm gains nor the token/position
/// embeddings nor an untied unembedding.
inline bool decay_block_matrices(const parameter_entry& entry) noexcept {
    return entry.rank == 2 && traits_of(entry.id).per_block;
}

/// The ranges of the entries of `layout` for which `decays(entry)` is true, adjacent ones merged, in buffer order;
/// what adamw takes to decay only part of the buffer.
template <class Predicate>
std::vector<parameter_range> decay_ranges(const std::vector<parameter_entry>& layout, Predicate decays) {
    std::vector<parameter_range> out;
    for (const parameter_entry& e : layout) {
        if (!decays(e)) continue;
        if (!out.empty() && out.back().offset + out.back().size == e.offset)
            out.back().size += e.size();
        else
            out.push_back({e.offset, e.size()});
    }
    return out;
}

/// The state of an adamw optimizer: what a checkpoint saves to resume training exactly.
struct adamw_state {
    std::int64_t step = 0;  ///< Number of steps taken (the bias corrections use step, counted from 1).
    std::vector<float> m;   ///< (size) First-moment estimate, torch's exp_avg.
    std::vector<float> v;   ///< (size) Second-moment estimate, torch's exp_avg_sq.
};

/// AdamW over a flat buffer of `size` floats, matching torch.optim.AdamW (amsgrad off, maximize off): per step t
/// (from 1), on elements that decay p -= lr * wd * p; then m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Scalars are computed in double and rounded to
/// float; per-element arithmetic is float32 in torch's order of operations (with its fused multiply-adds), so the
/// results equal torch 1.13's CPU AdamW bit for bit in practice and to within an ulp or two anywhere.
class adamw {
public:
    /// An optimizer for `size` parameters, every one of them decayed; throws std::invalid_argument for bad options.
    explicit adamw(index_t size, const adamw_options& options = {})
        : adamw(size, options, std::vector<parameter_range>{{0, size}}) {}

    /// An optimizer for `size` parameters that decays only the elements inside `decayed` (see decay_ranges);
    /// throws std::invalid_argument for bad options, ranges outside [0, size) or overlapping ranges.
    adamw(index_t size, const adamw_options& options, std::vector<parameter_range> decayed)
        : options_(options), decayed_(std::move(decayed)) {
        if (size < 0) throw std::invalid_argument("adamw: negative size " + std::to_string(size));
        validate(options_);
        for (const parameter_range& r : decayed_)
            if (r.offset < 0 || r.size < 0 || r.offset > size || r.size > size - r.offset)
                throw std::invalid_argument("adamw: decay range [" + std::to_string(r.offset) + ", +" +
                                            std::to_string(r.size) + ") lies outside the " + std::to_string(size) +
                                            " parameters");
        // An element in two ranges would decay twice per step.
        std::sort(decayed_.begin(), decayed_.end(),
                  [](const parameter_range& a, const parameter_range& b) { return a.offset < b.offset; });
        for (std::size_t i = 1; i < decayed_.size(); ++i)
            if (decayed_[i].offset < decayed_[i - 1].offset + decayed_[i - 1].size)
                throw std::invalid_argument("adamw: overlapping decay ranges at offset " +
                                            std::to_string(decayed_[i].offset));
        state_.m.assign(static_cast<std::size_t>(size), 0.0f);
        state_.v.assign(static_cast<std::size_t>(size), 0.0f);
    }

    /// One update of `params` from `grads`; both must have size() elements (std::invalid_argument otherwise).
    void step(std::span<float> params, std::span<const float> grads) {
        if (params.size() != state_.m.size() || grads.size() != params.size())
            throw std::invalid_argument("adamw::step: " + std::to_string(params.size()) + " parameters and " +
                                        std::to_string(grads.size()) + " gradients for an optimizer of size " +
                                        std::to_string(state_.m.size()));
        validate(options_);
        ++state_.step;
        // Scalars are formed in double (Python floats in torch), then rounded to float like torch's kernels do.
        const double lr = static_cast<double>(options_.lr), t = static_cast<double>(state_.step);
        const auto keep = static_cast<float>(1.0 - lr * static_cast<double>(options_.weight_decay));
        const float beta1 = options_.beta1, beta2 = options_.beta2, eps = options_.eps;
        const auto one_minus_beta1 = static_cast<float>(1.0 - static_cast<double>(beta1));
        const auto one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(beta2));
        const auto neg_step_size = static_cast<float>(-lr / (1.0 - std::pow(static_cast<double>(beta1), t)));
        const auto correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(beta2), t)));
        // Decay first, on the old parameters, as torch does (decoupled: the decay never enters m or v).
        if (options_.weight_decay != 0.0f)
            for (const parameter_range& r : decayed_)
                for (index_t i = r.offset; i < r.offset + r.size; ++i) params[static_cast<std::size_t>(i)] *= keep;
        for (std::size_t i = 0; i < params.size(); ++i) {
            const float g = grads[i];
            // The fused multiply-adds are where torch's CPU kernels (add_ with alpha, addcmul_) fuse.
            const float m = std::fma(g, one_minus_beta1, state_.m[i] * beta1);
            const float v = std::fma(one_minus_beta2 * g, g, state_.v[i] * beta2);
            state_.m[i] = m;
            state_.v[i] = v;
            const float denom = std::sqrt(v) / correction2_sqrt + eps;
            params[i] += (neg_step_size * m) / denom;
        }
    }

    /// Number of parameters.
    [[nodiscard]] index_t size() const noexcept { return static_cast<index_t>(state_.m.size()); }
    /// Steps taken so far.
    [[nodiscard]] std::int64_t steps() const noexcept { return state_.step; }
    /// Hyper-parameters (mutable: set lr from a schedule before each step).
    [[nodiscard]] adamw_options& options() noexcept { return options_; }
    /// Hyper-parameters.
    [[nodiscard]] const adamw_options& options() const noexcept { return options_; }
    /// The ranges that receive weight decay.
    [[nodiscard]] const std::vector<parameter_range>& decayed() const noexcept { return decayed_; }
    /// First-moment estimates, one per parameter.
    [[nodiscard]] std::span<float> m() noexcept { return state_.m; }
    /// First-moment estimates, one per parameter.
    [[nodiscard]] std::span<const float> m() const noexcept { return state_.m; }
    /// Second-moment estimates, one per parameter.
    [[nodiscard]] std::span<float> v() noexcept { return state_.v; }
    /// Second-moment estimates, one per parameter.
    [[nodiscard]] std::span<const float> v() const noexcept { return state_.v; }
    /// Step counter and moments, e.g. to save in a checkpoint.
    [[nodiscard]] const adamw_state& state() const noexcept { return state_; }
    /// Restores a saved state; throws std::invalid_argument unless m and v have size() elements and step >= 0.
    void set_state(adamw_state state) {
        if (state.m.size() != state_.m.size() || state.v.size() != state_.v.size() || state.step < 0)
            throw std::invalid_argument("adamw::set_state: state of " + std::to_string(state.m.size()) + "/" +
                                        std::to_string(state.v.size()) + " moments at step " +
                                        std::to_string(state.step) + " for an optimizer of size " +
                                        std::to_string(state_.m.size()));
        state_ = std::move(state);
    }
    /// Forgets the moments and the step counter.
    void reset() noexcept {
        state_.step = 0;
        std::fill(state_.m.begin(), state_.m.end(), 0.0f);
        std::fill(state_.v.begin(), state_.v.end(), 0.0f);
    }

private:
    static void validate(const adamw_options& o) {
        auto fail = [](const std::string& what) { throw std::invalid_argument("adamw: " + what); };
        if (!(o.lr >= 0.0f) || !std::isfinite(o.lr)) fail("lr must be finite and >= 0, got " + std::to_string(o.lr));
        if (!(o.beta1 >= 0.0f && o.beta1 < 1.0f)) fail("beta1 must be in [0, 1), got " + std::to_string(o.beta1));
        if (!(o.beta2 >= 0.0f && o.beta2 < 1.0f)) fail("beta2 must be in [0, 1), got " + std::to_string(o.beta2));
        if (!(o.eps >= 0.0f) || !std::isfinite(o.eps)) fail("eps must be finite and >= 0");
        if (!(o.weight_decay >= 0.0f) || !std::isfinite(o.weight_decay)) fail("weight_decay must be finite and >= 0");
    }

    adamw_options options_;
    std::vector<parameter_range> decayed_;
    adamw_state state_;
};

/// The global L2 norm of `values`, accumulated in double.
inline double global_norm(std::span<const float> values) noexcept {
    double sum = 0.0;
    for (const float x : values) sum += static_cast<double>(x) * static_cast<double>(x);
    return std::sqrt(sum);
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm`, like torch.nn.utils.clip_grad_norm_:
/// scale = max_norm / (norm + 1e-6), applied only when below 1. Returns the norm before clipping, accumulated in
/// double. A non-finite norm (an inf or NaN gradient) is returned with the gradients left as they are: check it.
/// Throws std::invalid_argument unless max_norm > 0.
inline double clip_grad_norm(std::span<float> grads, float max_norm) {
    if (!(max_norm > 0.0f))
        throw std::invalid_argument("clip_grad_norm: max_norm must be > 0, got " + std::to_string(max_norm));
    const double norm = global_norm(grads);
    if (!std::isfinite(norm)) return norm;
    const double scale = static_cast<double>(max_norm) / (norm + 1e-6);
    if (scale < 1.0) {
        const auto s = static_cast<float>(scale);
        for (float& g : grads) g *= s;
    }
    return norm;
}

MECHLENS_END_NAMESPACE
