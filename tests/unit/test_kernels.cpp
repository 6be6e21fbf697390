// Placeholder until the kernels tests land.
#include <mechlens/mechlens.hpp>
#include "test_support.hpp"

TEST_CASE("kernels: library header compiles", "[kernels]") { STATIC_REQUIRE(sizeof(mechlens::index_t) == 8); }
