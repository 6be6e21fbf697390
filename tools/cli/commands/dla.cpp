// `mechlens dla`: each component's direct contribution to a logit (difference) at one position.

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace dla_impl {

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    const auto position_text = args.get("position");
    const auto token = parse_number<std::int32_t>(args.require("token"), "--token");
    const auto minus = args.get("minus");
    args.reject_unknown();
    const std::optional<std::int32_t> other =
        minus ? std::optional<std::int32_t>(parse_number<std::int32_t>(*minus, "--minus")) : std::nullopt;
    const prompt_run run = open_prompt(input, tokenizer_use::display);
    mechlens::caching_hooks<> hooks;
    const mechlens::tensor<float, 3> logits = mechlens::forward_logits(run.model, as_batch(run.tokens), hooks);
    const mechlens::index_t p = resolve_position(position_text, static_cast<mechlens::index_t>(run.tokens.size()));
    const mechlens::logit_attribution dla =
        mechlens::direct_logit_attribution(run.model, hooks.cache(), 0, p, token, other);
    std::vector<std::size_t> order(dla.values.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return std::abs(dla.values[a]) > std::abs(dla.values[b]); });
    for (const std::size_t i : order) std::printf("%-10s %+.4f\n", dla.components[i].c_str(), dla.values[i]);
    const double model_value =
        static_cast<double>(logits(0, p, token)) - (other ? static_cast<double>(logits(0, p, *other)) : 0.0);
    std::fprintf(stderr, "logit%s of %s%s%s at position %td: %.4f from the components, %.4f from the model\n",
                 other ? " difference" : "", show_token(run.tokenizer, token).c_str(), other ? " minus " : "",
                 other ? show_token(run.tokenizer, *other).c_str() : "", p, dla.total, model_value);
    return 0;
}

}  // namespace dla_impl

const command dla_command{
    "dla", "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens IDS) --token ID [--minus ID] [--position -1]",
    dla_impl::run};

}  // namespace mechlens_cli
