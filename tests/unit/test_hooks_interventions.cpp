// Placeholder until the hooks_interventions tests land.
#include <mechlens/mechlens.hpp>
#include "test_support.hpp"

TEST_CASE("hooks_interventions: hook policy concept holds for no_hooks", "[hooks_interventions]") { STATIC_REQUIRE(mechlens::hook_policy<mechlens::no_hooks>); }
