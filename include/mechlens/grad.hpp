#pragma once
/// @file
/// Gradients: the backward pass through every block, metrics, and gradient observers at hook sites.

#include "mechlens/grad/metric.hpp"
#include "mechlens/grad/observers.hpp"
#include "mechlens/grad/backward.hpp"
