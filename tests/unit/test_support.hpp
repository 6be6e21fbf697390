#pragma once
// Helpers shared by the unit tests: where the shared models and the fixtures live, and skipping politely.

#include <cstdlib>
#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

namespace mechlens_test {

/// Exit code of a test executable whose test cases all skipped (CTest's SKIP_RETURN_CODE for the unit tests).
inline constexpr int skip_return_code = 77;

/// Directory of the shared real models: $MECHLENS_MODELS, else ../shared/models beside the repository.
std::filesystem::path models_dir();

/// Directory of the shared tokenizer files: $MECHLENS_TOKENIZERS, else ../shared/tokenizers.
std::filesystem::path tokenizers_dir();

/// Directory of the committed PyTorch reference fixtures.
std::filesystem::path fixtures_dir();

/// A scratch directory inside the build tree.
std::filesystem::path scratch_dir();

/// Records that the running test case skipped (catch_main.cpp turns an all-skipped run into skip_return_code).
void mark_skipped();

/// Path of a file under models_dir().
inline std::filesystem::path model_file(const std::string& relative) { return models_dir() / relative; }

}  // namespace mechlens_test

/// Ends the current test case with a visible "SKIPPED" warning when `path` does not exist; CTest reports it skipped.
#define MECHLENS_REQUIRE_FILE_OR_SKIP(path)                                                                  \
    do {                                                                                                     \
        if (!std::filesystem::exists(path)) {                                                                \
            WARN("SKIPPED: " << (path) << " not found (set MECHLENS_MODELS to the shared models directory)"); \
            mechlens_test::mark_skipped();                                                                  \
            return;                                                                                          \
        }                                                                                                    \
    } while (false)
