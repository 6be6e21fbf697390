// libFuzzer harness for the Hugging Face folder readers (io/huggingface.hpp). The first byte picks what the rest
// is: 0 a config.json for read_hf_config, 1 a model.safetensors.index.json for read_hf_index, 2 a safetensors file
// read with F16/BF16 conversion (parse_safetensors with safetensors_dtypes::float_any). format_error is the
// documented rejection; anything else escaping, or an accepted config that fails its own validation, is a bug.
#include "fuzz_support.hpp"

#include <mechlens/io/huggingface.hpp>
#include <mechlens/model/parameters.hpp>

#include <cmath>

namespace {

void config(std::string_view text) {
    const mechlens::json_value cfg = mechlens::parse_json(text, "config.json");
    const mechlens::hf_config hf = mechlens::read_hf_config(cfg, "config.json");
    const mechlens::model_config& c = hf.config;
    c.validate("fuzz");  // an accepted config must be a valid one
    if (c.rotary() && (c.rotary_dim() <= 0 || c.rotary_dim() > c.d_head() || c.rotary_dim() % 2 != 0)) std::abort();
    if (c.tied_unembed != hf.tied) std::abort();
    // The layout (and the name of every row) is derived from the config without allocating the parameters.
    std::size_t rows = 0;
    for (const mechlens::parameter_entry& e : mechlens::parameter_layout(c)) {
        bool named = false;
        for (const mechlens::hf_name& n : mechlens::hf_names)
            named = named || (n.architecture == hf.architecture && n.id == e.id);
        if (!named) std::abort();  // every parameter the config implies has a Hugging Face name
        ++rows;
    }
    mechlens_fuzz::keep(rows);
}

void index(std::string_view text) {
    const mechlens::json_value v = mechlens::parse_json(text, "model.safetensors.index.json");
    const auto map = mechlens::read_hf_index(v, "model.safetensors.index.json");
    for (const auto& [tensor, file] : map)
        if (file.empty() || file.find('/') != std::string::npos || file == "..") std::abort();
    mechlens_fuzz::keep(map.size());
}

void halves(const std::uint8_t* data, std::size_t size) {
    const mechlens::safetensors_file f = mechlens::parse_safetensors(
        reinterpret_cast<const std::byte*>(data), size, "fuzz.safetensors", mechlens::safetensors_dtypes::float_any);
    double sum = 0.0;
    for (const mechlens::safetensors_tensor& t : f.tensors) {
        std::size_t count = 1;
        for (mechlens::index_t e : t.shape) count *= static_cast<std::size_t>(e);
        if (count != t.values.size()) std::abort();
        for (float x : t.values) sum += std::isfinite(x) ? static_cast<double>(x) : 0.0;
    }
    mechlens_fuzz::keep(sum);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    try {
        switch (data[0] % 3) {
            case 0:
                config(text);
                break;
            case 1:
                index(text);
                break;
            default:
                halves(data + 1, size - 1);
                break;
        }
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
