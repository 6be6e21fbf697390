// `mechlens patch`: activation patching sweeps of the corrupt prompts with the clean ones' activations, through SAEs
// or a transcoder spliced in when asked.

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"
#include "prompt_pairs.hpp"

namespace mechlens_cli {
namespace patch_impl {

int run(arguments& args) {
    const model_options model_input = read_model_options(args);
    const std::filesystem::path& model_path = model_input.path;
    const auto names = grid_names(args.get("grid"));
    const auto out = args.get("out");
    const splice_options splice_input = read_splice_options(args);
    const mechlens::transformer model = open_model(model_input);
    prompt_pairs pairs = read_prompt_pairs(args, model_path, model);
    args.reject_unknown();
    std::vector<mechlens::patching_grid> grids;
    for (const auto& n : names) grids.push_back(grid_named(n));
    const std::vector<spliced_module> splices = load_splices(splice_input, model.config());
    mechlens::dynamic_hooks hooks(model.config());
    attach_splices(splices, hooks);
    mechlens::activation_patcher patcher(model, pairs.clean.view(), pairs.corrupt.view(), pairs.metric,
                                         splices.empty() ? nullptr : &hooks);
    std::vector<mechlens::patching_table> tables;
    for (const auto& grid : grids) {
        tables.push_back(patcher.sweep(grid));
        print_table(tables.back(), pairs.labels);
    }
    std::fprintf(stderr, "%td prompt pair%s of %td tokens; 1 = the clean run's metric, 0 = the corrupt run's\n",
                 pairs.clean.extent(0), pairs.clean.extent(0) == 1 ? "" : "s", pairs.clean.extent(1));
    if (out)
        write_tables(*out, "mechlens patch", names, tables, pairs.labels,
                     "Activation patching: clean activations written into the corrupt run, one cell at a time; "
                     "(patched - corrupt) / (clean - corrupt) of the answer metric, mean over pairs.");
    return 0;
}

}  // namespace patch_impl

const command patch_command{
    "patch",
    "--model PATH (--clean TEXT --corrupt TEXT)... | (--clean-tokens IDS --corrupt-tokens IDS)...\n"
    "[--metric logitdiff:A-B|logit:A|logprob:A] [--grid resid_pre,attn_out,mlp_out,z] [--out PREFIX]\n"
    "grids: resid_pre resid_mid resid_post attn_out mlp_out (layer x position), z q k v pattern\n"
    "(layer x head), z_pos (layer x head x position); default metric: each pair's clean top token minus\n"
    "its corrupt top token. --out writes PREFIX.<grid>.npy and PREFIX.html\n"
    "[--sae DIR]... [--sae-replace DIR]... [(--transcoder | --transcoder-replace) PATH --layer L]: every run\n"
    "goes through the spliced modules (with the error term, the tables are the plain model's); a patched site\n"
    "that hosts one gets the clean run's spliced output",
    patch_impl::run};

}  // namespace mechlens_cli
