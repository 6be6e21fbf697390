// Helpers shared by the libFuzzer harnesses: an in-memory file for the loaders that need a path, and a
// checksum that makes every element of a view be read (so ASan sees each access and nothing is optimised out).
#pragma once

// Only the headers the parsers need: the umbrella header would also pull in code no harness reaches.
#include <mechlens/io/gguf.hpp>
#include <mechlens/io/gguf_model.hpp>
#include <mechlens/io/json.hpp>
#include <mechlens/io/llama2c.hpp>
#include <mechlens/io/load.hpp>
#include <mechlens/io/npy.hpp>
#include <mechlens/io/safetensors.hpp>
#include <mechlens/io/torch_state_dict.hpp>
#include <mechlens/model/weights.hpp>
#include <mechlens/tokenizer/bpe.hpp>
#include <mechlens/tokenizer/gpt2_files.hpp>
#include <mechlens/tokenizer/llama2c_vocab.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace mechlens_fuzz {

/// An anonymous in-memory file (memfd) reachable as /proc/self/fd/N, rewritten for every input.
class memory_file {
public:
    /// Creates the memfd; aborts when the kernel has none (the harness cannot run then).
    memory_file() : fd_(::memfd_create("mechlens-fuzz", MFD_CLOEXEC)) {
        if (fd_ < 0) {
            std::perror("memfd_create");
            std::abort();
        }
        path_ = "/proc/self/fd/" + std::to_string(fd_);
    }
    memory_file(const memory_file&) = delete;             ///< One owner.
    memory_file& operator=(const memory_file&) = delete;  ///< One owner.
    /// Closes the memfd.
    ~memory_file() { ::close(fd_); }

    /// Replaces the contents with `size` bytes at `data`; returns the path to open.
    const std::string& write(const std::uint8_t* data, std::size_t size) {
        if (::ftruncate(fd_, 0) != 0) std::abort();
        std::size_t done = 0;
        while (done < size) {
            const ::ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<::off_t>(done));
            if (n <= 0) std::abort();
            done += static_cast<std::size_t>(n);
        }
        return path_;
    }

private:
    int fd_;
    std::string path_;
};

/// Sum of every element of `view` (reads each one); the value itself does not matter.
template <class T, std::size_t Rank>
double touch(const mechlens::tensor_view<T, Rank>& view) {
    double sum = 0.0;
    const T* p = view.data();
    if (view.size() > 0 && view.is_contiguous())
        for (mechlens::index_t i = 0; i < view.size(); ++i) sum += static_cast<double>(p[i]);
    return sum;
}

/// Reads every weight of a loaded model and checks the views against the config.
inline double touch_model(const mechlens::loaded_model& m) {
    mechlens::validate_weights(m.config, m.weights);  // throws shape_error, which a loader must never let through
    mechlens::decode_all_floats(m.weights);  // quantised matrices kept as blocks: their floats, decoded on demand
    const mechlens::model_weights& w = m.weights;
    double sum = touch(w.token_embedding) + touch(w.unembed) + touch(w.final_norm);
    for (const mechlens::layer_weights& l : w.layers)
        sum += touch(l.attn_norm) + touch(l.w_q) + touch(l.w_k) + touch(l.w_v) + touch(l.w_o) + touch(l.mlp_norm) +
               touch(l.w_gate) + touch(l.w_up) + touch(l.w_down);
    return sum;
}

/// Notes a documented rejection; prints its message when MECHLENS_FUZZ_VERBOSE is set (to check seeds by hand).
inline void rejected(const std::exception& e) {
    static const bool verbose = std::getenv("MECHLENS_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "rejected: %s\n", e.what());
}

/// Keeps `value` alive so the reads that made it are not optimised away.
template <class T>
void keep(const T& value) {
    asm volatile("" : : "g"(&value) : "memory");
}

}  // namespace mechlens_fuzz
