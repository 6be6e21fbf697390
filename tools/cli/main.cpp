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
    &mechlens_cli::sae_train_command, &mechlens_cli::transcoder_train_command,
};

/// The options that take no value: the weight-processing flags, harvest's --shuffle and transcoder train's --skip.
/// A flag given to a command that does not read it is reported as an unknown option, like any other.
std::set<std::string> flag_options() {
    std::set<std::string> flags = mechlens_cli::weight_processing_flags;
    flags.insert("shuffle");
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

/// Prints `c`'s usage lines: the first after the name (padded to 8 columns), the others indented to match.
void print_usage(const command& c) {
    std::string_view rest = c.usage;
    bool first = true;
    while (!rest.empty()) {
        const std::size_t end = rest.find('\n');
        const std::string line(rest.substr(0, end));
        if (first)
            std::printf("  %-8s %s\n", std::string(c.name).c_str(), line.c_str());
        else
            std::printf("           %s\n", line.c_str());
        first = false;
        rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
    }
}

bool is_help(std::string_view argument) { return argument == "--help" || argument == "-h" || argument == "help"; }

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "mechlens: missing command (%s); see mechlens --help\n", command_names().c_str());
        return 2;
    }
    std::string name = argv[1];
    int first = 2;
    // A two-word command ("sae train"): the second word belongs to the name.
    if (argc >= 3 && argv[2][0] != '-' && find_command(name + " " + argv[2]) != nullptr) {
        name = name + " " + argv[2];
        first = 3;
    }
    if (is_help(name)) {
        std::fputs("usage: mechlens COMMAND [options]\ncommands:\n", stdout);
        for (const command* c : command_table) print_usage(*c);
        std::fputs(usage_footer, stdout);
        return 0;
    }
    try {
        const command* c = find_command(name);
        // `mechlens COMMAND --help`: that command's usage alone.
        if (c != nullptr && argc == first + 1 && is_help(argv[first])) {
            std::printf("usage: mechlens %s [options]\n", name.c_str());
            print_usage(*c);
            std::fputs(usage_footer, stdout);
            return 0;
        }
        mechlens_cli::arguments args(argc, argv, first, flag_options());
        if (c == nullptr)
            throw mechlens_cli::usage_error("unknown command '" + name + "' (try: " + command_names() + ")");
        return c->run(args);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "mechlens %s: %s\n", name.c_str(), error.what());
        return 2;
    }
}
