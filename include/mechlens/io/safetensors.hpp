#pragma once
/// @file
/// `.safetensors` files of float32 tensors: a writer that Hugging Face's readers (and numpy with a few lines) load
/// unchanged, and a strict, bounds-checked reader. The layout: an 8-byte little-endian header length N, N bytes of
/// JSON (`{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {...}}`,
/// padded with spaces), then the tensor bytes, offsets relative to the end of the header.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One float32 tensor to write: a name, row-major extents and a pointer to product(shape) floats.
struct safetensors_tensor_ref {
    std::string name;            ///< Tensor name (any UTF-8 text except "__metadata__").
    std::vector<index_t> shape;  ///< Extents, outermost first.
    const float* data = nullptr; ///< product(shape) floats in row-major order.
};

/// One float32 tensor read from a file.
struct safetensors_tensor {
    std::string name;            ///< Tensor name.
    std::vector<index_t> shape;  ///< Extents, outermost first.
    std::vector<float> values;   ///< product(shape) floats in row-major order.
};

/// The contents of a `.safetensors` file.
struct safetensors_file {
    std::vector<safetensors_tensor> tensors;        ///< In the order of the header.
    std::map<std::string, std::string> metadata;   ///< The `__metadata__` strings (empty when absent).
};

namespace detail {

struct json_member;

/// A parsed JSON value; numbers keep their text so integers of any size are checked when converted.
struct json_value {
    /// The JSON type of the value.
    enum class type : std::uint8_t { null, boolean, number, string, array, object };
    type kind = type::null;                                   ///< Which of the members below is meaningful.
    bool boolean = false;                                     ///< For type::boolean.
    std::string text;                                         ///< A string's content, or a number's digits.
    std::vector<json_value> items;                            ///< For type::array.
    std::vector<json_member> members;                         ///< For type::object, in file order, keys unique.
};

/// One key and value of a JSON object. A named struct rather than std::pair: a pair of the still incomplete
/// json_value inside json_value's own vector is rejected by clang with libstdc++ (vector of an incomplete class
/// type is allowed since C++17; pair of one is not).
struct json_member {
    std::string key;   ///< The member's name.
    json_value value;  ///< The member's value.
};

/// A strict RFC 8259 JSON parser over untrusted text: every read is bounds-checked, nesting is limited, strings
/// must be valid UTF-8 without raw control characters, object keys must be unique; errors name `where`.
class json_parser {
public:
    /// A parser over `text`; errors throw format_error "`where`: malformed JSON header: ...".
    json_parser(std::string_view text, std::string where) : s_(text), where_(std::move(where)) {}

    /// Parses one value followed only by whitespace.
    json_value parse_document() {
        json_value v = value(0);
        skip_space();
        if (pos_ != s_.size()) fail("unexpected text after the top-level value");
        return v;
    }

private:
    static constexpr int max_depth = 64;

    [[noreturn]] void fail(const std::string& problem) const {
        format_fail(where_, "malformed JSON header: " + problem + " at byte " + std::to_string(pos_));
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

    json_value value(int depth) {
        if (depth > max_depth) fail("nesting deeper than " + std::to_string(max_depth));
        skip_space();
        if (at_end()) fail("unexpected end");
        json_value v;
        switch (peek()) {
            case '{': v.kind = json_value::type::object; object(v, depth); break;
            case '[': v.kind = json_value::type::array; array(v, depth); break;
            case '"': v.kind = json_value::type::string; v.text = string(); break;
            case 't': expect_word("true"); v.kind = json_value::type::boolean; v.boolean = true; break;
            case 'f': expect_word("false"); v.kind = json_value::type::boolean; break;
            case 'n': expect_word("null"); break;
            default: v.kind = json_value::type::number; v.text = number(); break;
        }
        return v;
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
            std::string key = string();
            skip_space();
            if (peek() != ':') fail("expected ':'");
            ++pos_;
            v.members.push_back(json_member{std::move(key), value(depth + 1)});
            skip_space();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == '}') {
                ++pos_;
                check_unique_keys(v);
                return;
            }
            fail("expected ',' or '}'");
        }
    }

    // Duplicates are looked for once the object is complete, by sorting pointers to the keys: O(n log n), where
    // comparing every new key with all earlier ones made a header of many short keys quadratic.
    void check_unique_keys(const json_value& v) const {
        std::vector<const std::string*> keys;
        keys.reserve(v.members.size());
        for (const json_member& member : v.members) keys.push_back(&member.key);
        std::sort(keys.begin(), keys.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
        const auto twin = std::adjacent_find(keys.begin(), keys.end(),
                                             [](const std::string* a, const std::string* b) { return *a == *b; });
        if (twin != keys.end()) fail("duplicate key \"" + (*twin)->substr(0, 100) + "\" in the object ending");
    }

    void array(json_value& v, int depth) {
        ++pos_;  // '['
        skip_space();
        if (peek() == ']') {
            ++pos_;
            return;
        }
        while (true) {
            v.items.push_back(value(depth + 1));
            skip_space();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == ']') {
                ++pos_;
                return;
            }
            fail("expected ',' or ']'");
        }
    }

    std::string number() {
        const std::size_t begin = pos_;
        auto digits = [&] {
            const std::size_t start = pos_;
            while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
            if (pos_ == start) fail("expected a digit");
        };
        if (peek() == '-') ++pos_;
        if (peek() == '0')
            ++pos_;  // no leading zeros
        else
            digits();
        if (peek() == '.') {
            ++pos_;
            digits();
        }
        if (peek() == 'e' || peek() == 'E') {
            ++pos_;
            if (peek() == '+' || peek() == '-') ++pos_;
            digits();
        }
        return std::string(s_.substr(begin, pos_ - begin));
    }

    unsigned hex4() {
        if (s_.size() - pos_ < 4) fail("truncated \\u escape");
        unsigned code = 0;
        for (int i = 0; i < 4; ++i) {
            const char c = s_[pos_++];
            code <<= 4;
            if (c >= '0' && c <= '9') code |= static_cast<unsigned>(c - '0');
            else if (c >= 'a' && c <= 'f') code |= static_cast<unsigned>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') code |= static_cast<unsigned>(c - 'A' + 10);
            else fail("invalid \\u escape");
        }
        return code;
    }

    static void append_utf8(std::string& out, unsigned code) {
        if (code < 0x80) {
            out += static_cast<char>(code);
        } else if (code < 0x800) {
            out += static_cast<char>(0xC0u | (code >> 6));
            out += static_cast<char>(0x80u | (code & 0x3Fu));
        } else if (code < 0x10000) {
            out += static_cast<char>(0xE0u | (code >> 12));
            out += static_cast<char>(0x80u | ((code >> 6) & 0x3Fu));
            out += static_cast<char>(0x80u | (code & 0x3Fu));
        } else {
            out += static_cast<char>(0xF0u | (code >> 18));
            out += static_cast<char>(0x80u | ((code >> 12) & 0x3Fu));
            out += static_cast<char>(0x80u | ((code >> 6) & 0x3Fu));
            out += static_cast<char>(0x80u | (code & 0x3Fu));
        }
    }

    /// Length of the valid UTF-8 sequence starting at pos_ (1 to 4), or 0 when it is invalid.
    std::size_t utf8_length() const noexcept {
        const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s_[pos_ + i]); };
        const unsigned char c = byte(0);
        std::size_t n = 0;
        unsigned code = 0;
        if (c < 0x80) return 1;
        if ((c & 0xE0u) == 0xC0u) n = 2, code = c & 0x1Fu;
        else if ((c & 0xF0u) == 0xE0u) n = 3, code = c & 0x0Fu;
        else if ((c & 0xF8u) == 0xF0u) n = 4, code = c & 0x07u;
        else return 0;
        if (s_.size() - pos_ < n) return 0;
        for (std::size_t i = 1; i < n; ++i) {
            if ((byte(i) & 0xC0u) != 0x80u) return 0;
            code = (code << 6) | (byte(i) & 0x3Fu);
        }
        // Reject overlong forms, surrogates and code points past U+10FFFF.
        const unsigned smallest[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (code < smallest[n] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
        return n;
    }

    std::string string() {
        ++pos_;  // opening quote
        std::string out;
        while (true) {
            if (at_end()) fail("unterminated string");
            const char c = s_[pos_];
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (static_cast<unsigned char>(c) < 0x20) fail("raw control character in a string");
            if (c != '\\') {
                const std::size_t n = utf8_length();
                if (n == 0) fail("invalid UTF-8");
                out.append(s_.substr(pos_, n));
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
                        if (s_.substr(pos_, 2) != "\\u") fail("unpaired surrogate");
                        pos_ += 2;
                        const unsigned low = hex4();
                        if (low < 0xDC00 || low > 0xDFFF) fail("unpaired surrogate");
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    } else if (code >= 0xDC00 && code <= 0xDFFF) {
                        fail("unpaired surrogate");
                    }
                    append_utf8(out, code);
                    break;
                }
                default: fail("invalid escape");
            }
        }
    }

    std::string_view s_;
    std::string where_;
    std::size_t pos_ = 0;
};

/// The JSON text of a string, quoted and escaped.
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
            out += hex[u & 0xFu];
        } else {
            out += c;
        }
    }
    return out + "\"";
}

/// A JSON number as a non-negative integer that fits in 64 bits, or format_error naming `what`.
inline std::uint64_t json_uint(const json_value& v, const std::string& where, const std::string& what) {
    if (v.kind != json_value::type::number || v.text.empty() || v.text[0] == '-' ||
        v.text.find_first_of(".eE") != std::string::npos)
        format_fail(where, what + " is not a non-negative integer");
    std::uint64_t out = 0;
    for (const char c : v.text) {
        const auto digit = static_cast<std::uint64_t>(c - '0');
        if (out > (UINT64_MAX - digit) / 10) format_fail(where, what + " is too large");
        out = out * 10 + digit;
    }
    return out;
}

/// The largest header accepted: larger than any real one, small enough that a hostile length cannot exhaust memory.
inline constexpr std::uint64_t safetensors_max_header = std::uint64_t{100} << 20;

}  // namespace detail

/// Writes float32 tensors to a `.safetensors` file, data in the given order, with `metadata` as `__metadata__`;
/// the header is padded with spaces to a multiple of 8 bytes so every tensor starts 8-byte aligned. Throws
/// std::invalid_argument for duplicate or reserved names or bad shapes, format_error naming the file on I/O failure.
inline void write_safetensors(const std::filesystem::path& path, const std::vector<safetensors_tensor_ref>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\":{";
        bool first = true;
        for (const auto& [key, value] : metadata) {
            if (!first) header += ',';
            header += detail::json_quote(key);
            header += ':';
            header += detail::json_quote(value);
            first = false;
        }
        header += "}";
    }
    std::vector<std::string> names;
    std::uint64_t offset = 0;
    for (const safetensors_tensor_ref& t : tensors) {
        if (t.name == "__metadata__") throw std::invalid_argument("write_safetensors: the name __metadata__ is reserved");
        if (std::find(names.begin(), names.end(), t.name) != names.end())
            throw std::invalid_argument("write_safetensors: duplicate tensor name '" + t.name + "'");
        names.push_back(t.name);
        std::uint64_t count = 1;
        std::string shape;
        for (index_t e : t.shape) {
            if (e < 0) throw std::invalid_argument("write_safetensors: negative extent in '" + t.name + "'");
            count = detail::checked_mul(count, static_cast<std::uint64_t>(e), path.string(), t.name);
            if (!shape.empty()) shape += ',';
            shape += std::to_string(e);
        }
        if (count > 0 && t.data == nullptr)
            throw std::invalid_argument("write_safetensors: null data for tensor '" + t.name + "'");
        const std::uint64_t end = detail::checked_add(offset, count * sizeof(float), path.string(), t.name);
        if (header.size() > 1) header += ',';
        header += detail::json_quote(t.name);
        header += ":{\"dtype\":\"F32\",\"shape\":[" + shape + "],\"data_offsets\":[" + std::to_string(offset) + "," +
                  std::to_string(end) + "]}";
        offset = end;
    }
    header += "}";
    header.append((8 - header.size() % 8) % 8, ' ');

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) detail::format_fail(path.string(), "cannot open for writing");
    const auto length = static_cast<std::uint64_t>(header.size());
    char length_bytes[8];
    for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<char>((length >> (8 * i)) & 0xffu);
    out.write(length_bytes, 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const safetensors_tensor_ref& t : tensors) {
        std::size_t count = 1;
        for (index_t e : t.shape) count *= static_cast<std::size_t>(e);
        if (count > 0)
            out.write(reinterpret_cast<const char*>(t.data), static_cast<std::streamsize>(count * sizeof(float)));
    }
    out.close();
    if (!out) detail::format_fail(path.string(), "write failed");
}

/// Reads a `.safetensors` file whose tensors are all F32. Throws format_error naming the file for anything else:
/// truncation, a header that is not strict JSON or not the safetensors schema, another dtype, offsets that do not
/// match the shape or do not tile the data exactly (no holes, no overlaps, nothing after the last tensor).
inline safetensors_file read_safetensors(const std::filesystem::path& path);

/// Parses the `size` bytes of a `.safetensors` file at `bytes` (errors name `where`); read_safetensors without the file.
inline safetensors_file parse_safetensors(const std::byte* bytes, std::size_t size, const std::string& where) {
    detail::byte_reader r(bytes, size, where);
    const auto header_length = r.read<std::uint64_t>("header length");
    if (header_length > detail::safetensors_max_header)
        r.fail("header length " + std::to_string(header_length) + " exceeds the 100 MiB limit");
    const std::string header = r.read_string(header_length, "header");
    if (header.empty() || header[0] != '{') r.fail("the header does not start with '{'");
    const detail::json_value root = detail::json_parser(header, where).parse_document();
    if (root.kind != detail::json_value::type::object) r.fail("the header is not a JSON object");
    const std::uint64_t data_size = r.remaining();
    const std::byte* data = r.take(data_size, "tensor data");

    safetensors_file out;
    struct span {
        std::uint64_t begin, end;
        std::size_t tensor;
    };
    std::vector<span> spans;
    for (const auto& [name, entry] : root.members) {
        const std::string what = "tensor '" + name.substr(0, 200) + "'";
        if (name == "__metadata__") {
            if (entry.kind != detail::json_value::type::object) r.fail("__metadata__ is not an object");
            for (const auto& [key, value] : entry.members) {
                if (value.kind != detail::json_value::type::string)
                    r.fail("__metadata__ value of '" + key.substr(0, 200) + "' is not a string");
                out.metadata[key] = value.text;
            }
            continue;
        }
        if (entry.kind != detail::json_value::type::object) r.fail(what + " is not an object");
        const detail::json_value *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
        for (const auto& [key, value] : entry.members) {
            if (key == "dtype") dtype = &value;
            else if (key == "shape") shape = &value;
            else if (key == "data_offsets") offsets = &value;
            else r.fail(what + " has an unexpected field '" + key.substr(0, 100) + "'");
        }
        if (!dtype || !shape || !offsets) r.fail(what + " lacks dtype, shape or data_offsets");
        if (dtype->kind != detail::json_value::type::string) r.fail(what + ": dtype is not a string");
        if (dtype->text != "F32") r.fail(what + " has dtype " + dtype->text.substr(0, 20) + "; only F32 is supported");
        if (shape->kind != detail::json_value::type::array) r.fail(what + ": shape is not an array");
        if (shape->items.size() > 32) r.fail(what + " has more than 32 dimensions");
        safetensors_tensor t;
        t.name = name;
        std::uint64_t count = 1;
        for (const detail::json_value& e : shape->items) {
            const std::uint64_t extent = detail::json_uint(e, where, what + " shape extent");
            if (extent > static_cast<std::uint64_t>(PTRDIFF_MAX)) r.fail(what + " shape extent is too large");
            count = detail::checked_mul(count, extent, where, what);
            t.shape.push_back(static_cast<index_t>(extent));
        }
        if (offsets->kind != detail::json_value::type::array || offsets->items.size() != 2)
            r.fail(what + ": data_offsets is not a [begin, end] pair");
        const std::uint64_t begin = detail::json_uint(offsets->items[0], where, what + " data_offsets");
        const std::uint64_t end = detail::json_uint(offsets->items[1], where, what + " data_offsets");
        if (begin > end || end > data_size)
            r.fail(what + " data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   ") lie outside the " + std::to_string(data_size) + " data bytes");
        if (end - begin != detail::checked_mul(count, sizeof(float), where, what))
            r.fail(what + " holds " + std::to_string(end - begin) + " bytes, but its shape needs " +
                   std::to_string(count * sizeof(float)));
        spans.push_back({begin, end, out.tensors.size()});
        out.tensors.push_back(std::move(t));
    }
    // Like the reference implementation: the tensors must tile the data area exactly.
    std::sort(spans.begin(), spans.end(), [](const span& a, const span& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t expected = 0;
    for (const span& s : spans) {
        if (s.begin != expected)
            r.fail("tensor '" + out.tensors[s.tensor].name.substr(0, 200) + "' starts at data offset " +
                   std::to_string(s.begin) + ", expected " + std::to_string(expected) +
                   (s.begin < expected ? " (overlapping tensors)" : " (a hole in the data)"));
        expected = s.end;
    }
    if (expected != data_size)
        r.fail("the tensors cover " + std::to_string(expected) + " of the " + std::to_string(data_size) +
               " data bytes");
    // Copy only now: tensors that tile the data cannot overlap, so the copies add up to at most the file's size
    // (copying first let many tensors naming the same bytes allocate that many copies).
    for (const span& s : spans) {
        std::vector<float>& values = out.tensors[s.tensor].values;
        values.resize(static_cast<std::size_t>((s.end - s.begin) / sizeof(float)));
        if (!values.empty()) std::memcpy(values.data(), data + s.begin, static_cast<std::size_t>(s.end - s.begin));
    }
    return out;
}

inline safetensors_file read_safetensors(const std::filesystem::path& path) {
    const std::shared_ptr<const mapped_file> file = mapped_file::open(path);
    return parse_safetensors(file->data(), file->size(), path.string());
}

MECHLENS_END_NAMESPACE
