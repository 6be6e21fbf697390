// llama.cpp's logits at every position of a token list, through its C API, written as float32 (positions, vocab).
// Built by bench/peers/llama_cpp/compare_logits.sh against a llama.cpp build outside the repository; not part of
// mechlens's build. One thread; the KV cache in F32 when LLAMA_KV_F32 is set (llama.cpp's default is F16).
//   llama_logits MODEL.gguf OUT.f32 TOKEN...
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "llama.h"

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s MODEL.gguf OUT.f32 TOKEN...\n", argv[0]);
        return 2;
    }
    std::vector<llama_token> tokens;
    for (int i = 3; i < argc; ++i) tokens.push_back(static_cast<llama_token>(std::atoi(argv[i])));
    const auto n = static_cast<int>(tokens.size());
    llama_backend_init();
    llama_model* model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (model == nullptr) return 1;
    llama_context_params params = llama_context_default_params();
    params.n_ctx = params.n_batch = params.n_ubatch = static_cast<uint32_t>(n);
    params.n_threads = params.n_threads_batch = 1;
    if (std::getenv("LLAMA_KV_F32") != nullptr) params.type_k = params.type_v = GGML_TYPE_F32;
    llama_context* context = llama_init_from_model(model, params);
    if (context == nullptr) return 1;
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i] = tokens[static_cast<size_t>(i)];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(context, batch) != 0) return 1;
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE* out = std::fopen(argv[2], "wb");
    if (out == nullptr) return 1;
    for (int i = 0; i < n; ++i) std::fwrite(llama_get_logits_ith(context, i), sizeof(float), static_cast<size_t>(vocab), out);
    std::fclose(out);
    llama_batch_free(batch);
    llama_free(context);
    llama_model_free(model);
    return 0;
}
