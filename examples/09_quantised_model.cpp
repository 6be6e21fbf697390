// Lesson 09: a quantised GGUF model, interpreted as it is stored.
//
// Most people hold llama.cpp's quantised files (Q8_0, Q4_K_M), not float checkpoints. mechlens multiplies by their
// blocks directly: a decode step dequantises in registers, a prefill decodes blocks of rows into a buffer that stays
// in cache, and the embedding rows are decoded as they are looked up. Nothing is copied to float until a pass reads
// weights as floats, and then only the matrices it reads. The results have the bits of the same model on the
// decoded floats, so every hook, cache and patch works as on an F32 model.
//
// This lesson writes stories260K as Q8_0 (`mechlens quantize` does the same), then:
//   1. generates from both files and compares the stories;
//   2. caches every hook site of the quantised model and measures what Q8_0's rounding did to the residual stream;
//   3. counts the floats decoded along the way: none for generation, caching and patching, W_U alone for the logit
//      lens, all of them when something asks transformer::weights().
// It needs stories260K (set MECHLENS_MODELS to the folder holding stories260K/; default ../shared/models).
//
//   build/examples/example_09_quantised_model [--out DIR]

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

/// Floats of the quantised matrices decoded so far, in kB.
double decoded_kb(const mechlens::transformer& model) {
    return static_cast<double>(model.stored_weights().on_demand->decoded_bytes()) / 1e3;
}

}  // namespace

int main(int argc, char** argv) {
    fs::path out_dir = ".";
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--out") out_dir = argv[++i];
    const char* env = std::getenv("MECHLENS_MODELS");
    const fs::path models = env && *env ? fs::path(env) : fs::path(MECHLENS_DEFAULT_MODELS);
    const fs::path f32_path = models / "stories260K" / "stories260K.gguf";
    const fs::path tokenizer_path = models / "stories260K" / "tok512.bin";
    if (!fs::exists(f32_path) || !fs::exists(tokenizer_path)) {
        std::printf("This lesson needs stories260K (stories260K.gguf and tok512.bin), which is not in %s.\n"
                    "Put the stories260K files in <dir>/stories260K/ and set MECHLENS_MODELS=<dir>.\n",
                    (models / "stories260K").string().c_str());
        return 0;
    }
    fs::create_directories(out_dir);
    const fs::path q8_path = out_dir / "stories260K_q8_0.gguf";
    const mechlens::gguf_quantize_report report = mechlens::quantize_gguf(f32_path, q8_path);
    std::printf("Wrote %s: %zu tensors, matrices as Q8_0 (as llama-quantize writes them)\n\n",
                q8_path.string().c_str(), report.tensors.size());

    const mechlens::transformer exact(mechlens::load_model(f32_path));
    const mechlens::transformer quantised(mechlens::load_model(q8_path));
    const mechlens::decoded_on_demand& on_demand = *quantised.stored_weights().on_demand;
    std::printf("The Q8_0 model keeps %zu matrices as blocks; their floats (%.1f kB) are decoded only when read.\n",
                on_demand.size(), static_cast<double>(on_demand.reserved_bytes()) / 1e3);

    // 1. The same story from both files: Q8_0's rounding is small against the gaps between the top logits.
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(tokenizer_path);
    const std::vector<std::int32_t> prompt = tokenizer.encode("Once upon a time");
    mechlens::generation_options greedy;
    greedy.max_new_tokens = 30;
    const auto tell = [&](const mechlens::transformer& model, const char* name) {
        std::vector<std::int32_t> story;
        mechlens::generate(model, prompt, greedy, [&](std::int32_t id) { story.push_back(id); });
        std::string text = "Once upon a time";
        std::int32_t previous = prompt.back();
        for (const std::int32_t id : story) text += tokenizer.decode_piece(previous, id), previous = id;
        std::printf("%s: %s\n", name, text.c_str());
        return story;
    };
    const auto exact_story = tell(exact, "F32 ");
    const auto quantised_story = tell(quantised, "Q8_0");
    const std::size_t decoded_generating = on_demand.decoded_bytes();
    std::printf("The stories are %s. Floats decoded for generating: %.1f kB\n\n",
                exact_story == quantised_story ? "the same" : "different", decoded_kb(quantised));

    // 2. Every hook site cached on both models over the story: where does Q8_0's rounding show?
    std::vector<std::int32_t> sequence = prompt;
    sequence.insert(sequence.end(), exact_story.begin(), exact_story.end());
    const mechlens::tensor_view<const std::int32_t, 2> batch(sequence.data(),
                                                             {1, static_cast<mechlens::index_t>(sequence.size())});
    mechlens::caching_hooks<> exact_hooks, quantised_hooks;
    const auto exact_logits = mechlens::forward_logits(exact, batch, exact_hooks);
    const auto quantised_logits = mechlens::forward_logits(quantised, batch, quantised_hooks);
    const mechlens::activation_cache exact_cache = exact_hooks.take(), quantised_cache = quantised_hooks.take();
    std::printf("Relative rms difference Q8_0 vs F32 over %zu positions, along the residual stream:\n",
                sequence.size());
    for (mechlens::index_t layer = 0; layer < exact.config().n_layers; ++layer) {
        const mechlens::site where{mechlens::site_kind::resid_post, layer};
        const auto& a = exact_cache.at(where).values;
        const auto& b = quantised_cache.at(where).values;
        double difference = 0.0, norm = 0.0;
        for (std::size_t i = 0; i < a.size(); ++i) {
            const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
            difference += d * d;
            norm += static_cast<double>(a[i]) * static_cast<double>(a[i]);
        }
        std::printf("  %-26s %.4f\n", mechlens::to_string(where).c_str(), std::sqrt(difference / norm));
    }
    double worst = 0.0;
    for (mechlens::index_t i = 0; i < exact_logits.size(); ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(exact_logits.data()[i]) -
                                          static_cast<double>(quantised_logits.data()[i])));
    const std::size_t decoded_caching = on_demand.decoded_bytes();
    std::printf("Largest logit difference: %.3f. Floats decoded for caching %zu sites: %.1f kB\n\n",
                worst, quantised_cache.size(), decoded_kb(quantised));

    // 3. What reads weights as floats decodes them, and only what it reads.
    const auto resid = quantised_cache.at(mechlens::site{mechlens::site_kind::resid_post, 2}).view<3>();
    const auto lens = mechlens::unembed_residual(quantised, resid);  // (batch, pos, d_vocab): reads W_U
    std::printf("The logit lens at blocks.2.hook_resid_post read W_U as floats: %.1f kB decoded (%zu logits)\n",
                decoded_kb(quantised), static_cast<std::size_t>(lens.size()));
    const mechlens::model_config& c = quantised.config();
    const bool lens_decoded_w_u =
        on_demand.decoded_bytes() == static_cast<std::size_t>(c.vocab_out() * c.d_model) * sizeof(float);
    (void)quantised.weights();  // what a gradient pass or weight processing asks for: every matrix
    std::printf("After transformer::weights(): %.1f kB decoded, every quantised matrix\n", decoded_kb(quantised));
    const bool holds = exact_story == quantised_story && quantised_cache.size() == exact_cache.size() &&
                       decoded_generating == 0 && decoded_caching == 0 && lens_decoded_w_u &&
                       on_demand.decoded_bytes() == on_demand.reserved_bytes();
    std::printf("%s\n", holds ? "The lesson's claims hold." : "The lesson's claims do NOT hold.");
    return holds ? 0 : 1;
}
