// Tests of GPT-2's byte-level BPE tokenizer: the pre-tokenisation regex written by hand, the byte alphabet, merges,
// special tokens, the three file formats (vocab.json + merges.txt, tokenizer.json, GGUF), llama.cpp's test vectors
// and a fixture of hard strings from an independent Python implementation (tests/reference/gpt2_tokenizer_reference.py).
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_gpt2_tokenizer {

namespace {

namespace fs = std::filesystem;
using ids = std::vector<std::int32_t>;

fs::path gguf_path() { return mechlens_test::tokenizers_dir() / "gpt2" / "ggml-vocab-gpt-2.gguf"; }
fs::path hf_dir() { return mechlens_test::tokenizers_dir() / "gpt2-hf"; }
fs::path hard_strings_path() { return mechlens_test::fixtures_dir() / "gpt2_tokenizer" / "hard_strings.json"; }

std::vector<std::string> split_pieces(std::string_view text) {
    std::vector<std::string> out;
    for (const std::string_view p : mechlens::detail::gpt2::pretokenize(text)) out.emplace_back(p);
    return out;
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

fs::path write_scratch(const std::string& name, const std::string& bytes) {
    const fs::path dir = mechlens_test::scratch_dir() / "gpt2_tokenizer";
    fs::create_directories(dir);
    const fs::path p = dir / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
}

// llama.cpp's test-tokenizer-0 files: texts separated by "\n__ggml_vocab_test__\n" (one after the last text too),
// and one line of space-separated ids per text.
std::vector<std::pair<std::string, ids>> llama_cpp_vectors() {
    const std::string inp = read_file(gguf_path().string() + ".inp");
    const std::string out = read_file(gguf_path().string() + ".out");
    const std::string separator = "\n__ggml_vocab_test__\n";
    std::vector<std::string> texts;
    for (std::size_t pos = 0, next; (next = inp.find(separator, pos)) != std::string::npos; pos = next + separator.size())
        texts.push_back(inp.substr(pos, next - pos));
    std::vector<std::pair<std::string, ids>> cases;
    std::istringstream lines(out);
    std::string line;
    for (const std::string& text : texts) {
        REQUIRE(std::getline(lines, line));
        std::istringstream numbers(line);
        ids expected;
        for (std::int32_t id = 0; numbers >> id;) expected.push_back(id);
        cases.emplace_back(text, expected);
    }
    return cases;
}

// A small valid vocabulary: the 256 byte tokens (ids 0..255 in byte order), then what `merges` make, then extras.
mechlens::gpt2_vocabulary tiny_vocabulary(const std::vector<std::pair<std::string, std::string>>& merges,
                                          const std::vector<std::string>& extra = {}) {
    mechlens::gpt2_vocabulary v;
    for (int b = 0; b < 256; ++b) v.tokens.push_back(mechlens::detail::gpt2::byte_symbol(static_cast<unsigned char>(b)));
    for (const auto& [a, b] : merges) v.tokens.push_back(a + b);
    for (const std::string& e : extra) v.tokens.push_back(e);
    v.merges = merges;
    return v;
}

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const mechlens::format_error& e) {
        return e.what();
    }
    FAIL("no format_error");
    return {};
}

void require_error(const std::string& message, const std::string& where, const std::string& problem) {
    INFO(message);
    CHECK(message.find(where) != std::string::npos);
    CHECK(message.find(problem) != std::string::npos);
    CHECK(message.find('\n') == std::string::npos);
}

}  // namespace

TEST_CASE("gpt2 tokenizer: pre-tokenisation follows GPT-2's regex", "[tokenizer][gpt2]") {
    using v = std::vector<std::string>;
    CHECK(split_pieces("Hello world") == v{"Hello", " world"});
    CHECK(split_pieces("Hello, world!") == v{"Hello", ",", " world", "!"});
    CHECK(split_pieces("I'm it's we'll they've you're he'd can't") ==
          v{"I", "'m", " it", "'s", " we", "'ll", " they", "'ve", " you", "'re", " he", "'d", " can", "'t"});
    CHECK(split_pieces("'S 'Ve") == v{"'", "S", " '", "Ve"});  // contractions are case-sensitive
    CHECK(split_pieces("!!'s") == v{"!!'", "s"});                // an "other" run takes the apostrophe
    CHECK(split_pieces("  two") == v{" ", " two"});              // a run of spaces gives its last one away
    CHECK(split_pieces("x   ") == v{"x", "   "});                // ... unless it ends the text
    CHECK(split_pieces("  \tx") == v{"  ", "\t", "x"});          // only U+0020 joins the next word
    CHECK(split_pieces("a\n\nb") == v{"a", "\n", "\n", "b"});
    CHECK(split_pieces("\r\n") == v{"\r\n"});
    CHECK(split_pieces(" 123abc 4.5") == v{" 123", "abc", " 4", ".", "5"});
    CHECK(split_pieces(" !!?") == v{" !!?"});
    CHECK(split_pieces("cafe\xCC\x81") == v{"cafe", "\xCC\x81"});  // a combining mark is not a letter
    CHECK(split_pieces("\xE6\x97\xA5\xE6\x9C\xAC 3") == v{"\xE6\x97\xA5\xE6\x9C\xAC", " 3"});
    CHECK(split_pieces("a\xFF\xFE b") == v{"a", "\xFF\xFE", " b"});  // invalid bytes count as "other"
    CHECK(split_pieces("").empty());
    CHECK(split_pieces(" ") == v{" "});
}

TEST_CASE("gpt2 tokenizer: Unicode classes and the byte alphabet", "[tokenizer][gpt2]") {
    using mechlens::detail::gpt2::classify;
    using cls = mechlens::detail::unicode::code_point_class;
    CHECK(classify(U'a') == cls::letter);
    CHECK(classify(0xE9) == cls::letter);     // é
    CHECK(classify(0x4E00) == cls::letter);   // CJK
    CHECK(classify(0x1D538) == cls::letter);  // mathematical double-struck A
    CHECK(classify(0x0663) == cls::number);   // Arabic-Indic three
    CHECK(classify(0xBD) == cls::number);     // ½
    CHECK(classify(0x216B) == cls::number);   // Roman numeral twelve
    CHECK(classify(0x3000) == cls::whitespace);
    CHECK(classify(0xA0) == cls::whitespace);
    CHECK(classify(0x0B) == cls::whitespace);
    CHECK(classify(0x1C) == cls::other);      // Python's str.isspace says yes; \s in the regex module says no
    CHECK(classify(0x200B) == cls::other);    // zero-width space is not White_Space
    CHECK(classify(0x0301) == cls::other);    // combining acute
    CHECK(classify(0x1F999) == cls::other);   // emoji
    CHECK(classify(0x10FFFF) == cls::other);
    CHECK(std::string(mechlens::detail::unicode::table_version) == "14.0.0");

    std::vector<bool> seen(512, false);
    for (int b = 0; b < 256; ++b) {
        const std::uint32_t cp = mechlens::detail::gpt2::byte_to_code_point[static_cast<std::size_t>(b)];
        REQUIRE(cp < 512);
        CHECK_FALSE(seen[cp]);
        seen[cp] = true;
        CHECK(mechlens::detail::gpt2::code_point_to_byte(cp) == b);
    }
    CHECK(mechlens::detail::gpt2::byte_symbol(' ') == "\xC4\xA0");   // Ġ
    CHECK(mechlens::detail::gpt2::byte_symbol('\n') == "\xC4\x8A");  // Ċ
    CHECK(mechlens::detail::gpt2::byte_symbol('A') == "A");
    CHECK(mechlens::detail::gpt2::code_point_to_byte(0x144) == -1);
}

TEST_CASE("gpt2 tokenizer: merges by rank, leftmost first among equals", "[tokenizer][gpt2]") {
    // Ranks: "a a" first, then "b c", then "aa bc".
    const mechlens::gpt2_tokenizer tok(tiny_vocabulary({{"a", "a"}, {"b", "c"}, {"aa", "bc"}}));
    const std::int32_t aa = 256;
    const std::int32_t bc = 257;
    const std::int32_t aabc = 258;
    CHECK(tok.encode("aaa") == ids{aa, 'a'});           // the leftmost pair of equal rank merges first
    CHECK(tok.encode("aaaa") == ids{aa, aa});
    CHECK(tok.encode("aabc") == ids{aabc});
    CHECK(tok.encode("abc") == ids{'a', bc});
    CHECK(tok.encode("aa bc") == ids{aa, ' ', bc});     // " bc" is a piece of its own: no merge across pieces
    CHECK(tok.decode(tok.encode("aa bc")) == "aa bc");
    CHECK(tok.merge_count() == 3);
    CHECK(tok.token_text(' ') == "\xC4\xA0");
    CHECK(tok.token_bytes(' ') == " ");
    CHECK(tok.find("aabc") == aabc);
    CHECK_FALSE(tok.find("zz"));
    CHECK_THROWS_AS(tok.decode(ids{259}), std::out_of_range);
    CHECK_THROWS_AS(tok.decode(ids{-1}), std::out_of_range);
    CHECK(tok.end_of_text_id() == -1);
}

TEST_CASE("gpt2 tokenizer: special tokens are matched only when asked, longest first", "[tokenizer][gpt2]") {
    mechlens::gpt2_vocabulary v = tiny_vocabulary({}, {"<|endoftext|>", "<|end|>", "<|endoftext|>x"});
    v.special_ids = {256, 257, 258};
    const mechlens::gpt2_tokenizer tok(std::move(v));
    CHECK(tok.end_of_text_id() == 256);
    CHECK(tok.is_special(256));
    CHECK_FALSE(tok.is_special('a'));
    CHECK(tok.encode("a<|end|>b", true) == ids{'a', 257, 'b'});
    CHECK(tok.encode("<|endoftext|>x<|endoftext|>", true) == ids{258, 256});
    CHECK(tok.encode("<|end|>", false).size() == 7);
    CHECK(tok.encode("<|end", true).size() == 5);
    CHECK(tok.decode(ids{'a', 256, 'b'}) == "a<|endoftext|>b");
}

TEST_CASE("gpt2 tokenizer: llama.cpp's test vectors pass with the GGUF vocabulary", "[tokenizer][gpt2]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(gguf_path());
    const mechlens::gpt2_tokenizer tok(mechlens::load_gguf_gpt2_vocabulary(gguf_path()));
    CHECK(tok.size() == 50257);
    CHECK(tok.end_of_text_id() == 50256);
    CHECK(tok.is_special(50256));
    const auto cases = llama_cpp_vectors();
    REQUIRE(cases.size() == 46);
    std::size_t passed = 0;
    for (const auto& [text, expected] : cases) {
        INFO("text: " << text);
        const ids got = tok.encode(text);
        CHECK(got == expected);
        passed += got == expected ? 1U : 0U;
        CHECK(tok.decode(got) == text);
    }
    WARN("llama.cpp GPT-2 vectors: " << passed << " of " << cases.size() << " pass");
}

TEST_CASE("gpt2 tokenizer: vocab.json + merges.txt, tokenizer.json and GGUF agree", "[tokenizer][gpt2]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(gguf_path());
    MECHLENS_REQUIRE_FILE_OR_SKIP(hf_dir() / "tokenizer.json");
    MECHLENS_REQUIRE_FILE_OR_SKIP(hf_dir() / "vocab.json");
    const mechlens::gpt2_tokenizer gguf(mechlens::load_gguf_gpt2_vocabulary(gguf_path()));
    const mechlens::gpt2_tokenizer json(mechlens::read_hf_tokenizer_json(hf_dir() / "tokenizer.json"));
    const mechlens::gpt2_tokenizer files(
        mechlens::read_gpt2_vocab_merges(hf_dir() / "vocab.json", hf_dir() / "merges.txt"));
    const mechlens::gpt2_tokenizer from_dir = mechlens::load_gpt2_tokenizer(hf_dir());
    REQUIRE(json.vocab().tokens == gguf.vocab().tokens);
    REQUIRE(files.vocab().tokens == gguf.vocab().tokens);
    REQUIRE(json.vocab().merges == gguf.vocab().merges);
    REQUIRE(files.vocab().merges == gguf.vocab().merges);
    CHECK(files.vocab().special_ids == ids{50256});
    CHECK(json.vocab().special_ids == ids{50256});
    CHECK(gguf.vocab().special_ids == ids{50256});
    for (const auto& [text, expected] : llama_cpp_vectors()) {
        INFO("text: " << text);
        CHECK(json.encode(text) == expected);
        CHECK(files.encode(text) == expected);
        CHECK(from_dir.encode(text) == expected);
    }
}

TEST_CASE("gpt2 tokenizer: hard strings match the independent Python reference", "[tokenizer][gpt2]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(gguf_path());
    MECHLENS_REQUIRE_FILE_OR_SKIP(hf_dir() / "tokenizer.json");
    const mechlens::json_value fixture = mechlens::read_json_file(hard_strings_path());
    const std::vector<mechlens::gpt2_tokenizer> tokenizers = {
        mechlens::gpt2_tokenizer(mechlens::load_gguf_gpt2_vocabulary(gguf_path())),
        mechlens::gpt2_tokenizer(mechlens::read_hf_tokenizer_json(hf_dir() / "tokenizer.json")),
        mechlens::gpt2_tokenizer(mechlens::read_gpt2_vocab_merges(hf_dir() / "vocab.json", hf_dir() / "merges.txt"))};
    const auto as_ids = [](const mechlens::json_value& list) {
        ids out;
        for (const mechlens::json_value& x : list.items()) out.push_back(static_cast<std::int32_t>(x.as_int64()));
        return out;
    };
    std::size_t passed = 0;
    std::size_t cases = 0;
    for (const mechlens::json_value& c : fixture.at("cases").items()) {
        ++cases;
        const std::string& text = c.at("text").as_string();
        const ids expected = as_ids(c.at("ids"));
        bool all = true;
        for (const mechlens::gpt2_tokenizer& tok : tokenizers) {
            INFO("text: " << text << " from " << tok.vocab().vocab_source);
            const ids got = tok.encode(text);
            CHECK(got == expected);
            CHECK(tok.decode(got) == text);
            all = all && got == expected;
            if (const mechlens::json_value* special = c.find("ids_special")) {
                const ids got_special = tok.encode(text, true);
                CHECK(got_special == as_ids(*special));
                CHECK(tok.decode(got_special) == text);
                all = all && got_special == as_ids(*special);
            }
        }
        passed += all ? 1U : 0U;
    }
    CHECK(cases >= 40);
    WARN("hard strings: " << passed << " of " << cases << " pass with all three loaders");
}

TEST_CASE("gpt2 tokenizer: arbitrary bytes round-trip", "[tokenizer][gpt2]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(gguf_path());
    const mechlens::gpt2_tokenizer tok(mechlens::load_gguf_gpt2_vocabulary(gguf_path()));
    std::mt19937 rng(12);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_int_distribution<int> length(0, 64);
    for (int i = 0; i < 300; ++i) {
        std::string text;
        for (int n = length(rng); n > 0; --n) text.push_back(static_cast<char>(byte(rng)));
        INFO("case " << i);
        CHECK(tok.decode(tok.encode(text)) == text);
        CHECK(tok.decode(tok.encode(text, true)) == text);
    }
    std::string all_bytes;
    for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
    CHECK(tok.decode(tok.encode(all_bytes)) == all_bytes);
    const std::string long_text(200000, 'a');
    CHECK(tok.decode(tok.encode(long_text)) == long_text);
}

TEST_CASE("gpt2 tokenizer: malformed files raise one-line format_errors naming the file", "[tokenizer][gpt2]") {
    const std::string good_vocab = [] {
        std::string s = "{";
        for (int b = 0; b < 256; ++b) {
            s += mechlens::detail::json_quote(mechlens::detail::gpt2::byte_symbol(static_cast<unsigned char>(b))) + ":" +
                 std::to_string(b) + ",";
        }
        return s + "\"ab\":256}";
    }();
    const fs::path vocab = write_scratch("vocab.json", good_vocab);
    const fs::path merges = write_scratch("merges.txt", "#version: 0.2\na b\n");
    CHECK(mechlens::gpt2_tokenizer(mechlens::read_gpt2_vocab_merges(vocab, merges)).encode("ab") == ids{256});
    const fs::path crlf = write_scratch("merges_crlf.txt", "#version: 0.2\r\na b\r\n\r\n");
    CHECK(mechlens::gpt2_tokenizer(mechlens::read_gpt2_vocab_merges(vocab, crlf)).encode("ab") == ids{256});

    const auto load = [](const fs::path& v, const fs::path& m) {
        (void)mechlens::gpt2_tokenizer(mechlens::read_gpt2_vocab_merges(v, m));
    };
    const fs::path missing = mechlens_test::scratch_dir() / "gpt2_tokenizer" / "missing.json";
    require_error(error_of([&] { load(missing, merges); }), missing.string(), "cannot open");
    const fs::path bad_json = write_scratch("bad.json", good_vocab.substr(0, 100));
    require_error(error_of([&] { load(bad_json, merges); }), bad_json.string(), "malformed JSON");
    const fs::path string_id = write_scratch("string_id.json", "{\"a\": \"0\"}");
    require_error(error_of([&] { load(string_id, merges); }), string_id.string(), "a: expected a number, found string");
    const fs::path not_object = write_scratch("array.json", "[1, 2]");
    require_error(error_of([&] { load(not_object, merges); }), not_object.string(), "expected an object, found array");
    const fs::path gap = write_scratch("gap.json", "{\"a\": 0, \"b\": 5}");
    require_error(error_of([&] { load(gap, merges); }), gap.string(), "b: id 5 is outside [0, 2)");
    // A vocabulary lacking bytes loads (tiny-random-gpt2's has 1000 tokens); text that needs a missing byte fails.
    const fs::path no_bytes = write_scratch("no_bytes.json", "{\"a\": 0, \"b\": 1}");
    const mechlens::gpt2_tokenizer partial(mechlens::read_gpt2_vocab_merges(no_bytes, write_scratch("empty.txt", "")));
    CHECK(partial.encode("ab") == ids{0, 1});
    CHECK_THROWS_WITH(partial.encode("abc"), Catch::Matchers::Contains("no token for byte 99"));
    const fs::path unknown = write_scratch("unknown_merge.txt", "#version: 0.2\na b\nab zz\n");
    require_error(error_of([&] { load(vocab, unknown); }), unknown.string(), "names the unknown token 'zz'");
    const fs::path no_result = write_scratch("no_result.txt", "b a\n");
    require_error(error_of([&] { load(vocab, no_result); }), no_result.string(), "makes 'ba', which is not a token");
    const fs::path three = write_scratch("three.txt", "#version: 0.2\na b c\n");
    require_error(error_of([&] { load(vocab, three); }), three.string(), "line 2 is not a merge");

    // tokenizer.json: wrong types, unsupported pipelines, merges as pairs.
    const auto hf = [&](const std::string& merges_json, const std::string& extra) {
        return "{\"model\": {\"type\": \"BPE\", \"vocab\": " + good_vocab + ", \"merges\": " + merges_json + "}" +
               extra + "}";
    };
    const auto load_json = [](const fs::path& p) { (void)mechlens::gpt2_tokenizer(mechlens::read_hf_tokenizer_json(p)); };
    CHECK(mechlens::gpt2_tokenizer(mechlens::read_hf_tokenizer_json(write_scratch("pairs.json", hf("[[\"a\", \"b\"]]", ""))))
              .encode("ab") == ids{256});
    CHECK(mechlens::gpt2_tokenizer(mechlens::read_hf_tokenizer_json(write_scratch("strings.json", hf("[\"a b\"]", ""))))
              .encode("ab") == ids{256});
    const fs::path added = write_scratch("added.json", hf("[]", ", \"added_tokens\": [{\"id\": 257, \"content\": "
                                                                "\"<|x|>\", \"special\": true}]"));
    const mechlens::gpt2_tokenizer with_added(mechlens::read_hf_tokenizer_json(added));
    CHECK(with_added.size() == 258);
    CHECK(with_added.encode("a<|x|>", true) == ids{'a', 257});
    const fs::path merge_number = write_scratch("merge_number.json", hf("[3]", ""));
    require_error(error_of([&] { load_json(merge_number); }), merge_number.string(), "model.merges[0]: a merge is a string");
    const fs::path merge_pair = write_scratch("merge_pair.json", hf("[[\"a\", 1]]", ""));
    require_error(error_of([&] { load_json(merge_pair); }), merge_pair.string(), "model.merges[0][1]: expected a string");
    const fs::path no_vocab = write_scratch("no_vocab.json", "{\"model\": {\"merges\": []}}");
    require_error(error_of([&] { load_json(no_vocab); }), no_vocab.string(), "model: missing key \"vocab\"");
    const fs::path wordpiece = write_scratch("wordpiece.json", "{\"model\": {\"type\": \"WordPiece\"}}");
    require_error(error_of([&] { load_json(wordpiece); }), wordpiece.string(), "is not BPE");
    const fs::path split = write_scratch("split.json", hf("[]", ", \"pre_tokenizer\": {\"type\": \"Split\"}"));
    require_error(error_of([&] { load_json(split); }), split.string(), "is not GPT-2's ByteLevel");
    const fs::path prefix = write_scratch("prefix.json", hf("[]", ", \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
                                                                  "\"add_prefix_space\": true}"));
    require_error(error_of([&] { load_json(prefix); }), prefix.string(), "add_prefix_space is not supported");
    const fs::path bad_added = write_scratch("bad_added.json", hf("[]", ", \"added_tokens\": [{\"id\": 3, \"content\": \"zz\"}]"));
    require_error(error_of([&] { load_json(bad_added); }), bad_added.string(), "spelled differently");
    const fs::path hole = write_scratch("hole.json", hf("[]", ", \"added_tokens\": [{\"id\": 97, \"content\": \"a\"}, "
                                                              "{\"id\": 258, \"content\": \"<|y|>\"}]"));
    require_error(error_of([&] { load_json(hole); }), hole.string(), "no token has id 257");

    // GGUF of another tokenizer model; paths that are no tokenizer.
    const fs::path llama_gguf = mechlens_test::model_file("stories260K/stories260K.gguf");
    if (fs::exists(llama_gguf)) {
        require_error(error_of([&] { (void)mechlens::load_gguf_gpt2_vocabulary(llama_gguf); }), llama_gguf.string(),
                      "tokenizer.ggml.model is \"llama\", not \"gpt2\"");
    }
    const fs::path empty_dir = mechlens_test::scratch_dir() / "gpt2_tokenizer" / "empty_dir";
    fs::create_directories(empty_dir);
    require_error(error_of([&] { (void)mechlens::load_gpt2_tokenizer(empty_dir); }), empty_dir.string(),
                  "no tokenizer.json, and no vocab.json");
    require_error(error_of([&] { (void)mechlens::load_gpt2_tokenizer(empty_dir / "nothing.bin"); }),
                  (empty_dir / "nothing.bin").string(), "no such file");
}

TEST_CASE("gpt2 tokenizer: in-memory parsers accept what the file readers accept", "[tokenizer][gpt2][fuzz]") {
    const auto merges = mechlens::parse_gpt2_merges("#version: 0.2\nx y\n\nxy z", "m.txt");
    REQUIRE(merges.size() == 2);
    CHECK(merges[1] == std::pair<std::string, std::string>("xy", "z"));
    CHECK(error_of([] { (void)mechlens::parse_gpt2_merges("x y\nxyz\n", "m.txt"); })
              .find("m.txt: line 2") != std::string::npos);
    CHECK(error_of([] { (void)mechlens::parse_hf_tokenizer_json("{}", "t.json"); }) ==
          "t.json: (root): missing key \"model\"");
}

}  // namespace test_gpt2_tokenizer
