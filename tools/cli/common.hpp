#pragma once
// What the commands share, written once: reading --model/--tokenizer and exactly one of --prompt/--tokens, loading
// the model, finding its tokenizer (none for a training checkpoint), showing tokens, positions, printing sites.

#include <mechlens/mechlens.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "arguments.hpp"

namespace mechlens_cli {

/// The tokenizer for the model at `model_path` (already loaded, so its format is known): --tokenizer (a `.gguf`
/// file's vocabulary or a llama2.c tokenizer file), else a GGUF model's own vocabulary, else the one tok*.bin or
/// tokenizer.bin beside a llama2.c model. Throws usage_error when there is none: a training checkpoint has none.
mechlens::bpe_tokenizer resolve_tokenizer(const std::filesystem::path& model_path,
                                          const std::optional<std::string>& explicit_path);

/// resolve_tokenizer when the model has a tokenizer or --tokenizer names one; nullopt (tokens shown as ids) when
/// the model has none and none was asked for.
std::optional<mechlens::bpe_tokenizer> optional_tokenizer(const std::filesystem::path& model_path,
                                                          const std::optional<std::string>& explicit_path);

/// --model PATH, [--tokenizer PATH], and --prompt TEXT or --tokens IDS: the options of every one-prompt command.
struct prompt_options {
    std::filesystem::path model;           ///< --model (required)
    std::optional<std::string> tokenizer;  ///< --tokenizer
    std::optional<std::string> prompt;     ///< --prompt: text, encoded with BOS
    std::optional<std::string> tokens;     ///< --tokens: comma-separated ids
};

/// Reads prompt_options (throws usage_error without --model). Checking that exactly one of --prompt and --tokens
/// was given is open_prompt's, so that a command first reports its own missing or unknown options.
prompt_options read_prompt_options(arguments& args);

/// Whether a command wants the tokenizer beyond encoding --prompt.
enum class tokenizer_use {
    prompt_only,  ///< Only to encode --prompt (--tokens runs without one).
    display,      ///< Also to show tokens as text when the model has one (ids otherwise).
};

/// A loaded model, the tokens to run it on, and its tokenizer when there is one.
struct prompt_run {
    mechlens::transformer model;                       ///< From load_model: llama2.c, GGUF or training checkpoint.
    std::vector<std::int32_t> tokens;                  ///< --prompt encoded (BOS first), or --tokens.
    std::optional<mechlens::bpe_tokenizer> tokenizer;  ///< Present when --prompt needed it or `use` is display.
};

/// Throws usage_error unless exactly one of --prompt and --tokens was given, then loads the model, finds its
/// tokenizer as `use` asks and reads the tokens.
prompt_run open_prompt(const prompt_options& options, tokenizer_use use);

/// A token shown as `id 'text'` when a tokenizer is at hand, else as its id.
std::string show_token(const std::optional<mechlens::bpe_tokenizer>& tokenizer, std::int32_t token);

/// The position an option names: -1 is the last of `positions`.
mechlens::index_t resolve_position(const std::optional<std::string>& text, mechlens::index_t positions);

/// Prints each cached site with its shape, one per line: "blocks.0.hook_resid_post (1, 5, 64)".
void print_sites(const mechlens::activation_cache& cache);

/// `tokens` as a batch of one, (1, pos).
inline mechlens::tensor_view<const std::int32_t, 2> as_batch(const std::vector<std::int32_t>& tokens) {
    return mechlens::tensor_view<const std::int32_t, 2>(tokens.data(),
                                                        {1, static_cast<mechlens::index_t>(tokens.size())});
}

/// The pieces appended in order: GCC 12 at -O3 reports a spurious -Wrestrict overlap in "literal" + std::string.
template <class... Parts>
std::string concat(const Parts&... parts) {
    std::string out;
    (out.append(parts), ...);
    return out;
}

}  // namespace mechlens_cli
