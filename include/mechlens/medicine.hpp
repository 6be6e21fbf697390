#pragma once
/// @file
/// Model medicine: linear probes on activations (L2-regularised logistic regression by Newton's method) and
/// contrastive directions (difference of means, first principal component of paired differences), directional
/// ablation at run time and baked into the weights, and llama.cpp control vectors (written, read, steered with).
#include "mechlens/medicine/activations.hpp"
#include "mechlens/medicine/control_vector.hpp"
#include "mechlens/medicine/direction.hpp"
#include "mechlens/medicine/directional_ablation.hpp"
#include "mechlens/medicine/probe.hpp"
