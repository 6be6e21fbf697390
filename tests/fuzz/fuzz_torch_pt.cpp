// libFuzzer harness for the torch.save reader (ZIP directory, restricted unpickler, tensors rebuilt from storages).
// Each input is tried twice: as a whole .pt file, and as the data.pkl of a valid archive built around it (with
// storages "0" to "3" of 64 bytes), so mutations of the pickle reach the unpickler and the tensor walk instead of
// failing the archive's CRC check. format_error is the documented rejection; anything else escaping is a bug.
#include "fuzz_support.hpp"

#include <span>
#include <string>
#include <utility>
#include <vector>

namespace {

void check(std::span<const std::byte> bytes) {
    try {
        const mechlens::torch_state_dict sd = mechlens::parse_torch_state_dict(bytes, "fuzz.pt");
        double sum = 0.0;
        for (const mechlens::torch_tensor& t : sd.tensors) {
            std::size_t count = 1;
            for (const mechlens::index_t e : t.shape) {
                if (e < 0) std::abort();
                count *= static_cast<std::size_t>(e);
            }
            if (count != t.values.size()) std::abort();
            for (const float x : t.values) sum += static_cast<double>(x);
        }
        mechlens_fuzz::keep(sum);
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
}

void put16(std::string& out, std::uint32_t v) {
    out += static_cast<char>(v & 0xFFu);
    out += static_cast<char>((v >> 8) & 0xFFu);
}
void put32(std::string& out, std::uint32_t v) {
    put16(out, v & 0xFFFFu);
    put16(out, v >> 16);
}

/// A stored ZIP of `entries` (name, bytes) with correct CRCs, as a minimal writer lays it out.
std::string stored_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
    std::string out, directory;
    for (const auto& [name, data] : entries) {
        const auto crc = mechlens::detail::crc32(
            std::span<const std::byte>(reinterpret_cast<const std::byte*>(data.data()), data.size()));
        const auto offset = static_cast<std::uint32_t>(out.size());
        const auto size = static_cast<std::uint32_t>(data.size());
        const auto name_length = static_cast<std::uint32_t>(name.size());
        put32(out, 0x04034b50u);
        put16(out, 20), put16(out, 0), put16(out, 0), put32(out, 0), put32(out, crc), put32(out, size);
        put32(out, size), put16(out, name_length), put16(out, 0);
        out += name;
        out += data;
        put32(directory, 0x02014b50u);
        put16(directory, 20), put16(directory, 20), put16(directory, 0), put16(directory, 0), put32(directory, 0);
        put32(directory, crc), put32(directory, size), put32(directory, size), put16(directory, name_length);
        put16(directory, 0), put16(directory, 0), put16(directory, 0), put16(directory, 0), put32(directory, 0);
        put32(directory, offset);
        directory += name;
    }
    const auto directory_offset = static_cast<std::uint32_t>(out.size());
    out += directory;
    put32(out, 0x06054b50u);
    put16(out, 0), put16(out, 0);
    put16(out, static_cast<std::uint32_t>(entries.size())), put16(out, static_cast<std::uint32_t>(entries.size()));
    put32(out, static_cast<std::uint32_t>(directory.size())), put32(out, directory_offset), put16(out, 0);
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    check(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
    // Pickles far beyond what a harness input needs would only slow the run.
    if (size > 65536) return 0;
    std::string storage(64, '\0');
    for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<char>(i * 37 + 11);
    const std::string zip = stored_zip({{"a/data.pkl", std::string(reinterpret_cast<const char*>(data), size)},
                                        {"a/data/0", storage},
                                        {"a/data/1", storage},
                                        {"a/data/2", storage.substr(0, 8)},
                                        {"a/data/3", std::string()}});
    check(std::span<const std::byte>(reinterpret_cast<const std::byte*>(zip.data()), zip.size()));
    return 0;
}
