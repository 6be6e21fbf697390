#pragma once
/// @file
/// Model medicine: linear probes on activations (L2-regularised logistic regression by Newton's method) and
/// contrastive directions (difference of means, first principal component of paired differences), directional
/// ablation at run time and baked into the weights.
#include "mechlens/medicine/direction.hpp"
#include "mechlens/medicine/directional_ablation.hpp"
#include "mechlens/medicine/probe.hpp"
