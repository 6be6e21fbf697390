#pragma once
/// @file
/// A read-only memory mapping of a whole file, so weights can be viewed in place instead of copied.

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define MECHLENS_HAS_MMAP 1
#else
#include <fstream>
#include <vector>
#define MECHLENS_HAS_MMAP 0
#endif

MECHLENS_BEGIN_NAMESPACE

/// A whole file mapped read-only (MAP_PRIVATE, PROT_READ); move-only; unmapped on destruction.
///
/// Another process truncating the file while it is mapped makes later reads fault (SIGBUS): that is the price
/// of zero-copy loading, and the loaders only map files they then treat as read-only.
class mapped_file {
public:
    /// Maps `path`; throws format_error naming the file when it is missing, not a regular file, empty or unmappable.
    static std::shared_ptr<const mapped_file> open(const std::filesystem::path& path) {
        return std::make_shared<const mapped_file>(mapped_file(path));
    }

    /// Maps `path`; prefer open(), which shares the mapping with every view made from it.
    explicit mapped_file(const std::filesystem::path& path) : path_(path) { map(); }

    mapped_file(const mapped_file&) = delete;             ///< A mapping has one owner.
    mapped_file& operator=(const mapped_file&) = delete;  ///< A mapping has one owner.
    /// Takes over the mapping; `other` becomes empty.
    mapped_file(mapped_file&& other) noexcept
        : path_(std::move(other.path_)),
          data_(std::exchange(other.data_, nullptr)),
          size_(std::exchange(other.size_, 0))
#if !MECHLENS_HAS_MMAP
          ,
          buffer_(std::move(other.buffer_))
#endif
    {
    }
    /// Releases the current mapping and takes over `other`'s.
    mapped_file& operator=(mapped_file&& other) noexcept {
        if (this != &other) {
            unmap();
            path_ = std::move(other.path_);
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
#if !MECHLENS_HAS_MMAP
            buffer_ = std::move(other.buffer_);
#endif
        }
        return *this;
    }
    /// Unmaps the file.
    ~mapped_file() { unmap(); }

    /// First byte of the file (page-aligned), or null after a move.
    [[nodiscard]] const std::byte* data() const noexcept { return data_; }
    /// Size of the file in bytes.
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    /// The path the file was opened with.
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    /// True when the `bytes` bytes starting at `p` lie entirely inside the mapping.
    [[nodiscard]] bool contains(const void* p, std::size_t bytes) const noexcept {
        // Integer addresses: ordering pointers into different objects with < is unspecified.
        const auto begin = reinterpret_cast<std::uintptr_t>(data_), q = reinterpret_cast<std::uintptr_t>(p);
        if (data_ == nullptr || q < begin || q - begin > size_) return false;
        return bytes <= size_ - (q - begin);
    }

private:
    [[noreturn]] void fail(const std::string& problem) const { throw format_error(path_.string() + ": " + problem); }

#if MECHLENS_HAS_MMAP
    void map() {
        const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(std::string("cannot open: ") + std::strerror(errno));
        struct ::stat st {};
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            ::close(fd);
            fail(std::string("cannot stat: ") + std::strerror(err));
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            fail(S_ISDIR(st.st_mode) ? "is a directory, not a file" : "is not a regular file");
        }
        if (st.st_size <= 0) {
            ::close(fd);
            fail("empty file");  // mmap of 0 bytes is an error (EINVAL), and nothing could be read anyway
        }
        const auto bytes = static_cast<std::size_t>(st.st_size);
        void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        const int err = errno;
        ::close(fd);  // the mapping keeps its own reference to the file
        if (p == MAP_FAILED) fail(std::string("cannot mmap: ") + std::strerror(err));
        data_ = static_cast<const std::byte*>(p);
        size_ = bytes;
    }
    void unmap() noexcept {
        if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);  // NOLINT: munmap takes void*
        data_ = nullptr;
        size_ = 0;
    }
#else
    // Without POSIX mmap the file is read into memory; the interface and the error messages stay the same.
    void map() {
        std::error_code ec;
        if (!std::filesystem::exists(path_, ec)) fail("cannot open: no such file");
        if (std::filesystem::is_directory(path_, ec)) fail("is a directory, not a file");
        std::ifstream in(path_, std::ios::binary | std::ios::ate);
        if (!in) fail("cannot open");
        const auto end = in.tellg();
        if (end <= 0) fail("empty file");
        buffer_.resize(static_cast<std::size_t>(end));
        in.seekg(0);
        if (!in.read(reinterpret_cast<char*>(buffer_.data()), static_cast<std::streamsize>(buffer_.size())))
            fail("cannot read");
        data_ = buffer_.data();
        size_ = buffer_.size();
    }
    void unmap() noexcept {
        data_ = nullptr;
        size_ = 0;
    }
#endif

    std::filesystem::path path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
#if !MECHLENS_HAS_MMAP
    std::vector<std::byte> buffer_;
#endif
};

MECHLENS_END_NAMESPACE
