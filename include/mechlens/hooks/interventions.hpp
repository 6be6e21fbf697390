#pragma once
/// @file
/// Intervention policies: patch, ablate, steer, compose, dynamic hooks.
