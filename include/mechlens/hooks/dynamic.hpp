#pragma once
/// @file
/// Dynamic hooks: a run-time registry of callbacks by hook name, with handles and scope guards.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
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

namespace detail {

/// The shared state of a dynamic_hooks: callbacks per site slot, plus one "anything here?" byte per slot.
class dynamic_registry {
public:
    /// An empty registry for a model with these hyper-parameters.
    explicit dynamic_registry(const model_config& config)
        : config_(config),
          lists_(static_cast<std::size_t>(config.n_layers + 1) * site_kind_count),
          active_(lists_.size(), 0) {}

    /// The model's hyper-parameters (used to validate names).
    [[nodiscard]] const model_config& config() const noexcept { return config_; }

    /// Registers `fn` at every site in `sites`; returns the registration number.
    std::uint64_t add(const std::vector<site>& sites, hook_callback fn) {
        auto shared = std::make_shared<hook_callback>(std::move(fn));
        const std::uint64_t id = next_id_++;
        for (const site& s : sites) {
            const std::size_t i = slot(s);
            if (i >= lists_.size())
                throw std::invalid_argument("dynamic_hooks: " + to_string(s) + " is not in this model");
        }
        for (const site& s : sites) {
            const std::size_t i = slot(s);
            lists_[i].push_back({id, shared, false});
            active_[i] = 1;
        }
        ++live_;
        return id;
    }
    /// Unregisters one registration at every site; false when it was not registered. Safe inside a callback.
    bool remove(std::uint64_t id) noexcept {
        bool found = false;
        for (std::size_t i = 0; i < lists_.size(); ++i)
            for (entry& e : lists_[i])
                if (e.id == id && !e.dead) {
                    e.dead = true;
                    found = true;
                }
        if (found) --live_;
        if (firing_ == 0) sweep();
        return found;
    }
    /// Unregisters everything. Safe inside a callback.
    void clear() noexcept {
        for (auto& list : lists_)
            for (entry& e : list) e.dead = true;
        live_ = 0;
        if (firing_ == 0) sweep();
    }
    /// Number of live registrations.
    [[nodiscard]] std::size_t size() const noexcept { return live_; }

    /// The slot of a site, or an index past the table for sites outside the model.
    [[nodiscard]] std::size_t slot(const site& s) const noexcept {
        const index_t row = is_block_site(s.kind) ? (s.layer >= 0 ? s.layer + 1 : config_.n_layers + 1) : 0;
        return static_cast<std::size_t>(row) * site_kind_count + static_cast<std::size_t>(s.kind);
    }
    /// True when something is registered at slot `i` (false for slots outside the table).
    [[nodiscard]] bool active(std::size_t i) const noexcept { return i < active_.size() && active_[i] != 0; }

    /// Calls the callbacks of slot `i` in registration order; ones added meanwhile wait for the next call.
    void fire(std::size_t i, const site& s, activation_view view, const hook_context& ctx) {
        struct depth_guard {
            dynamic_registry& r;
            explicit depth_guard(dynamic_registry& registry) : r(registry) { ++r.firing_; }
            ~depth_guard() {
                if (--r.firing_ == 0) r.sweep();
            }
            depth_guard(const depth_guard&) = delete;
            depth_guard& operator=(const depth_guard&) = delete;
        } guard(*this);
        const std::size_t count = lists_[i].size();
        for (std::size_t k = 0; k < count; ++k) {
            if (lists_[i][k].dead) continue;
            hook_callback* fn = lists_[i][k].fn.get();  // stays alive: dead entries are only swept after firing
            (*fn)(s, view, ctx);
        }
    }

private:
    struct entry {
        std::uint64_t id;
        std::shared_ptr<hook_callback> fn;  // shared by every site of one registration: one callback state
        bool dead;
    };
    void sweep() noexcept {
        for (std::size_t i = 0; i < lists_.size(); ++i) {
            auto& list = lists_[i];
            std::erase_if(list, [](const entry& e) { return e.dead; });
            active_[i] = list.empty() ? 0 : 1;
        }
    }

    model_config config_;
    std::vector<std::vector<entry>> lists_;  // (n_layers + 1) * site_kind_count slots; row 0 holds global sites
    std::vector<unsigned char> active_;      // one byte per slot: the only thing read when nothing is registered
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
    /// `blocks.*.hook_resid_post`); throws unknown_hook_error, with suggestions, when a pattern matches nothing.
    hook_handle add(std::string_view names, hook_callback fn) {
        std::vector<site> sites = match_sites(names, registry_->config());
        std::erase_if(sites, [](const site& s) { return !Kinds.contains(s.kind); });
        if (sites.empty())
            throw std::invalid_argument("dynamic_hooks: '" + std::string(names) +
                                        "' matches only site kinds outside this policy's kind_set");
        return add_sites(sites, std::move(fn));
    }
    /// Registers `fn` at one site; throws std::invalid_argument when the site is not in the model or its kind is
    /// not in Kinds.
    hook_handle add(const site& s, hook_callback fn) {
        const model_config& c = registry_->config();
        if (is_block_site(s.kind) ? (s.layer < 0 || s.layer >= c.n_layers) : s.layer != -1)
            throw std::invalid_argument("dynamic_hooks: " + to_string(s) + " is not a site of this model (" +
                                        std::to_string(c.n_layers) + " layers)");
        if (!Kinds.contains(s.kind))
            throw std::invalid_argument("dynamic_hooks: " + to_string(s) + " is outside this policy's kind_set");
        return add_sites({s}, std::move(fn));
    }
    /// Like add(), returning a guard that removes the callback when it goes out of scope.
    [[nodiscard]] scoped_hooks scoped(std::string_view names, hook_callback fn) {
        return scoped_hooks(registry_, add(names, std::move(fn)));
    }
    /// Like add(site), returning a guard that removes the callback when it goes out of scope.
    [[nodiscard]] scoped_hooks scoped(const site& s, hook_callback fn) {
        return scoped_hooks(registry_, add(s, std::move(fn)));
    }
    /// Unregisters `handle` everywhere; false when it was not registered. Safe inside a callback.
    bool remove(hook_handle handle) noexcept { return registry_->remove(handle.id); }
    /// Unregisters everything. Safe inside a callback.
    void clear() noexcept { registry_->clear(); }
    /// Number of live registrations.
    [[nodiscard]] std::size_t size() const noexcept { return registry_->size(); }
    /// True when nothing is registered.
    [[nodiscard]] bool empty() const noexcept { return registry_->size() == 0; }

    /// Every kind in Kinds: what fires is only known at run time.
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Calls the callbacks registered at `s`, if any.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        detail::dynamic_registry& registry = *registry_;
        const std::size_t i = registry.slot(s);
        if (!registry.active(i)) return;
        registry.fire(i, s, activation_view(view), ctx);
    }

private:
    hook_handle add_sites(const std::vector<site>& sites, hook_callback fn) {
        if (!fn) throw std::invalid_argument("dynamic_hooks: the callback is empty");
        return hook_handle{registry_->add(sites, std::move(fn))};
    }

    std::shared_ptr<detail::dynamic_registry> registry_;  // never null: copies share it, nothing moves it out
};

/// Run-time hooks at every site kind but attn.hook_result (the same kinds as the shipped static policies' default).
using dynamic_hooks = basic_dynamic_hooks<>;
static_assert(hook_policy<dynamic_hooks>);
static_assert(hook_policy<basic_dynamic_hooks<kind_set::all()>>);

MECHLENS_END_NAMESPACE
