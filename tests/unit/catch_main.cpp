// Catch2's main, compiled once and shared by every test executable, plus the test paths (kept out of the headers
// so that no other translation unit carries an absolute path: the compiler cache then hits in any checkout).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "test_support.hpp"

// The suite uses Catch2 v2's single-header API (Matchers::Contains, listeners); v3 differs.
static_assert(CATCH_VERSION_MAJOR == 2, "mechlens's tests are written for Catch2 v2 (Debian 12's catch2 package)");

namespace mechlens_test {

std::filesystem::path models_dir() {
    if (const char* env = std::getenv("MECHLENS_MODELS"); env && *env) return env;
    return MECHLENS_DEFAULT_MODELS;
}

std::filesystem::path tokenizers_dir() {
    if (const char* env = std::getenv("MECHLENS_TOKENIZERS"); env && *env) return env;
    return MECHLENS_DEFAULT_TOKENIZERS;
}

std::filesystem::path fixtures_dir() { return MECHLENS_FIXTURES; }

std::filesystem::path scratch_dir() { return MECHLENS_TEST_TMP; }

namespace {
bool current_case_skipped = false;
int cases_run = 0;
int cases_skipped = 0;
}  // namespace

void mark_skipped() { current_case_skipped = true; }

/// Counts the test cases that ran and those that skipped, so main can report "skipped" to CTest.
struct skip_counter : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    void testCaseStarting(const Catch::TestCaseInfo&) override { current_case_skipped = false; }
    void testCaseEnded(const Catch::TestCaseStats&) override {
        ++cases_run;
        if (current_case_skipped) ++cases_skipped;
    }
};

}  // namespace mechlens_test

using mechlens_test::skip_counter;
CATCH_REGISTER_LISTENER(skip_counter)

int main(int argc, char* argv[]) {
    const int failed = Catch::Session().run(argc, argv);
    // CTest runs one test case per process; when every case that ran was skipped (a shared model is absent), exit
    // with the code the tests' SKIP_RETURN_CODE names, so the summary counts it as skipped, not passed.
    if (failed == 0 && mechlens_test::cases_run > 0 && mechlens_test::cases_skipped == mechlens_test::cases_run)
        return mechlens_test::skip_return_code;
    return failed;
}
