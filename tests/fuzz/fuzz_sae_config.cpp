// libFuzzer harness for the SAELens folder reader (sae/saelens_format.hpp). The first byte picks what the rest is:
// even, a cfg.json for read_saelens_config; odd, a cfg.json and a sae_weights.safetensors (split at the first NUL
// byte) read as a folder by read_saelens_folder. format_error is the documented rejection; anything else escaping,
// or an accepted SAE that fails its own validation or does not round-trip through the writer's cfg.json, is a bug.
#include "fuzz_support.hpp"

#include <mechlens/sae/saelens_format.hpp>
#include <mechlens/sae/sparse_autoencoder.hpp>

#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace {

void check(const mechlens::saelens_sae& sae) {
    const auto& o = sae.options;
    if (sae.weights.d_in <= 0 || sae.weights.d_sae <= 0) std::abort();
    const bool top = o.architecture == mechlens::sae_architecture::topk ||
                     o.architecture == mechlens::sae_architecture::batchtopk;
    if (top && !(o.k > 0.0 && o.k <= static_cast<double>(sae.weights.d_sae))) std::abort();
    // What we read, we write back the same way.
    if (o.architecture != mechlens::sae_architecture::batchtopk) {
        const mechlens::saelens_sae again = mechlens::read_saelens_config(
            mechlens::parse_json(mechlens::saelens_config_text(sae), "cfg.json (rewritten)"));
        if (again.options.architecture != o.architecture || again.options.k != o.k ||
            again.options.apply_b_dec_to_input != o.apply_b_dec_to_input ||
            again.options.normalize_activations != o.normalize_activations ||
            again.metadata.hook_name != sae.metadata.hook_name ||
            again.metadata.hook_head_index != sae.metadata.hook_head_index ||
            again.weights.d_in != sae.weights.d_in || again.weights.d_sae != sae.weights.d_sae)
            std::abort();
    }
}

void config(std::string_view text) {
    check(mechlens::read_saelens_config(mechlens::parse_json(text, "cfg.json")));
}

void folder(std::string_view bytes) {
    static const std::filesystem::path dir = [] {
        const std::filesystem::path d = std::filesystem::temp_directory_path() / ("mechlens-fuzz-sae-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        return d;
    }();
    const std::size_t split = std::min(bytes.find('\0'), bytes.size());
    std::ofstream(dir / "cfg.json", std::ios::binary | std::ios::trunc) << bytes.substr(0, split);
    const std::string_view weights = split < bytes.size() ? bytes.substr(split + 1) : std::string_view{};
    std::ofstream(dir / "sae_weights.safetensors", std::ios::binary | std::ios::trunc)
        .write(weights.data(), static_cast<std::streamsize>(weights.size()));
    const mechlens::saelens_sae sae = mechlens::read_saelens_folder(dir);
    check(sae);
    // Accepted weights are consistent: the splice takes them (validate_sae throws shape_error otherwise).
    const mechlens::sae_splice splice(sae.weights, sae.options);
    mechlens_fuzz::keep(splice.sites().size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    try {
        if (data[0] % 2 == 0)
            config(text);
        else
            folder(text);
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
