#pragma once
/// @file
/// Learning-rate schedules: linear warmup followed by cosine decay.

#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Parameters of warmup_cosine.
struct warmup_cosine_options {
    float peak = 1e-3f;       ///< Learning rate reached at the end of the warmup.
    index_t warmup_steps = 0; ///< W: steps of linear warmup (0 for none).
    index_t total_steps = 0;  ///< T: the step at which the cosine reaches `min` (T >= W).
    float min = 0.0f;         ///< Learning rate at step T and after.
    float start = 0.0f;       ///< Learning rate at step 0 when W > 0.
};

/// Linear warmup then cosine decay, the schedule of Hugging Face's get_cosine_schedule_with_warmup generalised
/// with a start and a floor. With steps s counted from 0:
///   s <  W:      lr = start + (peak - start) * s / W
///   W <= s < T:  lr = min + (peak - min) * (1 + cos(pi * (s - W) / (T - W))) / 2
///   s >= T:      lr = min
/// evaluated in double and rounded to float once. Pass steps() of the optimizer before its step (0 for the first).
class warmup_cosine {
public:
    /// Validates the options: W >= 0, T >= W, and finite rates with peak >= 0, min >= 0, start >= 0.
    explicit warmup_cosine(const warmup_cosine_options& options) : o_(options) {
        auto fail = [](const std::string& what) { throw std::invalid_argument("warmup_cosine: " + what); };
        if (o_.warmup_steps < 0) fail("warmup_steps must be >= 0, got " + std::to_string(o_.warmup_steps));
        if (o_.total_steps < o_.warmup_steps)
            fail("total_steps " + std::to_string(o_.total_steps) + " is below warmup_steps " +
                 std::to_string(o_.warmup_steps));
        auto rate = [&](float x, const char* name) {
            if (!(x >= 0.0f) || !std::isfinite(x)) fail(std::string(name) + " must be finite and >= 0");
        };
        rate(o_.peak, "peak");
        rate(o_.min, "min");
        rate(o_.start, "start");
    }

    /// The learning rate at step `step` (negative steps give the value at 0).
    [[nodiscard]] float operator()(index_t step) const noexcept {
        const index_t s = step < 0 ? 0 : step;
        const double peak = static_cast<double>(o_.peak), low = static_cast<double>(o_.min),
                     start = static_cast<double>(o_.start);
        if (s < o_.warmup_steps)
            return static_cast<float>(start + (peak - start) * static_cast<double>(s) /
                                                  static_cast<double>(o_.warmup_steps));
        if (s >= o_.total_steps) return o_.min;
        const double progress =
            static_cast<double>(s - o_.warmup_steps) / static_cast<double>(o_.total_steps - o_.warmup_steps);
        return static_cast<float>(low + (peak - low) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
    }

    /// The options.
    [[nodiscard]] const warmup_cosine_options& options() const noexcept { return o_; }

private:
    warmup_cosine_options o_;
};

MECHLENS_END_NAMESPACE
