#pragma once
/// @file
/// The training loop: batches in, AdamW steps with gradient clipping and a warmup + cosine schedule, one report
/// per step. Deterministic for deterministic batches (same seed, same thread count, same numbers).

#include <chrono>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "mechlens/grad/backward.hpp"
#include "mechlens/grad/metric.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/model/sampling.hpp"
#include "mechlens/train/data.hpp"
#include "mechlens/train/optimizer.hpp"
#include "mechlens/train/schedule.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Hyper-parameters of train().
struct train_options {
    index_t steps = 1000;        ///< Optimizer steps.
    float peak_lr = 1e-3f;       ///< Learning rate after warmup.
    index_t warmup_steps = 100;  ///< Linear warmup from 0.
    float min_lr = 1e-4f;        ///< Learning rate at the last step (cosine decay from peak_lr).
    float weight_decay = 0.01f;  ///< AdamW's decoupled weight decay, applied to the block matrices only.
    float beta1 = 0.9f;          ///< AdamW's first-moment decay.
    float beta2 = 0.999f;        ///< AdamW's second-moment decay.
    float clip_norm = 1.0f;      ///< Global gradient-norm clip (0 turns clipping off).
};

/// What one training step reports.
struct train_step {
    index_t step = 0;         ///< 0-based index of the step just taken.
    float loss = 0.0f;        ///< Mean cross-entropy of the batch, before the update.
    float learning_rate = 0;  ///< Learning rate used by this step.
    double grad_norm = 0.0;   ///< Global L2 norm of the gradient before clipping.
    double seconds = 0.0;     ///< Wall time of the step (forward, backward and update).
};

/// Fills `params` for training from scratch, reproducibly from `seed`: every matrix uniform with standard deviation
/// `std` (GPT-2's 0.02 by default), every norm gain 1.
inline void init_parameters(model_parameters& params, std::uint64_t seed, float std = 0.02f) {
    random_generator rng(seed);
    const double half_width = std::sqrt(3.0) * static_cast<double>(std);  // uniform(-a, a) has std a / sqrt(3)
    for (float& v : params.flat()) v = static_cast<float>((2.0 * rng.uniform() - 1.0) * half_width);
    params.fill_norm_gains(1.0f);
}

/// The cross-entropy targets of a batch: its targets, with -1 wherever loss_mask is 0 (what metric expects).
inline tensor<std::int32_t, 2> loss_targets(const token_batch& batch) {
    tensor<std::int32_t, 2> targets = batch.targets;
    for (index_t b = 0; b < batch.batch(); ++b)
        for (index_t t = 0; t < batch.positions(); ++t)
            if (!(batch.loss_mask(b, t) > 0.0f)) targets(b, t) = ignore_target;
    return targets;
}

/// Trains `params` in place: for each step s, `next_batch(s)` returns a token_batch, the mean cross-entropy of its
/// counted targets is differentiated, the gradient clipped, and AdamW steps at warmup_cosine(s); `on_step(report)`
/// sees each step. Returns the optimizer (its state() is what a checkpoint saves to resume). Throws
/// std::invalid_argument for non-positive steps.
template <class NextBatch, class OnStep>
adamw train(model_parameters& params, NextBatch&& next_batch, const train_options& options, OnStep&& on_step) {
    if (options.steps <= 0)
        throw std::invalid_argument("train: steps must be positive, got " + std::to_string(options.steps));
    adamw_options optimizer_options;
    optimizer_options.lr = options.peak_lr;
    optimizer_options.weight_decay = options.weight_decay;
    optimizer_options.beta1 = options.beta1;
    optimizer_options.beta2 = options.beta2;
    adamw optimizer(params.size(), optimizer_options, decay_ranges(params.layout(), decay_block_matrices));
    const warmup_cosine schedule({options.peak_lr, options.warmup_steps, options.steps, options.min_lr, 0.0f});
    model_parameters grads(params.config());
    backprop_tape<float> tape;
    for (index_t step = 0; step < options.steps; ++step) {
        const auto started = std::chrono::steady_clock::now();
        const token_batch batch = next_batch(step);
        const metric loss_metric = metric::cross_entropy(loss_targets(batch));
        const float loss = forward_backward(params, tensor_view<const std::int32_t, 2>(batch.tokens.view()),
                                            loss_metric, &grads, no_hooks{}, tape);
        const double norm =
            options.clip_norm > 0.0f ? clip_grad_norm(grads.flat(), options.clip_norm) : global_norm(grads.flat());
        const float lr = schedule(step);
        optimizer.options().lr = lr;
        optimizer.step(params.flat(), grads.flat());
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        on_step(train_step{step, loss, lr, norm, seconds});
    }
    return optimizer;
}

MECHLENS_END_NAMESPACE
