#pragma once
/// @file
/// Tokenizers: score-driven BPE over llama2.c and GGUF vocabularies, and GPT-2's byte-level BPE over vocab.json +
/// merges.txt, tokenizer.json and GGUF vocabularies.

#include "mechlens/tokenizer/vocabulary.hpp"
#include "mechlens/tokenizer/byte_piece.hpp"
#include "mechlens/tokenizer/llama2c_vocab.hpp"
#include "mechlens/tokenizer/bpe.hpp"
#include "mechlens/tokenizer/unicode_categories.hpp"
#include "mechlens/tokenizer/gpt2_pretokenize.hpp"
#include "mechlens/tokenizer/gpt2_bpe.hpp"
#include "mechlens/tokenizer/gpt2_files.hpp"
