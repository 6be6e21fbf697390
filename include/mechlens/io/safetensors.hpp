#pragma once
/// @file
/// `.safetensors` files of float32 tensors: a writer that Hugging Face's readers (and numpy with a few lines) load
/// unchanged, and a strict, bounds-checked reader (F32, and on request F16 and BF16 converted to float). The layout: an 8-byte little-endian header length N, N bytes of
/// JSON (`{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {...}}`,
/// padded with spaces), then the tensor bytes, offsets relative to the end of the header.

#include <algorithm>
#include <bit>
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
#include "mechlens/io/json.hpp"
#include "mechlens/io/loader_storage.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One float32 tensor to write: a name, row-major extents and a pointer to product(shape) floats.
struct safetensors_tensor_ref {
    std::string name;            ///< Tensor name (any UTF-8 text except "__metadata__").
    std::vector<index_t> shape;  ///< Extents, outermost first.
    const float* data = nullptr; ///< product(shape) floats in row-major order.
};

/// The tensor dtypes a safetensors reader accepts.
enum class safetensors_dtypes : std::uint8_t {
    f32_only,   ///< F32 only (mechlens's own files: checkpoints, activation caches).
    float_any,  ///< F32, F16 and BF16 (Hugging Face and TransformerLens files); halves are converted to float.
};

/// One float32 tensor read from a file (converted to float when the file stored F16 or BF16).
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

/// A JSON number as a non-negative integer that fits in 64 bits, or format_error naming `what`.
inline std::uint64_t json_uint(const json_value& v, const std::string& where, const std::string& what) {
    if (!v.is_number() || v.number_text()[0] == '-' || v.number_text().find_first_of(".eE") != std::string::npos)
        format_fail(where, what + " is not a non-negative integer");
    if (v.number_text().size() > 20) format_fail(where, what + " is too large");
    try {
        return v.as_uint64();
    } catch (const format_error&) {
        format_fail(where, what + " is too large");
    }
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

/// Reads a `.safetensors` file whose tensors are all F32 (or, with safetensors_dtypes::float_any, F32, F16 or BF16,
/// converted to float). Throws format_error naming the file for anything else: truncation, a header that is not
/// strict JSON or not the safetensors schema, another dtype, offsets that do not match the shape or do not tile the
/// data exactly (no holes, no overlaps, nothing after the last tensor).
inline safetensors_file read_safetensors(const std::filesystem::path& path,
                                         safetensors_dtypes accepted = safetensors_dtypes::f32_only);

/// Parses the `size` bytes of a `.safetensors` file at `bytes` (errors name `where`); read_safetensors without the file.
inline safetensors_file parse_safetensors(const std::byte* bytes, std::size_t size, const std::string& where,
                                          safetensors_dtypes accepted = safetensors_dtypes::f32_only) {
    detail::byte_reader r(bytes, size, where);
    const auto header_length = r.read<std::uint64_t>("header length");
    if (header_length > detail::safetensors_max_header)
        r.fail("header length " + std::to_string(header_length) + " exceeds the 100 MiB limit");
    const std::string header = r.read_string(header_length, "header");
    if (header.empty() || header[0] != '{') r.fail("the header does not start with '{'");
    const json_value root = parse_json(header, where);
    if (!root.is_object()) r.fail("the header is not a JSON object");
    const std::uint64_t data_size = r.remaining();
    const std::byte* data = r.take(data_size, "tensor data");

    safetensors_file out;
    struct span {
        std::uint64_t begin, end;
        std::size_t tensor;
        std::uint64_t element_bytes;  // 4 (F32) or 2 (F16 / BF16)
        bool brain;                   // BF16 rather than F16
    };
    std::vector<span> spans;
    for (const auto& [name, entry] : root.members()) {
        const std::string what = "tensor '" + name.substr(0, 200) + "'";
        if (name == "__metadata__") {
            if (!entry.is_object()) r.fail("__metadata__ is not an object");
            for (const auto& [key, value] : entry.members()) {
                if (!value.is_string()) r.fail("__metadata__ value of '" + key.substr(0, 200) + "' is not a string");
                out.metadata[key] = value.as_string();
            }
            continue;
        }
        if (!entry.is_object()) r.fail(what + " is not an object");
        const json_value *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
        for (const auto& [key, value] : entry.members()) {
            if (key == "dtype") dtype = &value;
            else if (key == "shape") shape = &value;
            else if (key == "data_offsets") offsets = &value;
            else r.fail(what + " has an unexpected field '" + key.substr(0, 100) + "'");
        }
        if (!dtype || !shape || !offsets) r.fail(what + " lacks dtype, shape or data_offsets");
        if (!dtype->is_string()) r.fail(what + ": dtype is not a string");
        const std::string& type = dtype->as_string();
        const bool half = accepted == safetensors_dtypes::float_any && (type == "F16" || type == "BF16");
        if (type != "F32" && !half)
            r.fail(what + " has dtype " + type.substr(0, 20) +
                   (accepted == safetensors_dtypes::float_any ? "; only F32, F16 and BF16 are supported"
                                                              : "; only F32 is supported"));
        const std::uint64_t element_bytes = half ? 2 : sizeof(float);
        if (!shape->is_array()) r.fail(what + ": shape is not an array");
        if (shape->items().size() > 32) r.fail(what + " has more than 32 dimensions");
        safetensors_tensor t;
        t.name = name;
        std::uint64_t count = 1;
        for (const json_value& e : shape->items()) {
            const std::uint64_t extent = detail::json_uint(e, where, what + " shape extent");
            if (extent > static_cast<std::uint64_t>(PTRDIFF_MAX)) r.fail(what + " shape extent is too large");
            count = detail::checked_mul(count, extent, where, what);
            t.shape.push_back(static_cast<index_t>(extent));
        }
        if (!offsets->is_array() || offsets->items().size() != 2)
            r.fail(what + ": data_offsets is not a [begin, end] pair");
        const std::uint64_t begin = detail::json_uint(offsets->items()[0], where, what + " data_offsets");
        const std::uint64_t end = detail::json_uint(offsets->items()[1], where, what + " data_offsets");
        if (begin > end || end > data_size)
            r.fail(what + " data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   ") lie outside the " + std::to_string(data_size) + " data bytes");
        if (end - begin != detail::checked_mul(count, element_bytes, where, what))
            r.fail(what + " holds " + std::to_string(end - begin) + " bytes, but its shape needs " +
                   std::to_string(count * element_bytes));
        spans.push_back({begin, end, out.tensors.size(), element_bytes, type == "BF16"});
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
    // Copy only now: tensors that tile the data cannot overlap, so the copies add up to at most twice the file's
    // size (copying first let many tensors naming the same bytes allocate that many copies).
    for (const span& s : spans) {
        std::vector<float>& values = out.tensors[s.tensor].values;
        values.resize(static_cast<std::size_t>((s.end - s.begin) / s.element_bytes));
        if (values.empty()) continue;
        if (s.element_bytes == sizeof(float)) {
            std::memcpy(values.data(), data + s.begin, static_cast<std::size_t>(s.end - s.begin));
            continue;
        }
        for (std::size_t i = 0; i < values.size(); ++i) {
            std::uint16_t h = 0;
            std::memcpy(&h, data + s.begin + 2 * i, sizeof h);
            // BF16 is the top half of a float32; F16 is IEEE binary16.
            values[i] = s.brain ? std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16) : detail::half_to_float(h);
        }
    }
    return out;
}

inline safetensors_file read_safetensors(const std::filesystem::path& path, safetensors_dtypes accepted) {
    const std::shared_ptr<const mapped_file> file = mapped_file::open(path);
    return parse_safetensors(file->data(), file->size(), path.string(), accepted);
}

MECHLENS_END_NAMESPACE
