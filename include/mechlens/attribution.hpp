#pragma once
/// @file
/// Analysis of a model's internals: head detectors, and (issue 5) attribution methods.

#include "mechlens/attribution/head_detectors.hpp"
