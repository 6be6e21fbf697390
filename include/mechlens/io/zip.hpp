#pragma once
/// @file
/// A read-only, bounds-checked reader of ZIP archives held in memory (usually a mapped file): the end of central
/// directory record (and its ZIP64 form), the central directory and the local headers. Only stored entries
/// (method 0, no compression, as `torch.save` writes them) can be read; each read checks the entry's CRC-32.
/// Facts from PKWARE's APPNOTE.TXT: all integers are little-endian; sizes and offsets that do not fit 32 bits are
/// 0xFFFFFFFF in the record and found in the ZIP64 extra field (id 0x0001) or the ZIP64 end record.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/io/byte_reader.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One entry of a ZIP archive, as its central directory and local header describe it.
struct zip_entry {
    std::string name;                ///< Path inside the archive ('/'-separated).
    std::uint16_t method = 0;        ///< Compression method (0 = stored; only those can be read).
    std::uint16_t flags = 0;         ///< General purpose flags (bit 0: encrypted).
    std::uint32_t crc32 = 0;         ///< CRC-32 of the uncompressed bytes.
    std::uint64_t compressed_size = 0;    ///< Bytes stored in the archive.
    std::uint64_t uncompressed_size = 0;  ///< Bytes after decompression.
    std::uint64_t data_offset = 0;   ///< Offset of the entry's first data byte in the archive (past the local header).
};

namespace detail {

/// The CRC-32 table of the reflected polynomial 0xEDB88320 (ZIP, gzip, PNG).
inline constexpr std::array<std::uint32_t, 256> crc32_table = [] {
    std::array<std::uint32_t, 256> table{};
    for (std::uint32_t i = 0; i < 256; ++i) {
        std::uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    return table;
}();

/// CRC-32 (as ZIP stores it) of `bytes`.
inline std::uint32_t crc32(std::span<const std::byte> bytes) noexcept {
    std::uint32_t c = 0xFFFFFFFFu;
    for (const std::byte b : bytes) c = crc32_table[(c ^ static_cast<std::uint32_t>(b)) & 0xFFu] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/// `text` cut to `limit` bytes with control characters shown as '?', so a hostile name keeps an error on one line.
inline std::string printable(std::string_view text, std::size_t limit = 200) {
    std::string out(text.substr(0, limit));
    for (char& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    if (text.size() > limit) out += "...";
    return out;
}

inline constexpr std::uint32_t zip_local_signature = 0x04034b50u;    ///< "PK\3\4"
inline constexpr std::uint32_t zip_central_signature = 0x02014b50u;  ///< "PK\1\2"
inline constexpr std::uint32_t zip_end_signature = 0x06054b50u;      ///< "PK\5\6"
inline constexpr std::uint32_t zip64_end_signature = 0x06064b50u;    ///< "PK\6\6"
inline constexpr std::uint32_t zip64_locator_signature = 0x07064b50u;  ///< "PK\6\7"

}  // namespace detail

/// A ZIP archive over bytes it does not own (they must outlive it). Construction reads and checks the whole
/// directory: every offset and size lies inside the bytes, local headers agree with the central directory, names
/// are unique. Any violation throws format_error "`where`: ...".
class zip_reader {
public:
    /// Reads the directory of the archive in `bytes`; `where` (usually the file path) prefixes every error.
    zip_reader(std::span<const std::byte> bytes, std::string where) : bytes_(bytes), where_(std::move(where)) {
        read_directory();
    }

    zip_reader(const zip_reader&) = delete;             ///< find() indexes the entries by address.
    zip_reader& operator=(const zip_reader&) = delete;  ///< find() indexes the entries by address.

    /// The entries in central directory order.
    [[nodiscard]] const std::vector<zip_entry>& entries() const noexcept { return entries_; }
    /// The error prefix (usually the file path).
    [[nodiscard]] const std::string& where() const noexcept { return where_; }

    /// The entry named `name`, or null (a binary search: archives may hold many entries).
    [[nodiscard]] const zip_entry* find(std::string_view name) const noexcept {
        const auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                                         [](const zip_entry* e, std::string_view n) { return e->name < n; });
        return it != by_name_.end() && (*it)->name == name ? *it : nullptr;
    }

    /// The bytes of a stored entry after checking its CRC-32; format_error for a compressed or encrypted entry or a
    /// CRC mismatch.
    [[nodiscard]] std::span<const std::byte> read(const zip_entry& e) const {
        const std::string what = "entry '" + detail::printable(e.name) + "'";
        if (e.flags & 1u) detail::format_fail(where_, what + " is encrypted; encrypted entries are not supported");
        if (e.method != 0)
            detail::format_fail(where_, what + " is compressed (method " + std::to_string(e.method) +
                                            "); only stored (method 0) entries are supported");
        const std::span<const std::byte> data =
            bytes_.subspan(static_cast<std::size_t>(e.data_offset), static_cast<std::size_t>(e.compressed_size));
        const std::uint32_t crc = detail::crc32(data);
        if (crc != e.crc32)
            detail::format_fail(where_, what + " fails its CRC-32 check (stored " + hex(e.crc32) + ", computed " +
                                            hex(crc) + ")");
        return data;
    }

private:
    static std::string hex(std::uint32_t v) {
        static constexpr char digits[] = "0123456789abcdef";
        std::string s = "0x";
        for (int shift = 28; shift >= 0; shift -= 4) s += digits[(v >> shift) & 0xFu];
        return s;
    }

    [[noreturn]] void fail(const std::string& problem) const { detail::format_fail(where_, problem); }

    detail::byte_reader reader_at(std::uint64_t offset, std::string_view what) const {
        detail::byte_reader r(bytes_.data(), bytes_.size(), where_);
        r.seek(offset, what);
        return r;
    }

    // The end record is the last 22 bytes plus a comment of up to 65535 bytes; scan backwards for a signature whose
    // comment length reaches exactly the end of the bytes (a signature inside the comment does not).
    std::uint64_t find_end_record() const {
        const std::size_t n = bytes_.size();
        if (n < 22) fail("not a ZIP archive (too short for an end of central directory record)");
        const auto u16 = [&](std::size_t at) {
            return static_cast<std::uint16_t>(static_cast<unsigned>(bytes_[at]) |
                                              (static_cast<unsigned>(bytes_[at + 1]) << 8));
        };
        const auto u32 = [&](std::size_t at) {
            return static_cast<std::uint32_t>(u16(at)) | (static_cast<std::uint32_t>(u16(at + 2)) << 16);
        };
        const std::size_t lowest = n - 22 > 65535 ? n - 22 - 65535 : 0;
        for (std::size_t pos = n - 22 + 1; pos-- > lowest;)
            if (u32(pos) == detail::zip_end_signature && pos + 22 + u16(pos + 20) == n) return pos;
        fail("not a ZIP archive (no end of central directory record)");
    }

    void read_directory() {
        const std::uint64_t end = find_end_record();
        detail::byte_reader r = reader_at(end + 4, "end of central directory");
        const auto disk = r.read<std::uint16_t>("disk number");
        const auto cd_disk = r.read<std::uint16_t>("central directory disk");
        const auto disk_entries = r.read<std::uint16_t>("entries on this disk");
        std::uint64_t count = r.read<std::uint16_t>("entry count");
        std::uint64_t cd_size = r.read<std::uint32_t>("central directory size");
        std::uint64_t cd_offset = r.read<std::uint32_t>("central directory offset");
        if (disk != 0 || cd_disk != 0 || disk_entries != count) fail("multi-disk ZIP archives are not supported");

        // A ZIP64 locator, when present, sits just before the end record and points to the ZIP64 end record.
        std::uint64_t directory_end = end;
        if (end >= 20) {
            detail::byte_reader l = reader_at(end - 20, "ZIP64 end of central directory locator");
            if (l.read<std::uint32_t>("signature") == detail::zip64_locator_signature) {
                const auto locator_disk = l.read<std::uint32_t>("ZIP64 end record disk");
                const auto record = l.read<std::uint64_t>("ZIP64 end record offset");
                const auto disks = l.read<std::uint32_t>("disk count");
                if (locator_disk != 0 || disks > 1) fail("multi-disk ZIP archives are not supported");
                if (record > end - 20) fail("the ZIP64 end record offset lies past its locator");
                detail::byte_reader z = reader_at(record, "ZIP64 end of central directory record");
                if (z.read<std::uint32_t>("signature") != detail::zip64_end_signature)
                    fail("no ZIP64 end of central directory record where its locator points");
                const auto record_size = z.read<std::uint64_t>("ZIP64 end record size");
                if (record_size < 44 || record_size > end - 20 - record - 12)
                    fail("the ZIP64 end record claims " + std::to_string(record_size) + " bytes, which do not fit");
                z.read<std::uint16_t>("version made by");
                z.read<std::uint16_t>("version needed");
                const auto disk64 = z.read<std::uint32_t>("disk number");
                const auto cd_disk64 = z.read<std::uint32_t>("central directory disk");
                const auto disk_entries64 = z.read<std::uint64_t>("entries on this disk");
                count = z.read<std::uint64_t>("entry count");
                cd_size = z.read<std::uint64_t>("central directory size");
                cd_offset = z.read<std::uint64_t>("central directory offset");
                if (disk64 != 0 || cd_disk64 != 0 || disk_entries64 != count)
                    fail("multi-disk ZIP archives are not supported");
                directory_end = record;
            }
        }
        if (cd_offset > directory_end || cd_size > directory_end - cd_offset)
            fail("the central directory (offset " + std::to_string(cd_offset) + ", " + std::to_string(cd_size) +
                 " bytes) does not end before the end record at " + std::to_string(directory_end));
        if (count > cd_size / 46)  // a central directory header has at least 46 bytes
            fail("the end record claims " + std::to_string(count) + " entries, more than " +
                 std::to_string(cd_size) + " directory bytes can hold");

        entries_.reserve(static_cast<std::size_t>(count));
        detail::byte_reader c(bytes_.data(), static_cast<std::size_t>(cd_offset + cd_size), where_);
        c.seek(cd_offset, "central directory");
        for (std::uint64_t i = 0; i < count; ++i) entries_.push_back(read_central_entry(c, cd_offset));
        if (c.remaining() != 0) fail("the central directory has bytes after its last entry");

        by_name_.reserve(entries_.size());
        for (const zip_entry& e : entries_) by_name_.push_back(&e);
        std::sort(by_name_.begin(), by_name_.end(),
                  [](const zip_entry* a, const zip_entry* b) { return a->name < b->name; });
        const auto twin = std::adjacent_find(by_name_.begin(), by_name_.end(),
                                             [](const zip_entry* a, const zip_entry* b) { return a->name == b->name; });
        if (twin != by_name_.end())
            fail("the archive holds two entries named '" + detail::printable((*twin)->name) + "'");
    }

    zip_entry read_central_entry(detail::byte_reader& c, std::uint64_t data_limit) const {
        if (c.read<std::uint32_t>("central directory signature") != detail::zip_central_signature)
            fail("bad central directory entry signature at offset " + std::to_string(c.position() - 4));
        zip_entry e;
        c.read<std::uint16_t>("version made by");
        c.read<std::uint16_t>("version needed");
        e.flags = c.read<std::uint16_t>("flags");
        e.method = c.read<std::uint16_t>("method");
        c.read<std::uint32_t>("modification time");
        e.crc32 = c.read<std::uint32_t>("crc-32");
        std::uint64_t compressed = c.read<std::uint32_t>("compressed size");
        std::uint64_t uncompressed = c.read<std::uint32_t>("uncompressed size");
        const auto name_length = c.read<std::uint16_t>("name length");
        const auto extra_length = c.read<std::uint16_t>("extra field length");
        const auto comment_length = c.read<std::uint16_t>("comment length");
        std::uint64_t disk = c.read<std::uint16_t>("disk number");
        c.read<std::uint16_t>("internal attributes");
        c.read<std::uint32_t>("external attributes");
        std::uint64_t local = c.read<std::uint32_t>("local header offset");
        e.name = c.read_string(name_length, "entry name");
        const std::string what = "entry '" + detail::printable(e.name) + "'";

        // ZIP64 extended information: 8-byte values for exactly the fields saturated above, in this order.
        detail::byte_reader x(c.take(extra_length, "extra field"), extra_length, where_);
        while (x.remaining() >= 4) {
            const auto id = x.read<std::uint16_t>("extra field id");
            const auto size = x.read<std::uint16_t>("extra field size");
            detail::byte_reader f(x.take(size, "extra field"), size, where_ + ": " + what);
            if (id != 0x0001) continue;
            if (uncompressed == 0xFFFFFFFFu) uncompressed = f.read<std::uint64_t>("ZIP64 uncompressed size");
            if (compressed == 0xFFFFFFFFu) compressed = f.read<std::uint64_t>("ZIP64 compressed size");
            if (local == 0xFFFFFFFFu) local = f.read<std::uint64_t>("ZIP64 local header offset");
            if (disk == 0xFFFFu) disk = f.read<std::uint32_t>("ZIP64 disk number");
        }
        c.take(comment_length, "entry comment");
        if (disk != 0) fail(what + " lies on another disk; multi-disk archives are not supported");
        e.compressed_size = compressed;
        e.uncompressed_size = uncompressed;
        if (e.method == 0 && compressed != uncompressed)
            fail(what + " is stored but its compressed and uncompressed sizes differ");

        // The local header repeats the name; its extra field (torch pads with it to align the data) may differ.
        if (local > data_limit) fail(what + ": local header offset " + std::to_string(local) + " is past the data");
        detail::byte_reader h(bytes_.data(), static_cast<std::size_t>(data_limit), where_);
        h.seek(local, what + " local header");
        if (h.read<std::uint32_t>("local header signature") != detail::zip_local_signature)
            fail(what + ": bad local header signature at offset " + std::to_string(local));
        h.read<std::uint16_t>("version needed");
        h.read<std::uint16_t>("flags");
        if (h.read<std::uint16_t>("method") != e.method) fail(what + ": local header and directory disagree on method");
        h.take(16, "local header times, crc-32 and sizes");  // with flag bit 3 these are zero; the directory rules
        const auto local_name_length = h.read<std::uint16_t>("local name length");
        const auto local_extra_length = h.read<std::uint16_t>("local extra field length");
        if (h.read_string(local_name_length, "local name") != e.name)
            fail(what + ": the local header names another entry");
        h.take(local_extra_length, "local extra field");
        e.data_offset = h.position();
        if (e.compressed_size > h.remaining())
            fail(what + " claims " + std::to_string(e.compressed_size) + " bytes at offset " +
                 std::to_string(e.data_offset) + ", past the start of the central directory at " +
                 std::to_string(data_limit));
        return e;
    }

    std::span<const std::byte> bytes_;
    std::string where_;
    std::vector<zip_entry> entries_;
    std::vector<const zip_entry*> by_name_;  // sorted by name, for find()
};

MECHLENS_END_NAMESPACE
