// Catch2's main, compiled once and shared by every test executable.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

// The suite uses Catch2 v2's single-header API (WARN-and-return skips, Matchers::Contains); v3 differs.
static_assert(CATCH_VERSION_MAJOR == 2, "mechlens's tests are written for Catch2 v2 (Debian 12's catch2 package)");
