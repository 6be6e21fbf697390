#pragma once
/// @file
/// Token streams for harvesting activations: documents (UTF-8 text files tokenized by a caller's tokenizer, or
/// stories sampled from the model itself) packed into fixed-length contexts as SAELens packs its token streams
/// (`concat_and_batch_sequences` with begin_batch_token = sequence_separator_token = BOS, begin_sequence_token =
/// none): every context starts with BOS, documents inside a context are separated by BOS, and a document that does
/// not fit continues in the next context (after that context's BOS). The packer's state at a context boundary is a
/// `harvest_cursor` (document, offset), which is what a harvest's manifest records so it can resume.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/model/generate.hpp"
#include "mechlens/model/transformer.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A stream of documents (token sequences without BOS), read in order; skipping must not need the skipped text's
/// tokens, so a resumed harvest gets back to its place cheaply.
class document_source {
public:
    virtual ~document_source() = default;
    /// The next document's tokens into `tokens`; false (and `tokens` untouched) when the stream has ended.
    virtual bool next(std::vector<std::int32_t>& tokens) = 0;
    /// Skips `documents` documents (fewer when the stream ends first) without tokenizing them.
    virtual void skip(std::uint64_t documents) = 0;
    /// One line saying where the documents come from (recorded in the manifest).
    [[nodiscard]] virtual std::string describe() const = 0;
};

/// Tokenizes a document's text without BOS (the packer adds BOS where SAELens does).
using text_encoder = std::function<std::vector<std::int32_t>(std::string_view text)>;

/// The line that separates documents inside a text file (TinyStories's text dumps use it between stories).
inline constexpr std::string_view document_separator_line = "<|endoftext|>";

/// Documents from UTF-8 text files, in order: each file is one document, or several separated by lines holding
/// only `<|endoftext|>`. Files are read a line at a time, so memory holds one document, never a whole file.
class text_documents final : public document_source {
public:
    /// Reads `files` in order with `encode`; throws std::invalid_argument naming the first file that is missing
    /// or unreadable, and when `files` is empty.
    text_documents(std::vector<std::filesystem::path> files, text_encoder encode)
        : files_(std::move(files)), encode_(std::move(encode)) {
        if (files_.empty()) throw std::invalid_argument("text_documents: no text files given");
        for (const auto& f : files_) {
            std::ifstream probe(f, std::ios::binary);
            if (!std::filesystem::is_regular_file(f) || !probe)
                throw std::invalid_argument("text file " + f.string() + " does not exist or cannot be read");
        }
    }

    bool next(std::vector<std::int32_t>& tokens) override {
        std::string text;
        if (!read_document(&text)) return false;
        tokens = encode_(text);
        return true;
    }
    void skip(std::uint64_t documents) override {
        for (std::uint64_t i = 0; i < documents; ++i)
            if (!read_document(nullptr)) return;
    }
    [[nodiscard]] std::string describe() const override {
        std::string out = "text:";
        for (const auto& f : files_) {
            out += ' ';
            out += f.filename().string();
        }
        return out;
    }

private:
    /// The next document's text into `text` (dropped when null); false at the end of the last file.
    bool read_document(std::string* text) {
        while (file_index_ < files_.size()) {
            if (!stream_.is_open()) {
                stream_.open(files_[file_index_], std::ios::binary);
                if (!stream_)
                    throw std::runtime_error("text file " + files_[file_index_].string() + " cannot be read");
            }
            std::string line;
            while (std::getline(stream_, line)) {
                if (!line.empty() && line.back() == '\r') line.pop_back();
                if (line == document_separator_line) {
                    if (text != nullptr && !text->empty()) text->pop_back();  // the newline before the separator
                    return true;
                }
                if (text != nullptr) {
                    text->append(line);
                    text->push_back('\n');
                }
            }
            // End of file: what was read is the file's last document (an empty file is one empty document).
            stream_.close();
            stream_.clear();
            ++file_index_;
            if (text != nullptr && !text->empty() && text->back() == '\n') text->pop_back();
            return true;
        }
        return false;
    }

    std::vector<std::filesystem::path> files_;
    text_encoder encode_;
    std::size_t file_index_ = 0;
    std::ifstream stream_;
};

/// How sampled_stories samples.
struct story_options {
    std::uint64_t seed = 0;     ///< Story i is sampled with a generator seeded from (seed, i).
    std::int32_t bos = 1;       ///< The prompt of every story (one token), and a stop token.
    std::int32_t eos = 2;       ///< Stops a story (-1: none).
    index_t max_length = 256;   ///< Longest story, in sampled tokens (also bounded by n_ctx - 1).
};

/// Documents sampled from the model itself at temperature 1 (no top-p), each from a lone BOS until EOS, BOS or
/// max_length tokens. Story i depends only on (seed, i), so skipping costs nothing and a resumed harvest sees the
/// same stories. Harvesting from a model's own samples measures the model on its own distribution, not on text.
class sampled_stories final : public document_source {
public:
    /// Samples from `model` (kept by reference: it must outlive the source); throws std::invalid_argument for a BOS
    /// outside the vocabulary or a non-positive max_length.
    sampled_stories(const transformer& model, story_options options) : model_(model), options_(options) {
        if (options.bos < 0 || options.bos >= model.config().d_vocab)
            throw std::invalid_argument("sampled_stories: BOS " + std::to_string(options.bos) +
                                        " is outside the vocabulary of " + std::to_string(model.config().d_vocab));
        if (options.max_length <= 0) throw std::invalid_argument("sampled_stories: max_length must be positive");
    }

    bool next(std::vector<std::int32_t>& tokens) override {
        generation_options g;
        g.max_new_tokens = std::min(options_.max_length, model_.config().n_ctx - 1);
        g.sampling.temperature = 1.0f;
        g.sampling.seed = random_generator(options_.seed ^ (story_ * 0x9e3779b97f4a7c15ULL)).next();
        g.stop_at_eos = options_.eos >= 0;
        g.eos_id = options_.eos;
        g.stop_at_bos = true;
        g.bos_id = options_.bos;
        const std::int32_t prompt[] = {options_.bos};
        tokens = generate(model_, std::span<const std::int32_t>(prompt), g, [](std::int32_t) {});
        ++story_;
        return true;
    }
    void skip(std::uint64_t documents) override { story_ += documents; }
    [[nodiscard]] std::string describe() const override {
        return "sampled from the model: temperature 1, seed " + std::to_string(options_.seed) + ", at most " +
               std::to_string(options_.max_length) + " tokens per story";
    }

private:
    const transformer& model_;
    story_options options_;
    std::uint64_t story_ = 0;
};

/// Where a packed token stream stands at a context boundary: the next context starts at token `offset` of
/// document `document` (0-based, counting every document the source produced, empty ones too).
struct harvest_cursor {
    std::uint64_t document = 0;  ///< Index of the document the next context starts in.
    std::uint64_t offset = 0;    ///< Tokens of that document already used by earlier contexts.
};

/// Packs a document_source into contexts of `length` tokens, SAELens's way (see the file comment). `bos` < 0 packs
/// documents back to back without any BOS.
class context_packer {
public:
    /// Packs `source` (kept by reference) into contexts of `length` tokens, starting at `from`.
    context_packer(document_source& source, index_t length, std::int32_t bos, harvest_cursor from = {})
        : source_(source), length_(length), bos_(bos) {
        if (length <= 0) throw std::invalid_argument("context_packer: the context length must be positive");
        source_.skip(from.document);
        next_document_ = from.document;
        resume_offset_ = from.offset;
    }

    /// Fills `context` with the next `length` tokens; false when the source ended first (the incomplete context is
    /// dropped, as SAELens drops it).
    bool next(std::span<std::int32_t> context) {
        if (static_cast<index_t>(context.size()) != length_)
            throw std::invalid_argument("context_packer::next: the context must hold the context length");
        std::size_t filled = 0;
        const std::size_t length = context.size();
        while (filled < length) {
            if (!has_document_) {
                if (!source_.next(document_)) return false;
                has_document_ = true;
                current_ = next_document_++;
                offset_ = static_cast<std::size_t>(std::min<std::uint64_t>(resume_offset_, document_.size()));
                resume_offset_ = 0;
            }
            if (offset_ >= document_.size()) {
                has_document_ = false;
                continue;
            }
            const std::int32_t first = document_[offset_];
            // A context starts with BOS; a document starting inside a context is preceded by BOS; neither is added
            // when the document's next token is BOS already.
            if (bos_ >= 0 && first != bos_ && (filled == 0 || offset_ == 0)) context[filled++] = bos_;
            const std::size_t take = std::min(length - filled, document_.size() - offset_);
            std::copy_n(document_.begin() + static_cast<std::ptrdiff_t>(offset_), take,
                        context.begin() + static_cast<std::ptrdiff_t>(filled));
            filled += take;
            offset_ += take;
        }
        return true;
    }

    /// The state at the current context boundary: where the next context starts.
    [[nodiscard]] harvest_cursor cursor() const noexcept {
        if (has_document_ && offset_ < document_.size()) return {current_, offset_};
        return {next_document_, resume_offset_};
    }

private:
    document_source& source_;
    index_t length_;
    std::int32_t bos_;
    std::vector<std::int32_t> document_;
    bool has_document_ = false;
    std::uint64_t current_ = 0;        // index of document_
    std::uint64_t next_document_ = 0;  // index of the next document the source yields
    std::size_t offset_ = 0;
    std::uint64_t resume_offset_ = 0;  // offset into the first document read after a resume
};

MECHLENS_END_NAMESPACE
