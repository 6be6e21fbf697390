// libFuzzer harness for the .npy reader: parse from memory and check the shape against the data.
// format_error is the documented rejection; anything else escaping is a bug.
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const mechlens::npy_array a = mechlens::parse_npy(reinterpret_cast<const std::byte*>(data), size, "fuzz.npy");
        std::size_t count = 1;
        for (const mechlens::index_t e : a.shape) {
            if (e < 0) std::abort();
            count *= static_cast<std::size_t>(e);
        }
        if (count != a.data.size()) std::abort();
        double sum = 0.0;
        for (const float x : a.data) sum += static_cast<double>(x);
        mechlens_fuzz::keep(sum);
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    return 0;
}
