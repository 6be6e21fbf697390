#pragma once
/// @file
/// A validating parser for GGUF v2/v3 headers: typed metadata, tensor infos and where each tensor's bytes lie.

#include <cstdint>
#include <filesystem>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/mapped_file.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Type tag of a GGUF metadata value (numbering from the GGUF specification).
enum class gguf_type : std::uint32_t {
    uint8 = 0,     ///< 8-bit unsigned integer.
    int8 = 1,      ///< 8-bit signed integer.
    uint16 = 2,    ///< 16-bit unsigned integer.
    int16 = 3,     ///< 16-bit signed integer.
    uint32 = 4,    ///< 32-bit unsigned integer.
    int32 = 5,     ///< 32-bit signed integer.
    float32 = 6,   ///< IEEE binary32.
    boolean = 7,   ///< One byte, 0 or 1.
    string = 8,    ///< uint64 length + UTF-8 bytes.
    array = 9,     ///< Element type + uint64 count + elements.
    uint64 = 10,   ///< 64-bit unsigned integer.
    int64 = 11,    ///< 64-bit signed integer.
    float64 = 12,  ///< IEEE binary64.
};

/// Name of a metadata value type, e.g. "uint32".
inline std::string to_string(gguf_type t) {
    static constexpr const char* names[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                            "bool",  "string", "array",  "uint64", "int64",  "float64"};
    const auto i = static_cast<std::uint32_t>(t);
    return i < 13 ? names[i] : "type " + std::to_string(i);
}

/// Storage type of a tensor (ggml_type numbering); values this enum does not name are still representable.
enum class ggml_type : std::uint32_t {
    f32 = 0,    ///< IEEE binary32: viewed in place.
    f16 = 1,    ///< IEEE binary16: converted to float when loaded.
    q4_0 = 2,   ///< 4-bit blocks of 32: decoded to float when loaded (io/ggml_quants.hpp).
    q4_1 = 3,   ///< 4-bit blocks of 32 with minimum: decoded when loaded.
    q5_0 = 6,   ///< 5-bit blocks of 32: decoded when loaded.
    q5_1 = 7,   ///< 5-bit blocks of 32 with minimum: decoded when loaded.
    q8_0 = 8,   ///< 8-bit blocks of 32: decoded when loaded.
    q4_k = 12,  ///< 4-bit super-blocks of 256 (k-quant): decoded when loaded.
    q5_k = 13,  ///< 5-bit super-blocks of 256 (k-quant): decoded when loaded.
    q6_k = 14,  ///< 6-bit super-blocks of 256 (k-quant): decoded when loaded.
    bf16 = 30,  ///< bfloat16: converted to float when loaded.
};

/// ggml's name of a tensor type, e.g. "Q4_0"; "type N" for numbers it does not know.
inline std::string to_string(ggml_type t) {
    static constexpr const char* names[] = {
        "F32",   "F16",    "Q4_0", "Q4_1", "Q4_2", "Q4_3",    "Q5_0",   "Q5_1",    "Q8_0",  "Q8_1",   "Q2_K",
        "Q3_K",  "Q4_K",   "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8",   "I16",  "I32",  "I64",     "F64",    "IQ1_M",   "BF16"};
    const auto i = static_cast<std::uint32_t>(t);
    return i < std::size(names) ? names[i] : "type " + std::to_string(i);
}

namespace detail {
/// Elements per block and bytes per block of the ggml types whose layout is fixed; {0, 0} when unknown.
inline std::pair<std::uint64_t, std::uint64_t> ggml_block_layout(ggml_type t) noexcept {
    struct layout {
        std::uint32_t type, block, bytes;
    };
    // Quantised blocks: Q4_0 = f16 scale + 16 bytes; Q4_1 adds an f16 minimum; Q5_* add 4 high-bit bytes;
    // Q8_0 = f16 scale + 32 bytes; Q8_1 = Q8_0 + f16 sum; the k-quants Q2_K..Q8_K hold 256 elements (sizes from
    // ggml-common.h). Types missing here (IQ*, TQ*) are parsed but not range-checked.
    static constexpr layout known[] = {
        {0, 1, 4},      {1, 1, 2},      {2, 32, 18},    {3, 32, 20},    {6, 32, 22},   {7, 32, 24},
        {8, 32, 34},    {9, 32, 40},    {10, 256, 84},  {11, 256, 110}, {12, 256, 144}, {13, 256, 176},
        {14, 256, 210}, {15, 256, 292}, {24, 1, 1},     {25, 1, 2},     {26, 1, 4},    {27, 1, 8},
        {28, 1, 8},     {30, 1, 2}};
    for (const layout& l : known)
        if (l.type == static_cast<std::uint32_t>(t)) return {l.block, l.bytes};
    return {0, 0};
}
}  // namespace detail

/// A typed GGUF metadata value; arrays hold their elements as gguf_values of one element type.
class gguf_value {
public:
    using array_type = std::vector<gguf_value>;  ///< Elements of an array value.
    /// Alternatives: unsigned integers, signed integers, floats, bool, string, array.
    using storage_type = std::variant<std::uint64_t, std::int64_t, double, bool, std::string, array_type>;

    /// A uint8 zero.
    gguf_value() = default;
    /// A value of scalar type `type` (or an array of `element_type`) holding `value`.
    gguf_value(gguf_type type, storage_type value, gguf_type element_type = gguf_type::uint8)
        : type_(type), element_type_(element_type), value_(std::move(value)) {}

    /// The value's type.
    [[nodiscard]] gguf_type type() const noexcept { return type_; }
    /// Element type (meaningful for arrays only).
    [[nodiscard]] gguf_type element_type() const noexcept { return element_type_; }

    /// The value as int64 when it is an integer that fits; nullopt otherwise (bool is not an integer).
    [[nodiscard]] std::optional<std::int64_t> as_int() const noexcept {
        if (const auto* s = std::get_if<std::int64_t>(&value_)) return *s;
        if (const auto* u = std::get_if<std::uint64_t>(&value_))
            if (*u <= static_cast<std::uint64_t>(INT64_MAX)) return static_cast<std::int64_t>(*u);
        return std::nullopt;
    }
    /// The value as double when it is a float32/float64; nullopt otherwise.
    [[nodiscard]] std::optional<double> as_float() const noexcept {
        if (const auto* f = std::get_if<double>(&value_)) return *f;
        return std::nullopt;
    }
    /// The value when it is a bool; nullopt otherwise.
    [[nodiscard]] std::optional<bool> as_bool() const noexcept {
        if (const auto* b = std::get_if<bool>(&value_)) return *b;
        return std::nullopt;
    }
    /// The string, or null when the value is not a string.
    [[nodiscard]] const std::string* as_string() const noexcept { return std::get_if<std::string>(&value_); }
    /// The elements, or null when the value is not an array.
    [[nodiscard]] const array_type* as_array() const noexcept { return std::get_if<array_type>(&value_); }
    /// The raw storage.
    [[nodiscard]] const storage_type& storage() const noexcept { return value_; }

private:
    gguf_type type_ = gguf_type::uint8;
    gguf_type element_type_ = gguf_type::uint8;
    storage_type value_ = std::uint64_t{0};
};

/// Where one tensor is and how it is stored.
struct gguf_tensor_info {
    std::string name;                 ///< Tensor name, e.g. "blk.0.attn_q.weight".
    std::vector<std::uint64_t> dims;  ///< Extents in ggml order: dims[0] varies fastest (the columns).
    ggml_type type = ggml_type::f32;  ///< Storage type.
    std::uint64_t offset = 0;         ///< Byte offset relative to the start of the data section.
    std::uint64_t n_elements = 0;     ///< Product of the dims.
    std::uint64_t n_bytes = 0;        ///< Bytes of data, or 0 when the type's layout is unknown to mechlens.
};

/// A parsed and validated GGUF file (versions 2 and 3, little-endian); keeps the mapping alive.
///
/// Construction checks everything a later read relies on: counts that fit in the file, strings and arrays that
/// end inside it, at most 4 dims whose product does not overflow, aligned offsets, unique names and keys, and
/// tensor data inside the file for every type whose layout is known. Any failure throws format_error naming the
/// file and the problem.
class gguf_file {
public:
    /// Maps and parses `path`.
    explicit gguf_file(const std::filesystem::path& path) : gguf_file(mapped_file::open(path)) {}
    /// Parses an existing mapping.
    explicit gguf_file(std::shared_ptr<const mapped_file> file) : file_(std::move(file)) { parse(); }

    /// The mapping (shared with every view into it).
    [[nodiscard]] const std::shared_ptr<const mapped_file>& file() const noexcept { return file_; }
    /// The file's path.
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return file_->path(); }
    /// Format version (2 or 3).
    [[nodiscard]] std::uint32_t version() const noexcept { return version_; }
    /// Alignment of tensor data (general.alignment, default 32).
    [[nodiscard]] std::uint64_t alignment() const noexcept { return alignment_; }
    /// Absolute file offset of the data section.
    [[nodiscard]] std::uint64_t data_offset() const noexcept { return data_offset_; }
    /// All metadata, by key.
    [[nodiscard]] const std::map<std::string, gguf_value, std::less<>>& metadata() const noexcept { return kv_; }
    /// All tensor infos, in file order.
    [[nodiscard]] const std::vector<gguf_tensor_info>& tensors() const noexcept { return tensors_; }

    /// The value of `key`, or null when absent.
    [[nodiscard]] const gguf_value* find(std::string_view key) const noexcept {
        const auto it = kv_.find(key);
        return it == kv_.end() ? nullptr : &it->second;
    }
    /// The value of `key`; throws format_error when absent.
    [[nodiscard]] const gguf_value& at(std::string_view key) const {
        if (const gguf_value* v = find(key)) return *v;
        fail("missing metadata key '" + std::string(key) + "'");
    }
    /// An integer value (any integer type that fits in int64); throws format_error when absent or mistyped.
    [[nodiscard]] std::int64_t get_int(std::string_view key) const {
        const gguf_value& v = at(key);
        if (const auto i = v.as_int()) return *i;
        fail(mistyped(key, v, "an integer"));
    }
    /// An integer value, or `fallback` when absent; throws format_error when mistyped.
    [[nodiscard]] std::int64_t get_int(std::string_view key, std::int64_t fallback) const {
        return find(key) ? get_int(key) : fallback;
    }
    /// A float32/float64 value (integers accepted too); throws format_error when absent or mistyped.
    [[nodiscard]] double get_float(std::string_view key) const {
        const gguf_value& v = at(key);
        if (const auto f = v.as_float()) return *f;
        if (const auto i = v.as_int()) return static_cast<double>(*i);
        fail(mistyped(key, v, "a number"));
    }
    /// A float value, or `fallback` when absent; throws format_error when mistyped.
    [[nodiscard]] double get_float(std::string_view key, double fallback) const {
        return find(key) ? get_float(key) : fallback;
    }
    /// A string value; throws format_error when absent or mistyped.
    [[nodiscard]] const std::string& get_string(std::string_view key) const {
        const gguf_value& v = at(key);
        if (const std::string* s = v.as_string()) return *s;
        fail(mistyped(key, v, "a string"));
    }
    /// An array whose elements have type `element`; throws format_error when absent or mistyped.
    [[nodiscard]] const gguf_value::array_type& get_array(std::string_view key, gguf_type element) const {
        const gguf_value& v = at(key);
        const gguf_value::array_type* a = v.as_array();
        if (a == nullptr) fail(mistyped(key, v, "an array of " + to_string(element)));
        if (v.element_type() != element)
            fail("metadata key '" + std::string(key) + "' is an array of " + to_string(v.element_type()) +
                 ", expected an array of " + to_string(element));
        return *a;
    }

    /// The info of tensor `name`, or null when absent.
    [[nodiscard]] const gguf_tensor_info* find_tensor(std::string_view name) const noexcept {
        const auto it = tensor_index_.find(name);
        return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
    }
    /// The info of tensor `name`; throws format_error when absent.
    [[nodiscard]] const gguf_tensor_info& tensor(std::string_view name) const {
        if (const gguf_tensor_info* t = find_tensor(name)) return *t;
        fail("missing tensor '" + std::string(name) + "'");
    }
    /// First byte of a tensor's data inside the mapping (its n_bytes bytes are in range); throws format_error
    /// when the type's layout is unknown, since then nothing was range-checked.
    [[nodiscard]] const std::byte* tensor_data(const gguf_tensor_info& info) const {
        if (detail::ggml_block_layout(info.type).first == 0)
            fail("tensor '" + info.name + "' has type " + to_string(info.type) + ", whose layout is unknown");
        return file_->data() + (data_offset_ + info.offset);
    }

    /// Throws format_error "<path>: `problem`".
    [[noreturn]] void fail(const std::string& problem) const { detail::format_fail(path().string(), problem); }

private:
    static std::string mistyped(std::string_view key, const gguf_value& v, const std::string& expected) {
        return "metadata key '" + std::string(key) + "' has type " + to_string(v.type()) + ", expected " + expected;
    }

    // Smallest encoding of a value of type t (used to reject counts that cannot fit in the bytes left).
    static std::uint64_t min_encoded_size(gguf_type t) noexcept {
        // uint8, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64
        static constexpr std::uint64_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8};
        const auto i = static_cast<std::uint32_t>(t);
        return i < std::size(sizes) ? sizes[i] : 1;
    }

    gguf_value read_value(detail::byte_reader& r, gguf_type type, const std::string& what, int depth) {
        switch (type) {
            case gguf_type::uint8:
                return {type, std::uint64_t{r.read<std::uint8_t>(what)}};
            case gguf_type::int8:
                return {type, std::int64_t{r.read<std::int8_t>(what)}};
            case gguf_type::uint16:
                return {type, std::uint64_t{r.read<std::uint16_t>(what)}};
            case gguf_type::int16:
                return {type, std::int64_t{r.read<std::int16_t>(what)}};
            case gguf_type::uint32:
                return {type, std::uint64_t{r.read<std::uint32_t>(what)}};
            case gguf_type::int32:
                return {type, std::int64_t{r.read<std::int32_t>(what)}};
            case gguf_type::uint64:
                return {type, r.read<std::uint64_t>(what)};
            case gguf_type::int64:
                return {type, r.read<std::int64_t>(what)};
            case gguf_type::float32:
                return {type, static_cast<double>(r.read<float>(what))};
            case gguf_type::float64:
                return {type, r.read<double>(what)};
            case gguf_type::boolean: {
                const auto b = r.read<std::uint8_t>(what);
                if (b > 1) r.fail(what + " is a bool with byte value " + std::to_string(b) + " (must be 0 or 1)");
                return {type, b == 1};
            }
            case gguf_type::string: {
                // No per-element labels: string arrays can hold 10^5 entries.
                const auto length = r.read<std::uint64_t>(what);
                return {type, r.read_string(length, what)};
            }
            case gguf_type::array: {
                const auto element = static_cast<gguf_type>(r.read<std::uint32_t>(what + " (array type)"));
                if (static_cast<std::uint32_t>(element) > 12)
                    r.fail(what + " is an array of unknown value type " +
                           std::to_string(static_cast<std::uint32_t>(element)));
                if (element == gguf_type::array && depth >= 4) r.fail(what + " nests arrays deeper than 4 levels");
                const auto count = r.read<std::uint64_t>(what + " (array length)");
                if (count > r.remaining() / min_encoded_size(element))
                    r.fail(what + " claims " + std::to_string(count) + " elements of type " + to_string(element) +
                           ", which cannot fit in the " + std::to_string(r.remaining()) + " bytes left");
                gguf_value::array_type elements;
                elements.reserve(static_cast<std::size_t>(count));
                for (std::uint64_t i = 0; i < count; ++i) elements.push_back(read_value(r, element, what, depth + 1));
                return {type, std::move(elements), element};
            }
        }
        r.fail(what + " has unknown value type " + std::to_string(static_cast<std::uint32_t>(type)));
    }

    void parse() {
        detail::byte_reader r(file_->data(), file_->size(), path().string());
        const std::byte* magic = r.take(4, "magic");
        if (std::string_view(reinterpret_cast<const char*>(magic), 4) != "GGUF") r.fail("not a GGUF file (bad magic)");
        version_ = r.read<std::uint32_t>("version");
        if (version_ == 0x02000000u || version_ == 0x03000000u) r.fail("big-endian GGUF files are not supported");
        if (version_ != 2 && version_ != 3)
            r.fail("unsupported GGUF version " + std::to_string(version_) + " (only 2 and 3 are supported)");
        const auto tensor_count = r.read<std::uint64_t>("tensor_count");
        const auto kv_count = r.read<std::uint64_t>("metadata_kv_count");
        // A key-value pair takes at least 13 bytes and a tensor info at least 32.
        if (kv_count > r.remaining() / 13)
            r.fail("metadata_kv_count " + std::to_string(kv_count) + " cannot fit in a file of " +
                   std::to_string(r.size()) + " bytes");
        if (tensor_count > r.remaining() / 32)
            r.fail("tensor_count " + std::to_string(tensor_count) + " cannot fit in a file of " +
                   std::to_string(r.size()) + " bytes");

        for (std::uint64_t i = 0; i < kv_count; ++i) {
            const std::string label = "metadata key #" + std::to_string(i);
            const auto key_length = r.read<std::uint64_t>(label + " (key length)");
            std::string key = r.read_string(key_length, label + " (key of " + std::to_string(key_length) + " bytes)");
            const std::string what = "value of '" + key + "'";
            const auto type = static_cast<gguf_type>(r.read<std::uint32_t>(what + " (type)"));
            if (static_cast<std::uint32_t>(type) > 12)
                r.fail(what + " has unknown value type " + std::to_string(static_cast<std::uint32_t>(type)));
            gguf_value value = read_value(r, type, what, 0);
            if (!kv_.try_emplace(key, std::move(value)).second) r.fail("duplicate metadata key '" + key + "'");
        }

        if (const gguf_value* a = find("general.alignment")) {
            const auto v = a->as_int();
            if (!v || *v < 8 || *v > (std::int64_t{1} << 30) || (*v & (*v - 1)) != 0)
                r.fail("general.alignment must be a power of two between 8 and 2^30");
            alignment_ = static_cast<std::uint64_t>(*v);
        }

        if (tensor_count > r.remaining() / 32)
            r.fail("tensor_count " + std::to_string(tensor_count) + " cannot fit in the " +
                   std::to_string(r.remaining()) + " bytes after the metadata");
        tensors_.reserve(static_cast<std::size_t>(tensor_count));
        for (std::uint64_t i = 0; i < tensor_count; ++i) {
            const std::string label = "tensor info #" + std::to_string(i);
            gguf_tensor_info t;
            const auto name_length = r.read<std::uint64_t>(label + " (name length)");
            t.name = r.read_string(name_length, label + " (name of " + std::to_string(name_length) + " bytes)");
            const std::string what = "tensor '" + t.name + "'";
            const auto n_dims = r.read<std::uint32_t>(what + " (n_dims)");
            if (n_dims < 1 || n_dims > 4) r.fail(what + " has n_dims " + std::to_string(n_dims) + " (must be 1 to 4)");
            t.n_elements = 1;
            for (std::uint32_t d = 0; d < n_dims; ++d) {
                t.dims.push_back(r.read<std::uint64_t>(what + " (dims)"));
                t.n_elements = detail::checked_mul(t.n_elements, t.dims.back(), path().string(), what);
            }
            if (t.n_elements > static_cast<std::uint64_t>(INT64_MAX)) r.fail(what + " has too many elements");
            t.type = static_cast<ggml_type>(r.read<std::uint32_t>(what + " (type)"));
            t.offset = r.read<std::uint64_t>(what + " (offset)");
            if (t.offset % alignment_ != 0)
                r.fail(what + " has offset " + std::to_string(t.offset) + ", not a multiple of the alignment " +
                       std::to_string(alignment_));
            const auto [block, block_bytes] = detail::ggml_block_layout(t.type);
            if (block != 0) {
                if (t.dims[0] % block != 0)
                    r.fail(what + " has " + std::to_string(t.dims[0]) + " columns, not a multiple of the " +
                           to_string(t.type) + " block size " + std::to_string(block));
                t.n_bytes = detail::checked_mul(t.n_elements / block, block_bytes, path().string(), what);
            }
            if (!tensor_index_.emplace(t.name, tensors_.size()).second) r.fail("duplicate " + what);
            tensors_.push_back(std::move(t));
        }

        // The data section starts at the next multiple of the alignment; with no tensors it may lie past the end.
        const std::uint64_t end = r.position();
        data_offset_ = detail::checked_add(end, (alignment_ - end % alignment_) % alignment_, path().string(), "data");
        for (const gguf_tensor_info& t : tensors_) {
            if (detail::ggml_block_layout(t.type).first == 0) continue;
            const std::string what = "data of tensor '" + t.name + "'";
            const std::uint64_t begin = detail::checked_add(data_offset_, t.offset, path().string(), what);
            const std::uint64_t stop = detail::checked_add(begin, t.n_bytes, path().string(), what);
            if (stop > r.size())
                r.fail("truncated: " + what + " spans bytes [" + std::to_string(begin) + ", " + std::to_string(stop) +
                       ") but the file has " + std::to_string(r.size()) + " bytes");
        }
    }

    std::shared_ptr<const mapped_file> file_;
    std::uint32_t version_ = 0;
    std::uint64_t alignment_ = 32;
    std::uint64_t data_offset_ = 0;
    std::map<std::string, gguf_value, std::less<>> kv_;
    std::vector<gguf_tensor_info> tensors_;
    std::map<std::string, std::size_t, std::less<>> tensor_index_;
};

MECHLENS_END_NAMESPACE
