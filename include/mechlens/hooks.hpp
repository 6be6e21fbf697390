#pragma once
/// @file
/// Hooks: named sites, the policy concept, names and globs, the activation cache, the shipped policies and the
/// entry point for other engines (fire_site).

#include "mechlens/hooks/site_traits.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/caching.hpp"
#include "mechlens/hooks/interventions.hpp"
#include "mechlens/hooks/engine.hpp"
#include "mechlens/hooks/splice.hpp"
