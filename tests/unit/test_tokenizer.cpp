// Tests of the score-driven BPE tokenizer and the llama2.c tokenizer reader.
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_tokenizer {

namespace {

using ids = std::vector<std::int32_t>;

std::filesystem::path stories_tokenizer() { return mechlens_test::model_file("stories260K/tok512.bin"); }
std::filesystem::path aidreams_tokenizer() { return mechlens_test::model_file("aidreams260K/tok512.bin"); }

// A deliberately naive port of llama2.c run.c `encode` over a byte string: it rescans every adjacent pair after
// each merge, takes the strictly best score (so the leftmost pair wins ties), and assumes llama2.c's layout
// (BOS = 1, EOS = 2, byte b at id b + 3). The tokenizer under test must agree with it exactly.
ids runc_reference_encode(const mechlens::vocabulary& vocab, std::string_view text, bool bos, bool eos) {
    std::map<std::string, std::int32_t> sorted;  // run.c sorts the vocabulary and bsearches it
    for (std::size_t i = 0; i < vocab.pieces.size(); ++i) sorted.emplace(vocab.pieces[i], static_cast<std::int32_t>(i));
    const auto lookup = [&](const std::string& s) -> std::int32_t {
        const auto it = sorted.find(s);
        return it == sorted.end() ? -1 : it->second;
    };
    const auto continuation = [](char c) { return (static_cast<unsigned char>(c) & 0xC0U) == 0x80U; };
    ids tokens;
    if (bos) tokens.push_back(1);
    if (!text.empty()) tokens.push_back(lookup(" "));
    std::string buffer;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (!continuation(text[i])) buffer.clear();
        buffer.push_back(text[i]);
        if (i + 1 < text.size() && continuation(text[i + 1]) && buffer.size() < 4) continue;
        const std::int32_t id = lookup(buffer);
        if (id != -1) {
            tokens.push_back(id);
        } else {
            for (const char c : buffer) tokens.push_back(static_cast<std::int32_t>(static_cast<unsigned char>(c)) + 3);
        }
        buffer.clear();
    }
    while (true) {
        float best_score = -1e10F;
        std::int32_t best_id = -1;
        std::size_t best_index = 0;
        bool found = false;
        for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
            const std::string joined = vocab.pieces[static_cast<std::size_t>(tokens[i])] +
                                       vocab.pieces[static_cast<std::size_t>(tokens[i + 1])];
            const std::int32_t id = lookup(joined);
            if (id != -1 && vocab.scores[static_cast<std::size_t>(id)] > best_score) {
                best_score = vocab.scores[static_cast<std::size_t>(id)];
                best_id = id;
                best_index = i;
                found = true;
            }
        }
        if (!found) break;
        tokens[best_index] = best_id;
        tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_index) + 1);
    }
    if (eos) tokens.push_back(2);
    return tokens;
}

// Appends one code point as UTF-8.
void append_utf8(std::string& out, std::uint32_t cp) {
    const auto byte = [&](std::uint32_t v) { out.push_back(static_cast<char>(static_cast<unsigned char>(v))); };
    if (cp < 0x80U) {
        byte(cp);
    } else if (cp < 0x800U) {
        byte(0xC0U | (cp >> 6));
        byte(0x80U | (cp & 0x3FU));
    } else if (cp < 0x10000U) {
        byte(0xE0U | (cp >> 12));
        byte(0x80U | ((cp >> 6) & 0x3FU));
        byte(0x80U | (cp & 0x3FU));
    } else {
        byte(0xF0U | (cp >> 18));
        byte(0x80U | ((cp >> 12) & 0x3FU));
        byte(0x80U | ((cp >> 6) & 0x3FU));
        byte(0x80U | (cp & 0x3FU));
    }
}

// Random strings of printable ASCII (with spaces, newlines and runs of spaces).
std::vector<std::string> random_printable(std::mt19937& rng, int count) {
    std::vector<std::string> out;
    std::uniform_int_distribution<int> length(0, 80);
    std::uniform_int_distribution<int> pick(0, 99);
    std::uniform_int_distribution<int> printable(0x20, 0x7E);
    for (int k = 0; k < count; ++k) {
        std::string s;
        const int n = length(rng);
        for (int i = 0; i < n; ++i) {
            const int p = pick(rng);
            s.push_back(p < 5 ? '\n' : p < 25 ? ' ' : static_cast<char>(printable(rng)));
        }
        out.push_back(s);
    }
    return out;
}

// Random valid UTF-8: ASCII letters and spaces mixed with Latin-1, Greek, CJK and emoji code points.
std::vector<std::string> random_utf8(std::mt19937& rng, int count) {
    std::vector<std::string> out;
    std::uniform_int_distribution<int> length(0, 40);
    std::uniform_int_distribution<int> plane(0, 5);
    std::uniform_int_distribution<std::uint32_t> ascii(0x20, 0x7E), latin(0xA0, 0x24F), greek(0x370, 0x3FF),
        cjk(0x4E00, 0x9FFF), emoji(0x1F300, 0x1FAFF);
    for (int k = 0; k < count; ++k) {
        std::string s;
        const int n = length(rng);
        for (int i = 0; i < n; ++i) {
            switch (plane(rng)) {
                case 0: append_utf8(s, latin(rng)); break;
                case 1: append_utf8(s, greek(rng)); break;
                case 2: append_utf8(s, cjk(rng)); break;
                case 3: append_utf8(s, emoji(rng)); break;
                default: append_utf8(s, ascii(rng)); break;
            }
        }
        out.push_back(s);
    }
    return out;
}

// Texts every tokenizer must round-trip.
std::vector<std::string> fixed_texts() {
    return {"",
            "Once upon a time",
            "Once upon a time, there was a little girl named Lily.",
            " leading space",
            "trailing space ",
            "   three leading, two trailing  ",
            "multiple   inner    spaces",
            " ",
            "  ",
            "\n",
            "line one\nline two\n\nline four\n",
            "tabs\tand\r\ncarriage returns",
            "caf\xC3\xA9 na\xC3\xAFve \xC3\xBC"
            "ber se\xC3\xB1or",
            "emoji \xF0\x9F\x98\x80\xF0\x9F\x8E\x89 end",
            "\xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C",
            "\xE2\x80\x9CQuoted\xE2\x80\x9D \xE2\x80\x94 dash\xE2\x80\xA6",
            "<s> and </s> and <unk> and <0x41> typed as text",
            "1234567890 !@#$%^&*()_+-=[]{};':\",./<>?`~\\|"};
}

// Invalid UTF-8: stray continuation bytes, truncated sequences, over-long continuation runs, 0xFF, NUL.
std::vector<std::string> invalid_utf8_texts() {
    using namespace std::string_literals;
    return {"\x80"s,           "abc\x80\x80xyz"s,    "\xE4\xBD"s,   "trunc \xF0\x9F\x98"s, "\xFF\xFE\xFD"s,
            "\xF0\x80\x80\x80\x80\x80\x80 run"s, "A\xBF"s,  "nul\0byte"s,    "\xC3"s,    "\xC3\xA9\xA9\xA9\xA9\xA9"s};
}

// Writes raw bytes to a scratch file and returns its path.
std::filesystem::path write_scratch(const std::string& name, const std::string& bytes) {
    const auto path = mechlens_test::scratch_dir() / name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
}

// Little-endian int32 and float32 as llama2.c writes them.
void put_i32(std::string& out, std::int32_t v) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &v, 4);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(static_cast<unsigned char>(bits >> (8 * i))));
}
void put_f32(std::string& out, float v) {
    std::int32_t bits = 0;
    std::memcpy(&bits, &v, 4);
    put_i32(out, bits);
}
void put_entry(std::string& out, float score, const std::string& piece) {
    put_f32(out, score);
    put_i32(out, static_cast<std::int32_t>(piece.size()));
    out += piece;
}

// The format_error message from reading `path`, or "" when nothing was thrown.
std::string read_error(const std::filesystem::path& path) {
    try {
        (void)mechlens::read_llama2c_vocabulary(path);
    } catch (const mechlens::format_error& e) {
        return e.what();
    }
    return "";
}

// A llama2.c-layout vocabulary (specials, 256 byte pieces) with a small alphabet and many equal scores, so that
// ties between candidate merges are the rule rather than the exception.
mechlens::vocabulary tie_heavy_vocabulary(std::mt19937& rng) {
    mechlens::vocabulary v;
    const auto add = [&](std::string piece, float score, mechlens::token_kind kind) {
        v.pieces.push_back(std::move(piece));
        v.scores.push_back(score);
        v.kinds.push_back(kind);
    };
    add("<unk>", 0.0F, mechlens::token_kind::unknown);
    add("<s>", 0.0F, mechlens::token_kind::control);
    add("</s>", 0.0F, mechlens::token_kind::control);
    for (int b = 0; b < 256; ++b) {
        add(mechlens::detail::tok::byte_piece_text(static_cast<unsigned char>(b)), 0.0F, mechlens::token_kind::byte);
    }
    const std::string alphabet = "abc ";
    std::set<std::string> seen;
    for (const char c : alphabet) {
        seen.insert(std::string(1, c));
        add(std::string(1, c), -10.0F, mechlens::token_kind::normal);
    }
    std::uniform_int_distribution<int> length(2, 5), letter(0, 3), score(0, 3);
    for (int k = 0; k < 150; ++k) {
        std::string piece;
        const int n = length(rng);
        for (int i = 0; i < n; ++i) piece.push_back(alphabet[static_cast<std::size_t>(letter(rng))]);
        if (seen.insert(piece).second) add(piece, -static_cast<float>(score(rng)), mechlens::token_kind::normal);
    }
    return v;
}

}  // namespace

TEST_CASE("tokenizer: llama2.c tok512 reads with the llama2.c layout", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    const mechlens::vocabulary v = mechlens::read_llama2c_vocabulary(stories_tokenizer());
    REQUIRE(v.pieces.size() == 512);
    REQUIRE(v.scores.size() == 512);
    REQUIRE(v.kinds.size() == 512);
    CHECK(v.pieces[0] == "<unk>");
    CHECK(v.pieces[1] == "\n<s>\n");
    CHECK(v.pieces[2] == "\n</s>\n");
    CHECK(v.kinds[0] == mechlens::token_kind::unknown);
    CHECK(v.kinds[1] == mechlens::token_kind::control);
    CHECK(v.kinds[2] == mechlens::token_kind::control);
    for (int b = 0; b < 256; ++b) {
        CHECK(v.pieces[static_cast<std::size_t>(b + 3)] == mechlens::detail::tok::byte_piece_text(static_cast<unsigned char>(b)));
        CHECK(v.kinds[static_cast<std::size_t>(b + 3)] == mechlens::token_kind::byte);
    }
    CHECK(v.kinds[259] == mechlens::token_kind::normal);
    CHECK(v.pieces[403] == " Once");
    CHECK(v.scores[403] == -144.0F);
    CHECK(v.bos_id == 1);
    CHECK(v.eos_id == 2);
    CHECK(v.unknown_id == 0);
}

TEST_CASE("tokenizer: byte piece notation", "[tokenizer]") {
    using mechlens::detail::tok::parse_byte_piece;
    CHECK(parse_byte_piece("<0x0A>") == std::optional<unsigned char>(0x0A));
    CHECK(parse_byte_piece("<0xff>") == std::optional<unsigned char>(0xFF));
    CHECK_FALSE(parse_byte_piece("<0xG0>"));
    CHECK_FALSE(parse_byte_piece("<0x0A"));
    CHECK_FALSE(parse_byte_piece("<0x0AB>"));
    CHECK_FALSE(parse_byte_piece(" <0x0A>"));
    CHECK(mechlens::detail::tok::byte_piece_text(0xE2) == "<0xE2>");
}

TEST_CASE("tokenizer: stories260K encodes known texts", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    const auto tok = mechlens::bpe_tokenizer::from_llama2c(stories_tokenizer());
    REQUIRE(tok.size() == 512);
    CHECK(tok.bos_id() == 1);
    CHECK(tok.eos_id() == 2);
    CHECK(tok.encode("Once upon a time") == ids{1, 403, 407, 261, 378});
    CHECK(tok.encode("Once upon a time", false) == ids{403, 407, 261, 378});
    CHECK(tok.encode("Once upon a time", true, true) == ids{1, 403, 407, 261, 378, 2});
    CHECK(tok.encode("") == ids{1});
    CHECK(tok.encode("", false, true) == ids{2});
    CHECK(tok.encode("", false).empty());
    CHECK(tok.decode(ids{1, 403, 407, 261, 378, 2}) == "Once upon a time");
    // Without BOS the dummy-prefix space stays, as in run.c.
    CHECK(tok.decode(ids{403, 407}) == " Once upon");

    // External reference: ids printed by a throwaway stdlib-only Python script (not committed) that ports run.c's
    // encode() literally: sorted-vocabulary lookup, dummy " " prefix, code points capped at 4 bytes with byte + 3
    // fallback, then repeated highest-score (strict >, leftmost) pair merges; it read this same tok512.bin.
    CHECK(tok.encode("Lily and Tim played in the park. They were very happy!") ==
          ids{1, 317, 269, 326, 337, 266, 322, 265, 282, 295, 433, 426, 342, 382, 276, 399, 393, 443});
    CHECK(tok.encode("  two  spaces\nand a newline\n") ==
          ids{1, 410, 410, 259, 424, 414, 410, 262, 427, 412, 331, 419, 13, 412, 264, 261, 404, 424, 421, 271, 411, 13});
    CHECK(tok.encode("caf\xC3\xA9 na\xC3\xAFve \xC3\xBC"
                     "ber") == ids{1, 280, 412, 431, 485, 297, 412, 198, 178, 360, 410, 198, 191, 430, 285});
    CHECK(tok.encode("Hi \xF0\x9F\x98\x80 \xE4\xBD\xA0\xE5\xA5\xBD") ==
          ids{1, 320, 417, 410, 243, 162, 155, 131, 410, 231, 192, 163, 232, 168, 192});
    CHECK(tok.encode("\"Let's go,\" said Mom (123 + 4) = 127?") ==
          ids{1,   313, 438, 316, 439, 419, 298, 414, 432, 436, 336, 392, 287, 410, 489,
              475, 479, 472, 410, 496, 410, 484, 488, 410, 64,  410, 475, 479, 491, 450});
}

TEST_CASE("tokenizer: byte fallback uses <0xXX> pieces (byte + 3 in llama2.c files)", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    const auto tok = mechlens::bpe_tokenizer::from_llama2c(stories_tokenizer());
    // U+1F600 is not a piece of this 512-piece vocabulary: four byte tokens follow the dummy " " (410).
    const std::string emoji = "\xF0\x9F\x98\x80";
    const ids got = tok.encode(emoji, false);
    REQUIRE(got.size() == 5);
    CHECK(got[0] == 410);
    for (std::size_t i = 0; i < 4; ++i) {
        CHECK(got[i + 1] == static_cast<std::int32_t>(static_cast<unsigned char>(emoji[i])) + 3);
    }
    for (int b = 0; b < 256; ++b) {
        CHECK(tok.find(mechlens::detail::tok::byte_piece_text(static_cast<unsigned char>(b))) == std::optional<std::int32_t>(b + 3));
        CHECK(tok.decode_piece(-1, b + 3) == std::string(1, static_cast<char>(b)));
    }
    // é (U+00E9) is a piece here, ü (U+00FC) is not.
    CHECK(tok.encode("\xC3\xA9", false) == ids{410, 485});
    CHECK(tok.encode("\xC3\xBC", false) == ids{410, 0xC3 + 3, 0xBC + 3});
}

TEST_CASE("tokenizer: round trips on both llama2.c vocabularies", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    MECHLENS_REQUIRE_FILE_OR_SKIP(aidreams_tokenizer());
    std::mt19937 rng(20240601U);
    std::vector<std::string> texts = fixed_texts();
    for (auto& s : random_printable(rng, 200)) texts.push_back(std::move(s));
    for (auto& s : random_utf8(rng, 200)) texts.push_back(std::move(s));
    for (auto& s : invalid_utf8_texts()) texts.push_back(std::move(s));
    for (const auto& path : {stories_tokenizer(), aidreams_tokenizer()}) {
        const auto tok = mechlens::bpe_tokenizer::from_llama2c(path);
        for (const std::string& text : texts) {
            INFO(path.string() << " text: \"" << text << "\"");
            const ids encoded = tok.encode(text);
            CHECK(tok.decode(encoded) == text);
            CHECK(tok.decode(tok.encode(text, true, true)) == text);
            for (const std::int32_t id : encoded) CHECK((id >= 0 && id < tok.size()));
            if (!text.empty()) CHECK(encoded.size() >= 2);
        }
    }
}

TEST_CASE("tokenizer: heap merging equals run.c's rescanning reference", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    MECHLENS_REQUIRE_FILE_OR_SKIP(aidreams_tokenizer());
    std::mt19937 rng(7U);
    std::vector<std::string> texts = fixed_texts();
    for (auto& s : random_printable(rng, 300)) texts.push_back(std::move(s));
    for (auto& s : random_utf8(rng, 150)) texts.push_back(std::move(s));
    for (auto& s : invalid_utf8_texts()) texts.push_back(std::move(s));
    for (const auto& path : {stories_tokenizer(), aidreams_tokenizer()}) {
        const mechlens::vocabulary vocab = mechlens::read_llama2c_vocabulary(path);
        const mechlens::bpe_tokenizer tok(vocab);
        for (const std::string& text : texts) {
            INFO(path.string() << " text: \"" << text << "\"");
            CHECK(tok.encode(text) == runc_reference_encode(vocab, text, true, false));
            CHECK(tok.encode(text, false, true) == runc_reference_encode(vocab, text, false, true));
        }
    }
}

TEST_CASE("tokenizer: tie-breaking matches the reference when scores repeat", "[tokenizer]") {
    std::mt19937 rng(12345U);
    for (int trial = 0; trial < 20; ++trial) {
        const mechlens::vocabulary vocab = tie_heavy_vocabulary(rng);
        const mechlens::bpe_tokenizer tok(vocab);
        std::uniform_int_distribution<int> length(0, 60), letter(0, 5);
        const std::string alphabet = "abc  d";  // 'd' is not a piece: byte fallback
        int merged_somewhere = 0;
        for (int k = 0; k < 40; ++k) {
            std::string text;
            const int n = length(rng);
            for (int i = 0; i < n; ++i) text.push_back(alphabet[static_cast<std::size_t>(letter(rng))]);
            INFO("trial " << trial << " text: \"" << text << "\"");
            const ids got = tok.encode(text);
            REQUIRE(got == runc_reference_encode(vocab, text, true, false));
            CHECK(tok.decode(got) == text);
            if (got.size() < text.size() + 2) ++merged_somewhere;
        }
        CHECK(merged_somewhere > 0);
    }
}

TEST_CASE("tokenizer: aidreams260K is a different vocabulary", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(aidreams_tokenizer());
    const auto tok = mechlens::bpe_tokenizer::from_llama2c(aidreams_tokenizer());
    REQUIRE(tok.size() == 512);
    CHECK(tok.find(" ") == std::optional<std::int32_t>(429));
    CHECK_FALSE(tok.find(" Once"));
    // Same external Python run.c port as above, run on this file: " " O n ce " " u p on " a" " t" im e.
    CHECK(tok.encode("Once upon a time") == ids{1, 429, 491, 433, 295, 429, 444, 445, 265, 262, 263, 342, 430});
    CHECK(tok.decode(tok.encode("Once upon a time")) == "Once upon a time");
}

TEST_CASE("tokenizer: streaming decode_piece concatenates to decode", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    const auto tok = mechlens::bpe_tokenizer::from_llama2c(stories_tokenizer());
    std::mt19937 rng(99U);
    std::vector<std::string> texts = fixed_texts();
    for (auto& s : random_utf8(rng, 50)) texts.push_back(std::move(s));
    for (const std::string& text : texts) {
        const ids encoded = tok.encode(text, true, true);
        std::string streamed;
        std::int32_t previous = -1;
        for (const std::int32_t token : encoded) {
            streamed += tok.decode_piece(previous, token);
            previous = token;
        }
        CHECK(streamed == tok.decode(encoded));
        CHECK(streamed == text);
    }
    CHECK(tok.decode_piece(1, 403) == "Once");
    CHECK(tok.decode_piece(-1, 403) == " Once");
    CHECK(tok.decode_piece(407, 403) == " Once");
    CHECK(tok.decode_piece(-1, 13) == "\n");
}

TEST_CASE("tokenizer: control tokens are silent and bad ids throw", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    const auto tok = mechlens::bpe_tokenizer::from_llama2c(stories_tokenizer());
    CHECK(tok.decode(ids{0, 1, 2}).empty());
    CHECK(tok.decode(ids{1, 403, 2, 1, 407}) == "Onceupon");  // every BOS eats the next leading space, as in run.c
    CHECK(tok.decode(ids{}).empty());
    CHECK_THROWS_AS(tok.decode(ids{1, 512}), std::out_of_range);
    CHECK_THROWS_AS(tok.decode(ids{-1}), std::out_of_range);
    CHECK_THROWS_AS(tok.decode_piece(1, 100000), std::out_of_range);
    CHECK(tok.find("\n<s>\n") == std::optional<std::int32_t>(1));
    CHECK(tok.find(" Once") == std::optional<std::int32_t>(403));
    CHECK_FALSE(tok.find("no such piece"));
    // Control piece text typed into the input is ordinary text, never a control id.
    const ids typed = tok.encode("\n<s>\n", false);
    CHECK(std::find(typed.begin(), typed.end(), 1) == typed.end());
    CHECK(tok.decode(tok.encode("\n<s>\n")) == "\n<s>\n");
}

TEST_CASE("tokenizer: GGUF-style vocabularies need no llama2.c layout", "[tokenizer]") {
    using mechlens::token_kind;
    mechlens::vocabulary v;
    const auto add = [&](std::string piece, float score, token_kind kind) {
        v.pieces.push_back(std::move(piece));
        v.scores.push_back(score);
        v.kinds.push_back(kind);
    };
    // Specials and byte pieces in unusual places; control text "<s>" also reachable from normal pieces.
    add("h", -5.0F, token_kind::normal);        // 0
    add(" ", -5.0F, token_kind::normal);        // 1
    add("i", -5.0F, token_kind::normal);        // 2
    add("<s>", 0.0F, token_kind::control);      // 3  BOS
    add("</s>", 0.0F, token_kind::control);     // 4  EOS
    add("<unk>", 0.0F, token_kind::unknown);    // 5
    add("hi", -1.0F, token_kind::normal);       // 6
    add(" hi", -2.0F, token_kind::normal);      // 7
    add("<", -5.0F, token_kind::normal);        // 8
    add("s", -5.0F, token_kind::normal);        // 9
    add(">", -5.0F, token_kind::normal);        // 10
    add("<s", -1.0F, token_kind::normal);       // 11
    add("<0x21>", 0.0F, token_kind::byte);      // 12 '!'
    v.bos_id = 3;
    v.eos_id = 4;
    v.unknown_id = 5;
    const mechlens::bpe_tokenizer tok(v);
    CHECK(tok.encode("hi", true, true) == ids{3, 7, 4});
    CHECK(tok.encode("hi!", false) == ids{7, 12});
    CHECK(tok.encode("hi?", false) == ids{7, 5});  // no <0x3F> piece: unknown
    CHECK(tok.encode("<s>", false) == ids{1, 11, 10});
    CHECK(tok.decode(ids{3, 7, 12, 4}) == "hi!");
    CHECK(tok.decode(ids{3, 7, 5}) == "hi");
    CHECK(tok.decode(tok.encode("<s>")) == "<s>");

    // Empty kinds mean all normal, yet the special ids still decode to nothing and never come out of merges.
    mechlens::vocabulary untyped = v;
    untyped.kinds.clear();
    const mechlens::bpe_tokenizer plain(untyped);
    CHECK(plain.vocab().kinds.size() == untyped.pieces.size());
    CHECK(plain.decode(ids{3, 7, 4}) == "hi");
    CHECK(plain.encode("<s>", false) == ids{1, 11, 10});
}

TEST_CASE("tokenizer: inconsistent vocabularies are rejected", "[tokenizer]") {
    mechlens::vocabulary v;
    v.pieces = {"<unk>", "<s>", "</s>", "a"};
    v.scores = {0.0F, 0.0F, 0.0F, -1.0F};
    v.kinds = {mechlens::token_kind::unknown, mechlens::token_kind::control, mechlens::token_kind::control,
               mechlens::token_kind::normal};
    CHECK_NOTHROW(mechlens::bpe_tokenizer(v));
    auto bad_scores = v;
    bad_scores.scores.pop_back();
    CHECK_THROWS_AS(mechlens::bpe_tokenizer(bad_scores), std::invalid_argument);
    auto bad_kinds = v;
    bad_kinds.kinds.pop_back();
    CHECK_THROWS_AS(mechlens::bpe_tokenizer(bad_kinds), std::invalid_argument);
    auto bad_bos = v;
    bad_bos.bos_id = 4;
    CHECK_THROWS_AS(mechlens::bpe_tokenizer(bad_bos), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::bpe_tokenizer(mechlens::vocabulary{}), std::invalid_argument);
    auto no_bos = v;
    no_bos.bos_id = -1;
    const mechlens::bpe_tokenizer without_bos(no_bos);
    CHECK_THROWS_AS(without_bos.encode("a", true), std::invalid_argument);
    CHECK(without_bos.encode("a", false) == ids{0, 3});  // no " " and no byte pieces: the dummy prefix is unknown
}

TEST_CASE("tokenizer: malformed llama2.c tokenizer files raise format_error naming the file", "[tokenizer]") {
    std::string good;
    put_i32(good, 5);
    put_entry(good, 0.0F, "<unk>");
    put_entry(good, 0.0F, "<s>");
    put_entry(good, 0.0F, "</s>");
    put_entry(good, -1.0F, "ab");
    const auto ok = mechlens::read_llama2c_vocabulary(write_scratch("tok_good.bin", good));
    REQUIRE(ok.pieces == std::vector<std::string>{"<unk>", "<s>", "</s>", "ab"});
    CHECK(ok.scores[3] == -1.0F);

    const auto expect = [](const std::string& name, const std::string& bytes, const std::string& problem) {
        const std::string message = read_error(write_scratch(name, bytes));
        INFO("message: " << message);
        CHECK(message.find(name) != std::string::npos);
        CHECK(message.find(problem) != std::string::npos);
    };
    expect("tok_empty.bin", "", "empty file");
    expect("tok_short_header.bin", good.substr(0, 3), "too short");
    expect("tok_cut_in_score.bin", good.substr(0, good.size() - 2 - 8 + 3), "truncated");
    expect("tok_cut_in_piece.bin", good.substr(0, good.size() - 1), "truncated");
    std::string negative = good;
    put_f32(negative, 0.0F);
    put_i32(negative, -3);
    expect("tok_negative.bin", negative, "negative piece length");
    std::string huge = good;
    put_f32(huge, 0.0F);
    put_i32(huge, 0x7FFFFFFF);
    expect("tok_huge.bin", huge, "above max_token_length");
    std::string negative_max;
    put_i32(negative_max, -1);
    put_entry(negative_max, 0.0F, "a");
    expect("tok_negative_max.bin", negative_max, "negative max_token_length");
    std::string too_few;
    put_i32(too_few, 5);
    put_entry(too_few, 0.0F, "<unk>");
    expect("tok_too_few.bin", too_few, "only 1 entries");
    const std::string missing = read_error(mechlens_test::scratch_dir() / "tok_does_not_exist.bin");
    CHECK(missing.find("tok_does_not_exist.bin") != std::string::npos);
    CHECK_THROWS_AS(mechlens::bpe_tokenizer::from_llama2c(mechlens_test::scratch_dir() / "tok_empty.bin"),
                    mechlens::format_error);
}

TEST_CASE("tokenizer: long texts encode quickly and round-trip", "[tokenizer]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    const auto tok = mechlens::bpe_tokenizer::from_llama2c(stories_tokenizer());
    std::string text;
    while (text.size() < 200000) text += "Once upon a time, there was a little girl named Lily. She loved to play. ";
    const ids encoded = tok.encode(text);
    CHECK(encoded.size() < text.size() / 2);
    CHECK(tok.decode(encoded) == text);
    // A long run with no merges at all (byte fallback only) must not be quadratic either.
    const std::string junk(60000, '\xFF');
    CHECK(tok.encode(junk, false).size() == junk.size() + 1);
}

TEST_CASE("tokenizer: the GGUF vocabulary of stories260K tokenizes like tok512.bin", "[tokenizer]") {
    const auto gguf_path = mechlens_test::model_file("stories260K/stories260K.gguf");
    MECHLENS_REQUIRE_FILE_OR_SKIP(gguf_path);
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_tokenizer());
    const mechlens::bpe_tokenizer from_gguf(mechlens::load_gguf_vocabulary(gguf_path));
    const auto from_bin = mechlens::bpe_tokenizer::from_llama2c(stories_tokenizer());
    REQUIRE(from_gguf.size() == from_bin.size());
    CHECK(from_gguf.bos_id() == 1);
    // The two files spell the control pieces differently ("<s>" against "\n<s>\n") yet both decode to nothing.
    CHECK(from_gguf.decode(ids{1, 403, 2}) == "Once");
    std::mt19937 rng(31U);
    std::vector<std::string> texts = fixed_texts();
    for (auto& s : random_printable(rng, 100)) texts.push_back(std::move(s));
    for (auto& s : random_utf8(rng, 100)) texts.push_back(std::move(s));
    for (const std::string& text : texts) {
        INFO("text: \"" << text << "\"");
        const ids encoded = from_gguf.encode(text, true, true);
        CHECK(encoded == from_bin.encode(text, true, true));
        CHECK(from_gguf.decode(encoded) == text);
    }
}

TEST_CASE("tokenizer: parse_llama2c_vocabulary reads bytes like the file reader", "[tokenizer][fuzz]") {
    std::string bytes;
    put_i32(bytes, 3);
    put_entry(bytes, 0.0F, "<unk>");  // longer than max_token_length 3: rejected, naming the caller's name
    put_entry(bytes, 0.0F, "<s>");
    put_entry(bytes, 0.0F, "</s>");
    try {
        (void)mechlens::parse_llama2c_vocabulary(bytes, "in-memory tokenizer");
        FAIL("expected format_error");
    } catch (const mechlens::format_error& e) {
        CHECK(std::string(e.what()).find("in-memory tokenizer") != std::string::npos);
        CHECK(std::string(e.what()).find("above max_token_length") != std::string::npos);
    }
    bytes.replace(0, 4, std::string("\x06\0\0\0", 4));
    put_entry(bytes, -2.0F, "<0x41>");
    const mechlens::vocabulary from_bytes = mechlens::parse_llama2c_vocabulary(bytes, "in-memory tokenizer");
    const mechlens::vocabulary from_file = mechlens::read_llama2c_vocabulary(write_scratch("tok_parse.bin", bytes));
    CHECK(from_bytes.pieces == from_file.pieces);
    CHECK(from_bytes.scores == from_file.scores);
    CHECK(from_bytes.kinds == from_file.kinds);
    CHECK(from_bytes.kinds[3] == mechlens::token_kind::byte);
}

}  // namespace test_tokenizer
