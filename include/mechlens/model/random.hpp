#pragma once
/// @file
/// Models with random weights: for benchmarks at real shapes, tests, and training from scratch.

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "mechlens/model/parameters.hpp"
#include "mechlens/model/sampling.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A model with weights drawn uniformly from [-scale, scale] (norm gains 1), reproducible from `seed`, for every
/// variant of model_config: weights the config does not use stay empty views (see layer_weights). The weights live
/// in one owned buffer kept alive by `weights.storage`.
inline loaded_model random_model(const model_config& config, std::uint64_t seed, float scale = 0.05f) {
    config.validate("random_model");
    const std::vector<parameter_entry> layout = parameter_layout(config);
    auto buffer = std::make_shared<tensor<float, 1>>(extents<1>{layout_size(layout)});
    random_generator rng(seed);
    // Gains are 1 and draw nothing from the generator. The draw order is fixed: the parameter layout with the
    // position table moved last (tests pin the weights drawn before learned positions existed).
    auto draw = [&](const parameter_entry& e) {
        float* values = buffer->data() + e.offset;
        const bool gain = traits_of(e.id).norm_gain;
        for (index_t i = 0; i < e.size(); ++i)
            values[i] = gain ? 1.0f : static_cast<float>((2.0 * rng.uniform() - 1.0) * static_cast<double>(scale));
    };
    for (const parameter_entry& e : layout)
        if (e.id != parameter_id::pos_embedding) draw(e);
    for (const parameter_entry& e : layout)
        if (e.id == parameter_id::pos_embedding) draw(e);
    loaded_model model{config, {}};
    model.weights.layers.resize(static_cast<std::size_t>(config.n_layers));
    bind_layout(model.weights, layout, static_cast<const float*>(buffer->data()));
    if (config.tied_unembed) model.weights.unembed = model.weights.token_embedding;
    model.weights.storage = buffer;
    return model;
}

MECHLENS_END_NAMESPACE
