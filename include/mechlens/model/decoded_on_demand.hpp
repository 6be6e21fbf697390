#pragma once
/// @file
/// The float copies of a model's quantised matrices, each decoded the first time something reads it as floats.
///
/// A quantised GGUF matrix is multiplied straight from its blocks (kernels/encoded_matmul.hpp), so a forward pass,
/// generation, caching, patching and steering never need its floats. Gradients, weight processing and whatever
/// reads a weight element by element do. So the loader reserves address space for each such matrix's floats (its
/// weight views point there, which is how a product finds the matrix's blocks) and decodes it only when asked:
/// transformer::weights() asks for all of them, readable() for the one matrix a view lies in. Until it is decoded
/// a matrix's range is inaccessible, so a reader that skipped the asking faults on its first read rather than
/// reading zeros; once decoded it is read-only. A model loaded from a Q4_K_M file thus costs about its file size
/// in memory until a pass needs floats.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/encoded_matmul.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
/// Whether reservations are inaccessible pages made readable when decoded (POSIX), or decoded at once (elsewhere).
#define MECHLENS_DECODE_ON_DEMAND 1
#else
/// Whether reservations are inaccessible pages made readable when decoded (POSIX), or decoded at once (elsewhere).
#define MECHLENS_DECODE_ON_DEMAND 0
#endif

MECHLENS_BEGIN_NAMESPACE

/// Float copies of encoded matrices, each decoded on first request; shared by every copy of the weights that view
/// them, thread-safe (each matrix is decoded once, by whichever thread asks first).
class decoded_on_demand {
public:
    decoded_on_demand() = default;
    decoded_on_demand(const decoded_on_demand&) = delete;             ///< Owns its reservations.
    decoded_on_demand& operator=(const decoded_on_demand&) = delete;  ///< Owns its reservations.
    /// Releases every reservation.
    ~decoded_on_demand() = default;

    /// Reserves room for the (m.rows, m.depth) floats that `m`'s blocks decode to and points m.decoded there.
    /// Without POSIX memory protection the floats are decoded at once. Throws std::bad_alloc when the address space
    /// cannot be had, shape_error when `m` is not a usable encoded matrix.
    void reserve(kernels::encoded_matrix& m) {
        kernels::require_encoded_matrix(m, "decoded_on_demand::reserve");
        auto r = std::make_unique<region>();
        r->bytes = static_cast<std::size_t>(m.rows) * static_cast<std::size_t>(m.depth) * sizeof(float);
        r->memory = acquire(r->bytes);
        m.decoded = static_cast<const float*>(r->memory);
        r->matrix = m;
        reserved_bytes_ += r->bytes;
        regions_.push_back(std::move(r));
#if !MECHLENS_DECODE_ON_DEMAND
        decode(*regions_.back());
#endif
    }

    /// Decodes the matrix whose floats hold `address`, unless it is decoded already or no matrix here holds it.
    void decode_containing(const void* address) const {
        const auto a = reinterpret_cast<std::uintptr_t>(address);
        for (const std::unique_ptr<region>& r : regions_) {
            const auto begin = reinterpret_cast<std::uintptr_t>(r->memory);
            if (a >= begin && a - begin < r->bytes) {
                decode(*r);
                return;
            }
        }
    }

    /// Decodes every matrix not decoded yet; after the first call, one atomic load.
    void decode_all() const {
        if (all_decoded_.load(std::memory_order_acquire)) return;
        for (const std::unique_ptr<region>& r : regions_) decode(*r);
        all_decoded_.store(true, std::memory_order_release);
    }

    /// Bytes of floats decoded so far: 0 for a model that only ran forward passes.
    [[nodiscard]] std::size_t decoded_bytes() const noexcept { return decoded_bytes_.load(); }
    /// Bytes reserved for the floats of every matrix held here (what decoding them all costs).
    [[nodiscard]] std::size_t reserved_bytes() const noexcept { return reserved_bytes_; }
    /// Matrices held here.
    [[nodiscard]] std::size_t size() const noexcept { return regions_.size(); }

private:
    struct region {
        kernels::encoded_matrix matrix;  // its `decoded` is `memory`
        void* memory = nullptr;
        std::size_t bytes = 0;
        mutable std::once_flag once;
        region() = default;
        region(const region&) = delete;
        region& operator=(const region&) = delete;
        ~region() {
            if (memory != nullptr) release(memory, bytes);
        }
    };

    void decode(const region& r) const {
        std::call_once(r.once, [&] {
            writable(r.memory, r.bytes, true);
            kernels::decode_encoded_rows(r.matrix, 0, r.matrix.rows, static_cast<float*>(r.memory));
            writable(r.memory, r.bytes, false);
            decoded_bytes_ += r.bytes;
        });
    }

#if MECHLENS_DECODE_ON_DEMAND
    static std::size_t rounded_to_pages(std::size_t bytes) noexcept {
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        return (bytes + page - 1) / page * page;
    }
    static void* acquire(std::size_t bytes) {
        // Reserved, not committed: no memory is used until decode() writes the pages.
        void* p = ::mmap(nullptr, rounded_to_pages(std::max<std::size_t>(bytes, 1)), PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        return p;
    }
    static void release(void* p, std::size_t bytes) noexcept {
        ::munmap(p, rounded_to_pages(std::max<std::size_t>(bytes, 1)));
    }
    static void writable(void* p, std::size_t bytes, bool yes) {
        const int protection = yes ? PROT_READ | PROT_WRITE : PROT_READ;
        if (::mprotect(p, rounded_to_pages(std::max<std::size_t>(bytes, 1)), protection) != 0)
            throw std::bad_alloc();  // the only failure mprotect has on our own mapping: no memory for page tables
    }
#else
    static void* acquire(std::size_t bytes) {
        return ::operator new(std::max<std::size_t>(bytes, 1), std::align_val_t{64});
    }
    static void release(void* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }
    static void writable(void*, std::size_t, bool) noexcept {}
#endif

    std::vector<std::unique_ptr<region>> regions_;
    std::size_t reserved_bytes_ = 0;
    mutable std::atomic<std::size_t> decoded_bytes_{0};
    mutable std::atomic<bool> all_decoded_{false};
};

MECHLENS_END_NAMESPACE
