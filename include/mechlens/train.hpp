#pragma once
/// @file
/// Training on the CPU: optimizer, learning-rate schedule, synthetic task data and checkpoints.

#include "mechlens/train/optimizer.hpp"
#include "mechlens/train/schedule.hpp"
#include "mechlens/train/data.hpp"
#include "mechlens/train/checkpoint.hpp"
#include "mechlens/train/trainer.hpp"
