#pragma once
/// @file
/// A bounds-checked little-endian cursor over untrusted bytes, and overflow-checked size arithmetic.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

// The loaders view file bytes as host floats and integers in place; that is only right on little-endian hosts.
static_assert(std::endian::native == std::endian::little, "mechlens: the file loaders need a little-endian host");

/// Throws format_error "`where`: `problem`".
[[noreturn]] inline void format_fail(const std::string& where, const std::string& problem) {
    throw format_error(where + ": " + problem);
}

/// `a * b`, or format_error naming `what` when the product does not fit in 64 bits.
inline std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const std::string& where, std::string_view what) {
    if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
        format_fail(where, "size of " + std::string(what) + " overflows (" + std::to_string(a) + " * " +
                               std::to_string(b) + ")");
    return a * b;
}

/// `a + b`, or format_error naming `what` when the sum does not fit in 64 bits.
inline std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, const std::string& where, std::string_view what) {
    if (b > std::numeric_limits<std::uint64_t>::max() - a)
        format_fail(where, "offset of " + std::string(what) + " overflows (" + std::to_string(a) + " + " +
                               std::to_string(b) + ")");
    return a + b;
}

/// A cursor over `size` bytes that never reads past the end: every read names what it reads, and running out
/// throws format_error "`where`: truncated: ...".
class byte_reader {
public:
    /// A cursor at offset 0 of `size` bytes at `data`; `where` (usually the file path) prefixes every error.
    byte_reader(const std::byte* data, std::size_t size, std::string where)
        : data_(data), size_(size), where_(std::move(where)) {}

    /// Offset of the next byte to read.
    [[nodiscard]] std::size_t position() const noexcept { return pos_; }
    /// Total number of bytes.
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    /// Bytes left after the cursor.
    [[nodiscard]] std::size_t remaining() const noexcept { return size_ - pos_; }
    /// The error prefix (usually the file path).
    [[nodiscard]] const std::string& where() const noexcept { return where_; }

    /// Throws format_error "`where`: `problem`".
    [[noreturn]] void fail(const std::string& problem) const { format_fail(where_, problem); }

    /// Throws the "truncated" error unless `n` more bytes are available for `what`.
    void require(std::uint64_t n, std::string_view what) const {
        if (n > remaining())
            fail("truncated: " + std::string(what) + " needs " + std::to_string(n) + " bytes at offset " +
                 std::to_string(pos_) + ", but the file has " + std::to_string(size_) + " bytes");
    }

    /// Reads one little-endian arithmetic value.
    template <class T>
    T read(std::string_view what) {
        static_assert(std::is_arithmetic_v<T>, "mechlens: byte_reader reads arithmetic types only");
        require(sizeof(T), what);
        T value{};
        std::memcpy(&value, data_ + pos_, sizeof(T));  // memcpy: the cursor position need not be aligned
        pos_ += sizeof(T);
        return value;
    }

    /// Returns a pointer to the next `n` bytes and moves past them.
    const std::byte* take(std::uint64_t n, std::string_view what) {
        require(n, what);
        const std::byte* p = data_ + pos_;
        pos_ += static_cast<std::size_t>(n);
        return p;
    }

    /// Reads `n` bytes as a string.
    std::string read_string(std::uint64_t n, std::string_view what) {
        const std::byte* p = take(n, what);
        return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    }

    /// Moves the cursor to `offset`, which must not lie beyond the end.
    void seek(std::uint64_t offset, std::string_view what) {
        if (offset > size_)
            fail("truncated: " + std::string(what) + " starts at offset " + std::to_string(offset) +
                 ", but the file has " + std::to_string(size_) + " bytes");
        pos_ = static_cast<std::size_t>(offset);
    }

private:
    const std::byte* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
    std::string where_;
};

}  // namespace detail
MECHLENS_END_NAMESPACE
