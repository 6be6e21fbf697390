#pragma once
/// @file
/// Dynamic hooks: a run-time registry of callbacks by hook name, with handles and scope guards, and of splices
/// (hooks/splice.hpp) whose activations become extension sites.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/hooks/splice.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A rank-erased mutable view of one activation, as handed to run-time callbacks; writes reach the forward pass.
struct activation_view {
    float* data = nullptr;                    ///< Element (0, ..., 0).
    std::size_t rank = 0;                     ///< Number of axes (3 or 4 for hook sites).
    std::array<index_t, max_rank> shape{};    ///< Extents; axes past `rank` are 0.
    std::array<index_t, max_rank> strides{};  ///< Strides in elements; axes past `rank` are 0.

    /// An empty view.
    activation_view() = default;
    /// Erases the rank of a view.
    template <std::size_t R>
    activation_view(tensor_view<float, R> view) noexcept  // NOLINT(google-explicit-constructor)
        : data(view.data()), rank(R) {
        for (std::size_t a = 0; a < R; ++a) {
            shape[a] = view.extent(a);
            strides[a] = view.stride(a);
        }
    }
    /// The view with its rank back; throws shape_error when the activation's rank is not R.
    template <std::size_t R>
    [[nodiscard]] tensor_view<float, R> as() const {
        if (rank != R)
            throw shape_error("activation_view: the activation has rank " + std::to_string(rank) + ", not " +
                              std::to_string(R));
        extents<R> e{}, s{};
        for (std::size_t a = 0; a < R; ++a) {
            e[a] = shape[a];
            s[a] = strides[a];
        }
        return tensor_view<float, R>(data, e, s);
    }
    /// Number of elements.
    [[nodiscard]] index_t size() const noexcept {
        index_t n = rank ? 1 : 0;
        for (std::size_t a = 0; a < rank; ++a) n *= shape[a];
        return n;
    }
};

/// A run-time hook: called with the site, its activation (mutable) and the call's context.
using hook_callback = std::function<void(const site&, activation_view, const hook_context&)>;

/// Identifies one registration (one add(), possibly at many sites); 0 is never issued.
struct hook_handle {
    std::uint64_t id = 0;                                                  ///< Registration number.
    friend constexpr bool operator==(hook_handle, hook_handle) = default;  ///< Same registration.
};

/// Wraps a compile-time policy (held by reference: it must outlive the callback) as a run-time callback.
template <class Policy>
hook_callback as_callback(Policy& policy) {
    static_assert(hook_policy<Policy>, "mechlens::as_callback: the argument must satisfy mechlens::hook_policy");
    return [&policy](const site& s, activation_view view, const hook_context& ctx) {
        if (!Policy::wants(s.kind)) return;
        if (view.rank == 3)
            policy.on_activation(s, view.as<3>(), ctx);
        else
            policy.on_activation(s, view.as<4>(), ctx);
    };
}

/// Wraps the gradient side of a compile-time policy (held by reference) as a run-time gradient callback: patch and
/// ablate policies registered with add_gradient cut the gradient of what they replaced, as in a static pass.
template <class Policy>
hook_callback as_gradient_callback(Policy& policy) {
    static_assert(requires { Policy::wants_gradient(site_kind::embed); },
                  "mechlens::as_gradient_callback: the policy does not observe gradients (no wants_gradient)");
    return [&policy](const site& s, activation_view view, const hook_context& ctx) {
        if (!Policy::wants_gradient(s.kind)) return;
        if (view.rank == 3)
            policy.on_gradient(s, view.as<3>(), ctx);
        else
            policy.on_gradient(s, view.as<4>(), ctx);
    };
}

namespace detail {

/// The shared state of a dynamic_hooks: callbacks per site slot (activation or gradient callbacks), splices attached
/// at host sites with the callbacks of their extension sites, and one "anything here?" byte per slot.
class dynamic_registry {
public:
    /// An empty registry for a model with these hyper-parameters.
    explicit dynamic_registry(const model_config& config)
        : config_(config),
          lists_(static_cast<std::size_t>(config.n_layers + 1) * site_kind_count),
          splice_at_(lists_.size(), nullptr),
          active_(lists_.size(), 0) {}

    /// The model's hyper-parameters (used to validate names).
    [[nodiscard]] const model_config& config() const noexcept { return config_; }

    /// Registers `fn` at every site in `sites` (model sites or extension sites of attached splices), for activations
    /// or, when `gradient`, for gradients; returns the registration number.
    std::uint64_t add(const std::vector<site>& sites, hook_callback fn, bool gradient) {
        for (const site& s : sites)
            if (s.extension >= 0 ? find_extension(s) == nullptr : slot(s) >= lists_.size())
                throw std::invalid_argument("dynamic_hooks: " + to_string(s) + " is not in this model" +
                                            (s.extension >= 0 ? " (no splice there declares it)" : ""));
        auto shared = std::make_shared<hook_callback>(std::move(fn));
        const std::uint64_t id = next_id_++;
        for (const site& s : sites) {
            list_of(s).push_back({id, shared, gradient, false});
            if (s.extension < 0) active_[slot(s)] = 1;
        }
        ++live_;
        return id;
    }
    /// Attaches `module` at `host`: its sites become extension sites below the host; returns the registration.
    std::uint64_t attach(const site& host, std::shared_ptr<const splice> module) {
        const std::size_t i = slot(host);
        if (host.extension >= 0 || i >= lists_.size())
            throw std::invalid_argument("dynamic_hooks::splice: " + to_string(host) + " is not a site of this model");
        if (!can_host_splice(host.kind))
            throw std::invalid_argument("dynamic_hooks::splice: " + to_string(host) +
                                        " cannot host a splice (only rank-3 sites the forward pass always computes, "
                                        "outside the norms; see can_host_splice)");
        if (splice_at_[i] != nullptr)
            throw std::invalid_argument("dynamic_hooks::splice: a splice is already attached at " + to_string(host));
        const index_t expected = site_width(config_, host.kind);
        if (module->width() != expected)
            throw shape_error("dynamic_hooks::splice: the splice reads width " + std::to_string(module->width()) +
                              " but " + to_string(host) + " has width " + std::to_string(expected));
        auto a = std::make_unique<attachment>();
        if (const std::optional<splice_source> source = module->source()) a->source = checked_source(host, *source);
        a->id = next_id_++;
        a->host = host;
        for (const splice_site& inner : module->sites()) {
            if (!valid_extension_suffix(inner.suffix) || inner.width <= 0)
                throw std::invalid_argument("dynamic_hooks::splice: the splice declares an invalid site '" +
                                            inner.suffix.substr(0, 80) + "' of width " + std::to_string(inner.width));
            const site ext = extension_site(host, inner.suffix);
            for (const extension_slot& other : a->sites)
                if (other.where == ext)
                    throw std::invalid_argument("dynamic_hooks::splice: the splice declares " + inner.suffix +
                                                " twice");
            a->sites.push_back({ext, inner.width, {}});
        }
        a->module = std::move(module);
        splice_at_[i] = a.get();
        active_[i] = 1;
        if (a->source) active_[slot(*a->source)] = 1;
        attachments_.push_back(std::move(a));
        ++live_;
        return attachments_.back()->id;
    }
    /// Unregisters one registration (callbacks or a splice) everywhere; false when it was not registered. Safe
    /// inside a callback or a splice.
    bool remove(std::uint64_t id) noexcept {
        bool found = false;
        auto kill = [&](std::vector<entry>& list) {
            for (entry& e : list)
                if (e.id == id && !e.dead) e.dead = found = true;
        };
        for (auto& list : lists_) kill(list);
        for (auto& a : attachments_) {
            for (extension_slot& ext : a->sites) kill(ext.list);
            if (a->id == id && !a->dead) a->dead = found = true;
        }
        if (found) --live_;
        if (firing_ == 0) sweep();
        return found;
    }
    /// Unregisters everything, splices included. Safe inside a callback.
    void clear() noexcept {
        for (auto& list : lists_)
            for (entry& e : list) e.dead = true;
        for (auto& a : attachments_) a->dead = true;
        live_ = 0;
        if (firing_ == 0) sweep();
    }
    /// Number of live registrations (callbacks and splices).
    [[nodiscard]] std::size_t size() const noexcept { return live_; }

    /// The slot of a model site, or an index past the table for sites outside the model.
    [[nodiscard]] std::size_t slot(const site& s) const noexcept {
        const index_t row = is_block_site(s.kind) ? (s.layer >= 0 ? s.layer + 1 : config_.n_layers + 1) : 0;
        return static_cast<std::size_t>(row) * site_kind_count + static_cast<std::size_t>(s.kind);
    }
    /// True when something is registered at slot `i` (false for slots outside the table).
    [[nodiscard]] bool active(std::size_t i) const noexcept { return i < active_.size() && active_[i] != 0; }

    /// The model's sites (as all_sites) followed, each after its host, by the extension sites of live splices.
    [[nodiscard]] std::vector<site> sites() const {
        std::vector<site> out = all_sites(config_);
        for (const auto& a : attachments_)
            if (!a->dead)
                for (const extension_slot& ext : a->sites) out.push_back(ext.where);
        std::stable_sort(out.begin(), out.end(), forward_order_less);
        return out;
    }
    /// True when every live splice computes each row on its own (splice::rows_independent).
    [[nodiscard]] bool splices_rows_independent() const noexcept {
        return std::all_of(attachments_.begin(), attachments_.end(),
                           [](const auto& a) { return a->dead || a->module->rows_independent(); });
    }
    /// The width of an extension site's last axis, or 0 when no live splice declares it.
    [[nodiscard]] index_t extension_width(const site& s) const noexcept {
        const extension_slot* ext = find_extension(s);
        return ext != nullptr ? ext->width : 0;
    }

    /// The forward pass reached slot `i` (site `s`, activation `view`): its activation callbacks in registration
    /// order (ones added meanwhile wait for the next call), then the copy of its rows for splices that read it as
    /// their source, then the splice attached there, if any.
    void fire(std::size_t i, const site& s, activation_view view, const hook_context& ctx) {
        const depth_guard guard(*this);
        call(lists_[i], s, view, ctx, false);
        for (const auto& a : attachments_)
            if (!a->dead && a->source && slot(*a->source) == i) capture_source(*a, view);
        if (attachment* a = splice_at_[i]; a != nullptr && !a->dead) run_splice(*a, view, ctx);
    }
    /// The backward pass reached slot `i` with the gradient `view` of what the rest of the pass used: the splice's
    /// backward first (the gradient of its output becomes its input's), then the source gradients of splices that
    /// read this site, then the gradient callbacks.
    void fire_gradient(std::size_t i, const site& s, activation_view view, const hook_context& ctx) {
        const depth_guard guard(*this);
        if (attachment* a = splice_at_[i]; a != nullptr && !a->dead) run_splice_backward(*a, view, ctx);
        for (const auto& a : attachments_)
            if (!a->dead && a->source && slot(*a->source) == i) add_source_gradient(*a, view);
        call(lists_[i], s, view, ctx, true);
    }

private:
    struct entry {
        std::uint64_t id;
        std::shared_ptr<hook_callback> fn;  // shared by every site of one registration: one callback state
        bool gradient;                      // a gradient callback (fired by the backward pass only)
        bool dead;
    };
    struct extension_slot {
        site where;               // the extension site
        index_t width;            // its last axis
        std::vector<entry> list;  // its callbacks
    };
    struct attachment {
        std::uint64_t id = 0;
        site host;
        std::shared_ptr<const splice> module;
        std::vector<extension_slot> sites;  // in the splice's order
        splice_tape tape;
        std::vector<float> input, output;  // (rows, width): the host rows in, the replacement out (and gradients)
        index_t batch = 0, positions = 0;  // of the last forward pass
        std::optional<site> source;        // the other site of the host's block it reads, if any
        index_t source_width = 0;          // its last axis
        index_t source_batch = 0, source_positions = 0;  // of its last firing
        bool source_fresh = false;         // it fired since the host last ran: tape.source holds this pass's rows
        bool d_source_ready = false;       // backward filled tape.d_source and the source has not taken it yet
        bool dead = false;
    };
    /// Fires the extension sites of one attachment for one pass direction.
    class attachment_hooks final : public splice_hooks {
    public:
        attachment_hooks(dynamic_registry& registry, attachment& a, const hook_context& ctx, bool gradient) noexcept
            : registry_(registry), a_(a), ctx_(ctx), gradient_(gradient) {}
        [[nodiscard]] bool active(std::size_t index) const noexcept override {
            if (index >= a_.sites.size()) return false;
            for (const entry& e : a_.sites[index].list)
                if (!e.dead && e.gradient == gradient_) return true;
            return false;
        }
        void fire(std::size_t index, tensor_view<float, 2> rows) override {
            if (index >= a_.sites.size())
                throw std::out_of_range("splice_hooks::fire: activation " + std::to_string(index) + " of " +
                                        std::to_string(a_.sites.size()));
            extension_slot& ext = a_.sites[index];
            if (rows.extent(0) != a_.batch * a_.positions || rows.extent(1) != ext.width ||
                (rows.extent(1) > 1 && rows.stride(1) != 1))
                throw shape_error("splice_hooks::fire: " + to_string(ext.where) + " must be dense (" +
                                  std::to_string(a_.batch * a_.positions) + ", " + std::to_string(ext.width) +
                                  "), got " + format_extents(rows.shape()));
            if (ext.list.empty()) return;
            const tensor_view<float, 3> view(rows.data(), {a_.batch, a_.positions, ext.width},  // (batch, pos, width)
                                             {a_.positions * rows.stride(0), rows.stride(0), 1});
            registry_.call(ext.list, ext.where, activation_view(view), ctx_, gradient_);
        }

    private:
        dynamic_registry& registry_;
        attachment& a_;
        const hook_context& ctx_;
        bool gradient_;
    };
    struct depth_guard {
        dynamic_registry& r;
        explicit depth_guard(dynamic_registry& registry) noexcept : r(registry) { ++r.firing_; }
        ~depth_guard() {
            if (--r.firing_ == 0) r.sweep();
        }
        depth_guard(const depth_guard&) = delete;
        depth_guard& operator=(const depth_guard&) = delete;
    };

    void call(std::vector<entry>& list, const site& s, activation_view view, const hook_context& ctx, bool gradient) {
        const std::size_t count = list.size();
        for (std::size_t k = 0; k < count; ++k) {
            if (list[k].dead || list[k].gradient != gradient) continue;
            hook_callback* fn = list[k].fn.get();  // stays alive: dead entries are only swept after firing
            (*fn)(s, view, ctx);
        }
    }
    /// The host rows as a (batch, pos, width) view; throws shape_error unless the host fired rank 3 of that width.
    static tensor_view<float, 3> host_rows(const attachment& a, activation_view view) {
        if (view.rank != 3 || view.shape[2] != a.module->width())
            throw shape_error("dynamic_hooks: the splice at " + to_string(a.host) + " needs (batch, pos, " +
                              std::to_string(a.module->width()) + ") activations");
        return view.as<3>();
    }
    /// The source of a splice at `host` as a site, after checking that it is a rank-3 site of the host's block that
    /// this model fires before the host, of the declared width.
    [[nodiscard]] site checked_source(const site& host, const splice_source& source) const {
        const site where{source.kind, host.layer};
        auto fail = [&](const std::string& why) {
            throw std::invalid_argument("dynamic_hooks::splice: the splice at " + to_string(host) + " reads " +
                                        std::string(site_suffix(source.kind)) + ", which " + why);
        };
        if (!is_block_site(host.kind) || !is_block_site(source.kind)) fail("is not a site of the host's block");
        if (!has_site_kind(config_, source.kind))
            fail("is not in this model (" + detail::missing_kind_reason(config_, source.kind) + ")");
        if (site_rank(source.kind) != 3) fail("is not a (batch, pos, width) site");
        if (!forward_order_less(where, host)) fail("does not fire before the host");
        if (site_width(config_, source.kind) != source.width)
            fail("has width " + std::to_string(site_width(config_, source.kind)) + ", not the splice's " +
                 std::to_string(source.width));
        return where;
    }
    /// Keeps the rows of a splice's source (as its callbacks left them) in its tape for the host's forward.
    static void capture_source(attachment& a, activation_view view) {
        if (view.rank != 3) throw shape_error("dynamic_hooks: the source of the splice at " + to_string(a.host) +
                                              " is not a (batch, pos, width) activation");
        const tensor_view<float, 3> source = view.as<3>();  // (batch, pos, source width)
        a.source_batch = source.extent(0);
        a.source_positions = source.extent(1);
        a.source_width = source.extent(2);
        a.tape.source.resize(static_cast<std::size_t>(a.source_batch * a.source_positions * a.source_width));
        copy_rows(source, tensor_view<float, 2>(a.tape.source.data(), {a.source_batch * a.source_positions,
                                                                        a.source_width}),
                  true);
        a.source_fresh = true;
        a.d_source_ready = false;
    }
    /// Adds what a splice's backward sent to its source into the source's gradient.
    static void add_source_gradient(attachment& a, activation_view view) {
        if (!a.d_source_ready) return;  // the host's backward did not run in this pass
        a.d_source_ready = false;
        const tensor_view<float, 3> gradient = view.as<3>();  // (batch, pos, source width)
        const index_t rows = a.source_batch * a.source_positions;
        if (gradient.extent(0) != a.source_batch || gradient.extent(1) != a.source_positions ||
            gradient.extent(2) != a.source_width ||
            a.tape.d_source.size() != static_cast<std::size_t>(rows * a.source_width))
            throw std::logic_error("dynamic_hooks: the source gradient of the splice at " + to_string(a.host) +
                                   " does not match its forward pass");
        const tensor_view<const float, 2> d_source(a.tape.d_source.data(), {rows, a.source_width});
        for (index_t b = 0; b < a.source_batch; ++b)
            for (index_t p = 0; p < a.source_positions; ++p)
                for (index_t i = 0; i < a.source_width; ++i)
                    gradient(b, p, i) += d_source(b * a.source_positions + p, i);
    }
    void run_splice(attachment& a, activation_view view, const hook_context& ctx) {
        const tensor_view<float, 3> host = host_rows(a, view);  // (batch, pos, width)
        a.batch = host.extent(0);
        a.positions = host.extent(1);
        if (a.source) {
            if (!a.source_fresh || a.source_batch != a.batch || a.source_positions != a.positions)
                throw std::logic_error("dynamic_hooks: the splice at " + to_string(a.host) + " reads " +
                                       to_string(*a.source) + ", which did not fire before it in this pass");
            a.source_fresh = false;
        }
        const index_t rows = a.batch * a.positions, width = host.extent(2);
        a.input.resize(static_cast<std::size_t>(rows * width));
        a.output.resize(a.input.size());
        const tensor_view<float, 2> input(a.input.data(), {rows, width}), output(a.output.data(), {rows, width});
        copy_rows(host, input, true);
        attachment_hooks hooks(*this, a, ctx, false);
        a.module->forward(input, output, hooks, a.tape);
        copy_rows(host, output, false);
    }
    void run_splice_backward(attachment& a, activation_view view, const hook_context& ctx) {
        const tensor_view<float, 3> gradient = host_rows(a, view);  // (batch, pos, width)
        if (gradient.extent(0) != a.batch || gradient.extent(1) != a.positions)
            throw std::logic_error("dynamic_hooks: the backward pass at " + to_string(a.host) +
                                   " does not follow a forward pass of the same shape");
        const index_t rows = a.batch * a.positions, width = gradient.extent(2);
        const tensor_view<float, 2> d_output(a.output.data(), {rows, width}), d_input(a.input.data(), {rows, width});
        copy_rows(gradient, d_output, true);
        attachment_hooks hooks(*this, a, ctx, true);
        a.module->backward(a.tape, d_output, d_input, hooks);
        copy_rows(gradient, d_input, false);
        a.d_source_ready = a.source.has_value();
    }
    /// Copies between a (batch, pos, width) view and dense (batch * pos, width) rows, in the direction asked.
    static void copy_rows(const tensor_view<float, 3>& view, const tensor_view<float, 2>& rows, bool to_rows) {
        for (index_t b = 0; b < view.extent(0); ++b)
            for (index_t p = 0; p < view.extent(1); ++p)
                for (index_t i = 0; i < view.extent(2); ++i) {
                    float& dense = rows(b * view.extent(1) + p, i);
                    if (to_rows)
                        dense = view(b, p, i);
                    else
                        view(b, p, i) = dense;
                }
    }
    [[nodiscard]] const extension_slot* find_extension(const site& s) const noexcept {
        for (const auto& a : attachments_)
            if (!a->dead && host_of(s) == a->host)
                for (const extension_slot& ext : a->sites)
                    if (ext.where == s) return &ext;
        return nullptr;
    }
    [[nodiscard]] extension_slot* find_extension(const site& s) noexcept {
        return const_cast<extension_slot*>(std::as_const(*this).find_extension(s));
    }
    std::vector<entry>& list_of(const site& s) {
        return s.extension < 0 ? lists_[slot(s)] : find_extension(s)->list;  // add() checked that it exists
    }
    void sweep() noexcept {
        for (auto& list : lists_) std::erase_if(list, [](const entry& e) { return e.dead; });
        for (auto& a : attachments_)
            for (extension_slot& ext : a->sites) std::erase_if(ext.list, [](const entry& e) { return e.dead; });
        std::erase_if(attachments_, [](const std::unique_ptr<attachment>& a) { return a->dead; });
        std::fill(splice_at_.begin(), splice_at_.end(), nullptr);
        for (auto& a : attachments_) splice_at_[slot(a->host)] = a.get();
        for (std::size_t i = 0; i < lists_.size(); ++i)
            active_[i] = lists_[i].empty() && splice_at_[i] == nullptr ? 0 : 1;
        for (auto& a : attachments_)
            if (a->source) active_[slot(*a->source)] = 1;
    }

    model_config config_;
    std::vector<std::vector<entry>> lists_;  // (n_layers + 1) * site_kind_count slots; row 0 holds global sites
    std::vector<std::unique_ptr<attachment>> attachments_;  // stable addresses while a splice runs
    std::vector<attachment*> splice_at_;  // per slot: the live splice attached there, or null
    std::vector<unsigned char> active_;   // one byte per slot: the only thing read when nothing is registered
    std::uint64_t next_id_ = 1;
    std::size_t live_ = 0;
    int firing_ = 0;
};

}  // namespace detail

/// Removes its hooks when it goes out of scope, like `with model.hooks(...)`; movable, not copyable.
class scoped_hooks {
public:
    /// A guard that guards nothing.
    scoped_hooks() = default;
    /// Guards registration `handle` of `registry`.
    scoped_hooks(std::weak_ptr<detail::dynamic_registry> registry, hook_handle handle) noexcept
        : registry_(std::move(registry)), handle_(handle) {}
    /// Takes over another guard's hooks.
    scoped_hooks(scoped_hooks&& other) noexcept
        : registry_(std::move(other.registry_)), handle_(std::exchange(other.handle_, hook_handle{})) {}
    /// Removes this guard's hooks, then takes over the other's.
    scoped_hooks& operator=(scoped_hooks&& other) noexcept {
        if (this != &other) {
            reset();
            registry_ = std::move(other.registry_);
            handle_ = std::exchange(other.handle_, hook_handle{});
        }
        return *this;
    }
    scoped_hooks(const scoped_hooks&) = delete;             ///< One owner per registration.
    scoped_hooks& operator=(const scoped_hooks&) = delete;  ///< One owner per registration.
    /// Removes the hooks (a no-op when the registry is already gone).
    ~scoped_hooks() { reset(); }

    /// Removes the hooks now.
    void reset() noexcept {
        if (auto registry = registry_.lock(); registry && handle_.id != 0) registry->remove(handle_.id);
        registry_.reset();
        handle_ = {};
    }
    /// Keeps the hooks registered and returns their handle; the guard then guards nothing.
    hook_handle release() noexcept {
        registry_.reset();
        return std::exchange(handle_, hook_handle{});
    }
    /// The guarded registration.
    [[nodiscard]] hook_handle handle() const noexcept { return handle_; }

private:
    std::weak_ptr<detail::dynamic_registry> registry_;
    hook_handle handle_;
};

/// A hook policy whose callbacks are registered at run time by TransformerLens name or glob. Its `wants` is every
/// kind in `Kinds`, so each site costs one check of a per-site byte when nothing is registered there. The default
/// leaves out attn.hook_result, which would make every forward pass compute per-head projections (1.2x at the 110M
/// shape); use `basic_dynamic_hooks<kind_set::all()>` to register at it. Copies share one registry (like a handle).
/// Not thread-safe: register and run from one thread at a time.
template <kind_set Kinds = kind_set::all_but_result()>
class basic_dynamic_hooks {
public:
    /// The kinds that fire.
    static constexpr kind_set kinds = Kinds;

    /// An empty registry for a model with these hyper-parameters (names are validated against them).
    explicit basic_dynamic_hooks(const model_config& config)
        : registry_(std::make_shared<detail::dynamic_registry>(config)) {}
    basic_dynamic_hooks(const basic_dynamic_hooks&) = default;             ///< Shares the registry.
    basic_dynamic_hooks& operator=(const basic_dynamic_hooks&) = default;  ///< Shares the registry.
    ~basic_dynamic_hooks() = default;

    /// Registers `fn` at every site matching `names` (comma-separated names or globs such as
    /// `blocks.*.hook_resid_post`; extension sites of attached splices included); throws unknown_hook_error, with
    /// suggestions, when a pattern matches nothing.
    hook_handle add(std::string_view names, hook_callback fn) { return add_sites(matching(names), std::move(fn), false); }
    /// Registers `fn` at one site; throws std::invalid_argument when the site is not in the model (or, for an
    /// extension site, no attached splice declares it) or its kind is not in Kinds.
    hook_handle add(const site& s, hook_callback fn) {
        check_site(s);
        return add_sites({s}, std::move(fn), false);
    }
    /// Registers `fn` as a gradient callback at every site matching `names`: the backward pass (forward_backward
    /// with these hooks) hands it d(metric)/d(activation), mutable (what it writes flows further back).
    hook_handle add_gradient(std::string_view names, hook_callback fn) {
        return add_sites(matching(names), std::move(fn), true);
    }
    /// Registers `fn` as a gradient callback at one site.
    hook_handle add_gradient(const site& s, hook_callback fn) {
        check_site(s);
        return add_sites({s}, std::move(fn), true);
    }
    /// Attaches `module` at the site named `host` (one site, which can_host_splice and whose width is the splice's):
    /// from now on the forward pass replaces that activation with the splice's output, its activations are extension
    /// sites named `host` + "." + suffix, and the backward pass runs its backward. One splice per site. Host
    /// callbacks see the activation before the splice; remove(handle) detaches it. A splice with a source (a
    /// transcoder) also reads that site of the host's block, after its callbacks, and sends it its gradient.
    hook_handle splice(std::string_view host, std::shared_ptr<const mechlens::splice> module) {
        if (!module) throw std::invalid_argument("dynamic_hooks::splice: the splice is null");
        const site where = site_from_name(host, registry_->config());
        if (!Kinds.contains(where.kind))
            throw std::invalid_argument("dynamic_hooks::splice: " + to_string(where) +
                                        " is outside this policy's kind_set");
        if (const std::optional<splice_source> source = module->source(); source && !Kinds.contains(source->kind))
            throw std::invalid_argument("dynamic_hooks::splice: the splice reads " +
                                        std::string(site_suffix(source->kind)) + ", outside this policy's kind_set");
        return hook_handle{registry_->attach(where, std::move(module))};
    }
    /// Like splice(), returning a guard that detaches it when it goes out of scope.
    [[nodiscard]] scoped_hooks scoped_splice(std::string_view host, std::shared_ptr<const mechlens::splice> module) {
        return scoped_hooks(registry_, splice(host, std::move(module)));
    }
    /// Every site hooks can be registered at: the model's (all_sites) and, after each host, its splice's extension
    /// sites, in forward order.
    [[nodiscard]] std::vector<site> sites() const { return registry_->sites(); }
    /// The last axis of an extension site (its declared width), or 0 when no attached splice declares it.
    [[nodiscard]] index_t extension_width(const site& s) const noexcept { return registry_->extension_width(s); }
    /// True when every attached splice computes each row on its own (false with a batchtopk SAE attached).
    [[nodiscard]] bool splices_rows_independent() const noexcept { return registry_->splices_rows_independent(); }
    /// Like add(), returning a guard that removes the callback when it goes out of scope.
    [[nodiscard]] scoped_hooks scoped(std::string_view names, hook_callback fn) {
        return scoped_hooks(registry_, add(names, std::move(fn)));
    }
    /// Like add(site), returning a guard that removes the callback when it goes out of scope.
    [[nodiscard]] scoped_hooks scoped(const site& s, hook_callback fn) {
        return scoped_hooks(registry_, add(s, std::move(fn)));
    }
    /// Like add_gradient(site), returning a guard that removes the callback when it goes out of scope.
    [[nodiscard]] scoped_hooks scoped_gradient(const site& s, hook_callback fn) {
        return scoped_hooks(registry_, add_gradient(s, std::move(fn)));
    }
    /// Unregisters `handle` (callbacks or a splice) everywhere; false when it was not registered. Safe inside a
    /// callback.
    bool remove(hook_handle handle) noexcept { return registry_->remove(handle.id); }
    /// Unregisters everything, splices included. Safe inside a callback.
    void clear() noexcept { registry_->clear(); }
    /// Number of live registrations (callbacks and splices).
    [[nodiscard]] std::size_t size() const noexcept { return registry_->size(); }
    /// True when nothing is registered.
    [[nodiscard]] bool empty() const noexcept { return registry_->size() == 0; }

    /// Every kind in Kinds: what fires is only known at run time.
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Calls the callbacks registered at `s`, if any, then runs the splice attached there.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        detail::dynamic_registry& registry = *registry_;
        const std::size_t i = registry.slot(s);
        if (!registry.active(i)) return;
        registry.fire(i, s, activation_view(view), ctx);
    }
    /// Every kind in Kinds: gradient callbacks and splices are only known at run time.
    static constexpr bool wants_gradient(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Runs the backward of the splice attached at `s`, then the gradient callbacks registered there, if any.
    template <std::size_t R>
    void on_gradient(const site& s, tensor_view<float, R> gradient, const hook_context& ctx) {
        detail::dynamic_registry& registry = *registry_;
        const std::size_t i = registry.slot(s);
        if (!registry.active(i)) return;
        registry.fire_gradient(i, s, activation_view(gradient), ctx);
    }

private:
    std::vector<site> matching(std::string_view names) const {
        std::vector<site> sites = detail::match_in(names, registry_->sites());
        std::erase_if(sites, [](const site& s) { return !Kinds.contains(s.kind); });
        if (sites.empty())
            throw std::invalid_argument("dynamic_hooks: '" + std::string(names) +
                                        "' matches only site kinds outside this policy's kind_set");
        return sites;
    }
    void check_site(const site& s) const {
        const model_config& c = registry_->config();
        if (is_block_site(s.kind) ? (s.layer < 0 || s.layer >= c.n_layers) : s.layer != -1)
            throw std::invalid_argument("dynamic_hooks: " + to_string(s) + " is not a site of this model (" +
                                        std::to_string(c.n_layers) + " layers)");
        if (!Kinds.contains(s.kind))
            throw std::invalid_argument("dynamic_hooks: " + to_string(s) + " is outside this policy's kind_set");
    }
    hook_handle add_sites(const std::vector<site>& sites, hook_callback fn, bool gradient) {
        if (!fn) throw std::invalid_argument("dynamic_hooks: the callback is empty");
        return hook_handle{registry_->add(sites, std::move(fn), gradient)};
    }

    std::shared_ptr<detail::dynamic_registry> registry_;  // never null: copies share it, nothing moves it out
};

/// Run-time hooks at every site kind but attn.hook_result (the same kinds as the shipped static policies' default).
using dynamic_hooks = basic_dynamic_hooks<>;
static_assert(hook_policy<dynamic_hooks>);
static_assert(hook_policy<basic_dynamic_hooks<kind_set::all()>>);

MECHLENS_END_NAMESPACE
