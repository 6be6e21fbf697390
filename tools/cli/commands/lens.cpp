// `mechlens lens`: the logit lens, per layer the top tokens the residual stream predicts at one position.

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <optional>
#include <string>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace lens_impl {

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    const auto position_text = args.get("position");
    const auto top_k =
        args.get("top") ? parse_number<mechlens::index_t>(*args.get("top"), "--top") : mechlens::index_t{5};
    const auto out = args.get("out");
    args.reject_unknown();
    const prompt_run run = open_prompt(input, tokenizer_use::display);
    const mechlens::model_config& c = run.model.config();
    mechlens::caching_hooks<> hooks(mechlens::cache_filter().names("blocks.*.hook_resid_post", c));
    (void)mechlens::forward_logits(run.model, as_batch(run.tokens), hooks);
    const mechlens::tensor<float, 4> lens = mechlens::logit_lens(run.model, hooks.cache());  // (layers, 1, pos, vocab)
    const mechlens::index_t p = resolve_position(position_text, static_cast<mechlens::index_t>(run.tokens.size()));
    for (mechlens::index_t layer = 0; layer < c.n_layers; ++layer) {
        const mechlens::tensor_view<const float, 1> row(&lens(layer, 0, p, 0), {c.vocab_out()});
        std::printf("blocks.%td.hook_resid_post:", layer);
        for (const mechlens::token_standing& t : mechlens::top_tokens(row, top_k))
            std::printf("  %s %.3f", show_token(run.tokenizer, t.token).c_str(), static_cast<double>(t.probability));
        std::printf("\n");
    }
    if (out) {
        mechlens::write_npy(*out, mechlens::tensor_view<const float, 4>(lens.view()));
        std::fprintf(stderr, "wrote %s: logit lens (%td, 1, %zu, %td)\n", out->c_str(), c.n_layers, run.tokens.size(),
                     c.vocab_out());
    }
    return 0;
}

}  // namespace lens_impl

const command lens_command{
    "lens", "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens IDS) [--position -1] [--top 5] [--out F.npy]",
    lens_impl::run};

}  // namespace mechlens_cli
