#pragma once
// The documents the SAE commands (harvest, sae eval/dashboard, sae train, transcoder train) read: --text files,
// tokenized, or, without --text, stories sampled from the model.

#include <mechlens/mechlens.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "arguments.hpp"
#include "common.hpp"

namespace mechlens_cli {

/// The --text files as documents, tokenized by `tokenizer` (SentencePiece without BOS per document; GPT-2 with
/// <|endoftext|> as its special token), or, when `texts` is empty, stories sampled from `model` (BOS `bos`, EOS the
/// tokenizer's, `story` giving seed and length). `tokenizer` and `model` must outlive the source. Throws usage_error
/// with `no_bos` when stories are needed and there is no BOS.
inline std::unique_ptr<mechlens::document_source> open_documents(const mechlens::transformer& model,
                                                                  const std::vector<std::string>& texts,
                                                                  const std::optional<text_tokenizer>& tokenizer,
                                                                  std::int32_t bos, mechlens::story_options story,
                                                                  const char* no_bos) {
    if (!texts.empty()) {
        std::vector<std::filesystem::path> files(texts.begin(), texts.end());
        const text_tokenizer& t = *tokenizer;
        return std::make_unique<mechlens::text_documents>(files, [&t](std::string_view text) {
            if (const auto* sentencepiece = std::get_if<mechlens::bpe_tokenizer>(&t.get()))
                return sentencepiece->encode(text, false);
            return std::get<mechlens::gpt2_tokenizer>(t.get()).encode(text, true);
        });
    }
    if (bos < 0) throw usage_error(no_bos);
    story.bos = bos;
    story.eos = tokenizer ? tokenizer->eos_id() : -1;
    return std::make_unique<mechlens::sampled_stories>(model, story);
}

}  // namespace mechlens_cli
