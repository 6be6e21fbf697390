#pragma once
/// @file
/// Loaders and writers: llama2.c .bin, GGUF, .npy.
