// libFuzzer harness for the llama2.c tokenizer file reader (tokenizer.bin / tok512.bin layout): parse from
// memory, build a bpe_tokenizer from the vocabulary and round-trip a short text. format_error is the documented
// rejection; a vocabulary the reader accepts must always make a tokenizer, so anything else is a bug.
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    mechlens::vocabulary v;
    try {
        v = mechlens::parse_llama2c_vocabulary(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.bin");
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
        return 0;
    }
    if (v.pieces.size() < 3 || v.scores.size() != v.pieces.size() || v.kinds.size() != v.pieces.size()) std::abort();
    const mechlens::bpe_tokenizer tok(std::move(v));
    const std::vector<std::int32_t> ids = tok.encode("Once upon a time, Lily saw a big red ball. \xC3\xA9\xF0\x9F\x99\x82");
    mechlens_fuzz::keep(tok.decode(ids));
    return 0;
}
