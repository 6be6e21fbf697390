// What the commands share (see common.hpp).

#include "common.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace fs = std::filesystem;

namespace mechlens_cli {

std::vector<std::int32_t> text_tokenizer::encode_prompt(std::string_view text) const {
    if (const auto* sentencepiece = std::get_if<mechlens::bpe_tokenizer>(&tokenizer_))
        return sentencepiece->encode(text, true);
    const auto& gpt2 = std::get<mechlens::gpt2_tokenizer>(tokenizer_);
    std::vector<std::int32_t> out;
    if (const std::int32_t bos = gpt2.end_of_text_id(); bos >= 0) out.push_back(bos);
    const std::vector<std::int32_t> body = gpt2.encode(text, true);
    out.insert(out.end(), body.begin(), body.end());
    return out;
}

std::string text_tokenizer::decode(std::span<const std::int32_t> tokens) const {
    return std::visit([&](const auto& t) { return t.decode(tokens); }, tokenizer_);
}

std::string text_tokenizer::piece(std::int32_t previous, std::int32_t token) const {
    if (const auto* sentencepiece = std::get_if<mechlens::bpe_tokenizer>(&tokenizer_))
        return sentencepiece->decode_piece(previous, token);
    return std::get<mechlens::gpt2_tokenizer>(tokenizer_).token_bytes(token);
}

std::int32_t text_tokenizer::bos_id() const {
    if (const auto* sentencepiece = std::get_if<mechlens::bpe_tokenizer>(&tokenizer_)) return sentencepiece->bos_id();
    return std::get<mechlens::gpt2_tokenizer>(tokenizer_).end_of_text_id();
}

std::int32_t text_tokenizer::eos_id() const {
    if (const auto* sentencepiece = std::get_if<mechlens::bpe_tokenizer>(&tokenizer_)) return sentencepiece->eos_id();
    return std::get<mechlens::gpt2_tokenizer>(tokenizer_).end_of_text_id();
}

namespace {

/// True when `directory` holds GPT-2 tokenizer files (tokenizer.json, or vocab.json and merges.txt).
bool has_gpt2_files(const fs::path& directory) {
    return fs::is_regular_file(directory / "tokenizer.json") ||
           (fs::is_regular_file(directory / "vocab.json") && fs::is_regular_file(directory / "merges.txt"));
}

/// The vocabulary a GGUF file embeds, of either family.
text_tokenizer gguf_tokenizer(const mechlens::gguf_file& g) {
    if (g.get_string("tokenizer.ggml.model") == "gpt2")
        return text_tokenizer(mechlens::gpt2_tokenizer(mechlens::load_gguf_gpt2_vocabulary(g)));
    return text_tokenizer(mechlens::bpe_tokenizer(mechlens::load_gguf_vocabulary(g)));
}

}  // namespace

text_tokenizer open_tokenizer(const fs::path& path) {
    if (fs::is_directory(path) || path.extension() == ".json")
        return text_tokenizer(mechlens::load_gpt2_tokenizer(path));
    if (path.extension() == ".gguf") return gguf_tokenizer(mechlens::gguf_file(path));
    return text_tokenizer(mechlens::bpe_tokenizer::from_llama2c(path));
}

text_tokenizer resolve_tokenizer(const fs::path& model_path, const std::optional<std::string>& explicit_path) {
    if (explicit_path) return open_tokenizer(fs::path(*explicit_path));
    if (fs::is_directory(model_path)) {
        // A folder (TransformerLens, Hugging Face): its own tokenizer files, whichever loader read the weights.
        if (has_gpt2_files(model_path)) return text_tokenizer(mechlens::load_gpt2_tokenizer(model_path));
        throw usage_error(concat(model_path.string(),
                                 " has no tokenizer (no tokenizer.json, nor vocab.json + merges.txt): give token ids "
                                 "(--tokens) or --tokenizer PATH"));
    }
    switch (mechlens::sniff_model_format(model_path)) {
        case mechlens::model_format::gguf: {
            const mechlens::gguf_file g(model_path);
            if (g.find("tokenizer.ggml.tokens") == nullptr)
                throw usage_error(concat(model_path.string(),
                                         " has no embedded vocabulary: give token ids (--tokens) or --tokenizer PATH"));
            return gguf_tokenizer(g);
        }
        case mechlens::model_format::checkpoint:
            // A grown model's vocabulary is its task's; a tokenizer file beside it would be someone else's.
            throw usage_error(model_path.string() +
                              " is a training checkpoint, which has no tokenizer: give token ids (--tokens, or "
                              "--clean-tokens and --corrupt-tokens) or --tokenizer PATH");
        case mechlens::model_format::llama2c:
            break;
    }
    std::vector<fs::path> candidates;
    const fs::path directory = model_path.has_parent_path() ? model_path.parent_path() : fs::path(".");
    for (const auto& entry : fs::directory_iterator(directory)) {
        const std::string name = entry.path().filename().string();
        const bool tokenizer_name =
            name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && entry.path().extension() == ".bin");
        if (entry.is_regular_file() && tokenizer_name && entry.path() != model_path) candidates.push_back(entry.path());
    }
    if (candidates.size() != 1)
        throw usage_error(std::to_string(candidates.size()) + " tokenizer files (tok*.bin, tokenizer.bin) beside " +
                          model_path.string() + "; pass --tokenizer PATH");
    return text_tokenizer(mechlens::bpe_tokenizer::from_llama2c(candidates.front()));
}

std::optional<text_tokenizer> optional_tokenizer(const fs::path& model_path,
                                                 const std::optional<std::string>& explicit_path) {
    try {
        return resolve_tokenizer(model_path, explicit_path);
    } catch (const usage_error&) {
        if (explicit_path) throw;  // asked for explicitly
        return std::nullopt;
    } catch (const mechlens::format_error& error) {
        // Tokenizer files found beside the model but unreadable: with token ids given, show ids and say why.
        if (explicit_path) throw;
        std::fprintf(stderr, "mechlens: showing token ids: %s\n", error.what());
        return std::nullopt;
    }
}

model_options read_model_options(arguments& args) {
    model_options out;
    out.path = args.require("model");
    weight_processing& w = out.processing;
    w.fold_ln = args.flag("fold-ln");
    w.center_writing_weights = args.flag("center-writing-weights");
    w.center_unembed = args.flag("center-unembed");
    w.fold_value_biases = args.flag("fold-value-biases");
    w.all = args.flag("process-weights");
    return out;
}

mechlens::transformer open_model(const model_options& options) {
    mechlens::loaded_model loaded = mechlens::load_model(options.path);
    const weight_processing& w = options.processing;
    if (!w.any()) return mechlens::transformer(std::move(loaded));
    const mechlens::model_config& c = loaded.config;
    const bool layer_norm = c.norm == mechlens::norm_kind::layer;
    // Asked for by name, a step the model cannot take is a mistake; --process-weights takes the steps it can.
    if (w.fold_ln && !c.has_norm()) throw usage_error("--fold-ln: the model has no norms to fold");
    if (w.fold_ln && layer_norm && !c.linear_biases)
        throw usage_error("--fold-ln: the model's LayerNorm biases have no linear biases to fold into");
    if (w.center_writing_weights && !layer_norm)
        throw usage_error("--center-writing-weights needs LayerNorm before every reader of the residual stream "
                          "(this model's norm is not LayerNorm)");
    if (w.fold_value_biases && !c.linear_biases)
        throw usage_error("--fold-value-biases: the model has no linear biases");
    const bool fold_ln = w.fold_ln || (w.all && c.has_norm() && (!layer_norm || c.linear_biases));
    const bool centre_writers = w.center_writing_weights || (w.all && layer_norm);
    const bool centre_unembed = w.center_unembed || w.all;
    const bool fold_values = w.fold_value_biases || (w.all && c.linear_biases);

    // Owned float parameters with their own unembedding (processing changes W_U, never the embedding).
    mechlens::model_parameters params(c, loaded.weights);
    if (c.tied_unembed) params = mechlens::untie_unembedding(params);
    if (fold_ln) mechlens::fold_layer_norms(params);
    if (centre_writers) mechlens::center_writing_weights(params);
    if (centre_unembed) mechlens::center_unembed(params);
    if (fold_values) mechlens::fold_value_biases(params);
    return mechlens::transformer(mechlens::loaded_model{params.config(), params.weights()});
}

prompt_options read_prompt_options(arguments& args) {
    prompt_options out;
    model_options model = read_model_options(args);
    out.model = std::move(model.path);
    out.processing = model.processing;
    out.tokenizer = args.get("tokenizer");
    out.prompt = args.get("prompt");
    out.tokens = args.get("tokens");
    return out;
}

prompt_run open_prompt(const prompt_options& options, tokenizer_use use) {
    if (options.prompt.has_value() == options.tokens.has_value())
        throw usage_error("give exactly one of --prompt and --tokens");
    prompt_run out{open_model(model_options{options.model, options.processing}), {}, std::nullopt};
    if (options.prompt) {
        out.tokenizer = resolve_tokenizer(options.model, options.tokenizer);
        out.tokens = out.tokenizer->encode_prompt(*options.prompt);
    } else {
        if (use == tokenizer_use::display) out.tokenizer = optional_tokenizer(options.model, options.tokenizer);
        out.tokens = parse_token_list(*options.tokens);
    }
    return out;
}

std::string show_token(const std::optional<text_tokenizer>& tokenizer, std::int32_t token) {
    if (!tokenizer) return std::to_string(token);
    std::string text = tokenizer->piece(0, token);
    std::replace(text.begin(), text.end(), '\n', ' ');
    return std::to_string(token) + " '" + text + "'";
}

mechlens::index_t resolve_position(const std::optional<std::string>& text, mechlens::index_t positions) {
    const auto p = text ? parse_number<mechlens::index_t>(*text, "--position") : mechlens::index_t{-1};
    const mechlens::index_t resolved = p < 0 ? positions + p : p;
    if (resolved < 0 || resolved >= positions)
        throw usage_error("--position " + std::to_string(p) + " is outside a " + std::to_string(positions) +
                          "-token sequence");
    return resolved;
}

void print_sites(const mechlens::activation_cache& cache) {
    for (const mechlens::site& s : cache.sites()) {
        std::string shape;
        for (const mechlens::index_t e : cache.at(s).shape) {
            if (!shape.empty()) shape += ", ";
            shape += std::to_string(e);
        }
        std::printf("%s (%s)\n", mechlens::to_string(s).c_str(), shape.c_str());
    }
}

}  // namespace mechlens_cli

namespace mechlens_cli {

splice_options read_splice_options(arguments& args) {
    splice_options out;
    out.sae = args.all("sae");
    out.sae_replace = args.all("sae-replace");
    out.transcoder = args.get("transcoder");
    out.transcoder_replace = args.get("transcoder-replace");
    out.layer = args.get("layer");
    if (out.transcoder && out.transcoder_replace)
        throw usage_error("give --transcoder or --transcoder-replace, not both");
    if ((out.transcoder || out.transcoder_replace) && !out.layer)
        throw usage_error("--transcoder needs --layer L (the block whose MLP it replaces)");
    if (out.layer && !out.transcoder && !out.transcoder_replace)
        throw usage_error("--layer is the block of a --transcoder; no transcoder was given");
    return out;
}

namespace {

/// The site `name` of the model for the module from `origin`, checked to be able to host a splice of `width`.
mechlens::site splice_host(const std::string& origin, const std::string& name, mechlens::index_t width,
                           const mechlens::model_config& config) {
    mechlens::site where;
    try {
        where = mechlens::site_from_name(name, config);
    } catch (const std::invalid_argument& e) {
        throw usage_error(origin + ": its hook " + name.substr(0, 100) + " is not a site of this model (" + e.what() +
                          ")");
    }
    if (!mechlens::can_host_splice(where.kind))
        throw usage_error(origin + ": its hook " + name + " cannot hold a splice (only (batch, pos, width) sites the " +
                          "forward pass always computes, outside the norms)");
    const mechlens::index_t expected = mechlens::site_width(config, where.kind);
    if (width != expected)
        throw usage_error(origin + ": d_in " + std::to_string(width) + " disagrees with " + name + ", of width " +
                          std::to_string(expected));
    return where;
}

}  // namespace

std::vector<spliced_module> load_splices(const splice_options& options, const mechlens::model_config& config) {
    std::vector<spliced_module> out;
    auto add_sae = [&](const std::string& dir, bool error_term) {
        const std::string origin = (error_term ? "--sae " : "--sae-replace ") + dir;
        mechlens::saelens_sae sae = mechlens::read_saelens_folder(dir);
        if (sae.metadata.hook_name.empty()) throw usage_error(origin + ": cfg.json names no hook (metadata.hook_name)");
        if (sae.metadata.hook_head_index)
            throw usage_error(origin + ": SAEs on one head (hook_head_index) are not supported");
        const mechlens::site host = splice_host(origin, sae.metadata.hook_name, sae.weights.d_in, config);
        sae.options.error_term = error_term;
        out.push_back({mechlens::to_string(host),
                       std::make_shared<const mechlens::sae_splice>(std::move(sae.weights), sae.options), origin});
    };
    for (const std::string& dir : options.sae) add_sae(dir, true);
    for (const std::string& dir : options.sae_replace) add_sae(dir, false);
    if (options.transcoder || options.transcoder_replace) {
        const bool error_term = options.transcoder.has_value();
        const fs::path path = error_term ? *options.transcoder : *options.transcoder_replace;
        const std::string origin = (error_term ? "--transcoder " : "--transcoder-replace ") + path.string();
        const auto layer = parse_number<mechlens::index_t>(*options.layer, "--layer");
        if (layer < 0 || layer >= config.n_layers)
            throw usage_error("--layer " + std::to_string(layer) + " is not a block of this model (" +
                              std::to_string(config.n_layers) + " layers)");
        // A folder holds layer_L.safetensors and, when circuit-tracer wrote it, config.yaml with the hook names.
        mechlens::circuit_tracer_hooks names;
        fs::path file = path;
        if (fs::is_directory(path)) {
            file = mechlens::circuit_tracer_layer_file(path, layer);
            if (fs::exists(path / "config.yaml")) names = mechlens::read_circuit_tracer_config(path / "config.yaml");
        }
        mechlens::circuit_tracer_transcoder t = mechlens::read_circuit_tracer_transcoder(file);
        mechlens::circuit_tracer_sites kinds{};
        try {
            kinds = mechlens::circuit_tracer_site_kinds(names);
        } catch (const std::invalid_argument& e) {
            throw usage_error(origin + ": " + e.what());
        }
        // The input site as the model has it: a model without norms has no ln2.hook_normalized, and its MLP reads
        // the stream itself.
        if (kinds.input == mechlens::site_kind::ln2_normalized && !mechlens::has_site_kind(config, kinds.input)) {
            try {
                kinds.input = mechlens::mlp_input_site(config);
            } catch (const std::invalid_argument& e) {
                throw usage_error(origin + ": " + e.what());
            }
        }
        const std::string host = "blocks." + std::to_string(layer) + ".hook_mlp_out";
        (void)splice_host(origin, host, t.weights.sae.d_in, config);
        t.options.error_term = error_term;
        out.push_back({host, std::make_shared<const mechlens::transcoder_splice>(std::move(t.weights), t.options,
                                                                               kinds.input),
                       origin});
    }
    for (std::size_t i = 0; i < out.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
            if (out[i].host == out[j].host)
                throw usage_error(out[i].origin + ": " + out[j].origin + " is already spliced at " + out[i].host);
    return out;
}

}  // namespace mechlens_cli
