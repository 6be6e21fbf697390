#pragma once
/// @file
/// Tokenizers: score-driven BPE over llama2.c and GGUF vocabularies.

#include "mechlens/tokenizer/vocabulary.hpp"
