#pragma once
/// @file
/// Hooks: named sites and the policy concept.

#include "mechlens/hooks/site.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/interventions.hpp"
