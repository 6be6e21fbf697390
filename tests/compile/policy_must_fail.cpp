// "Must fail to compile" cases: types that are not hook policies are rejected with mechlens's own message, and
// fire_site rejects a buffer of the wrong rank. MECHLENS_FAIL_CASE picks the case; case 0 is the control that must
// compile (it proves a failure of the others comes from the policy, not from the snippet). CMake builds case 0 with
// the normal build and each other case from a ctest that expects the static_assert's message in the compiler output.

#include <mechlens/model/forward.hpp>
#include <mechlens/hooks/engine.hpp>

#include <cstdint>

#ifndef MECHLENS_FAIL_CASE
#define MECHLENS_FAIL_CASE 0
#endif

namespace {

using mechlens::index_t;

/// A complete policy, for the control and for the fire_site rank case.
struct valid_policy {
    static constexpr bool wants(mechlens::site_kind) { return true; }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank>, const mechlens::hook_context&) {}
};

#if MECHLENS_FAIL_CASE == 0 || MECHLENS_FAIL_CASE == 6
using policy = valid_policy;
#elif MECHLENS_FAIL_CASE == 1
struct policy {};  // neither wants nor on_activation
#elif MECHLENS_FAIL_CASE == 2
struct policy {  // wants, but nothing receives the activations
    static constexpr bool wants(mechlens::site_kind) { return true; }
};
#elif MECHLENS_FAIL_CASE == 3
struct policy {  // on_activation only for rank-3 sites: the per-head sites (rank 4) would have nowhere to go
    static constexpr bool wants(mechlens::site_kind) { return true; }
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, 3>, const mechlens::hook_context&) {}
};
#elif MECHLENS_FAIL_CASE == 4
struct policy {  // wants is a run-time member: a policy must answer at compile time
    bool wants(mechlens::site_kind) const { return true; }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank>, const mechlens::hook_context&) {}
};
#elif MECHLENS_FAIL_CASE == 5
using policy = int;  // fire_site with a non-policy
#else
#error "unknown MECHLENS_FAIL_CASE"
#endif

}  // namespace

#if MECHLENS_FAIL_CASE <= 4
/// Cases 0-4: the policy goes to mechlens::forward.
void mechlens_must_fail_forward(const mechlens::transformer& model, mechlens::tensor_view<const std::int32_t, 2> tokens,
                                mechlens::tensor_view<float, 3> logits, mechlens::workspace& ws) {
    mechlens::forward(model, tokens, logits, ws, policy{});
}
#endif

/// Case 5: a non-policy given to fire_site; case 6: hook_pattern (rank 4) fired on a rank-3 buffer.
void mechlens_must_fail_engine(float* data, index_t width) {
#if MECHLENS_FAIL_CASE == 5
    policy not_a_policy = 0;
    mechlens::fire_site<mechlens::site_kind::resid_post>(not_a_policy, 0, data, {1, 1, width});
#elif MECHLENS_FAIL_CASE == 6
    policy hooks;
    mechlens::fire_site<mechlens::site_kind::attn_pattern>(hooks, 0, data, {1, 1, width});
#else
    valid_policy hooks;  // cases 0-4 test forward(); here only the control's valid use of fire_site
    mechlens::fire_site<mechlens::site_kind::resid_post>(hooks, 0, data, {1, 1, width});
#endif
}
