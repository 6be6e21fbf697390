#pragma once
/// @file
/// Loaders and writers: memory-mapped llama2.c .bin and GGUF models, training checkpoints (.safetensors) as models,
/// GGUF vocabularies, GGUF models quantised to Q8_0, .npy arrays, safetensors files, JSON documents,
/// PyTorch state dicts (`torch.save` zip archives), TransformerLens and Hugging Face model folders.

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/checkpoint_format.hpp"
#include "mechlens/io/ggml_quants.hpp"
#include "mechlens/io/gguf.hpp"
#include "mechlens/io/gguf_model.hpp"
#include "mechlens/io/gguf_quantize.hpp"
#include "mechlens/io/gguf_writer.hpp"
#include "mechlens/io/huggingface.hpp"
#include "mechlens/io/json.hpp"
#include "mechlens/io/llama2c.hpp"
#include "mechlens/io/transformerlens.hpp"
#include "mechlens/io/load.hpp"
#include "mechlens/io/loader_storage.hpp"
#include "mechlens/io/mapped_file.hpp"
#include "mechlens/io/npy.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/io/torch_pickle.hpp"
#include "mechlens/io/torch_state_dict.hpp"
#include "mechlens/io/zip.hpp"
