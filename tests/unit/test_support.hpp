#pragma once
// Helpers shared by the unit tests: where the shared models and the fixtures live, and skipping politely.

#include <cstdlib>
#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

namespace mechlens_test {

/// Directory of the shared real models: $MECHLENS_MODELS, else ../shared/models beside the repository.
inline std::filesystem::path models_dir() {
    if (const char* env = std::getenv("MECHLENS_MODELS"); env && *env) return env;
    return MECHLENS_DEFAULT_MODELS;
}

/// Directory of the shared tokenizer files: $MECHLENS_TOKENIZERS, else ../shared/tokenizers.
inline std::filesystem::path tokenizers_dir() {
    if (const char* env = std::getenv("MECHLENS_TOKENIZERS"); env && *env) return env;
    return MECHLENS_DEFAULT_TOKENIZERS;
}

/// Directory of the committed PyTorch reference fixtures.
inline std::filesystem::path fixtures_dir() { return MECHLENS_FIXTURES; }

/// A scratch directory inside the build tree.
inline std::filesystem::path scratch_dir() { return MECHLENS_TEST_TMP; }

/// Path of a file under models_dir().
inline std::filesystem::path model_file(const std::string& relative) { return models_dir() / relative; }

}  // namespace mechlens_test

/// Ends the current test case with a visible "SKIPPED" warning when `path` does not exist.
#define MECHLENS_REQUIRE_FILE_OR_SKIP(path)                                                                  \
    do {                                                                                                     \
        if (!std::filesystem::exists(path)) {                                                                \
            WARN("SKIPPED: " << (path) << " not found (set MECHLENS_MODELS to the shared models directory)"); \
            return;                                                                                          \
        }                                                                                                    \
    } while (false)
