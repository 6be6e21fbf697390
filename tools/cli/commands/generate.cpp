// `mechlens generate`: sampling or greedy continuation, optionally with steering vectors and ablations.

#include <mechlens/mechlens.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"
#include "../medicine_options.hpp"

namespace mechlens_cli {
namespace generate_impl {

/// Adds `--steer NAME:VECTOR.npy:ALPHA[:from=P][:keep-norm]` targets: alpha * the vector (sized like the site's last
/// axis) at every position, or at positions P and later; with keep-norm, each steered row is rescaled to its norm.
void add_steering(mechlens::steer_hooks<>& steer, const std::vector<std::string>& specs,
                  const mechlens::model_config& config) {
    for (const std::string& spec : specs) {
        std::vector<std::string> parts;
        for (std::size_t start = 0;;) {
            const std::size_t colon = spec.find(':', start);
            parts.push_back(spec.substr(start, colon - start));
            if (colon == std::string::npos) break;
            start = colon + 1;
        }
        if (parts.size() < 3)
            throw usage_error("--steer expects NAME:VECTOR.npy:ALPHA[:from=P][:keep-norm], got '" + spec + "'");
        const mechlens::site target = mechlens::site_from_name(parts[0], config);
        const mechlens::npy_array vector = mechlens::read_npy(parts[1]);
        const float alpha = parse_number<float>(parts[2], "the alpha of --steer");
        mechlens::selection where;
        mechlens::steering_norm norm = mechlens::steering_norm::free;
        for (std::size_t k = 3; k < parts.size(); ++k) {
            if (parts[k] == "keep-norm") {
                norm = mechlens::steering_norm::preserve;
            } else if (parts[k].rfind("from=", 0) == 0) {
                const auto from = parse_number<mechlens::index_t>(parts[k].substr(5), "the from= of --steer");
                if (from < 0 || from >= config.n_ctx)
                    throw usage_error("--steer: from=" + parts[k].substr(5) + " is outside [0, n_ctx)");
                std::vector<mechlens::index_t> positions;
                for (mechlens::index_t p = from; p < config.n_ctx; ++p) positions.push_back(p);
                where.positions = mechlens::index_set(positions);
            } else {
                throw usage_error("--steer: unknown part '" + parts[k] + "' (from=P or keep-norm)");
            }
        }
        steer.add(target, vector.data, alpha, where, norm);
    }
}

/// Adds `--ablate NAME[:head=H]` targets: zero ablation of a whole site, or of one head of a site with a head axis.
void add_ablations(mechlens::ablate_hooks<>& ablate, const std::vector<std::string>& specs,
                   const mechlens::model_config& config) {
    for (const std::string& spec : specs) {
        const std::size_t colon = spec.find(':');
        const mechlens::site target = mechlens::site_from_name(spec.substr(0, colon), config);
        mechlens::selection where;
        if (colon != std::string::npos) {
            const std::string option = spec.substr(colon + 1);
            if (option.rfind("head=", 0) != 0)
                throw usage_error("--ablate expects NAME or NAME:head=H, got '" + spec + "'");
            where.heads = {parse_number<mechlens::index_t>(option.substr(5), "the head of --ablate")};
        }
        ablate.zero(target, where);
    }
}

int run(arguments& args) {
    const prompt_options input = read_prompt_options(args);
    mechlens::generation_options options;
    options.max_new_tokens = parse_number<mechlens::index_t>(args.get("n").value_or("64"), "-n");
    if (auto t = args.get("temperature")) options.sampling.temperature = parse_number<float>(*t, "--temperature");
    if (auto p = args.get("top-p")) options.sampling.top_p = parse_number<float>(*p, "--top-p");
    if (auto s = args.get("seed")) options.sampling.seed = parse_number<std::uint64_t>(*s, "--seed");
    const std::vector<std::string> steer_specs = args.all("steer");
    const std::vector<std::string> ablate_specs = args.all("ablate");
    const splice_options splice_input = read_splice_options(args);
    if (options.max_new_tokens < 0) throw usage_error("-n must be >= 0");

    const prompt_run run = open_prompt(input, tokenizer_use::display);
    mechlens::steer_hooks<> steer;
    mechlens::ablate_hooks<> ablate;
    add_steering(steer, steer_specs, run.model.config());
    const std::size_t control_vectors = add_control_vectors(args, steer, run.model.config());
    add_ablations(ablate, ablate_specs, run.model.config());
    std::optional<mechlens::direction_ablation_hooks> ablation = read_direction_ablation(args, run.model.config());
    args.reject_unknown();
    const std::vector<spliced_module> splices = load_splices(splice_input, run.model.config());
    mechlens::dynamic_hooks spliced(run.model.config());
    attach_direction_ablation(ablation, spliced);
    attach_splices(splices, spliced);
    const std::optional<text_tokenizer>& tokenizer = run.tokenizer;
    if (tokenizer) {
        options.bos_id = tokenizer->bos_id();
        options.eos_id = tokenizer->eos_id();
        std::fputs(input.prompt ? input.prompt->c_str() : tokenizer->decode(run.tokens).c_str(), stdout);
    } else {
        // No tokenizer (a grown model): no token is special, and the sequence is printed as ids.
        options.stop_at_bos = options.stop_at_eos = false;
        for (std::size_t i = 0; i < run.tokens.size(); ++i) std::printf(i ? " %d" : "%d", run.tokens[i]);
    }
    std::int32_t previous = run.tokens.back();
    const auto on_token = [&](std::int32_t token) {
        if (tokenizer)
            std::fputs(tokenizer->piece(previous, token).c_str(), stdout);
        else
            std::printf(" %d", token);
        std::fflush(stdout);
        previous = token;
    };
    const auto started = std::chrono::steady_clock::now();
    // Without interventions, the plain (no_hooks) forward pass; with them, steering (and control vectors) first,
    // then ablation, then the direction ablation and the splices (which see the activations as steered and ablated).
    const auto generated =
        !splices.empty() || ablation
            ? mechlens::generate(run.model, run.tokens, options, on_token, mechlens::compose(steer, ablate, spliced))
        : steer_specs.empty() && ablate_specs.empty() && control_vectors == 0
            ? mechlens::generate(run.model, run.tokens, options, on_token)
            : mechlens::generate(run.model, run.tokens, options, on_token, mechlens::compose(steer, ablate));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("\n");
    std::fprintf(stderr, "%zu tokens in %.3f s (%.1f tok/s)\n", generated.size(), seconds,
                 seconds > 0 ? static_cast<double>(generated.size()) / seconds : 0.0);
    return 0;
}

}  // namespace generate_impl

const command generate_command{
    "generate",
    "--model PATH [--tokenizer PATH] (--prompt TEXT | --tokens IDS) [-n N] [--temperature T] [--top-p P] [--seed S]\n"
    "[--steer NAME:VECTOR.npy:ALPHA[:from=P][:keep-norm]]... [--ablate NAME[:head=H]]...\n"
    "[--sae DIR]... [--sae-replace DIR]... [(--transcoder | --transcoder-replace) PATH --layer L]\n"
    "[--control-vector F.gguf[:STRENGTH]]... (llama.cpp's: strength * direction.N added to blocks.N.hook_resid_post)\n"
    "[--ablate-direction D.npy[:LAYERS]] (removed from hook_resid_pre, hook_attn_out, hook_mlp_out of LAYERS)\n"
    "without a tokenizer (--tokens on a checkpoint), prints the prompt and new tokens as ids and never stops early",
    generate_impl::run};

}  // namespace mechlens_cli
