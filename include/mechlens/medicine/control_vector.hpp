#pragma once
/// @file
/// llama.cpp control vectors, both ways. A control vector file is a GGUF file with
///   general.architecture = "controlvector", controlvector.model_hint (string), controlvector.layer_count (int32),
///   and F32 1-D tensors `direction.N` of length d_model.
/// llama.cpp (`--control-vector FILE` or `FILE:STRENGTH`, several summed) adds strength * direction.N to the output
/// of block N (0-based; its graph applies the vector after the MLP's residual add), which is mechlens's
/// `blocks.N.hook_resid_post`. Block 0 never receives one: llama.cpp rejects `direction.0`, and so do we. A
/// direction found at `blocks.N.hook_resid_post` is written as `direction.N` (llama.cpp's own generator names the
/// vector of block N's output `direction.N+1`; that offset is not reproduced here).

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/hooks/steering.hpp"
#include "mechlens/io/gguf.hpp"
#include "mechlens/io/gguf_writer.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A control vector: one direction per block (1 and up) to add to that block's output.
struct control_vector {
    std::string model_hint;                            ///< controlvector.model_hint (e.g. the model's architecture).
    std::map<index_t, std::vector<float>> directions;  ///< Block N (>= 1) -> (d_model) values.

    /// The width of the directions (0 when there are none).
    [[nodiscard]] index_t width() const noexcept {
        return directions.empty() ? 0 : static_cast<index_t>(directions.begin()->second.size());
    }
};

namespace detail {

/// Throws std::invalid_argument (naming `who`) unless every block is >= 1 and every direction has the same,
/// positive width.
inline void check_control_vector(const control_vector& cv, const char* who) {
    if (cv.directions.empty()) throw std::invalid_argument(std::string(who) + ": the control vector has no direction");
    for (const auto& [block, values] : cv.directions) {
        if (block < 1)
            throw std::invalid_argument(std::string(who) + ": block " + std::to_string(block) +
                                        " cannot receive a direction (llama.cpp applies direction.N to block N >= 1)");
        if (values.empty() || static_cast<index_t>(values.size()) != cv.width())
            throw std::invalid_argument(std::string(who) + ": the directions must all have the same, non-zero width");
    }
}

}  // namespace detail

/// Writes `cv` as a llama.cpp control vector file (see the file comment); controlvector.layer_count is the number of
/// directions, as llama.cpp's generator writes it. Throws std::invalid_argument for a direction at block 0, none at
/// all, or directions of different widths; format_error naming the file when writing fails.
inline void write_control_vector(const std::filesystem::path& path, const control_vector& cv) {
    detail::check_control_vector(cv, "write_control_vector");
    std::vector<std::pair<std::string, gguf_value>> metadata{
        {"general.architecture", gguf_value(gguf_type::string, std::string("controlvector"))},
        {"controlvector.model_hint", gguf_value(gguf_type::string, cv.model_hint)},
        {"controlvector.layer_count", gguf_value(gguf_type::int32, static_cast<std::int64_t>(cv.directions.size()))}};
    std::vector<gguf_tensor_to_write> tensors;
    for (const auto& [block, values] : cv.directions)
        tensors.push_back({"direction." + std::to_string(block), {static_cast<std::uint64_t>(values.size())}, values,
                           ggml_type::f32, {}});
    write_gguf(path, metadata, tensors);
}

/// Reads a llama.cpp control vector file. Throws format_error naming the file when it is not a valid GGUF file,
/// its architecture is not "controlvector", or a tensor is not an F32 1-D `direction.N` with N >= 1 of the common
/// width (llama.cpp's own checks).
inline control_vector read_control_vector(const std::filesystem::path& path) {
    const gguf_file file(path);
    auto fail = [&](const std::string& problem) { throw format_error(path.string() + ": " + problem); };
    const gguf_value* arch = file.find("general.architecture");
    if (arch == nullptr || arch->as_string() == nullptr || *arch->as_string() != "controlvector")
        fail("not a control vector (general.architecture is not \"controlvector\")");
    control_vector cv;
    if (const gguf_value* hint = file.find("controlvector.model_hint"); hint != nullptr && hint->as_string() != nullptr)
        cv.model_hint = *hint->as_string();
    if (file.tensors().empty()) fail("no direction tensors");
    for (const gguf_tensor_info& t : file.tensors()) {
        const std::string prefix = "direction.";
        const std::string digits = t.name.rfind(prefix, 0) == 0 ? t.name.substr(prefix.size()) : std::string();
        if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos)
            fail("tensor '" + t.name.substr(0, 80) + "' is not named direction.N");
        const auto block = static_cast<index_t>(std::stol(digits));
        if (block == 0) fail("direction.0: block 0 never receives a control vector");
        if (t.type != ggml_type::f32 || t.dims.size() != 1)
            fail("tensor '" + t.name + "' must be F32 and 1-D, got " + to_string(t.type) + " with " +
                 std::to_string(t.dims.size()) + " dims");
        if (t.dims[0] == 0 || (!cv.directions.empty() && static_cast<index_t>(t.dims[0]) != cv.width()))
            fail("tensor '" + t.name + "' has " + std::to_string(t.dims[0]) + " values, the others " +
                 std::to_string(cv.width()));
        if (cv.directions.count(block) != 0) fail("two tensors for block " + std::to_string(block));
        const auto* bytes = file.tensor_data(t);
        std::vector<float> values(static_cast<std::size_t>(t.dims[0]));
        std::memcpy(values.data(), bytes, values.size() * sizeof(float));
        cv.directions.emplace(block, std::move(values));
    }
    return cv;
}

/// Adds strength * direction.N at blocks.N.hook_resid_post to `steer` for every direction of `cv` (llama.cpp's
/// `--control-vector FILE:STRENGTH`; call it once per file to sum several). Throws shape_error when the directions'
/// width is not `d_model`, std::invalid_argument for a block the model does not have (llama.cpp ignores those;
/// here they are an error, since they mean the file was made for another model).
template <kind_set Kinds>
void add_control_vector(steer_hooks<Kinds>& steer, const control_vector& cv, float strength, index_t d_model,
                        index_t n_layers) {
    detail::check_control_vector(cv, "add_control_vector");
    if (cv.width() != d_model)
        throw shape_error("add_control_vector: the control vector has width " + std::to_string(cv.width()) +
                          ", the model's d_model is " + std::to_string(d_model));
    for (const auto& [block, values] : cv.directions) {
        if (block >= n_layers)
            throw std::invalid_argument("add_control_vector: direction." + std::to_string(block) +
                                        " names a block the model does not have (it has " + std::to_string(n_layers) +
                                        ")");
        steer.add(site{site_kind::resid_post, block}, values, strength);
    }
}

MECHLENS_END_NAMESPACE
