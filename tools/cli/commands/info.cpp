// `mechlens info`: a model's config and parameter count.

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <filesystem>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace info_impl {

int run(arguments& args) {
    const model_options model_input = read_model_options(args);
    const std::filesystem::path& model_path = model_input.path;
    args.reject_unknown();
    const mechlens::transformer model = open_model(model_input);
    const mechlens::model_config& c = model.config();
    std::printf("model       %s\n", model_path.string().c_str());
    std::printf("d_model     %td\nn_layers    %td\nn_heads     %td\nn_kv_heads  %td\nd_head      %td\n", c.d_model,
                c.n_layers, c.n_heads, c.n_kv_heads, c.d_head());
    std::printf("d_mlp       %td\nd_vocab     %td\nn_ctx       %td\n", c.d_mlp, c.d_vocab, c.n_ctx);
    std::printf("rope_theta  %g\nnorm_eps    %g\nrope        %s\nunembed     %s\n", static_cast<double>(c.rope_theta),
                static_cast<double>(c.norm_eps),
                c.rope == mechlens::rope_layout::adjacent_pairs ? "adjacent pairs" : "split halves",
                c.tied_unembed ? "tied to the embedding" : "separate matrix");
    // Only what differs from LLaMA (RMSNorm, rotary, gated SiLU MLP): grown models and other variants.
    if (c.norm == mechlens::norm_kind::none) std::printf("norm        none\n");
    if (c.norm == mechlens::norm_kind::layer) std::printf("norm        LayerNorm (gain and bias)\n");
    if (!c.rotary()) std::printf("positions   learned\n");
    if (c.attn_only())
        std::printf("mlp         none (attention-only)\n");
    else if (c.mlp == mechlens::mlp_kind::plain_gelu)
        std::printf("mlp         plain GELU\n");
    else if (c.mlp == mechlens::mlp_kind::plain_gelu_erf)
        std::printf("mlp         plain GELU (exact erf)\n");
    else if (c.mlp == mechlens::mlp_kind::plain_relu)
        std::printf("mlp         plain ReLU\n");
    if (c.linear_biases) std::printf("biases      on every linear layer\n");
    if (!c.causal()) std::printf("attention   bidirectional\n");
    if (c.vocab_out() != c.d_vocab) std::printf("d_vocab_out %td\n", c.vocab_out());
    std::printf("parameters  %td\n", mechlens::layout_size(mechlens::parameter_layout(c)));
    // Quantised matrices multiplied from their blocks: what their floats would cost if a pass decoded them.
    if (const auto& on_demand = model.stored_weights().on_demand; on_demand != nullptr)
        std::printf("as blocks   %zu matrices (Q8_0, Q4_K, Q6_K); their floats, %.1f MB, decoded only when read\n",
                    on_demand->size(), static_cast<double>(on_demand->reserved_bytes()) / 1e6);
    return 0;
}

}  // namespace info_impl

const command info_command{"info", "--model PATH", info_impl::run};

}  // namespace mechlens_cli
