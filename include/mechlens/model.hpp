#pragma once
/// @file
/// The LLaMA-family transformer: config, weights, forward pass, KV cache, sampling, generation.

#include "mechlens/model/config.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/model/weight_processing.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/model/kv_cache.hpp"
#include "mechlens/model/workspace.hpp"
#include "mechlens/model/forward.hpp"
#include "mechlens/model/sampling.hpp"
#include "mechlens/model/generate.hpp"
#include "mechlens/model/threads.hpp"
#include "mechlens/model/random.hpp"
