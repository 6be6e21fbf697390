#pragma once
/// @file
/// The whole of mechlens: include this one header (or the generated single_include/mechlens/mechlens.hpp).

#include "mechlens/tensor.hpp"
#include "mechlens/kernels.hpp"
#include "mechlens/tokenizer.hpp"
#include "mechlens/hooks.hpp"
#include "mechlens/model.hpp"
#include "mechlens/io.hpp"
#include "mechlens/grad.hpp"
#include "mechlens/train.hpp"
#include "mechlens/attribution.hpp"
#include "mechlens/sae.hpp"
#include "mechlens/medicine.hpp"
#include "mechlens/report.hpp"
