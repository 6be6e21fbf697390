#pragma once
/// @file
/// Key/value cache for incremental decoding.

#include <string>
#include <vector>

#include "mechlens/model/config.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Rotated keys and values of every past position, per layer; one cache serves one batch of sequences.
class kv_cache {
public:
    /// An empty cache with no capacity.
    kv_cache() = default;

    /// A cache for `batch` sequences of up to `capacity` positions (at most config.n_ctx).
    kv_cache(const model_config& config, index_t batch, index_t capacity) { reset(config, batch, capacity); }

    /// Makes the cache hold `batch` sequences of up to `capacity` positions and empties it; reuses memory when it fits.
    void reset(const model_config& config, index_t batch, index_t capacity) {
        if (batch <= 0) throw shape_error("kv_cache: batch must be positive, got " + std::to_string(batch));
        if (capacity <= 0 || capacity > config.n_ctx)
            throw shape_error("kv_cache: capacity " + std::to_string(capacity) + " is outside [1, n_ctx = " +
                              std::to_string(config.n_ctx) + "]");
        const extents<4> shape{batch, config.n_kv_heads, capacity, config.d_head()};
        const auto layers = static_cast<std::size_t>(config.n_layers);
        if (keys_.size() != layers || keys_.front().shape() != shape) {
            keys_.assign(layers, tensor<float, 4>(shape));
            values_.assign(layers, tensor<float, 4>(shape));
        }
        length_ = 0;
    }

    /// Forgets every position but keeps the memory.
    void clear() noexcept { length_ = 0; }
    /// Positions already stored.
    [[nodiscard]] index_t length() const noexcept { return length_; }
    /// Maximum positions.
    [[nodiscard]] index_t capacity() const noexcept { return keys_.empty() ? 0 : keys_.front().extent(2); }
    /// Sequences per batch.
    [[nodiscard]] index_t batch() const noexcept { return keys_.empty() ? 0 : keys_.front().extent(0); }
    /// Number of layers stored.
    [[nodiscard]] index_t layers() const noexcept { return static_cast<index_t>(keys_.size()); }
    /// Rotated keys of one layer, (batch, kv_head, position, d_head).
    [[nodiscard]] tensor_view<float, 4> keys(index_t layer) { return keys_.at(static_cast<std::size_t>(layer)).view(); }
    /// Values of one layer, (batch, kv_head, position, d_head).
    [[nodiscard]] tensor_view<float, 4> values(index_t layer) {
        return values_.at(static_cast<std::size_t>(layer)).view();
    }
    /// Marks `count` more positions as stored (called by the forward pass after writing them).
    void advance(index_t count) noexcept { length_ += count; }

private:
    std::vector<tensor<float, 4>> keys_;    // per layer: (batch, kv_head, position, d_head)
    std::vector<tensor<float, 4>> values_;  // per layer: (batch, kv_head, position, d_head)
    index_t length_ = 0;
};

MECHLENS_END_NAMESPACE
