#pragma once
/// @file
/// Synthetic training data, reproducible from a seed: repeated random token sequences (where induction heads form)
/// and modular addition (where grokking happens), with the next-token targets and loss masks the loss expects.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/model/sampling.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The target of positions that predict nothing (the last position of a sequence).
inline constexpr std::int32_t ignore_target = -1;

/// Token ids with their next-token targets, as the language-model loss reads them: the logits at (b, t) are
/// scored against targets(b, t) = tokens(b, t + 1), weighted by loss_mask(b, t); the loss is
/// sum(loss_mask * cross_entropy) / sum(loss_mask). The last position has target ignore_target and weight 0.
struct token_batch {
    tensor<std::int32_t, 2> tokens;   ///< (batch, pos) input token ids.
    tensor<std::int32_t, 2> targets;  ///< (batch, pos) tokens shifted left by one; ignore_target at the end.
    tensor<float, 2> loss_mask;       ///< (batch, pos) 1 where the prediction counts in the loss, else 0.

    /// Number of sequences.
    [[nodiscard]] index_t batch() const noexcept { return tokens.extent(0); }
    /// Sequence length.
    [[nodiscard]] index_t positions() const noexcept { return tokens.extent(1); }
};

/// Targets and a loss mask for `tokens` (batch, pos): every position but the last predicts the next token.
inline token_batch next_token_batch(tensor<std::int32_t, 2> tokens) {
    const index_t batch = tokens.extent(0), pos = tokens.extent(1);
    token_batch out{std::move(tokens), tensor<std::int32_t, 2>({batch, pos}), tensor<float, 2>({batch, pos})};
    for (index_t b = 0; b < batch; ++b)
        for (index_t t = 0; t < pos; ++t) {
            const bool has_next = t + 1 < pos;
            out.targets(b, t) = has_next ? out.tokens(b, t + 1) : ignore_target;
            out.loss_mask(b, t) = has_next ? 1.0f : 0.0f;
        }
    return out;
}

namespace detail {
/// A uniform integer in [0, n) without modulo bias (rejection of the incomplete top block); n >= 1.
inline std::uint64_t uniform_below(random_generator& rng, std::uint64_t n) noexcept {
    const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % n;
    std::uint64_t x = rng.next();
    while (x >= limit) x = rng.next();
    return x % n;
}
}  // namespace detail

/// What repeated_random_tokens generates.
struct induction_options {
    index_t batch = 1;                ///< Number of sequences.
    index_t half_length = 0;          ///< n: length of the random half, repeated once.
    std::int32_t vocab = 0;           ///< Tokens are drawn from [first_token, vocab).
    std::int32_t first_token = 0;     ///< Lowest token drawn (e.g. to keep BOS and other special ids out).
    std::optional<std::int32_t> bos{};  ///< When set, every sequence starts with this token.
};

/// Repeated random tokens: `[bos] t_1 .. t_n t_1 .. t_n` per row, plus where the repeat is.
struct induction_batch {
    token_batch data;               ///< tokens (batch, prefix + 2n); every position but the last counts in the loss.
    index_t prefix = 0;             ///< 1 with a BOS token, else 0.
    index_t half_length = 0;        ///< n.
    tensor<float, 1> repeated;      ///< (pos) 1 at the positions of the second copy, [prefix + n, prefix + 2n).
    /// (pos) 1 where the next token is predictable by induction: t in [prefix + n, prefix + 2n - 1), i.e. inside
    /// the second copy with a next token (the first token of the copy follows t_n, which says nothing about it).
    tensor<float, 1> induction_mask;
};

/// Generates a batch of repeated random token sequences, identical for identical options and seed; tokens are
/// i.i.d. uniform in [first_token, vocab). Throws std::invalid_argument for batch or half_length < 1, an empty or
/// negative token range, or a negative BOS id.
inline induction_batch repeated_random_tokens(const induction_options& options, std::uint64_t seed) {
    const auto fail = [](const std::string& what) { throw std::invalid_argument("repeated_random_tokens: " + what); };
    if (options.batch < 1) fail("batch must be >= 1, got " + std::to_string(options.batch));
    if (options.half_length < 1) fail("half_length must be >= 1, got " + std::to_string(options.half_length));
    if (options.first_token < 0 || options.first_token >= options.vocab)
        fail("token range [" + std::to_string(options.first_token) + ", " + std::to_string(options.vocab) +
             ") is empty or negative");
    if (options.bos && *options.bos < 0) fail("bos must be >= 0, got " + std::to_string(*options.bos));
    if (options.half_length > (std::numeric_limits<index_t>::max() / 2 - 1) / options.batch)
        fail("batch * half_length is too large");

    const index_t n = options.half_length, prefix = options.bos ? 1 : 0, pos = prefix + 2 * n;
    tensor<std::int32_t, 2> tokens({options.batch, pos});
    random_generator rng(seed);
    const auto range = static_cast<std::uint64_t>(options.vocab - options.first_token);
    for (index_t b = 0; b < options.batch; ++b) {
        if (options.bos) tokens(b, 0) = *options.bos;
        for (index_t i = 0; i < n; ++i) {
            const auto token = options.first_token + static_cast<std::int32_t>(detail::uniform_below(rng, range));
            tokens(b, prefix + i) = token;
            tokens(b, prefix + n + i) = token;
        }
    }
    induction_batch out{next_token_batch(std::move(tokens)), prefix, n, tensor<float, 1>({pos}),
                        tensor<float, 1>({pos})};
    for (index_t t = prefix + n; t < pos; ++t) {
        out.repeated(t) = 1.0f;
        if (t + 1 < pos) out.induction_mask(t) = 1.0f;
    }
    return out;
}

/// Modular addition data: rows `a, b, =, c` with c = (a + b) mod p, numbers as tokens 0..p-1 and '=' as token p
/// (so d_vocab = p + 1). Only the prediction at the '=' position (t = 2, target c) counts in the loss: a and b are
/// uniform and unpredictable, and c is the answer.
struct modular_addition_split {
    token_batch train;  ///< Rows chosen for training, in ascending (a, b) order.
    token_batch test;   ///< The remaining rows, in ascending (a, b) order.
};

namespace detail {
/// A token_batch of the rows `a * p + b` listed in `rows`, with the loss on the answer only.
inline token_batch modular_addition_rows(std::int32_t p, const std::vector<std::int64_t>& rows) {
    tensor<std::int32_t, 2> tokens({static_cast<index_t>(rows.size()), 4});
    for (std::size_t r = 0; r < rows.size(); ++r) {
        const auto a = static_cast<std::int32_t>(rows[r] / p), b = static_cast<std::int32_t>(rows[r] % p);
        const auto i = static_cast<index_t>(r);
        tokens(i, 0) = a;
        tokens(i, 1) = b;
        tokens(i, 2) = p;
        tokens(i, 3) = (a + b) % p;
    }
    token_batch out = next_token_batch(std::move(tokens));
    for (index_t i = 0; i < out.batch(); ++i)
        for (index_t t = 0; t < 4; ++t) out.loss_mask(i, t) = t == 2 ? 1.0f : 0.0f;
    return out;
}
/// Throws std::invalid_argument unless 2 <= p <= 2^15 (p^2 rows must stay a reasonable table).
inline void check_modulus(std::int32_t p, const char* who) {
    if (p < 2 || p > (1 << 15))
        throw std::invalid_argument(std::string(who) + ": p must be in [2, 32768], got " + std::to_string(p));
}
}  // namespace detail

/// Every one of the p^2 rows of a + b mod p, row a * p + b.
inline token_batch modular_addition_table(std::int32_t p) {
    detail::check_modulus(p, "modular_addition_table");
    std::vector<std::int64_t> rows(static_cast<std::size_t>(p) * static_cast<std::size_t>(p));
    std::iota(rows.begin(), rows.end(), std::int64_t{0});
    return detail::modular_addition_rows(p, rows);
}

/// The p^2 rows of a + b mod p split at random (Fisher-Yates with `seed`): round(train_fraction * p^2) rows for
/// training, the rest for testing, each in ascending order. Throws std::invalid_argument unless 0 <= fraction <= 1.
inline modular_addition_split modular_addition(std::int32_t p, double train_fraction, std::uint64_t seed) {
    detail::check_modulus(p, "modular_addition");
    if (!(train_fraction >= 0.0 && train_fraction <= 1.0))
        throw std::invalid_argument("modular_addition: train_fraction must be in [0, 1], got " +
                                    std::to_string(train_fraction));
    std::vector<std::int64_t> rows(static_cast<std::size_t>(p) * static_cast<std::size_t>(p));
    std::iota(rows.begin(), rows.end(), std::int64_t{0});
    random_generator rng(seed);
    for (std::size_t i = rows.size() - 1; i > 0; --i)
        std::swap(rows[i], rows[static_cast<std::size_t>(detail::uniform_below(rng, i + 1))]);
    const auto n_train = static_cast<std::size_t>(std::llround(train_fraction * static_cast<double>(rows.size())));
    std::vector<std::int64_t> train(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(n_train));
    std::vector<std::int64_t> test(rows.begin() + static_cast<std::ptrdiff_t>(n_train), rows.end());
    std::sort(train.begin(), train.end());
    std::sort(test.begin(), test.end());
    return {detail::modular_addition_rows(p, train), detail::modular_addition_rows(p, test)};
}

MECHLENS_END_NAMESPACE
