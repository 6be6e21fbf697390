#pragma once
/// @file
/// A small writer of self-contained HTML reports: headings, text, tables, inline-SVG line charts and heatmaps (for
/// attention patterns, on a sequential or a diverging colour scale). Everything is inline (no scripts, fonts or
/// stylesheets from elsewhere), so a report opens offline and can be mailed as one file. Every piece of text is
/// escaped.
#include <limits>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// `text` with the five characters that matter in HTML text and attribute values (& < > " ') replaced by entities.
inline std::string html_escape(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&#39;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

/// `value` with `precision` digits after the point ("nan", "inf" and "-inf" for non-finite values); never depends
/// on the locale's decimal separator.
inline std::string format_fixed(double value, int precision = 3) {
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.*f", std::clamp(precision, 0, 17), value);
    std::string s = buffer;
    std::replace(s.begin(), s.end(), ',', '.');  // a C locale with a decimal comma
    return s;
}

/// One curve of a line chart.
struct line_series {
    std::string name{};             ///< Legend text.
    std::vector<double> x{};        ///< Abscissae (same length as y); non-finite points break the line.
    std::vector<double> y{};        ///< Ordinates.
    std::string color = "#1f77b4";  ///< Any CSS colour.
    bool dashed = false;            ///< Draw dashed (e.g. a reference level).
};

/// A labelled vertical line across a chart (e.g. the step of a phase change).
struct chart_marker {
    double x = 0.0;       ///< Where, in data units.
    std::string label{};  ///< Text next to the line.
};

/// Layout of a line chart.
struct line_chart_options {
    std::string title{};                  ///< Caption above the plot.
    std::string x_label{};                ///< Caption of the horizontal axis.
    std::string y_label{};                ///< Caption of the vertical axis.
    int width = 720;                      ///< Pixels.
    int height = 320;                     ///< Pixels.
    std::vector<chart_marker> markers{};  ///< Vertical lines.
};

/// How a heatmap maps values to colours.
enum class color_scale {
    sequential,  ///< White at `min` to dark blue at `max`.
    diverging,   ///< Blue below 0, white at 0, red above; full colour at +-L, L = max(|min|, |max|).
};

/// Layout of a heatmap.
struct heatmap_options {
    std::string title{};                          ///< Caption above the map.
    std::string row_label{};                      ///< What rows are (e.g. "query").
    std::string col_label{};                      ///< What columns are (e.g. "key").
    double min = 0.0;                             ///< Value drawn white.
    double max = 1.0;                             ///< Value drawn darkest; values outside [min, max] are clamped.
    int cell = 16;                                ///< Pixels per cell.
    int precision = 2;                            ///< Digits of the value shown when hovering a cell.
    color_scale scale = color_scale::sequential;  ///< How values map to colours.
    bool causal = false;  ///< Grey out (as "masked", not as a value) cells right of the diagonal: keys after the query.
    bool legend = false;  ///< Draw a colour bar under the map labelled with the ends of the range (and 0 if diverging).
    std::string hover_join = " -> ";  ///< Text between the row and column label in a cell's hover text.
};

namespace detail {

/// Smallest and largest finite value over every series, with a margin so lines do not touch the frame.
inline std::pair<double, double> finite_range(const std::vector<line_series>& series, bool x_axis) {
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const line_series& s : series)
        for (const double v : x_axis ? s.x : s.y)
            if (std::isfinite(v)) {
                lo = std::min(lo, v);
                hi = std::max(hi, v);
            }
    if (!(lo <= hi)) return {0.0, 1.0};
    if (lo == hi) return {lo - 0.5, hi + 0.5};
    return {lo, hi};
}

/// Around four round tick values covering [lo, hi].
inline std::vector<double> ticks(double lo, double hi) {
    const double raw = (hi - lo) / 4.0;
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    double step = magnitude;
    for (const double m : {1.0, 2.0, 5.0, 10.0})
        if (magnitude * m >= raw) {
            step = magnitude * m;
            break;
        }
    std::vector<double> out;
    for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9 && out.size() < 20; t += step)
        out.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
    return out;
}

/// Digits after the point that tell ticks `step` apart.
inline int tick_precision(const std::vector<double>& t) {
    if (t.size() < 2) return 2;
    const double step = t[1] - t[0];
    return step >= 1.0 ? 0 : std::min(6, static_cast<int>(std::ceil(-std::log10(step))));
}

/// The colour of `fraction` in [0, 1] on a white-to-dark-blue ramp.
inline std::string ramp_color(double fraction) {
    const double f = std::clamp(fraction, 0.0, 1.0);
    const auto channel = [&](double from, double to) { return static_cast<int>(std::lround(from + (to - from) * f)); };
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "#%02x%02x%02x", channel(255, 8), channel(255, 48), channel(255, 107));
    return buffer;
}

/// The colour of `fraction` in [-1, 1] on a blue-white-red scale: -1 is #2166ac, 0 is #ffffff, 1 is #b2182b.
inline std::string diverging_color(double fraction) {
    const double f = std::isnan(fraction) ? 0.0 : std::clamp(fraction, -1.0, 1.0);
    const double a = std::abs(f);
    const auto channel = [&](double to) { return static_cast<int>(std::lround(255.0 + (to - 255.0) * a)); };
    char buffer[16];
    if (f >= 0)
        std::snprintf(buffer, sizeof buffer, "#%02x%02x%02x", channel(178), channel(24), channel(43));
    else
        std::snprintf(buffer, sizeof buffer, "#%02x%02x%02x", channel(33), channel(102), channel(172));
    return buffer;
}

/// Full-colour magnitude of a diverging heatmap: max(|min|, |max|), or 1 when that is zero or not finite.
inline double diverging_limit(const heatmap_options& options) {
    const double limit = std::max(std::abs(options.min), std::abs(options.max));
    return std::isfinite(limit) && limit > 0 ? limit : 1.0;
}

}  // namespace detail

/// An inline `<svg>` line chart of `series` with axes, ticks, a legend and `options.markers`.
inline std::string svg_line_chart(const std::vector<line_series>& series, const line_chart_options& options = {}) {
    for (const line_series& s : series)
        if (s.x.size() != s.y.size())
            throw shape_error("svg_line_chart: series '" + s.name + "' has " + std::to_string(s.x.size()) +
                              " x values and " + std::to_string(s.y.size()) + " y values");
    std::size_t longest_name = 0;  // the legend sits right of the plot, where it never hides a curve
    for (const line_series& s : series) longest_name = std::max(longest_name, s.name.size());
    const double legend_w =
        longest_name == 0 ? 0 : 40 + 7.0 * static_cast<double>(std::min<std::size_t>(longest_name, 32));
    const double left = 64, right = 16 + legend_w, top = options.title.empty() ? 16 : 36, bottom = 48;
    const double w = std::max(options.width, 160), h = std::max(options.height, 120);
    const double plot_w = w - left - right, plot_h = h - top - bottom;
    // Plain variables, not structured bindings: C++20 lets lambdas capture bindings, but clang 14 does not yet.
    const std::pair<double, double> x_range = detail::finite_range(series, true);
    const std::pair<double, double> y_range = detail::finite_range(series, false);
    const double x_lo = x_range.first, x_hi = x_range.second;
    double y_lo = y_range.first, y_hi = y_range.second;
    const double pad = (y_hi - y_lo) * 0.05;
    y_lo -= pad;
    y_hi += pad;
    const auto px = [&](double x) { return left + (x - x_lo) / (x_hi - x_lo) * plot_w; };
    const auto py = [&](double y) { return top + (y_hi - y) / (y_hi - y_lo) * plot_h; };
    const auto num = [](double v) { return format_fixed(v, 1); };

    std::string svg = "<svg class=\"chart\" width=\"" + num(w) + "\" height=\"" + num(h) + "\" viewBox=\"0 0 " +
                      num(w) + " " + num(h) + "\" font-size=\"12\">\n";
    if (!options.title.empty())
        svg += "<text x=\"" + num(w / 2) + "\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">" +
               html_escape(options.title) + "</text>\n";
    svg += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(plot_w) + "\" height=\"" +
           num(plot_h) + "\" fill=\"none\" stroke=\"#888\"/>\n";
    const std::vector<double> xt = detail::ticks(x_lo, x_hi), yt = detail::ticks(y_lo, y_hi);
    const int xp = detail::tick_precision(xt), yp = detail::tick_precision(yt);
    for (const double t : xt)
        svg += "<line x1=\"" + num(px(t)) + "\" y1=\"" + num(top) + "\" x2=\"" + num(px(t)) + "\" y2=\"" +
               num(top + plot_h) + "\" stroke=\"#eee\"/><text x=\"" + num(px(t)) + "\" y=\"" + num(top + plot_h + 16) +
               "\" text-anchor=\"middle\">" + format_fixed(t, xp) + "</text>\n";
    for (const double t : yt)
        svg += "<line x1=\"" + num(left) + "\" y1=\"" + num(py(t)) + "\" x2=\"" + num(left + plot_w) + "\" y2=\"" +
               num(py(t)) + "\" stroke=\"#eee\"/><text x=\"" + num(left - 6) + "\" y=\"" + num(py(t) + 4) +
               "\" text-anchor=\"end\">" + format_fixed(t, yp) + "</text>\n";
    if (!options.x_label.empty())
        svg += "<text x=\"" + num(left + plot_w / 2) + "\" y=\"" + num(h - 8) + "\" text-anchor=\"middle\">" +
               html_escape(options.x_label) + "</text>\n";
    if (!options.y_label.empty())
        svg += "<text transform=\"translate(14 " + num(top + plot_h / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
               html_escape(options.y_label) + "</text>\n";
    for (const line_series& s : series) {
        std::string path;  // one "M x y L x y ..." path; a non-finite point starts a new piece
        bool pen_down = false;
        for (std::size_t i = 0; i < s.x.size(); ++i) {
            if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
                pen_down = false;
                continue;
            }
            path += (pen_down ? " L" : " M") + num(px(s.x[i])) + " " + num(py(s.y[i]));
            pen_down = true;
        }
        if (path.empty()) continue;
        svg += "<path d=\"" + path.substr(1) + "\" fill=\"none\" stroke=\"" + html_escape(s.color) +
               "\" stroke-width=\"1.5\"" + (s.dashed ? " stroke-dasharray=\"6 4\"" : "") + "><title>" +
               html_escape(s.name) + "</title></path>\n";
    }
    for (const chart_marker& m : options.markers) {
        if (!std::isfinite(m.x) || m.x < x_lo || m.x > x_hi) continue;
        svg += "<line x1=\"" + num(px(m.x)) + "\" y1=\"" + num(top) + "\" x2=\"" + num(px(m.x)) + "\" y2=\"" +
               num(top + plot_h) + "\" stroke=\"#d62728\" stroke-dasharray=\"2 3\"/><text x=\"" + num(px(m.x) + 4) +
               "\" y=\"" + num(top + 14) + "\" fill=\"#d62728\">" + html_escape(m.label) + "</text>\n";
    }
    double legend_y = top + 14;
    for (const line_series& s : series) {
        const double x = left + plot_w + 12;
        svg += "<line x1=\"" + num(x) + "\" y1=\"" + num(legend_y - 4) + "\" x2=\"" + num(x + 20) + "\" y2=\"" +
               num(legend_y - 4) + "\" stroke=\"" + html_escape(s.color) + "\" stroke-width=\"2\"" +
               (s.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/><text x=\"" + num(x + 26) + "\" y=\"" +
               num(legend_y) + "\">" + html_escape(s.name) + "</text>\n";
        legend_y += 16;
    }
    return svg + "</svg>\n";
}

/// An inline `<svg>` heatmap of `values` (rows, cols), e.g. one head's attention pattern (query, key), with
/// `row_labels` / `col_labels` (empty, or one per row / column; e.g. the tokens) and each value shown on hover.
/// Non-finite values are drawn pink (sequential) or yellow (diverging); masked cells (options.causal) light grey.
/// Throws shape_error when a label list has another length.
inline std::string svg_heatmap(tensor_view<const float, 2> values, const std::vector<std::string>& row_labels = {},
                               const std::vector<std::string>& col_labels = {}, const heatmap_options& options = {}) {
    const index_t rows = values.extent(0), cols = values.extent(1);
    if (!row_labels.empty() && static_cast<index_t>(row_labels.size()) != rows)
        throw shape_error("svg_heatmap: " + std::to_string(row_labels.size()) + " row labels for " +
                          std::to_string(rows) + " rows");
    if (!col_labels.empty() && static_cast<index_t>(col_labels.size()) != cols)
        throw shape_error("svg_heatmap: " + std::to_string(col_labels.size()) + " column labels for " +
                          std::to_string(cols) + " columns");
    std::size_t longest = 0;  // room for the labels, at about 7 pixels per character
    for (const auto* labels : {&row_labels, &col_labels})
        for (const std::string& l : *labels) longest = std::max(longest, l.size());
    const double cell = std::max(options.cell, 4);
    const double label_room = 12 + 7.0 * static_cast<double>(std::min<std::size_t>(longest, 16));
    const double left = label_room + (options.row_label.empty() ? 0 : 18);
    const double top = (options.title.empty() ? 4 : 24) + label_room + (options.col_label.empty() ? 0 : 18);
    const double legend_w = 160;
    const double map_bottom = top + cell * static_cast<double>(rows);
    const double w = std::max(left + cell * static_cast<double>(cols), options.legend ? left + legend_w + 24 : 0.0) + 8;
    const double h = map_bottom + (options.legend ? 44 : 8);
    const auto num = [](double v) { return format_fixed(v, 1); };
    const double span = options.max > options.min ? options.max - options.min : 1.0;
    const bool diverging = options.scale == color_scale::diverging;
    const double limit = detail::diverging_limit(options);
    const auto color = [&](double v) {
        if (!std::isfinite(v)) return std::string(diverging ? "#fde725" : "#f4c2c2");
        return diverging ? detail::diverging_color(v / limit) : detail::ramp_color((v - options.min) / span);
    };

    std::string svg = "<svg class=\"heatmap\" width=\"" + num(w) + "\" height=\"" + num(h) + "\" viewBox=\"0 0 " +
                      num(w) + " " + num(h) + "\" font-size=\"11\">\n";
    if (!options.title.empty())
        svg += "<text x=\"4\" y=\"16\" font-weight=\"bold\">" + html_escape(options.title) + "</text>\n";
    if (!options.col_label.empty())
        svg += "<text x=\"" + num(left + cell * static_cast<double>(cols) / 2) + "\" y=\"" +
               num(options.title.empty() ? 16 : 36) + "\" text-anchor=\"middle\">" + html_escape(options.col_label) +
               "</text>\n";
    if (!options.row_label.empty())
        svg += "<text transform=\"translate(12 " + num(top + cell * static_cast<double>(rows) / 2) +
               ") rotate(-90)\" text-anchor=\"middle\">" + html_escape(options.row_label) + "</text>\n";
    for (std::size_t c = 0; c < col_labels.size(); ++c) {  // column labels read upwards, ending at the map
        const double x = left + cell * (static_cast<double>(c) + 0.5) + 4;
        svg += "<text transform=\"translate(" + num(x) + " " + num(top - 4) + ") rotate(-90)\">" +
               html_escape(col_labels[c]) + "</text>\n";
    }
    for (std::size_t r = 0; r < row_labels.size(); ++r)
        svg += "<text x=\"" + num(left - 4) + "\" y=\"" + num(top + cell * (static_cast<double>(r) + 0.5) + 4) +
               "\" text-anchor=\"end\">" + html_escape(row_labels[r]) + "</text>\n";
    for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c) {
            const double v = static_cast<double>(values(r, c));
            // A causal mask leaves future keys at exactly 0; drawing them white would read as "attends nowhere".
            const bool masked = options.causal && c > r + (cols - rows);
            svg += "<rect x=\"" + num(left + cell * static_cast<double>(c)) + "\" y=\"" +
                   num(top + cell * static_cast<double>(r)) + "\" width=\"" + num(cell) + "\" height=\"" + num(cell) +
                   "\" fill=\"" + (masked ? std::string("#d9d9d9") : color(v)) + "\"><title>" +
                   html_escape((row_labels.empty() ? std::to_string(r) : row_labels[static_cast<std::size_t>(r)]) +
                               options.hover_join +
                               (col_labels.empty() ? std::to_string(c) : col_labels[static_cast<std::size_t>(c)]) +
                               ": " + (masked ? std::string("masked") : format_fixed(v, options.precision))) +
                   "</title></rect>\n";
        }
    svg += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(cell * static_cast<double>(cols)) +
           "\" height=\"" + num(cell * static_cast<double>(rows)) + "\" fill=\"none\" stroke=\"#888\"/>\n";
    if (options.legend) {  // a colour bar from the low end of the range to the high end, in its own group
        const double lo = diverging ? -limit : options.min, hi = diverging ? limit : options.min + span;
        const int steps = 24;
        const double step_w = legend_w / steps, y = map_bottom + 10;
        svg += "<g class=\"legend\">\n";
        for (int i = 0; i < steps; ++i) {
            const double v = lo + (hi - lo) * (static_cast<double>(i) + 0.5) / steps;
            svg += "<rect x=\"" + num(left + step_w * static_cast<double>(i)) + "\" y=\"" + num(y) + "\" width=\"" +
                   num(step_w + 0.5) + "\" height=\"10\" fill=\"" + color(v) + "\"/>\n";
        }
        const auto label = [&](double x, const char* anchor, double v) {
            svg += "<text x=\"" + num(x) + "\" y=\"" + num(y + 24) + "\" text-anchor=\"" + anchor + "\">" +
                   format_fixed(v, options.precision) + "</text>\n";
        };
        label(left, "start", lo);
        if (diverging) label(left + legend_w / 2, "middle", 0.0);
        label(left + legend_w, "end", hi);
        svg += "</g>\n";
    }
    return svg + "</svg>\n";
}

/// An HTML `<table>` with a header row; every cell is escaped. Rows may be shorter than the header.
inline std::string html_table(const std::vector<std::string>& header,
                              const std::vector<std::vector<std::string>>& rows) {
    std::string out = "<table>\n<thead><tr>";
    for (const std::string& h : header) out += "<th>" + html_escape(h) + "</th>";
    out += "</tr></thead>\n<tbody>\n";
    for (const auto& row : rows) {
        out += "<tr>";
        for (const std::string& cell : row) out += "<td>" + html_escape(cell) + "</td>";
        out += "</tr>\n";
    }
    return out + "</tbody>\n</table>\n";
}

/// A report assembled piece by piece and written as one self-contained HTML file.
class html_report {
public:
    /// An empty report whose page title and first heading are `title`.
    explicit html_report(std::string title) : title_(std::move(title)) {}

    /// Appends a heading; `level` is clamped to 1..6.
    html_report& heading(std::string_view text, int level = 2) {
        const std::string tag = "h" + std::to_string(std::clamp(level, 1, 6));
        body_ += "<" + tag + ">" + html_escape(text) + "</" + tag + ">\n";
        return *this;
    }
    /// Appends a paragraph of text.
    html_report& paragraph(std::string_view text) {
        body_ += "<p>" + html_escape(text) + "</p>\n";
        return *this;
    }
    /// Appends preformatted text (console output), kept verbatim apart from escaping.
    html_report& preformatted(std::string_view text) {
        body_ += "<pre>" + html_escape(text) + "</pre>\n";
        return *this;
    }
    /// Appends a table; see html_table.
    html_report& table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
        body_ += html_table(header, rows);
        return *this;
    }
    /// Appends a line chart; see svg_line_chart.
    html_report& line_chart(const std::vector<line_series>& series, const line_chart_options& options = {}) {
        body_ += "<figure>" + svg_line_chart(series, options) + "</figure>\n";
        return *this;
    }
    /// Appends a heatmap; see svg_heatmap.
    html_report& heatmap(tensor_view<const float, 2> values, const std::vector<std::string>& row_labels = {},
                         const std::vector<std::string>& col_labels = {}, const heatmap_options& options = {}) {
        body_ += "<figure>" + svg_heatmap(values, row_labels, col_labels, options) + "</figure>\n";
        return *this;
    }
    /// Appends trusted figure markup (e.g. an SVG from attribution_report.hpp) in a `<figure>`, with an escaped
    /// caption when `caption` is not empty.
    html_report& figure(std::string_view markup, std::string_view caption = {}) {
        body_ += "<figure>";
        body_ += markup;
        if (!caption.empty()) body_ += "<figcaption>" + html_escape(caption) + "</figcaption>";
        body_ += "</figure>\n";
        return *this;
    }
    /// Starts a row of figures side by side (close it with end_row).
    html_report& begin_row() {
        body_ += "<div class=\"row\">\n";
        return *this;
    }
    /// Ends a row started by begin_row.
    html_report& end_row() {
        body_ += "</div>\n";
        return *this;
    }
    /// Adds trusted CSS rules to the page's own stylesheet (in its head).
    html_report& style(std::string_view css) {
        css_ += css;
        return *this;
    }
    /// Appends trusted markup as it is (not escaped): the caller answers for it being self-contained.
    html_report& raw(std::string_view markup) {
        body_ += markup;
        return *this;
    }

    /// The whole document.
    [[nodiscard]] std::string str() const {
        return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + html_escape(title_) +
               "</title>\n<style>\n"
               "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\n"
               "table{border-collapse:collapse;margin:1em 0}\n"
               "th,td{border:1px solid #ccc;padding:3px 10px;text-align:right}\n"
               "th{background:#f3f3f3}\n"
               "pre{background:#f7f7f7;padding:0.5em;overflow-x:auto}\n"
               "figure{margin:0.5em}\n"
               ".row{display:flex;flex-wrap:wrap;align-items:flex-start}\n" + css_ +
               "</style>\n</head>\n<body>\n<h1>" +
               html_escape(title_) + "</h1>\n" + body_ + "</body>\n</html>\n";
    }
    /// Writes the document to `path`; throws format_error naming the path when it cannot be written.
    void save(const std::filesystem::path& path) const {
        std::ofstream file(path, std::ios::binary | std::ios::trunc);
        const std::string text = str();
        if (file) file.write(text.data(), static_cast<std::streamsize>(text.size()));
        if (file) file.close();
        if (!file) throw format_error(path.string() + ": cannot write the HTML report");
    }

private:
    std::string title_;
    std::string body_;
    std::string css_;
};

MECHLENS_END_NAMESPACE
