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
#include "../common.hpp"

namespace mechlens_cli {
namespace tokenize_impl {

namespace fs = std::filesystem;

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
    const text_tokenizer tokenizer = open_tokenizer(path);
    if (decode) {
        const std::vector<std::int32_t> ids = parse_ids(*decode);
        const std::string out = tokenizer.decode(ids);
        std::printf("%s\n", out.c_str());
        return 0;
    }
    // The second argument is add_bos for bpe_tokenizer (as --prompt is encoded) and match_special for GPT-2
    // (`<|endoftext|>` typed in the text is the special token, as Hugging Face encodes it).
    const std::vector<std::int32_t> ids =
        std::visit([&](const auto& t) { return t.encode(*text, true); }, tokenizer.get());
    std::string line;
    for (const std::int32_t id : ids) {
        if (!line.empty()) line += ',';
        line += std::to_string(id);
    }
    std::printf("%s\n", line.c_str());
    return 0;
}

}  // namespace tokenize_impl

const command tokenize_command{
    "tokenize",
    "--tokenizer PATH (--text TEXT | --decode 1,2,3)\n"
    "PATH: a directory with tokenizer.json or vocab.json + merges.txt, a tokenizer.json, a GGUF (gpt2 or llama\n"
    "vocabulary) or a llama2.c tokenizer .bin. --text prints the ids on one line (llama2.c/llama: BOS first;\n"
    "GPT-2: <|endoftext|> in the text is the special token); --decode prints the text.",
    tokenize_impl::run};

}  // namespace mechlens_cli
