// Lesson 02: write your own hook policy in a few lines.
//
// A hook policy is any type with two members:
//   static constexpr bool wants(site_kind)            asked at compile time: which sites should fire at all?
//   void on_activation(const site&, view, context)    called with a mutable view of each wanted activation
// Sites nobody wants cost nothing. This lesson writes one policy that only reads (the size of the residual stream
// after every block) and one that writes (it clamps one MLP neuron), then runs them together with compose().
//
// The model is stories260K: set MECHLENS_MODELS to the folder holding stories260K/ (default: ../shared/models).
// Expected output: residual norms that grow block after block (4.0 to 12.7), and a greedy story whose "little girl
// named Lily" becomes "a little boy named Tim" once neuron 40 of block 2's MLP is clamped.

#include <mechlens/mechlens.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using mechlens::index_t;

// Reads: the L2 norm of the residual stream at the last position, after each block.
struct residual_norms {
    std::vector<double> norm_by_layer;

    static constexpr bool wants(mechlens::site_kind kind) { return kind == mechlens::site_kind::resid_post; }

    template <std::size_t Rank>
    void on_activation(const mechlens::site& s, mechlens::tensor_view<float, Rank> x, const mechlens::hook_context&) {
        if constexpr (Rank == 3) {  // resid_post is (batch, pos, d_model)
            double sum = 0.0;
            for (index_t i = 0; i < x.extent(2); ++i) {
                const double value = static_cast<double>(x(0, x.extent(1) - 1, i));
                sum += value * value;
            }
            norm_by_layer.resize(static_cast<std::size_t>(s.layer + 1));
            norm_by_layer[static_cast<std::size_t>(s.layer)] = std::sqrt(sum);
        }
    }
};
static_assert(mechlens::hook_policy<residual_norms>);

// Writes: pins one neuron of one MLP (after its activation function) to a fixed value at every position.
struct clamp_neuron {
    index_t layer, neuron;
    float value;

    static constexpr bool wants(mechlens::site_kind kind) { return kind == mechlens::site_kind::mlp_post; }

    template <std::size_t Rank>
    void on_activation(const mechlens::site& s, mechlens::tensor_view<float, Rank> x, const mechlens::hook_context&) {
        if constexpr (Rank == 3) {  // mlp.hook_post is (batch, pos, d_mlp)
            if (s.layer != layer) return;
            for (index_t b = 0; b < x.extent(0); ++b)
                for (index_t p = 0; p < x.extent(1); ++p) x(b, p, neuron) = value;
        }
    }
};
static_assert(mechlens::hook_policy<clamp_neuron>);

int main() {
    const char* env = std::getenv("MECHLENS_MODELS");
    const fs::path models = env && *env ? fs::path(env) : fs::path(MECHLENS_DEFAULT_MODELS);
    const fs::path model_path = models / "stories260K" / "stories260K.bin";
    const fs::path tokenizer_path = models / "stories260K" / "tok512.bin";
    if (!fs::exists(model_path) || !fs::exists(tokenizer_path)) {
        std::printf(
            "This lesson needs stories260K, which is not in %s.\n"
            "Get stories260K.bin and tok512.bin from Karpathy's tinyllamas release "
            "(huggingface.co/karpathy/tinyllamas,\n"
            "folder stories260K), put them in <dir>/stories260K/, and run again with MECHLENS_MODELS=<dir>.\n",
            models.string().c_str());
        return 0;
    }
    const mechlens::transformer model(mechlens::load_model(model_path));
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(tokenizer_path);
    const std::string prompt = "Once upon a time";
    const auto tokens = tokenizer.encode(prompt);
    const mechlens::tensor_view<const std::int32_t, 2> batch(tokens.data(), {1, static_cast<index_t>(tokens.size())});

    // 1. A reading policy: pass it by reference, read it afterwards. The logits are those of the plain model.
    residual_norms norms;
    (void)mechlens::forward_logits(model, batch, norms);
    std::printf("norm of the residual stream at the last position of \"%s\":\n", prompt.c_str());
    for (std::size_t layer = 0; layer < norms.norm_by_layer.size(); ++layer)
        std::printf("  after block %zu: %7.3f\n", layer, norms.norm_by_layer[layer]);

    // 2. A writing policy changes what the rest of the forward pass sees, here during every step of generation.
    mechlens::generation_options options;
    options.max_new_tokens = 30;
    auto story = [&](auto&& policy) {
        std::string text = prompt;
        std::int32_t previous = tokens.back();
        mechlens::generate(
            model, tokens, options,
            [&](std::int32_t id) {
                text += tokenizer.decode_piece(previous, id);
                previous = id;
            },
            policy);
        return text;
    };
    const clamp_neuron clamp{.layer = 2, .neuron = 40, .value = 6.0f};
    std::printf("\ngreedy story:\n  %s\n", story(mechlens::no_hooks{}).c_str());
    std::printf("with neuron %td of block %td's MLP clamped to %.1f:\n  %s\n", clamp.neuron, clamp.layer,
                static_cast<double>(clamp.value), story(clamp_neuron(clamp)).c_str());

    // 3. compose() runs several policies in order: clamp first, then measure what the clamp did to the stream.
    residual_norms clamped_norms;
    (void)mechlens::forward_logits(model, batch, mechlens::compose(clamp_neuron(clamp), clamped_norms));
    std::printf("\nresidual norm after the last block: %.3f plain, %.3f with the clamp\n", norms.norm_by_layer.back(),
                clamped_norms.norm_by_layer.back());
    return 0;
}
