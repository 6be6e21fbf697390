#pragma once
/// @file
/// Training sparse autoencoders and transcoders with SAELens's training semantics (SAELens 6,
/// `sae_lens/training/sae_trainer.py`, `sae_lens/config.py`): Adam (betas 0.9, 0.999, no weight decay), gradients
/// clipped to global norm 1, a learning rate with linear warm-up and a linear decay to 0 over the last steps, the
/// sparsity coefficient warmed up linearly from 0, latents counted dead after dead_feature_window steps without
/// firing (they feed topk's and batchtopk's auxiliary loss and jumprelu's pre-activation loss), batchtopk's
/// running threshold, jumprelu's step or tanh penalty, normalize_activations none, expected_average_only_in (the
/// factor sqrt(d_in) / mean ||x|| over n_batches_for_norm_estimate batches, folded into the saved weights) and
/// constant_norm_rescale (SAEs; mechlens's transcoders read their input unscaled). The step itself is
/// sae_training_step (sae/training_step.hpp). Deterministic: the same options, seed and data give the same weights
/// bit for bit, whatever the thread count. Checkpoints are SAELens folders plus the trainer's state, and resuming
/// from one continues exactly as the uninterrupted run.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/harvest_reader.hpp"
#include "mechlens/sae/saelens_format.hpp"
#include "mechlens/sae/training_step.hpp"
#include "mechlens/sae/transcoder_definition.hpp"
#include "mechlens/train/optimizer.hpp"

MECHLENS_BEGIN_NAMESPACE

/// How b_dec starts (SAELens before 6: b_dec_init_method; SAELens 6 starts from zeros).
enum class sae_b_dec_init : std::uint8_t {
    zeros,             ///< b_dec = 0 (SAELens 6).
    mean,              ///< The mean of the first batch (of the targets, for a transcoder).
    geometric_median,  ///< The geometric median of the first batch (Weiszfeld iterations).
};

/// Everything a training run needs besides its data. Defaults are SAELens 6's.
struct sae_trainer_options {
    sae_options sae;                ///< Architecture, k, rescaling, apply_b_dec_to_input, normalize_activations.
    index_t d_sae = 0;              ///< Latents.
    std::int64_t tokens_total = 0;  ///< Rows to train on; steps = tokens_total / batch_size.
    index_t batch_size = 4096;      ///< Rows per step (train_batch_size_tokens).
    double lr = 3e-4;               ///< Peak learning rate.
    double adam_beta1 = 0.9;        ///< Adam's beta1.
    double adam_beta2 = 0.999;      ///< Adam's beta2.
    std::int64_t lr_warm_up_steps = 0;  ///< Linear warm-up from lr / W to lr over the first W steps.
    std::int64_t lr_decay_steps = 0;    ///< Linear decay from lr to 0 over the last D steps.
    double l1_coefficient = 1.0;        ///< standard: L1 coefficient.
    double l0_coefficient = 1.0;        ///< jumprelu: L0 (or tanh) coefficient.
    std::int64_t coefficient_warm_up_steps = 0;  ///< The L1 or L0 coefficient grows linearly from 0 over these steps.
    double jumprelu_bandwidth = 0.05;            ///< jumprelu: straight-through estimator width.
    double jumprelu_init_threshold = 0.01;       ///< jumprelu: initial threshold of every latent.
    jumprelu_sparsity jumprelu_sparsity_mode = jumprelu_sparsity::step;  ///< jumprelu: the L0 (step) or tanh penalty.
    double jumprelu_tanh_scale = 4.0;            ///< jumprelu tanh penalty: the scale inside tanh.
    /// jumprelu: weight of the pre-activation loss on dead latents (0: off, SAELens's None); not warmed up, as in
    /// SAELens (only the L0 coefficient has a warm-up).
    double pre_act_loss_coefficient = 0;
    /// expected_average_only_in: batches whose mean row norms are averaged for the factor (SAELens: 1000). They
    /// are read from the start of the source, which is then rewound (SAELens trains on the batches after them).
    std::int64_t n_batches_for_norm_estimate = 1000;
    double aux_loss_coefficient = 1.0;           ///< topk, batchtopk: weight of the auxiliary loss.
    std::int64_t dead_feature_window = 1000;     ///< Steps without firing after which a latent is dead.
    double topk_threshold_lr = 0.01;             ///< batchtopk: rate of the running threshold estimate.
    double decoder_init_norm = 0.1;              ///< Initial norm of every W_dec row (W_enc = W_dec^T).
    sae_b_dec_init b_dec_init = sae_b_dec_init::zeros;  ///< How b_dec starts.
    float max_grad_norm = 1.0f;                  ///< Global gradient-norm clip (SAELens: 1).
    bool skip = false;                           ///< Transcoders: train an affine skip W_skip (d_in, d_in).
    std::uint64_t seed = 0;                      ///< Seeds the initialization.
    std::int64_t checkpoint_every_tokens = 0;    ///< Write a checkpoint every this many rows (0: never).
    std::filesystem::path checkpoint_dir;        ///< Where checkpoints go: checkpoint_dir/tokens_<N>/.
    saelens_metadata metadata;                   ///< hook_name etc. written into cfg.json.
};

/// Rows to train on: a batch of inputs and, for a transcoder, of targets. Sources cycle when they run out.
class sae_batch_source {
public:
    virtual ~sae_batch_source() = default;
    /// Width of a row (d_in).
    [[nodiscard]] virtual index_t width() const = 0;
    /// True when the source yields targets that differ from the inputs (a transcoder's pairs).
    [[nodiscard]] virtual bool paired() const { return false; }
    /// Fills x (rows, width) and, when paired, y (rows, width) with the next `rows` rows.
    virtual void next(std::vector<float>& x, std::vector<float>& y, index_t rows) = 0;
    /// Moves to row `row` from the start, so the next batch is the one an uninterrupted run would read there.
    virtual void seek(std::int64_t row) = 0;
};

/// Rows held in memory (x and optionally y, (rows, width) row-major), read in order and cycled.
class in_memory_batches final : public sae_batch_source {
public:
    /// Takes the rows; y empty for an SAE. Throws shape_error for sizes that are not whole rows or disagree.
    in_memory_batches(std::vector<float> x, std::vector<float> y, index_t width)
        : x_(std::move(x)), y_(std::move(y)), width_(width) {
        if (width_ <= 0 || x_.empty() || x_.size() % static_cast<std::size_t>(width_) != 0 ||
            (!y_.empty() && y_.size() != x_.size()))
            throw shape_error("in_memory_batches: need a whole, non-empty number of rows of width " +
                              std::to_string(width_) + (y_.empty() ? "" : " in x and y alike"));
        rows_ = static_cast<std::int64_t>(x_.size() / static_cast<std::size_t>(width_));
    }
    /// Width of a row.
    [[nodiscard]] index_t width() const override { return width_; }
    /// True when targets were given.
    [[nodiscard]] bool paired() const override { return !y_.empty(); }
    /// The next `rows` rows (and targets), wrapping around at the end.
    void next(std::vector<float>& x, std::vector<float>& y, index_t rows) override {
        x.resize(static_cast<std::size_t>(rows * width_));
        if (paired()) y.resize(x.size());
        const auto w = static_cast<std::size_t>(width_);
        for (index_t r = 0; r < rows; ++r) {
            const auto from = static_cast<std::size_t>(at_) * w, to = static_cast<std::size_t>(r) * w;
            std::copy(x_.begin() + static_cast<std::ptrdiff_t>(from), x_.begin() + static_cast<std::ptrdiff_t>(from + w),
                      x.begin() + static_cast<std::ptrdiff_t>(to));
            if (paired())
                std::copy(y_.begin() + static_cast<std::ptrdiff_t>(from),
                          y_.begin() + static_cast<std::ptrdiff_t>(from + w), y.begin() + static_cast<std::ptrdiff_t>(to));
            at_ = (at_ + 1) % rows_;
        }
    }
    /// Moves to row `row` (modulo the rows held, where the source cycles).
    void seek(std::int64_t row) override { at_ = row % rows_; }

private:
    std::vector<float> x_, y_;
    index_t width_;
    std::int64_t rows_ = 0, at_ = 0;
};

/// Rows of a harvest (sae/harvest.hpp): one site, or an input site and a target site of the same harvest (a
/// transcoder's pairs: row r of both is the same token). Cycled; one shard per site in memory.
class harvest_batches final : public sae_batch_source {
public:
    /// Opens `directory` at `hook` (and `target_hook` when not empty); throws as harvest_reader does, and
    /// shape_error when the two sites' widths differ.
    explicit harvest_batches(const std::filesystem::path& directory, std::string_view hook,
                             std::string_view target_hook = {})
        : x_(directory, hook) {
        if (!target_hook.empty()) {
            y_ = std::make_unique<harvest_reader>(directory, target_hook);
            if (y_->width() != x_.width())
                throw shape_error("harvest_batches: the input site has width " + std::to_string(x_.width()) +
                                  " and the target site " + std::to_string(y_->width()));
        }
        if (x_.rows() <= 0) throw shape_error("harvest_batches: " + directory.string() + " holds no rows");
    }
    /// Width of a row.
    [[nodiscard]] index_t width() const override { return x_.width(); }
    /// True when targets were given.
    [[nodiscard]] bool paired() const override { return y_ != nullptr; }
    /// The next `rows` rows (and targets), wrapping around at the end.
    void next(std::vector<float>& x, std::vector<float>& y, index_t rows) override {
        fill(x_, x, rows);
        if (y_) fill(*y_, y, rows);
    }
    /// Moves to row `row` (modulo the rows held, where the source cycles).
    void seek(std::int64_t row) override {
        row %= x_.rows();
        x_.rewind();
        if (y_) y_->rewind();
        while (row > 0) {
            const auto take = static_cast<index_t>(std::min<std::int64_t>(row, 65536));
            fill(x_, scratch_, take);
            if (y_) fill(*y_, scratch_, take);
            row -= take;
        }
    }

private:
    void fill(harvest_reader& reader, std::vector<float>& out, index_t rows) {
        out.clear();
        index_t got = 0;
        while (got < rows) {
            const index_t n = reader.next(part_, rows - got);
            if (n == 0) {
                reader.rewind();
                continue;
            }
            out.insert(out.end(), part_.begin(), part_.end());
            got += n;
        }
    }
    harvest_reader x_;
    std::unique_ptr<harvest_reader> y_;
    std::vector<float> part_, scratch_;
};

/// What the progress callback sees after each step.
struct sae_training_progress {
    std::int64_t step = 0;         ///< Steps done.
    std::int64_t steps_total = 0;  ///< Steps of the run.
    std::int64_t tokens = 0;       ///< Rows trained on.
    sae_step_result loss;          ///< This step's loss terms and L0.
    double lr = 0;                 ///< The learning rate of this step.
    double dead_fraction = 0;      ///< Fraction of latents dead (no firing for dead_feature_window steps).
    double tokens_per_second = 0;  ///< Rows per second since train() started (wall clock).
};

/// The learning rate of step s (from 0) of T: SAELens's constant schedule with warm-up (LinearLR from 1/W to 1
/// over the first W steps) and a final linear decay to 0 over the last D steps.
inline double sae_learning_rate(const sae_trainer_options& o, std::int64_t s, std::int64_t total) {
    double factor = 1.0;
    const std::int64_t w = o.lr_warm_up_steps, d = o.lr_decay_steps;
    if (w > 1 && s < w) factor = 1.0 / static_cast<double>(w) + (1.0 - 1.0 / static_cast<double>(w)) *
                                                                  static_cast<double>(s) / static_cast<double>(w - 1);
    if (d > 0 && s >= total - d) factor = 1.0 - static_cast<double>(s - (total - d)) / static_cast<double>(d);
    return o.lr * factor;
}

/// Trains one SAE or transcoder. Construct, optionally resume() from a checkpoint, then train().
class sae_trainer {
public:
    /// A trainer for inputs of width d_in; throws std::invalid_argument for inconsistent options.
    sae_trainer(const sae_trainer_options& options, index_t d_in)
        : o_(options),
          layout_(sae_parameter_layout::make(d_in, options.d_sae, options.sae.architecture == sae_architecture::jumprelu,
                                             options.skip)),
          step_(layout_, options.sae),
          adam_(layout_.size, adam_options(options)) {
        auto fail = [](const std::string& what) { throw std::invalid_argument("sae_trainer: " + what); };
        if (o_.batch_size <= 0) fail("batch_size must be positive");
        if (o_.tokens_total < o_.batch_size) fail("tokens_total must be at least one batch");
        if (o_.dead_feature_window < 0 || o_.lr_warm_up_steps < 0 || o_.lr_decay_steps < 0 ||
            o_.coefficient_warm_up_steps < 0)
            fail("windows and warm-up steps must be >= 0");
        if (!(o_.decoder_init_norm > 0)) fail("decoder_init_norm must be positive");
        if (!(o_.jumprelu_init_threshold > 0)) fail("jumprelu_init_threshold must be positive");
        if (!(o_.max_grad_norm > 0)) fail("max_grad_norm must be positive");
        if (!(o_.jumprelu_tanh_scale > 0)) fail("jumprelu_tanh_scale must be positive");
        if (!(o_.pre_act_loss_coefficient >= 0)) fail("pre_act_loss_coefficient must be >= 0");
        if (o_.n_batches_for_norm_estimate < 1) fail("n_batches_for_norm_estimate must be at least 1");
        steps_total_ = o_.tokens_total / o_.batch_size;
        if (o_.lr_warm_up_steps + o_.lr_decay_steps > steps_total_)
            fail("lr_warm_up_steps + lr_decay_steps exceed the " + std::to_string(steps_total_) + " steps");
        params_.resize(static_cast<std::size_t>(layout_.size));
        grads_.resize(params_.size());
        since_fired_.assign(static_cast<std::size_t>(o_.d_sae), 0);
        dead_.assign(static_cast<std::size_t>(o_.d_sae), 0);
        initialize();
    }

    /// The options.
    [[nodiscard]] const sae_trainer_options& options() const noexcept { return o_; }
    /// Steps of the whole run.
    [[nodiscard]] std::int64_t steps_total() const noexcept { return steps_total_; }
    /// Steps done.
    [[nodiscard]] std::int64_t steps_done() const noexcept { return step_index_; }
    /// batchtopk's running threshold.
    [[nodiscard]] double topk_threshold() const noexcept { return topk_threshold_; }
    /// The flat parameter buffer (sae_parameter_layout), e.g. to compare runs bit for bit.
    [[nodiscard]] const std::vector<float>& parameters() const noexcept { return params_; }
    /// expected_average_only_in's factor, sqrt(d_in) / mean ||x|| (1 until estimated, and for other modes).
    [[nodiscard]] float scaling_factor() const noexcept { return scaling_factor_; }
    /// (d_sae) 1 for latents currently counted dead.
    [[nodiscard]] const std::vector<unsigned char>& dead() const noexcept { return dead_; }

    /// Trains on `source` until tokens_total rows (or `stop_after_steps` more steps, for tests of interruption),
    /// calling `progress` after each step. The source is first moved to the next row this run needs, unless it is
    /// the source of the previous call, left where that call stopped (do not read from it in between). Throws
    /// shape_error when the source's width is not d_in.
    void train(sae_batch_source& source, const std::function<void(const sae_training_progress&)>& progress = {},
               std::int64_t stop_after_steps = -1) {
        if (source.width() != layout_.d_in)
            throw shape_error("sae_trainer: the source's rows have width " + std::to_string(source.width()) +
                              ", the trainer expects " + std::to_string(layout_.d_in));
        if (source.paired() && o_.sae.apply_b_dec_to_input)
            throw std::invalid_argument("sae_trainer: a transcoder (paired source) needs apply_b_dec_to_input off");
        if (o_.skip && !source.paired())
            throw std::invalid_argument("sae_trainer: a skip connection needs a paired (transcoder) source");
        if (source.paired() && o_.sae.normalize_activations == sae_normalization::constant_norm_rescale)
            throw std::invalid_argument("sae_trainer: constant_norm_rescale is for SAEs: mechlens's transcoders read "
                                        "their input unscaled");
        step_.transcoder = source.paired();
        const auto batch = o_.batch_size;
        if (step_index_ == 0 && !data_initialized_) initialize_from_data(source);
        // Seek only when the source may stand elsewhere (seeking a harvest re-reads it from the start).
        if (&source != last_source_ || source_row_ != step_index_ * batch) source.seek(step_index_ * batch);
        last_source_ = &source;
        const auto start = std::chrono::steady_clock::now();
        std::int64_t done_here = 0;
        while (step_index_ < steps_total_ && (stop_after_steps < 0 || done_here < stop_after_steps)) {
            source.next(x_, y_, batch);
            source_row_ = (step_index_ + 1) * batch;
            if (scaling_factor_ != 1.0f) {
                for (float& v : x_) v *= scaling_factor_;
                if (source.paired())
                    for (float& v : y_) v *= scaling_factor_;
            }
            const float* y = source.paired() ? y_.data() : x_.data();
            const double warm = o_.coefficient_warm_up_steps > 0 && step_index_ < o_.coefficient_warm_up_steps
                                    ? static_cast<double>(step_index_) / static_cast<double>(o_.coefficient_warm_up_steps)
                                    : 1.0;
            sae_step_coefficients c{o_.l1_coefficient * warm, o_.l0_coefficient * warm, o_.jumprelu_bandwidth,
                                    o_.aux_loss_coefficient};
            c.sparsity = o_.jumprelu_sparsity_mode;
            c.tanh_scale = o_.jumprelu_tanh_scale;
            c.pre_act = o_.pre_act_loss_coefficient;
            const sae_step_result r = step_.compute(params_, grads_, x_.data(), y, batch, c, dead_);
            clip_grad_norm(grads_, o_.max_grad_norm);
            const double lr = sae_learning_rate(o_, step_index_, steps_total_);
            adam_.options().lr = static_cast<float>(lr);
            adam_.step(params_, grads_);
            // Dead latents (SAELens: n_forward_passes_since_fired > dead_feature_window), saturating.
            index_t dead_count = 0;
            for (std::size_t j = 0; j < since_fired_.size(); ++j) {
                since_fired_[j] = step_.fired()[j] != 0 ? 0 : std::min(since_fired_[j] + 1, o_.dead_feature_window + 1);
                dead_[j] = since_fired_[j] > o_.dead_feature_window ? 1 : 0;
                dead_count += dead_[j];
            }
            if (o_.sae.architecture == sae_architecture::batchtopk && std::isfinite(r.smallest_positive))
                topk_threshold_ = (1.0 - o_.topk_threshold_lr) * topk_threshold_ + o_.topk_threshold_lr * r.smallest_positive;
            ++step_index_;
            ++done_here;
            const std::int64_t tokens = step_index_ * batch;
            if (progress) {
                sae_training_progress p;
                p.step = step_index_;
                p.steps_total = steps_total_;
                p.tokens = tokens;
                p.loss = r;
                p.lr = lr;
                p.dead_fraction = static_cast<double>(dead_count) / static_cast<double>(o_.d_sae);
                const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                p.tokens_per_second = seconds > 0 ? static_cast<double>(done_here * batch) / seconds : 0;
                progress(p);
            }
            if (o_.checkpoint_every_tokens > 0 && !o_.checkpoint_dir.empty() &&
                tokens / o_.checkpoint_every_tokens != (tokens - batch) / o_.checkpoint_every_tokens)
                save_checkpoint(o_.checkpoint_dir / ("tokens_" + std::to_string(tokens)));
        }
    }

    /// The trained weights in SAELens's layout (W_skip empty unless options().skip), before folding the scaling
    /// factor or converting batchtopk.
    [[nodiscard]] transcoder_weights weights() const { return unpack_sae_parameters<float>(params_, layout_); }

    /// The SAE as SAELens saves it for inference: the scaling factor folded in (normalize_activations none),
    /// batchtopk as jumprelu; cfg.json also records the training settings under SAELens's training names.
    [[nodiscard]] saelens_sae saelens() const {
        saelens_sae s;
        s.weights = weights().sae;
        s.options = o_.sae;
        s.options.error_term = true;
        s.metadata = o_.metadata;
        s.training_config = training_config();
        if (o_.sae.normalize_activations == sae_normalization::expected_average_only_in || scaling_factor_ != 1.0f)
            fold_activation_scaling_factor(s, scaling_factor_);
        if (o_.sae.architecture == sae_architecture::batchtopk)
            s = batchtopk_as_jumprelu(std::move(s), static_cast<float>(topk_threshold_));
        return s;
    }

    /// Writes a checkpoint: the SAELens folder of saelens() (for a transcoder, its SAE part) and
    /// trainer_state.safetensors with everything resume() needs.
    void save_checkpoint(const std::filesystem::path& dir) const {
        write_saelens_folder(dir, saelens());
        std::vector<float> since(since_fired_.begin(), since_fired_.end());  // exact: saturated below 2^24
        std::map<std::string, std::string> meta;
        meta["format"] = "mechlens.sae_trainer";
        meta["step"] = std::to_string(step_index_);
        meta["adam_step"] = std::to_string(adam_.steps());
        meta["seed"] = std::to_string(o_.seed);
        meta["architecture"] = std::string(to_string(o_.sae.architecture));
        meta["d_in"] = std::to_string(layout_.d_in);
        meta["d_sae"] = std::to_string(layout_.d_sae);
        meta["batch_size"] = std::to_string(o_.batch_size);
        meta["skip"] = o_.skip ? "true" : "false";
        meta["topk_threshold"] = exact(topk_threshold_);
        meta["scaling_factor"] = exact(static_cast<double>(scaling_factor_));
        meta["normalize_activations"] = std::string(to_string(o_.sae.normalize_activations));
        write_safetensors(dir / "trainer_state.safetensors",
                          {{"parameters", {layout_.size}, params_.data()},
                           {"adam_m", {layout_.size}, adam_.m().data()},
                           {"adam_v", {layout_.size}, adam_.v().data()},
                           {"since_fired", {layout_.d_sae}, since.data()}},
                          meta);
    }

    /// Restores the state saved by save_checkpoint in `dir`; train() then continues where that run was. Throws
    /// format_error for a missing or foreign state file and std::invalid_argument when its shape, architecture
    /// or batch size differ from this trainer's.
    void resume(const std::filesystem::path& dir) {
        const safetensors_file f = read_safetensors(dir / "trainer_state.safetensors", safetensors_dtypes::f32_only);
        auto meta = [&](const std::string& key) {
            const auto it = f.metadata.find(key);
            if (it == f.metadata.end())
                throw format_error((dir / "trainer_state.safetensors").string() + ": no metadata '" + key + "'");
            return it->second;
        };
        if (meta("format") != "mechlens.sae_trainer")
            throw format_error((dir / "trainer_state.safetensors").string() + ": not a mechlens trainer state");
        auto same = [&](const std::string& key, const std::string& ours) {
            if (meta(key) != ours)
                throw std::invalid_argument("sae_trainer::resume: the checkpoint's " + key + " is " + meta(key) +
                                            ", this run's " + ours);
        };
        same("architecture", std::string(to_string(o_.sae.architecture)));
        same("d_in", std::to_string(layout_.d_in));
        same("d_sae", std::to_string(layout_.d_sae));
        same("batch_size", std::to_string(o_.batch_size));
        same("skip", o_.skip ? "true" : "false");
        if (f.metadata.count("normalize_activations") != 0)  // (absent from older checkpoints)
            same("normalize_activations", std::string(to_string(o_.sae.normalize_activations)));
        auto tensor = [&](const std::string& name, index_t size) -> const std::vector<float>& {
            for (const safetensors_tensor& t : f.tensors)
                if (t.name == name) {
                    if (static_cast<index_t>(t.values.size()) != size)
                        throw format_error((dir / "trainer_state.safetensors").string() + ": " + name +
                                           " has the wrong size");
                    return t.values;
                }
            throw format_error((dir / "trainer_state.safetensors").string() + ": no tensor " + name);
        };
        params_ = tensor("parameters", layout_.size);
        adamw_state state;
        state.step = std::stoll(meta("adam_step"));
        state.m = tensor("adam_m", layout_.size);
        state.v = tensor("adam_v", layout_.size);
        adam_.set_state(std::move(state));
        const std::vector<float>& since = tensor("since_fired", layout_.d_sae);
        for (std::size_t j = 0; j < since.size(); ++j) {
            since_fired_[j] = static_cast<std::int64_t>(since[j]);
            dead_[j] = since_fired_[j] > o_.dead_feature_window ? 1 : 0;
        }
        step_index_ = std::stoll(meta("step"));
        topk_threshold_ = std::stod(meta("topk_threshold"));
        scaling_factor_ = std::stof(meta("scaling_factor"));
        data_initialized_ = true;
        last_source_ = nullptr;
    }

private:
    static adamw_options adam_options(const sae_trainer_options& o) {
        adamw_options a;
        a.lr = static_cast<float>(o.lr);
        a.beta1 = static_cast<float>(o.adam_beta1);
        a.beta2 = static_cast<float>(o.adam_beta2);
        a.weight_decay = 0.0f;  // SAELens uses torch.optim.Adam
        return a;
    }

    /// The training settings SAELens's training configuration of this architecture holds (name, JSON text).
    [[nodiscard]] std::vector<std::pair<std::string, std::string>> training_config() const {
        std::vector<std::pair<std::string, std::string>> c;
        const std::string warm_up = std::to_string(o_.coefficient_warm_up_steps);
        switch (o_.sae.architecture) {
            case sae_architecture::standard:
                c.emplace_back("l1_coefficient", exact(o_.l1_coefficient));
                c.emplace_back("l1_warm_up_steps", warm_up);
                break;
            case sae_architecture::jumprelu:
                c.emplace_back("l0_coefficient", exact(o_.l0_coefficient));
                c.emplace_back("l0_warm_up_steps", warm_up);
                c.emplace_back("jumprelu_bandwidth", exact(o_.jumprelu_bandwidth));
                c.emplace_back("jumprelu_init_threshold", exact(o_.jumprelu_init_threshold));
                c.emplace_back("jumprelu_sparsity_loss_mode",
                               o_.jumprelu_sparsity_mode == jumprelu_sparsity::tanh ? "\"tanh\"" : "\"step\"");
                c.emplace_back("jumprelu_tanh_scale", exact(o_.jumprelu_tanh_scale));
                c.emplace_back("pre_act_loss_coefficient",
                               o_.pre_act_loss_coefficient > 0 ? exact(o_.pre_act_loss_coefficient) : "null");
                break;
            case sae_architecture::topk:
            case sae_architecture::batchtopk:
                c.emplace_back("aux_loss_coefficient", exact(o_.aux_loss_coefficient));
                break;
        }
        c.emplace_back("decoder_init_norm", exact(o_.decoder_init_norm));
        return c;
    }

    static std::string exact(double v) {
        char buffer[40];
        std::snprintf(buffer, sizeof buffer, "%.17g", v);
        return buffer;
    }

    /// splitmix64: the initialization's random stream (portable, unlike the standard distributions).
    static std::uint64_t splitmix(std::uint64_t& state) noexcept {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }

    /// SAELens 6's initialization: W_dec uniform (kaiming-uniform's shape, the scale normalized away) with rows
    /// of norm decoder_init_norm, W_enc = W_dec^T, b_enc = b_dec = 0, thresholds jumprelu_init_threshold.
    void initialize() {
        std::uint64_t state = o_.seed;
        const index_t d_in = layout_.d_in, d_sae = layout_.d_sae;
        float* w_dec = params_.data() + layout_.w_dec;
        float* w_enc_t = params_.data() + layout_.w_enc_t;
        for (index_t j = 0; j < d_sae; ++j) {
            double norm = 0;
            for (index_t i = 0; i < d_in; ++i) {
                const double u = static_cast<double>(splitmix(state) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
                w_dec[j * d_in + i] = static_cast<float>(u);
                norm += u * u;
            }
            const double s = o_.decoder_init_norm / std::max(std::sqrt(norm), 1e-30);
            for (index_t i = 0; i < d_in; ++i) {
                w_dec[j * d_in + i] = static_cast<float>(static_cast<double>(w_dec[j * d_in + i]) * s);
                w_enc_t[j * d_in + i] = w_dec[j * d_in + i];
            }
        }
        if (layout_.threshold)
            for (index_t j = 0; j < d_sae; ++j)
                params_[static_cast<std::size_t>(layout_.log_threshold + j)] =
                    static_cast<float>(std::log(o_.jumprelu_init_threshold));
        // A transcoder's skip starts at zero: the latents learn first what the skip does not carry.
    }

    /// The mean row norm of x (rows, d) in double, summed in row order.
    static double mean_row_norm(const std::vector<float>& x, index_t rows, index_t d) {
        double mean = 0;
        for (index_t r = 0; r < rows; ++r) {
            double s = 0;
            for (index_t i = 0; i < d; ++i)
                s += static_cast<double>(x[static_cast<std::size_t>(r * d + i)]) *
                     static_cast<double>(x[static_cast<std::size_t>(r * d + i)]);
            mean += std::sqrt(s);
        }
        return mean / static_cast<double>(rows);
    }

    /// expected_average_only_in's factor (over n_batches_for_norm_estimate batches from the start) and b_dec's
    /// initial value (from the first batch); the source is rewound.
    void initialize_from_data(sae_batch_source& source) {
        data_initialized_ = true;
        const bool scale = o_.sae.normalize_activations == sae_normalization::expected_average_only_in;
        if (!scale && o_.b_dec_init == sae_b_dec_init::zeros) return;
        source.seek(0);
        source.next(x_, y_, o_.batch_size);
        last_source_ = nullptr;  // the first step seeks back to row 0
        const index_t n = o_.batch_size, d = layout_.d_in;
        if (scale) {
            // SAELens: sqrt(d_in) / (the mean over batches of each batch's mean ||x||).
            double sum = mean_row_norm(x_, n, d);
            std::vector<float> more_x, more_y;  // (n, d) the later batches
            for (std::int64_t b = 1; b < o_.n_batches_for_norm_estimate; ++b) {
                source.next(more_x, more_y, n);
                sum += mean_row_norm(more_x, n, d);
            }
            const double mean = sum / static_cast<double>(o_.n_batches_for_norm_estimate);
            if (mean > 0) scaling_factor_ = static_cast<float>(std::sqrt(static_cast<double>(d)) / mean);
        }
        const std::vector<float>& rows = source.paired() ? y_ : x_;
        const auto factor = static_cast<double>(scaling_factor_);
        std::vector<double> point(static_cast<std::size_t>(d), 0.0);  // (d_in)
        for (index_t r = 0; r < n; ++r)
            for (index_t i = 0; i < d; ++i)
                point[static_cast<std::size_t>(i)] +=
                    static_cast<double>(rows[static_cast<std::size_t>(r * d + i)]) * factor / static_cast<double>(n);
        if (o_.b_dec_init == sae_b_dec_init::geometric_median)
            for (int iteration = 0; iteration < 100; ++iteration) {  // Weiszfeld from the mean
                std::vector<double> next(point.size(), 0.0);
                double weights = 0;
                for (index_t r = 0; r < n; ++r) {
                    double dist = 0;
                    for (index_t i = 0; i < d; ++i) {
                        const double v = static_cast<double>(rows[static_cast<std::size_t>(r * d + i)]) * factor -
                                         point[static_cast<std::size_t>(i)];
                        dist += v * v;
                    }
                    const double w = 1.0 / std::max(std::sqrt(dist), 1e-12);
                    weights += w;
                    for (index_t i = 0; i < d; ++i)
                        next[static_cast<std::size_t>(i)] +=
                            w * static_cast<double>(rows[static_cast<std::size_t>(r * d + i)]) * factor;
                }
                for (double& v : next) v /= weights;
                point = next;
            }
        if (o_.b_dec_init != sae_b_dec_init::zeros)
            for (index_t i = 0; i < d; ++i)
                params_[static_cast<std::size_t>(layout_.b_dec + i)] = static_cast<float>(point[static_cast<std::size_t>(i)]);
    }

    sae_trainer_options o_;
    sae_parameter_layout layout_;
    sae_training_step<float> step_;
    adamw adam_;
    std::int64_t steps_total_ = 0, step_index_ = 0;
    std::vector<float> params_;  // (layout size)
    std::vector<float> grads_;   // (layout size)
    std::vector<float> x_, y_;   // (batch, d_in) each
    std::vector<std::int64_t> since_fired_;  // (d_sae) steps since each latent last fired
    std::vector<unsigned char> dead_;        // (d_sae)
    double topk_threshold_ = 0;
    float scaling_factor_ = 1.0f;
    bool data_initialized_ = false;
    const sae_batch_source* last_source_ = nullptr;  // the source of the last step, and the row it stands at
    std::int64_t source_row_ = -1;
};

MECHLENS_END_NAMESPACE
