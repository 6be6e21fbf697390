// What the commands share (see common.hpp).

#include "common.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace fs = std::filesystem;

namespace mechlens_cli {

mechlens::bpe_tokenizer resolve_tokenizer(const fs::path& model_path, const std::optional<std::string>& explicit_path) {
    if (explicit_path) {
        const fs::path path(*explicit_path);
        if (path.extension() == ".gguf") return mechlens::bpe_tokenizer(mechlens::load_gguf_vocabulary(path));
        return mechlens::bpe_tokenizer::from_llama2c(path);
    }
    switch (mechlens::sniff_model_format(model_path)) {
        case mechlens::model_format::gguf:
            return mechlens::bpe_tokenizer(mechlens::load_gguf_vocabulary(model_path));
        case mechlens::model_format::checkpoint:
            // A grown model's vocabulary is its task's; a tokenizer file beside it would be someone else's.
            throw usage_error(model_path.string() +
                              " is a training checkpoint, which has no tokenizer: give token ids (--tokens, or "
                              "--clean-tokens and --corrupt-tokens) or --tokenizer PATH");
        case mechlens::model_format::llama2c:
            break;
    }
    std::vector<fs::path> candidates;
    const fs::path directory = model_path.has_parent_path() ? model_path.parent_path() : fs::path(".");
    for (const auto& entry : fs::directory_iterator(directory)) {
        const std::string name = entry.path().filename().string();
        const bool tokenizer_name =
            name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && entry.path().extension() == ".bin");
        if (entry.is_regular_file() && tokenizer_name && entry.path() != model_path) candidates.push_back(entry.path());
    }
    if (candidates.size() != 1)
        throw usage_error(std::to_string(candidates.size()) + " tokenizer files (tok*.bin, tokenizer.bin) beside " +
                          model_path.string() + "; pass --tokenizer PATH");
    return mechlens::bpe_tokenizer::from_llama2c(candidates.front());
}

std::optional<mechlens::bpe_tokenizer> optional_tokenizer(const fs::path& model_path,
                                                          const std::optional<std::string>& explicit_path) {
    try {
        return resolve_tokenizer(model_path, explicit_path);
    } catch (const usage_error&) {
        if (explicit_path) throw;  // asked for explicitly
        return std::nullopt;
    }
}

prompt_options read_prompt_options(arguments& args) {
    prompt_options out;
    out.model = args.require("model");
    out.tokenizer = args.get("tokenizer");
    out.prompt = args.get("prompt");
    out.tokens = args.get("tokens");
    return out;
}

prompt_run open_prompt(const prompt_options& options, tokenizer_use use) {
    if (options.prompt.has_value() == options.tokens.has_value())
        throw usage_error("give exactly one of --prompt and --tokens");
    prompt_run out{mechlens::transformer(mechlens::load_model(options.model)), {}, std::nullopt};
    if (options.prompt) {
        out.tokenizer = resolve_tokenizer(options.model, options.tokenizer);
        out.tokens = out.tokenizer->encode(*options.prompt, true);
    } else {
        if (use == tokenizer_use::display) out.tokenizer = optional_tokenizer(options.model, options.tokenizer);
        out.tokens = parse_token_list(*options.tokens);
    }
    return out;
}

std::string show_token(const std::optional<mechlens::bpe_tokenizer>& tokenizer, std::int32_t token) {
    if (!tokenizer) return std::to_string(token);
    std::string text = tokenizer->decode_piece(0, token);
    std::replace(text.begin(), text.end(), '\n', ' ');
    return std::to_string(token) + " '" + text + "'";
}

mechlens::index_t resolve_position(const std::optional<std::string>& text, mechlens::index_t positions) {
    const auto p = text ? parse_number<mechlens::index_t>(*text, "--position") : mechlens::index_t{-1};
    const mechlens::index_t resolved = p < 0 ? positions + p : p;
    if (resolved < 0 || resolved >= positions)
        throw usage_error("--position " + std::to_string(p) + " is outside a " + std::to_string(positions) +
                          "-token sequence");
    return resolved;
}

void print_sites(const mechlens::activation_cache& cache) {
    for (const mechlens::site& s : cache.sites()) {
        std::string shape;
        for (const mechlens::index_t e : cache.at(s).shape) {
            if (!shape.empty()) shape += ", ";
            shape += std::to_string(e);
        }
        std::printf("%s (%s)\n", mechlens::to_string(s).c_str(), shape.c_str());
    }
}

}  // namespace mechlens_cli
