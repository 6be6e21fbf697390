#pragma once
/// @file
/// What a transcoder is: an SAE's parameters plus an optional affine skip from its input to its output.

#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/sae/definition.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A transcoder: an SAE that reads one activation (MLP input) and reconstructs another (MLP output), with an optional affine skip.
template <class T> struct basic_transcoder_weights { basic_sae_weights<T> sae; std::vector<T> w_skip; ///< (d_in, d_in) row-major or empty; output = acts W_dec + b_dec + x W_skip
};
using transcoder_weights = basic_transcoder_weights<float>;

MECHLENS_END_NAMESPACE
