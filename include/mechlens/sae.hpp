#pragma once
/// @file
/// Sparse autoencoders spliced into the forward and backward passes (their latents are extension sites).
#include "mechlens/sae/sparse_autoencoder.hpp"
