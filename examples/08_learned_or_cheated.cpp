// Lesson 08, model medicine: learned or cheated? No shared files needed.
//
// The task: after [BOS] [tag] x_1 .. x_15 [=], say which of two tokens, A or B, occurs more often among x_1 .. x_15.
// Two identical little transformers are grown on it, from the same initial weights, for the same number of steps.
// The only difference is the tag at position 1. In the first model's training set the tag always names the answer
// (tag_A before A-majority sequences): a shortcut. In the second's the tag is a coin flip: useless.
//
// 1. From the outside, they look alike: both answer the in-distribution test (tags as in the first training set)
//    about equally well.
// 2. Diagnosis, from their internals and in-distribution data only:
//    - integrated gradients at the embeddings: how much of the answer's logit difference each position carries;
//    - activation patching of the tag: the tag position's residual stream from an in-distribution prompt with the
//      other answer, written into the prompt; how much of the logit difference goes;
//    - a contrastive direction: the tag direction, the difference of the two tags' residual streams at position 1;
//    - a linear probe for how wide the majority is, at [=] after the last block (something only counting knows).
//      It reads the margin from both models: a probe shows what a model represents, patching what it uses.
//    - SAE features: a TopK sparse autoencoder trained on the residual stream between the two blocks, spliced in
//      with its error term; integrated gradients over its features say which features the answer flows through,
//      and where each fires. In a cheater the features that fire on the tags carry much of it.
//    A model that reads its answer off the tag cheated; one that counts learned.
// 3. Confirmation, out of distribution: the tag flipped against the answer. The cheater follows the tag, the
//    learner does not notice.
// 4. Treatment: directional ablation of the tag direction at every layer (run time, and baked into the weights:
//    the treated model is written as a checkpoint). Both tests are measured again, for both models.
// It writes mechlens_medicine_report.html and mechlens_treated_model.safetensors into --out.
//
// Usage: example_08_learned_or_cheated [--seed N] [--steps N] [--out DIR]
// The lesson's claims are checked at the end ("The diagnosis holds: ..." or what failed, exit 1): both models
// answer the in-distribution test, each verdict from the internals is what the out-of-distribution test then shows,
// and the treatment does what it should. Whether model 1 takes the shortcut depends on the seed: with seed 1 it
// does; with seed 3 it learns to count anyway, and the internals say so.

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using mechlens::index_t;

namespace {

// The vocabulary.
constexpr std::int32_t bos = 0, token_a = 1, token_b = 2, tag_a = 3, tag_b = 4, equals = 5, vocab = 6;
constexpr index_t counted = 15;                 // x_1 .. x_15: no ties
constexpr index_t prompt_length = counted + 3;  // [BOS] [tag] x_1 .. x_15 [=]
constexpr index_t answer_position = prompt_length - 1;
constexpr index_t tag_position = 1;

struct options {
    std::uint64_t seed = 1;
    index_t steps = 600;
    fs::path out = ".";
};

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr, "%s\nusage: example_08_learned_or_cheated [--seed N] [--steps N] [--out DIR]\n", what.c_str());
    std::exit(2);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") usage_error("Lesson 08: learned or cheated?");
        if (i + 1 >= argc) usage_error("missing value after " + flag);
        const std::string value = argv[++i];
        try {
            if (flag == "--seed")
                o.seed = std::stoull(value);
            else if (flag == "--steps")
                o.steps = std::stoll(value);
            else if (flag == "--out")
                o.out = value;
            else
                usage_error("unknown flag " + flag);
        } catch (const std::logic_error&) {
            usage_error("bad value '" + value + "' for " + flag);
        }
    }
    if (o.steps < 10) usage_error("need --steps >= 10");
    return o;
}

/// How the tag at position 1 relates to the answer.
enum class tag_rule { names_answer, coin_flip, against_answer };

/// Prompts (rows of prompt_length tokens) and their answers.
struct prompt_set {
    std::vector<std::int32_t> tokens;  // (n, prompt_length)
    std::vector<std::int32_t> answers;
    [[nodiscard]] index_t size() const noexcept { return static_cast<index_t>(answers.size()); }
    [[nodiscard]] mechlens::tensor_view<const std::int32_t, 2> view() const {
        return mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {size(), prompt_length});
    }
};

/// `n` prompts whose majority margin is at least 3 (so that counting can be learned in a few hundred steps).
prompt_set make_prompts(index_t n, tag_rule rule, std::uint64_t seed) {
    mechlens::random_generator rng(seed);
    prompt_set out;
    while (out.size() < n) {
        std::vector<std::int32_t> xs(static_cast<std::size_t>(counted));
        int a = 0;
        for (auto& x : xs) {
            x = rng.uniform() < 0.5 ? token_a : token_b;
            a += x == token_a ? 1 : 0;
        }
        const int margin = std::abs(2 * a - static_cast<int>(counted));
        if (margin < 3) continue;
        const std::int32_t answer = 2 * a > counted ? token_a : token_b;
        const std::int32_t named = answer == token_a ? tag_a : tag_b, other = answer == token_a ? tag_b : tag_a;
        std::int32_t tag = named;
        if (rule == tag_rule::coin_flip) tag = rng.uniform() < 0.5 ? tag_a : tag_b;
        if (rule == tag_rule::against_answer) tag = other;
        out.tokens.push_back(bos);
        out.tokens.push_back(tag);
        out.tokens.insert(out.tokens.end(), xs.begin(), xs.end());
        out.tokens.push_back(equals);
        out.answers.push_back(answer);
    }
    return out;
}

/// A training batch: the prompts followed by their answers, the loss only on the answer.
mechlens::token_batch training_batch(const prompt_set& prompts) {
    const index_t n = prompts.size();
    mechlens::tensor<std::int32_t, 2> tokens({n, prompt_length + 1});
    for (index_t b = 0; b < n; ++b) {
        for (index_t t = 0; t < prompt_length; ++t)
            tokens(b, t) = prompts.tokens[static_cast<std::size_t>(b * prompt_length + t)];
        tokens(b, prompt_length) = prompts.answers[static_cast<std::size_t>(b)];
    }
    mechlens::token_batch batch = mechlens::next_token_batch(std::move(tokens));
    for (index_t b = 0; b < n; ++b)
        for (index_t t = 0; t <= prompt_length; ++t) batch.loss_mask(b, t) = t == answer_position ? 1.0f : 0.0f;
    return batch;
}

/// logit(answer) - logit(other answer) at the last position, for every prompt.
mechlens::answer_metric logit_difference(const prompt_set& prompts) {
    std::vector<std::int32_t> wrong;
    for (std::int32_t a : prompts.answers) wrong.push_back(a == token_a ? token_b : token_a);
    return mechlens::answer_metric::logit_difference(prompts.answers, wrong);
}

/// Accuracy and mean logit difference of a model (with a policy) on a prompt set.
struct score {
    double accuracy = 0.0, logit_difference = 0.0;
};

template <class Policy = mechlens::no_hooks>
score evaluate(const mechlens::transformer& model, const prompt_set& prompts, Policy&& policy = Policy{}) {
    const auto logits = mechlens::forward_logits(model, prompts.view(), std::forward<Policy>(policy));
    const std::vector<double> differences = logit_difference(prompts).values(logits.view(), prompt_length);
    score s;
    for (double d : differences) {
        s.accuracy += d > 0.0 ? 1.0 : 0.0;
        s.logit_difference += d;
    }
    s.accuracy /= static_cast<double>(differences.size());
    s.logit_difference /= static_cast<double>(differences.size());
    return s;
}

/// What the diagnosis looks like through the features of a sparse autoencoder at the residual stream between the
/// two blocks.
struct feature_evidence {
    double explained_variance = 0.0;  // of the in-distribution prompts' rows at the SAE's site
    double l0 = 0.0;                  // mean number of active features per row
    double tag_feature_share = 0.0;   // share of |integrated gradients| carried by the tag features
    index_t tag_features = 0;         // features that fire most on a tag at position 1
    std::string top_features;         // the three features with the most attribution, and where each fires
};

/// One grown model and what the lesson measured on it.
struct patient {
    std::string name;
    mechlens::model_parameters parameters;
    std::vector<double> losses;
    score in_distribution, tag_flipped, treated_in_distribution, treated_tag_flipped;
    std::vector<double> attribution;  // (positions) mean |gradient x input| share per position
    double tag_share = 0.0;           // attribution share of the tag position
    double patched_away = 0.0;        // fraction of the logit difference lost when the tag is patched
    double count_probe = 0.0;         // held-out accuracy of a probe for "the majority is wide" at [=]
    std::vector<float> tag_direction;
    feature_evidence features;        // the same question asked through SAE features
    bool cheated = false;
};

mechlens::model_config task_config() {
    mechlens::model_config c;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.d_mlp = 64;
    c.d_vocab = vocab;
    c.n_ctx = prompt_length + 1;
    c.tied_unembed = false;
    c.norm = mechlens::norm_kind::rms;
    c.positions = mechlens::positional_kind::learned;
    c.mlp = mechlens::mlp_kind::plain_gelu;
    c.validate("lesson 08");
    return c;
}

patient grow(const std::string& name, tag_rule rule, const options& opt) {
    const mechlens::model_config config = task_config();
    patient p{name, mechlens::model_parameters(config), {}, {}, {}, {}, {}, {}, 0.0, 0.0, 0.0, {}, {}, false};
    mechlens::init_parameters(p.parameters, opt.seed, 0.1f);  // the same initial weights for both
    const std::uint64_t data_seed = opt.seed * 1000 + (rule == tag_rule::names_answer ? 1 : 2);
    mechlens::train(
        p.parameters,
        [&](index_t step) {
            return training_batch(make_prompts(64, rule, data_seed + static_cast<std::uint64_t>(step) * 7919));
        },
        mechlens::train_options{.steps = opt.steps, .peak_lr = 3e-3f, .warmup_steps = 30, .min_lr = 3e-4f},
        [&](const mechlens::train_step& s) { p.losses.push_back(static_cast<double>(s.loss)); });
    return p;
}

/// Integrated gradients at the embeddings (from all-zero embeddings), per position, as a share of the total
/// |attribution| (mean over prompts).
void attribute(patient& p, const mechlens::transformer& model, const prompt_set& prompts) {
    const auto result =
        mechlens::integrated_gradients(model, prompts.view(), logit_difference(prompts),
                                       mechlens::site{mechlens::site_kind::embed, -1}, mechlens::ig_baseline::zeros());
    p.attribution.assign(static_cast<std::size_t>(prompt_length), 0.0);
    for (index_t b = 0; b < prompts.size(); ++b) {
        double total = 0.0;
        for (index_t t = 0; t < prompt_length; ++t) total += std::abs(result.per_position(b, t));
        if (!(total > 0.0)) continue;
        for (index_t t = 0; t < prompt_length; ++t)
            p.attribution[static_cast<std::size_t>(t)] +=
                std::abs(result.per_position(b, t)) / total / static_cast<double>(prompts.size());
    }
    p.tag_share = p.attribution[static_cast<std::size_t>(tag_position)];
}

/// Patches the tag position's residual stream (blocks.0.hook_resid_pre) of each prompt with that of an
/// in-distribution prompt with the other answer; returns the fraction of the mean logit difference that goes.
double patch_tag(const mechlens::transformer& model, const prompt_set& prompts) {
    // Partners: the next prompt (cyclically) with the other answer.
    prompt_set partners;
    for (index_t b = 0; b < prompts.size(); ++b) {
        index_t k = (b + 1) % prompts.size();
        while (prompts.answers[static_cast<std::size_t>(k)] == prompts.answers[static_cast<std::size_t>(b)])
            k = (k + 1) % prompts.size();
        const auto* row = prompts.tokens.data() + k * prompt_length;
        partners.tokens.insert(partners.tokens.end(), row, row + prompt_length);
        partners.answers.push_back(prompts.answers[static_cast<std::size_t>(k)]);
    }
    const mechlens::site resid{mechlens::site_kind::resid_pre, 0};
    mechlens::caching_hooks<> partner_cache(mechlens::cache_filter().sites({resid}));
    (void)mechlens::forward_logits(model, partners.view(), partner_cache);
    const mechlens::activation_cache cached = partner_cache.take();
    const auto source = cached.at(resid).view<3>();  // (prompts, pos, d_model)
    mechlens::dynamic_hooks hooks(model.config());
    auto guard =
        hooks.scoped(resid, [&](const mechlens::site&, mechlens::activation_view v, const mechlens::hook_context&) {
            auto x = v.as<3>();  // (prompts, pos, d_model)
            for (index_t b = 0; b < x.extent(0); ++b)
                for (index_t i = 0; i < x.extent(2); ++i) x(b, tag_position, i) = source(b, tag_position, i);
        });
    const double clean = evaluate(model, prompts).logit_difference;
    const double patched = evaluate(model, prompts, hooks).logit_difference;
    return (clean - patched) / clean;
}

/// A probe for something only counting knows: is the majority wide (margin >= 5) or narrow (margin 3)? Fitted on
/// the last block's output at [=] for 3/4 of the in-distribution prompts, its accuracy on the other 1/4. The tag
/// gives the answer's sign, never its margin.
double count_probe(const mechlens::transformer& model, const prompt_set& prompts) {
    std::vector<std::vector<std::int32_t>> rows;
    std::vector<int> wide;
    for (index_t b = 0; b < prompts.size(); ++b) {
        const auto* row = prompts.tokens.data() + b * prompt_length;
        rows.emplace_back(row, row + prompt_length);
        int a = 0;
        for (index_t t = 2; t < 2 + counted; ++t) a += row[t] == token_a ? 1 : 0;
        wide.push_back(std::abs(2 * a - static_cast<int>(counted)) >= 5 ? 1 : 0);
    }
    const mechlens::site out{mechlens::site_kind::resid_post, model.config().n_layers - 1};
    const auto collected = mechlens::collect_rows(model, rows, {out});
    const mechlens::tensor<float, 2>& x = collected[0].values;  // (prompts, d_model)
    const mechlens::probe_split split = mechlens::probe_split::make(prompts.size(), 0.25, 11);
    auto subset = [&](const std::vector<index_t>& which, std::vector<float>& values, std::vector<int>& labels) {
        for (index_t i : which) {
            for (index_t k = 0; k < x.extent(1); ++k) values.push_back(x(i, k));
            labels.push_back(wide[static_cast<std::size_t>(i)]);
        }
        return mechlens::tensor_view<const float, 2>(values.data(), {static_cast<index_t>(which.size()), x.extent(1)});
    };
    std::vector<float> fit_x, test_x;
    std::vector<int> fit_y, test_y;
    const auto fit = subset(split.train, fit_x, fit_y);
    const auto test = subset(split.held_out, test_x, test_y);
    mechlens::probe_options options;
    options.l2 = 1e-2;
    return mechlens::evaluate_probe(mechlens::fit_logistic_probe(fit, fit_y, options), test, test_y).accuracy;
}

/// The tag direction: mean residual stream at the tag position with tag_a minus with tag_b (in-distribution).
std::vector<float> tag_direction(const mechlens::transformer& model, const prompt_set& prompts) {
    std::vector<std::vector<std::int32_t>> with_a, with_b;
    for (index_t b = 0; b < prompts.size(); ++b) {
        const auto* row = prompts.tokens.data() + b * prompt_length;
        (row[tag_position] == tag_a ? with_a : with_b).emplace_back(row, row + prompt_length);
    }
    const mechlens::site resid{mechlens::site_kind::resid_pre, 0};
    const auto a = mechlens::collect_rows(model, with_a, {resid}, tag_position);
    const auto b = mechlens::collect_rows(model, with_b, {resid}, tag_position);
    const mechlens::contrastive_direction d =
        mechlens::find_contrastive_direction(a[0].values.view(), b[0].values.view());
    return std::vector<float>(d.direction.begin(), d.direction.end());
}

std::string percent(double x) { return mechlens::format_fixed(100.0 * x, 1) + " %"; }

/// The site the SAE reads: the residual stream between the two blocks.
constexpr const char* sae_site = "blocks.0.hook_resid_post";

/// Where a feature fires most, in the task's words: the mean activation over the prompts of each kind of position
/// (BOS, each tag at position 1, a counted A, a counted B, [=]); returns the kind with the largest mean.
std::string where_it_fires(mechlens::tensor_view<const float, 3> acts, const prompt_set& prompts, index_t feature,
                           bool* on_a_tag = nullptr) {
    const char* kinds[] = {"[BOS]", "tag_A at position 1", "tag_B at position 1", "a counted A", "a counted B", "[=]"};
    double sum[6] = {}, count[6] = {};
    for (index_t b = 0; b < prompts.size(); ++b)
        for (index_t t = 0; t < prompt_length; ++t) {
            const std::int32_t token = prompts.tokens[static_cast<std::size_t>(b * prompt_length + t)];
            const int kind = t == 0                 ? 0
                             : t == tag_position    ? (token == tag_a ? 1 : 2)
                             : t == answer_position ? 5
                                                    : (token == token_a ? 3 : 4);
            sum[kind] += static_cast<double>(acts(b, t, feature));
            count[kind] += 1.0;
        }
    int best = 0;
    for (int k = 1; k < 6; ++k)
        if (sum[k] / std::max(count[k], 1.0) > sum[best] / std::max(count[best], 1.0)) best = k;
    if (on_a_tag != nullptr) *on_a_tag = best == 1 || best == 2;
    return std::string(kinds[best]) + ", mean " + mechlens::format_fixed(sum[best] / std::max(count[best], 1.0), 2);
}

/// The diagnosis through SAE features: a TopK SAE (64 features, 4 active per token) is trained on the residual
/// stream between the blocks at every position of `training` (in-distribution prompts), spliced in with its error
/// term (the model's outputs stay as they were), and integrated gradients over its features attribute the logit
/// difference on `prompts` to features at each position.
feature_evidence sae_features(const mechlens::transformer& model, const prompt_set& training, const prompt_set& prompts,
                              std::uint64_t seed) {
    const mechlens::model_config& c = model.config();
    const mechlens::site host = mechlens::site_from_name(sae_site, c);
    mechlens::caching_hooks<> cache(mechlens::cache_filter().sites({host}));
    (void)mechlens::forward_logits(model, training.view(), cache);
    std::vector<float> rows = std::move(cache.take().at(host).values);  // (prompts * pos, d_model)

    mechlens::sae_trainer_options training_options;
    training_options.sae.architecture = mechlens::sae_architecture::topk;
    training_options.sae.k = 4;
    training_options.d_sae = 64;
    training_options.batch_size = 512;
    training_options.tokens_total = 400 * training_options.batch_size;
    training_options.lr = 4e-3;
    training_options.lr_decay_steps = 80;
    training_options.seed = seed;
    training_options.metadata.hook_name = sae_site;
    const index_t d_sae = training_options.d_sae;
    mechlens::sae_trainer trainer(training_options, c.d_model);
    mechlens::in_memory_batches batches(std::move(rows), {}, c.d_model);
    trainer.train(batches);
    const mechlens::saelens_sae sae = trainer.saelens();

    mechlens::dynamic_hooks hooks(c);
    (void)hooks.splice(sae_site, std::make_shared<const mechlens::sae_splice>(sae.weights, sae.options));
    const mechlens::site acts_site = *mechlens::parse_site(std::string(sae_site) + ".hook_sae_acts_post");
    feature_evidence out;

    // How well it reconstructs the prompts' rows (mechlens::evaluate_sae, as `mechlens sae eval` reports it).
    const mechlens::sae_eval_result evaluation =
        mechlens::evaluate_sae(model, sae_site, sae.weights, sae.options, prompts.view(), {});
    out.explained_variance = evaluation.explained_variance;
    out.l0 = evaluation.l0;
    // The features' activations on the prompts.
    std::vector<float> acts;  // (prompts, pos, d_sae)
    {
        auto copy = hooks.scoped(acts_site, [&acts](const mechlens::site&, mechlens::activation_view v,
                                                    const mechlens::hook_context&) {
            const auto x = v.as<3>();  // (prompts, pos, d_sae)
            acts.assign(x.data(), x.data() + x.size());
        });
        (void)mechlens::forward_logits(model, prompts.view(), hooks);
    }

    // Integrated gradients over the features (from all features off).
    const auto ig = mechlens::integrated_gradients(model, prompts.view(), logit_difference(prompts), acts_site,
                                                   mechlens::ig_baseline::zeros(), {}, &hooks);

    // The features with the most |attribution| (summed over prompts and positions), and where each fires.
    std::vector<double> per_feature(static_cast<std::size_t>(d_sae), 0.0);
    double all = 0.0;
    for (index_t b = 0; b < prompts.size(); ++b)
        for (index_t f = 0; f < d_sae; ++f) {
            per_feature[static_cast<std::size_t>(f)] += std::abs(ig.per_channel(b, f));
            all += std::abs(ig.per_channel(b, f));
        }
    std::vector<index_t> order(static_cast<std::size_t>(d_sae));
    for (index_t f = 0; f < d_sae; ++f) order[static_cast<std::size_t>(f)] = f;
    std::stable_sort(order.begin(), order.end(), [&](index_t x, index_t y) {
        return per_feature[static_cast<std::size_t>(x)] > per_feature[static_cast<std::size_t>(y)];
    });
    const mechlens::tensor_view<const float, 3> acts_view(acts.data(), {prompts.size(), prompt_length, d_sae});
    for (index_t f = 0; f < d_sae; ++f) {
        bool on_a_tag = false;
        (void)where_it_fires(acts_view, prompts, f, &on_a_tag);
        if (!on_a_tag || per_feature[static_cast<std::size_t>(f)] == 0.0) continue;
        out.tag_features += 1;
        out.tag_feature_share += per_feature[static_cast<std::size_t>(f)] / all;
    }
    for (std::size_t i = 0; i < 3; ++i) {
        const index_t f = order[i];
        out.top_features += (i == 0 ? "" : "; ") + std::string("#") + std::to_string(f) + " " +
                            percent(per_feature[static_cast<std::size_t>(f)] / all) + " (fires most on " +
                            where_it_fires(acts_view, prompts, f) + ")";
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    const options opt = parse(argc, argv);
    const auto started = std::chrono::steady_clock::now();
    fs::create_directories(opt.out);
    std::printf("Lesson 08: learned or cheated? (seed %llu, %lld training steps per model)\n\n",
                static_cast<unsigned long long>(opt.seed), static_cast<long long>(opt.steps));

    // 1. Grow two models that differ only in their training data's tag.
    std::vector<patient> patients;
    patients.push_back(grow("model 1 (tag named the answer in training)", tag_rule::names_answer, opt));
    patients.push_back(grow("model 2 (tag was a coin flip in training)", tag_rule::coin_flip, opt));
    const prompt_set in_distribution = make_prompts(400, tag_rule::names_answer, opt.seed * 7 + 3);
    const prompt_set flipped = make_prompts(400, tag_rule::against_answer, opt.seed * 7 + 4);
    const prompt_set sae_training = make_prompts(2000, tag_rule::names_answer, opt.seed * 7 + 5);

    std::printf("1. From the outside (accuracy on 400 in-distribution prompts: the tag names the answer)\n");
    for (patient& p : patients) {
        const mechlens::transformer model(mechlens::loaded_model{p.parameters.config(), p.parameters.weights()});
        p.in_distribution = evaluate(model, in_distribution);
        std::printf("   %-45s %s  (final training loss %.3f)\n", p.name.c_str(),
                    percent(p.in_distribution.accuracy).c_str(), p.losses.back());
    }

    // 2. Diagnose from the inside, with in-distribution prompts only.
    std::printf("\n2. From the inside (in-distribution prompts only)\n");
    for (patient& p : patients) {
        const mechlens::transformer model(mechlens::loaded_model{p.parameters.config(), p.parameters.weights()});
        attribute(p, model, in_distribution);
        p.patched_away = patch_tag(model, in_distribution);
        p.tag_direction = tag_direction(model, in_distribution);
        p.count_probe = count_probe(model, in_distribution);
        p.features = sae_features(model, sae_training, in_distribution, opt.seed);
        const double counted_share =
            (1.0 - p.tag_share - p.attribution[0] - p.attribution[static_cast<std::size_t>(answer_position)]) /
            static_cast<double>(counted);
        p.cheated = p.patched_away > 0.5 && p.tag_share > 2.0 * counted_share;
        std::printf("   %s\n", p.name.c_str());
        std::printf(
            "     share of |integrated gradients| at the tag position: %s (a counted position: %s on average)\n",
            percent(p.tag_share).c_str(), percent(counted_share).c_str());
        std::printf(
            "     patching the tag's residual stream from a prompt with the other answer removes %s of the "
            "logit difference\n",
            percent(p.patched_away).c_str());
        std::printf("     a probe for a wide majority (margin >= 5) at [=], last block: %s held-out accuracy\n",
                    percent(p.count_probe).c_str());
        const feature_evidence& f = p.features;
        std::printf("     SAE features at %s (TopK, 64 features, L0 %.1f, %s of the variance explained):\n", sae_site,
                    f.l0, percent(f.explained_variance).c_str());
        std::printf("       the %lld features that fire most on a tag at position 1 carry %s of the features' "
                    "attribution\n",
                    static_cast<long long>(f.tag_features), percent(f.tag_feature_share).c_str());
        std::printf("       the features with the most attribution: %s\n", f.top_features.c_str());
        std::printf("     verdict: %s\n", p.cheated ? "CHEATED: it reads the answer off the tag"
                                                    : "LEARNED: it counts; the tag does not matter");
    }

    // 3. Confirm out of distribution.
    std::printf("\n3. Confirmation out of distribution (400 prompts with the tag against the answer)\n");
    for (patient& p : patients) {
        const mechlens::transformer model(mechlens::loaded_model{p.parameters.config(), p.parameters.weights()});
        p.tag_flipped = evaluate(model, flipped);
        std::printf("   %-45s %s (in distribution %s)\n", p.name.c_str(), percent(p.tag_flipped.accuracy).c_str(),
                    percent(p.in_distribution.accuracy).c_str());
    }

    // 4. Treat: ablate the tag direction everywhere (run time), and bake it into the weights.
    std::printf("\n4. Treatment: the tag direction ablated from every block input, attention and MLP output\n");
    double baked_gap = 0.0;
    for (patient& p : patients) {
        const mechlens::model_config& c = p.parameters.config();
        const mechlens::transformer model(mechlens::loaded_model{c, p.parameters.weights()});
        mechlens::direction_ablation_hooks ablate(p.tag_direction, c.d_model, c.n_layers);
        p.treated_in_distribution = evaluate(model, in_distribution, ablate);
        p.treated_tag_flipped = evaluate(model, flipped, ablate);
        std::printf("   %-45s in distribution %s -> %s, tag against the answer %s -> %s\n", p.name.c_str(),
                    percent(p.in_distribution.accuracy).c_str(), percent(p.treated_in_distribution.accuracy).c_str(),
                    percent(p.tag_flipped.accuracy).c_str(), percent(p.treated_tag_flipped.accuracy).c_str());
        if (!p.cheated) continue;
        const mechlens::model_parameters treated = mechlens::orthogonalize_weights(p.parameters, p.tag_direction);
        const fs::path file = opt.out / "mechlens_treated_model.safetensors";
        mechlens::save_checkpoint(file, treated);
        const mechlens::transformer baked(mechlens::load_model(file));
        const auto runtime = mechlens::forward_logits(model, in_distribution.view(), ablate);
        const auto weights = mechlens::forward_logits(baked, in_distribution.view());
        for (std::size_t i = 0; i < static_cast<std::size_t>(runtime.view().size()); ++i)
            baked_gap = std::max(baked_gap, static_cast<double>(std::abs(runtime.data()[i] - weights.data()[i])));
        std::printf("   the cheater's treated weights: %s (logits within %.1e of the run-time treatment)\n",
                    file.string().c_str(), baked_gap);
    }

    // The report.
    mechlens::html_report report("mechlens lesson 08: learned or cheated?");
    report.paragraph(
        "Two 2-layer transformers (d_model 32, 4 heads, an MLP, learned positions) were grown from the same initial "
        "weights on the same task: after [BOS] [tag] x_1 .. x_15 [=], say whether A or B occurs more often. In model "
        "1's training data the tag named the answer; in model 2's it was a coin flip.");
    std::vector<double> steps(patients[0].losses.size());
    for (std::size_t i = 0; i < steps.size(); ++i) steps[i] = static_cast<double>(i);
    report.line_chart({{"model 1 (shortcut)", steps, patients[0].losses, "#d62728", false},
                       {"model 2 (no shortcut)", steps, patients[1].losses, "#1f77b4", false}},
                      {.title = "Training loss", .x_label = "step", .y_label = "cross-entropy of the answer"});
    report.heading("From the inside");
    std::vector<double> positions(static_cast<std::size_t>(prompt_length));
    for (std::size_t t = 0; t < positions.size(); ++t) positions[t] = static_cast<double>(t);
    report.line_chart({{"model 1 (shortcut)", positions, patients[0].attribution, "#d62728", false},
                       {"model 2 (no shortcut)", positions, patients[1].attribution, "#1f77b4", false}},
                      {.title = "Share of |integrated gradients| per position (position 1 is the tag)",
                       .x_label = "position",
                       .y_label = "share"});
    std::vector<std::vector<std::string>> rows;
    for (const patient& p : patients)
        rows.push_back({p.name, percent(p.in_distribution.accuracy), percent(p.tag_share), percent(p.patched_away),
                        percent(p.count_probe), percent(p.features.tag_feature_share),
                        p.cheated ? "cheated" : "learned", percent(p.tag_flipped.accuracy),
                        percent(p.treated_in_distribution.accuracy), percent(p.treated_tag_flipped.accuracy)});
    report.table({"model", "in-distribution accuracy", "attribution at the tag (integrated gradients)",
                  "logit difference lost by patching the tag", "probe: wide majority (held out)",
                  "SAE: attribution carried by the tag features", "verdict",
                  "accuracy, tag against the answer", "treated: in distribution", "treated: tag against the answer"},
                 rows);
    report.paragraph(
        "The verdict uses the internals only: a model cheated when patching the tag removes more than half "
        "of its logit difference and the tag carries more than twice the attribution of an average "
        "counted position. The "
        "out-of-distribution test (the tag against the answer) came afterwards, as a check. The "
        "treatment removes the tag direction (the difference of the two tags' residual streams at "
        "position 1) from everything the model writes into its residual stream.");
    report.heading("Through SAE features");
    for (const patient& p : patients)
        report.paragraph(p.name + ": a TopK SAE (64 features, L0 " + mechlens::format_fixed(p.features.l0, 1) + ", " +
                         percent(p.features.explained_variance) + " of the variance explained) at " + sae_site +
                         ". The " + std::to_string(p.features.tag_features) +
                         " features that fire most on a tag at position 1 carry " +
                         percent(p.features.tag_feature_share) +
                         " of the |integrated gradients| over the features. The features with the most attribution: " +
                         p.features.top_features + ".");
    const fs::path report_path = opt.out / "mechlens_medicine_report.html";
    report.save(report_path);

    // The lesson's claims.
    const patient& cheater = patients[0];
    const patient& learner = patients[1];
    std::vector<std::string> failures;
    auto claim = [&](bool holds, const std::string& what) {
        if (!holds) failures.push_back(what);
    };
    claim(cheater.in_distribution.accuracy > 0.95 && learner.in_distribution.accuracy > 0.95,
          "both models answer the in-distribution test well");
    for (const patient& p : patients) {
        // The internals' verdict is what the out-of-distribution test then shows.
        const bool follows_tag = p.tag_flipped.accuracy < p.in_distribution.accuracy - 0.2;
        claim(p.cheated == follows_tag, p.name + ": the verdict from the internals agrees with the tag-flipped test");
        if (p.cheated)
            claim(std::abs(p.treated_in_distribution.accuracy - p.treated_tag_flipped.accuracy) < 0.1,
                  p.name + ": treated, it no longer depends on the tag");
        else
            claim(p.treated_in_distribution.accuracy > p.in_distribution.accuracy - 0.05,
                  p.name + ": the treatment leaves a model that counts as it was");
    }
    claim(!learner.cheated, "the model whose tag was a coin flip does not read it");
    for (const patient& p : patients)
        claim(p.features.explained_variance > 0.9, p.name + ": the SAE explains most of the variance at its site");
    claim(learner.features.tag_feature_share < 0.15,
          "little of the coin-flip model's answer flows through the SAE's tag features");
    claim(!cheater.cheated || cheater.features.tag_feature_share > learner.features.tag_feature_share,
          "more of the cheater's answer flows through the SAE's tag features than the learner's");
    claim(!cheater.cheated || baked_gap < 1e-4, "the treated weights compute the run-time treatment");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("\nWrote %s (%.1f s in all).\n", report_path.string().c_str(), seconds);
    if (!failures.empty()) {
        for (const std::string& f : failures) std::printf("Claim not shown: %s\n", f.c_str());
        return 1;
    }
    std::printf("The diagnosis holds: %s.\n", cheater.cheated ? "model 1 took the shortcut and model 2 learned to count"
                                                              : "this time both models learned to count (model 1 "
                                                                "did not take the shortcut it was offered)");
    return 0;
}
