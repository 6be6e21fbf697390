// Tests of the JSON reader (io/json.hpp): every rule of RFC 8259 it enforces, the conversions with their range
// checks, error messages that name the document and the path, and speed on a real 2 MB tokenizer.json.
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_json {

namespace {

namespace fs = std::filesystem;

mechlens::json_value parse(const std::string& text) { return mechlens::parse_json(text, "doc.json"); }

// The message of the format_error `text` raises; fails the test when it parses.
std::string rejection(const std::string& text) {
    try {
        (void)parse(text);
    } catch (const mechlens::format_error& e) {
        return e.what();
    }
    FAIL("accepted: " << text);
    return {};
}

void require_rejected(const std::string& text, const std::string& problem) {
    const std::string message = rejection(text);
    INFO(message);
    CHECK(message.rfind("doc.json: malformed JSON: ", 0) == 0);
    CHECK(message.find(problem) != std::string::npos);
    CHECK(message.find('\n') == std::string::npos);
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

}  // namespace

TEST_CASE("json: scalars, arrays and objects", "[json]") {
    const mechlens::json_value v =
        parse(" {\"a\": [1, -2.5e3, true, false, null, \"x\"], \"b\": {}, \"c\": [], \"d\": {\"e\": \"\"}} \n");
    REQUIRE(v.is_object());
    REQUIRE(v.size() == 4);
    const mechlens::json_value& a = v.at("a");
    REQUIRE(a.is_array());
    REQUIRE(a.items().size() == 6);
    CHECK(a.at(0).as_int64() == 1);
    CHECK(a.at(1).as_double() == -2500.0);
    CHECK(a.at(1).number_text() == "-2.5e3");
    CHECK(a.at(2).as_bool());
    CHECK_FALSE(a.at(3).as_bool());
    CHECK(a.at(4).is_null());
    CHECK(a.at(5).as_string() == "x");
    CHECK(v.at("b").is_object());
    CHECK(v.at("b").members().empty());
    CHECK(v.at("c").items().empty());
    CHECK(v.at("d").at("e").as_string().empty());
    CHECK(v.find("zz") == nullptr);
    CHECK(a.find("a") == nullptr);  // not an object
    CHECK(v.members()[0].key == "a");
    CHECK(v.members()[3].key == "d");
    CHECK(parse("7").as_uint64() == 7);
    CHECK(parse("\"s\"").as_string() == "s");
    CHECK(parse("null").is_null());
    CHECK(parse("[[[]]]").at(0).at(0).items().empty());
}

TEST_CASE("json: escapes, including \\u with surrogate pairs, decode to UTF-8", "[json]") {
    CHECK(parse(R"("\"\\\/\b\f\n\r\t")").as_string() == "\"\\/\b\f\n\r\t");
    CHECK(parse(R"("\u0041\u00e9\u20AC")").as_string() == "A\xC3\xA9\xE2\x82\xAC");   // A é €
    CHECK(parse(R"("\u0000")").as_string() == std::string(1, '\0'));
    CHECK(parse(R"("\ud83e\udd99")").as_string() == "\xF0\x9F\xA6\x99");              // U+1F999 llama
    CHECK(parse(R"("\uDBFF\uDFFF")").as_string() == "\xF4\x8F\xBF\xBF");              // U+10FFFF
    CHECK(parse("\"\xC4\xA0the \xE6\x97\xA5\"").as_string() == "\xC4\xA0the \xE6\x97\xA5");  // raw UTF-8 kept
    require_rejected(R"("\ud83e")", "high surrogate without a low surrogate");
    require_rejected(R"("\ud83ex")", "high surrogate without a low surrogate");
    require_rejected(R"("\ud83e\u0041")", "high surrogate without a low surrogate");
    require_rejected(R"("\udd99")", "low surrogate without a high surrogate");
    require_rejected(R"("\u12")", "truncated \\u escape");
    require_rejected(R"("\u12G4")", "invalid \\u escape");
    require_rejected(R"("\x")", "invalid escape");
    require_rejected(R"("\)", "unterminated");
    require_rejected("\"abc", "unterminated string");
    require_rejected("\"a\tb\"", "raw control character");
    require_rejected("\"a\nb\"", "raw control character");
}

TEST_CASE("json: invalid UTF-8 in strings is rejected", "[json]") {
    require_rejected("\"\xFF\"", "invalid UTF-8");
    require_rejected("\"\xC3\"", "invalid UTF-8");               // truncated sequence
    require_rejected("\"\xC3\x28\"", "invalid UTF-8");           // bad continuation
    require_rejected("\"\xC0\xAF\"", "invalid UTF-8");           // overlong '/'
    require_rejected("\"\xE0\x80\xAF\"", "invalid UTF-8");       // overlong
    require_rejected("\"\xED\xA0\x80\"", "invalid UTF-8");       // encoded surrogate U+D800
    require_rejected("\"\xF4\x90\x80\x80\"", "invalid UTF-8");   // past U+10FFFF
    require_rejected("\"\x80\"", "invalid UTF-8");               // lone continuation byte
    require_rejected("{\"\xFE\":1}", "invalid UTF-8");           // in a key too
}

TEST_CASE("json: numbers follow RFC 8259 and keep their text", "[json]") {
    for (const char* ok : {"0", "-0", "12", "-12", "0.5", "1e5", "1E+5", "1e-5", "-0.0e0", "123456789012345678901234567890"})
        CHECK(parse(ok).number_text() == ok);
    require_rejected("01", "leading zero");
    require_rejected("-01", "leading zero");
    require_rejected("+1", "unexpected character");
    require_rejected(".5", "unexpected character");
    require_rejected("1.", "expected a digit");
    require_rejected("1e", "expected a digit");
    require_rejected("1e+", "expected a digit");
    require_rejected("-", "expected a digit");
    require_rejected("NaN", "unexpected character");
    require_rejected("Infinity", "unexpected character");
    require_rejected("0x10", "unexpected text after the top-level value");
}

TEST_CASE("json: numeric conversions check their range", "[json]") {
    CHECK(parse("9223372036854775807").as_int64() == std::numeric_limits<std::int64_t>::max());
    CHECK(parse("-9223372036854775808").as_int64() == std::numeric_limits<std::int64_t>::min());
    CHECK(parse("18446744073709551615").as_uint64() == std::numeric_limits<std::uint64_t>::max());
    CHECK(parse("-0").as_int64() == 0);
    CHECK(error_of([] { (void)parse("9223372036854775808").as_int64(); }).find("out of the range") != std::string::npos);
    CHECK(error_of([] { (void)parse("18446744073709551616").as_uint64(); }).find("out of the range") !=
          std::string::npos);
    CHECK(error_of([] { (void)parse("-1").as_uint64(); }).find("out of the range") != std::string::npos);
    CHECK(error_of([] { (void)parse("1.0").as_int64(); }).find("is not an integer") != std::string::npos);
    CHECK(error_of([] { (void)parse("1e3").as_int64(); }).find("is not an integer") != std::string::npos);
    CHECK(parse("0.1").as_double() == 0.1);
    CHECK(parse("-1.7976931348623157e308").as_double() == -std::numeric_limits<double>::max());
    CHECK(parse("1e-400").as_double() == 0.0);  // underflow rounds
    CHECK(parse("4.9e-324").as_double() == std::numeric_limits<double>::denorm_min());
    CHECK(error_of([] { (void)parse("1e400").as_double(); }).find("out of the range of double") != std::string::npos);
    CHECK(parse("3").as_double() == 3.0);
}

TEST_CASE("json: structure errors, trailing garbage, duplicates and depth", "[json]") {
    require_rejected("", "unexpected end");
    require_rejected("   ", "unexpected end");
    require_rejected("[1,]", "unexpected character");
    require_rejected("{\"a\":1,}", "expected a string key");
    require_rejected("{\"a\" 1}", "expected ':'");
    require_rejected("{\"a\":1 \"b\":2}", "expected ',' or '}'");
    require_rejected("[1 2]", "expected ',' or ']'");
    require_rejected("{1:2}", "expected a string key");
    require_rejected("[tru]", "invalid literal");
    require_rejected("nul", "invalid literal");
    require_rejected("{} {}", "unexpected text after the top-level value");
    require_rejected("[1] x", "unexpected text after the top-level value");
    require_rejected("1 // comment", "unexpected text after the top-level value");
    require_rejected("\xEF\xBB\xBF{}", "unexpected character");  // a byte-order mark is not JSON
    require_rejected("{\"a\":1,\"b\":2,\"a\":3}", "duplicate key \"a\"");
    CHECK(parse("{\"a\":{\"a\":1},\"b\":{\"a\":2}}").at("b").at("a").as_int64() == 2);  // same key, other objects
    // Depth: json_max_depth nested arrays parse, one more is rejected, a million never overflow the stack.
    const auto nested = [](std::size_t n) { return std::string(n, '[') + std::string(n, ']'); };
    CHECK_NOTHROW(parse(nested(static_cast<std::size_t>(mechlens::json_max_depth) + 1)));
    require_rejected(nested(static_cast<std::size_t>(mechlens::json_max_depth) + 2), "nesting deeper than");
    require_rejected(std::string(1000000, '['), "nesting deeper than");
    require_rejected(std::string(1000000, '{'), "expected a string key");
}

TEST_CASE("json: errors give the line and column of the problem", "[json]") {
    const std::string message = rejection("{\n  \"a\": 1,\n  \"b\": tru\n}");
    INFO(message);
    CHECK(message.find("at line 3, column 8") != std::string::npos);
}

TEST_CASE("json: accessors name the document and the path of the value", "[json]") {
    const mechlens::json_value v = parse(R"({"model": {"vocab": {"a": 1, "x y": "2"}, "merges": [["a", 3]]}})");
    CHECK(v.at("model").at("vocab").at("x y").path() == "model.vocab[\"x y\"]");
    CHECK(v.at("model").at("merges").at(0).at(1).path() == "model.merges[0][1]");
    CHECK(v.path() == "(root)");
    std::string m = error_of([&] { (void)v.at("model").at("vocab").at("x y").as_int64(); });
    CHECK(m == "doc.json: model.vocab[\"x y\"]: expected a number, found string");
    m = error_of([&] { (void)v.at("model").at("type"); });
    CHECK(m == "doc.json: model: missing key \"type\"");
    m = error_of([&] { (void)v.at("model").at("merges").at(0).at(1).as_string(); });
    CHECK(m == "doc.json: model.merges[0][1]: expected a string, found number");
    m = error_of([&] { (void)v.at("model").at("merges").at(5); });
    CHECK(m.find("model.merges: index 5 is past the end of an array of 1") != std::string::npos);
    m = error_of([&] { (void)v.at("model").items(); });
    CHECK(m == "doc.json: model: expected an array, found object");
    m = error_of([&] { v.at("model").at("vocab").at("a").fail("is not a merge"); });
    CHECK(m == "doc.json: model.vocab.a: is not a merge");
}

TEST_CASE("json: copies and moves keep paths and the document name", "[json]") {
    mechlens::json_value original = parse(R"({"a": [{"b": [1, 2, 3]}], "c": {"d": true}})");
    const mechlens::json_value copy = original;
    CHECK(copy.at("a").at(0).at("b").at(2).path() == "a[0].b[2]");
    CHECK(copy.at("a").at(0).at("b").at(2).document() == "doc.json");
    mechlens::json_value moved = std::move(original);
    CHECK(moved.at("c").at("d").path() == "c.d");
    const mechlens::json_value part = moved.at("a").at(0);  // a subtree copied out starts a path of its own
    CHECK(part.at("b").at(1).path() == "b[1]");
    CHECK(part.at("b").at(1).document() == "doc.json");
    std::vector<mechlens::json_value> many(3, copy);
    many.push_back(copy);  // reallocation moves the values
    CHECK(many[1].at("a").at(0).at("b").at(0).path() == "a[0].b[0]");
    CHECK(many[3].at("c").at("d").as_bool());
}

TEST_CASE("json: read_json_file names the file", "[json]") {
    const fs::path dir = mechlens_test::scratch_dir();
    fs::create_directories(dir);
    const fs::path good = dir / "json_good.json";
    std::ofstream(good) << "{\"n\": 3}";
    CHECK(mechlens::read_json_file(good).at("n").as_int64() == 3);
    const fs::path bad = dir / "json_bad.json";
    std::ofstream(bad) << "{\"n\": 3,}";
    std::string m = error_of([&] { (void)mechlens::read_json_file(bad); });
    CHECK(m.rfind(bad.string() + ": malformed JSON: expected a string key", 0) == 0);
    m = error_of([&] { (void)mechlens::read_json_file(dir / "json_missing.json"); });
    CHECK(m == (dir / "json_missing.json").string() + ": cannot open the JSON file");
    m = error_of([&] { (void)mechlens::read_json_file(good).at("n").as_string(); });
    CHECK(m == good.string() + ": n: expected a string, found number");
}

TEST_CASE("json: a 2 MB tokenizer.json parses quickly", "[json]") {
    const fs::path path = mechlens_test::tokenizers_dir() / "gpt2-hf" / "tokenizer.json";
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    mechlens::json_value v;
    double best = 1e9;
    for (int i = 0; i < 3; ++i) {
        const auto start = std::chrono::steady_clock::now();
        v = mechlens::read_json_file(path);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    WARN("tokenizer.json (" << fs::file_size(path) << " bytes) parsed in " << best * 1e3 << " ms");
    CHECK(best < 1.0);  // generous: ~20 ms optimised; a debug or sanitizer build is far slower but not quadratic
    CHECK(v.at("model").at("vocab").size() == 50257);
    CHECK(v.at("model").at("vocab").at("\xC4\xA0the").as_int64() == 262);
    CHECK(v.at("model").at("merges").size() == 50000);
    CHECK(v.at("added_tokens").at(0).at("content").as_string() == "<|endoftext|>");
}

}  // namespace test_json
