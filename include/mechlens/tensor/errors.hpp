#pragma once
/// @file
/// Exception types shared by the whole library.

#include <stdexcept>
#include <string>

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Thrown when a tensor's shape does not match what an operation needs.
class shape_error : public std::invalid_argument {
public:
    /// Builds the error with a human-readable message.
    explicit shape_error(const std::string& message) : std::invalid_argument(message) {}
};

/// Thrown when a model, tokenizer or data file is malformed or unsupported; the message names the file.
class format_error : public std::runtime_error {
public:
    /// Builds the error with a human-readable message.
    explicit format_error(const std::string& message) : std::runtime_error(message) {}
};

MECHLENS_END_NAMESPACE
