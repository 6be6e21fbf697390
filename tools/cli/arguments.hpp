#pragma once
// Command-line parsing for the mechlens CLI: `mechlens COMMAND --key value ... [--flag]`.

#include <charconv>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace mechlens_cli {

/// A usage error: reported on one line, exit code 2.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Parsed `--key value` options of one command; every option must be consumed or it is reported as unknown.
class arguments {
public:
    /// Parses argv[first..argc); `flags` are options that take no value.
    arguments(int argc, char** argv, int first, const std::set<std::string>& flags) {
        for (int i = first; i < argc; ++i) {
            std::string key = argv[i];
            if (key.rfind("--", 0) != 0 && !(key.size() == 2 && key[0] == '-'))
                throw usage_error("unexpected argument '" + key + "'");
            key = key.substr(key.find_first_not_of('-'));
            if (flags.count(key)) {
                values_[key].push_back("1");
                continue;
            }
            if (i + 1 >= argc) throw usage_error("option --" + key + " needs a value");
            values_[key].push_back(argv[++i]);
        }
    }

    /// The last value of an optional option.
    std::optional<std::string> get(const std::string& key) {
        used_.insert(key);
        auto it = values_.find(key);
        if (it == values_.end()) return std::nullopt;
        return it->second.back();
    }
    /// Every value of a repeatable option.
    std::vector<std::string> all(const std::string& key) {
        used_.insert(key);
        auto it = values_.find(key);
        return it == values_.end() ? std::vector<std::string>{} : it->second;
    }
    /// The value of a required option.
    std::string require(const std::string& key) {
        auto value = get(key);
        if (!value) throw usage_error("missing required option --" + key);
        return *value;
    }
    /// True when a flag was given.
    bool flag(const std::string& key) { return get(key).has_value(); }

    /// Throws usage_error naming the first option nobody asked for.
    void reject_unknown() const {
        for (const auto& [key, unused] : values_)
            if (!used_.count(key)) throw usage_error("unknown option --" + key);
    }

private:
    std::map<std::string, std::vector<std::string>> values_;
    std::set<std::string> used_;
};

/// Parses a whole decimal number of type T or throws usage_error naming the option.
template <class T>
T parse_number(const std::string& text, const std::string& what) {
    T value{};
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc() || ptr != end || text.empty())
        throw usage_error("invalid value '" + text + "' for " + what);
    return value;
}

/// Parses a comma-separated list of token ids such as "1,403,407".
inline std::vector<std::int32_t> parse_token_list(const std::string& text) {
    std::vector<std::int32_t> ids;
    std::size_t begin = 0;
    while (begin <= text.size()) {
        const std::size_t comma = std::min(text.find(',', begin), text.size());
        ids.push_back(parse_number<std::int32_t>(text.substr(begin, comma - begin), "--tokens"));
        begin = comma + 1;
    }
    return ids;
}

}  // namespace mechlens_cli
