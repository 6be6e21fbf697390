#pragma once
/// @file
/// Writes GGUF v3 files (little-endian): typed metadata (any gguf_value, arrays included) and tensors (F32 values, or
/// encoded blocks of a type whose layout is known), with the
/// data section and every tensor aligned to 32 bytes (general.alignment's default). What gguf_file reads back is
/// what was written; llama.cpp's gguf reader opens the same files.

#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/io/gguf.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One tensor to write: its name, its extents in ggml order (dims[0] varies fastest) and its data: floats for an F32
/// tensor, or the encoded blocks of another ggml type (e.g. Q8_0 from quantize_q8_0, or bytes copied from a file).
struct gguf_tensor_to_write {
    std::string name;                     ///< Tensor name, e.g. "direction.3".
    std::vector<std::uint64_t> dims;      ///< 1 to 4 extents, ggml order.
    std::span<const float> values;         ///< Product(dims) floats, for an F32 tensor given as floats.
    ggml_type type = ggml_type::f32;       ///< Storage type.
    std::span<const std::byte> encoded{};  ///< Or its stored bytes: the blocks of product(dims) elements of `type`.
};

namespace detail {

static_assert(std::endian::native == std::endian::little, "mechlens: GGUF files are written little-endian");

/// Appends the bytes of a trivially copyable value.
template <class T>
void append_bytes(std::string& out, const T& value) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    out.append(bytes, sizeof(T));
}

/// Appends a GGUF string (uint64 length + bytes).
inline void append_gguf_string(std::string& out, const std::string& s) {
    append_bytes(out, static_cast<std::uint64_t>(s.size()));
    out += s;
}

/// Appends the payload of `value` (no type tag) as GGUF stores it; throws std::invalid_argument when the value's
/// storage does not fit its type.
inline void append_gguf_payload(std::string& out, const gguf_value& value, gguf_type type) {
    const auto& v = value.storage();
    auto integer = [&]() -> std::int64_t {
        if (const auto* s = std::get_if<std::int64_t>(&v)) return *s;
        if (const auto* u = std::get_if<std::uint64_t>(&v)) return static_cast<std::int64_t>(*u);
        throw std::invalid_argument("write_gguf: an integer metadata value holds no integer");
    };
    auto real = [&]() -> double {
        if (const auto* f = std::get_if<double>(&v)) return *f;
        throw std::invalid_argument("write_gguf: a float metadata value holds no float");
    };
    switch (type) {
        case gguf_type::uint8:
            append_bytes(out, static_cast<std::uint8_t>(integer()));
            break;
        case gguf_type::int8:
            append_bytes(out, static_cast<std::int8_t>(integer()));
            break;
        case gguf_type::uint16:
            append_bytes(out, static_cast<std::uint16_t>(integer()));
            break;
        case gguf_type::int16:
            append_bytes(out, static_cast<std::int16_t>(integer()));
            break;
        case gguf_type::uint32:
            append_bytes(out, static_cast<std::uint32_t>(integer()));
            break;
        case gguf_type::int32:
            append_bytes(out, static_cast<std::int32_t>(integer()));
            break;
        case gguf_type::uint64:
            append_bytes(out, static_cast<std::uint64_t>(integer()));
            break;
        case gguf_type::int64:
            append_bytes(out, integer());
            break;
        case gguf_type::float32:
            append_bytes(out, static_cast<float>(real()));
            break;
        case gguf_type::float64:
            append_bytes(out, real());
            break;
        case gguf_type::boolean: {
            const auto* b = std::get_if<bool>(&v);
            if (b == nullptr) throw std::invalid_argument("write_gguf: a bool metadata value holds no bool");
            append_bytes(out, static_cast<std::uint8_t>(*b ? 1 : 0));
            break;
        }
        case gguf_type::string: {
            const std::string* s = value.as_string();
            if (s == nullptr) throw std::invalid_argument("write_gguf: a string metadata value holds no string");
            append_gguf_string(out, *s);
            break;
        }
        case gguf_type::array: {
            const gguf_value::array_type* elements = value.as_array();
            if (elements == nullptr) throw std::invalid_argument("write_gguf: an array metadata value holds no array");
            append_bytes(out, static_cast<std::uint32_t>(value.element_type()));
            append_bytes(out, static_cast<std::uint64_t>(elements->size()));
            for (const gguf_value& e : *elements) append_gguf_payload(out, e, value.element_type());
            break;
        }
        default:
            throw std::invalid_argument("write_gguf: unknown metadata type " + std::to_string(static_cast<int>(type)));
    }
}

}  // namespace detail

/// Writes a GGUF v3 file at `path` with `metadata` (in the given order; keys must be unique) and `tensors` (unique
/// names, 1 to 4 dims whose product is the number of values, or for an encoded type rows of whole blocks and the
/// bytes those blocks take). Throws std::invalid_argument for
/// inconsistent input (nothing is written then), format_error naming the file when writing fails.
inline void write_gguf(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, gguf_value>>& metadata,
                       const std::vector<gguf_tensor_to_write>& tensors) {
    constexpr std::uint64_t alignment = 32;
    std::string header;
    header += "GGUF";
    detail::append_bytes(header, std::uint32_t{3});
    detail::append_bytes(header, static_cast<std::uint64_t>(tensors.size()));
    detail::append_bytes(header, static_cast<std::uint64_t>(metadata.size()));
    for (std::size_t i = 0; i < metadata.size(); ++i) {
        const auto& [key, value] = metadata[i];
        if (key.empty()) throw std::invalid_argument("write_gguf: an empty metadata key");
        for (std::size_t j = 0; j < i; ++j)
            if (metadata[j].first == key)
                throw std::invalid_argument("write_gguf: duplicate metadata key '" + key + "'");
        detail::append_gguf_string(header, key);
        detail::append_bytes(header, static_cast<std::uint32_t>(value.type()));
        detail::append_gguf_payload(header, value, value.type());
    }
    std::uint64_t offset = 0;
    std::vector<std::uint64_t> offsets;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        const gguf_tensor_to_write& t = tensors[i];
        for (std::size_t j = 0; j < i; ++j)
            if (tensors[j].name == t.name)
                throw std::invalid_argument("write_gguf: duplicate tensor name '" + t.name + "'");
        if (t.name.empty()) throw std::invalid_argument("write_gguf: an empty tensor name");
        if (t.dims.empty() || t.dims.size() > 4)
            throw std::invalid_argument("write_gguf: tensor '" + t.name + "' needs 1 to 4 dims");
        std::uint64_t count = 1;
        for (std::uint64_t d : t.dims) count *= d;
        std::uint64_t n_bytes = 0;
        if (t.type == ggml_type::f32 && t.encoded.empty()) {
            if (count != t.values.size())
                throw std::invalid_argument("write_gguf: tensor '" + t.name + "' has " +
                                            std::to_string(t.values.size()) + " values for dims whose product is " +
                                            std::to_string(count));
            n_bytes = count * sizeof(float);
        } else {
            const auto [per_block, block_bytes] = detail::ggml_block_layout(t.type);
            if (per_block == 0)
                throw std::invalid_argument("write_gguf: tensor '" + t.name + "' has type " + to_string(t.type) +
                                            ", whose layout is unknown");
            if (t.dims[0] % per_block != 0)
                throw std::invalid_argument("write_gguf: tensor '" + t.name + "' of type " + to_string(t.type) +
                                            " has rows of " + std::to_string(t.dims[0]) +
                                            " elements, not whole blocks of " + std::to_string(per_block));
            n_bytes = count / per_block * block_bytes;
            if (n_bytes != t.encoded.size())
                throw std::invalid_argument("write_gguf: tensor '" + t.name + "' has " +
                                            std::to_string(t.encoded.size()) + " bytes where " + to_string(t.type) +
                                            " needs " + std::to_string(n_bytes));
        }
        detail::append_gguf_string(header, t.name);
        detail::append_bytes(header, static_cast<std::uint32_t>(t.dims.size()));
        for (std::uint64_t d : t.dims) detail::append_bytes(header, d);
        detail::append_bytes(header, static_cast<std::uint32_t>(t.type));
        detail::append_bytes(header, offset);
        offsets.push_back(offset);
        offset += n_bytes;
        offset += (alignment - offset % alignment) % alignment;
    }
    header.append((alignment - header.size() % alignment) % alignment, '\0');

    // Written beside the destination and renamed over it once complete: a failed write leaves no partial file and
    // any earlier file at `path` as it was. Each tensor's bytes go straight from the caller's buffer to the file.
    const std::filesystem::path partial = path.string() + ".partial";
    {
        std::ofstream out(partial, std::ios::binary | std::ios::trunc);
        if (!out) throw format_error(path.string() + ": cannot open for writing");
        out.write(header.data(), static_cast<std::streamsize>(header.size()));
        const char padding[alignment] = {};
        std::uint64_t written = 0;
        for (std::size_t i = 0; i < tensors.size(); ++i) {
            const gguf_tensor_to_write& t = tensors[i];
            out.write(padding, static_cast<std::streamsize>(offsets[i] - written));
            const auto bytes = t.encoded.empty() ? std::as_bytes(t.values) : t.encoded;
            out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
            written = offsets[i] + bytes.size();
        }
        out.write(padding, static_cast<std::streamsize>(offset - written));
        out.flush();
        if (!out) {
            out.close();
            std::error_code ignored;
            std::filesystem::remove(partial, ignored);
            throw format_error(path.string() + ": write failed");
        }
    }
    std::error_code renamed;
    std::filesystem::rename(partial, path, renamed);
    if (renamed) {
        std::error_code ignored;
        std::filesystem::remove(partial, ignored);
        throw format_error(path.string() + ": cannot replace it (" + renamed.message() + ")");
    }
}

MECHLENS_END_NAMESPACE
