#pragma once
/// @file
/// Owning tensor with 64-byte aligned storage; hands out strided views.

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <utility>

#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Alignment in bytes of every owning tensor's storage (a cache line; enough for AVX-512).
inline constexpr std::size_t tensor_alignment = 64;

namespace detail {
/// Frees memory obtained from std::aligned_alloc.
struct aligned_free {
    void operator()(void* p) const noexcept { std::free(p); }
};

/// Allocates `count` zero-initialised elements aligned to tensor_alignment; throws std::bad_alloc.
template <class T>
std::unique_ptr<T[], aligned_free> aligned_zeroed(index_t count) {
    static_assert(std::is_trivially_copyable_v<T>, "mechlens: tensors hold trivially copyable elements only");
    if (count == 0) return nullptr;
    std::size_t bytes = static_cast<std::size_t>(count) * sizeof(T);
    bytes = (bytes + tensor_alignment - 1) / tensor_alignment * tensor_alignment;  // aligned_alloc needs a multiple
    void* raw = std::aligned_alloc(tensor_alignment, bytes);
    if (!raw) throw std::bad_alloc();
    std::fill_n(static_cast<unsigned char*>(raw), bytes, static_cast<unsigned char>(0));
    return std::unique_ptr<T[], aligned_free>(static_cast<T*>(raw));
}
}  // namespace detail

/// A dense row-major owning array of rank `Rank`, zero-initialised, 64-byte aligned; movable and copyable.
template <class T, std::size_t Rank>
class tensor {
public:
    using shape_type = extents<Rank>;  ///< Extents type.

    /// An empty tensor (all extents zero).
    tensor() = default;

    /// A zero-filled tensor of the given extents; throws shape_error on negative extents or overflow.
    explicit tensor(const shape_type& shape)
        : shape_(shape), storage_(detail::aligned_zeroed<T>(detail::checked_element_count(shape))) {}

    /// A deep copy.
    tensor(const tensor& other) : tensor(other.shape_) { std::copy_n(other.data(), size(), data()); }
    /// Deep-copy assignment.
    tensor& operator=(const tensor& other) {
        if (this != &other) {
            tensor copy(other);
            *this = std::move(copy);
        }
        return *this;
    }
    tensor(tensor&&) noexcept = default;             ///< Moves the storage.
    tensor& operator=(tensor&&) noexcept = default;  ///< Moves the storage.
    ~tensor() = default;

    /// Pointer to the first element (64-byte aligned, or null when empty).
    [[nodiscard]] T* data() noexcept { return storage_.get(); }
    /// Pointer to the first element (64-byte aligned, or null when empty).
    [[nodiscard]] const T* data() const noexcept { return storage_.get(); }
    /// All extents.
    [[nodiscard]] const shape_type& shape() const noexcept { return shape_; }
    /// Extent of one axis.
    [[nodiscard]] index_t extent(std::size_t axis) const noexcept { return shape_[axis]; }
    /// Number of elements.
    [[nodiscard]] index_t size() const noexcept {
        index_t n = 1;
        for (index_t e : shape_) n *= e;
        return n;
    }

    /// A mutable view of the whole tensor.
    [[nodiscard]] tensor_view<T, Rank> view() noexcept { return tensor_view<T, Rank>(data(), shape_); }
    /// A const view of the whole tensor.
    [[nodiscard]] tensor_view<const T, Rank> view() const noexcept {
        return tensor_view<const T, Rank>(data(), shape_);
    }
    /// Implicit conversion to a mutable view.
    operator tensor_view<T, Rank>() noexcept { return view(); }  // NOLINT(google-explicit-constructor)
    /// Implicit conversion to a const view.
    operator tensor_view<const T, Rank>() const noexcept { return view(); }  // NOLINT(google-explicit-constructor)

    /// Unchecked element access (asserts in debug builds).
    template <class... I>
    T& operator()(I... idx) noexcept { return view()(idx...); }
    /// Unchecked element access (asserts in debug builds).
    template <class... I>
    const T& operator()(I... idx) const noexcept { return view()(idx...); }

    /// Sets every element to `value`.
    void fill(const T& value) noexcept { std::fill_n(data(), size(), value); }

private:
    shape_type shape_{};
    std::unique_ptr<T[], detail::aligned_free> storage_;
};

/// Copies `source` into `destination`; throws shape_error when the shapes differ.
template <class T, class U, std::size_t Rank>
void copy(const tensor_view<U, Rank>& source, const tensor_view<T, Rank>& destination) {
    require_shape(source, destination.shape(), "mechlens::copy source");
    if constexpr (Rank == 1) {
        for (index_t i = 0; i < source.extent(0); ++i) destination(i) = source(i);
    } else {
        for (index_t i = 0; i < source.extent(0); ++i) copy(source[i], destination[i]);
    }
}

MECHLENS_END_NAMESPACE
