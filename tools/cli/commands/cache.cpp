// `mechlens cache`: the activations at hook sites named by globs (default: all), listed, and saved to .safetensors
// and .npy when asked.

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"
#include "../medicine_options.hpp"

namespace mechlens_cli {
namespace cache_impl {

/// Runs one forward pass with a caching policy that lets `Kinds` through and keeps exactly `sites`.
template <mechlens::kind_set Kinds>
mechlens::activation_cache cache_sites(const mechlens::transformer& model, const std::vector<std::int32_t>& tokens,
                                       std::vector<mechlens::site> sites) {
    mechlens::caching_hooks<Kinds> hooks(mechlens::cache_filter().sites(std::move(sites)));
    (void)mechlens::forward_logits(model, as_batch(tokens), hooks);
    return hooks.take();
}

/// Runs one forward pass with the direction ablation (if any) and `splices` attached, caching the sites (extension
/// sites included) that `patterns` match among those `Kinds` lets through, as the interventions left them.
template <mechlens::kind_set Kinds>
mechlens::activation_cache cache_spliced(const mechlens::transformer& model, const std::vector<std::int32_t>& tokens,
                                         const std::vector<spliced_module>& splices, const std::string& patterns,
                                         std::optional<mechlens::direction_ablation_hooks>& ablation) {
    mechlens::basic_dynamic_hooks<Kinds> hooks(model.config());
    attach_direction_ablation(ablation, hooks);
    attach_splices(splices, hooks);
    mechlens::caching_hooks<Kinds> cache;
    (void)hooks.add(patterns, mechlens::as_callback(cache));
    (void)mechlens::forward_logits(model, as_batch(tokens), hooks);
    return cache.take();
}

/// Saves the cache where asked and lists it.
void report(const mechlens::activation_cache& cache, const std::optional<std::string>& out,
            const std::optional<std::string>& npy_directory, std::size_t tokens) {
    if (out) cache.save_safetensors(*out);
    if (npy_directory) cache.save_npy(*npy_directory);
    print_sites(cache);
    std::fprintf(stderr, "%s%s%s%zu activation%s of %zu tokens%s%s\n", out ? "wrote " : "", out ? out->c_str() : "",
                 out ? ": " : "cached ", cache.size(), cache.size() == 1 ? "" : "s", tokens,
                 npy_directory ? ", and .npy files in " : "", npy_directory ? npy_directory->c_str() : "");
}

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    const auto patterns = args.get("names");
    const auto out = args.get("out");
    const auto npy_directory = args.get("npy");
    const splice_options splice_input = read_splice_options(args);
    const prompt_run run = open_prompt(input, tokenizer_use::prompt_only);
    std::optional<mechlens::direction_ablation_hooks> ablation = read_direction_ablation(args, run.model.config());
    args.reject_unknown();
    const std::vector<spliced_module> splices = load_splices(splice_input, run.model.config());
    if (!splices.empty() || ablation) {
        // The model's sites and the splices' extension sites; attn.hook_result only when a pattern names it.
        mechlens::basic_dynamic_hooks<mechlens::kind_set::all()> probe(run.model.config());
        attach_splices(splices, probe);
        const std::vector<mechlens::site> matched = mechlens::detail::match_in(patterns.value_or("*"), probe.sites());
        const bool result = patterns && std::any_of(matched.begin(), matched.end(), [](const mechlens::site& s) {
                                return s.kind == mechlens::site_kind::attn_result;
                            });
        const mechlens::activation_cache cache =
            result ? cache_spliced<mechlens::kind_set::all()>(run.model, run.tokens, splices, *patterns, ablation)
                   : cache_spliced<mechlens::kind_set::all_but_result()>(run.model, run.tokens, splices,
                                                                         patterns.value_or("*"), ablation);
        report(cache, out, npy_directory, run.tokens.size());
        return 0;
    }
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
    report(cache, out, npy_directory, run.tokens.size());
    return 0;
}

}  // namespace cache_impl

const command cache_command{
    "cache",
    "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens 1,403,407) [--names PATTERNS]\n"
    "[--out FILE.safetensors] [--npy DIR] [--sae DIR]... [--sae-replace DIR]...\n"
    "[(--transcoder | --transcoder-replace) PATH --layer L]\n"
    "PATTERNS: comma-separated hook-name globs, e.g. 'blocks.*.hook_resid_post,blocks.0.attn.hook_pattern';\n"
    "without --names, every site run_with_cache fills (all but attn.hook_result). Prints each name and its\n"
    "TransformerLens shape (batch first); writes the activations only when --out or --npy is given. With an SAE\n"
    "or a transcoder spliced in, its sites (e.g. blocks.0.hook_resid_post.hook_sae_acts_post) are cached too\n"
    "[--ablate-direction D.npy[:LAYERS]]: the cache holds the activations with the direction removed",
    cache_impl::run};

}  // namespace mechlens_cli
