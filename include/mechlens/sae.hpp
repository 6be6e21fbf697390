#pragma once
/// @file
/// Sparse autoencoders (SAELens's standard, topk, jumprelu and batchtopk): their definition, forward steps,
/// training losses with exact gradients, the splice into the forward and backward passes (latents are extension
/// sites), transcoders spliced over MLPs and circuit-tracer's transcoder files, SAELens folders, evaluation at the
/// hook site (L0, FVU, CE recovered, dead and dense latents), feature dashboards (top contexts, activation
/// histograms, logit weights, as one HTML page), and the harvesting of activations to train them on (sharded
/// safetensors, resumable, read back in batches), and training SAEs and transcoders with SAELens's semantics.
#include "mechlens/sae/circuit_tracer_format.hpp"
#include "mechlens/sae/dashboard.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/evaluate.hpp"
#include "mechlens/sae/forward.hpp"
#include "mechlens/sae/harvest.hpp"
#include "mechlens/sae/harvest_reader.hpp"
#include "mechlens/sae/harvest_source.hpp"
#include "mechlens/sae/loss.hpp"
#include "mechlens/sae/saelens_format.hpp"
#include "mechlens/sae/sparse_autoencoder.hpp"
#include "mechlens/sae/toy_superposition.hpp"
#include "mechlens/sae/training.hpp"
#include "mechlens/sae/training_step.hpp"
#include "mechlens/sae/transcoder.hpp"
#include "mechlens/sae/transcoder_definition.hpp"
