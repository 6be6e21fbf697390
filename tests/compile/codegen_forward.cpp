// Codegen probe of the zero-overhead proof (STYLE.md habit 1). This translation unit is compiled three times, each
// into an object file that is never linked, only disassembled by compare_disassembly.py:
//   default                           forward with mechlens::no_hooks, every hook site present in the source;
//   -DMECHLENS_STRIP_HOOK_SITES       the same with every site compiled out (the hook-free forward pass);
//   -DMECHLENS_CODEGEN_PROBE          a policy that wants one site (hook_mlp_out): must produce different code, which
//                                     proves the comparison can see a hook.
// The test asserts that the first two objects contain the same functions with identical instruction sequences.

#include <mechlens/model/forward.hpp>

#include <cstdint>

namespace mechlens_codegen {

#if defined(MECHLENS_CODEGEN_PROBE)
/// Opaque to the optimiser: the probe's hook cannot be inlined away.
extern "C" void mechlens_codegen_sink(float* data, mechlens::index_t count);

/// Wants one site and hands it to the sink.
struct probe_policy {
    static constexpr bool wants(mechlens::site_kind kind) { return kind == mechlens::site_kind::mlp_out; }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank> view, const mechlens::hook_context&) {
        mechlens_codegen_sink(view.data(), view.size());
    }
};
static_assert(mechlens::hook_policy<probe_policy>);
using policy = probe_policy;
#else
using policy = mechlens::no_hooks;
#endif

}  // namespace mechlens_codegen

/// The function whose instructions the test compares: one whole forward call, with the policy as a temporary.
extern "C" void mechlens_codegen_forward(const mechlens::transformer* model, const std::int32_t* tokens,
                                         mechlens::index_t batch, mechlens::index_t positions,
                                         mechlens::kv_cache* cache, float* logits, mechlens::workspace* ws) {
    const mechlens::tensor_view<const std::int32_t, 2> token_view(tokens, {batch, positions});  // (batch, pos)
    const mechlens::index_t vocab = model->config().d_vocab;
    const mechlens::tensor_view<float, 3> logit_view(logits, {batch, positions, vocab});  // (batch, pos, d_vocab)
    mechlens::forward(*model, token_view, *cache, logit_view, *ws, mechlens_codegen::policy{});
}

// Emit the policy-dependent functions out of line as well, so they are compared even where the optimiser inlined
// them into mechlens_codegen_forward.
template void mechlens::forward<mechlens_codegen::policy>(const mechlens::transformer&,
                                                          mechlens::tensor_view<const std::int32_t, 2>,
                                                          mechlens::kv_cache&, mechlens::tensor_view<float, 3>,
                                                          mechlens::workspace&, mechlens_codegen::policy&&);
template void mechlens::detail::run_block<mechlens_codegen::policy>(mechlens_codegen::policy&, mechlens::index_t,
                                                                    const mechlens::hook_context&,
                                                                    const mechlens::transformer&,
                                                                    const mechlens::detail::forward_shape&,
                                                                    mechlens::kv_cache&, mechlens::workspace&);
template void mechlens::detail::attend<mechlens_codegen::policy>(mechlens_codegen::policy&, mechlens::index_t,
                                                                 const mechlens::hook_context&,
                                                                 const mechlens::transformer&,
                                                                 const mechlens::detail::forward_shape&,
                                                                 mechlens::kv_cache&, mechlens::workspace&);
template void mechlens::detail::project_heads<mechlens_codegen::policy>(
    mechlens_codegen::policy&, mechlens::index_t, const mechlens::hook_context&, const mechlens::transformer&,
    const mechlens::detail::forward_shape&, mechlens::workspace&, mechlens::tensor_view<float, 2>);
