// What `mechlens patch` and `mechlens attribute` share (see prompt_pairs.hpp).

#include "prompt_pairs.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "../common.hpp"

namespace mechlens_cli {
namespace prompt_pairs_impl {

/// Stacks equal-length token lists into (count, pos); throws usage_error naming `what` otherwise.
mechlens::tensor<std::int32_t, 2> stack_prompts(const std::vector<std::vector<std::int32_t>>& lists, const char* what) {
    const auto length = static_cast<mechlens::index_t>(lists.front().size());
    mechlens::tensor<std::int32_t, 2> out({static_cast<mechlens::index_t>(lists.size()), length});
    for (std::size_t b = 0; b < lists.size(); ++b) {
        if (static_cast<mechlens::index_t>(lists[b].size()) != length)
            throw usage_error(std::string(what) + " " + std::to_string(b + 1) + " has " +
                              std::to_string(lists[b].size()) + " tokens, the first has " + std::to_string(length) +
                              "; every prompt of a sweep must have the same number of tokens");
        for (std::size_t p = 0; p < lists[b].size(); ++p)
            out(static_cast<mechlens::index_t>(b), static_cast<mechlens::index_t>(p)) = lists[b][p];
    }
    return out;
}

}  // namespace prompt_pairs_impl

prompt_pairs read_prompt_pairs(arguments& args, const std::filesystem::path& model_path,
                               const mechlens::transformer& model) {
    prompt_pairs out;
    const auto clean_text = args.all("clean"), corrupt_text = args.all("corrupt");
    const auto clean_ids = args.all("clean-tokens"), corrupt_ids = args.all("corrupt-tokens");
    const auto tokenizer_path = args.get("tokenizer");
    const auto metric_text = args.get("metric");
    std::vector<std::vector<std::int32_t>> clean, corrupt;
    if (!clean_text.empty() || !corrupt_text.empty()) {
        if (!clean_ids.empty() || !corrupt_ids.empty())
            throw usage_error(
                "give prompts as text (--clean/--corrupt) or as ids (--clean-tokens/--corrupt-tokens), "
                "not both");
        out.tokenizer = resolve_tokenizer(model_path, tokenizer_path);
        for (const auto& t : clean_text) clean.push_back(out.tokenizer->encode_prompt(t));
        for (const auto& t : corrupt_text) corrupt.push_back(out.tokenizer->encode_prompt(t));
    } else {
        if (tokenizer_path) out.tokenizer = resolve_tokenizer(model_path, tokenizer_path);
        for (const auto& t : clean_ids) clean.push_back(parse_token_list(t));
        for (const auto& t : corrupt_ids) corrupt.push_back(parse_token_list(t));
    }
    if (clean.empty()) throw usage_error("give at least one --clean (or --clean-tokens) prompt");
    if (clean.size() != corrupt.size())
        throw usage_error(std::to_string(clean.size()) + " clean and " + std::to_string(corrupt.size()) +
                          " corrupt prompts; give one corrupt prompt per clean one");
    out.clean = prompt_pairs_impl::stack_prompts(clean, "clean prompt");
    out.corrupt = prompt_pairs_impl::stack_prompts(corrupt, "corrupt prompt");
    if (out.corrupt.extent(1) != out.clean.extent(1))
        throw usage_error("clean prompts have " + std::to_string(out.clean.extent(1)) + " tokens, corrupt ones " +
                          std::to_string(out.corrupt.extent(1)) + "; pairs must have the same number of tokens");
    for (const std::int32_t t : clean.front())
        out.labels.push_back(out.tokenizer ? out.tokenizer->piece(0, t) : std::to_string(t));

    const auto pairs = out.clean.extent(0);
    if (metric_text) {
        const std::string& m = *metric_text;
        const auto colon = m.find(':');
        const std::string kind = m.substr(0, colon), rest = colon == std::string::npos ? "" : m.substr(colon + 1);
        if (kind == "logitdiff") {
            const auto dash = rest.find('-');
            if (dash == std::string::npos) throw usage_error("--metric logitdiff:A-B needs two token ids");
            const auto a = parse_number<std::int32_t>(rest.substr(0, dash), "--metric");
            const auto b = parse_number<std::int32_t>(rest.substr(dash + 1), "--metric");
            out.metric = mechlens::answer_metric::logit_difference(
                std::vector<std::int32_t>(static_cast<std::size_t>(pairs), a),
                std::vector<std::int32_t>(static_cast<std::size_t>(pairs), b));
        } else if (kind == "logit" || kind == "logprob") {
            const auto a = parse_number<std::int32_t>(rest, "--metric");
            std::vector<std::int32_t> tokens(static_cast<std::size_t>(pairs), a);
            out.metric = kind == "logit" ? mechlens::answer_metric::logit_of(tokens)
                                         : mechlens::answer_metric::log_probability(tokens);
        } else {
            throw usage_error("--metric must be logitdiff:A-B, logit:A or logprob:A, got '" + m + "'");
        }
    } else {
        // Each pair's own answers: what the model predicts after the clean prompt against after the corrupt one.
        auto top = [&](const mechlens::tensor<std::int32_t, 2>& tokens) {
            mechlens::tensor<float, 3> logits({pairs, 1, model.config().vocab_out()});
            mechlens::workspace ws;
            mechlens::forward(model, tokens.view(), logits.view(), ws);
            std::vector<std::int32_t> best;
            for (mechlens::index_t b = 0; b < pairs; ++b) {
                std::int32_t arg = 0;
                for (mechlens::index_t v = 1; v < model.config().vocab_out(); ++v)
                    if (logits(b, 0, v) > logits(b, 0, arg)) arg = static_cast<std::int32_t>(v);
                best.push_back(arg);
            }
            return best;
        };
        out.metric = mechlens::answer_metric::logit_difference(top(out.clean), top(out.corrupt));
        for (mechlens::index_t b = 0; b < pairs; ++b)
            if (out.metric.correct[static_cast<std::size_t>(b)] == out.metric.wrong[static_cast<std::size_t>(b)])
                throw usage_error("pair " + std::to_string(b + 1) +
                                  ": clean and corrupt prompts predict the same "
                                  "token, so there is no difference to explain; give --metric");
    }
    return out;
}

mechlens::patching_grid grid_named(const std::string& name) {
    using mechlens::patching_grid;
    using mechlens::site_kind;
    if (name == "resid_pre") return patching_grid::by_layer_position(site_kind::resid_pre);
    if (name == "resid_mid") return patching_grid::by_layer_position(site_kind::resid_mid);
    if (name == "resid_post") return patching_grid::by_layer_position(site_kind::resid_post);
    if (name == "attn_out") return patching_grid::by_layer_position(site_kind::attn_out);
    if (name == "mlp_out") return patching_grid::by_layer_position(site_kind::mlp_out);
    if (name == "z" || name == "heads") return patching_grid::by_layer_head(site_kind::attn_z);
    if (name == "z_pos" || name == "heads_pos") return patching_grid::by_layer_head_position(site_kind::attn_z);
    if (name == "q") return patching_grid::by_layer_head(site_kind::attn_q);
    if (name == "k") return patching_grid::by_layer_head(site_kind::attn_k);
    if (name == "v") return patching_grid::by_layer_head(site_kind::attn_v);
    if (name == "pattern") return patching_grid::by_layer_head(site_kind::attn_pattern);
    throw usage_error("unknown --grid '" + name +
                      "' (resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, z_pos, q, k, v, pattern)");
}

std::vector<std::string> grid_names(const std::optional<std::string>& text) {
    std::vector<std::string> names;
    std::string list = text ? *text : "resid_pre,attn_out,mlp_out,z";
    std::size_t begin = 0;
    while (begin <= list.size()) {
        const std::size_t comma = std::min(list.find(',', begin), list.size());
        if (comma > begin) names.push_back(list.substr(begin, comma - begin));
        begin = comma + 1;
    }
    if (names.empty()) throw usage_error("--grid names no grid");
    return names;
}

void print_table(const mechlens::patching_table& table, const std::vector<std::string>& labels) {
    const mechlens::index_t layers = table.values.extent(0), heads = table.values.extent(1),
                            positions = table.values.extent(2);
    std::printf("%s  (clean %+.4f, corrupt %+.4f)\n", table.grid.describe().c_str(), table.clean, table.corrupt);
    if (heads > 1 && positions > 1) {
        struct cell {
            mechlens::index_t l, h, p;
            float v;
        };
        std::vector<cell> cells;
        for (mechlens::index_t l = 0; l < layers; ++l)
            for (mechlens::index_t h = 0; h < heads; ++h)
                for (mechlens::index_t p = 0; p < positions; ++p) cells.push_back({l, h, p, table.values(l, h, p)});
        std::stable_sort(cells.begin(), cells.end(),
                         [](const cell& a, const cell& b) { return std::abs(a.v) > std::abs(b.v); });
        for (std::size_t i = 0; i < std::min<std::size_t>(10, cells.size()); ++i)
            std::printf("  L%tdH%td @ %td '%s'  %+.4f\n", cells[i].l, cells[i].h, cells[i].p,
                        labels[static_cast<std::size_t>(cells[i].p)].c_str(), static_cast<double>(cells[i].v));
        return;
    }
    const mechlens::index_t columns = heads > 1 ? heads : positions;
    std::printf("%6s", "");
    for (mechlens::index_t j = 0; j < columns; ++j) {
        std::string head = heads > 1 ? concat("H", std::to_string(j)) : labels[static_cast<std::size_t>(j)];
        if (head.size() > 7) head.resize(7);
        std::printf(" %7s", head.c_str());
    }
    std::printf("\n");
    for (mechlens::index_t l = 0; l < layers; ++l) {
        std::printf("  L%-3td", l);
        for (mechlens::index_t j = 0; j < columns; ++j)
            std::printf(" %+7.3f", static_cast<double>(heads > 1 ? table.values(l, j, 0) : table.values(l, 0, j)));
        std::printf("\n");
    }
}

void write_tables(const std::string& prefix, const std::string& title, const std::vector<std::string>& names,
                  const std::vector<mechlens::patching_table>& tables, const std::vector<std::string>& labels,
                  const std::string& description) {
    mechlens::html_report report(title);
    report.paragraph(description);
    for (std::size_t i = 0; i < tables.size(); ++i) {
        const mechlens::patching_table& t = tables[i];
        const std::string npy = concat(prefix, ".", names[i], ".npy");
        mechlens::write_npy(npy, mechlens::tensor_view<const float, 3>(t.values.view()));
        std::fprintf(stderr, "wrote %s\n", npy.c_str());
        mechlens::patching_heatmap_options options;
        options.title = concat(t.grid.describe(), " (clean ", mechlens::format_fixed(t.clean), ", corrupt ",
                               mechlens::format_fixed(t.corrupt), ")");
        const mechlens::index_t layers = t.values.extent(0), heads = t.values.extent(1), positions = t.values.extent(2);
        if (heads > 1 && positions > 1) {
            for (mechlens::index_t l = 0; l < layers; ++l) {
                options.title = concat(t.grid.describe(), ", layer ", std::to_string(l), " (head x position)");
                options.row_label = "head";
                std::vector<std::string> rows;
                for (mechlens::index_t h = 0; h < heads; ++h)
                    rows.push_back(concat("L", std::to_string(l), "H", std::to_string(h)));
                report.raw(mechlens::svg_patching_heatmap(
                    mechlens::tensor_view<const float, 2>(&t.values(l, 0, 0), {heads, positions}), rows,
                    mechlens::visible_tokens(labels), options));
            }
        } else if (heads > 1) {
            report.raw(mechlens::svg_patching_by_head(
                mechlens::tensor_view<const float, 2>(t.values.data(), {layers, heads}), options));
        } else {
            report.raw(mechlens::svg_patching_by_position(
                mechlens::tensor_view<const float, 2>(t.values.data(), {layers, positions}), labels, options));
        }
    }
    report.save(concat(prefix, ".html"));
    std::fprintf(stderr, "wrote %s.html\n", prefix.c_str());
}

}  // namespace mechlens_cli
