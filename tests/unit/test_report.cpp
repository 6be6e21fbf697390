#include <limits>
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_report {

namespace {

// Checks that every element opened in `html` is closed in order, skipping void elements (meta, br, ...), self-closing
// tags (<rect .../>), the doctype and comments. Returns "" when balanced, else what went wrong.
std::string tag_balance_error(const std::string& html) {
    const std::vector<std::string> void_elements = {"meta", "br", "hr", "img", "input", "link", "wbr"};
    std::vector<std::string> open;
    std::size_t i = 0;
    while ((i = html.find('<', i)) != std::string::npos) {
        const std::size_t end = html.find('>', i);
        if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
        const std::string tag = html.substr(i + 1, end - i - 1);
        i = end + 1;
        if (tag.empty()) return "empty tag";
        if (tag[0] == '!') continue;  // doctype, comment
        if (tag.back() == '/') continue;
        const bool closing = tag[0] == '/';
        const std::string body = closing ? tag.substr(1) : tag;
        const std::string name = body.substr(0, body.find_first_of(" \t\n"));
        if (closing) {
            if (open.empty() || open.back() != name)
                return "</" + name + "> closes " + (open.empty() ? std::string("nothing") : "<" + open.back() + ">");
            open.pop_back();
        } else if (std::find(void_elements.begin(), void_elements.end(), name) == void_elements.end()) {
            open.push_back(name);
        }
    }
    return open.empty() ? std::string() : "<" + open.back() + "> is never closed";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("html_escape replaces the characters that matter in HTML", "[report]") {
    CHECK(mechlens::html_escape("a < b && c > \"d\" 'e'") == "a &lt; b &amp;&amp; c &gt; &quot;d&quot; &#39;e&#39;");
    CHECK(mechlens::html_escape("plain text") == "plain text");
    CHECK(mechlens::html_escape("") == "");
    CHECK(mechlens::html_escape("&amp;") == "&amp;amp;");  // escaping is not idempotent: it never guesses
}

TEST_CASE("format_fixed prints fixed-point numbers and names non-finite values", "[report]") {
    CHECK(mechlens::format_fixed(3.14159, 2) == "3.14");
    CHECK(mechlens::format_fixed(-0.5, 1) == "-0.5");
    CHECK(mechlens::format_fixed(2.0, 0) == "2");
    CHECK(mechlens::format_fixed(std::nan(""), 2) == "nan");
    CHECK(mechlens::format_fixed(-std::numeric_limits<double>::infinity(), 2) == "-inf");
}

TEST_CASE("html_table escapes its cells and has one row per entry", "[report]") {
    const std::string table = mechlens::html_table({"head", "score"}, {{"L1H<2>", "0.93"}, {"L0H1", "0.81"}});
    CHECK(contains(table, "<th>head</th><th>score</th>"));
    CHECK(contains(table, "<td>L1H&lt;2&gt;</td><td>0.93</td>"));
    CHECK(contains(table, "<td>0.81</td>"));
    CHECK_FALSE(contains(table, "<2>"));
    CHECK(tag_balance_error(table).empty());
}

TEST_CASE("svg_line_chart draws every series with its legend, markers and numeric ticks", "[report]") {
    mechlens::line_series loss{"loss <repeated>", {0, 100, 200, 300}, {4.1, 3.9, 0.5, 0.1}, "#d62728", false};
    mechlens::line_series chance{"chance", {0, 300}, {4.14, 4.14}, "#888", true};
    mechlens::line_chart_options options;
    options.title = "Loss & chance";
    options.x_label = "step";
    options.markers.push_back({150.0, "phase change"});
    const std::string svg = mechlens::svg_line_chart({loss, chance}, options);
    CHECK(svg.rfind("<svg", 0) == 0);
    CHECK(tag_balance_error(svg).empty());
    CHECK(contains(svg, "loss &lt;repeated&gt;"));
    CHECK(contains(svg, "Loss &amp; chance"));
    CHECK(contains(svg, "phase change"));
    CHECK(contains(svg, "stroke-dasharray=\"6 4\""));
    CHECK(contains(svg, ">300<"));  // an x tick at the last step
    CHECK(contains(svg, ">4<"));    // a y tick near the top
    // One path per series: "M" starts it and each later point is an "L".
    std::size_t paths = 0;
    for (std::size_t at = svg.find("<path d=\"M"); at != std::string::npos; at = svg.find("<path d=\"M", at + 1))
        ++paths;
    CHECK(paths == 2);

    mechlens::line_series bad{"bad", {0, 1}, {1}, "#000", false};
    CHECK_THROWS_AS(mechlens::svg_line_chart({bad}), mechlens::shape_error);
}

TEST_CASE("svg_line_chart breaks lines at non-finite points and survives empty and flat data", "[report]") {
    mechlens::line_series gappy{"gappy", {0, 1, 2, 3, 4}, {1, 2, std::numeric_limits<double>::quiet_NaN(), 2, 1}, "#000", false};
    const std::string svg = mechlens::svg_line_chart({gappy});
    const std::size_t path = svg.find("<path d=\"");
    REQUIRE(path != std::string::npos);
    const std::string d = svg.substr(path, svg.find('"', path + 9) - path);
    CHECK(std::count(d.begin(), d.end(), 'M') == 2);  // two pieces around the NaN
    CHECK_FALSE(contains(svg, "nan"));
    CHECK(tag_balance_error(mechlens::svg_line_chart({})).empty());
    mechlens::line_series flat{"flat", {0, 1}, {2, 2}, "#000", false};
    const std::string flat_svg = mechlens::svg_line_chart({flat});
    CHECK(tag_balance_error(flat_svg).empty());
    CHECK_FALSE(contains(flat_svg, "nan"));
    CHECK_FALSE(contains(flat_svg, "inf"));
}

TEST_CASE("svg_heatmap draws one cell per value with escaped labels and values on hover", "[report]") {
    mechlens::tensor<float, 2> pattern({3, 3});
    pattern.fill(0.0f);
    pattern(0, 0) = 1.0f;
    pattern(1, 0) = 0.25f;
    pattern(1, 1) = 0.75f;
    pattern(2, 1) = 0.5f;
    pattern(2, 2) = 0.5f;
    mechlens::heatmap_options options;
    options.title = "L1H2 <induction>";
    const std::vector<std::string> labels = {"<s>", "A&B", "\"q\""};
    const std::string svg = mechlens::svg_heatmap(pattern.view(), labels, labels, options);
    CHECK(tag_balance_error(svg).empty());
    std::size_t cells = 0;
    for (std::size_t at = svg.find("<rect"); at != std::string::npos; at = svg.find("<rect", at + 1)) ++cells;
    CHECK(cells == 9 + 1);  // the cells and the frame
    CHECK(contains(svg, "L1H2 &lt;induction&gt;"));
    CHECK(contains(svg, "&lt;s&gt;"));
    CHECK(contains(svg, "A&amp;B"));
    CHECK(contains(svg, "&quot;q&quot;"));
    CHECK(contains(svg, "0.75"));
    CHECK(contains(svg, "fill=\"#ffffff\""));  // zero is white
    CHECK(contains(svg, "fill=\"#08306b\""));  // one is the darkest blue
    CHECK_THROWS_AS(mechlens::svg_heatmap(pattern.view(), {"only one"}), mechlens::shape_error);
}

TEST_CASE("html_report is a self-contained, balanced document and saves to a file", "[report]") {
    mechlens::tensor<float, 2> pattern({2, 2});
    pattern.fill(0.5f);
    mechlens::html_report report("Grow <see> & intervene");
    report.heading("Loss")
        .paragraph("The phase change happens at step 123.")
        .line_chart({{"loss", {0, 1, 2}, {3.0, 2.0, 1.0}, "#1f77b4", false}}, {.title = "loss curve"})
        .begin_row()
        .heatmap(pattern.view(), {"a", "b"}, {"a", "b"}, {.title = "L0H0"})
        .end_row()
        .table({"ablated", "loss"}, {{"none", "0.012"}})
        .preformatted("step  loss\n   0  4.1 <- chance");
    const std::string html = report.str();
    CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
    CHECK(tag_balance_error(html).empty());
    CHECK(contains(html, "<title>Grow &lt;see&gt; &amp; intervene</title>"));
    CHECK(contains(html, "step 123"));
    CHECK(contains(html, "0.012"));
    CHECK(contains(html, "4.1 &lt;- chance"));
    // Self-contained: nothing fetched from elsewhere.
    CHECK_FALSE(contains(html, "http://"));
    CHECK_FALSE(contains(html, "https://"));
    CHECK_FALSE(contains(html, "<script"));
    CHECK_FALSE(contains(html, "src="));

    const std::filesystem::path path = mechlens_test::scratch_dir() / "report_test.html";
    report.save(path);
    std::ifstream in(path, std::ios::binary);
    // Sized read: GCC 12 -O3 reports a spurious null dereference inside istreambuf_iterator.
    std::string saved(static_cast<std::size_t>(std::filesystem::file_size(path)), '\0');
    in.read(saved.data(), static_cast<std::streamsize>(saved.size()));
    CHECK(saved == html);
    CHECK_THROWS_AS(report.save(mechlens_test::scratch_dir() / "no_such_dir" / "x.html"), mechlens::format_error);
}

// ---- attribution reports ----------------------------------------------------------------------------------------

namespace {

std::size_t count_of(const std::string& text, const std::string& part) {
    std::size_t n = 0;
    for (std::size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + part.size())) ++n;
    return n;
}

// The markup before the legend group (the cells and frame of a heatmap).
std::string before_legend(const std::string& svg) { return svg.substr(0, svg.find("<g class=\"legend\">")); }

// The numeric value of attribute `name` in the first tag at or after `from` that has it.
double attribute(const std::string& text, std::size_t from, const std::string& name) {
    const std::size_t at = text.find(" " + name + "=\"", from);
    REQUIRE(at != std::string::npos);
    return std::stod(text.substr(at + name.size() + 3));
}

mechlens::tensor<float, 2> causal_pattern() {  // (query, key) = (3, 3), rows sum to 1, zeros above the diagonal
    mechlens::tensor<float, 2> p({3, 3});
    p.fill(0.0f);
    p(0, 0) = 1.0f;
    p(1, 0) = 0.25f;
    p(1, 1) = 0.75f;
    p(2, 0) = 0.5f;
    p(2, 2) = 0.5f;
    return p;
}

}  // namespace

TEST_CASE("visible_token shows whitespace, control bytes and broken UTF-8", "[report]") {
    using mechlens::visible_token;
    CHECK(visible_token(" the") == "\u00b7the");
    CHECK(visible_token("a\nb\tc") == "a\u21b5b\u21e5c");
    CHECK(visible_token("") == "\u2205");
    CHECK(visible_token(std::string("\x01\x7f", 2)) == "\\x01\\x7F");
    CHECK(visible_token(std::string(1, '\0')) == "\\x00");
    CHECK(visible_token("caf\xc3\xa9") == "caf\xc3\xa9");       // valid UTF-8 is kept
    CHECK(visible_token("\xe2\x96\x81x") == "\xe2\x96\x81x");   // U+2581 is the caller's business
    CHECK(visible_token("x\xc3") == "x\\xC3");                  // cut short
    CHECK(visible_token("\xff\xc0\xaf") == "\\xFF\\xC0\\xAF");  // never valid / overlong
    CHECK(visible_token("\xed\xa0\x80") == "\\xED\\xA0\\x80");  // a surrogate
    CHECK(visible_token("<script>") == "<script>");             // escaping happens at output
}

TEST_CASE("svg_attention_pattern labels both axes with tokens and greys out masked cells", "[report]") {
    const mechlens::tensor<float, 2> p = causal_pattern();
    const std::vector<std::string> tokens = {"<script>", " a&b", "\"q\""};
    const std::string svg = mechlens::svg_attention_pattern(p.view(), tokens, {.title = "L0H1 <prev>"});
    CHECK(tag_balance_error(svg).empty());
    CHECK(count_of(svg, "<rect") == 9 + 1);
    CHECK(count_of(svg, ": masked</title>") == 3);  // (0,1), (0,2), (1,2)
    CHECK(count_of(svg, "fill=\"#d9d9d9\"") == 3);
    CHECK(count_of(svg, "fill=\"#ffffff\"") == 1);  // the one unmasked zero, (2,1), stays white
    CHECK(contains(svg, "&lt;script&gt; -&gt; &lt;script&gt;: 1.00"));
    CHECK(contains(svg, "\u00b7a&amp;b"));
    CHECK(contains(svg, "&quot;q&quot;"));
    CHECK(contains(svg, "L0H1 &lt;prev&gt;"));
    CHECK_FALSE(contains(svg, "<script"));

    const std::string unmasked = mechlens::svg_attention_pattern(p.view(), tokens, {.causal = false});
    CHECK(count_of(unmasked, "masked") == 0);
    CHECK(count_of(unmasked, "fill=\"#ffffff\"") == 4);

    // Two queries over four keys (a KV cache): the queries are the last two positions, only (0, 3) is in the future.
    mechlens::tensor<float, 2> tail({2, 4});
    tail.fill(0.25f);
    const std::string cached = mechlens::svg_attention_pattern(tail.view(), {"a", "b", "c", "d"});
    CHECK(count_of(cached, ": masked</title>") == 1);
    CHECK(contains(cached, "c -&gt; d: masked"));

    CHECK_THROWS_AS(mechlens::svg_attention_pattern(p.view(), {"a", "b"}), mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::svg_attention_pattern(tail.view(), {"a", "b"}), mechlens::shape_error);
    mechlens::tensor<float, 2> tall({3, 2});
    tall.fill(0.5f);
    CHECK_THROWS_AS(mechlens::svg_attention_pattern(tall.view(), {"a", "b"}), mechlens::shape_error);
}

TEST_CASE("html_attention_grid puts the chosen heads side by side titled LxHy", "[report]") {
    const mechlens::tensor<float, 2> one = causal_pattern();
    mechlens::tensor<float, 3> heads({4, 3, 3});  // (head, query, key)
    for (mechlens::index_t h = 0; h < 4; ++h)
        for (mechlens::index_t q = 0; q < 3; ++q)
            for (mechlens::index_t k = 0; k < 3; ++k) heads(h, q, k) = one(q, k);
    const std::vector<std::string> tokens = {"x", "y", "z"};
    const std::string all = mechlens::html_attention_grid(heads.view(), 1, tokens);
    CHECK(tag_balance_error(all).empty());
    CHECK(count_of(all, "<svg") == 4);
    for (const char* title : {">L1H0<", ">L1H1<", ">L1H2<", ">L1H3<"}) CHECK(contains(all, title));
    const std::string some = mechlens::html_attention_grid(heads.view(), 2, tokens, {3, 0});
    CHECK(count_of(some, "<svg") == 2);
    CHECK(some.find(">L2H3<") < some.find(">L2H0<"));
    CHECK(count_of(some, ": masked</title>") == 2 * 3);
    CHECK_THROWS_AS(mechlens::html_attention_grid(heads.view(), 0, tokens, {4}), mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::html_attention_grid(heads.view(), 0, {"x"}), mechlens::shape_error);
}

TEST_CASE("the diverging scale is white at 0 and blue / red at the ends", "[report]") {
    CHECK(mechlens::detail::diverging_color(0.0) == "#ffffff");
    CHECK(mechlens::detail::diverging_color(1.0) == "#b2182b");
    CHECK(mechlens::detail::diverging_color(-1.0) == "#2166ac");
    CHECK(mechlens::detail::diverging_color(7.0) == "#b2182b");  // clamped
    CHECK(mechlens::detail::diverging_color(std::nan("")) == "#ffffff");
}

TEST_CASE("svg_patching_heatmap centres a diverging scale on 0 with a symmetric legend", "[report]") {
    mechlens::tensor<float, 2> v({2, 3});  // (layer, pos)
    v(0, 0) = -2.0f;
    v(0, 1) = 0.0f;
    v(0, 2) = 1.0f;
    v(1, 0) = 2.0f;
    v(1, 1) = 0.5f;
    v(1, 2) = NAN;
    const std::vector<std::string> tokens = {"<s>", " b", "A&B"};
    const std::string svg = mechlens::svg_patching_by_position(v.view(), tokens, {.title = "resid_pre <patch>"});
    CHECK(tag_balance_error(svg).empty());
    const std::string cells = before_legend(svg);
    CHECK(count_of(cells, "<rect") == 6 + 1);
    CHECK(count_of(cells, "fill=\"#ffffff\"") == 1);                                     // 0
    CHECK(count_of(cells, "fill=\"#b2182b\"") == 1);                                     // +max
    CHECK(count_of(cells, "fill=\"#2166ac\"") == 1);                                     // -max
    CHECK(contains(cells, "fill=\"" + mechlens::detail::diverging_color(0.25) + "\""));  // 0.5 of 2
    CHECK(contains(cells, "L1, \u00b7b: 0.500"));
    CHECK(contains(cells, "L1, A&amp;B: nan"));
    CHECK(contains(cells, "&lt;s&gt;"));
    CHECK(contains(cells, "resid_pre &lt;patch&gt;"));
    const std::string legend = svg.substr(cells.size());
    CHECK(contains(legend, ">-2.000<"));
    CHECK(contains(legend, ">0.000<"));
    CHECK(contains(legend, ">2.000<"));

    // A given limit: 2 of 4 is half colour, and nothing reaches the extremes.
    const std::string wide = before_legend(mechlens::svg_patching_heatmap(v.view(), {}, {}, {.limit = 4.0}));
    CHECK(count_of(wide, "fill=\"" + mechlens::detail::diverging_color(0.5) + "\"") == 1);
    CHECK(count_of(wide, "fill=\"#b2182b\"") == 0);
    CHECK_THROWS_AS(mechlens::svg_patching_heatmap(v.view(), {}, {}, {.limit = 0.0}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::svg_patching_by_position(v.view(), {"a", "b"}), mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::svg_patching_heatmap(v.view(), {"L0"}, {}), mechlens::shape_error);

    const std::string by_head = mechlens::svg_patching_by_head(v.view());
    CHECK(tag_balance_error(by_head).empty());
    CHECK(contains(by_head, "L1, H2: nan"));
    mechlens::tensor<float, 2> zeros({2, 2});
    zeros.fill(0.0f);
    CHECK(count_of(before_legend(mechlens::svg_patching_by_head(zeros.view())), "fill=\"#ffffff\"") == 4);
}

TEST_CASE("svg_bar_chart sorts bars by magnitude around a zero axis", "[report]") {
    const std::vector<std::string> labels = {"a", "<script>alert('x')</script>", "c", "d", "e"};
    const std::vector<double> values = {0.5, -3.0, 1.0, std::numeric_limits<double>::quiet_NaN(), -1.0};
    const std::string svg = mechlens::svg_bar_chart(labels, values, {.title = "DLA & co"});
    CHECK(tag_balance_error(svg).empty());
    CHECK(count_of(svg, "<rect") == 5);
    CHECK_FALSE(contains(svg, "<script"));
    CHECK(contains(svg, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    CHECK(contains(svg, "DLA &amp; co"));
    // Order: |-3|, then the tie 1 / -1 in input order, then 0.5, NaN last.
    const std::size_t script = svg.find(">&lt;script"), c = svg.find(">c<"), e = svg.find(">e<"), a = svg.find(">a<"),
                      d = svg.find(">d<");
    CHECK(script < c);
    CHECK(c < e);
    CHECK(e < a);
    CHECK(a < d);
    CHECK(contains(svg, ">-3.000<"));
    CHECK(contains(svg, ">0.500<"));
    CHECK(contains(svg, ">nan<"));
    CHECK(count_of(svg, "fill=\"#2166ac\"") == 2);  // the negative bars
    CHECK(count_of(svg, "fill=\"#b2182b\"") == 3);  // positive (and NaN, drawn empty)
    // Negative bars end at the zero axis, positive ones start there; lengths are proportional.
    const double zero = attribute(svg, svg.find("class=\"zero\""), "x1");
    const std::size_t neg_bar = svg.find("<rect", script), pos_bar = svg.find("<rect", c);
    CHECK(attribute(svg, neg_bar, "x") + attribute(svg, neg_bar, "width") == Approx(zero).margin(0.2));
    CHECK(attribute(svg, pos_bar, "x") == Approx(zero).margin(0.1));
    CHECK(attribute(svg, neg_bar, "width") == Approx(3 * attribute(svg, pos_bar, "width")).margin(0.3));

    const std::string top2 = mechlens::svg_bar_chart(labels, values, {.top_k = 2});
    CHECK(count_of(top2, "<rect") == 2);
    CHECK_FALSE(contains(top2, ">a<"));
    CHECK_THROWS_AS(mechlens::svg_bar_chart({"only"}, {1.0, 2.0}), mechlens::shape_error);
    CHECK(tag_balance_error(mechlens::svg_bar_chart(std::vector<std::pair<std::string, double>>{})).empty());

    mechlens::logit_attribution dla;
    dla.components = {"embed", "L0H0", "L0 mlp"};
    dla.values = {0.25, 2.0, -0.75};
    dla.total = 1.5;
    const std::string chart = mechlens::svg_logit_attribution(dla);
    CHECK(count_of(chart, "<rect") == 3);
    CHECK(chart.find(">L0H0<") < chart.find(">L0 mlp<"));
    CHECK(contains(chart, "total over all 3 components: 1.500"));
}

TEST_CASE("html_logit_lens_table shows the top token per layer and position, shaded and with a target", "[report]") {
    // (layers, pos, vocab) = (2, 3, 4); vocabulary with a token to escape and one with a leading space.
    mechlens::tensor<float, 3> lens({2, 3, 4});
    lens.fill(0.0f);
    const float ln3 = std::log(3.0f);
    lens(0, 0, 1) = ln3;   // p(" the") = 3 / 6
    lens(0, 1, 2) = ln3;   // p("&") = 0.5
    lens(0, 2, 3) = ln3;   // p("cat") = 0.5
    lens(1, 0, 3) = 50.f;  // certain
    lens(1, 1, 3) = 50.f;
    lens(1, 2, 0) = 50.f;
    const std::vector<std::string> vocab = {"<s>", " the", "&", "cat"};
    const std::vector<std::string> input = {"<s>", " the", "\"cat\""};
    const std::string table = mechlens::html_logit_lens_table(lens.view(), input, vocab, {.targets = {3}});
    CHECK(tag_balance_error(table).empty());
    CHECK(count_of(table, "<td") == 2 * 3);
    CHECK(count_of(table, "<th>") == 1 + 3 + 2);
    CHECK(contains(table, "<th>&lt;s&gt;</th><th>\u00b7the</th><th>&quot;cat&quot;</th>"));
    CHECK(contains(table, "<th>L0</th>"));
    CHECK(contains(table, "<b>\u00b7the</b> 0.50"));
    CHECK(contains(table, "<b>&amp;</b> 0.50"));
    CHECK(contains(table, "<b>cat</b> 1.00"));
    CHECK(contains(table, "background:#08306b;color:#fff"));  // probability 1 is the darkest shade
    CHECK(count_of(table, "box-shadow") == 3);                // "cat" on top at (0, 2), (1, 0), (1, 1)
    CHECK(count_of(table, "class=\"target\"") == 6);
    CHECK(contains(table, "cat: #1, 0.50"));
    CHECK(contains(table, "cat: #4, 0.17"));  // 1 / 6, behind " the" and the tied lower ids
    CHECK(contains(table, "title=\"1. \u00b7the  0.50&#10;2. &lt;s&gt;  0.17"));
    CHECK_FALSE(contains(table, "<s>"));

    // One batch row of a (layers, batch, pos, vocab) lens gives the same table.
    mechlens::tensor<float, 4> batched({2, 2, 3, 4});
    batched.fill(-1.0f);
    for (mechlens::index_t l = 0; l < 2; ++l)
        for (mechlens::index_t p = 0; p < 3; ++p)
            for (mechlens::index_t v = 0; v < 4; ++v) batched(l, 1, p, v) = lens(l, p, v);
    CHECK(mechlens::html_logit_lens_table(batched.view(), 1, input, vocab, {.targets = {3}}) == table);
    CHECK_THROWS_AS(mechlens::html_logit_lens_table(batched.view(), 2, input, vocab), mechlens::shape_error);

    CHECK_THROWS_AS(mechlens::html_logit_lens_table(lens.view(), {"a", "b"}, vocab), mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::html_logit_lens_table(lens.view(), input, vocab, {.targets = {1, 2}}),
                    mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::html_logit_lens_table(lens.view(), input, vocab, {.targets = {4}}),
                    std::invalid_argument);
    CHECK_THROWS_AS(mechlens::html_logit_lens_table(lens.view(), input, vocab, {.layer_labels = {"embed"}}),
                    mechlens::shape_error);
    // Ids beyond a (padded) vocabulary list are shown by number.
    CHECK(contains(mechlens::html_logit_lens_table(lens.view(), input, {"<s>"}), "<b>#3</b>"));
}

TEST_CASE("a report with every attribution piece is balanced and fetches nothing", "[report]") {
    const mechlens::tensor<float, 2> pattern = causal_pattern();
    mechlens::tensor<float, 3> heads({2, 3, 3});
    heads.fill(1.0f / 3.0f);
    mechlens::tensor<float, 2> patch({2, 3});
    patch.fill(-0.5f);
    patch(1, 2) = 1.0f;
    mechlens::tensor<float, 3> lens({2, 3, 4});
    lens.fill(0.0f);
    lens(1, 2, 3) = 5.0f;
    const std::vector<std::string> tokens = {"<s>", " 'x'", "</svg>"};
    mechlens::logit_attribution dla;
    dla.components = {"embed", "L0H0"};
    dla.values = {1.0, -0.5};
    dla.total = 0.5;

    mechlens::html_report report("Attribution <report>");
    mechlens::add_attention_pattern(report, pattern.view(), tokens, {.title = "L0H0"});
    mechlens::add_attention_grid(report, heads.view(), 1, tokens);
    mechlens::add_patching_heatmap(report, patch.view(), {"L0", "L1"}, tokens, {.title = "patching"});
    report.figure(mechlens::svg_patching_by_head(patch.view()), "by head & <layer>");
    mechlens::add_bar_chart(report, {{"up", 2.0}, {"down", -1.0}}, {.title = "bars"});
    mechlens::add_logit_attribution(report, dla);
    mechlens::add_logit_lens_table(report, lens.view(), tokens, {"a", "b", "c", "d"}, {.caption = "lens"});
    const std::string html = report.str();
    CHECK(tag_balance_error(html).empty());
    CHECK(count_of(html, "<svg") == 1 + 2 + 1 + 1 + 1 + 1);
    CHECK(count_of(html, "<table") == 1);
    CHECK(contains(html, "<figcaption>by head &amp; &lt;layer&gt;</figcaption>"));
    CHECK(count_of(html, "http") == count_of(html, "xmlns=\"http://www.w3.org/2000/svg\""));
    CHECK_FALSE(contains(html, "<script"));
    CHECK_FALSE(contains(html, "src="));
    CHECK_FALSE(contains(html, "url("));
    CHECK_FALSE(contains(html, "</svg></svg>"));

    const std::filesystem::path path = mechlens_test::scratch_dir() / "attribution_report_test.html";
    report.save(path);
    std::ifstream in(path, std::ios::binary);
    std::string saved(static_cast<std::size_t>(std::filesystem::file_size(path)), '\0');
    in.read(saved.data(), static_cast<std::streamsize>(saved.size()));
    CHECK(saved == html);
    CHECK(count_of(saved, "http") == count_of(saved, "xmlns=\"http://www.w3.org/2000/svg\""));
}

}  // namespace test_report
