#pragma once
/// @file
/// Hooks: named sites, the policy concept, names and globs, the activation cache and the caching policy.

#include "mechlens/hooks/site.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/caching.hpp"
#include "mechlens/hooks/interventions.hpp"
