#pragma once
/// @file
/// Training checkpoints as `.safetensors`: one F32 tensor per parameter_layout entry (named like it), every
/// model_config field in `__metadata__`, caller metadata beside it, and optionally the AdamW state to resume
/// training bit for bit. The format itself, and a reader of the model alone (what load_model uses), are in
/// io/checkpoint_format.hpp; this header adds the optimizer state.

#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/io/checkpoint_format.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/train/optimizer.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What load_checkpoint returns.
struct checkpoint {
    model_parameters parameters;                   ///< The model, config included.
    std::map<std::string, std::string> metadata;   ///< The caller's metadata (the "mechlens." keys removed).
    std::optional<adamw_state> optimizer;          ///< The AdamW state, when the file holds one.
};

/// Writes `parameters` to a `.safetensors` file: F32 tensors named by parameter_layout (rank 1 or 2, in layout
/// order), every config field as "mechlens.config.<field>" metadata, and `metadata` beside them; with `optimizer`,
/// also its moments ("optimizer.adamw.m"/"optimizer.adamw.v", shape (size)) and "mechlens.optimizer.step".
/// Throws std::invalid_argument for an empty parameter set, caller keys starting "mechlens." or an optimizer of
/// another size; format_error naming the file when writing fails.
inline void save_checkpoint(const std::filesystem::path& path, const model_parameters& parameters,
                            const std::map<std::string, std::string>& metadata = {},
                            const adamw* optimizer = nullptr) {
    if (parameters.size() == 0) throw std::invalid_argument("save_checkpoint: empty model_parameters");
    std::map<std::string, std::string> all = detail::config_metadata(parameters.config());
    for (const auto& [key, value] : metadata) {
        if (key.rfind(detail::checkpoint_prefix, 0) == 0)
            throw std::invalid_argument("save_checkpoint: metadata key '" + key + "' uses the reserved prefix mechlens.");
        all[key] = value;
    }
    all[detail::checkpoint_format_key] = detail::checkpoint_format_value;
    std::vector<safetensors_tensor_ref> tensors;
    const float* base = parameters.flat().data();
    for (const parameter_entry& e : parameters.layout()) {
        std::vector<index_t> shape{e.shape[0]};
        if (e.rank == 2) shape.push_back(e.shape[1]);
        tensors.push_back({e.name, std::move(shape), base + e.offset});
    }
    if (optimizer) {
        if (optimizer->size() != parameters.size())
            throw std::invalid_argument("save_checkpoint: optimizer of size " + std::to_string(optimizer->size()) +
                                        " for " + std::to_string(parameters.size()) + " parameters");
        tensors.push_back({detail::checkpoint_m, {optimizer->size()}, optimizer->m().data()});
        tensors.push_back({detail::checkpoint_v, {optimizer->size()}, optimizer->v().data()});
        all[detail::checkpoint_step] = std::to_string(optimizer->steps());
    }
    write_safetensors(path, tensors, all);
}

/// Writes `parameters` and the state of `optimizer`; see the overload without it.
inline void save_checkpoint(const std::filesystem::path& path, const model_parameters& parameters,
                            const adamw& optimizer, const std::map<std::string, std::string>& metadata = {}) {
    save_checkpoint(path, parameters, metadata, &optimizer);
}

/// Reads a checkpoint written by save_checkpoint. Throws format_error naming the file when it is not a valid
/// safetensors file (truncated, malformed), when a config field is missing or invalid, or when a tensor is missing,
/// unexpected, or of another shape than the config implies.
inline checkpoint load_checkpoint(const std::filesystem::path& path);

/// Checks the contents of a parsed checkpoint file and builds the checkpoint (errors name `where`); the part of
/// load_checkpoint after read_safetensors.
inline checkpoint checkpoint_from_safetensors(safetensors_file file, const std::string& where) {
    // Every check (config, parameter tensors, optimizer state, no other tensor) runs before anything is allocated.
    const detail::checkpoint_summary summary = detail::check_checkpoint(file, where);
    checkpoint out{detail::checkpoint_parameters(file, summary.config), {}, std::nullopt};
    if (summary.optimizer_step) {
        adamw_state state;
        state.step = *summary.optimizer_step;
        for (safetensors_tensor& t : file.tensors) {
            if (t.name == detail::checkpoint_m) state.m = std::move(t.values);
            if (t.name == detail::checkpoint_v) state.v = std::move(t.values);
        }
        out.optimizer = std::move(state);
    }
    for (auto& [key, value] : file.metadata)
        if (key.rfind(detail::checkpoint_prefix, 0) != 0) out.metadata[key] = std::move(value);
    return out;
}

inline checkpoint load_checkpoint(const std::filesystem::path& path) {
    // read_safetensors checks the container: bounds, dtype F32, exact tiling.
    return checkpoint_from_safetensors(read_safetensors(path), path.string());
}

MECHLENS_END_NAMESPACE
