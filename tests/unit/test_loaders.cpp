// Placeholder until the loaders tests land.
#include <mechlens/mechlens.hpp>
#include "test_support.hpp"

TEST_CASE("loaders: library header compiles", "[loaders]") { STATIC_REQUIRE(sizeof(mechlens::index_t) == 8); }
