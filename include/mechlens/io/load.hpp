#pragma once
/// @file
/// One entry point for model files: sniffs the format and dispatches to the right loader.

#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>

#include "mechlens/io/gguf_model.hpp"
#include "mechlens/io/llama2c.hpp"
#include "mechlens/io/mapped_file.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Loads a model file: GGUF when it starts with the magic "GGUF", else a llama2.c legacy checkpoint.
inline loaded_model load_model(const std::filesystem::path& path) {
    std::shared_ptr<const mapped_file> file = mapped_file::open(path);
    if (file->size() >= 4 && std::memcmp(file->data(), "GGUF", 4) == 0) return load_gguf(gguf_file(std::move(file)));
    return detail::load_llama2c_mapped(std::move(file));
}

MECHLENS_END_NAMESPACE
