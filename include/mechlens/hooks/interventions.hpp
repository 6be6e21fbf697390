#pragma once
/// @file
/// Intervention policies: patch, ablate, steer, compose, dynamic hooks.

#include "mechlens/hooks/patching.hpp"
#include "mechlens/hooks/ablation.hpp"
#include "mechlens/hooks/steering.hpp"
#include "mechlens/hooks/compose.hpp"
#include "mechlens/hooks/dynamic.hpp"
