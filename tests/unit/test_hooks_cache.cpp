// Placeholder until the hooks_cache tests land.
#include <mechlens/mechlens.hpp>
#include "test_support.hpp"

TEST_CASE("hooks_cache: hook policy concept holds for no_hooks", "[hooks_cache]") { STATIC_REQUIRE(mechlens::hook_policy<mechlens::no_hooks>); }
