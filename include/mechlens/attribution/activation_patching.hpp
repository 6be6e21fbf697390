#pragma once
/// @file
/// Activation patching sweeps: for every cell of a grid (layer x position, layer x head, layer x head x position) the
/// clean run's activation is written into the corrupt run and the answer metric is read, normalised as
/// (patched - corrupt) / (clean - corrupt) over a batch of prompt pairs.
///
/// The fast sweep gives the same table as one full forward per cell, bit for bit, because:
/// - nothing before a cell's layer changes, so a cell's run resumes at that layer from the corrupt run's cached
///   residual stream;
/// - nothing at an earlier position changes (the mask is causal), so it recomputes only the positions from the
///   cell's first one, with the keys and values of earlier positions copied from the corrupt run's cache, and only
///   up to the answer position;
/// - positions where every clean prompt equals its corrupt one patch nothing, so whole-sequence cells start at the
///   first position where a pair differs;
/// - cells that resume at the same layer and position run together, stacked on the batch axis;
/// - in the last block only the answer row goes past the keys and values, and for logit and logit-difference
///   metrics only the answer tokens' logits are computed.
/// Every row of the forward pass is computed the same way whatever the batch, the start position or the number of
/// rows (the GEMM reduces each element in one fixed order; attention sums keys in order), which is what makes the
/// resumed, batched rows equal to the full forward's.
///
/// With splices (SAEs, transcoders: a dynamic_hooks holding them), every run goes through them: the clean cache holds
/// what the rest of the model used (a host's spliced output), patches overwrite a host after its splice, and a cell
/// resumes from the corrupt residual stream as it was before the splices of its first block ran. The resumed rows
/// equal the full forward's as long as each splice computes every row on its own (SAEs and transcoders do, but
/// batchtopk, whose latents depend on the whole batch): with a splice that couples rows, sweep() runs every cell as
/// a full forward pass of the prompt batch (sweep_naive), which is the spliced model's own answer.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/attribution/answer_metric.hpp"
#include "mechlens/hooks/caching.hpp"
#include "mechlens/hooks/compose.hpp"
#include "mechlens/hooks/dynamic.hpp"
#include "mechlens/hooks/patching.hpp"
#include "mechlens/model/forward.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What a patching sweep varies: a site kind across every layer, with one cell per position and/or per head (a
/// dimension not split is patched whole).
struct patching_grid {
    site_kind kind = site_kind::resid_pre;  ///< The patched site kind (any but attn.hook_result and unembed.hook_out).
    bool per_head = false;                  ///< One cell per head (sites with a head axis only).
    bool per_position = true;               ///< One cell per position (query position for patterns).

    /// (layer, position) cells of a residual-width site: hook_resid_pre, hook_attn_out, hook_mlp_out, ...
    static patching_grid by_layer_position(site_kind kind) { return {kind, false, true}; }
    /// (layer, head) cells, every position at once: attn.hook_z (the default), hook_q/k/v or hook_pattern.
    static patching_grid by_layer_head(site_kind kind = site_kind::attn_z) { return {kind, true, false}; }
    /// (layer, head, position) cells.
    static patching_grid by_layer_head_position(site_kind kind = site_kind::attn_z) { return {kind, true, true}; }

    /// "blocks.*.attn.hook_z by layer x head", for titles.
    [[nodiscard]] std::string describe() const {
        std::string axes = "layer";
        if (per_head) axes += " x head";
        if (per_position) axes += " x position";
        return (is_block_site(kind) ? "blocks.*." : "") + std::string(site_suffix(kind)) + " by " + axes;
    }
};

/// One cell of a grid: a layer (-1 for global sites), a head (-1 = every head) and a position (-1 = every one).
struct patching_cell {
    index_t layer = 0;      ///< Block, or -1 for hook_embed / hook_pos_embed / ln_final sites.
    index_t head = -1;      ///< Head on the site's head axis, or -1.
    index_t position = -1;  ///< Absolute (query) position, or -1.
    /// The selection this cell patches.
    [[nodiscard]] selection where() const {
        selection s;
        if (head >= 0) s.heads = index_set{head};
        if (position >= 0) s.positions = index_set{position};
        return s;
    }
};

/// A sweep's result: one value per cell, laid out (layers, heads or 1, positions or 1).
struct patching_table {
    patching_grid grid{};       ///< What was swept.
    tensor<float, 3> values{};  ///< Normalised effect (patched - corrupt) / (clean - corrupt); NaN if clean == corrupt.
    tensor<float, 3> raw{};     ///< The patched metric itself (mean over prompts).
    double clean = 0.0;         ///< Metric of the clean run.
    double corrupt = 0.0;       ///< Metric of the corrupt run.
    index_t forward_rows = 0;   ///< Token rows the sweep pushed through blocks (a measure of its work).
};

/// Options of a fast sweep.
struct patching_options {
    /// Most token rows (sequences x positions) per batched forward; bounds the workspace.
    index_t max_batch_rows = 4096;
    /// Called after each batched forward with (cells done, cells in all).
    std::function<void(index_t, index_t)> progress{};
};

namespace detail {

/// The kinds a sweep can patch: those the clean cache holds (caching_hooks<>'s default set), but the logits.
inline constexpr kind_set sweepable_kinds = kind_set::all_but_result() - kind_set::of({site_kind::unembed_out});

/// Calls fn(std::integral_constant<site_kind, K>{}) for the run-time kind `kind`, so a policy can want exactly one
/// kind at compile time (and the forward pass keeps its unhooked fast paths everywhere else).
template <class Fn>
decltype(auto) with_site_kind(site_kind kind, Fn&& fn) {
    if (!sweepable_kinds.contains(kind))
        throw std::invalid_argument("activation patching: " + std::string(site_suffix(kind)) +
                                    " cannot be swept (patch attn.hook_z per head instead of hook_result)");
    return visit_kind<sweepable_kinds>(kind, std::forward<Fn>(fn));
}

/// Patches, in a batch of stacked cells, batch row b with its cell's selection of the clean activation of prompt
/// b % prompts, at the site (`kind`, `layer`). `Wanted` is the kinds the forward pass fires for it: exactly `kind`
/// on the fast path (every other site keeps its unhooked code), or every sweepable kind, so that one instantiation
/// of the passes serves every kind where the sites fire anyway (when run-time splices are composed in).
template <kind_set Wanted>
struct stacked_cell_patch {
    const cached_activation* source = nullptr;       ///< Clean activation of the site, (prompts, T, ...).
    site_kind kind = site_kind::embed;               ///< The patched kind (one of `Wanted`).
    index_t layer = 0;                               ///< The patched layer (-1 for global sites).
    const std::vector<selection>* cells = nullptr;   ///< One selection per stacked cell.
    index_t prompts = 1;                             ///< Prompt pairs per cell.

    static constexpr bool wants(site_kind k) noexcept { return Wanted.contains(k); }
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        if (s.kind != kind || s.layer != layer) return;
        const auto pos_axis = static_cast<std::size_t>(axes_of(s.kind).position);
        std::array<index_t, R> source_strides{};
        index_t running = 1;
        for (std::size_t a = R; a-- > 0;) {
            source_strides[a] = running;
            running *= source->shape[a];
        }
        // The source row of absolute position p (final-norm sites are cached for the answer row only).
        const auto source_row = [&](index_t p) -> index_t {
            if (source->positions.empty()) return p;
            const auto found = std::find(source->positions.begin(), source->positions.end(), p);
            if (found == source->positions.end())
                throw shape_error("activation patching: the clean cache has no row for position " + std::to_string(p) +
                                  " of " + to_string(s));
            return static_cast<index_t>(found - source->positions.begin());
        };
        const index_t width = view.extent(R - 1), stride = view.stride(R - 1);
        for (index_t b = 0; b < view.extent(0); ++b) {
            const selection& where = (*cells)[static_cast<std::size_t>(b / prompts)];
            const index_t prompt = b % prompts;
            for_each_selected_row(view.slice(0, b, b + 1), s, ctx, where, [&](const extents<R>& index, float* row) {
                index_t offset = prompt * source_strides[0];
                for (std::size_t a = 1; a + 1 < R; ++a)
                    offset += (a == pos_axis ? source_row(index[a] + ctx.start_position) : index[a]) * source_strides[a];
                const float* from = source->values.data() + offset;
                for (index_t i = 0; i < width; ++i) row[i * stride] = from[i];
            });
        }
    }
};

}  // namespace detail

/// Runs activation-patching sweeps between a clean and a corrupt batch of prompts (prompt i of each is a pair; same
/// shape): caches both runs once, then answers any grid. Keeps a reference to `model` (and to `splices`).
class activation_patcher {
public:
    /// Caches the clean run (every site but attn.hook_result) and the corrupt run (residual stream and keys/values);
    /// throws shape_error when the token batches differ in shape and std::invalid_argument for a bad metric. With
    /// `splices` (run-time hooks holding SAEs or transcoders, which must outlive the patcher), every run goes through
    /// them: the clean cache holds what the rest of the model used, and patches land after a host's splice.
    activation_patcher(const transformer& model, tensor_view<const std::int32_t, 2> clean,
                       tensor_view<const std::int32_t, 2> corrupt, answer_metric measure,
                       dynamic_hooks* splices = nullptr)
        : model_(&model), splices_(splices), metric_(std::move(measure)) {
        const model_config& c = model.config();
        if (clean.shape() != corrupt.shape())
            throw shape_error("activation_patcher: clean tokens " + detail::format_extents(clean.shape()) +
                              " and corrupt tokens " + detail::format_extents(corrupt.shape()) + " differ in shape");
        prompts_ = clean.extent(0);
        length_ = clean.extent(1);
        metric_.check(c.vocab_out());
        if (metric_.prompts() != prompts_)
            throw std::invalid_argument("activation_patcher: the metric has answers for " +
                                        std::to_string(metric_.prompts()) + " prompts, the batch has " +
                                        std::to_string(prompts_));
        answer_ = metric_.resolve_position(length_);
        clean_tokens_ = copy_tokens(clean);
        corrupt_tokens_ = copy_tokens(corrupt);
        first_difference_ = length_;
        for (index_t b = 0; b < prompts_; ++b)
            for (index_t p = 0; p < length_; ++p)
                if (clean(b, p) != corrupt(b, p)) first_difference_ = std::min(first_difference_, p);

        // Positions after the answer cannot change it: every run stops there and reads the last row's logits.
        tensor<float, 3> logits({prompts_, 1, c.vocab_out()});
        caching_hooks<> clean_hooks;
        if (splices_ != nullptr)
            forward(model, clean.slice(1, 0, answer_ + 1), logits.view(), ws_, compose(*splices_, clean_hooks));
        else
            forward(model, clean.slice(1, 0, answer_ + 1), logits.view(), ws_, clean_hooks);
        clean_metric_ = metric_.mean(logits.view(), length_);
        clean_cache_ = clean_hooks.take();

        corrupt_kv_.reset(c, prompts_, answer_ + 1);
        if (splices_ != nullptr) {
            // A cell resumes a block from its hook_resid_pre and runs that block's splices itself, so the stream is
            // kept from before them; the final norm reads the last hook_resid_post after its splice.
            caching_hooks<kind_set::of({site_kind::resid_pre})> before_splices;
            caching_hooks<kind_set::of({site_kind::resid_post})> after_splices;
            forward(model, corrupt.slice(1, 0, answer_ + 1), corrupt_kv_, logits.view(), ws_,
                    compose(before_splices, *splices_, after_splices));
            corrupt_cache_ = before_splices.take();
            const site last{site_kind::resid_post, c.n_layers - 1};
            activation_cache after = after_splices.take();
            (void)corrupt_cache_.put(last, std::move(after.at(last)));
        } else {
            caching_hooks<kind_set::of({site_kind::resid_pre, site_kind::resid_post})> corrupt_hooks;
            forward(model, corrupt.slice(1, 0, answer_ + 1), corrupt_kv_, logits.view(), ws_, corrupt_hooks);
            corrupt_cache_ = corrupt_hooks.take();
        }
        corrupt_metric_ = metric_.mean(logits.view(), length_);
    }

    /// The metric of the clean run (mean over prompts).
    [[nodiscard]] double clean_metric() const noexcept { return clean_metric_; }
    /// The metric of the corrupt run (mean over prompts).
    [[nodiscard]] double corrupt_metric() const noexcept { return corrupt_metric_; }
    /// Every activation of the clean run (the patch source).
    [[nodiscard]] const activation_cache& clean_cache() const noexcept { return clean_cache_; }
    /// The answer metric.
    [[nodiscard]] const answer_metric& metric() const noexcept { return metric_; }
    /// Prompt pairs.
    [[nodiscard]] index_t prompts() const noexcept { return prompts_; }
    /// Tokens per prompt.
    [[nodiscard]] index_t length() const noexcept { return length_; }
    /// The first position at which some clean prompt differs from its corrupt one (length() if none does).
    [[nodiscard]] index_t first_difference() const noexcept { return first_difference_; }

    /// The cells of `grid` in table order (layer, then head, then position); throws std::invalid_argument when the
    /// model has no such site or the grid splits heads of a site without a head axis.
    [[nodiscard]] std::vector<patching_cell> cells(const patching_grid& grid) const {
        const model_config& c = model_->config();
        (void)detail::with_site_kind(grid.kind, [](auto) { return 0; });  // rejects unsweepable kinds
        if (!has_site_kind(c, grid.kind))
            throw std::invalid_argument("activation patching: this model has no " +
                                        std::string(site_suffix(grid.kind)) + " site");
        if (grid.per_head && detail::axes_of(grid.kind).head < 0)
            throw std::invalid_argument("activation patching: " + std::string(site_suffix(grid.kind)) +
                                        " has no head axis to split");
        const auto [layers, heads, positions] = table_shape(grid);
        std::vector<patching_cell> out;
        for (index_t l = 0; l < layers; ++l)
            for (index_t h = 0; h < heads; ++h)
                for (index_t p = 0; p < positions; ++p)
                    out.push_back({is_block_site(grid.kind) ? l : -1, grid.per_head ? h : -1,
                                   grid.per_position ? p : -1});
        return out;
    }

    /// The fast sweep: every cell resumes at its layer and first position, cells run stacked on the batch axis.
    [[nodiscard]] patching_table sweep(const patching_grid& grid, const patching_options& options = {}) {
        // The fast sweep computes only the answer tokens' logits, without firing unembed.hook_out: a splice there
        // needs the full forward of every cell.
        // Nor can it stack cells and resume them at a later position when a splice chooses across the batch's rows.
        if (splices_ != nullptr && (splices_at_logits() || !splices_->splices_rows_independent()))
            return sweep_naive(grid);
        const std::vector<patching_cell> all = cells(grid);
        std::vector<double> raw(all.size(), corrupt_metric_);
        // Group cells by where they resume: (layer, first position), in sweep order.
        struct group_key {
            index_t layer, start;
        };
        std::vector<std::pair<group_key, std::vector<std::size_t>>> groups;
        for (std::size_t i = 0; i < all.size(); ++i) {
            const index_t start = all[i].position >= 0 ? all[i].position : first_difference_;
            // Before the first difference the clean activations equal the corrupt ones bit for bit, and after the
            // answer nothing reaches it: such cells change nothing, and their value is the corrupt metric, exactly.
            if (start < first_difference_ || start > answer_) continue;
            const index_t layer = resume_layer(grid.kind, all[i].layer);
            auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) {
                return g.first.layer == layer && g.first.start == start;
            });
            if (it == groups.end()) it = groups.insert(groups.end(), {{layer, start}, {}});
            it->second.push_back(i);
        }
        index_t done = static_cast<index_t>(all.size());
        for (const auto& g : groups) done -= static_cast<index_t>(g.second.size());
        index_t rows_pushed = 0;
        detail::with_site_kind(grid.kind, [&](auto kind_constant) {
            constexpr site_kind Kind = decltype(kind_constant)::value;
            for (const auto& [key, members] : groups) {
                const index_t window = answer_ + 1 - key.start;
                const index_t per_batch = std::max<index_t>(1, options.max_batch_rows / (window * prompts_));
                for (std::size_t first = 0; first < members.size(); first += static_cast<std::size_t>(per_batch)) {
                    const std::size_t last = std::min(members.size(), first + static_cast<std::size_t>(per_batch));
                    std::vector<selection> selections;
                    for (std::size_t m = first; m < last; ++m) selections.push_back(all[members[m]].where());
                    const std::vector<double> means =
                        run_stacked<Kind>(all[members[first]].layer, key.layer, key.start, selections);
                    for (std::size_t m = first; m < last; ++m) raw[members[m]] = means[m - first];
                    rows_pushed += static_cast<index_t>(selections.size()) * prompts_ * window *
                                   (model_->config().n_layers - std::max<index_t>(key.layer, 0));
                    done += static_cast<index_t>(last - first);
                    if (options.progress) options.progress(done, static_cast<index_t>(all.size()));
                }
            }
            return 0;
        });
        patching_table table = make_table(grid, raw);
        table.forward_rows = rows_pushed;
        return table;
    }

    /// The reference sweep: one full forward of the corrupt prompts per cell, patched by patch_hooks.
    [[nodiscard]] patching_table sweep_naive(const patching_grid& grid) {
        const std::vector<patching_cell> all = cells(grid);
        std::vector<double> raw(all.size());
        tensor<float, 3> logits({prompts_, 1, model_->config().vocab_out()});
        detail::with_site_kind(grid.kind, [&](auto kind_constant) {
            constexpr site_kind Kind = decltype(kind_constant)::value;
            for (std::size_t i = 0; i < all.size(); ++i) {
                patch_hooks<kind_set::of({Kind})> hooks(clean_cache_);
                hooks.patch(site{Kind, all[i].layer}, all[i].where());
                if (splices_ != nullptr)
                    forward(*model_, answer_window(), logits.view(), ws_, compose(*splices_, hooks));
                else
                    forward(*model_, answer_window(), logits.view(), ws_, hooks);
                raw[i] = metric_.mean(logits.view(), length_);
            }
            return 0;
        });
        patching_table table = make_table(grid, raw);
        table.forward_rows = static_cast<index_t>(all.size()) * prompts_ * length_ * model_->config().n_layers;
        return table;
    }

    /// The mean metric of the corrupt prompts with an arbitrary set of patches from the clean run (one full forward).
    [[nodiscard]] double patched_metric(const std::vector<patch_target>& targets) {
        patch_hooks<> hooks(clean_cache_);
        for (const patch_target& t : targets) hooks.patch(t.target, t.selected);
        tensor<float, 3> logits({prompts_, 1, model_->config().vocab_out()});
        if (splices_ != nullptr)
            forward(*model_, answer_window(), logits.view(), ws_, compose(*splices_, hooks));
        else
            forward(*model_, answer_window(), logits.view(), ws_, hooks);
        return metric_.mean(logits.view(), length_);
    }

    /// (layers, heads, positions) of a grid's table; 1 along an axis it does not split.
    [[nodiscard]] std::array<index_t, 3> table_shape(const patching_grid& grid) const {
        const model_config& c = model_->config();
        return {is_block_site(grid.kind) ? c.n_layers : 1, grid.per_head ? detail::head_count(c, grid.kind) : 1,
                grid.per_position ? length_ : 1};
    }

    /// Fills a table from per-cell patched metrics in cells() order.
    [[nodiscard]] patching_table make_table(const patching_grid& grid, const std::vector<double>& raw) const {
        const auto [layers, heads, positions] = table_shape(grid);
        patching_table table;
        table.grid = grid;
        table.values = tensor<float, 3>({layers, heads, positions});
        table.raw = tensor<float, 3>({layers, heads, positions});
        table.clean = clean_metric_;
        table.corrupt = corrupt_metric_;
        const double span = clean_metric_ - corrupt_metric_;
        for (std::size_t i = 0; i < raw.size(); ++i) {
            const auto flat = static_cast<index_t>(i);
            const index_t l = flat / (heads * positions), h = flat / positions % heads, p = flat % positions;
            table.raw(l, h, p) = static_cast<float>(raw[i]);
            table.values(l, h, p) = span == 0.0 ? std::numeric_limits<float>::quiet_NaN()
                                                : static_cast<float>((raw[i] - corrupt_metric_) / span);
        }
        return table;
    }

private:
    static tensor<std::int32_t, 2> copy_tokens(tensor_view<const std::int32_t, 2> tokens) {
        tensor<std::int32_t, 2> out({tokens.extent(0), tokens.extent(1)});
        for (index_t b = 0; b < tokens.extent(0); ++b)
            for (index_t p = 0; p < tokens.extent(1); ++p) out(b, p) = tokens(b, p);
        return out;
    }

    /// True when a splice is attached at unembed.hook_out (its extension sites are named below it).
    [[nodiscard]] bool splices_at_logits() const {
        const std::vector<site> sites = splices_->sites();
        return std::any_of(sites.begin(), sites.end(),
                           [](const site& s) { return s.extension >= 0 && s.kind == site_kind::unembed_out; });
    }

    /// The corrupt tokens up to and including the answer position.
    tensor_view<const std::int32_t, 2> answer_window() const {
        return tensor_view<const std::int32_t, 2>(corrupt_tokens_.view()).slice(1, 0, answer_ + 1);
    }

    /// The block a cell's run starts at: its own layer, -1 (from the embedding) for embed sites, n_layers (only
    /// the final norm) for ln_final sites.
    index_t resume_layer(site_kind kind, index_t layer) const {
        switch (site_traits_of(kind).scope) {
            case site_scope::before_blocks: return -1;
            case site_scope::after_blocks: return model_->config().n_layers;
            case site_scope::block: break;
        }
        return layer;
    }

    /// Runs the stacked cells (one selection each) from block `from` (-1: embedding) at positions [start, answer]
    /// and returns each cell's mean metric.
    template <site_kind Kind>
    std::vector<double> run_stacked(index_t site_layer, index_t from, index_t start,
                                    const std::vector<selection>& selections) {
        const model_config& c = model_->config();
        const index_t batch = static_cast<index_t>(selections.size()) * prompts_, window = answer_ + 1 - start;
        if (stacked_kv_.batch() < batch) stacked_kv_.reset(c, batch, answer_ + 1);  // rows past `batch` go unused
        // Keys and values of the positions before `start`, from the corrupt run, for every block that runs.
        for (index_t layer = std::max<index_t>(from, 0); layer < c.n_layers; ++layer) {
            const auto keys = corrupt_kv_.keys(layer), values = corrupt_kv_.values(layer);  // (prompts, kv, T, d_head)
            const auto to_keys = stacked_kv_.keys(layer), to_values = stacked_kv_.values(layer);
            for (index_t b = 0; b < batch; ++b)
                for (index_t h = 0; h < c.n_kv_heads; ++h)
                    for (index_t p = 0; p < start; ++p)
                        for (index_t i = 0; i < c.d_head(); ++i) {
                            to_keys(b, h, p, i) = keys(b % prompts_, h, p, i);
                            to_values(b, h, p, i) = values(b % prompts_, h, p, i);
                        }
        }
        const cached_activation* source = &clean_cache_.at(site{Kind, site_layer});
        if (splices_ != nullptr) {
            // The splices run first at every site, so a patched host gets the clean run's spliced output. The run-time
            // hooks fire at every site anyway, so the patch checks its kind at run time: one instantiation of the
            // passes for every kind.
            detail::stacked_cell_patch<detail::sweepable_kinds> patch{source, Kind, site_layer, &selections, prompts_};
            auto spliced = compose(*splices_, patch);
            return run_stacked_with(spliced, from, start, batch, window);
        }
        detail::stacked_cell_patch<kind_set::of({Kind})> patch{source, Kind, site_layer, &selections, prompts_};
        return run_stacked_with(patch, from, start, batch, window);
    }

    /// run_stacked's passes with `policy` (the stacked patch, composed after the splices when there are any).
    template <class Policy>
    std::vector<double> run_stacked_with(Policy& policy, index_t from, index_t start, index_t batch, index_t window) {
        const model_config& c = model_->config();
        const index_t stacked = batch / prompts_, d = c.d_model;
        const forward_span span{batch, window, start};
        const auto x = span_residual(*model_, span, ws_);  // (batch * window, d_model)
        if (from < 0) {
            tensor<std::int32_t, 2> tokens({batch, window});
            for (index_t b = 0; b < batch; ++b)
                for (index_t p = 0; p < window; ++p) tokens(b, p) = corrupt_tokens_(b % prompts_, start + p);
            embed_span(*model_, span, tokens.view(), ws_, policy);
        } else {
            const bool after_last = from >= c.n_layers;
            const auto resid = corrupt_cache_.at(after_last ? site{site_kind::resid_post, c.n_layers - 1}
                                                             : site{site_kind::resid_pre, from})
                                    .view<3>();  // (prompts, T, d_model)
            for (index_t b = 0; b < batch; ++b)
                for (index_t p = 0; p < window; ++p)
                    for (index_t i = 0; i < d; ++i) x(b * window + p, i) = resid(b % prompts_, start + p, i);
        }
        if (from < c.n_layers)
            run_blocks(*model_, span, std::max<index_t>(from, 0), c.n_layers - 1, stacked_kv_, ws_, policy);

        // In the last block only the answer row's output matters; the rows before it only lend it keys and values.
        answer_rows_.reserve(batch * d);
        const auto final_rows = answer_rows_.matrix(batch, d);  // (batch, d_model) the answer rows
        for (index_t b = 0; b < batch; ++b)
            for (index_t i = 0; i < d; ++i) final_rows(b, i) = x(b * window + window - 1, i);
        const forward_span answer_span{batch, 1, answer_};
        if (from < c.n_layers) {
            if (window > 1) {
                // Close up the rows before the answer (moving rows towards the front, in order, overwrites nothing
                // still to be read) and give the last block their keys and values.
                for (index_t b = 0; b < batch; ++b)
                    for (index_t p = 0; p + 1 < window; ++p)
                        for (index_t i = 0; i < d; ++i) x(b * (window - 1) + p, i) = x(b * window + p, i);
                write_keys_values(*model_, forward_span{batch, window - 1, start}, c.n_layers - 1, stacked_kv_, ws_,
                                  policy);
            }
            const auto answer_x = span_residual(*model_, answer_span, ws_);  // (batch, d_model)
            for (index_t b = 0; b < batch; ++b)
                for (index_t i = 0; i < d; ++i) answer_x(b, i) = final_rows(b, i);
            run_blocks(*model_, answer_span, c.n_layers - 1, c.n_layers, stacked_kv_, ws_, policy);
            for (index_t b = 0; b < batch; ++b)
                for (index_t i = 0; i < d; ++i) final_rows(b, i) = answer_x(b, i);
        }

        // The final norm and unembedding of the answer row only.
        const auto unembed_in = final_norm_span(*model_, answer_span, final_rows, ws_, policy);  // (batch, d_model)
        logits_.reserve(batch * c.vocab_out());
        const auto logit_rows = logits_.matrix(batch, c.vocab_out());  // (batch, d_vocab_out)
        // As stored: a quantised unembedding is multiplied by its blocks (rows of it too), never decoded.
        const model_weights& stored = model_->stored_weights();
        const auto unembed = stored.unembed;                           // (d_vocab_out, d_model)
        const auto unembed_bias = stored.unembed_bias;                 // (d_vocab_out) or empty
        if (metric_.kind == answer_kind::log_prob) {
            detail::project(stored, unembed_in, unembed, unembed_bias, logit_rows);
        } else {
            // Only the answer tokens' logits: the same numbers the full product gives (each output element is
            // reduced in one fixed order), without streaming the whole unembedding once per batch.
            for (index_t b = 0; b < batch; ++b) {
                const auto prompt = static_cast<std::size_t>(b % prompts_);
                for (const std::int32_t token :
                     {metric_.correct[prompt], metric_.kind == answer_kind::logit_diff ? metric_.wrong[prompt]
                                                                                       : metric_.correct[prompt]})
                    detail::project(stored, unembed_in.slice(0, b, b + 1), unembed.slice(0, token, token + 1),
                                    unembed_bias.size() > 0 ? unembed_bias.slice(0, token, token + 1) : unembed_bias,
                                    logit_rows.slice(0, b, b + 1).slice(1, token, token + 1));
            }
        }

        std::vector<double> means(static_cast<std::size_t>(stacked), 0.0);
        for (index_t b = 0; b < batch; ++b)
            means[static_cast<std::size_t>(b / prompts_)] += metric_.value(b % prompts_, &logit_rows(b, 0), c.vocab_out());
        for (double& m : means) m /= static_cast<double>(prompts_);
        return means;
    }

    const transformer* model_;
    dynamic_hooks* splices_ = nullptr;  // SAEs and transcoders every run goes through, or null
    answer_metric metric_;
    index_t prompts_ = 0, length_ = 0, answer_ = 0, first_difference_ = 0;
    tensor<std::int32_t, 2> clean_tokens_, corrupt_tokens_;
    activation_cache clean_cache_, corrupt_cache_;
    kv_cache corrupt_kv_, stacked_kv_;
    workspace ws_;
    detail::scratch_buffer logits_, answer_rows_;
    double clean_metric_ = 0.0, corrupt_metric_ = 0.0;
};

MECHLENS_END_NAMESPACE
