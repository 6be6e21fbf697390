#pragma once
/// @file
/// NumPy `.npy` files (format 1.0/2.0, little-endian, C order): write float/int arrays, read them back as float.

#include <array>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// An array read from a `.npy` file, converted to float.
struct npy_array {
    std::vector<index_t> shape;  ///< Extents, outermost first (C order); empty for a 0-d array.
    std::vector<float> data;     ///< Elements in C (row-major) order; size is the product of `shape`.
};

namespace detail {

/// The NumPy dtype string of a supported element type.
template <class T>
constexpr const char* npy_descr() {
    if constexpr (std::is_same_v<T, float>)
        return "<f4";
    else if constexpr (std::is_same_v<T, double>)
        return "<f8";
    else if constexpr (std::is_same_v<T, std::int32_t>)
        return "<i4";
    else if constexpr (std::is_same_v<T, std::int64_t>)
        return "<i8";
    else
        static_assert(sizeof(T) == 0, "mechlens: write_npy supports float, double, int32 and int64 elements");
}

/// Everything before the data: magic, version, header length and the padded header dict, as NumPy writes it.
inline std::string npy_prefix(const char* descr, const std::vector<index_t>& shape) {
    std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
    for (std::size_t i = 0; i < shape.size(); ++i) dict += (i ? ", " : "") + std::to_string(shape[i]);
    dict += shape.size() == 1 ? ",), }" : "), }";
    // Pad with spaces and end with '\n' so that the data starts at a multiple of 64 bytes (format 1.0: 10-byte
    // preamble; 2.0, needed past 65535 header bytes: 12).
    std::size_t preamble = 10;
    std::size_t header = dict.size() + 1;
    header += 64 - (preamble + header) % 64;
    std::uint8_t major = 1;
    if (header > 65535) {
        preamble = 12;
        major = 2;
        header = dict.size() + 1;
        header += 64 - (preamble + header) % 64;
    }
    std::string out("\x93NUMPY", 6);
    out += static_cast<char>(major);
    out += '\0';
    for (std::size_t i = 0; i < preamble - 8; ++i) out += static_cast<char>((header >> (8 * i)) & 0xffu);
    out += dict;
    out.append(header - dict.size() - 1, ' ');
    out += '\n';
    return out;
}

/// Writes prefix and `bytes` bytes of data to `path`; throws format_error naming the file on I/O failure.
inline void write_npy_bytes(const std::filesystem::path& path, const std::string& prefix, const void* data,
                            std::size_t bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) format_fail(path.string(), "cannot open for writing");
    out.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
    if (bytes > 0) out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    out.close();
    if (!out) format_fail(path.string(), "write failed");
}

/// Element count of `shape`; throws std::invalid_argument on negative extents or overflow.
inline index_t npy_element_count(const std::vector<index_t>& shape) {
    index_t count = 1;
    for (index_t e : shape) {
        if (e < 0) throw std::invalid_argument("write_npy: negative extent " + std::to_string(e));
        if (e != 0 && count > std::numeric_limits<index_t>::max() / e)
            throw std::invalid_argument("write_npy: element count overflows");
        count *= e;
    }
    return count;
}

/// A cursor over the Python-literal header dict of a .npy file.
class npy_header_parser {
public:
    /// Parses `text`; failures go through `reader` (which names the file).
    npy_header_parser(std::string_view text, const byte_reader& reader) : s_(text), r_(reader) {}

    /// Reads the dict into descr, fortran_order and shape; throws format_error on anything else.
    void parse(std::string& descr, bool& fortran_order, std::vector<index_t>& shape) {
        bool seen[3] = {false, false, false};
        expect('{');
        while (true) {
            skip_space();
            if (peek() == '}') break;
            const std::string key = string_literal();
            expect(':');
            skip_space();
            if (key == "descr") {
                if (peek() != '\'' && peek() != '"') fail("descr is not a simple dtype string (structured arrays?)");
                descr = string_literal();
                seen[0] = true;
            } else if (key == "fortran_order") {
                fortran_order = boolean_literal();
                seen[1] = true;
            } else if (key == "shape") {
                shape = tuple_literal();
                seen[2] = true;
            } else {
                fail("unexpected key '" + key + "'");
            }
            skip_space();
            if (peek() == ',')
                ++pos_;
            else if (peek() != '}')
                fail("expected ',' or '}'");
        }
        ++pos_;
        while (pos_ < s_.size())
            if (!std::isspace(static_cast<unsigned char>(s_[pos_++]))) fail("text after the dict");
        if (!seen[0] || !seen[1] || !seen[2]) fail("missing 'descr', 'fortran_order' or 'shape'");
    }

private:
    [[noreturn]] void fail(const std::string& problem) const { r_.fail("malformed .npy header: " + problem); }
    char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
    void skip_space() {
        while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    }
    void expect(char c) {
        skip_space();
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++pos_;
    }
    std::string string_literal() {
        skip_space();
        const char quote = peek();
        if (quote != '\'' && quote != '"') fail("expected a quoted string");
        const std::size_t end = s_.find(quote, pos_ + 1);
        if (end == std::string_view::npos) fail("unterminated string");
        std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
        pos_ = end + 1;
        return out;
    }
    bool boolean_literal() {
        if (s_.substr(pos_, 4) == "True") {
            pos_ += 4;
            return true;
        }
        if (s_.substr(pos_, 5) == "False") {
            pos_ += 5;
            return false;
        }
        fail("fortran_order is neither True nor False");
    }
    std::vector<index_t> tuple_literal() {
        expect('(');
        std::vector<index_t> out;
        while (true) {
            skip_space();
            if (peek() == ')') break;
            if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("shape holds something other than integers");
            index_t v = 0;
            while (std::isdigit(static_cast<unsigned char>(peek()))) {
                if (v > (std::numeric_limits<index_t>::max() - 9) / 10) fail("shape extent too large");
                v = v * 10 + (s_[pos_++] - '0');
            }
            if (peek() == 'L') ++pos_;  // Python 2 long literals
            out.push_back(v);
            if (out.size() > 32) fail("more than 32 dimensions");
            skip_space();
            if (peek() == ',')
                ++pos_;
            else if (peek() != ')')
                fail("expected ',' or ')' in shape");
        }
        ++pos_;
        return out;
    }

    std::string_view s_;
    const byte_reader& r_;
    std::size_t pos_ = 0;
};

/// Converts `count` little-endian elements of type T at `bytes` to float.
template <class T>
void npy_convert(const std::byte* bytes, std::size_t count, std::vector<float>& out) {
    out.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
        T v{};
        std::memcpy(&v, bytes + i * sizeof(T), sizeof(T));
        out[i] = static_cast<float>(v);  // narrowing by design; f8 beyond float range becomes inf (IEEE)
    }
}

}  // namespace detail

/// Writes `shape`-d float32 data in C order as a NumPy '<f4' array (format 1.0, or 2.0 for huge headers).
inline void write_npy(const std::filesystem::path& path, const float* data, const std::vector<index_t>& shape) {
    const index_t count = detail::npy_element_count(shape);
    if (count > 0 && data == nullptr) throw std::invalid_argument("write_npy: null data for a non-empty array");
    detail::write_npy_bytes(path, detail::npy_prefix("<f4", shape), data,
                            static_cast<std::size_t>(count) * sizeof(float));
}

/// Writes a (possibly strided) view in C order; T is float, double, int32 or int64 (const or not).
template <class T, std::size_t Rank>
void write_npy(const std::filesystem::path& path, const tensor_view<T, Rank>& view) {
    using element = std::remove_const_t<T>;
    const std::vector<index_t> shape(view.shape().begin(), view.shape().end());
    std::vector<element> dense(static_cast<std::size_t>(view.size()));
    if (!dense.empty()) {
        // Walk the indices in row-major order (an odometer), so any strides work.
        std::array<index_t, Rank> idx{};
        for (element& out : dense) {
            index_t offset = 0;
            for (std::size_t a = 0; a < Rank; ++a) offset += idx[a] * view.stride(a);
            out = view.data()[offset];
            for (std::size_t a = Rank; a-- > 0;) {
                if (++idx[a] < view.extent(a)) break;
                idx[a] = 0;
            }
        }
    }
    detail::write_npy_bytes(path, detail::npy_prefix(detail::npy_descr<element>(), shape), dense.data(),
                            dense.size() * sizeof(element));
}

/// Writes an owning tensor; see the view overload.
template <class T, std::size_t Rank>
void write_npy(const std::filesystem::path& path, const tensor<T, Rank>& t) {
    write_npy(path, t.view());
}

/// Reads a .npy file of dtype '<f4', '<f8', '<i4' or '<i8' (converted to float); throws format_error naming the file
/// for any other dtype, fortran_order True, bad magic, an unsupported version, a malformed header or truncated data.
inline npy_array read_npy(const std::filesystem::path& path);

/// Parses the `size` bytes of a .npy file at `data` (errors name `where`); read_npy without the file.
inline npy_array parse_npy(const std::byte* data, std::size_t size, const std::string& where) {
    detail::byte_reader r(data, size, where);
    if (size < 6 || std::memcmp(data, "\x93NUMPY", 6) != 0) r.fail("not a .npy file (bad magic)");
    r.take(6, "magic");
    const auto major = r.read<std::uint8_t>("version");
    const auto minor = r.read<std::uint8_t>("version");
    std::uint64_t header_length = 0;
    if (major == 1 && minor == 0)
        header_length = r.read<std::uint16_t>("header length");
    else if ((major == 2 || major == 3) && minor == 0)
        header_length = r.read<std::uint32_t>("header length");
    else
        r.fail("unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
    const std::string header = r.read_string(header_length, "header");

    std::string descr;
    bool fortran_order = false;
    npy_array out;
    detail::npy_header_parser(header, r).parse(descr, fortran_order, out.shape);
    if (fortran_order) r.fail("fortran_order True arrays are not supported (save C-ordered arrays)");
    std::size_t item = 0;
    if (descr == "<f4" || descr == "<i4")
        item = 4;
    else if (descr == "<f8" || descr == "<i8")
        item = 8;
    else
        r.fail("unsupported dtype '" + descr + "' (only <f4, <f8, <i4, <i8)");

    std::uint64_t count = 1;
    for (index_t e : out.shape)
        count = detail::checked_mul(count, static_cast<std::uint64_t>(e), where, "array");
    const std::uint64_t bytes = detail::checked_mul(count, item, where, "array data");
    const std::byte* elements = r.take(bytes, "array data");  // fits in the input, hence in size_t
    const auto n = static_cast<std::size_t>(count);
    if (descr == "<f4")
        detail::npy_convert<float>(elements, n, out.data);
    else if (descr == "<f8")
        detail::npy_convert<double>(elements, n, out.data);
    else if (descr == "<i4")
        detail::npy_convert<std::int32_t>(elements, n, out.data);
    else
        detail::npy_convert<std::int64_t>(elements, n, out.data);
    return out;
}

inline npy_array read_npy(const std::filesystem::path& path) {
    const std::shared_ptr<const mapped_file> file = mapped_file::open(path);
    return parse_npy(file->data(), file->size(), path.string());
}

MECHLENS_END_NAMESPACE
