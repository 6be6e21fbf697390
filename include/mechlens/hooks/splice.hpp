#pragma once
/// @file
/// Splices: modules inserted into the forward pass at a hook site (an SAE at `blocks.2.hook_resid_post`, a
/// transcoder at an MLP), as an op on the graph rather than a hook that only watches. A splice maps the host
/// activation's rows to replacement rows of the same width, and exposes its own activations as extension sites named
/// below the host, as SAELens names them (`blocks.2.hook_resid_post.hook_sae_acts_post`). Extension sites have their
/// own width; run-time hooks (dynamic_hooks) cache, patch, ablate and steer them like any other site, and the backward
/// pass runs the splice's backward, so gradients flow through it. Attach splices with basic_dynamic_hooks::splice.

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One activation inside a splice: the suffix of its extension site and the width of its last axis. The site is
/// (batch, pos, width), like its host.
struct splice_site {
    std::string suffix;  ///< E.g. "hook_sae_acts_post": `hook_` then [a-z0-9_], at most 64 characters.
    index_t width = 0;   ///< Extent of the last axis (d_sae for an SAE's latents).
};

/// A site of the host's block that a splice reads besides its host (a transcoder reads the MLP's input and replaces
/// the MLP's output): a rank-3 block site that fires before the host, and the width of its last axis.
struct splice_source {
    site_kind kind = site_kind::resid_pre;  ///< E.g. site_kind::ln2_normalized for the host blocks.L.hook_mlp_out.
    index_t width = 0;                      ///< Extent of its last axis.
};

/// What a splice calls at each of its activations: the hooks registered at that extension site.
class splice_hooks {
public:
    splice_hooks() = default;
    splice_hooks(const splice_hooks&) = delete;             ///< Not copied: it fires into one registry.
    splice_hooks& operator=(const splice_hooks&) = delete;  ///< Not copied: it fires into one registry.
    virtual ~splice_hooks() = default;
    /// True when anything is registered at activation `index` (so a splice may skip work only hooks could change).
    [[nodiscard]] virtual bool active(std::size_t index) const noexcept = 0;
    /// Hands activation `index`, (rows, width) with rows = batch * pos and dense rows, to its hooks; in the forward
    /// pass whatever they write is what the splice goes on with, in the backward pass it is the gradient that flows on.
    virtual void fire(std::size_t index, tensor_view<float, 2> rows) = 0;
};

/// The buffers one attachment of a splice keeps from its forward pass for its backward pass (and reuses as scratch).
struct splice_tape {
    std::vector<std::vector<float>> buffers;  ///< Whatever the splice stores, by its own numbering.

    /// Buffer `index` as a dense (rows, cols) matrix, grown when needed (its contents are kept when large enough).
    tensor_view<float, 2> matrix(std::size_t index, index_t rows, index_t cols) {
        if (buffers.size() <= index) buffers.resize(index + 1);
        std::vector<float>& buffer = buffers[index];
        const auto size = static_cast<std::size_t>(rows * cols);
        if (buffer.size() < size) buffer.resize(size);
        return tensor_view<float, 2>(buffer.data(), {rows, cols});
    }
    /// Buffer `index` as stored by the forward pass, (rows, cols); throws std::logic_error when it is smaller.
    [[nodiscard]] tensor_view<const float, 2> stored(std::size_t index, index_t rows, index_t cols) const {
        if (index >= buffers.size() || buffers[index].size() < static_cast<std::size_t>(rows * cols))
            throw std::logic_error("splice_tape: the backward pass needs a forward pass of the same shape first");
        return tensor_view<const float, 2>(buffers[index].data(), {rows, cols});
    }

    std::vector<float> source;    ///< (rows, source width): the source site's rows, as hooks left them.
    std::vector<float> d_source;  ///< (rows, source width): what its backward adds to the source's gradient.

    /// The source rows of this pass (rows, cols); throws std::logic_error when the source did not fire.
    [[nodiscard]] tensor_view<const float, 2> source_rows(index_t rows, index_t cols) const {
        if (source.size() != static_cast<std::size_t>(rows * cols))
            throw std::logic_error("splice_tape: the splice's source site did not fire before its host");
        return tensor_view<const float, 2>(source.data(), {rows, cols});
    }
    /// The gradient to add at the source site (rows, cols), sized (and zeroed) for this pass.
    tensor_view<float, 2> source_gradient(index_t rows, index_t cols) {
        d_source.assign(static_cast<std::size_t>(rows * cols), 0.0f);
        return tensor_view<float, 2>(d_source.data(), {rows, cols});
    }
};

/// A module spliced in at a host site. Implementations are immutable once attached (forward and backward are const,
/// all per-call state lives in the tape), so one splice may be shared by several attachments and threads.
class splice {
public:
    splice() = default;
    splice(const splice&) = default;             ///< Copyable when the implementation is.
    splice& operator=(const splice&) = default;  ///< Copyable when the implementation is.
    virtual ~splice() = default;

    /// The width of the host activation's last axis that this splice reads and writes (d_in).
    [[nodiscard]] virtual index_t width() const noexcept = 0;
    /// Its activations, in the order its forward pass fires them.
    [[nodiscard]] virtual std::vector<splice_site> sites() const = 0;
    /// The site of the host's block it also reads, if any (none by default: it reads its host only). The registry
    /// copies that site's rows, after its callbacks, into `tape.source` for forward, and adds `tape.d_source`
    /// (written by backward) to that site's gradient before its gradient callbacks.
    [[nodiscard]] virtual std::optional<splice_source> source() const { return std::nullopt; }
    /// True (the default) when each output row depends on its own input row only; false when rows are coupled (a
    /// batchtopk SAE picks its latents over the whole batch), so a pass over some of the rows differs.
    [[nodiscard]] virtual bool rows_independent() const noexcept { return true; }
    /// Forward: reads `input` (rows, width), the host's rows (and `tape.source_rows` with a source), writes `output`
    /// (rows, width), firing each activation through `hooks` and keeping in `tape` what backward needs.
    virtual void forward(tensor_view<const float, 2> input, tensor_view<float, 2> output, splice_hooks& hooks,
                         splice_tape& tape) const = 0;
    /// Backward, after forward with the same tape: turns d(output) (rows, width) into d(input) (rows, width),
    /// handing each activation's gradient to `hooks` (last activation first); with a source, also fills
    /// `tape.source_gradient`. May overwrite `d_output` and use more tape buffers as scratch.
    virtual void backward(splice_tape& tape, tensor_view<float, 2> d_output, tensor_view<float, 2> d_input,
                          splice_hooks& hooks) const = 0;
};

/// True when a splice may be attached at sites of this kind: rank-3 (batch, pos, width) activations the forward pass
/// always computes and whose producer's backward does not read them back (so the replacement is exact for
/// gradients): embeddings, residual stream states, attention and MLP outputs, MLP pre- and post-activations, logits.
/// Not the norm scales and normalized values (the norm's backward reads them) nor per-head sites.
constexpr bool can_host_splice(site_kind kind) noexcept {
    const site_traits& row = site_traits_of(kind);
    return row.rank == 3 && row.computed == site_computation::always && row.width != site_extent::one;
}

MECHLENS_END_NAMESPACE
