#pragma once
// What the commands share, written once: reading --model (with the weight-processing flags), --tokenizer and exactly
// one of --prompt/--tokens, loading and processing the model, finding its tokenizer (either family; none for a
// training checkpoint), showing tokens, positions, printing sites.

#include <mechlens/mechlens.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "arguments.hpp"

namespace mechlens_cli {

/// Either tokenizer family the CLI reads, behind the few operations the commands need: the llama2.c/sentencepiece
/// score-driven BPE (llama2.c files, llama GGUF vocabularies) or GPT-2's byte-level BPE (tokenizer.json,
/// vocab.json + merges.txt, gpt2 GGUF vocabularies).
class text_tokenizer {
public:
    /// A sentencepiece-style tokenizer.
    explicit text_tokenizer(mechlens::bpe_tokenizer tokenizer) : tokenizer_(std::move(tokenizer)) {}
    /// A GPT-2 byte-level tokenizer.
    explicit text_tokenizer(mechlens::gpt2_tokenizer tokenizer) : tokenizer_(std::move(tokenizer)) {}

    /// `text` as a prompt, BOS first: sentencepiece's BOS, or GPT-2's `<|endoftext|>` (as TransformerLens prepends
    /// it; nothing when the vocabulary has none), with `<|endoftext|>` typed in the text matched as that token.
    [[nodiscard]] std::vector<std::int32_t> encode_prompt(std::string_view text) const;
    /// The text of a token sequence.
    [[nodiscard]] std::string decode(std::span<const std::int32_t> tokens) const;
    /// The text `token` adds after `previous` (sentencepiece drops the space after BOS; GPT-2 ignores `previous`).
    [[nodiscard]] std::string piece(std::int32_t previous, std::int32_t token) const;
    /// The id generation stops at when the model emits it as a beginning of sequence (-1: none).
    [[nodiscard]] std::int32_t bos_id() const;
    /// The id generation stops after (-1: none).
    [[nodiscard]] std::int32_t eos_id() const;
    /// The tokenizer itself.
    [[nodiscard]] const std::variant<mechlens::bpe_tokenizer, mechlens::gpt2_tokenizer>& get() const noexcept {
        return tokenizer_;
    }

private:
    std::variant<mechlens::bpe_tokenizer, mechlens::gpt2_tokenizer> tokenizer_;
};

/// A tokenizer file or folder: GPT-2 byte-level BPE for a directory (tokenizer.json, or vocab.json + merges.txt), a
/// `.json` file or a GGUF whose tokenizer.ggml.model is "gpt2"; sentencepiece-style BPE for other GGUF
/// vocabularies and for llama2.c tokenizer files.
text_tokenizer open_tokenizer(const std::filesystem::path& path);

/// The tokenizer for the model at `model_path` (already loaded, so its format is known): --tokenizer (see
/// open_tokenizer), else a model folder's tokenizer.json or vocab.json + merges.txt (GPT-2 BPE, whichever loader
/// reads the folder), else a GGUF model's own vocabulary, else the one tok*.bin or tokenizer.bin beside a llama2.c
/// model. Throws usage_error when there is none: a training checkpoint, a folder without tokenizer files and a GGUF
/// without a vocabulary have none.
text_tokenizer resolve_tokenizer(const std::filesystem::path& model_path,
                                 const std::optional<std::string>& explicit_path);

/// resolve_tokenizer when the model has a tokenizer or --tokenizer names one; nullopt (tokens shown as ids) when
/// the model has none and none was asked for, or when the files beside it do not read (a one-line note on stderr).
std::optional<text_tokenizer> optional_tokenizer(const std::filesystem::path& model_path,
                                                 const std::optional<std::string>& explicit_path);

/// TransformerLens's weight processing, applied after loading (model/weight_processing.hpp): each leaves the
/// log-probabilities unchanged and makes the weights easier to read.
struct weight_processing {
    bool fold_ln = false;                 ///< --fold-ln: norms' gains and LayerNorm biases into the next weights.
    bool center_writing_weights = false;  ///< --center-writing-weights: writers to the stream lose their mean.
    bool center_unembed = false;          ///< --center-unembed: W_U and b_U lose their mean over the vocabulary.
    bool fold_value_biases = false;       ///< --fold-value-biases: b_V into b_O.
    bool all = false;  ///< --process-weights: each of the four the model allows (TransformerLens's from_pretrained).
    /// True when any processing was asked for.
    [[nodiscard]] bool any() const noexcept {
        return fold_ln || center_writing_weights || center_unembed || fold_value_biases || all;
    }
};

/// The options above, which take no value (main.cpp hands them to `arguments` as flags).
inline const std::set<std::string> weight_processing_flags{"fold-ln", "center-writing-weights", "center-unembed",
                                                           "fold-value-biases", "process-weights"};

/// --model PATH and the weight-processing flags: what every command that loads a model reads.
struct model_options {
    std::filesystem::path path;     ///< --model (required)
    weight_processing processing;   ///< --fold-ln, --center-writing-weights, ... --process-weights
};

/// Reads model_options (throws usage_error without --model).
model_options read_model_options(arguments& args);

/// Loads the model (load_model: any file format or folder) and applies the processing asked for, in
/// TransformerLens's order (fold_ln, centre the writing weights, centre the unembedding, fold the value biases) on
/// an owned, untied copy. Throws usage_error (one line) for a flag the model cannot take: --fold-ln without norms,
/// --center-writing-weights without LayerNorm, --fold-value-biases without linear biases; --process-weights skips
/// those silently, as TransformerLens does.
mechlens::transformer open_model(const model_options& options);

/// --model PATH, [--tokenizer PATH], and --prompt TEXT or --tokens IDS: the options of every one-prompt command.
struct prompt_options {
    std::filesystem::path model;           ///< --model (required)
    weight_processing processing;          ///< The weight-processing flags
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
    mechlens::transformer model;              ///< From open_model: any format load_model reads, processed as asked.
    std::vector<std::int32_t> tokens;         ///< --prompt encoded (BOS first), or --tokens.
    std::optional<text_tokenizer> tokenizer;  ///< Present when --prompt needed it or `use` is display.
};

/// Throws usage_error unless exactly one of --prompt and --tokens was given, then loads the model, finds its
/// tokenizer as `use` asks and reads the tokens.
prompt_run open_prompt(const prompt_options& options, tokenizer_use use);

/// The modules spliced into a command's forward passes: SAELens folders and circuit-tracer transcoders.
struct splice_options {
    std::vector<std::string> sae;          ///< --sae DIR (repeatable): spliced at cfg.json's hook_name, error term on
    std::vector<std::string> sae_replace;  ///< --sae-replace DIR (repeatable): the reconstruction replaces the site
    std::optional<std::string> transcoder;          ///< --transcoder PATH: a circuit-tracer file or folder, error term
    std::optional<std::string> transcoder_replace;  ///< --transcoder-replace PATH: the same, replacing the MLP output
    std::optional<std::string> layer;               ///< --layer L: the block of the transcoder
    /// True when nothing is spliced.
    [[nodiscard]] bool empty() const noexcept {
        return sae.empty() && sae_replace.empty() && !transcoder && !transcoder_replace;
    }
};

/// Reads splice_options (throws usage_error for --layer without a transcoder, a transcoder without --layer, or both
/// --transcoder and --transcoder-replace).
splice_options read_splice_options(arguments& args);

/// One module to splice: the host's name and the module.
struct spliced_module {
    std::string host;                                 ///< E.g. "blocks.0.hook_resid_post".
    std::shared_ptr<const mechlens::splice> module;   ///< An sae_splice or a transcoder_splice.
    std::string origin;                               ///< "--sae DIR", for error messages.
};

/// Reads the SAEs and the transcoder asked for and checks them against the model: a folder or file that does not
/// read is a format_error naming it; a hook that is not a site of the model (or cannot host a splice), a head index,
/// a width (d_in) that disagrees with the site's, or two modules at one site are a usage_error naming the option.
std::vector<spliced_module> load_splices(const splice_options& options, const mechlens::model_config& config);

/// Attaches `modules` to `hooks` (throws usage_error naming the option when the registry refuses one).
template <mechlens::kind_set Kinds>
void attach_splices(const std::vector<spliced_module>& modules, mechlens::basic_dynamic_hooks<Kinds>& hooks) {
    for (const spliced_module& m : modules) {
        try {
            (void)hooks.splice(m.host, m.module);
        } catch (const std::invalid_argument& e) {
            throw usage_error(m.origin + ": " + e.what());
        }
    }
}

/// A token shown as `id 'text'` when a tokenizer is at hand, else as its id.
std::string show_token(const std::optional<text_tokenizer>& tokenizer, std::int32_t token);

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
