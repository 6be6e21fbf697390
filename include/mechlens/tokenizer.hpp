#pragma once
/// @file
/// Tokenizers: score-driven BPE over llama2.c and GGUF vocabularies.

#include "mechlens/tokenizer/vocabulary.hpp"
#include "mechlens/tokenizer/byte_piece.hpp"
#include "mechlens/tokenizer/llama2c_vocab.hpp"
#include "mechlens/tokenizer/bpe.hpp"
