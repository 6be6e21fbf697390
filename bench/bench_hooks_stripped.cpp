// The hook-stripped forward pass for bench_hooks.cpp: this translation unit is compiled with
// MECHLENS_STRIP_HOOK_SITES, which removes every hook site from the forward pass (see hooks/policy.hpp).
//
// Its policy type lives in an anonymous namespace on purpose: were it mechlens::no_hooks, this file's forward<no_hooks>
// and bench_hooks.cpp's would share one mangled name with two definitions (an ODR violation), and the linker would
// keep only one of them, so both benchmarks would time the same code. A private twin of no_hooks gives this file its
// own instantiations; the codegen test (tests/compile) shows the two compile to identical instructions anyway.

#if !defined(MECHLENS_STRIP_HOOK_SITES)
#error "bench_hooks_stripped.cpp must be compiled with -DMECHLENS_STRIP_HOOK_SITES"
#endif

#include <mechlens/model/forward.hpp>

#include <cstdint>

namespace {

/// mechlens::no_hooks under another name (see the comment at the top).
struct stripped_no_hooks {
    static constexpr bool wants(mechlens::site_kind) noexcept { return false; }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank>,
                       const mechlens::hook_context&) noexcept {}
};
static_assert(mechlens::hook_policy<stripped_no_hooks>);

}  // namespace

/// One full forward pass of the hook-stripped build (declared in bench_hooks.cpp).
void mechlens_bench_stripped_forward(const mechlens::transformer& model,
                                     mechlens::tensor_view<const std::int32_t, 2> tokens,
                                     mechlens::tensor_view<float, 3> logits, mechlens::workspace& ws) {
    mechlens::forward(model, tokens, logits, ws, stripped_no_hooks{});
}
