#pragma once
// The table of mechlens commands. Each file under commands/ defines one `command`; main.cpp lists them once and
// derives from that list the usage text, the command names in error messages, and the dispatch.

#include <span>
#include <string_view>

#include "arguments.hpp"

namespace mechlens_cli {

/// One subcommand of a command: `mechlens COMMAND NAME [options]` (e.g. `mechlens sae eval`).
struct subcommand {
    std::string_view name;        ///< What follows the command's name.
    std::string_view usage;       ///< Its options for --help: lines separated by '\n', the first after the name.
    int (*run)(arguments& args);  ///< Runs it on the options after the name; returns the exit code.
};

/// One command of the CLI: `mechlens NAME [options]`, or `mechlens NAME SUBCOMMAND [options]` when it has a table of
/// subcommands (then `run` is unused and may be null).
struct command {
    std::string_view name;                      ///< What follows `mechlens`.
    std::string_view usage;                     ///< Its options for --help: lines separated by '\n', the first after the name.
    int (*run)(arguments& args);                ///< Runs it on the options after the name; returns the exit code.
    std::span<const subcommand> subcommands{};  ///< Its subcommands, in the order --help lists them (usually none).
};

// One per file in commands/, in the order --help lists them (main.cpp's table).
extern const command info_command;       ///< commands/info.cpp
extern const command generate_command;   ///< commands/generate.cpp
extern const command logits_command;     ///< commands/logits.cpp
extern const command cache_command;      ///< commands/cache.cpp
extern const command grad_command;       ///< commands/grad.cpp
extern const command train_command;      ///< commands/train.cpp
extern const command lens_command;       ///< commands/lens.cpp
extern const command dla_command;        ///< commands/dla.cpp
extern const command patch_command;      ///< commands/patch.cpp
extern const command attribute_command;  ///< commands/attribute.cpp
extern const command tokenize_command;   ///< commands/tokenize.cpp
extern const command harvest_command;    ///< commands/harvest.cpp
extern const command sae_command;        ///< commands/sae.cpp (subcommands eval, dashboard, train)
extern const command transcoder_command; ///< commands/sae_train.cpp (subcommand train)
extern const command probe_command;          ///< commands/medicine.cpp
extern const command direction_command;      ///< commands/medicine.cpp
extern const command orthogonalize_command;  ///< commands/medicine.cpp
extern const command control_vector_command; ///< commands/medicine.cpp
extern const command quantize_command;       ///< commands/quantize.cpp
extern const subcommand sae_train_subcommand;  ///< commands/sae_train.cpp: `mechlens sae train`

}  // namespace mechlens_cli
