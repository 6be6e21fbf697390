#pragma once
/// @file
/// Quantising a GGUF model file to Q8_0, as `llama-quantize IN OUT Q8_0` does, so that llama.cpp and mechlens open
/// the result: every weight matrix whose rows are whole blocks of 32 becomes Q8_0 (io/ggml_quants.hpp's encoder, bit
/// for bit llama.cpp's reference quantiser); the tensors llama.cpp's quantiser leaves alone stay as they are (1-D
/// tensors such as norms and biases, `*_norm.weight`, position embeddings, token types, MoE routers, tensors already
/// quantised); and a matrix whose rows are not whole blocks, which llama.cpp refuses to quantise to Q8_0, is stored
/// as F16 (its fallback for k-quants) so the file still opens. The metadata is copied as it is (tokenizer included),
/// with general.file_type = 7 (mostly Q8_0) and general.quantization_version = 2.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/io/ggml_quants.hpp"
#include "mechlens/io/gguf.hpp"
#include "mechlens/io/gguf_writer.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What quantize_gguf did to one tensor.
struct gguf_quantized_tensor {
    std::string name;                 ///< Tensor name.
    std::vector<std::uint64_t> dims;  ///< Extents in ggml order.
    ggml_type from = ggml_type::f32;  ///< Type in the input file.
    ggml_type to = ggml_type::f32;    ///< Type written.
    std::string why;                  ///< Why it was not made Q8_0 (empty when it was).
};

/// The outcome of quantize_gguf: every tensor in file order, and the bytes of tensor data before and after.
struct gguf_quantize_report {
    std::vector<gguf_quantized_tensor> tensors;  ///< One entry per tensor, in file order.
    std::uint64_t bytes_in = 0;                  ///< Tensor data bytes of the input.
    std::uint64_t bytes_out = 0;                 ///< Tensor data bytes written.
};

namespace detail {

/// Why llama.cpp's quantiser leaves tensor `info` as it is (its rules for every target type), or empty when it
/// quantises it.
inline std::string gguf_quantize_exemption(const gguf_tensor_info& info) {
    const std::string_view name = info.name;
    if (info.dims.size() < 2) return "1-D";
    if (!name.ends_with("weight")) return "not a weight";
    if (name.find("_norm.weight") != std::string_view::npos) return "a norm";
    if (name == "position_embd.weight" || name == "token_types.weight") return "an embedding llama.cpp keeps";
    if (name.find("ffn_gate_inp.weight") != std::string_view::npos) return "a router llama.cpp keeps";
    if (info.type != ggml_type::f32 && info.type != ggml_type::f16 && info.type != ggml_type::bf16)
        return "already " + to_string(info.type);
    return {};
}

}  // namespace detail

/// Writes `output`, a copy of the GGUF model `input` with its weight matrices quantised to Q8_0 (see the file
/// comment for which tensors change). `progress`, when given, is called after each tensor with its entry. Throws
/// format_error naming the file when `input` is not a valid GGUF file or has a tensor whose layout is unknown,
/// std::invalid_argument when `output` is `input` or a weight is not finite (nothing is written then), and
/// format_error when writing fails.
inline gguf_quantize_report quantize_gguf(const std::filesystem::path& input, const std::filesystem::path& output,
                                          const std::function<void(const gguf_quantized_tensor&)>& progress = {}) {
    std::error_code same_error;
    if (std::filesystem::exists(output) && std::filesystem::equivalent(input, output, same_error))
        throw std::invalid_argument("quantize_gguf: the output " + output.string() + " is the input file");
    const gguf_file file(input);

    std::vector<std::pair<std::string, gguf_value>> metadata;
    for (const auto& [key, value] : file.metadata()) {
        // The writer aligns to 32 (the default), and the two keys below are set for the new contents.
        if (key == "general.alignment" || key == "general.file_type" || key == "general.quantization_version") continue;
        metadata.emplace_back(key, value);
    }
    metadata.emplace_back("general.file_type", gguf_value(gguf_type::uint32, std::uint64_t{7}));
    metadata.emplace_back("general.quantization_version", gguf_value(gguf_type::uint32, std::uint64_t{2}));

    gguf_quantize_report report;
    std::vector<std::vector<std::byte>> encoded(file.tensors().size());
    std::vector<gguf_tensor_to_write> tensors;
    for (std::size_t i = 0; i < file.tensors().size(); ++i) {
        const gguf_tensor_info& info = file.tensors()[i];
        const std::byte* data = file.tensor_data(info);  // throws for a layout mechlens does not know
        report.bytes_in += info.n_bytes;
        gguf_quantized_tensor entry{info.name, info.dims, info.type, info.type, detail::gguf_quantize_exemption(info)};
        const bool rows_whole = info.dims[0] % 32 == 0;
        if (entry.why.empty() && !rows_whole) {
            entry.why = "rows of " + std::to_string(info.dims[0]) + " are not whole blocks of 32";
            if (info.type != ggml_type::f16) entry.to = ggml_type::f16;
        } else if (entry.why.empty()) {
            entry.to = ggml_type::q8_0;
        }
        std::vector<std::byte>& bytes = encoded[i];
        if (entry.to == info.type) {
            bytes.assign(data, data + info.n_bytes);
        } else {
            std::vector<float> values(info.n_elements);
            dequantize_ggml(info.type, data, info.n_elements, values.data());
            bytes.resize(ggml_encoded_bytes(entry.to, info.n_elements));
            if (entry.to == ggml_type::q8_0) {
                try {
                    quantize_q8_0(values.data(), info.n_elements, bytes.data());
                } catch (const std::invalid_argument& e) {
                    throw std::invalid_argument("quantize_gguf: tensor '" + info.name + "': " + e.what());
                }
            } else {  // F16
                for (std::size_t j = 0; j < values.size(); ++j)
                    detail::store_half(bytes.data() + 2 * j, detail::float_to_half(values[j]));
            }
        }
        report.bytes_out += bytes.size();
        tensors.push_back({info.name, info.dims, {}, entry.to, bytes});
        if (progress) progress(entry);
        report.tensors.push_back(std::move(entry));
    }
    write_gguf(output, metadata, tensors);
    return report;
}

MECHLENS_END_NAMESPACE
