// libFuzzer harness for the JSON reader (io/json.hpp), which reads safetensors headers, config.json and
// tokenizer.json: parse from memory, then walk what came back, converting every number and naming every path.
// format_error is the documented rejection (from the parse or from a conversion); anything else escaping is a bug.
#include "fuzz_support.hpp"

namespace {

std::size_t walk(const mechlens::json_value& v, int depth) {
    if (depth > mechlens::json_max_depth + 1) std::abort();  // the parser must have refused this
    std::size_t count = 1;
    try {
        switch (v.kind()) {
            case mechlens::json_value::type::number:
                count += static_cast<std::size_t>(v.as_double() > 0.0);
                count += static_cast<std::size_t>(v.as_int64() & 1);
                count += static_cast<std::size_t>(v.as_uint64() & 1);
                break;
            case mechlens::json_value::type::string: count += v.as_string().size(); break;
            case mechlens::json_value::type::boolean: count += v.as_bool() ? 1U : 0U; break;
            default: break;
        }
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
    }
    if (v.is_array())
        for (const mechlens::json_value& item : v.items()) count += walk(item, depth + 1);
    if (v.is_object()) {
        for (const mechlens::json_member& m : v.members()) {
            if (v.find(m.key) != &m.value) std::abort();  // keys are unique, so find returns this very member
            count += walk(m.value, depth + 1);
        }
    }
    if (depth < 4) count += v.path().size();
    return count;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    mechlens::json_value v;
    try {
        v = mechlens::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    } catch (const mechlens::format_error& e) {
        mechlens_fuzz::rejected(e);
        return 0;
    }
    const std::size_t n = walk(v, 0);
    const mechlens::json_value copy = v;  // copies re-link every parent pointer; walking the copy must agree
    if (walk(copy, 0) != n) std::abort();
    mechlens_fuzz::keep(n);
    return 0;
}
