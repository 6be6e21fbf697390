// TransformerLens's weight processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases): each step
// leaves the log-probabilities unchanged, does what it says to the weights, and direct logit attribution on the
// processed model still sums to the logit difference.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_weight_processing {

using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

namespace {

mechlens::model_config gpt2_config() {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 32;
    c.d_vocab = 23;
    c.n_ctx = 12;
    c.norm = mechlens::norm_kind::layer;
    c.positions = mechlens::positional_kind::learned;
    c.mlp = mechlens::mlp_kind::plain_gelu;
    c.linear_biases = true;
    return c;  // tied, as Hugging Face's GPT-2
}

/// Owned parameters with random weights (gains around 1, biases non-zero) for `c`.
mechlens::model_parameters random_parameters(const mechlens::model_config& c, std::uint64_t seed) {
    const mechlens::loaded_model loaded = mechlens::random_model(c, seed, 0.3f);
    mechlens::model_parameters p(c, loaded.weights);
    mechlens::random_generator rng(seed + 1);
    for (const mechlens::parameter_entry& e : p.layout())
        if (mechlens::traits_of(e.id).norm_gain)
            for (float& g : p.find(e.name)) g = 1.0f + 0.3f * (static_cast<float>(rng.uniform()) - 0.5f);
    return p;
}

/// log-softmax of every position's logits, in double.
std::vector<double> log_probs(const mechlens::model_parameters& p, const std::vector<std::int32_t>& ids) {
    const mechlens::transformer model(mechlens::loaded_model{p.config(), p.weights()});
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, static_cast<index_t>(ids.size())});
    const auto logits = mechlens::forward_logits(model, tokens);
    std::vector<double> out;
    const index_t vocab = p.config().vocab_out();
    for (index_t pos = 0; pos < logits.extent(1); ++pos) {
        double top = -1e300, sum = 0.0;
        for (index_t v = 0; v < vocab; ++v) top = std::max(top, static_cast<double>(logits(0, pos, v)));
        for (index_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits(0, pos, v)) - top);
        for (index_t v = 0; v < vocab; ++v) out.push_back(static_cast<double>(logits(0, pos, v)) - top - std::log(sum));
    }
    return out;
}

double max_gap(const std::vector<double>& a, const std::vector<double>& b) {
    double gap = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) gap = std::max(gap, std::abs(a[i] - b[i]));
    return gap;
}

}  // namespace

TEST_CASE("weight processing: every step keeps the log-probabilities and does what it says", "[processing]") {
    const std::vector<std::int32_t> ids{1, 5, 9, 2, 11, 3, 17, 22, 8};
    for (const bool classifier : {false, true}) {
        mechlens::model_config c = gpt2_config();
        if (classifier) {  // ReLU, bidirectional, 4 classes: a TransformerLens classifier
            c.mlp = mechlens::mlp_kind::plain_relu;
            c.attention = mechlens::attention_dir::bidirectional;
            c.d_vocab_out = 4;
            c.tied_unembed = false;
        }
        INFO("classifier " << classifier);
        mechlens::model_parameters p = random_parameters(c, 5);
        const std::vector<double> before = log_probs(p, ids);

        // Tied models must be untied first; untying changes nothing.
        if (c.tied_unembed) {
            CHECK_THROWS_WITH(mechlens::fold_layer_norms(p), Catch::Matchers::Contains("untie_unembedding"));
            p = mechlens::untie_unembedding(p);
            CHECK_FALSE(p.config().tied_unembed);
            CHECK(max_gap(log_probs(p, ids), before) == 0.0);
        }

        mechlens::fold_layer_norms(p);
        const double after_fold = max_gap(log_probs(p, ids), before);
        CAPTURE(after_fold);
        CHECK(after_fold <= 1e-5);
        for (const mechlens::parameter_entry& e : p.layout()) {
            const mechlens::parameter_traits& row = mechlens::traits_of(e.id);
            const bool gain = row.norm_gain, norm_bias = e.id == mechlens::parameter_id::attn_norm_bias ||
                                                         e.id == mechlens::parameter_id::mlp_norm_bias ||
                                                         e.id == mechlens::parameter_id::final_norm_bias;
            if (!gain && !norm_bias) continue;
            INFO(e.name);
            for (float v : p.find(e.name)) CHECK(v == (gain ? 1.0f : 0.0f));
        }
        // The reading weights are centred along the residual axis (TransformerLens's center_weights).
        double worst_row_mean = 0.0;
        for (const auto& layer : p.layers)
            for (index_t o = 0; o < layer.w_q.extent(0); ++o) {
                double mean = 0.0;
                for (index_t i = 0; i < c.d_model; ++i) mean += static_cast<double>(layer.w_q(o, i));
                worst_row_mean = std::max(worst_row_mean, std::abs(mean) / static_cast<double>(c.d_model));
            }
        CHECK(worst_row_mean <= 1e-6);

        mechlens::center_writing_weights(p);
        const double after_center = max_gap(log_probs(p, ids), before);
        CAPTURE(after_center);
        CHECK(after_center <= 1e-5);
        // Every write to the residual stream now has mean zero over d_model.
        {
            const mechlens::transformer model(mechlens::loaded_model{p.config(), p.weights()});
            mechlens::caching_hooks<> run;
            const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, static_cast<index_t>(ids.size())});
            (void)mechlens::forward_logits(model, tokens, run);
            double worst = 0.0;
            for (const char* name : {"hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"}) {
                const auto a = run.cache()[name].view<3>();
                for (index_t pos = 0; pos < a.extent(1); ++pos) {
                    double mean = 0.0;
                    for (index_t i = 0; i < a.extent(2); ++i) mean += static_cast<double>(a(0, pos, i));
                    worst = std::max(worst, std::abs(mean) / static_cast<double>(a.extent(2)));
                }
            }
            CHECK(worst <= 1e-6);
        }

        mechlens::center_unembed(p);
        CHECK(max_gap(log_probs(p, ids), before) <= 1e-5);
        double worst_column_mean = 0.0;
        for (index_t i = 0; i < c.d_model; ++i) {
            double mean = 0.0;
            for (index_t v = 0; v < c.vocab_out(); ++v) mean += static_cast<double>(p.unembed(v, i));
            worst_column_mean = std::max(worst_column_mean, std::abs(mean) / static_cast<double>(c.vocab_out()));
        }
        CHECK(worst_column_mean <= 1e-6);

        mechlens::fold_value_biases(p);
        CHECK(max_gap(log_probs(p, ids), before) <= 1e-5);
        for (const auto& layer : p.layers)
            for (index_t i = 0; i < layer.b_v.extent(0); ++i) CHECK(layer.b_v(i) == 0.0f);

        // Direct logit attribution on the processed model sums to its logit difference.
        const mechlens::transformer model(mechlens::loaded_model{p.config(), p.weights()});
        mechlens::caching_hooks<> run;
        const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, static_cast<index_t>(ids.size())});
        const auto logits = mechlens::forward_logits(model, tokens, run);
        const index_t last = static_cast<index_t>(ids.size()) - 1;
        const auto dla = mechlens::direct_logit_attribution(model, run.cache(), 0, last, 2, 1);
        const double difference = static_cast<double>(logits(0, last, 2)) - static_cast<double>(logits(0, last, 1));
        CAPTURE(dla.total, difference);
        CHECK(std::abs(dla.total - difference) <= 1e-5 * std::max(1.0, std::abs(difference)));
        WARN((classifier ? "classifier" : "GPT-2") << ": log-prob change after fold_ln " << after_fold
                                                 << ", after centring " << after_center << "; DLA total "
                                                 << dla.total << " vs logit difference " << difference);
    }
}

TEST_CASE("weight processing: refuses what would change the model", "[processing]") {
    mechlens::model_config rms = gpt2_config();
    rms.norm = mechlens::norm_kind::rms;
    rms.tied_unembed = false;
    mechlens::model_parameters p = random_parameters(rms, 9);
    const std::vector<std::int32_t> ids{1, 5, 9, 2};
    const std::vector<double> before = log_probs(p, ids);
    CHECK_THROWS_WITH(mechlens::center_writing_weights(p), Catch::Matchers::Contains("LayerNorm"));
    mechlens::fold_layer_norms(p);  // RMSNorm: only the gains fold (no centring)
    CHECK(max_gap(log_probs(p, ids), before) <= 1e-5);

    mechlens::model_config no_biases = gpt2_config();
    no_biases.linear_biases = false;
    no_biases.tied_unembed = false;
    mechlens::model_parameters q = random_parameters(no_biases, 9);
    CHECK_THROWS_WITH(mechlens::fold_layer_norms(q), Catch::Matchers::Contains("linear biases"));
    CHECK_THROWS_WITH(mechlens::fold_value_biases(q), Catch::Matchers::Contains("no linear biases"));
}

}  // namespace test_weight_processing
