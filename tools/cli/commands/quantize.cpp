// `mechlens quantize`: a GGUF model's weight matrices stored as Q8_0 (llama.cpp's 8-bit blocks), written as a new
// GGUF file that llama.cpp and mechlens both open.

#include <mechlens/mechlens.hpp>

#include <cstdio>
#include <string>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace quantize_impl {

/// "768 x 2048": extents in ggml order.
std::string shape_text(const std::vector<std::uint64_t>& dims) {
    std::string text;
    for (std::size_t i = 0; i < dims.size(); ++i) text += (i == 0 ? "" : " x ") + std::to_string(dims[i]);
    return text;
}

int run(arguments& args) {
    const std::string input = args.require("model");
    const std::string output = args.require("out");
    const std::string type = args.get("type").value_or("q8_0");
    args.reject_unknown();
    if (type != "q8_0" && type != "Q8_0") throw usage_error("--type: only q8_0 is written (got '" + type + "')");
    if (!input.ends_with(".gguf"))
        throw usage_error("--model: quantize reads a GGUF model file (.gguf); got '" + input + "'");
    const mechlens::gguf_quantize_report report =
        mechlens::quantize_gguf(input, output, [](const mechlens::gguf_quantized_tensor& t) {
            std::printf("%-32s %-16s %5s -> %-5s%s%s\n", t.name.c_str(), shape_text(t.dims).c_str(),
                        mechlens::to_string(t.from).c_str(), mechlens::to_string(t.to).c_str(),
                        t.why.empty()    ? ""
                        : t.to == t.from ? "  kept: "
                                         : "  not Q8_0: ",
                        t.why.c_str());
            std::fflush(stdout);
        });
    std::size_t quantised = 0;
    for (const mechlens::gguf_quantized_tensor& t : report.tensors) quantised += t.to == mechlens::ggml_type::q8_0;
    std::printf("wrote %s: %zu of %zu tensors as Q8_0, tensor data %.2f MiB -> %.2f MiB\n", output.c_str(), quantised,
                report.tensors.size(), static_cast<double>(report.bytes_in) / (1024.0 * 1024.0),
                static_cast<double>(report.bytes_out) / (1024.0 * 1024.0));
    return 0;
}

}  // namespace quantize_impl

const command quantize_command{
    "quantize",
    "--model IN.gguf --out OUT.gguf [--type q8_0]: the weight matrices stored as Q8_0, as llama-quantize writes\n"
    "them (norms, biases and other 1-D tensors kept; a matrix whose rows are not whole blocks of 32 kept as F16)",
    quantize_impl::run};

}  // namespace mechlens_cli
