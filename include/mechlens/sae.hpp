#pragma once
/// @file
/// Sparse autoencoders spliced into the forward and backward passes (their latents are extension sites), and the
/// harvesting of activations to train them on (sharded safetensors, resumable, read back in batches).
#include "mechlens/sae/harvest.hpp"
#include "mechlens/sae/harvest_reader.hpp"
#include "mechlens/sae/harvest_source.hpp"
#include "mechlens/sae/sparse_autoencoder.hpp"
