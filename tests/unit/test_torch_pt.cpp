// PyTorch state dicts (torch.save zip archives): the four ARENA TransformerLens models against PyTorch's view of
// them, tiny synthetic files (dtypes, views, shared storages, nested dicts), and hostile files.
#include <mechlens/mechlens.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <limits>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_torch_pt {

namespace fs = std::filesystem;
using mechlens::json_value;
using namespace std::string_literals;

namespace {

fs::path torch_fixtures() { return mechlens_test::fixtures_dir() / "torch_pt"; }

json_value read_json(const fs::path& path) { return mechlens::read_json_file(path); }

const json_value& member(const json_value& object, const std::string& key) { return object.at(key); }

/// A fixture number: a JSON number, or "inf", "-inf", "nan".
double number(const json_value& v) {
    if (v.is_string()) {
        if (v.as_string() == "nan") return std::numeric_limits<double>::quiet_NaN();
        return v.as_string() == "inf" ? std::numeric_limits<double>::infinity()
                                      : -std::numeric_limits<double>::infinity();
    }
    return std::stod(v.number_text());
}

/// Equal as float32 values, NaN equal to NaN, +0 and -0 told apart.
bool same_float(float a, double expected) {
    if (std::isnan(expected)) return std::isnan(a);
    return static_cast<double>(a) == expected && std::signbit(a) == std::signbit(expected);
}

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::span<const std::byte> as_bytes(const std::string& s) {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

void check_shape(const mechlens::torch_tensor& t, const json_value& expected) {
    const json_value& shape = member(expected, "shape");
    REQUIRE(t.shape.size() == shape.items().size());
    for (std::size_t i = 0; i < t.shape.size(); ++i) CHECK(t.shape[i] == std::stoll(shape.items()[i].number_text()));
    CHECK(std::string(mechlens::torch_dtype_name(t.dtype)) == member(expected, "dtype").as_string());
}

/// Parses `bytes`; true when it loads, false on format_error; anything else escapes and fails the test.
bool parses(const std::string& bytes) {
    try {
        const mechlens::torch_state_dict sd = mechlens::parse_torch_state_dict(as_bytes(bytes), "mem.pt");
        for (const mechlens::torch_tensor& t : sd.tensors) {
            std::size_t count = 1;
            for (const mechlens::index_t e : t.shape) count *= static_cast<std::size_t>(e);
            REQUIRE(count == t.values.size());
        }
        return true;
    } catch (const mechlens::format_error& e) {
        REQUIRE(std::string(e.what()).find('\n') == std::string::npos);
        return false;
    }
}

}  // namespace

TEST_CASE("torch_pt: the four ARENA models load; every tensor matches PyTorch's name, shape, dtype and values",
          "[torch_pt]") {
    const json_value arena = read_json(torch_fixtures() / "arena.json");
    REQUIRE(arena.members().size() == 4);
    for (const mechlens::json_member& model : arena.members()) {
        const fs::path path = mechlens_test::model_file(member(model.value, "file").as_string());
        MECHLENS_REQUIRE_FILE_OR_SKIP(path);
        INFO(path);
        const mechlens::torch_state_dict sd = mechlens::read_torch_state_dict(path);
        const json_value& tensors = member(model.value, "tensors");
        REQUIRE(sd.tensors.size() == tensors.items().size());
        for (std::size_t i = 0; i < sd.tensors.size(); ++i) {
            const mechlens::torch_tensor& t = sd.tensors[i];
            const json_value& e = tensors.items()[i];
            INFO(t.name);
            REQUIRE(t.name == member(e, "name").as_string());
            check_shape(t, e);
            REQUIRE(t.values.size() == std::stoull(member(e, "numel").number_text()));
            double sum = 0.0, sum_sq = 0.0;
            for (const float v : t.values) {
                sum += static_cast<double>(v);
                sum_sq += static_cast<double>(v) * static_cast<double>(v);
            }
            const double want_sum = number(member(e, "sum")), want_sq = number(member(e, "sum_sq"));
            if (std::isfinite(want_sum)) {
                CHECK(std::abs(sum - want_sum) <= 1e-9 * (1.0 + std::sqrt(want_sq) * static_cast<double>(t.values.size())));
                CHECK(std::abs(sum_sq - want_sq) <= 1e-9 * (1.0 + want_sq));
            } else {
                CHECK(std::isinf(sum) == std::isinf(want_sum));
            }
            const json_value& first = member(e, "first");
            const json_value& last = member(e, "last");
            for (std::size_t k = 0; k < first.items().size(); ++k) CHECK(same_float(t.values[k], number(first.items()[k])));
            for (std::size_t k = 0; k < last.items().size(); ++k)
                CHECK(same_float(t.values[t.values.size() - last.items().size() + k], number(last.items()[k])));
        }
        // What the models are: TransformerLens layouts, mask buffers as bool, IGNORE as a float scalar.
        const mechlens::torch_tensor* mask = sd.find("blocks.0.attn.mask");
        REQUIRE(mask);
        CHECK(mask->dtype == mechlens::torch_dtype::boolean);
        CHECK(sd.find("embed.W_E") != nullptr);
        CHECK(sd.find("unembed.W_U") != nullptr);
    }
}

TEST_CASE("torch_pt: synthetic torch.save files hold exactly what PyTorch holds (dtypes, views, shared storages, "
          "nested dicts with _metadata, parameters, big-endian)", "[torch_pt]") {
    const json_value fixture = read_json(torch_fixtures() / "synthetic.json");
    const json_value& good = member(fixture, "good");
    REQUIRE(good.members().size() >= 7);
    for (const mechlens::json_member& file : good.members()) {
        const fs::path path = torch_fixtures() / "synthetic" / file.key;
        INFO(path);
        const mechlens::torch_state_dict sd = mechlens::read_torch_state_dict(path);
        REQUIRE(sd.tensors.size() == file.value.items().size());
        for (std::size_t i = 0; i < sd.tensors.size(); ++i) {
            const mechlens::torch_tensor& t = sd.tensors[i];
            const json_value& e = file.value.items()[i];
            INFO(t.name);
            REQUIRE(t.name == member(e, "name").as_string());
            check_shape(t, e);
            const json_value& values = member(e, "values");
            REQUIRE(t.values.size() == values.items().size());
            for (std::size_t k = 0; k < t.values.size(); ++k) CHECK(same_float(t.values[k], number(values.items()[k])));
        }
        // In-memory parsing gives the same result as the file reader.
        const mechlens::torch_state_dict again =
            mechlens::parse_torch_state_dict(as_bytes(read_bytes(path)), path.string());
        REQUIRE(again.tensors.size() == sd.tensors.size());
    }
    const mechlens::torch_state_dict views = mechlens::read_torch_state_dict(torch_fixtures() / "synthetic" / "views.pt");
    REQUIRE(views.find("transposed"));
    CHECK(views.find("transposed")->values[1] == 6.0f);  // (6, 4) view of a (4, 6) arange: [0][1] is 6
    const mechlens::torch_state_dict nested = mechlens::read_torch_state_dict(torch_fixtures() / "synthetic" / "nested.pt");
    CHECK(nested.find("model.0.weight") != nullptr);
    CHECK(nested.find("optim.inner.w") != nullptr);
    CHECK(nested.find("step") == nullptr);  // a number, not a tensor
}

TEST_CASE("torch_pt: hostile files are rejected with a one-line format_error naming the file and the reason",
          "[torch_pt]") {
    const json_value fixture = read_json(torch_fixtures() / "synthetic.json");
    const json_value& bad = member(fixture, "bad");
    REQUIRE(bad.members().size() >= 10);
    for (const mechlens::json_member& file : bad.members()) {
        const fs::path path = torch_fixtures() / "synthetic" / file.key;
        INFO(path);
        try {
            (void)mechlens::read_torch_state_dict(path);
            FAIL("accepted " << path);
        } catch (const mechlens::format_error& e) {
            const std::string message = e.what();
            INFO(message);
            CHECK(message.find(path.string()) == 0);
            CHECK(message.find(file.value.as_string()) != std::string::npos);
            CHECK(message.find('\n') == std::string::npos);
        }
    }
    // Not archives at all, legacy pickles and empty files.
    CHECK_THROWS_AS(mechlens::parse_torch_state_dict(as_bytes(std::string("\x80\x02}q\x00.", 6)), "x"),
                    mechlens::format_error);
    CHECK_THROWS_AS(mechlens::parse_torch_state_dict(as_bytes(std::string("PK\x03\x04")), "x"), mechlens::format_error);
    CHECK_THROWS_AS(mechlens::parse_torch_state_dict(as_bytes(std::string()), "x"), mechlens::format_error);
    CHECK_THROWS_WITH(mechlens::read_torch_state_dict(torch_fixtures() / "synthetic" / "missing.pt"),
                      Catch::Matchers::Contains("missing.pt"));
}

TEST_CASE("torch_pt: every truncation of an archive throws format_error, and single-byte corruptions load or throw "
          "format_error, nothing else", "[torch_pt][fuzz]") {
    for (const char* name : {"views.pt", "nested.pt", "dtypes.pt"}) {
        const std::string bytes = read_bytes(torch_fixtures() / "synthetic" / name);
        INFO(name);
        REQUIRE(parses(bytes));
        for (std::size_t n = 0; n < bytes.size(); ++n) REQUIRE_FALSE(parses(bytes.substr(0, n)));
        std::mt19937 rng(7);
        for (std::size_t i = 0; i < bytes.size(); ++i) {
            std::string corrupt = bytes;
            corrupt[i] = static_cast<char>(static_cast<unsigned char>(corrupt[i]) ^ (1u << (rng() % 8)));
            (void)parses(corrupt);
        }
    }
}

TEST_CASE("torch_pt: the ZIP reader checks CRCs, finds ZIP64 records and rejects lying directories", "[torch_pt]") {
    const std::string bytes = read_bytes(torch_fixtures() / "synthetic" / "ok_handmade.pt");
    const mechlens::zip_reader zip(as_bytes(bytes), "ok.zip");
    REQUIRE(zip.entries().size() == 3);
    const mechlens::zip_entry* data = zip.find("archive/data/0");
    REQUIRE(data);
    CHECK(data->uncompressed_size == 16);
    CHECK(zip.read(*data).size() == 16);
    CHECK(mechlens::detail::crc32(as_bytes(std::string("123456789"))) == 0xCBF43926u);  // the standard check value

    // The central directory's size of data/0 (offset 24 of its entry) made larger than the file.
    const std::size_t central = bytes.find("PK\x01\x02");
    const std::size_t second = bytes.find("PK\x01\x02", central + 4);
    REQUIRE(second != std::string::npos);
    std::string lying = bytes;
    for (const std::size_t at : {second + 20, second + 24}) lying[at + 2] = '\x7f';
    CHECK_THROWS_WITH(mechlens::zip_reader(as_bytes(lying), "lying.zip"), Catch::Matchers::Contains("claims"));
    // A directory offset past the end.
    std::string far = bytes;
    far[far.size() - 6 + 3] = '\x7f';
    CHECK_THROWS_WITH(mechlens::zip_reader(as_bytes(far), "far.zip"), Catch::Matchers::Contains("central directory"));

    // Real torch files carry a ZIP64 end record and locator.
    const fs::path real = mechlens_test::model_file("arena/cumsum/cumsum_model.pt");
    MECHLENS_REQUIRE_FILE_OR_SKIP(real);
    const std::string torch_bytes = read_bytes(real);
    REQUIRE(torch_bytes.find("PK\x06\x06") != std::string::npos);
    const mechlens::zip_reader torch_zip(as_bytes(torch_bytes), real.string());
    CHECK(torch_zip.entries().size() == 20);
    CHECK(torch_zip.find("cumsum_model/data.pkl") != nullptr);
    for (const mechlens::zip_entry& e : torch_zip.entries())
        if (e.name.find("/data/") != std::string::npos) CHECK(e.data_offset % 64 == 0);  // torch aligns storages
}

TEST_CASE("torch_pt: the unpickler refuses unknown opcodes and globals and bounds marks, memo and nesting",
          "[torch_pt][fuzz]") {
    const auto run = [](const std::string& program) {
        mechlens::detail::torch_unpickler u(as_bytes(program), "p.pt");
        return u.run();
    };
    CHECK_THROWS_WITH(run("\x80\x02(S'x'\n."), Catch::Matchers::Contains("opcode 0x53"));  // STRING: protocol 0
    CHECK_THROWS_WITH(run("\x80\x02" "c__builtin__\nexec\n."), Catch::Matchers::Contains("__builtin__.exec"));
    CHECK_THROWS_WITH(run("\x80\x02h\x05."s), Catch::Matchers::Contains("never stored"));
    CHECK_THROWS_WITH(run("\x80\x02" + std::string(70000, '(') + "."), Catch::Matchers::Contains("MARKs"));
    CHECK_THROWS_WITH(run("\x80\x02}"), Catch::Matchers::Contains("truncated"));
    CHECK_THROWS_WITH(run("\x80\x02" "ctorch\nFloatStorage\n)R."), Catch::Matchers::Contains("not something to call"));
    CHECK(run("\x80\x02]q\x00h\x00" "a."s).kind == mechlens::detail::pickle_kind::list);  // a list holding itself
    CHECK(run("\x80\x02}q\x00X\x01\x00\x00\x00" "ah\x00s."s).kind == mechlens::detail::pickle_kind::dict);
    CHECK(run("\x80\x02\x8a\x02\xff\x7f."s).integer == 32767);
    CHECK(run("\x80\x02\x8a\x01\xff."s).integer == -1);
    CHECK(run("\x80\x02G\x3f\xf8\x00\x00\x00\x00\x00\x00."s).floating == 1.5);
    CHECK(run("\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x07\x94."s).integer == 7);  // FRAME, MEMOIZE
}

}  // namespace test_torch_pt
