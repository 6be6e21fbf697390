// libFuzzer harness for GPT-2 byte-level BPE: the vocab.json + merges.txt and tokenizer.json readers, and encoding
// arbitrary bytes. The first byte picks the mode; the rest is the input:
//   0: vocab.json, a NUL byte, merges.txt (parse_gpt2_vocab_merges), then build a tokenizer and encode a text;
//   1: tokenizer.json (parse_hf_tokenizer_json), then the same;
//   2: text encoded with a small valid vocabulary (bytes, a few merges, one special token), which must decode back.
// format_error is the documented rejection of a file; anything else escaping, or a failed round trip, is a bug.
#include "fuzz_support.hpp"

namespace {

void exercise(const mechlens::gpt2_tokenizer& tok, std::string_view text) {
    for (const bool special : {false, true}) {
        const std::vector<std::int32_t> ids = tok.encode(text, special);
        for (const std::int32_t id : ids)
            if (id < 0 || id >= tok.size()) std::abort();
        const std::string back = tok.decode(ids);
        if (!special && back != text) std::abort();  // without specials every byte comes back
        mechlens_fuzz::keep(back);
    }
}

const mechlens::gpt2_tokenizer& small_tokenizer() {
    static const mechlens::gpt2_tokenizer tok = [] {
        mechlens::gpt2_vocabulary v;
        for (int b = 0; b < 256; ++b)
            v.tokens.push_back(mechlens::detail::gpt2::byte_symbol(static_cast<unsigned char>(b)));
        const std::string space = mechlens::detail::gpt2::byte_symbol(' ');
        v.merges = {{"t", "h"}, {space, "th"}, {"th", "e"}, {space, "the"}, {"e", "e"}, {"ee", "ee"}, {space, space}};
        for (const auto& [a, b] : v.merges) v.tokens.push_back(a + b);
        v.tokens.emplace_back("<|endoftext|>");
        v.special_ids = {static_cast<std::int32_t>(v.tokens.size() - 1)};
        return mechlens::gpt2_tokenizer(std::move(v));
    }();
    return tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
    const std::string_view sample = "The cat's 12 tokens: \xC3\xA9\xE6\x97\xA5 \xF0\x9F\xA6\x99<|endoftext|>  \n\n";
    try {
        switch (data[0] % 3) {
            case 0: {
                const std::size_t nul = input.find('\0');
                const std::string_view vocab = input.substr(0, nul);
                const std::string_view merges = nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);
                exercise(mechlens::gpt2_tokenizer(
                             mechlens::parse_gpt2_vocab_merges(vocab, "fuzz/vocab.json", merges, "fuzz/merges.txt")),
                         sample);
                break;
            }
            case 1:
                exercise(mechlens::gpt2_tokenizer(mechlens::parse_hf_tokenizer_json(input, "fuzz/tokenizer.json")),
                         sample);
                break;
            default: exercise(small_tokenizer(), input); break;
        }
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
