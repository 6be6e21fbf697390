#pragma once
/// @file
/// One entry point for model files: sniffs the format and dispatches to the right loader.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <utility>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/checkpoint_format.hpp"
#include "mechlens/io/gguf_model.hpp"
#include "mechlens/io/huggingface.hpp"
#include "mechlens/io/llama2c.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/io/transformerlens.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The model file formats load_model reads.
enum class model_format : std::uint8_t {
    llama2c,     ///< Karpathy's llama2.c legacy `.bin` (anything that is neither of the others).
    gguf,        ///< GGUF v3: starts with the magic "GGUF"; carries its own vocabulary.
    checkpoint,  ///< A training checkpoint (save_checkpoint, `mechlens train`): `.safetensors`, no vocabulary.
};

/// The format of a model file whose first `size` bytes (at least 9 suffice) are at `bytes`, as load_model decides
/// it: "GGUF" magic; else an 8-byte little-endian length no larger than the safetensors reader accepts followed by
/// '{' (no llama2.c file starts so: its second int32, hidden_dim, is positive, which puts the first 8 bytes above
/// 2^32 read as one length); else llama2.c.
inline model_format sniff_model_format(const std::byte* bytes, std::size_t size) noexcept {
    if (size >= 4 && std::memcmp(bytes, "GGUF", 4) == 0) return model_format::gguf;
    if (size >= 9 && bytes[8] == std::byte{'{'}) {
        std::uint64_t length = 0;
        for (std::size_t i = 0; i < 8; ++i) length |= static_cast<std::uint64_t>(bytes[i]) << (8 * i);
        if (length <= detail::safetensors_max_header) return model_format::checkpoint;
    }
    return model_format::llama2c;
}

/// The format of the model file at `path`, from its first bytes (see the overload above). Throws format_error
/// naming the file when it cannot be opened.
inline model_format sniff_model_format(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) detail::format_fail(path.string(), "cannot open for reading");
    char head[9] = {};
    in.read(head, sizeof head);
    return sniff_model_format(reinterpret_cast<const std::byte*>(head), static_cast<std::size_t>(in.gcount()));
}

/// Loads a model file in any model_format, sniffed from its first bytes (sniff_model_format): GGUF and llama2.c
/// weights view the file's mapping; a training checkpoint is read by checkpoint_model_from_safetensors (see
/// load_checkpoint_model), its weights a copy they keep alive. A directory is a model folder told apart by its
/// config.json: TransformerLens (HookedTransformerConfig fields n_layers, d_model, d_head, and one state dict, see
/// load_transformerlens) or Hugging Face (`architectures` / `model_type`, and model.safetensors or shards, see
/// load_huggingface). Throws format_error naming the file.
inline loaded_model load_model(const std::filesystem::path& path) {
    if (std::filesystem::is_directory(path)) {
        if (!std::filesystem::is_regular_file(path / "config.json"))
            detail::format_fail(path.string(), "a model directory needs a config.json");
        if (is_transformerlens_directory(path)) return load_transformerlens(path);
        if (is_huggingface_directory(path)) return load_huggingface(path);
        detail::format_fail((path / "config.json").string(),
                            "neither a TransformerLens config (n_layers, d_model, d_head) nor a Hugging Face one "
                            "(architectures, model_type)");
    }
    std::shared_ptr<const mapped_file> file = mapped_file::open(path);
    switch (sniff_model_format(file->data(), file->size())) {
        case model_format::gguf:
            return load_gguf(gguf_file(std::move(file)));
        case model_format::checkpoint:
            return checkpoint_model_from_safetensors(parse_safetensors(file->data(), file->size(), path.string()),
                                                     path.string());
        case model_format::llama2c:
            break;
    }
    return detail::load_llama2c_mapped(std::move(file));
}

MECHLENS_END_NAMESPACE
