#pragma once
/// @file
/// What loaded weights keep alive (the file mapping and any converted tensors), and how loaders build views.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/io/mapped_file.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/half.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The object behind `model_weights::storage` for weights made by the mechlens loaders.
struct loader_storage {
    std::shared_ptr<const mapped_file> file;  ///< The mapping that F32 weights view in place.
    std::vector<tensor<float, 1>> converted;  ///< Owned copies: F16, BF16 or quantised blocks decoded, realigned F32.
    ///< (The floats of Q8_0, Q4_K and Q6_K matrices are not here: model_weights::on_demand decodes them when read.)
};

namespace detail {

/// Deleter that marks a `model_weights::storage` as a loader_storage (found again with std::get_deleter).
struct loader_storage_deleter {
    /// Deletes the storage.
    void operator()(const loader_storage* p) const noexcept { delete p; }
};

/// Hands out float pointers for weight views: into the mapping when the data is F32 and float-aligned, else into
/// owned converted buffers; finish() wraps everything into the `storage` that keeps those pointers valid.
class weight_builder {
public:
    /// A builder whose views may point into `file`.
    explicit weight_builder(std::shared_ptr<const mapped_file> file) : storage_(std::make_unique<loader_storage>()) {
        storage_->file = std::move(file);
    }

    /// `count` little-endian floats at `bytes` (inside the mapping): viewed in place, or copied when misaligned.
    const float* f32(const std::byte* bytes, index_t count) {
        if (reinterpret_cast<std::uintptr_t>(bytes) % alignof(float) == 0)
            return reinterpret_cast<const float*>(bytes);  // the mapping holds these floats; never copy them
        float* out = allocate(count);
        std::memcpy(out, bytes, static_cast<std::size_t>(count) * sizeof(float));
        return out;
    }

    /// `count` little-endian binary16 values at `bytes`, converted into an owned float buffer.
    const float* f16(const std::byte* bytes, index_t count) {
        float* out = allocate(count);
        for (index_t i = 0; i < count; ++i) {
            std::uint16_t h = 0;
            std::memcpy(&h, bytes + 2 * i, sizeof h);
            out[i] = half_to_float(h);
        }
        return out;
    }

    /// An owned buffer for `count` floats decoded from a denser storage type (quantised blocks, BF16).
    float* decoded(index_t count) { return allocate(count); }

    /// Reserves the floats of the encoded matrix `m` (whose blocks lie in the mapping) to be decoded when first
    /// read, and points m.decoded there (see decoded_on_demand).
    void on_demand(kernels::encoded_matrix& m) {
        count_converted(m.rows * m.depth);
        if (on_demand_ == nullptr) on_demand_ = std::make_shared<decoded_on_demand>();
        on_demand_->reserve(m);
    }

    /// The floats reserved by on_demand() (null when none were), for model_weights::on_demand.
    [[nodiscard]] std::shared_ptr<const decoded_on_demand> take_on_demand() { return std::move(on_demand_); }

    /// `count` zeros in an owned buffer (a weight the file does not store).
    const float* zeros(index_t count) {
        storage_->converted.emplace_back(extents<1>{count});
        float* out = storage_->converted.back().data();
        std::fill(out, out + count, 0.0f);
        return out;
    }

    /// The storage to put in model_weights::storage; the builder is empty afterwards.
    std::shared_ptr<const void> finish() {
        const loader_storage* raw = storage_.release();
        return std::shared_ptr<const void>(raw, loader_storage_deleter{});
    }

private:
    float* allocate(index_t count) {
        count_converted(count);
        storage_->converted.emplace_back(extents<1>{count});
        return storage_->converted.back().data();
    }

    void count_converted(index_t count) {
        // Tensors that do not overlap convert to at most 128 / 18 = 7.1 times the file's bytes (Q4_0 and Q4_K
        // decode 18 bytes to 32 floats; F16 doubles); more means tensor infos that reuse the same bytes, which could
        // otherwise make a small file allocate without bound.
        const std::shared_ptr<const mapped_file>& file = storage_->file;
        converted_bytes_ += static_cast<std::uint64_t>(count) * sizeof(float);  // count is bounded by the file
        if (file != nullptr && converted_bytes_ > 8 * static_cast<std::uint64_t>(file->size()))
            throw format_error(file->path().string() + ": tensors overlap: converting them would need " +
                               std::to_string(converted_bytes_) + " bytes for a file of " +
                               std::to_string(file->size()) + " bytes");
    }

    std::unique_ptr<loader_storage> storage_;
    std::shared_ptr<decoded_on_demand> on_demand_;
    std::uint64_t converted_bytes_ = 0;
};

}  // namespace detail

/// The loader_storage behind `weights`, or null when they were not made by a mechlens loader.
inline const loader_storage* loader_storage_of(const model_weights& weights) noexcept {
    if (std::get_deleter<detail::loader_storage_deleter>(weights.storage) == nullptr) return nullptr;
    return static_cast<const loader_storage*>(weights.storage.get());
}

/// True when every byte of `view`'s elements lies inside the file mapping of `weights` (zero-copy check).
template <class T, std::size_t Rank>
bool views_mapping(const model_weights& weights, const tensor_view<T, Rank>& view) noexcept {
    const loader_storage* s = loader_storage_of(weights);
    if (s == nullptr || s->file == nullptr || !view.is_contiguous()) return false;
    return s->file->contains(view.data(), static_cast<std::size_t>(view.size()) * sizeof(T));
}

MECHLENS_END_NAMESPACE
