// `mechlens logits`: the logits of one prompt as a (pos, vocab) float32 .npy, with SAEs or a transcoder spliced in
// when asked.

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <filesystem>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"
#include "../medicine_options.hpp"

namespace mechlens_cli {
namespace logits_impl {

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    const std::filesystem::path out = args.require("out");
    const splice_options splice_input = read_splice_options(args);
    const prompt_run run = open_prompt(input, tokenizer_use::prompt_only);
    std::optional<mechlens::direction_ablation_hooks> ablation = read_direction_ablation(args, run.model.config());
    args.reject_unknown();
    const auto positions = static_cast<mechlens::index_t>(run.tokens.size());
    const mechlens::index_t vocab = run.model.config().vocab_out();
    const std::vector<spliced_module> splices = load_splices(splice_input, run.model.config());
    mechlens::dynamic_hooks hooks(run.model.config());
    attach_direction_ablation(ablation, hooks);
    attach_splices(splices, hooks);
    const mechlens::tensor<float, 3> logits = splices.empty() && !ablation
                                                  ? mechlens::forward_logits(run.model, as_batch(run.tokens))
                                                  : mechlens::forward_logits(run.model, as_batch(run.tokens), hooks);
    mechlens::write_npy(out, mechlens::tensor_view<const float, 2>(logits.data(), {positions, vocab}));
    std::fprintf(stderr, "wrote %s: logits (%td, %td)\n", out.string().c_str(), positions, vocab);
    return 0;
}

}  // namespace logits_impl

const command logits_command{
    "logits",
    "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens 1,403,407) --out FILE.npy\n"
    "[--sae DIR]... [--sae-replace DIR]... [(--transcoder | --transcoder-replace) PATH --layer L]\n"
    "--sae splices a SAELens folder at its cfg.json hook_name with the error term (logits unchanged until\n"
    "something intervenes); --sae-replace without it; --transcoder a circuit-tracer layer file (or a folder with\n"
    "layer_L.safetensors) over blocks.L.hook_mlp_out\n"
    "[--ablate-direction D.npy[:LAYERS]]: removes the direction from hook_resid_pre, hook_attn_out and hook_mlp_out\n"
    "of LAYERS (A-B or A,B,...; every layer by default)",
    logits_impl::run};

}  // namespace mechlens_cli
