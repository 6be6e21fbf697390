#pragma once
/// @file
/// xsimd plumbing shared by the kernels: the float batch of the compile-time architecture, partial loads and
/// stores for tails, horizontal reductions and a lane-wise transform.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "mechlens/detail/third_party.hpp"

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

/// The float SIMD batch of the architecture the compiler flags enable (SSE2 on plain x86-64, AVX2 with -mavx2, ...).
using float_batch = xsimd::batch<float>;

/// Number of float lanes in float_batch.
inline constexpr index_t simd_width = static_cast<index_t>(float_batch::size);

/// True when the float_batch architecture has a fused multiply-add instruction (FMA3 on x86, AVX-512, NEON with
/// VFP4/AArch64), so fused_multiply_add rounds once at full speed; false on plain SSE2 and 32-bit ARM without FMA.
inline constexpr bool has_fused_multiply_add =
#if XSIMD_WITH_AVX512F || XSIMD_WITH_FMA3_SSE || XSIMD_WITH_FMA3_AVX || XSIMD_WITH_FMA3_AVX2 || \
    (XSIMD_WITH_NEON && defined(__ARM_FEATURE_FMA))
    true;
#else
    false;
#endif

/// a * b + c in every lane, rounded once: a true fused multiply-add on every ISA that has one. xsimd 8.1's
/// xsimd::fma is fused on FMA3 (x86) and NEON (vfmaq) but is a multiply then an add on its AVX-512 architectures,
/// so those go through _mm512_fmadd_ps/_pd here. The result therefore does not depend on whether the compiler
/// contracts (the build keeps -ffp-contract=off). Where the ISA has no FMA (has_fused_multiply_add false) this is
/// a multiply then an add: a software fma per lane would cost more than the kernels themselves.
template <class T, class A>
inline xsimd::batch<T, A> fused_multiply_add(const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b,
                                             const xsimd::batch<T, A>& c) noexcept {
#if XSIMD_WITH_AVX512F
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        if constexpr (std::is_same_v<T, float>)
            return _mm512_fmadd_ps(a, b, c);
        else if constexpr (std::is_same_v<T, double>)
            return _mm512_fmadd_pd(a, b, c);
        else
            return xsimd::fma(a, b, c);
    } else
#endif
        return xsimd::fma(a, b, c);
}

/// a * b + c rounded once, for scalar code that must round like fused_multiply_add's lanes.
inline float fused_multiply_add(float a, float b, float c) noexcept {
    if constexpr (has_fused_multiply_add)
        return std::fma(a, b, c);
    else
        return a * b + c;
}

namespace detail {

/// Alignment of the stack buffers that stage tails (enough for any batch, so aligned loads are valid).
inline constexpr std::size_t batch_alignment = float_batch::arch_type::alignment();

/// Loads `count` (<= simd_width) floats from `p` into the low lanes, `fill` elsewhere; never reads past p + count.
inline float_batch load_partial(const float* p, index_t count, float fill) noexcept {
    alignas(batch_alignment) std::array<float, float_batch::size> buffer;
    buffer.fill(fill);
    std::copy_n(p, count, buffer.data());
    return float_batch::load_aligned(buffer.data());
}

/// Stores the low `count` (<= simd_width) lanes of `v` to `p`; never writes past p + count.
inline void store_partial(float* p, const float_batch& v, index_t count) noexcept {
    alignas(batch_alignment) std::array<float, float_batch::size> buffer;
    v.store_aligned(buffer.data());
    std::copy_n(buffer.data(), count, p);
}

/// a / b, correctly rounded in every lane. xsimd 8.1 divides float batches on AArch64 with its 32-bit ARM code (a
/// reciprocal estimate refined by two Newton steps), which can differ from the true quotient in the last bits; the
/// kernels must round like scalar division so that hooked and plain passes, and every architecture, agree.
inline float_batch divide(const float_batch& a, const float_batch& b) noexcept {
#if XSIMD_WITH_NEON64
    if constexpr (std::is_same_v<float_batch::arch_type, xsimd::neon64>) return vdivq_f32(a, b);
#endif
    return a / b;
}

/// Largest lane of `v`.
inline float horizontal_max(const float_batch& v) noexcept {
    alignas(batch_alignment) std::array<float, float_batch::size> buffer;
    v.store_aligned(buffer.data());
    return *std::max_element(buffer.begin(), buffer.end());
}

/// out[i] = f(in[i]...) for i in [0, n), lane-wise; the tail goes through a zero-padded batch so every element
/// sees the same arithmetic whatever its position. `out` may equal any input pointer (each batch is loaded before
/// it is stored) but must not partially overlap one. `f` is taken by value and should capture by value: a functor
/// the stores through `out` might alias would be reloaded from memory on every iteration.
template <class F, class... In>
void transform(float* out, index_t n, F f, const In*... in) {
    index_t i = 0;
    for (; i + simd_width <= n; i += simd_width) f(float_batch::load_unaligned(in + i)...).store_unaligned(out + i);
    if (i < n) store_partial(out + i, f(load_partial(in + i, n - i, 0.0f)...), n - i);
}

/// Folds x[0..n) (one element from each input) into a float sum: `f(acc, in...)` returns `acc` plus the batch's
/// contribution (fused with fma where it helps). Four independent accumulators hide the add latency and shorten
/// each rounding chain. Tail lanes past n are padded with `fill`, whose contribution `f` must make zero.
template <class F, class... In>
float reduce_sum(index_t n, float fill, F f, const In*... in) {
    float_batch acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
    index_t i = 0;
    for (; i + 4 * simd_width <= n; i += 4 * simd_width) {
        acc0 = f(acc0, float_batch::load_unaligned(in + i)...);
        acc1 = f(acc1, float_batch::load_unaligned(in + i + simd_width)...);
        acc2 = f(acc2, float_batch::load_unaligned(in + i + 2 * simd_width)...);
        acc3 = f(acc3, float_batch::load_unaligned(in + i + 3 * simd_width)...);
    }
    for (; i + simd_width <= n; i += simd_width) acc0 = f(acc0, float_batch::load_unaligned(in + i)...);
    if (i < n) acc1 = f(acc1, load_partial(in + i, n - i, fill)...);
    return xsimd::hadd((acc0 + acc1) + (acc2 + acc3));
}

/// Largest of x[0..n); -infinity when n == 0.
inline float max_of(const float* x, index_t n) noexcept {
    constexpr float lowest = -std::numeric_limits<float>::infinity();
    float_batch m(lowest);
    index_t i = 0;
    for (; i + simd_width <= n; i += simd_width) m = xsimd::max(m, float_batch::load_unaligned(x + i));
    if (i < n) m = xsimd::max(m, load_partial(x + i, n - i, lowest));
    return horizontal_max(m);
}

}  // namespace detail
}  // namespace kernels
MECHLENS_END_NAMESPACE
