// libFuzzer harness for circuit-tracer transcoder files (sae/circuit_tracer_format.hpp). The first byte picks what
// the rest is: even, a per-layer `layer_L.safetensors` for parse_circuit_tracer_transcoder; odd, a `config.yaml` for
// read_circuit_tracer_config, then circuit_tracer_site_kinds. format_error is the documented rejection of a file
// (std::invalid_argument of hook names mechlens has no site for); anything else escaping, an accepted transcoder
// that fails its own validation or does not survive the writer and the reader unchanged, is a bug.
#include "fuzz_support.hpp"

#include <mechlens/sae/circuit_tracer_format.hpp>
#include <mechlens/sae/transcoder.hpp>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <unistd.h>

namespace {

const std::filesystem::path& scratch() {
    static const std::filesystem::path dir = [] {
        const std::filesystem::path d =
            std::filesystem::temp_directory_path() / ("mechlens-fuzz-transcoder-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        return d;
    }();
    return dir;
}

void layer_file(std::string_view bytes) {
    const mechlens::circuit_tracer_transcoder t = mechlens::parse_circuit_tracer_transcoder(
        reinterpret_cast<const std::byte*>(bytes.data()), bytes.size(), "layer_0.safetensors");
    // Accepted weights are consistent: validation passes and the splice takes them.
    mechlens::validate_transcoder(t.weights, t.options, "fuzz");
    const mechlens::transcoder_splice splice(t.weights, t.options);
    mechlens_fuzz::keep(splice.sites().size());
    // What we read, we write back and read again unchanged (NaN-free comparison on the bits).
    const std::filesystem::path path = scratch() / "layer_0.safetensors";
    mechlens::write_circuit_tracer_transcoder(path, t.weights, t.options);
    const mechlens::circuit_tracer_transcoder again = mechlens::read_circuit_tracer_transcoder(path);
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
        return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    };
    const auto& w = t.weights.sae;
    const auto& v = again.weights.sae;
    if (again.options.architecture != t.options.architecture || v.d_in != w.d_in || v.d_sae != w.d_sae ||
        !same(v.w_enc, w.w_enc) || !same(v.w_dec, w.w_dec) || !same(v.b_enc, w.b_enc) || !same(v.b_dec, w.b_dec) ||
        !same(v.threshold, w.threshold) || !same(again.weights.w_skip, t.weights.w_skip))
        std::abort();
}

void config(std::string_view text) {
    const std::filesystem::path path = scratch() / "config.yaml";
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(text.data(), static_cast<std::streamsize>(text.size()));
    const mechlens::circuit_tracer_hooks hooks = mechlens::read_circuit_tracer_config(path);
    if (hooks.feature_input_hook.empty() || hooks.feature_output_hook.empty()) std::abort();
    try {
        const mechlens::circuit_tracer_sites sites = mechlens::circuit_tracer_site_kinds(hooks);
        if (sites.output != mechlens::site_kind::mlp_out) std::abort();
    } catch (const std::invalid_argument&) {
        // Hook names without a mechlens site: the documented rejection.
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    try {
        if (data[0] % 2 == 0)
            layer_file(rest);
        else
            config(rest);
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
