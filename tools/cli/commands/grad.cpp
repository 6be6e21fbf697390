// `mechlens grad`: gradients of a metric at hook sites, named and shaped like the activations.

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace grad_impl {

/// Parses `loss`, `logit:ID@POS` or `logitdiff:ID1-ID2@POS` (POS may be negative, counting from the end).
mechlens::metric parse_metric(const std::string& text) {
    if (text == "loss") return mechlens::metric::cross_entropy();
    const auto colon = text.find(':'), at = text.rfind('@');
    if (colon == std::string::npos || at == std::string::npos || at < colon)
        throw usage_error("--metric expects loss, logit:ID@POS or logitdiff:ID1-ID2@POS, got '" + text + "'");
    const std::string kind = text.substr(0, colon), ids = text.substr(colon + 1, at - colon - 1);
    const auto position = parse_number<mechlens::index_t>(text.substr(at + 1), "--metric position");
    if (kind == "logit") return mechlens::metric::logit(parse_number<std::int32_t>(ids, "--metric token"), position);
    if (kind == "logitdiff") {
        const auto dash = ids.find('-');
        if (dash == std::string::npos) throw usage_error("--metric logitdiff expects ID1-ID2@POS, got '" + text + "'");
        return mechlens::metric::logit_diff(parse_number<std::int32_t>(ids.substr(0, dash), "--metric token"),
                                            parse_number<std::int32_t>(ids.substr(dash + 1), "--metric token"),
                                            position);
    }
    throw usage_error("--metric: unknown metric '" + kind + "' (loss, logit, logitdiff)");
}

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    const mechlens::metric metric = parse_metric(args.require("metric"));
    const std::string patterns = args.require("names");
    const std::filesystem::path out = args.require("out");
    args.reject_unknown();
    const prompt_run run = open_prompt(input, tokenizer_use::prompt_only);
    const std::vector<mechlens::site> sites = mechlens::match_sites(patterns, run.model.config());
    for (const mechlens::site& s : sites)
        if (s.kind == mechlens::site_kind::attn_result)
            throw usage_error(mechlens::to_string(s) + ": the gradient pass has no attn.hook_result (use attn.hook_z)");
    mechlens::gradient_cache<> gradients(mechlens::cache_filter().sites(sites));
    const float value = mechlens::forward_backward(run.model, as_batch(run.tokens), metric,
                                                   static_cast<mechlens::model_parameters*>(nullptr), gradients);
    const mechlens::activation_cache& cache = gradients.cache();
    cache.save_safetensors(out);
    print_sites(cache);
    std::fprintf(stderr, "metric %.9g; wrote %s: gradients at %zu site%s of %zu tokens\n", static_cast<double>(value),
                 out.string().c_str(), cache.size(), cache.size() == 1 ? "" : "s", run.tokens.size());
    return 0;
}

}  // namespace grad_impl

const command grad_command{
    "grad",
    "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens 1,403,407) --metric METRIC --names PATTERNS\n"
    "--out FILE.safetensors\n"
    "METRIC: loss (mean next-token cross-entropy), logit:ID@POS, logitdiff:ID1-ID2@POS (POS -1 = last)",
    grad_impl::run};

}  // namespace mechlens_cli
