// `mechlens cache`: the activations at hook sites named by globs, to .safetensors (and .npy).

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace {

/// Runs one forward pass with a caching policy that lets `Kinds` through and keeps exactly `sites`.
template <mechlens::kind_set Kinds>
mechlens::activation_cache cache_sites(const mechlens::transformer& model, const std::vector<std::int32_t>& tokens,
                                       std::vector<mechlens::site> sites) {
    mechlens::caching_hooks<Kinds> hooks(mechlens::cache_filter().sites(std::move(sites)));
    (void)mechlens::forward_logits(model, as_batch(tokens), hooks);
    return hooks.take();
}

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    const std::string patterns = args.require("names");
    const std::filesystem::path out = args.require("out");
    const auto npy_directory = args.get("npy");
    args.reject_unknown();
    const prompt_run run = open_prompt(input, tokenizer_use::prompt_only);
    const std::vector<mechlens::site> sites = mechlens::match_sites(patterns, run.model.config());
    // attn.hook_result costs an extra projection per head: compile it in only when it was asked for.
    const bool wants_result = std::any_of(
        sites.begin(), sites.end(), [](const mechlens::site& s) { return s.kind == mechlens::site_kind::attn_result; });
    const mechlens::activation_cache cache =
        wants_result ? cache_sites<mechlens::kind_set::all()>(run.model, run.tokens, sites)
                     : cache_sites<mechlens::kind_set::all_but_result()>(run.model, run.tokens, sites);
    cache.save_safetensors(out);
    if (npy_directory) cache.save_npy(*npy_directory);
    print_sites(cache);
    std::fprintf(stderr, "wrote %s: %zu activation%s of %zu tokens%s%s\n", out.string().c_str(), cache.size(),
                 cache.size() == 1 ? "" : "s", run.tokens.size(), npy_directory ? ", and .npy files in " : "",
                 npy_directory ? npy_directory->c_str() : "");
    return 0;
}

}  // namespace

const command cache_command{
    "cache",
    "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens 1,403,407) --names PATTERNS\n"
    "--out FILE.safetensors [--npy DIR]\n"
    "PATTERNS: comma-separated hook-name globs, e.g. 'blocks.*.hook_resid_post,blocks.0.attn.hook_pattern'",
    run};

}  // namespace mechlens_cli
