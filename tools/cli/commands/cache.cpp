// `mechlens cache`: the activations at hook sites named by globs (default: all), listed, and saved to .safetensors
// and .npy when asked.

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
    const auto patterns = args.get("names");
    const auto out = args.get("out");
    const auto npy_directory = args.get("npy");
    args.reject_unknown();
    const prompt_run run = open_prompt(input, tokenizer_use::prompt_only);
    // Without --names, every site TransformerLens's run_with_cache fills by default (attn.hook_result is opt-in).
    std::vector<mechlens::site> sites = mechlens::match_sites(patterns.value_or("*"), run.model.config());
    if (!patterns)
        std::erase_if(sites, [](const mechlens::site& s) { return s.kind == mechlens::site_kind::attn_result; });
    // attn.hook_result costs an extra projection per head: compile it in only when it was asked for.
    const bool wants_result = std::any_of(
        sites.begin(), sites.end(), [](const mechlens::site& s) { return s.kind == mechlens::site_kind::attn_result; });
    const mechlens::activation_cache cache =
        wants_result ? cache_sites<mechlens::kind_set::all()>(run.model, run.tokens, sites)
                     : cache_sites<mechlens::kind_set::all_but_result()>(run.model, run.tokens, sites);
    if (out) cache.save_safetensors(*out);
    if (npy_directory) cache.save_npy(*npy_directory);
    print_sites(cache);
    std::fprintf(stderr, "%s%s%s%zu activation%s of %zu tokens%s%s\n", out ? "wrote " : "", out ? out->c_str() : "",
                 out ? ": " : "cached ", cache.size(), cache.size() == 1 ? "" : "s", run.tokens.size(),
                 npy_directory ? ", and .npy files in " : "", npy_directory ? npy_directory->c_str() : "");
    return 0;
}

}  // namespace

const command cache_command{
    "cache",
    "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens 1,403,407) [--names PATTERNS]\n"
    "[--out FILE.safetensors] [--npy DIR]\n"
    "PATTERNS: comma-separated hook-name globs, e.g. 'blocks.*.hook_resid_post,blocks.0.attn.hook_pattern';\n"
    "without --names, every site run_with_cache fills (all but attn.hook_result). Prints each name and its\n"
    "TransformerLens shape (batch first); writes the activations only when --out or --npy is given",
    run};

}  // namespace mechlens_cli
