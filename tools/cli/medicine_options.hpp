#pragma once
// The model-medicine options other commands take: `--ablate-direction D.npy[:LAYERS]` (logits, cache, generate) and
// `--control-vector F.gguf[:STRENGTH]` (generate).

#include <mechlens/mechlens.hpp>

#include <optional>
#include <string>
#include <vector>

#include "arguments.hpp"
#include "common.hpp"

namespace mechlens_cli {

/// `--ablate-direction D.npy[:LAYERS]`: the direction (a .npy of d_model values) removed from hook_resid_pre,
/// hook_attn_out and hook_mlp_out of LAYERS ("A-B" or "A,B,..."; every layer by default). nullopt without the
/// option; usage_error for a malformed spec, a direction of another width or a layer out of range.
inline std::optional<mechlens::direction_ablation_hooks> read_direction_ablation(arguments& args,
                                                                                 const mechlens::model_config& c) {
    const std::optional<std::string> spec = args.get("ablate-direction");
    if (!spec) return std::nullopt;
    const std::size_t colon = spec->rfind(':');
    const bool has_layers = colon != std::string::npos && colon + 1 < spec->size() &&
                            spec->find_first_not_of("0123456789,-", colon + 1) == std::string::npos;
    const std::string path = has_layers ? spec->substr(0, colon) : *spec;
    std::vector<mechlens::index_t> layers;
    if (has_layers) {
        const std::string list = spec->substr(colon + 1);
        std::size_t start = 0;
        while (start <= list.size()) {
            const std::size_t comma = std::min(list.find(',', start), list.size());
            const std::string item = list.substr(start, comma - start);
            const std::size_t dash = item.find('-');
            const auto first =
                parse_number<mechlens::index_t>(item.substr(0, dash), "the layers of --ablate-direction");
            const auto last =
                dash == std::string::npos
                    ? first
                    : parse_number<mechlens::index_t>(item.substr(dash + 1), "the layers of --ablate-direction");
            if (last < first) throw usage_error("--ablate-direction: layer range '" + item + "' runs backwards");
            if (first < 0 || last >= c.n_layers)
                throw usage_error("--ablate-direction: layer " + std::to_string(last >= c.n_layers ? last : first) +
                                  " is out of range (the model has " + std::to_string(c.n_layers) + " blocks)");
            for (mechlens::index_t l = first; l <= last; ++l) layers.push_back(l);
            start = comma + 1;
        }
    }
    const mechlens::npy_array direction = mechlens::read_npy(path);
    try {
        return mechlens::direction_ablation_hooks(direction.data, c.d_model, c.n_layers, layers);
    } catch (const std::exception& e) {
        throw usage_error(std::string("--ablate-direction: ") + e.what());
    }
}

/// Registers `ablation` (when present) at each site it edits, before anything registered later at those sites.
template <mechlens::kind_set Kinds>
void attach_direction_ablation(std::optional<mechlens::direction_ablation_hooks>& ablation,
                               mechlens::basic_dynamic_hooks<Kinds>& hooks) {
    if (!ablation) return;
    for (const mechlens::site& s : ablation->sites()) (void)hooks.add(s, mechlens::as_callback(*ablation));
}

/// `--control-vector F.gguf[:STRENGTH]` (repeatable, strengths summed as llama.cpp does): strength * direction.N
/// added to blocks.N.hook_resid_post. Returns how many files were read.
inline std::size_t add_control_vectors(arguments& args, mechlens::steer_hooks<>& steer,
                                       const mechlens::model_config& c) {
    const std::vector<std::string> specs = args.all("control-vector");
    for (const std::string& spec : specs) {
        const std::size_t colon = spec.rfind(':');
        const bool has_strength = colon != std::string::npos && colon + 1 < spec.size() &&
                                  spec.find_first_not_of("0123456789.-+eE", colon + 1) == std::string::npos;
        const std::string path = has_strength ? spec.substr(0, colon) : spec;
        const float strength =
            has_strength ? parse_number<float>(spec.substr(colon + 1), "the strength of --control-vector") : 1.0f;
        const mechlens::control_vector cv = mechlens::read_control_vector(path);
        try {
            mechlens::add_control_vector(steer, cv, strength, c.d_model, c.n_layers);
        } catch (const std::exception& e) {
            throw usage_error("--control-vector " + path + ": " + e.what());
        }
    }
    return specs.size();
}

}  // namespace mechlens_cli
