// Placeholder until the model tests land.
#include <mechlens/mechlens.hpp>
#include "test_support.hpp"

TEST_CASE("model: library header compiles", "[model]") { STATIC_REQUIRE(sizeof(mechlens::index_t) == 8); }
