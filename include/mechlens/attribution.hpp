#pragma once
/// @file
/// Analysis of a model's internals: head detectors, the logit lens and direct logit attribution.

#include "mechlens/attribution/head_detectors.hpp"
#include "mechlens/attribution/logit_lens.hpp"
