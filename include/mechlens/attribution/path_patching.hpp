#pragma once
/// @file
/// Path patching (Wang et al. 2022, "Interpretability in the Wild"): how much of a metric's change between a clean
/// and a corrupt prompt travels from chosen sender heads to chosen receivers (later heads' query/key/value inputs, or
/// the residual stream, e.g. the final one that the unembedding reads) and along no other route.
///
/// Three steps, on the clean tokens throughout: (1) cache every head's `hook_z` on the clean and the corrupt prompt;
/// (2) run the clean prompt with the senders' `hook_z` set to their corrupt values and every other head's frozen to
/// its clean value, and record the receivers; (3) run the clean prompt again with only the receivers patched from
/// step 2, and read the metric. A path_patcher keeps step 1's caches and one workspace, so sweeps over senders
/// repeat only steps 2 and 3.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/attribution/answer_metric.hpp"
#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/caching.hpp"
#include "mechlens/hooks/compose.hpp"
#include "mechlens/hooks/patching.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/model/forward.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/model/workspace.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/tensor.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A sender: one attention head whose output (`hook_z`) takes its corrupt value in step 2.
struct sender_head {
    index_t layer = 0;  ///< Block.
    index_t head = 0;   ///< Query head within the block (hook_z has one row per query head, also with GQA).
    friend constexpr bool operator==(const sender_head&, const sender_head&) = default;  ///< Same layer and head.
};

/// The site kinds a receiver may be: a block's query/key/value inputs (per head; key and value heads are the
/// block's n_kv_heads heads) or its residual stream before, in the middle of, or after the block.
inline constexpr kind_set path_receiver_kinds =
    kind_set::of({site_kind::attn_q, site_kind::attn_k, site_kind::attn_v, site_kind::resid_pre,
                  site_kind::resid_mid, site_kind::resid_post});

/// A receiver made of the `input` (attn_q, attn_k or attn_v) of chosen heads of block `layer`, at chosen positions
/// (all by default); attn_k and attn_v count key/value heads.
inline patch_target receiver_head_inputs(site_kind input, index_t layer, index_set heads, index_set positions = {}) {
    if (input != site_kind::attn_q && input != site_kind::attn_k && input != site_kind::attn_v)
        throw std::invalid_argument("receiver_head_inputs: " + std::string(site_suffix(input)) +
                                    " is not a head input; use attn_q, attn_k or attn_v");
    return patch_target{site{input, layer}, selection{std::move(positions), std::move(heads)}};
}

/// The receiver of the direct path to the logits: the residual stream after the last block (what the final norm and
/// the unembedding read), at chosen positions (all by default).
inline patch_target receiver_final_residual(const model_config& config, index_set positions = {}) {
    return patch_target{site{site_kind::resid_post, config.n_layers - 1}, selection{std::move(positions), {}}};
}

/// How step 3 writes a receiver.
enum class receiver_update : std::uint8_t {
    /// receiver += (step-2 value - clean value): only the senders' change enters the receiver, on top of whatever
    /// this run computes there, so paths through other receivers (sender -> A -> B) count too, as in edge patching.
    add_difference,
    /// receiver = step-2 value, the literal TransformerLens/ARENA form: a receiver downstream of another receiver
    /// is pinned, so chains through receivers do not count and a final-residual receiver hides all the others.
    overwrite,
};

/// Choices of path patching.
struct path_patching_options {
    /// Also freeze every MLP's output (`hook_mlp_out`) to its clean value in step 2. Off by default, as in the IOI
    /// paper and the ARENA/TransformerLens tutorials: a sender's effect through an MLP into a receiver then belongs
    /// to the path, the MLPs being treated as part of the residual stream's processing rather than as components.
    bool freeze_mlps = false;
    /// Positions at which the senders take their corrupt values in step 2 (all by default).
    index_set sender_positions{};
    /// How step 3 writes the receivers; both agree (to rounding) when no receiver lies downstream of another.
    receiver_update update = receiver_update::add_difference;
};

/// The outcome of one path patching run; metrics are means over prompts.
struct path_patching_result {
    double patched = 0.0;             ///< The metric after step 3.
    double clean = 0.0;               ///< The metric of the clean run.
    double corrupt = 0.0;             ///< The metric of the corrupt run.
    double normalized = 0.0;          ///< (patched - clean) / (corrupt - clean): 0 = no effect, 1 = all of it.
    std::vector<double> per_prompt{}; ///< The metric after step 3, per prompt.
    /// patched - clean.
    [[nodiscard]] double effect() const noexcept { return patched - clean; }
};

/// Every head as the single sender for one receiver set (the IOI paper's figures).
struct path_patching_sweep {
    tensor<double, 2> patched;     ///< (layers, heads) the metric after step 3.
    tensor<double, 2> normalized;  ///< (layers, heads) (patched - clean) / (corrupt - clean).
    double clean = 0.0;            ///< The metric of the clean run.
    double corrupt = 0.0;          ///< The metric of the corrupt run.
};

namespace detail {

/// True when a receiver `kind` in block `receiver_layer` can depend on a head of block `sender_layer`: q/k/v and
/// hook_resid_pre are computed before that block's heads, hook_resid_mid/post after them.
constexpr bool receiver_after_sender(site_kind kind, index_t receiver_layer, index_t sender_layer) noexcept {
    return kind == site_kind::resid_mid || kind == site_kind::resid_post ? receiver_layer >= sender_layer
                                                                         : receiver_layer > sender_layer;
}

/// All receivers of one site and, for add_difference, the change step 3 adds there.
struct path_receiver_slot {
    site target;                     ///< The site.
    std::vector<selection> parts;    ///< The selections of every receiver at this site.
    cached_activation delta{};       ///< Step 2 minus clean inside the selections, zero elsewhere (dense, site shape).
};

/// Step 2's policy: every head's hook_z (and, when asked, every hook_mlp_out) frozen to its clean value, then the
/// senders' rows set to their corrupt values.
class path_freeze_hooks {
public:
    /// Freezes from `clean`, takes senders from `corrupt`; both must outlive the policy.
    path_freeze_hooks(const activation_cache& clean, const activation_cache& corrupt, bool freeze_mlps)
        : clean_(&clean), corrupt_(&corrupt), freeze_mlps_(freeze_mlps) {}
    /// Makes these heads (at `positions`) the senders, replacing the previous ones.
    void set_senders(const std::vector<sender_head>& senders, const index_set& positions, index_t layers) {
        std::vector<std::vector<index_t>> heads(static_cast<std::size_t>(layers));
        for (const sender_head& s : senders) heads[static_cast<std::size_t>(s.layer)].push_back(s.head);
        by_layer_.clear();
        for (auto& list : heads) by_layer_.push_back(selection{positions, index_set(std::move(list))});
    }
    /// hook_z, and hook_mlp_out for freeze_mlps.
    static constexpr bool wants(site_kind kind) noexcept {
        return kind == site_kind::attn_z || kind == site_kind::mlp_out;
    }
    /// Freezes, then writes the senders.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        if (s.kind == site_kind::mlp_out && !freeze_mlps_) return;
        overwrite_from(view, s, ctx, selection{}, clean_->at(s), false, "path_patch");
        if (s.kind == site_kind::attn_z && s.layer < static_cast<index_t>(by_layer_.size()))
            overwrite_from(view, s, ctx, by_layer_[static_cast<std::size_t>(s.layer)], corrupt_->at(s), false,
                           "path_patch");
    }

private:
    const activation_cache* clean_;
    const activation_cache* corrupt_;
    bool freeze_mlps_;
    std::vector<selection> by_layer_;  // per block: the sender heads there (none selects nothing)
};
static_assert(hook_policy<path_freeze_hooks>);

/// Step 3's policy: writes the receivers from step 2's recording, as `update` says.
class path_receiver_hooks {
public:
    /// Writes `slots` from `recorded` (step 2); both must outlive the policy.
    path_receiver_hooks(const std::vector<path_receiver_slot>& slots, const activation_cache& recorded,
                        receiver_update update)
        : slots_(&slots), recorded_(&recorded), update_(update) {}
    /// The receiver kinds.
    static constexpr bool wants(site_kind kind) noexcept { return path_receiver_kinds.contains(kind); }
    /// Patches `view` when `s` is a receiver.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        for (const path_receiver_slot& slot : *slots_) {
            if (slot.target != s) continue;
            if (update_ == receiver_update::overwrite) {
                for (const selection& part : slot.parts)
                    overwrite_from(view, s, ctx, part, recorded_->at(s), false, "path_patch");
            } else {
                add_delta(view, s, ctx, slot.delta);
            }
        }
    }

private:
    template <std::size_t R>
    static void add_delta(tensor_view<float, R> view, const site& s, const hook_context& ctx,
                          const cached_activation& delta) {
        bool same = delta.shape.size() == R && ctx.start_position == 0;
        for (std::size_t a = 0; same && a < R; ++a) same = delta.shape[a] == view.extent(a);
        if (!same)
            throw shape_error("path_patch: " + to_string(s) + " fired with shape " + format_extents(view.shape()) +
                              " but step 2 recorded " + format_shape(delta.shape));
        std::array<index_t, R> strides{};  // of the dense delta
        index_t running = 1;
        for (std::size_t a = R; a-- > 0;) {
            strides[a] = running;
            running *= delta.shape[a];
        }
        const index_t width = view.extent(R - 1), stride = view.stride(R - 1);
        for_each_selected_row(view, s, ctx, selection{}, [&](const extents<R>& index, float* row) {
            index_t offset = 0;
            for (std::size_t a = 0; a + 1 < R; ++a) offset += index[a] * strides[a];
            const float* from = delta.values.data() + offset;
            for (index_t i = 0; i < width; ++i) row[i * stride] += from[i];
        });
    }

    const std::vector<path_receiver_slot>* slots_;
    const activation_cache* recorded_;
    receiver_update update_;
};
static_assert(hook_policy<path_receiver_hooks>);

/// Writes recorded - clean into `delta` inside `part` (both dense, of `shape`).
template <std::size_t R>
void fill_delta(const site& s, const selection& part, const cached_activation& recorded,
                const cached_activation& clean, cached_activation& delta) {
    extents<R> e{};
    for (std::size_t a = 0; a < R; ++a) e[a] = delta.shape[a];
    const tensor_view<float, R> view(delta.values.data(), e);
    const index_t width = e[R - 1];
    float* const base = delta.values.data();
    for_each_selected_row(view, s, hook_context{0}, part, [&](const extents<R>&, float* row) {
        const auto offset = static_cast<std::size_t>(row - base);
        for (index_t i = 0; i < width; ++i) {
            const auto k = offset + static_cast<std::size_t>(i);
            row[i] = recorded.values[k] - clean.values[k];
        }
    });
}

}  // namespace detail

/// Path patching on one clean/corrupt pair of token batches: caches both runs once (step 1) and reuses them and one
/// workspace across run() and sweep() calls. The model must outlive the patcher; the tokens are copied.
class path_patcher {
public:
    /// Step 1: runs `clean` and `corrupt` (both (prompts, pos), same shape) and caches what steps 2 and 3 need.
    /// Throws shape_error when the shapes differ, std::invalid_argument when `answer` does not have one answer per
    /// prompt or its position is outside the sequence.
    path_patcher(const transformer& model, tensor_view<const std::int32_t, 2> clean,
                 tensor_view<const std::int32_t, 2> corrupt, answer_metric answer, path_patching_options options = {})
        : model_(&model), metric_(std::move(answer)), options_(std::move(options)) {
        const model_config& c = model.config();
        if (clean.shape() != corrupt.shape())
            throw shape_error("path_patch: clean tokens " + detail::format_extents(clean.shape()) +
                              " and corrupt tokens " + detail::format_extents(corrupt.shape()) + " differ in shape");
        if (clean.extent(0) <= 0 || clean.extent(1) <= 0)
            throw shape_error("path_patch: tokens must be (prompts, pos) with both positive, got " +
                              detail::format_extents(clean.shape()));
        metric_.check(c.vocab_out());
        if (metric_.prompts() != clean.extent(0))
            throw std::invalid_argument("path_patch: the metric has answers for " + std::to_string(metric_.prompts()) +
                                        " prompts, the tokens hold " + std::to_string(clean.extent(0)));
        const index_t positions = clean.extent(1);
        positions_ = positions;
        // Only the answer position's logits are needed; when it is the last one, the unembedding skips the rest.
        const bool last_only = metric_.resolve_position(positions) == positions - 1;
        logits_ = tensor<float, 3>({clean.extent(0), last_only ? 1 : positions, c.vocab_out()});
        check_positions(options_.sender_positions, "sender position");
        clean_tokens_ = copy_tokens(clean);
        corrupt_tokens_ = copy_tokens(corrupt);

        caching_hooks<kind_set::of({site_kind::attn_z, site_kind::mlp_out})> clean_run(cache_filter().kinds(
            options_.freeze_mlps ? kind_set::of({site_kind::attn_z, site_kind::mlp_out})
                                 : kind_set::of({site_kind::attn_z})));
        forward(model, clean_tokens_.view(), logits_.view(), ws_, clean_run);
        clean_metric_ = metric_.mean(logits_.view(), positions);
        clean_ = clean_run.take();
        caching_hooks<kind_set::of({site_kind::attn_z})> corrupt_run;
        forward(model, corrupt_tokens_.view(), logits_.view(), ws_, corrupt_run);
        corrupt_metric_ = metric_.mean(logits_.view(), positions);
        corrupt_ = corrupt_run.take();
    }
    /// Refuses a temporary model: the patcher keeps a reference to it.
    path_patcher(transformer&&, tensor_view<const std::int32_t, 2>, tensor_view<const std::int32_t, 2>,
                 answer_metric, path_patching_options = {}) = delete;

    /// The metric of the clean run (mean over prompts).
    [[nodiscard]] double clean_metric() const noexcept { return clean_metric_; }
    /// The metric of the corrupt run (mean over prompts).
    [[nodiscard]] double corrupt_metric() const noexcept { return corrupt_metric_; }
    /// The options in use.
    [[nodiscard]] const path_patching_options& options() const noexcept { return options_; }

    /// Steps 2 and 3 for these senders and receivers. Throws std::invalid_argument for an empty list, a head or
    /// layer out of range, a receiver kind outside path_receiver_kinds, and a receiver that no sender comes before
    /// (a path must go forward; its effect would be exactly zero, so asking for it is taken as a mistake).
    [[nodiscard]] path_patching_result run(const std::vector<sender_head>& senders,
                                           const std::vector<patch_target>& receivers) {
        check_senders(senders);
        std::vector<detail::path_receiver_slot> slots = group_receivers(receivers);
        for (const patch_target& r : receivers) {
            bool reached = false;
            for (const sender_head& s : senders)
                reached = reached || detail::receiver_after_sender(r.target.kind, r.target.layer, s.layer);
            if (!reached)
                throw std::invalid_argument("path_patch: receiver " + to_string(r.target) +
                                            " is computed before every sender's output (senders' earliest block " +
                                            std::to_string(earliest(senders)) +
                                            "); a path must go forward, and this one's effect is exactly zero");
        }
        caching_hooks<path_receiver_kinds> recorder(cache_filter().sites(sites_of(slots)));
        ensure_clean(slots);
        return patch_path(senders, slots, recorder);
    }

    /// Every head (layer, head) alone as the sender for `receivers`. A head that no receiver comes after is not run:
    /// its patched value is the clean metric and its normalized value exactly 0.
    [[nodiscard]] path_patching_sweep sweep(const std::vector<patch_target>& receivers) {
        const model_config& c = model_->config();
        std::vector<detail::path_receiver_slot> slots = group_receivers(receivers);
        caching_hooks<path_receiver_kinds> recorder(cache_filter().sites(sites_of(slots)));
        ensure_clean(slots);
        path_patching_sweep out{tensor<double, 2>({c.n_layers, c.n_heads}), tensor<double, 2>({c.n_layers, c.n_heads}),
                                clean_metric_, corrupt_metric_};
        std::vector<sender_head> sender(1);
        for (index_t layer = 0; layer < c.n_layers; ++layer) {
            bool reached = false;
            for (const patch_target& r : receivers)
                reached = reached || detail::receiver_after_sender(r.target.kind, r.target.layer, layer);
            for (index_t head = 0; head < c.n_heads; ++head) {
                if (!reached) {
                    out.patched(layer, head) = clean_metric_;
                    out.normalized(layer, head) = 0.0;
                    continue;
                }
                sender[0] = sender_head{layer, head};
                const path_patching_result r = patch_path(sender, slots, recorder);
                out.patched(layer, head) = r.patched;
                out.normalized(layer, head) = r.normalized;
            }
        }
        return out;
    }

private:
    static tensor<std::int32_t, 2> copy_tokens(tensor_view<const std::int32_t, 2> tokens) {
        tensor<std::int32_t, 2> out(tokens.shape());
        for (index_t b = 0; b < tokens.extent(0); ++b)
            for (index_t p = 0; p < tokens.extent(1); ++p) out(b, p) = tokens(b, p);
        return out;
    }

    static index_t earliest(const std::vector<sender_head>& senders) {
        index_t first = senders.front().layer;
        for (const sender_head& s : senders) first = std::min(first, s.layer);
        return first;
    }

    void check_positions(const index_set& positions, const char* what) const {
        const index_t n = positions_;
        if (!positions.is_all() && !positions.indices().empty() && positions.indices().back() >= n)
            throw std::invalid_argument("path_patch: " + std::string(what) + " " +
                                        std::to_string(positions.indices().back()) + " is outside the " +
                                        std::to_string(n) + "-token sequence");
    }
    void check_senders(const std::vector<sender_head>& senders) const {
        const model_config& c = model_->config();
        if (senders.empty()) throw std::invalid_argument("path_patch: no sender head");
        for (const sender_head& s : senders)
            if (s.layer < 0 || s.layer >= c.n_layers || s.head < 0 || s.head >= c.n_heads)
                throw std::invalid_argument("path_patch: sender head (" + std::to_string(s.layer) + ", " +
                                            std::to_string(s.head) + ") is outside the model's " +
                                            std::to_string(c.n_layers) + " layers of " + std::to_string(c.n_heads) +
                                            " heads");
    }

    /// Validates the receivers and groups them by site (so a head listed twice is patched once).
    std::vector<detail::path_receiver_slot> group_receivers(const std::vector<patch_target>& receivers) const {
        const model_config& c = model_->config();
        if (receivers.empty()) throw std::invalid_argument("path_patch: no receiver");
        std::vector<detail::path_receiver_slot> slots;
        for (const patch_target& r : receivers) {
            const site& s = r.target;
            const std::string name = to_string(s);
            if (!path_receiver_kinds.contains(s.kind))
                throw std::invalid_argument("path_patch: " + name +
                                            " cannot be a receiver; use attn.hook_q/k/v or hook_resid_pre/mid/post");
            if (s.layer < 0 || s.layer >= c.n_layers)
                throw std::invalid_argument("path_patch: receiver " + name + " is outside the model's " +
                                            std::to_string(c.n_layers) + " layers");
            if (!has_site_kind(c, s.kind))
                throw std::invalid_argument("path_patch: " + name + " does not exist in this model: " +
                                            detail::missing_kind_reason(c, s.kind));
            detail::check_target<path_receiver_kinds>(s, r.selected, "path_patch");
            const index_t heads = s.kind == site_kind::attn_q ? c.n_heads : c.n_kv_heads;
            const index_set& chosen = r.selected.heads;
            if (!chosen.is_all() && !chosen.indices().empty() && chosen.indices().back() >= heads)
                throw std::invalid_argument("path_patch: receiver " + name + " head " +
                                            std::to_string(chosen.indices().back()) + " is out of range; it has " +
                                            std::to_string(heads) +
                                            (s.kind == site_kind::attn_q ? " query heads" : " key/value heads"));
            check_positions(r.selected.positions, "receiver position");
            detail::path_receiver_slot* slot = nullptr;
            for (auto& existing : slots)
                if (existing.target == s) slot = &existing;
            if (slot == nullptr) slot = &slots.emplace_back(detail::path_receiver_slot{s, {}, {}});
            slot->parts.push_back(r.selected);
        }
        return slots;
    }

    static std::vector<site> sites_of(const std::vector<detail::path_receiver_slot>& slots) {
        std::vector<site> out;
        for (const auto& slot : slots) out.push_back(slot.target);
        return out;
    }

    /// Caches the clean values of receiver sites not cached yet (add_difference needs them); one clean forward.
    void ensure_clean(const std::vector<detail::path_receiver_slot>& slots) {
        if (options_.update != receiver_update::add_difference) return;
        std::vector<site> missing;
        for (const auto& slot : slots)
            if (!clean_.contains(slot.target)) missing.push_back(slot.target);
        if (missing.empty()) return;
        caching_hooks<path_receiver_kinds> recorder(cache_filter().sites(missing));
        forward(*model_, clean_tokens_.view(), logits_.view(), ws_, recorder);
        for (const site& s : missing) clean_.put(s, std::move(recorder.cache().at(s)));
    }

    /// Steps 2 and 3.
    path_patching_result patch_path(const std::vector<sender_head>& senders,
                                    std::vector<detail::path_receiver_slot>& slots,
                                    caching_hooks<path_receiver_kinds>& recorder) {
        const model_config& c = model_->config();
        detail::path_freeze_hooks freeze(clean_, corrupt_, options_.freeze_mlps);
        freeze.set_senders(senders, options_.sender_positions, c.n_layers);
        forward(*model_, clean_tokens_.view(), logits_.view(), ws_, compose(freeze, recorder));

        const activation_cache& recorded = recorder.cache();
        if (options_.update == receiver_update::add_difference) {
            for (detail::path_receiver_slot& slot : slots) {
                const cached_activation& step2 = recorded.at(slot.target);
                const cached_activation& clean = clean_.at(slot.target);
                if (step2.shape != clean.shape || !step2.positions.empty() || !clean.positions.empty())
                    throw shape_error("path_patch: " + to_string(slot.target) + " has shape " +
                                      detail::format_shape(step2.shape) + " in step 2 but " +
                                      detail::format_shape(clean.shape) + " in the clean run");
                slot.delta.shape = step2.shape;
                slot.delta.positions.clear();
                slot.delta.values.assign(step2.values.size(), 0.0f);
                for (const selection& part : slot.parts) {
                    if (site_rank(slot.target.kind) == 4)
                        detail::fill_delta<4>(slot.target, part, step2, clean, slot.delta);
                    else
                        detail::fill_delta<3>(slot.target, part, step2, clean, slot.delta);
                }
            }
        }
        forward(*model_, clean_tokens_.view(), logits_.view(), ws_,
                detail::path_receiver_hooks(slots, recorded, options_.update));

        path_patching_result out;
        out.per_prompt = metric_.values(logits_.view(), positions_);
        double total = 0.0;
        for (double v : out.per_prompt) total += v;
        out.patched = total / static_cast<double>(out.per_prompt.size());
        out.clean = clean_metric_;
        out.corrupt = corrupt_metric_;
        const double span = corrupt_metric_ - clean_metric_;
        out.normalized = span != 0.0 ? (out.patched - clean_metric_) / span : std::numeric_limits<double>::quiet_NaN();
        return out;
    }

    const transformer* model_;
    answer_metric metric_;
    path_patching_options options_;
    index_t positions_ = 0;                   // tokens per prompt
    tensor<std::int32_t, 2> clean_tokens_;    // (prompts, pos)
    tensor<std::int32_t, 2> corrupt_tokens_;  // (prompts, pos)
    tensor<float, 3> logits_;                 // (prompts, pos or 1, d_vocab)
    workspace ws_;
    activation_cache clean_;    // every hook_z (and hook_mlp_out when frozen), then receivers as they are asked for
    activation_cache corrupt_;  // every hook_z
    double clean_metric_ = 0.0;
    double corrupt_metric_ = 0.0;
};

/// Path patching from `senders` to `receivers` (see path_patcher::run): clean and corrupt are (prompts, pos) token
/// batches of the same shape, `answer` has one answer per prompt.
[[nodiscard]] inline path_patching_result path_patch(const transformer& model,
                                                     tensor_view<const std::int32_t, 2> clean,
                                                     tensor_view<const std::int32_t, 2> corrupt,
                                                     const std::vector<sender_head>& senders,
                                                     const std::vector<patch_target>& receivers,
                                                     const answer_metric& answer, path_patching_options options = {}) {
    path_patcher patcher(model, clean, corrupt, answer, std::move(options));
    return patcher.run(senders, receivers);
}

/// Every head alone as the sender for `receivers` (see path_patcher::sweep): a (layers, heads) table.
[[nodiscard]] inline path_patching_sweep path_patch_sweep(const transformer& model,
                                                          tensor_view<const std::int32_t, 2> clean,
                                                          tensor_view<const std::int32_t, 2> corrupt,
                                                          const std::vector<patch_target>& receivers,
                                                          const answer_metric& answer,
                                                          path_patching_options options = {}) {
    path_patcher patcher(model, clean, corrupt, answer, std::move(options));
    return patcher.sweep(receivers);
}

MECHLENS_END_NAMESPACE
