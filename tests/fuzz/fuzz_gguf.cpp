// libFuzzer harness for the GGUF parser (gguf_file) and the GGUF model and vocabulary loaders: parse, walk every
// metadata value and tensor info, read the bytes of every range-checked tensor, then load the model (touching
// every weight; quantised tensors are decoded, and every decodable tensor is also decoded on its own and, when its
// values are finite, encoded again as Q8_0) and the
// vocabulary (and tokenize with it). format_error is the documented rejection; the
// tokenizer may also refuse a vocabulary or a text with std::invalid_argument. The file is also read as a llama.cpp
// control vector, written back and read again (it must come back unchanged). Anything else is a bug.
#include "fuzz_support.hpp"

#include <mechlens/medicine/control_vector.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

namespace {

std::size_t walk(const mechlens::gguf_value& v) {
    std::size_t n = 1;
    if (const auto* s = v.as_string()) n += s->size();
    if (const auto* a = v.as_array())
        for (const mechlens::gguf_value& e : *a) n += walk(e);
    return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static mechlens_fuzz::memory_file file;
    const std::string& path = file.write(data, size);
    std::unique_ptr<const mechlens::gguf_file> g;
    try {
        g = std::make_unique<const mechlens::gguf_file>(std::filesystem::path(path));
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
        return 0;
    }
    std::size_t seen = 0;
    for (const auto& [key, value] : g->metadata()) seen += key.size() + walk(value);
    for (const mechlens::gguf_tensor_info& t : g->tensors()) {
        if (g->find_tensor(t.name) != &t) std::abort();
        if (mechlens::detail::ggml_block_layout(t.type).first == 0) continue;
        const std::byte* bytes = g->tensor_data(t);
        for (std::uint64_t i = 0; i < t.n_bytes; ++i) seen += std::to_integer<std::size_t>(bytes[i]);
        // Any bytes are valid blocks (NaN scales decode to NaN): a range-checked decodable tensor must decode.
        if (mechlens::ggml_type_decodable(t.type) && t.n_elements <= (std::uint64_t{1} << 22)) {
            std::vector<float> values(static_cast<std::size_t>(t.n_elements));
            mechlens::dequantize_ggml(t.type, bytes, t.n_elements, values.data());
            for (const float x : values) seen += x == 0.0f ? 1u : 0u;
            // The products' decoder (kernels/encoded_matmul.hpp) gives the same floats from the same blocks, NaN for
            // NaN (whose payload the two may carry differently).
            if (const auto m = mechlens::detail::gguf_encoded_matrix(*g, t)) {
                std::vector<float> again(values.size());
                mechlens::kernels::decode_encoded_rows(*m, 0, m->rows, again.data());
                for (std::size_t i = 0; i < values.size(); ++i)
                    if (std::isnan(values[i]) ? !std::isnan(again[i])
                                              : std::memcmp(&values[i], &again[i], sizeof(float)) != 0)
                        std::abort();
            }
            // Whatever the values (subnormal, huge), encoding finite ones as Q8_0 stays defined (UBSan watches the
            // conversions to int8) and round-trips within its error bound, as `mechlens quantize` relies on.
            const bool finite = std::all_of(values.begin(), values.end(), [](float x) { return std::isfinite(x); });
            if (finite && t.n_elements != 0 && t.n_elements % 32 == 0) {
                std::vector<std::byte> encoded(static_cast<std::size_t>(t.n_elements / 32 * 34));
                mechlens::quantize_q8_0(values.data(), t.n_elements, encoded.data());
                // Decoded again, each value is within half a step of its block's scale d plus the error of d's own
                // rounding to a half (127 steps at most), in double with a margin for float's roundings; blocks whose
                // d overflowed a half decode to infinities and are not checked.
                std::vector<float> decoded(values.size());
                mechlens::dequantize_ggml(mechlens::ggml_type::q8_0, encoded.data(), t.n_elements, decoded.data());
                for (std::size_t b = 0; b < values.size() / 32; ++b) {
                    const auto d = static_cast<double>(mechlens::detail::ggml_half_at(encoded.data() + 34 * b));
                    if (!std::isfinite(d)) continue;
                    double amax = 0.0;
                    for (std::size_t j = 32 * b; j < 32 * b + 32; ++j)
                        amax = std::max(amax, std::fabs(static_cast<double>(values[j])));
                    const double bound = 0.5 * d + 127.0 * std::fabs(d - amax / 127.0) + 1e-5 * amax;
                    for (std::size_t j = 32 * b; j < 32 * b + 32; ++j) {
                        const double error = std::fabs(static_cast<double>(decoded[j]) - static_cast<double>(values[j]));
                        if (error > bound) std::abort();
                    }
                }
                seen += std::to_integer<std::size_t>(encoded.back());
            }
        }
    }
    mechlens_fuzz::keep(seen);
    try {
        const mechlens::loaded_model m = mechlens::load_gguf(*g);
        mechlens_fuzz::keep(mechlens_fuzz::touch_model(m));
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    try {
        mechlens::vocabulary v = mechlens::load_gguf_vocabulary(*g);
        const mechlens::bpe_tokenizer tok(std::move(v));
        const std::vector<std::int32_t> ids = tok.encode("Once upon a time \xE2\x96\x81\xC3\xA9!", false, false);
        mechlens_fuzz::keep(tok.decode(ids));
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    } catch (const std::invalid_argument& e) {
        mechlens_fuzz::rejected(e);
    }
    // As a llama.cpp control vector: what is read is written back and read again unchanged.
    try {
        const mechlens::control_vector cv = mechlens::read_control_vector(path);
        static mechlens_fuzz::memory_file again;
        const std::string& copy = again.write(nullptr, 0);
        mechlens::write_control_vector(copy, cv);
        const mechlens::control_vector back = mechlens::read_control_vector(copy);
        // Compared bit for bit: a NaN read is a NaN written, and NaN != NaN.
        bool same = back.model_hint == cv.model_hint && back.directions.size() == cv.directions.size();
        for (auto a = cv.directions.begin(), b = back.directions.begin(); same && a != cv.directions.end(); ++a, ++b)
            same = a->first == b->first && a->second.size() == b->second.size() &&
                   std::memcmp(a->second.data(), b->second.data(), a->second.size() * sizeof(float)) == 0;
        if (!same) std::abort();
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
