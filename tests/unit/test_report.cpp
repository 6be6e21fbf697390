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
    CHECK(mechlens::format_fixed(-INFINITY, 2) == "-inf");
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
    mechlens::line_series gappy{"gappy", {0, 1, 2, 3, 4}, {1, 2, NAN, 2, 1}, "#000", false};
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
