#pragma once
// What `mechlens patch` and `mechlens attribute` share: clean/corrupt prompt pairs and their metric, the --grid
// names, and printing and writing patching tables.

#include <mechlens/mechlens.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "../arguments.hpp"
#include "../common.hpp"

namespace mechlens_cli {

/// Clean and corrupt prompts (batch, pos), their text for labels, the metric, and the tokenizer if any.
struct prompt_pairs {
    mechlens::tensor<std::int32_t, 2> clean;    ///< (pairs, pos)
    mechlens::tensor<std::int32_t, 2> corrupt;  ///< (pairs, pos)
    mechlens::answer_metric metric;             ///< Per pair.
    std::vector<std::string> labels;            ///< The first clean prompt's tokens, for report columns.
    std::optional<text_tokenizer> tokenizer;  ///< Present for text prompts or --tokenizer.
};

/// Reads --clean/--corrupt (text, repeatable) or --clean-tokens/--corrupt-tokens (ids, repeatable; the tokenizer
/// then only when --tokenizer names one, for labels) and --metric: `logitdiff:A-B` or `logit:A` or `logprob:A` for
/// every pair, or by default each pair's own answers: the clean run's top next token against the corrupt run's.
prompt_pairs read_prompt_pairs(arguments& args, const std::filesystem::path& model_path,
                               const mechlens::transformer& model);

/// The grid a --grid name stands for.
mechlens::patching_grid grid_named(const std::string& name);

/// Comma-separated --grid names (default: resid_pre,attn_out,mlp_out,z).
std::vector<std::string> grid_names(const std::optional<std::string>& text);

/// Prints a table: (layer, position) or (layer, head) as a matrix, (layer, head, position) as its largest cells.
void print_table(const mechlens::patching_table& table, const std::vector<std::string>& labels);

/// Writes each table as `<prefix>.<grid>.npy` (layers, heads or 1, positions or 1) and all of them in one report.
void write_tables(const std::string& prefix, const std::string& title, const std::vector<std::string>& names,
                  const std::vector<mechlens::patching_table>& tables, const std::vector<std::string>& labels,
                  const std::string& description);

}  // namespace mechlens_cli
