#pragma once
/// @file
/// Reading a harvest back (sae/harvest.hpp): batches of rows of one site, in shard order, with one shard in memory at
/// a time, for SAE training.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "mechlens/io/safetensors.hpp"
#include "mechlens/sae/harvest.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Iterates the rows of one harvested site in batches: rows of shard 0, then shard 1, ...; a batch may span two
/// shards. Holds one shard in memory.
class harvest_reader {
public:
    /// Opens the harvest in `directory` at the site named `hook` (`NAME` or `NAME:head=H`, as harvested); an empty
    /// name picks the first site. Throws format_error for a bad manifest, std::invalid_argument for a site the
    /// harvest does not hold (naming the ones it does).
    explicit harvest_reader(std::filesystem::path directory, std::string_view hook = {})
        : directory_(std::move(directory)), manifest_(read_harvest_manifest(directory_)) {
        std::string held;
        for (std::size_t i = 0; i < manifest_.sites.size(); ++i) {
            const harvest_site_record& s = manifest_.sites[i];
            std::string name = s.hook_name;
            if (s.head >= 0) {
                name += ":head=";
                name += std::to_string(s.head);
            }
            if (hook.empty() || hook == name) {
                site_ = i;
                return;
            }
            if (!held.empty()) held += ", ";
            held += name;
        }
        throw std::invalid_argument("harvest_reader: " + directory_.string() + " holds no site '" +
                                    std::string(hook) + "' (it holds " + held + ")");
    }

    /// The harvest's manifest.
    [[nodiscard]] const harvest_manifest& manifest() const noexcept { return manifest_; }
    /// Floats per row.
    [[nodiscard]] index_t width() const noexcept { return manifest_.sites[site_].width; }
    /// Rows in every shard together.
    [[nodiscard]] std::int64_t rows() const noexcept { return manifest_.rows(); }

    /// Reads up to `max_rows` next rows into `out`, resized to (rows read, width) row-major; returns the rows read,
    /// 0 at the end. Throws format_error when a shard file is missing or does not match the manifest.
    index_t next(std::vector<float>& out, index_t max_rows) {
        if (max_rows <= 0) throw std::invalid_argument("harvest_reader::next: max_rows must be positive");
        const index_t width = this->width();
        out.clear();
        index_t got = 0;
        while (got < max_rows) {
            if (row_ >= loaded_rows_) {
                if (shard_ >= manifest_.shards.size()) break;
                load(shard_++);
                continue;
            }
            const index_t take = std::min(max_rows - got, loaded_rows_ - row_);
            const auto first = static_cast<std::ptrdiff_t>(row_ * width);
            out.insert(out.end(), values_.begin() + first, values_.begin() + first + take * width);
            row_ += take;
            got += take;
        }
        return got;
    }
    /// Starts again from the first row.
    void rewind() noexcept {
        shard_ = 0;
        row_ = loaded_rows_ = 0;
    }

private:
    void load(std::size_t shard) {
        const std::filesystem::path path = directory_ / manifest_.shard_path(site_, shard);
        safetensors_file file = read_safetensors(path);
        const index_t rows = manifest_.shards[shard].rows;
        if (file.tensors.size() != 1 || file.tensors[0].name != "activations" ||
            file.tensors[0].shape != std::vector<index_t>{rows, width()})
            detail::format_fail(path.string(), "expected one tensor 'activations' of shape (" + std::to_string(rows) +
                                                   ", " + std::to_string(width()) + ") as the manifest says");
        values_ = std::move(file.tensors[0].values);
        loaded_rows_ = rows;
        row_ = 0;
    }

    std::filesystem::path directory_;
    harvest_manifest manifest_;
    std::size_t site_ = 0;
    std::size_t shard_ = 0;     // next shard to load
    std::vector<float> values_; // the loaded shard, (loaded_rows_, width)
    index_t loaded_rows_ = 0;
    index_t row_ = 0;           // next row of the loaded shard
};

MECHLENS_END_NAMESPACE
