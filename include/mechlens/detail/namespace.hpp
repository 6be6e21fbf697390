#pragma once
#include <cstddef>
/// @file
/// Versioned inline namespace, so two copies of mechlens in one engine never clash.

#define MECHLENS_VERSION_MAJOR 0
#define MECHLENS_VERSION_MINOR 1
#define MECHLENS_VERSION_PATCH 0

/// Opens `namespace mechlens { inline namespace v0_1 {`.
#define MECHLENS_BEGIN_NAMESPACE \
    namespace mechlens {         \
    inline namespace v0_1 {
/// Closes what MECHLENS_BEGIN_NAMESPACE opened.
#define MECHLENS_END_NAMESPACE \
    }                          \
    }

MECHLENS_BEGIN_NAMESPACE
/// Signed index type used for every extent and stride (matches Eigen::Index).
using index_t = std::ptrdiff_t;
MECHLENS_END_NAMESPACE
