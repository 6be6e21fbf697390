// `mechlens tokenize`: text to token ids, or ids to text, with any tokenizer mechlens reads.

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <variant>
#include <vector>

#include "../command.hpp"

namespace mechlens_cli {
namespace {

namespace fs = std::filesystem;

/// Either kind of tokenizer.
using any_tokenizer = std::variant<mechlens::bpe_tokenizer, mechlens::gpt2_tokenizer>;

/// GPT-2 byte-level BPE for a directory, a .json file or a GGUF whose tokenizer.ggml.model is "gpt2"; the
/// sentencepiece-style BPE for other GGUF vocabularies and for llama2.c tokenizer files.
any_tokenizer open_tokenizer(const fs::path& path) {
    if (fs::is_directory(path) || path.extension() == ".json") return mechlens::load_gpt2_tokenizer(path);
    if (path.extension() == ".gguf") {
        const mechlens::gguf_file g(path);
        if (g.get_string("tokenizer.ggml.model") == "gpt2")
            return mechlens::gpt2_tokenizer(mechlens::load_gguf_gpt2_vocabulary(g));
        return mechlens::bpe_tokenizer(mechlens::load_gguf_vocabulary(g));
    }
    return mechlens::bpe_tokenizer::from_llama2c(path);
}

std::vector<std::int32_t> parse_ids(const std::string& text) {
    std::vector<std::int32_t> ids;
    std::size_t begin = 0;
    while (begin <= text.size()) {
        const std::size_t comma = std::min(text.find(',', begin), text.size());
        ids.push_back(parse_number<std::int32_t>(text.substr(begin, comma - begin), "--decode"));
        begin = comma + 1;
    }
    return ids;
}

int run(arguments& args) {
    const fs::path path = args.require("tokenizer");
    const auto text = args.get("text");
    const auto decode = args.get("decode");
    args.reject_unknown();
    if (text.has_value() == decode.has_value()) throw usage_error("give exactly one of --text and --decode");
    const any_tokenizer tokenizer = open_tokenizer(path);
    if (decode) {
        const std::vector<std::int32_t> ids = parse_ids(*decode);
        const std::string out = std::visit([&](const auto& t) { return t.decode(ids); }, tokenizer);
        std::printf("%s\n", out.c_str());
        return 0;
    }
    // The second argument is add_bos for bpe_tokenizer (as --prompt is encoded) and match_special for GPT-2
    // (`<|endoftext|>` typed in the text is the special token, as Hugging Face encodes it).
    const std::vector<std::int32_t> ids = std::visit([&](const auto& t) { return t.encode(*text, true); }, tokenizer);
    std::string line;
    for (const std::int32_t id : ids) {
        if (!line.empty()) line += ',';
        line += std::to_string(id);
    }
    std::printf("%s\n", line.c_str());
    return 0;
}

}  // namespace

const command tokenize_command{
    "tokenize",
    "--tokenizer PATH (--text TEXT | --decode 1,2,3)\n"
    "PATH: a directory with tokenizer.json or vocab.json + merges.txt, a tokenizer.json, a GGUF (gpt2 or llama\n"
    "vocabulary) or a llama2.c tokenizer .bin. --text prints the ids on one line (llama2.c/llama: BOS first;\n"
    "GPT-2: <|endoftext|> in the text is the special token); --decode prints the text.",
    run};

}  // namespace mechlens_cli
