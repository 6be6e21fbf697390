// libFuzzer harness for the llama2.c legacy checkpoint loader (.bin): map, parse, build the weight views and
// read every weight. format_error is the documented rejection; anything else escaping is a bug.
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static mechlens_fuzz::memory_file file;
    const std::string& path = file.write(data, size);
    try {
        const mechlens::loaded_model m = mechlens::load_llama2c(path);
        mechlens_fuzz::keep(mechlens_fuzz::touch_model(m));
        // The sniffing entry point must agree: not GGUF-magic inputs go to the same loader.
        if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) {
            const mechlens::loaded_model again = mechlens::load_model(path);
            if (again.config.d_model != m.config.d_model || again.weights.layers.size() != m.weights.layers.size())
                std::abort();
        }
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
