#pragma once
/// @file
/// One entry point for model files: sniffs the format and dispatches to the right loader.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>

#include "mechlens/io/checkpoint_format.hpp"
#include "mechlens/io/gguf_model.hpp"
#include "mechlens/io/llama2c.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/io/safetensors.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// True when `size` bytes at `bytes` start like a `.safetensors` file: an 8-byte little-endian header length no
/// larger than the reader accepts, then '{'. No llama2.c file starts so: its second int32 (hidden_dim) is positive,
/// which puts the first 8 bytes above 2^32 read as one length.
inline bool looks_like_safetensors(const std::byte* bytes, std::size_t size) noexcept {
    if (size < 9 || bytes[8] != std::byte{'{'}) return false;
    std::uint64_t length = 0;
    for (std::size_t i = 0; i < 8; ++i) length |= static_cast<std::uint64_t>(bytes[i]) << (8 * i);
    return length <= safetensors_max_header;
}

}  // namespace detail

/// Loads a model file, sniffing its format: GGUF when it starts with the magic "GGUF"; a training checkpoint
/// (save_checkpoint, `mechlens train`) when it starts like a `.safetensors` file (8-byte header length, then '{'),
/// see load_checkpoint_model; else a llama2.c legacy checkpoint. GGUF and llama2.c weights view the file's mapping;
/// a checkpoint's are copied into a buffer the weights keep alive. Throws format_error naming the file.
inline loaded_model load_model(const std::filesystem::path& path) {
    std::shared_ptr<const mapped_file> file = mapped_file::open(path);
    if (file->size() >= 4 && std::memcmp(file->data(), "GGUF", 4) == 0) return load_gguf(gguf_file(std::move(file)));
    if (detail::looks_like_safetensors(file->data(), file->size()))
        return checkpoint_model_from_safetensors(parse_safetensors(file->data(), file->size(), path.string()),
                                                 path.string());
    return detail::load_llama2c_mapped(std::move(file));
}

MECHLENS_END_NAMESPACE
