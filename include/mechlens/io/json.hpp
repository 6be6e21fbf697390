#pragma once
/// @file
/// The library's one JSON reader: a strict RFC 8259 parser for untrusted text (safetensors headers, config.json,
/// tokenizer.json) and the value tree it builds.
///
/// Strict means: one value and nothing after it but whitespace; no comments, trailing commas, NaN or leading
/// zeros; strings of valid UTF-8 without raw control characters; `\uXXXX` escapes decoded to UTF-8, surrogate
/// pairs joined and lone surrogates rejected; object keys unique; nesting at most json_max_depth deep. Numbers keep
/// their literal text, so an integer of any size is range-checked only when it is converted.
///
/// Why our own reader rather than nlohmann/json (Debian's nlohmann-json3-dev): mechlens is a header-only library
/// meant to be dropped into other engines, and a JSON dependency would become every consumer's dependency (and a
/// version clash for engines that already carry their own copy). What mechlens reads is small and fixed: a few
/// object lookups, strings, integers and floats. This reader is about 500 lines, fuzzed, and rejects what
/// nlohmann accepts by default (duplicate keys, numbers that overflow when converted).

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ios>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Deepest nesting of arrays and objects the parser accepts (deeper input is rejected, never a stack overflow).
inline constexpr int json_max_depth = 128;

struct json_member;
namespace detail {
class json_parser;
}  // namespace detail

/// One parsed JSON value. Each value knows where it sits in its document, so errors name the file and the path
/// (`config.json: model.vocab["x"]: ...`); values are meant to be read in place, not built by hand.
class json_value {
public:
    /// The JSON type of a value.
    enum class type : std::uint8_t { null, boolean, number, string, array, object };

    json_value() = default;  ///< A null value outside any document.
    /// A copy; it keeps the document name but starts a path of its own.
    inline json_value(const json_value& other);
    /// Takes over `other`'s contents.
    inline json_value(json_value&& other) noexcept;
    /// Copy-and-swap assignment.
    inline json_value& operator=(json_value other) noexcept;
    /// Frees the subtree.
    inline ~json_value();

    /// The value's type.
    type kind() const noexcept { return kind_; }
    /// True for `null`.
    bool is_null() const noexcept { return kind_ == type::null; }
    /// True for `true` or `false`.
    bool is_bool() const noexcept { return kind_ == type::boolean; }
    /// True for a number.
    bool is_number() const noexcept { return kind_ == type::number; }
    /// True for a string.
    bool is_string() const noexcept { return kind_ == type::string; }
    /// True for an array.
    bool is_array() const noexcept { return kind_ == type::array; }
    /// True for an object.
    bool is_object() const noexcept { return kind_ == type::object; }

    /// The boolean; throws format_error naming the path when the value is not one.
    bool as_bool() const {
        if (kind_ != type::boolean) fail("expected a boolean, found " + type_name(kind_));
        return boolean_;
    }
    /// The decoded string (UTF-8); throws format_error naming the path when the value is not a string.
    const std::string& as_string() const {
        if (kind_ != type::string) fail("expected a string, found " + type_name(kind_));
        return text_;
    }
    /// The number's literal text as written (e.g. "-1.5e3"); throws format_error when the value is not a number.
    const std::string& number_text() const {
        if (kind_ != type::number) fail("expected a number, found " + type_name(kind_));
        return text_;
    }
    /// The number as int64; throws format_error unless it is an integer literal (no fraction or exponent) in range.
    std::int64_t as_int64() const { return integer<std::int64_t>(); }
    /// The number as uint64; throws format_error unless it is a non-negative integer literal in range.
    std::uint64_t as_uint64() const { return integer<std::uint64_t>(); }
    /// The number as the nearest double; throws format_error when it is out of double's range.
    double as_double() const {
        const std::string& t = number_text();
        double value = 0.0;
        const auto [end, error] = std::from_chars(t.data(), t.data() + t.size(), value);
        if (error == std::errc::result_out_of_range) {
            // Underflow is only rounding (to a subnormal or zero); overflow is an error.
            value = std::strtod(t.c_str(), nullptr);
            if (!std::isfinite(value)) fail("number " + t.substr(0, 40) + " is out of the range of double");
            return value;
        }
        if (error != std::errc() || end != t.data() + t.size()) fail("number " + t.substr(0, 40) + " is malformed");
        return value;
    }

    /// The elements of an array; throws format_error naming the path when the value is not an array.
    const std::vector<json_value>& items() const {
        if (kind_ != type::array) fail("expected an array, found " + type_name(kind_));
        return items_;
    }
    /// The members of an object in file order (keys unique); throws format_error when the value is not an object.
    const std::vector<json_member>& members() const {
        if (kind_ != type::object) fail("expected an object, found " + type_name(kind_));
        return members_;
    }
    /// Number of elements or members (0 for scalars).
    inline std::size_t size() const noexcept;

    /// The member called `key`, or null when absent or when the value is not an object.
    inline const json_value* find(std::string_view key) const noexcept;
    /// The member called `key`; throws format_error naming the path when absent or not an object.
    const json_value& at(std::string_view key) const {
        if (kind_ != type::object) fail("expected an object with key \"" + std::string(key.substr(0, 100)) +
                                        "\", found " + type_name(kind_));
        if (const json_value* v = find(key)) return *v;
        fail("missing key \"" + std::string(key.substr(0, 100)) + "\"");
    }
    /// The element at `index`; throws format_error naming the path when out of range or not an array.
    const json_value& at(std::size_t index) const {
        const std::vector<json_value>& all = items();
        if (index >= all.size())
            fail("index " + std::to_string(index) + " is past the end of an array of " + std::to_string(all.size()));
        return all[index];
    }

    /// Where the value sits: `model.vocab["Ġthe"]`, `added_tokens[0].id`, or `(root)`.
    inline std::string path() const;
    /// The name of the document (usually the file) this value was parsed from.
    const std::string& document() const noexcept {
        static const std::string unnamed = "JSON";
        const json_value& r = root();
        return r.document_ ? *r.document_ : unnamed;
    }
    /// Throws format_error "`document`: `path`: `problem`", for checks a reader makes on top of the types.
    [[noreturn]] void fail(const std::string& problem) const { throw format_error(document() + ": " + path() + ": " + problem); }

    /// "null", "boolean", "number", "string", "array" or "object".
    static std::string type_name(type t) {
        static constexpr const char* names[] = {"null", "boolean", "number", "string", "array", "object"};
        return names[static_cast<std::size_t>(t)];
    }

private:
    friend class detail::json_parser;

    const json_value& root() const noexcept {
        const json_value* r = this;
        while (r->parent_ != nullptr) r = r->parent_;
        return *r;
    }

    template <class Int>
    Int integer() const {
        const std::string& t = number_text();
        if (t.find_first_of(".eE") != std::string::npos) fail("number " + t.substr(0, 40) + " is not an integer");
        Int value{};
        const auto [end, error] = std::from_chars(t.data(), t.data() + t.size(), value);
        if (error == std::errc::result_out_of_range || (error == std::errc() && end != t.data() + t.size()) ||
            (std::is_unsigned_v<Int> && !t.empty() && t[0] == '-'))
            fail("integer " + t.substr(0, 40) + " is out of the range [" +
                 std::to_string(std::numeric_limits<Int>::min()) + ", " +
                 std::to_string(std::numeric_limits<Int>::max()) + "]");
        if (error != std::errc()) fail("number " + t.substr(0, 40) + " is malformed");
        return value;
    }

    // Points the direct children back at this value; grandchildren already point at the children, whose
    // addresses in the vectors' buffers do not change when this value is copied or moved.
    inline void adopt_children() noexcept;

    type kind_ = type::null;                          // which of the members below is meaningful
    bool boolean_ = false;                            // for type::boolean
    std::string text_;                                // a string's content, or a number's literal
    std::vector<json_value> items_;                   // for type::array
    std::vector<json_member> members_;                // for type::object, in file order
    std::shared_ptr<const std::string> document_;     // the document's name (set on the root)
    const json_value* parent_ = nullptr;              // the enclosing array or object, null at the root
    std::uint32_t index_ = 0;                         // position in the parent's items or members
};

/// One key and value of a JSON object. A named struct rather than std::pair: a pair of the still incomplete
/// json_value inside json_value's own vector is rejected by clang with libstdc++ (vector of an incomplete class
/// type is allowed since C++17; pair of one is not).
struct json_member {
    std::string key;   ///< The member's name.
    json_value value;  ///< The member's value.
};

// Defined here, where json_member is complete (clang instantiates the vector members eagerly in the class).
inline json_value::json_value(const json_value& other)
    : kind_(other.kind_),
      boolean_(other.boolean_),
      text_(other.text_),
      items_(other.items_),
      members_(other.members_),
      document_(other.root().document_) {
    adopt_children();
}

inline json_value::json_value(json_value&& other) noexcept
    : kind_(other.kind_),
      boolean_(other.boolean_),
      text_(std::move(other.text_)),
      items_(std::move(other.items_)),
      members_(std::move(other.members_)),
      document_(std::move(other.document_)) {
    adopt_children();
}

inline json_value& json_value::operator=(json_value other) noexcept {
    kind_ = other.kind_;
    boolean_ = other.boolean_;
    text_ = std::move(other.text_);
    items_ = std::move(other.items_);
    members_ = std::move(other.members_);
    document_ = std::move(other.document_);
    parent_ = nullptr;
    index_ = 0;
    adopt_children();
    return *this;
}

inline json_value::~json_value() = default;

inline std::size_t json_value::size() const noexcept {
    return kind_ == type::array ? items_.size() : members_.size();
}

inline const json_value* json_value::find(std::string_view key) const noexcept {
    if (kind_ != type::object) return nullptr;
    for (const json_member& m : members_)
        if (m.key == key) return &m.value;
    return nullptr;
}

inline void json_value::adopt_children() noexcept {
    for (std::size_t i = 0; i < items_.size(); ++i) {
        items_[i].parent_ = this;
        items_[i].index_ = static_cast<std::uint32_t>(i);
    }
    for (std::size_t i = 0; i < members_.size(); ++i) {
        members_[i].value.parent_ = this;
        members_[i].value.index_ = static_cast<std::uint32_t>(i);
    }
}

namespace detail {

/// True when `key` can be written after a dot in a path (a plain identifier), else it is written ["quoted"].
inline bool json_plain_key(std::string_view key) noexcept {
    if (key.empty() || (key[0] >= '0' && key[0] <= '9')) return false;
    return std::all_of(key.begin(), key.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
}

}  // namespace detail

inline std::string json_value::path() const {
    std::vector<std::string> steps;
    for (const json_value* v = this; v->parent_ != nullptr; v = v->parent_) {
        const json_value& p = *v->parent_;
        if (p.kind_ == type::array) {
            steps.push_back("[" + std::to_string(v->index_) + "]");
        } else {
            const std::string& key = p.members_[v->index_].key;
            if (detail::json_plain_key(key))
                steps.push_back("." + key);
            else
                steps.push_back("[\"" + key.substr(0, 60) + (key.size() > 60 ? "...\"]" : "\"]"));
        }
    }
    if (steps.empty()) return "(root)";
    std::string out;
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) out += *it;
    if (out[0] == '.') out.erase(0, 1);
    return out;
}

namespace detail {

/// The recursive-descent parser behind parse_json.
class json_parser {
public:
    /// A parser over `text`; errors throw format_error "`where`: malformed JSON: ... at line L, column C".
    json_parser(std::string_view text, std::string where) : s_(text), where_(std::move(where)) {}

    /// Parses one value followed only by whitespace; the root remembers `where` as its document name.
    json_value parse_document() {
        json_value v;
        value(v, 0);
        skip_space();
        if (pos_ != s_.size()) fail("unexpected text after the top-level value");
        v.document_ = std::make_shared<const std::string>(where_);
        return v;
    }

private:
    [[noreturn]] void fail(const std::string& problem) const {
        std::size_t line = 1;
        std::size_t column = 1;
        const std::size_t end = std::min(pos_, s_.size());
        for (std::size_t i = 0; i < end; ++i) {
            if (s_[i] == '\n') {
                ++line;
                column = 1;
            } else if ((static_cast<unsigned char>(s_[i]) & 0xC0U) != 0x80U) {
                ++column;
            }
        }
        throw format_error(where_ + ": malformed JSON: " + problem + " at line " + std::to_string(line) +
                           ", column " + std::to_string(column) + " (byte " + std::to_string(pos_) + ")");
    }
    char peek() const noexcept { return pos_ < s_.size() ? s_[pos_] : '\0'; }
    bool at_end() const noexcept { return pos_ >= s_.size(); }
    void skip_space() noexcept {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
            ++pos_;
    }
    void expect_word(std::string_view word) {
        if (s_.substr(pos_, word.size()) != word) fail("invalid literal");
        pos_ += word.size();
    }

    void value(json_value& v, int depth) {
        if (depth > json_max_depth) fail("nesting deeper than " + std::to_string(json_max_depth));
        skip_space();
        if (at_end()) fail("unexpected end of the text");
        switch (peek()) {
            case '{': v.kind_ = json_value::type::object; object(v, depth); break;
            case '[': v.kind_ = json_value::type::array; array(v, depth); break;
            case '"': v.kind_ = json_value::type::string; string(v.text_); break;
            case 't': expect_word("true"); v.kind_ = json_value::type::boolean; v.boolean_ = true; break;
            case 'f': expect_word("false"); v.kind_ = json_value::type::boolean; break;
            case 'n': expect_word("null"); break;
            default:
                if (peek() != '-' && (peek() < '0' || peek() > '9')) fail("unexpected character");
                v.kind_ = json_value::type::number;
                number(v.text_);
                break;
        }
    }

    void object(json_value& v, int depth) {
        ++pos_;  // '{'
        skip_space();
        if (peek() == '}') {
            ++pos_;
            return;
        }
        while (true) {
            skip_space();
            if (peek() != '"') fail("expected a string key");
            json_member& m = v.members_.emplace_back();
            string(m.key);
            skip_space();
            if (peek() != ':') fail("expected ':'");
            ++pos_;
            value(m.value, depth + 1);
            skip_space();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == '}') {
                ++pos_;
                check_unique_keys(v);
                v.adopt_children();
                return;
            }
            fail("expected ',' or '}'");
        }
    }

    // Duplicates are looked for once the object is complete, by sorting the keys on (hash, text) and comparing
    // neighbours: O(n log n) whatever the keys (colliding hashes fall back to comparing text), where comparing each
    // key with all earlier ones was quadratic, and sorting on the text alone spent most of a tokenizer.json's parse
    // in memcmp.
    void check_unique_keys(const json_value& v) const {
        if (v.members_.size() < 2) return;
        struct keyed {
            std::size_t hash;
            const std::string* key;
        };
        std::vector<keyed> keys;
        keys.reserve(v.members_.size());
        for (const json_member& member : v.members_)
            keys.push_back({std::hash<std::string_view>{}(member.key), &member.key});
        std::sort(keys.begin(), keys.end(), [](const keyed& a, const keyed& b) {
            return a.hash != b.hash ? a.hash < b.hash : *a.key < *b.key;
        });
        const auto twin = std::adjacent_find(keys.begin(), keys.end(), [](const keyed& a, const keyed& b) {
            return a.hash == b.hash && *a.key == *b.key;
        });
        if (twin != keys.end()) fail("duplicate key \"" + twin->key->substr(0, 100) + "\" in the object ending");
    }

    void array(json_value& v, int depth) {
        ++pos_;  // '['
        skip_space();
        if (peek() == ']') {
            ++pos_;
            return;
        }
        while (true) {
            value(v.items_.emplace_back(), depth + 1);
            skip_space();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == ']') {
                ++pos_;
                v.adopt_children();
                return;
            }
            fail("expected ',' or ']'");
        }
    }

    // RFC 8259: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
    void number(std::string& out) {
        const std::size_t begin = pos_;
        const auto digits = [&] {
            const std::size_t start = pos_;
            while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
            if (pos_ == start) fail("expected a digit");
        };
        if (peek() == '-') ++pos_;
        if (peek() == '0') {
            ++pos_;
            if (peek() >= '0' && peek() <= '9') fail("leading zero in a number");
        } else {
            digits();
        }
        if (peek() == '.') {
            ++pos_;
            digits();
        }
        if (peek() == 'e' || peek() == 'E') {
            ++pos_;
            if (peek() == '+' || peek() == '-') ++pos_;
            digits();
        }
        out.assign(s_.substr(begin, pos_ - begin));
    }

    unsigned hex4() {
        if (s_.size() - pos_ < 4) fail("truncated \\u escape");
        unsigned code = 0;
        for (int i = 0; i < 4; ++i) {
            const char c = s_[pos_];
            code <<= 4;
            if (c >= '0' && c <= '9') code |= static_cast<unsigned>(c - '0');
            else if (c >= 'a' && c <= 'f') code |= static_cast<unsigned>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') code |= static_cast<unsigned>(c - 'A' + 10);
            else fail("invalid \\u escape");
            ++pos_;
        }
        return code;
    }

    static void append_utf8(std::string& out, unsigned code) {
        if (code < 0x80) {
            out += static_cast<char>(code);
        } else if (code < 0x800) {
            out += static_cast<char>(0xC0U | (code >> 6));
            out += static_cast<char>(0x80U | (code & 0x3FU));
        } else if (code < 0x10000) {
            out += static_cast<char>(0xE0U | (code >> 12));
            out += static_cast<char>(0x80U | ((code >> 6) & 0x3FU));
            out += static_cast<char>(0x80U | (code & 0x3FU));
        } else {
            out += static_cast<char>(0xF0U | (code >> 18));
            out += static_cast<char>(0x80U | ((code >> 12) & 0x3FU));
            out += static_cast<char>(0x80U | ((code >> 6) & 0x3FU));
            out += static_cast<char>(0x80U | (code & 0x3FU));
        }
    }

    // Length of the valid UTF-8 sequence of a non-ASCII lead byte at pos_ (2 to 4), or 0 when it is invalid.
    std::size_t utf8_length() const noexcept {
        const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s_[pos_ + i]); };
        const unsigned char c = byte(0);
        std::size_t n = 0;
        unsigned code = 0;
        if ((c & 0xE0U) == 0xC0U) n = 2, code = c & 0x1FU;
        else if ((c & 0xF0U) == 0xE0U) n = 3, code = c & 0x0FU;
        else if ((c & 0xF8U) == 0xF0U) n = 4, code = c & 0x07U;
        else return 0;
        if (s_.size() - pos_ < n) return 0;
        for (std::size_t i = 1; i < n; ++i) {
            if ((byte(i) & 0xC0U) != 0x80U) return 0;
            code = (code << 6) | (byte(i) & 0x3FU);
        }
        // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
        constexpr unsigned smallest[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (code < smallest[n] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
        return n;
    }

    void string(std::string& out) {
        ++pos_;  // opening quote
        while (true) {
            // The common case first: a run of printable ASCII other than '"' and '\\', appended at once.
            const std::size_t run = pos_;
            while (pos_ < s_.size()) {
                const auto c = static_cast<unsigned char>(s_[pos_]);
                if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') break;
                ++pos_;
            }
            out.append(s_.data() + run, pos_ - run);
            if (at_end()) fail("unterminated string");
            const char c = s_[pos_];
            if (c == '"') {
                ++pos_;
                return;
            }
            if (static_cast<unsigned char>(c) < 0x20) fail("raw control character in a string");
            if (c != '\\') {
                const std::size_t n = utf8_length();
                if (n == 0) fail("invalid UTF-8 in a string");
                out.append(s_.data() + pos_, n);
                pos_ += n;
                continue;
            }
            ++pos_;
            if (at_end()) fail("unterminated escape");
            const char e = s_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned code = hex4();
                    if (code >= 0xD800 && code <= 0xDBFF) {
                        if (s_.substr(pos_, 2) != "\\u") fail("high surrogate without a low surrogate after it");
                        pos_ += 2;
                        const unsigned low = hex4();
                        if (low < 0xDC00 || low > 0xDFFF) fail("high surrogate without a low surrogate after it");
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    } else if (code >= 0xDC00 && code <= 0xDFFF) {
                        fail("low surrogate without a high surrogate before it");
                    }
                    append_utf8(out, code);
                    break;
                }
                default: --pos_; fail("invalid escape");
            }
        }
    }

    std::string_view s_;
    std::string where_;
    std::size_t pos_ = 0;
};

}  // namespace detail

/// Parses `text` as one strict JSON document (see the file comment); errors throw format_error starting with
/// `where` (a file name, or a description such as "safetensors header of x.safetensors").
inline json_value parse_json(std::string_view text, std::string where) {
    return detail::json_parser(text, std::move(where)).parse_document();
}

/// Reads and parses a JSON file; throws format_error naming the file when it is missing, unreadable or malformed.
inline json_value read_json_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw format_error(path.string() + ": cannot open the JSON file");
    const std::streamoff size = in.tellg();
    if (size < 0) throw format_error(path.string() + ": cannot read the JSON file");
    std::string text(static_cast<std::size_t>(size), '\0');
    in.seekg(0);
    if (size > 0 && !in.read(text.data(), static_cast<std::streamsize>(size)))
        throw format_error(path.string() + ": cannot read the JSON file");
    return parse_json(text, path.string());
}

namespace detail {

/// The JSON text of a string, quoted and escaped (control characters as \u00XX).
inline std::string json_quote(std::string_view text) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            out += "\\u00";
            out += hex[u >> 4];
            out += hex[u & 0xFU];
        } else {
            out += c;
        }
    }
    return out + "\"";
}

/// The integer field `key` of object `cfg`; format_error naming the path when absent, null or not an integer.
inline std::int64_t json_integer(const json_value& cfg, std::string_view key) { return cfg.at(key).as_int64(); }

/// The optional integer field `key`, or `fallback` when absent or null.
inline std::int64_t json_integer_or(const json_value& cfg, std::string_view key, std::int64_t fallback) {
    const json_value* v = cfg.find(key);
    return v == nullptr || v->is_null() ? fallback : v->as_int64();
}

/// The optional number field `key`, or `fallback` when absent or null.
inline double json_number_or(const json_value& cfg, std::string_view key, double fallback) {
    const json_value* v = cfg.find(key);
    return v == nullptr || v->is_null() ? fallback : v->as_double();
}

/// The optional boolean field `key`, or `fallback` when absent or null.
inline bool json_flag_or(const json_value& cfg, std::string_view key, bool fallback) {
    const json_value* v = cfg.find(key);
    return v == nullptr || v->is_null() ? fallback : v->as_bool();
}

/// The optional string field `key`, or `fallback` when absent or null.
inline std::string json_text_or(const json_value& cfg, std::string_view key, std::string fallback) {
    const json_value* v = cfg.find(key);
    return v == nullptr || v->is_null() ? fallback : v->as_string();
}

}  // namespace detail

MECHLENS_END_NAMESPACE
