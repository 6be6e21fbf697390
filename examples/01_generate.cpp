// Lesson 01: load a real pretrained model, tokenize a prompt, and let the model continue it.
//
// The model is Karpathy's stories260K (a 260K-parameter LLaMA trained on TinyStories). It lives outside this
// repository: set MECHLENS_MODELS to the folder holding stories260K/ (default: ../shared/models).
// Expected output: "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. ..."

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
    const char* env = std::getenv("MECHLENS_MODELS");
    const fs::path models = env && *env ? fs::path(env) : fs::path(MECHLENS_DEFAULT_MODELS);
    const fs::path model_path = models / "stories260K" / "stories260K.bin";
    const fs::path tokenizer_path = models / "stories260K" / "tok512.bin";
    if (!fs::exists(model_path) || !fs::exists(tokenizer_path)) {
        std::printf(
            "This lesson needs stories260K, which is not in %s.\n"
            "Get stories260K.bin and tok512.bin from Karpathy's tinyllamas release (huggingface.co/karpathy/tinyllamas,\n"
            "folder stories260K), put them in <dir>/stories260K/, and run again with MECHLENS_MODELS=<dir>.\n",
            models.string().c_str());
        return 0;
    }
    const std::string prompt = argc > 1 ? argv[1] : "Once upon a time";

    // 1. Load: the weights are memory-mapped, not copied.
    const mechlens::transformer model(mechlens::load_model(model_path));
    const mechlens::model_config& c = model.config();
    std::printf("stories260K: d_model %td, %td layers, %td heads (%td key/value heads), vocab %td\n", c.d_model,
                c.n_layers, c.n_heads, c.n_kv_heads, c.d_vocab);

    // 2. Tokenize: BOS, then score-driven BPE merges over the prompt.
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(tokenizer_path);
    const auto tokens = tokenizer.encode(prompt);
    std::printf("tokens:");
    for (auto id : tokens) std::printf(" %d", id);
    std::printf("\n\n");

    // 3. Generate greedily (temperature 0): the same text every time.
    auto print_continuation = [&](const mechlens::generation_options& options) {
        std::printf("%s", prompt.c_str());
        std::int32_t previous = tokens.back();
        mechlens::generate(model, tokens, options, [&](std::int32_t id) {
            std::printf("%s", tokenizer.decode_piece(previous, id).c_str());
            previous = id;
        });
        std::printf("\n\n");
    };
    mechlens::generation_options greedy;
    greedy.max_new_tokens = 40;
    std::printf("greedy:\n");
    print_continuation(greedy);

    // 4. Sample with temperature and nucleus (top-p): a different story per seed, the same story for the same seed.
    mechlens::generation_options sampled = greedy;
    sampled.max_new_tokens = 60;
    sampled.sampling = {.temperature = 0.8f, .top_p = 0.9f, .seed = 7};
    std::printf("sampled (temperature 0.8, top-p 0.9, seed 7):\n");
    print_continuation(sampled);
    return 0;
}
