// `mechlens attribute`: attribution patching (every grid from one forward and one backward pass), or integrated
// gradients / saliency / gradient x input at a hook site, per position; with SAEs or transcoders spliced in, every
// run goes through them, and at one of their latent sites the features are ranked.

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"
#include "prompt_pairs.hpp"

namespace mechlens_cli {
namespace attribute_impl {

/// The quadrature rule a --rule name stands for.
mechlens::integration_rule rule_named(const std::string& name) {
    using mechlens::integration_rule;
    if (name == "gauss_legendre" || name == "gauss") return integration_rule::gauss_legendre;
    if (name == "left") return integration_rule::riemann_left;
    if (name == "right") return integration_rule::riemann_right;
    if (name == "middle") return integration_rule::riemann_middle;
    if (name == "trapezoid") return integration_rule::riemann_trapezoid;
    throw usage_error("unknown --rule '" + name + "' (gauss_legendre, left, right, middle, trapezoid)");
}

/// Prints the `count` features with the largest |attribution|, each summed over positions and averaged over prompts
/// (so that, for integrated gradients, all of them add up to the sum of attributions printed below).
void print_top_features(const std::string& method, const mechlens::site& where,
                        const mechlens::tensor<double, 2>& per_channel, std::size_t count) {
    const mechlens::index_t prompts = per_channel.extent(0), features = per_channel.extent(1);
    std::vector<double> totals(static_cast<std::size_t>(features), 0.0);
    for (mechlens::index_t b = 0; b < prompts; ++b)
        for (mechlens::index_t j = 0; j < features; ++j)
            totals[static_cast<std::size_t>(j)] += per_channel(b, j) / static_cast<double>(prompts);
    std::vector<std::size_t> order(totals.size());
    for (std::size_t j = 0; j < order.size(); ++j) order[j] = j;
    count = std::min(count, order.size());
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(count), order.end(),
                      [&](std::size_t a, std::size_t b) {
                          return std::abs(totals[a]) > std::abs(totals[b]) ||
                                 (std::abs(totals[a]) == std::abs(totals[b]) && a < b);
                      });
    std::printf("top %zu of %td features at %s by |%s attribution| (summed over positions, mean over prompts)\n",
                count, features, mechlens::to_string(where).c_str(), method.c_str());
    for (std::size_t k = 0; k < count; ++k)
        std::printf("  feature %6zu %+10.4f\n", order[k], totals[order[k]]);
}

int run(arguments& args) {
    const model_options model_input = read_model_options(args);
    const std::filesystem::path& model_path = model_input.path;
    const std::string method = args.get("method").value_or("patching");
    const auto names = grid_names(args.get("grid"));
    const auto out = args.get("out");
    const bool compare = args.get("compare").value_or("0") != "0";
    const std::string site_name = args.get("site").value_or("hook_embed");
    const auto steps = parse_number<mechlens::index_t>(args.get("steps").value_or("32"), "--steps");
    const mechlens::integration_rule rule = rule_named(args.get("rule").value_or("gauss_legendre"));
    const std::string baseline_name = args.get("baseline").value_or("corrupt");
    const auto top = parse_number<std::size_t>(args.get("top").value_or("10"), "--top");
    const splice_options splice_input = read_splice_options(args);
    const mechlens::transformer model = open_model(model_input);
    prompt_pairs pairs = read_prompt_pairs(args, model_path, model);
    args.reject_unknown();
    const std::vector<spliced_module> splices = load_splices(splice_input, model.config());
    mechlens::dynamic_hooks hooks(model.config());
    attach_splices(splices, hooks);
    mechlens::dynamic_hooks* spliced = splices.empty() ? nullptr : &hooks;

    if (method == "patching") {
        const mechlens::attribution_patcher estimate(model, pairs.clean.view(), pairs.corrupt.view(), pairs.metric,
                                                     spliced);
        std::optional<mechlens::activation_patcher> truth;
        if (compare) truth.emplace(model, pairs.clean.view(), pairs.corrupt.view(), pairs.metric, spliced);
        std::vector<mechlens::patching_table> tables;
        for (const auto& n : names) {
            tables.push_back(estimate.estimate(grid_named(n)));
            print_table(tables.back(), pairs.labels);
            if (truth)
                std::printf("  correlation with activation patching: %.4f\n",
                            mechlens::pearson_correlation(tables.back().values, truth->sweep(grid_named(n)).values));
        }
        if (out)
            write_tables(*out, "mechlens attribute --method patching", names, tables, pairs.labels,
                         "Attribution patching: (d metric / d activation on the corrupt run) . (clean - corrupt) per "
                         "cell, normalised by (clean - corrupt) of the metric: a first-order estimate of activation "
                         "patching from one forward and one backward pass.");
        return 0;
    }

    // After the splices are attached, so that the extension sites they declare parse.
    const auto where = mechlens::parse_site(site_name);
    if (!where)
        throw usage_error("--site '" + site_name + "' is not a hook name (e.g. hook_embed, blocks.2.hook_resid_pre)");
    if (where->extension >= 0 && hooks.extension_width(*where) == 0)
        throw usage_error("--site " + site_name + " is the site of a module no --sae or --transcoder splices there");
    const auto prompts = pairs.clean.extent(0), positions = pairs.clean.extent(1);
    mechlens::tensor<double, 2> per_position, per_channel;
    std::string summary;
    if (method == "ig") {
        mechlens::ig_baseline baseline = mechlens::ig_baseline::zeros();
        if (baseline_name == "corrupt") {
            baseline = mechlens::ig_baseline::from_tokens(pairs.corrupt.view());
        } else if (baseline_name.rfind("token:", 0) == 0) {
            baseline = mechlens::ig_baseline::repeated_token(
                parse_number<std::int32_t>(baseline_name.substr(6), "--baseline"));
        } else if (baseline_name != "zeros") {
            throw usage_error("--baseline must be corrupt, zeros or token:ID, got '" + baseline_name + "'");
        }
        mechlens::integrated_gradients_options options;
        options.rule = rule;
        options.steps = steps;
        const auto result = mechlens::integrated_gradients(model, pairs.clean.view(), pairs.metric, *where, baseline,
                                                           options, spliced);
        per_position = result.per_position;
        per_channel = result.per_channel;
        char line[256];
        std::snprintf(line, sizeof line,
                      "F(x) %+.4f, F(baseline) %+.4f, sum of attributions %+.4f, completeness error %+.2e (%td %s "
                      "steps)",
                      result.input_mean, result.baseline_mean,
                      result.input_mean - result.baseline_mean + result.completeness_error, result.completeness_error,
                      steps, mechlens::to_string(rule).c_str());
        summary = line;
    } else if (method == "saliency" || method == "gradxinput") {
        const auto result = method == "saliency"
                                ? mechlens::saliency(model, pairs.clean.view(), pairs.metric, *where, spliced)
                                : mechlens::gradient_times_input(model, pairs.clean.view(), pairs.metric, *where,
                                                                 spliced);
        per_position = result.per_position;
        per_channel = result.per_channel;
    } else {
        throw usage_error("--method must be patching, ig, saliency or gradxinput, got '" + method + "'");
    }
    std::printf("%s attributions at %s, summed per position (rows: prompts)\n", method.c_str(),
                mechlens::to_string(*where).c_str());
    for (mechlens::index_t p = 0; p < positions; ++p) {
        std::string label = pairs.labels[static_cast<std::size_t>(p)];
        if (label.size() > 10) label.resize(10);
        std::printf("  %3td %-10s", p, concat("'", label, "'").c_str());
        for (mechlens::index_t b = 0; b < prompts; ++b) std::printf(" %+9.4f", per_position(b, p));
        std::printf("\n");
    }
    if (where->extension >= 0 && top > 0) print_top_features(method, *where, per_channel, top);
    if (!summary.empty()) std::printf("%s\n", summary.c_str());
    if (out) {
        const std::string npy = concat(*out, ".", method, ".npy");
        mechlens::tensor<float, 2> values({prompts, positions});
        for (mechlens::index_t b = 0; b < prompts; ++b)
            for (mechlens::index_t p = 0; p < positions; ++p) values(b, p) = static_cast<float>(per_position(b, p));
        mechlens::write_npy(npy, mechlens::tensor_view<const float, 2>(values.view()));
        std::fprintf(stderr, "wrote %s: (prompts, positions)\n", npy.c_str());
        if (where->extension >= 0) {
            const std::string features_npy = concat(*out, ".", method, ".features.npy");
            mechlens::tensor<float, 2> features({prompts, per_channel.extent(1)});
            for (mechlens::index_t b = 0; b < prompts; ++b)
                for (mechlens::index_t j = 0; j < per_channel.extent(1); ++j)
                    features(b, j) = static_cast<float>(per_channel(b, j));
            mechlens::write_npy(features_npy, mechlens::tensor_view<const float, 2>(features.view()));
            std::fprintf(stderr, "wrote %s: (prompts, features), summed over positions\n", features_npy.c_str());
        }
    }
    return 0;
}

}  // namespace attribute_impl

const command attribute_command{
    "attribute",
    "(same prompts and --metric) [--method patching|ig|saliency|gradxinput] [--grid ...] [--compare 1]\n"
    "[--site hook_embed] [--steps 32] [--rule gauss_legendre|left|right|middle|trapezoid]\n"
    "[--baseline corrupt|zeros|token:ID] [--top 10] [--out PREFIX]\n"
    "[--sae DIR]... [--sae-replace DIR]... [(--transcoder | --transcoder-replace) PATH --layer L]\n"
    "with SAEs or a transcoder spliced in, every run and gradient pass of every method (and --compare's\n"
    "activation patching) goes through them; --site may then be one of their sites, e.g.\n"
    "blocks.1.hook_resid_post.hook_sae_acts_post, and ig/saliency/gradxinput also print the --top features by\n"
    "|attribution| summed over positions (--out adds PREFIX.<method>.features.npy, (prompts, features))",
    attribute_impl::run};

}  // namespace mechlens_cli
