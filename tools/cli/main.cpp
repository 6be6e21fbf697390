// The mechlens command-line tool: a thin layer over the library. Every error is one line on stderr, exit code 2.
// The commands are a table (command.hpp, one file each under commands/); the usage text, the command names in
// error messages and the dispatch all come from it.

#include <cstdio>
#include <exception>
#include <set>
#include <string>
#include <string_view>

#include "arguments.hpp"
#include "command.hpp"
#include "common.hpp"

using mechlens_cli::command;

namespace {

/// Every command, in the order --help lists them.
constexpr const command* command_table[] = {
    &mechlens_cli::info_command,      &mechlens_cli::generate_command, &mechlens_cli::logits_command,
    &mechlens_cli::cache_command,     &mechlens_cli::grad_command,     &mechlens_cli::train_command,
    &mechlens_cli::lens_command,      &mechlens_cli::dla_command,      &mechlens_cli::patch_command,
    &mechlens_cli::attribute_command, &mechlens_cli::tokenize_command, &mechlens_cli::harvest_command,
    &mechlens_cli::sae_command,       &mechlens_cli::transcoder_command, &mechlens_cli::probe_command,
    &mechlens_cli::direction_command, &mechlens_cli::orthogonalize_command, &mechlens_cli::control_vector_command,
    &mechlens_cli::quantize_command,
};

/// The options that take no value: the weight-processing flags, harvest's --shuffle, sae's --json and
/// --include-bos, transcoder train's --skip. A flag given to a command that does not read it is reported as an
/// unknown option, like any other.
std::set<std::string> flag_options() {
    std::set<std::string> flags = mechlens_cli::weight_processing_flags;
    flags.insert("shuffle");
    flags.insert("json");
    flags.insert("include-bos");
    flags.insert("skip");
    return flags;
}

/// What --help prints after the commands: how models and tokenizers are found.
constexpr const char* usage_footer =
    "A llama2.c model without --tokenizer uses the one tok*.bin or tokenizer.bin beside it; a GGUF model uses its own\n"
    "vocabulary. A checkpoint of `mechlens train --out` (.safetensors) is a model too, without a tokenizer:\n"
    "give token ids (--tokens, --clean-tokens/--corrupt-tokens); tokens are then shown as ids. A model folder\n"
    "(TransformerLens) with tokenizer.json or vocab.json + merges.txt uses GPT-2's byte-level BPE.\n"
    "Every command with --model also takes TransformerLens's weight processing, applied after loading:\n"
    "  --fold-ln  --center-writing-weights  --center-unembed  --fold-value-biases\n"
    "  --process-weights (all four where the model allows them, as TransformerLens's from_pretrained)\n";

/// "info, generate, ...": the command names for error messages.
std::string command_names() {
    std::string out;
    for (const command* c : command_table) {
        if (!out.empty()) out += ", ";
        out += c->name;
    }
    return out;
}

const command* find_command(std::string_view name) {
    for (const command* c : command_table)
        if (c->name == name) return c;
    return nullptr;
}

/// Prints usage lines: the first after `name` (padded to 8 columns), the others indented to match.
void print_usage_lines(const std::string& name, std::string_view rest) {
    bool first = true;
    while (!rest.empty()) {
        const std::size_t end = rest.find('\n');
        const std::string line(rest.substr(0, end));
        if (first)
            std::printf("  %-8s %s\n", name.c_str(), line.c_str());
        else
            std::printf("           %s\n", line.c_str());
        first = false;
        rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
    }
}

/// Prints `c`'s usage: its own lines, then each subcommand's as `NAME SUB options`.
void print_usage(const command& c) {
    print_usage_lines(std::string(c.name), c.usage);
    for (const mechlens_cli::subcommand& s : c.subcommands)
        print_usage_lines(std::string(c.name) + " " + std::string(s.name), s.usage);
}

/// "eval, dashboard": the subcommand names of `c` for error messages.
std::string subcommand_names(const command& c) {
    std::string out;
    for (const mechlens_cli::subcommand& s : c.subcommands) {
        if (!out.empty()) out += ", ";
        out += s.name;
    }
    return out;
}

bool is_help(std::string_view argument) { return argument == "--help" || argument == "-h" || argument == "help"; }

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "mechlens: missing command (%s); see mechlens --help\n", command_names().c_str());
        return 2;
    }
    std::string name = argv[1];
    if (is_help(name)) {
        std::fputs("usage: mechlens COMMAND [options]\ncommands:\n", stdout);
        for (const command* c : command_table) print_usage(*c);
        std::fputs(usage_footer, stdout);
        return 0;
    }
    try {
        const command* c = find_command(name);
        // `mechlens COMMAND --help`: that command's usage alone.
        if (c != nullptr && argc == 3 && is_help(argv[2])) {
            std::printf("usage: mechlens %s [options]\n", name.c_str());
            print_usage(*c);
            std::fputs(usage_footer, stdout);
            return 0;
        }
        if (c == nullptr)
            throw mechlens_cli::usage_error("unknown command '" + name + "' (try: " + command_names() + ")");
        if (!c->subcommands.empty()) {  // `mechlens COMMAND SUBCOMMAND [options]`
            if (argc < 3 || std::string_view(argv[2]).rfind("-", 0) == 0)
                throw mechlens_cli::usage_error("missing subcommand (" + subcommand_names(*c) + ")");
            const std::string sub = argv[2];
            for (const mechlens_cli::subcommand& s : c->subcommands)
                if (s.name == sub) {
                    name += " " + sub;
                    if (argc == 4 && is_help(argv[3])) {
                        std::printf("usage: mechlens %s [options]\n", name.c_str());
                        print_usage_lines(name, s.usage);
                        std::fputs(usage_footer, stdout);
                        return 0;
                    }
                    mechlens_cli::arguments args(argc, argv, 3, flag_options());
                    return s.run(args);
                }
            throw mechlens_cli::usage_error("unknown subcommand '" + sub + "' (try: " + subcommand_names(*c) + ")");
        }
        mechlens_cli::arguments args(argc, argv, 2, flag_options());
        return c->run(args);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "mechlens %s: %s\n", name.c_str(), error.what());
        return 2;
    }
}
