#pragma once
/// @file
/// Reads the state dict that `torch.save(model.state_dict(), f)` wrote (PyTorch's zip format, torch >= 1.6)
/// without Python: a ZIP archive `<archive>/data.pkl` (the pickled OrderedDict, read by the restricted unpickler
/// of torch_pickle.hpp), `<archive>/data/<key>` (one stored entry per storage, raw little-endian elements) and,
/// from torch 2.1 on, `<archive>/byteorder` ("little" or "big"). The folder name `<archive>` varies.
/// Each tensor is rebuilt from its storage, storage offset, sizes and strides (views and shared storages work) and
/// converted to float.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/loader_storage.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/io/torch_pickle.hpp"
#include "mechlens/io/zip.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One tensor of a PyTorch state dict, converted to float.
struct torch_tensor {
    std::string name;            ///< The state-dict key (nested dicts joined with '.').
    std::vector<index_t> shape;  ///< Extents, outermost first; empty for a 0-d tensor.
    torch_dtype dtype = torch_dtype::f32;  ///< The dtype in the file (integers and bools are converted too).
    std::vector<float> values;   ///< product(shape) values in row-major order (int64 beyond 2^24 rounds).
};

/// The tensors of a state dict, in the dict's order.
struct torch_state_dict {
    std::vector<torch_tensor> tensors;  ///< In insertion order of the (Ordered)dict, nested dicts depth-first.

    /// The tensor named `name`, or null.
    [[nodiscard]] const torch_tensor* find(std::string_view name) const noexcept {
        for (const torch_tensor& t : tensors)
            if (t.name == name) return &t;
        return nullptr;
    }
};

namespace detail {

/// Nesting of dicts a state dict may have (a plain one has 1; the walk is iterative, this bounds names).
inline constexpr std::size_t torch_max_dict_depth = 64;

/// Converts element `index` of a storage (little- or big-endian bytes) to float.
inline float torch_element(const std::byte* data, std::uint64_t index, torch_dtype dtype, bool big_endian) noexcept {
    const std::size_t size = torch_dtype_size(dtype);
    std::array<std::byte, 8> b{};
    std::memcpy(b.data(), data + index * size, size);
    if (big_endian) std::reverse(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(size));
    const auto as = [&b]<class T>(T) {
        T v{};
        std::memcpy(&v, b.data(), sizeof v);
        return v;
    };
    switch (dtype) {
        case torch_dtype::f32: return as(float{});
        case torch_dtype::f64: return static_cast<float>(as(double{}));
        case torch_dtype::f16: return half_to_float(as(std::uint16_t{}));
        case torch_dtype::bf16: return std::bit_cast<float>(static_cast<std::uint32_t>(as(std::uint16_t{})) << 16);
        case torch_dtype::i64: return static_cast<float>(as(std::int64_t{}));
        case torch_dtype::i32: return static_cast<float>(as(std::int32_t{}));
        case torch_dtype::i16: return static_cast<float>(as(std::int16_t{}));
        case torch_dtype::i8: return static_cast<float>(as(std::int8_t{}));
        case torch_dtype::u8: return static_cast<float>(as(std::uint8_t{}));
        case torch_dtype::boolean: return as(std::uint8_t{}) != 0 ? 1.0f : 0.0f;
    }
    return 0.0f;
}

/// Builds the tensors of a torch.save archive; see parse_torch_state_dict.
class torch_archive_reader {
public:
    /// A reader over the archive bytes; `where` prefixes every error.
    torch_archive_reader(std::span<const std::byte> bytes, std::string where)
        : bytes_(bytes), where_(std::move(where)) {}

    /// Reads everything.
    torch_state_dict read() {
        if (!bytes_.empty() && bytes_[0] == std::byte{0x80})
            fail("a legacy (pre-1.6, not zip) torch.save file; re-save it with a current torch");
        if (bytes_.size() < 4 || std::memcmp(bytes_.data(), "PK\x03\x04", 4) != 0)
            fail("not a PyTorch file (torch.save writes a ZIP archive starting with \"PK\")");
        zip_ = std::make_unique<zip_reader>(bytes_, where_);
        find_prefix();
        if (const zip_entry* e = zip_->find(prefix_ + "byteorder")) {
            const std::span<const std::byte> b = zip_->read(*e);
            const std::string_view order(reinterpret_cast<const char*>(b.data()), b.size());
            if (order == "big")
                big_endian_ = true;
            else if (order != "little")
                fail("byteorder holds '" + printable(order, 16) + "', neither 'little' nor 'big'");
        }
        const zip_entry* pickle = zip_->find(prefix_ + "data.pkl");
        torch_unpickler unpickler(zip_->read(*pickle), where_);
        const pickle_value root = unpickler.run();
        if (root.kind != pickle_kind::dict)
            fail("data.pkl does not hold a dict; a state dict is a (nested) dict of tensors");
        // A tensor may repeat storage elements (stride 0), but all tensors together may not hold more elements
        // than the archive has bytes plus 2^20, so a few hostile bytes cannot claim gigabytes.
        budget_ = static_cast<std::uint64_t>(bytes_.size()) + (std::uint64_t{1} << 20);
        torch_state_dict out;
        walk(*root.object, out);
        return out;
    }

private:
    [[noreturn]] void fail(const std::string& problem) const { format_fail(where_, problem); }

    // The archive's top folder: the one holding data.pkl (torch names it after the file; it varies).
    void find_prefix() {
        const zip_entry* found = nullptr;
        for (const zip_entry& e : zip_->entries()) {
            const std::size_t slash = e.name.find('/');
            if (slash == std::string::npos || e.name.compare(slash + 1, std::string::npos, "data.pkl") != 0)
                continue;
            if (found) fail("two data.pkl entries ('" + printable(found->name) + "' and '" + printable(e.name) + "')");
            found = &e;
        }
        if (!found) {
            const bool script = std::any_of(zip_->entries().begin(), zip_->entries().end(), [](const zip_entry& e) {
                return e.name.find("/constants.pkl") != std::string::npos;
            });
            fail(script ? "a TorchScript archive (torch.jit.save), not a torch.save state dict"
                        : "no <archive>/data.pkl entry: not a torch.save archive");
        }
        prefix_ = found->name.substr(0, found->name.size() - std::string_view("data.pkl").size());
    }

    // Depth-first over nested dicts, iteratively; a dict reached twice is rejected (a walk could otherwise
    // multiply through shared dicts).
    void walk(pickle_object& root, torch_state_dict& out) {
        struct frame {
            pickle_object* dict;
            std::size_t next;
            std::string prefix;
        };
        std::vector<frame> stack;
        root.visited = true;
        stack.push_back({&root, 0, ""});
        while (!stack.empty()) {
            frame& f = stack.back();
            if (f.next == f.dict->keys.size()) {
                stack.pop_back();
                continue;
            }
            const std::size_t i = f.next++;
            const pickle_value& v = f.dict->items[i];
            std::string name = f.prefix + f.dict->keys[i];
            if (v.kind == pickle_kind::tensor) {
                out.tensors.push_back(materialise(*v.object, std::move(name)));
            } else if (v.kind == pickle_kind::dict) {
                if (v.object->visited) fail("dict '" + printable(name) + "' appears twice in the state dict");
                if (stack.size() >= torch_max_dict_depth)
                    fail("dicts nested deeper than " + std::to_string(torch_max_dict_depth));
                v.object->visited = true;
                stack.push_back({v.object, 0, name + "."});  // invalidates f, which is not used again
            }
            // Other values (numbers, strings, None, lists) are not tensors; a state dict reader skips them.
        }
    }

    std::span<const std::byte> storage_bytes(const pickle_object& storage) {
        const auto cached = storages_.find(&storage);
        if (cached != storages_.end()) return cached->second;
        const std::string entry_name = prefix_ + "data/" + storage.text;
        const zip_entry* e = zip_->find(entry_name);
        if (!e) fail("storage '" + printable(storage.text) + "' is missing (no entry '" + printable(entry_name) + "')");
        const std::uint64_t need = checked_mul(storage.numel, torch_dtype_size(storage.dtype), where_, "storage");
        const std::span<const std::byte> data = zip_->read(*e);  // rejects compressed entries and CRC errors
        if (data.size() != need)
            fail("storage '" + printable(storage.text) + "' holds " + std::to_string(data.size()) + " bytes, but " +
                 std::to_string(storage.numel) + " " + std::string(torch_dtype_name(storage.dtype)) +
                 " elements need " + std::to_string(need));
        storages_.emplace(&storage, data);
        return data;
    }

    torch_tensor materialise(const pickle_object& t, std::string name) {
        const pickle_object& storage = *t.storage;
        const std::string what = "tensor '" + printable(name) + "'";
        std::uint64_t count = 1, last = t.offset;
        for (std::size_t a = 0; a < t.sizes.size(); ++a) {
            const auto size = static_cast<std::uint64_t>(t.sizes[a]);
            count = checked_mul(count, size, where_, what);
            if (size > 0)
                last = checked_add(last, checked_mul(size - 1, static_cast<std::uint64_t>(t.strides[a]), where_, what),
                                   where_, what);
        }
        if (count > budget_)
            fail(what + " claims " + std::to_string(count) + " elements, more than the archive can justify");
        budget_ -= count;
        if (count > 0 ? last >= storage.numel : t.offset > storage.numel)
            fail(what + " reaches element " + std::to_string(last) + " of storage '" + printable(storage.text) +
                 "', which has " + std::to_string(storage.numel));
        const std::byte* data = storage_bytes(storage).data();

        torch_tensor out;
        out.name = std::move(name);
        out.dtype = storage.dtype;
        for (const std::int64_t s : t.sizes) out.shape.push_back(static_cast<index_t>(s));
        out.values.resize(static_cast<std::size_t>(count));
        // Row-major odometer over the indices; `at` is the storage element of the current index.
        const std::size_t rank = t.sizes.size();
        std::vector<std::uint64_t> index(rank, 0);
        std::uint64_t at = t.offset;
        for (float& value : out.values) {
            value = torch_element(data, at, storage.dtype, big_endian_);
            for (std::size_t a = rank; a-- > 0;) {
                const auto stride = static_cast<std::uint64_t>(t.strides[a]);
                if (++index[a] < static_cast<std::uint64_t>(t.sizes[a])) {
                    at += stride;
                    break;
                }
                at -= stride * (index[a] - 1);
                index[a] = 0;
            }
        }
        return out;
    }

    std::span<const std::byte> bytes_;
    std::string where_;
    std::unique_ptr<zip_reader> zip_;
    std::string prefix_;
    bool big_endian_ = false;
    std::uint64_t budget_ = 0;
    std::unordered_map<const pickle_object*, std::span<const std::byte>> storages_;
};

}  // namespace detail

/// Parses a torch.save archive held in memory (errors name `where`): read_torch_state_dict without the file.
inline torch_state_dict parse_torch_state_dict(std::span<const std::byte> bytes, const std::string& where) {
    return detail::torch_archive_reader(bytes, where).read();
}

/// Reads the state dict `torch.save(model.state_dict(), path)` wrote. Accepts F32, F64, F16, BF16 and integer or
/// bool tensors (all converted to float; check `dtype` to skip buffers), views with any strides and storages shared
/// between tensors, nested dicts (names joined with '.'; non-tensor values skipped). Throws format_error naming the
/// file, with a one-line reason, for anything else: a pickle naming any global but OrderedDict, torch's rebuild
/// functions and storage types (e.g. `os.system`), compressed or truncated archives, CRC mismatches, storages of
/// the wrong size, views reaching outside their storage, legacy non-zip files and TorchScript archives.
inline torch_state_dict read_torch_state_dict(const std::filesystem::path& path) {
    const std::shared_ptr<const mapped_file> file = mapped_file::open(path);
    return parse_torch_state_dict(std::span<const std::byte>(file->data(), file->size()), path.string());
}

MECHLENS_END_NAMESPACE
