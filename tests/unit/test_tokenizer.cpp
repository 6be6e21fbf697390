// Placeholder until the tokenizer tests land.
#include <mechlens/mechlens.hpp>
#include "test_support.hpp"

TEST_CASE("tokenizer: library header compiles", "[tokenizer]") { STATIC_REQUIRE(sizeof(mechlens::index_t) == 8); }
