// `mechlens logits`: the logits of one prompt as a (pos, vocab) float32 .npy.

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <filesystem>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace {

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    const std::filesystem::path out = args.require("out");
    args.reject_unknown();
    const prompt_run run = open_prompt(input, tokenizer_use::prompt_only);
    const auto positions = static_cast<mechlens::index_t>(run.tokens.size());
    const mechlens::index_t vocab = run.model.config().vocab_out();
    const mechlens::tensor<float, 3> logits = mechlens::forward_logits(run.model, as_batch(run.tokens));
    mechlens::write_npy(out, mechlens::tensor_view<const float, 2>(logits.data(), {positions, vocab}));
    std::fprintf(stderr, "wrote %s: logits (%td, %td)\n", out.string().c_str(), positions, vocab);
    return 0;
}

}  // namespace

const command logits_command{
    "logits", "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens 1,403,407) --out FILE.npy", run};

}  // namespace mechlens_cli
