// mechlens's logits of a GGUF file with llama.cpp's rounding of activations emulated by hooks: the input of every
// matrix rounded as llama.cpp's CPU dot products round it (to Q8_0 blocks for the quantised matrices; the MLP's
// hidden activation to F16 when the down projection is F16). Shows that what remains between the two tools is that
// rounding. A LLaMA-style GGUF; the inputs of Q, K, V, gate, up and the unembedding are the norms' outputs times
// their gain (hook_normalized is before the gain, so the gain is applied, the row rounded, and the gain divided out).
// Built by compare_logits.sh; not part of mechlens's build.
//   emulated_logits MODEL.gguf OUT.f32 TOKEN...
#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

std::size_t element_count(const mechlens::activation_view& x) {
    std::size_t n = 1;
    for (std::size_t r = 0; r < x.rank; ++r) n *= static_cast<std::size_t>(x.shape[r]);
    return n;
}

void round_to_q8_0(float* values, std::size_t n) {
    std::vector<std::byte> blocks(n / 32 * 34);
    mechlens::quantize_q8_0(values, n, blocks.data());
    mechlens::dequantize_ggml(mechlens::ggml_type::q8_0, blocks.data(), n, values);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s MODEL.gguf OUT.f32 TOKEN...\n", argv[0]);
        return 2;
    }
    std::vector<std::int32_t> tokens;
    for (int i = 3; i < argc; ++i) tokens.push_back(static_cast<std::int32_t>(std::atoi(argv[i])));
    const mechlens::gguf_file file(argv[1]);
    const bool down_is_f16 = file.tensor("blk.0.ffn_down.weight").type == mechlens::ggml_type::f16;
    const mechlens::transformer model(mechlens::load_model(argv[1]));
    const mechlens::model_weights& w = model.weights();
    mechlens::dynamic_hooks hooks(model.config());
    hooks.add("blocks.*.ln1.hook_normalized,blocks.*.ln2.hook_normalized,ln_final.hook_normalized",
              [&](const mechlens::site& s, mechlens::activation_view x, const mechlens::hook_context&) {
                  const float* gain = s.kind == mechlens::site_kind::ln_final_normalized ? w.final_norm.data()
                                      : s.kind == mechlens::site_kind::ln1_normalized
                                          ? w.layers[static_cast<std::size_t>(s.layer)].attn_norm.data()
                                          : w.layers[static_cast<std::size_t>(s.layer)].mlp_norm.data();
                  const std::size_t n = element_count(x), d = static_cast<std::size_t>(x.shape[x.rank - 1]);
                  for (std::size_t i = 0; i < n; ++i) x.data[i] *= gain[i % d];
                  round_to_q8_0(x.data, n);
                  for (std::size_t i = 0; i < n; ++i) x.data[i] /= gain[i % d];
              });
    hooks.add("blocks.*.attn.hook_z", [](const mechlens::site&, mechlens::activation_view x,
                                         const mechlens::hook_context&) { round_to_q8_0(x.data, element_count(x)); });
    hooks.add("blocks.*.mlp.hook_post", [&](const mechlens::site&, mechlens::activation_view x,
                                            const mechlens::hook_context&) {
        const std::size_t n = element_count(x);
        if (!down_is_f16) return round_to_q8_0(x.data, n);
        for (std::size_t i = 0; i < n; ++i)
            x.data[i] = mechlens::detail::half_to_float(mechlens::detail::float_to_half(x.data[i]));
    });
    const mechlens::tensor_view<const std::int32_t, 2> batch(tokens.data(),
                                                             {1, static_cast<mechlens::index_t>(tokens.size())});
    const auto logits = mechlens::forward_logits(model, batch, hooks);
    FILE* out = std::fopen(argv[2], "wb");
    if (out == nullptr) return 1;
    std::fwrite(logits.data(), sizeof(float), static_cast<std::size_t>(logits.size()), out);
    std::fclose(out);
    return 0;
}
