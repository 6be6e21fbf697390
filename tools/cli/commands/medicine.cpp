// Model medicine on the command line: `mechlens probe` (logistic-regression probes at hook sites), `mechlens
// direction` (a contrastive direction from two prompt sets), `mechlens orthogonalize` (a direction removed from the
// weights) and `mechlens control-vector` (llama.cpp control vectors from two prompt sets).

#include <mechlens/mechlens.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../command.hpp"
#include "../common.hpp"

namespace mechlens_cli {
namespace medicine_impl {

/// The non-empty lines of a text file (a trailing '\r' removed); throws usage_error naming `option` when the file
/// cannot be read or has no line.
std::vector<std::string> read_lines(const std::string& path, const char* option) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw usage_error(concat("--", option, " '", path, "' cannot be read"));
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!line.empty()) lines.push_back(std::move(line));
    }
    if (lines.empty()) throw usage_error(concat("--", option, " '", path, "' has no non-empty line"));
    return lines;
}

/// Each line encoded as a prompt (BOS first); throws usage_error naming `option` for a line longer than n_ctx.
std::vector<std::vector<std::int32_t>> encode_lines(const std::vector<std::string>& lines,
                                                    const text_tokenizer& tokenizer, const mechlens::model_config& c,
                                                    const char* option) {
    std::vector<std::vector<std::int32_t>> out;
    for (std::size_t i = 0; i < lines.size(); ++i) {
        out.push_back(tokenizer.encode_prompt(lines[i]));
        if (static_cast<mechlens::index_t>(out.back().size()) > c.n_ctx)
            throw usage_error(concat("--", option, " line ", std::to_string(i + 1), " has ",
                                     std::to_string(out.back().size()), " tokens, more than the model's n_ctx ",
                                     std::to_string(c.n_ctx)));
    }
    return out;
}

/// --position: "last" (-1) or an absolute position.
mechlens::index_t read_position(arguments& args) {
    const std::string text = args.get("position").value_or("last");
    if (text == "last") return -1;
    const auto p = parse_number<mechlens::index_t>(text, "--position");
    if (p < 0) throw usage_error("--position must be 'last' or a position >= 0");
    return p;
}

/// --method mean|pca.
mechlens::direction_method read_method(arguments& args) {
    const std::string method = args.get("method").value_or("mean");
    if (method == "mean") return mechlens::direction_method::mean_difference;
    if (method == "pca") return mechlens::direction_method::pca;
    throw usage_error("--method must be mean or pca, got '" + method + "'");
}

/// Prints collect_rows' progress on stderr, one line rewritten in place.
void show_progress(std::size_t done, std::size_t total) {
    std::fprintf(stderr, "\r  %zu / %zu prompts", done, total);
    if (done == total) std::fprintf(stderr, "\n");
}

/// What `direction` and `control-vector` read alike: the model, the two prompt files, the method and the position.
struct contrast_input {
    model_options model;                   ///< --model and the weight-processing flags
    std::optional<std::string> positive;   ///< --positive FILE
    std::optional<std::string> negative;   ///< --negative FILE
    std::optional<std::string> out;        ///< --out
    std::optional<std::string> tokenizer;  ///< --tokenizer
    mechlens::direction_method method{};   ///< --method
    mechlens::index_t position = -1;       ///< --position
};

contrast_input read_contrast_input(arguments& args) {
    contrast_input in{read_model_options(args), args.get("positive"), args.get("negative"), args.get("out"),
                      args.get("tokenizer"),    read_method(args),    read_position(args)};
    return in;
}

/// The direction between the two prompt files at each of `sites` (after the command's own options were read and
/// checked: throws usage_error naming `command` and `out_kind` when a file option is missing).
std::vector<mechlens::contrastive_direction> contrast(const contrast_input& in, const mechlens::transformer& model,
                                                      const std::vector<mechlens::site>& sites, const char* command,
                                                      const char* out_kind) {
    if (!in.positive || !in.negative || !in.out)
        throw usage_error(concat(command, " needs --positive FILE --negative FILE --out ", out_kind));
    const text_tokenizer tokenizer = resolve_tokenizer(in.model.path, in.tokenizer);
    const auto pos = encode_lines(read_lines(*in.positive, "positive"), tokenizer, model.config(), "positive");
    const auto neg = encode_lines(read_lines(*in.negative, "negative"), tokenizer, model.config(), "negative");
    const auto a = mechlens::collect_rows(model, pos, sites, in.position, show_progress);
    const auto b = mechlens::collect_rows(model, neg, sites, in.position, show_progress);
    std::vector<mechlens::contrastive_direction> out;
    for (std::size_t k = 0; k < sites.size(); ++k) {
        try {
            out.push_back(mechlens::find_contrastive_direction(a[k].values.view(), b[k].values.view(), in.method));
        } catch (const mechlens::shape_error& e) {
            throw usage_error(e.what());
        }
    }
    std::printf("%zu positive, %zu negative prompts\n", pos.size(), neg.size());
    return out;
}

// --- mechlens probe ---------------------------------------------------------------------------------------------

int run_probe(arguments& args) {
    const model_options model_input = read_model_options(args);
    const auto data = args.get("data");
    const auto patterns = args.get("sites");
    const auto out = args.get("out");
    const auto tokenizer_path = args.get("tokenizer");
    const mechlens::index_t position = read_position(args);
    mechlens::probe_options options;
    options.l2 = parse_number<double>(args.get("l2").value_or("1e-3"), "--l2");
    const double held_out = parse_number<double>(args.get("held-out").value_or("0.2"), "--held-out");
    const auto seed = parse_number<std::uint64_t>(args.get("seed").value_or("0"), "--seed");
    args.reject_unknown();
    if (!data || !patterns) throw usage_error("probe needs --data FILE and --sites PATTERNS");
    const mechlens::transformer model = open_model(model_input);
    const text_tokenizer tokenizer = resolve_tokenizer(model_input.path, tokenizer_path);
    std::vector<std::string> texts;
    std::vector<int> labels;
    const std::vector<std::string> lines = read_lines(*data, "data");
    for (std::size_t i = 0; i < lines.size(); ++i) {
        const std::size_t tab = lines[i].find('\t');
        const std::string label = tab == std::string::npos ? std::string() : lines[i].substr(0, tab);
        if (label != "0" && label != "1")
            throw usage_error(
                concat("--data line ", std::to_string(i + 1), ": expected 'LABEL<TAB>TEXT' with LABEL 0 or 1"));
        labels.push_back(label == "1" ? 1 : 0);
        texts.push_back(lines[i].substr(tab + 1));
    }
    const std::vector<mechlens::site> sites = mechlens::match_sites(*patterns, model.config());
    const auto prompts = encode_lines(texts, tokenizer, model.config(), "data");
    const std::vector<mechlens::site_rows> rows =
        mechlens::collect_rows(model, prompts, sites, position, show_progress);
    mechlens::probe_split split;
    try {
        split = mechlens::probe_split::make(static_cast<mechlens::index_t>(labels.size()), held_out, seed);
    } catch (const std::invalid_argument& e) {
        throw usage_error(concat("--held-out / --data: ", e.what()));
    }
    std::printf("probes on %zu prompts (%zu to fit, %zu held out), l2 %g, position %s\n", labels.size(),
                split.train.size(), split.held_out.size(), options.l2,
                position < 0 ? "last" : std::to_string(position).c_str());
    std::printf("%-40s %10s %10s %12s\n", "site", "train acc", "held-out", "held-out loss");
    std::vector<std::vector<float>> saved;  // keeps each probe's floats alive until the file is written
    std::vector<mechlens::safetensors_tensor_ref> tensors;
    std::map<std::string, std::string> metadata{{"mechlens.probe.l2", std::to_string(options.l2)}};
    for (const mechlens::site_rows& r : rows) {
        const mechlens::index_t width = r.values.extent(1);
        auto subset = [&](const std::vector<mechlens::index_t>& which, std::vector<float>& x, std::vector<int>& y) {
            for (mechlens::index_t i : which) {
                for (mechlens::index_t k = 0; k < width; ++k) x.push_back(r.values(i, k));
                y.push_back(labels[static_cast<std::size_t>(i)]);
            }
            return mechlens::tensor_view<const float, 2>(x.data(),
                                                         {static_cast<mechlens::index_t>(which.size()), width});
        };
        std::vector<float> train_x, test_x;
        std::vector<int> train_y, test_y;
        const auto train = subset(split.train, train_x, train_y);
        const auto test = subset(split.held_out, test_x, test_y);
        const mechlens::logistic_probe probe = mechlens::fit_logistic_probe(train, train_y, options);
        const auto fit = mechlens::evaluate_probe(probe, train, train_y);
        const auto held = mechlens::evaluate_probe(probe, test, test_y);
        const std::string name = mechlens::to_string(r.where);
        std::printf("%-40s %9.1f%% %9.1f%% %12.4f%s\n", name.c_str(), 100.0 * fit.accuracy, 100.0 * held.accuracy,
                    held.log_loss, probe.converged ? "" : "  (not converged)");
        saved.emplace_back(probe.weights.begin(), probe.weights.end());
        saved.push_back({static_cast<float>(probe.bias)});
        metadata["mechlens.probe." + name + ".held_out_accuracy"] = std::to_string(held.accuracy);
    }
    if (out) {
        for (std::size_t k = 0; k < rows.size(); ++k) {
            const std::string name = mechlens::to_string(rows[k].where);
            tensors.push_back({name + ".weight", {rows[k].values.extent(1)}, saved[2 * k].data()});
            tensors.push_back({name + ".bias", {1}, saved[2 * k + 1].data()});
        }
        mechlens::write_safetensors(*out, tensors, metadata);
        std::fprintf(stderr, "wrote %s: <site>.weight (width) and <site>.bias (1) per site\n", out->c_str());
    }
    return 0;
}

// --- mechlens direction -----------------------------------------------------------------------------------------

/// --site resid_pre|resid_post at --layer L.
mechlens::site read_layer_site(arguments& args, const mechlens::model_config& c) {
    const auto layer = parse_number<mechlens::index_t>(args.get("layer").value_or("-1"), "--layer");
    if (layer < 0 || layer >= c.n_layers)
        throw usage_error(
            concat("--layer must be in [0, ", std::to_string(c.n_layers), "), got ", std::to_string(layer)));
    const std::string kind = args.get("site").value_or("resid_post");
    if (kind == "resid_post") return {mechlens::site_kind::resid_post, layer};
    if (kind == "resid_pre") return {mechlens::site_kind::resid_pre, layer};
    throw usage_error("--site must be resid_pre or resid_post, got '" + kind + "'");
}

int run_direction(arguments& args) {
    const contrast_input in = read_contrast_input(args);
    const mechlens::transformer model = open_model(in.model);
    const mechlens::site where = read_layer_site(args, model.config());
    args.reject_unknown();
    const mechlens::contrastive_direction d = contrast(in, model, {where}, "direction", "D.npy").front();
    const std::string& out = *in.out;
    std::vector<float> values(d.direction.begin(), d.direction.end());
    mechlens::write_npy(out, values.data(), {static_cast<mechlens::index_t>(values.size())});
    double norm = 0.0;
    for (double v : d.direction) norm += v * v;
    std::printf("%s direction at %s: norm %.4f", mechlens::to_string(in.method), mechlens::to_string(where).c_str(),
                std::sqrt(norm));
    if (in.method == mechlens::direction_method::pca)
        std::printf(", explaining %.1f %% of the paired differences' variance", 100.0 * d.explained_variance);
    std::printf("\nwrote %s (d_model)\n", out.c_str());
    return 0;
}

// --- mechlens orthogonalize -------------------------------------------------------------------------------------

/// A direction file: a .npy of d_model floats (any shape with that many elements).
std::vector<float> read_direction(const std::string& path, const mechlens::model_config& c, const char* option) {
    const mechlens::npy_array a = mechlens::read_npy(path);
    if (static_cast<mechlens::index_t>(a.data.size()) != c.d_model)
        throw usage_error(concat("--", option, " '", path, "' has ", std::to_string(a.data.size()),
                                 " values; the model's d_model is ", std::to_string(c.d_model)));
    return a.data;
}

int run_orthogonalize(arguments& args) {
    const model_options model_input = read_model_options(args);
    const auto direction_path = args.get("direction"), out = args.get("out");
    args.reject_unknown();
    if (!direction_path || !out) throw usage_error("orthogonalize needs --direction D.npy and --out FILE.safetensors");
    const mechlens::transformer model = open_model(model_input);
    const std::vector<float> direction = read_direction(*direction_path, model.config(), "direction");
    const mechlens::model_parameters edited =
        mechlens::orthogonalize_weights(mechlens::model_parameters(model.config(), model.weights()), direction);
    mechlens::save_checkpoint(*out, edited);
    std::printf("wrote %s: the direction removed from the embeddings, W_O, W_down and their biases%s\n", out->c_str(),
                model.config().tied_unembed ? " (the unembedding untied)" : "");
    return 0;
}

// --- mechlens control-vector ------------------------------------------------------------------------------------

/// --layers A-B (or A): blocks A to B inclusive, 1 <= A <= B < n_layers.
std::pair<mechlens::index_t, mechlens::index_t> read_layers(arguments& args, const mechlens::model_config& c) {
    const std::string text = args.get("layers").value_or(concat("1-", std::to_string(c.n_layers - 1)));
    const std::size_t dash = text.find('-');
    const auto first = parse_number<mechlens::index_t>(text.substr(0, dash), "--layers");
    const auto last =
        dash == std::string::npos ? first : parse_number<mechlens::index_t>(text.substr(dash + 1), "--layers");
    if (first < 1 || last < first || last >= c.n_layers)
        throw usage_error(concat("--layers must be A-B with 1 <= A <= B < ", std::to_string(c.n_layers),
                                 " (llama.cpp never gives block 0 a control vector), got '", text, "'"));
    return {first, last};
}

int run_control_vector(arguments& args) {
    const contrast_input in = read_contrast_input(args);
    const mechlens::transformer model = open_model(in.model);
    const auto [first, last] = read_layers(args, model.config());
    const std::optional<std::string> hint = args.get("model-hint");
    args.reject_unknown();
    std::vector<mechlens::site> sites;
    for (mechlens::index_t l = first; l <= last; ++l) sites.push_back({mechlens::site_kind::resid_post, l});
    const std::vector<mechlens::contrastive_direction> found = contrast(in, model, sites, "control-vector", "F.gguf");
    mechlens::control_vector cv;
    cv.model_hint = hint.value_or("llama");
    for (std::size_t k = 0; k < sites.size(); ++k)
        cv.directions.emplace(sites[k].layer, std::vector<float>(found[k].direction.begin(), found[k].direction.end()));
    const std::string& out = *in.out;
    mechlens::write_control_vector(out, cv);
    std::printf(
        "wrote %s: direction.%td .. direction.%td (%s, measured at blocks.N.hook_resid_post and added there "
        "by llama.cpp's --control-vector and mechlens generate --control-vector)\n",
        out.c_str(), first, last, mechlens::to_string(in.method));
    return 0;
}

}  // namespace medicine_impl

const command probe_command{
    "probe",
    "--model M --data FILE --sites PATTERNS [--position last|N] [--l2 1e-3] [--held-out 0.2] [--seed S]\n"
    "[--out F.safetensors]: logistic-regression probes (Newton's method) on one row per line of FILE\n"
    "(LABEL<TAB>TEXT, LABEL 0 or 1) at every matched site; prints train and held-out accuracy per site",
    medicine_impl::run_probe};

const command direction_command{
    "direction",
    "--model M --positive FILE --negative FILE --layer L [--site resid_pre|resid_post] [--method mean|pca]\n"
    "[--position last|N] --out D.npy: the contrastive direction between two prompt sets (one prompt per line):\n"
    "mean(positive) - mean(negative), or the first principal component of the paired differences",
    medicine_impl::run_direction};

const command orthogonalize_command{
    "orthogonalize",
    "--model M --direction D.npy --out FILE.safetensors: removes the direction from every matrix and bias that\n"
    "writes the residual stream; the file opens as a model and computes the run-time --ablate-direction",
    medicine_impl::run_orthogonalize};

const command control_vector_command{
    "control-vector",
    "--model M --positive FILE --negative FILE [--layers A-B] [--method mean|pca] [--position last|N]\n"
    "[--model-hint NAME] --out F.gguf: a llama.cpp control vector, direction.N measured at blocks.N.hook_resid_post\n"
    "(1 <= A <= B < n_layers; default every block but 0)",
    medicine_impl::run_control_vector};

}  // namespace mechlens_cli
