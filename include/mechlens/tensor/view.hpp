#pragma once
/// @file
/// Non-owning strided views of rank 1 to 4, with checked construction and slicing.

#include <array>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Maximum rank of a tensor or view.
inline constexpr std::size_t max_rank = 4;

/// An extent list (or stride list) of a rank-R tensor.
template <std::size_t Rank>
using extents = std::array<index_t, Rank>;

namespace detail {

/// Formats a shape as "(2, 3, 4)" for error messages (any rank, from an extent list or a vector of extents).
inline std::string format_shape(std::span<const index_t> shape) {
    std::string out = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(shape[i]);
    }
    return out + ")";
}

/// Formats an extent list as "(2, 3, 4)" for error messages.
template <std::size_t Rank>
std::string format_extents(const extents<Rank>& e) {
    return format_shape(e);
}

/// Row-major strides of a contiguous tensor with the given extents.
template <std::size_t Rank>
constexpr extents<Rank> row_major_strides(const extents<Rank>& shape) {
    extents<Rank> strides{};
    index_t running = 1;
    for (std::size_t i = Rank; i-- > 0;) {
        strides[i] = running;
        running *= shape[i];
    }
    return strides;
}

/// Product of the extents; throws shape_error on negative extents or overflow.
template <std::size_t Rank>
index_t checked_element_count(const extents<Rank>& shape) {
    index_t count = 1;
    for (index_t e : shape) {
        if (e < 0) throw shape_error("negative extent in shape " + format_extents(shape));
        if (e != 0 && count > static_cast<index_t>(PTRDIFF_MAX) / e)
            throw shape_error("element count of shape " + format_extents(shape) + " overflows");
        count *= e;
    }
    return count;
}

}  // namespace detail

/// A non-owning, strided view of a rank-`Rank` array of `T`; cheap to copy, never outlives its storage by itself.
template <class T, std::size_t Rank>
class tensor_view {
    static_assert(Rank >= 1 && Rank <= max_rank, "mechlens: tensor_view rank must be between 1 and 4");

public:
    using element_type = T;                   ///< Element type, possibly const.
    using shape_type = extents<Rank>;         ///< Extents or strides.
    static constexpr std::size_t rank = Rank; ///< Number of axes.

    /// An empty view (null data, zero extents).
    constexpr tensor_view() = default;

    /// A contiguous row-major view over `data` with the given extents.
    tensor_view(T* data, const shape_type& shape)
        : data_(data), shape_(shape), strides_(detail::row_major_strides(shape)) {
        (void)detail::checked_element_count(shape);
    }

    /// A strided view; strides are in elements, not bytes.
    tensor_view(T* data, const shape_type& shape, const shape_type& strides)
        : data_(data), shape_(shape), strides_(strides) {
        (void)detail::checked_element_count(shape);
    }

    /// Implicit conversion from a mutable view to a const view.
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
    tensor_view(const tensor_view<U, Rank>& other)  // NOLINT(google-explicit-constructor)
        : data_(other.data()), shape_(other.shape()), strides_(other.strides()) {}

    /// Pointer to element (0, ..., 0).
    [[nodiscard]] T* data() const noexcept { return data_; }
    /// All extents.
    [[nodiscard]] const shape_type& shape() const noexcept { return shape_; }
    /// All strides, in elements.
    [[nodiscard]] const shape_type& strides() const noexcept { return strides_; }
    /// Extent of one axis.
    [[nodiscard]] index_t extent(std::size_t axis) const noexcept { return shape_[axis]; }
    /// Stride of one axis, in elements.
    [[nodiscard]] index_t stride(std::size_t axis) const noexcept { return strides_[axis]; }
    /// Number of elements.
    [[nodiscard]] index_t size() const noexcept {
        index_t n = 1;
        for (index_t e : shape_) n *= e;
        return n;
    }
    /// True when the view covers a dense row-major block.
    [[nodiscard]] bool is_contiguous() const noexcept { return strides_ == detail::row_major_strides(shape_); }

    /// Unchecked element access (asserts in debug builds).
    template <class... I>
    T& operator()(I... idx) const noexcept {
        static_assert(sizeof...(I) == Rank, "mechlens: wrong number of indices for this view's rank");
        const std::array<index_t, Rank> i{static_cast<index_t>(idx)...};
        index_t offset = 0;
        for (std::size_t a = 0; a < Rank; ++a) {
            assert(i[a] >= 0 && i[a] < shape_[a]);
            offset += i[a] * strides_[a];
        }
        return data_[offset];
    }

    /// Bounds-checked element access; throws shape_error.
    template <class... I>
    T& at(I... idx) const {
        static_assert(sizeof...(I) == Rank, "mechlens: wrong number of indices for this view's rank");
        const std::array<index_t, Rank> i{static_cast<index_t>(idx)...};
        for (std::size_t a = 0; a < Rank; ++a)
            if (i[a] < 0 || i[a] >= shape_[a])
                throw shape_error("index " + std::to_string(i[a]) + " out of range for axis " + std::to_string(a) +
                                  " of shape " + detail::format_extents(shape_));
        return (*this)(idx...);
    }

    /// The sub-view at index `i` of the first axis (rank drops by one).
    [[nodiscard]] auto operator[](index_t i) const {
        static_assert(Rank >= 2, "mechlens: operator[] on a rank-1 view; use operator() instead");
        assert(i >= 0 && i < shape_[0]);
        extents<Rank - 1> shape{}, strides{};
        for (std::size_t a = 1; a < Rank; ++a) {
            shape[a - 1] = shape_[a];
            strides[a - 1] = strides_[a];
        }
        return tensor_view<T, Rank - 1>(data_ + i * strides_[0], shape, strides);
    }

    /// Elements [begin, end) of one axis, rank unchanged; throws shape_error when out of range.
    [[nodiscard]] tensor_view slice(std::size_t axis, index_t begin, index_t end) const {
        if (axis >= Rank || begin < 0 || end < begin || end > shape_[axis])
            throw shape_error("slice [" + std::to_string(begin) + ", " + std::to_string(end) + ") of axis " +
                              std::to_string(axis) + " is out of range for shape " + detail::format_extents(shape_));
        shape_type shape = shape_;
        shape[axis] = end - begin;
        return tensor_view(data_ + begin * strides_[axis], shape, strides_);
    }

    /// A contiguous view reinterpreted with other extents of the same element count; throws shape_error.
    template <std::size_t NewRank>
    [[nodiscard]] tensor_view<T, NewRank> reshape(const extents<NewRank>& shape) const {
        if (!is_contiguous())
            throw shape_error("cannot reshape a non-contiguous view of shape " + detail::format_extents(shape_));
        if (detail::checked_element_count(shape) != size())
            throw shape_error("cannot reshape " + detail::format_extents(shape_) + " to " +
                              detail::format_extents(shape));
        return tensor_view<T, NewRank>(data_, shape);
    }

private:
    T* data_ = nullptr;
    shape_type shape_{};
    shape_type strides_{};
};

/// Throws shape_error naming `what` unless `view` has exactly the expected extents.
template <class T, std::size_t Rank>
void require_shape(const tensor_view<T, Rank>& view, const extents<Rank>& expected, const char* what) {
    if (view.shape() != expected)
        throw shape_error(std::string(what) + ": expected shape " + detail::format_extents(expected) + ", got " +
                          detail::format_extents(view.shape()));
}

MECHLENS_END_NAMESPACE
