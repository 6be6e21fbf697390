// libFuzzer harness for the safetensors reader (JSON header + F32 tensors) and the training-checkpoint readers
// built on it: parse from memory, check what came back, then interpret it as a model (what load_model does with a
// checkpoint) and as a checkpoint. format_error is the documented rejection; anything else escaping is a bug.
#include "fuzz_support.hpp"

#include <mechlens/train/checkpoint.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    mechlens::safetensors_file f;
    try {
        f = mechlens::parse_safetensors(reinterpret_cast<const std::byte*>(data), size, "fuzz.safetensors");
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
        return 0;
    }
    double sum = 0.0;
    for (const mechlens::safetensors_tensor& t : f.tensors) {
        std::size_t count = 1;
        for (const mechlens::index_t e : t.shape) {
            if (e < 0) std::abort();
            count *= static_cast<std::size_t>(e);
        }
        if (count != t.values.size()) std::abort();
        for (const float x : t.values) sum += static_cast<double>(x);
    }
    mechlens_fuzz::keep(sum);
    try {
        const mechlens::loaded_model m = mechlens::checkpoint_model_from_safetensors(f, "fuzz.safetensors");
        mechlens_fuzz::keep(mechlens_fuzz::touch_model(m));
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    try {
        const mechlens::checkpoint c = mechlens::checkpoint_from_safetensors(std::move(f), "fuzz.safetensors");
        mechlens_fuzz::keep(c.parameters.size());
        if (c.optimizer && (c.optimizer->m.size() != static_cast<std::size_t>(c.parameters.size()) ||
                            c.optimizer->v.size() != static_cast<std::size_t>(c.parameters.size())))
            std::abort();
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
