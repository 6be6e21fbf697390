#pragma once
/// @file
/// The LLaMA-family transformer: config, weights, forward pass, KV cache, sampling.

#include "mechlens/model/config.hpp"
#include "mechlens/model/weights.hpp"
