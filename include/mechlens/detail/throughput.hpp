#pragma once
/// @file
/// Throughput and time left for the progress reports of long passes (harvesting, SAE evaluation, dashboards).

#include <cstdint>

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// Items per second and seconds left, both 0 until something measurable has happened.
struct throughput_estimate {
    double per_second = 0.0;   ///< done_this_run / seconds.
    double eta_seconds = 0.0;  ///< remaining / per_second.
};

/// The rate of `done_this_run` items in `seconds`, and the time `remaining` items take at that rate.
inline throughput_estimate estimate_throughput(std::int64_t done_this_run, std::int64_t remaining, double seconds) {
    throughput_estimate out;
    if (seconds > 0.0) out.per_second = static_cast<double>(done_this_run) / seconds;
    if (out.per_second > 0.0) out.eta_seconds = static_cast<double>(remaining) / out.per_second;
    return out;
}

}  // namespace detail
MECHLENS_END_NAMESPACE
