/// @file
/// A downstream program built against an installed (find_package) or vendored (add_subdirectory) mechlens:
/// exits non-zero when the library it sees does not behave as documented.

#include <cstdio>
#include <string>
#include <type_traits>

#include <mechlens/mechlens.hpp>

// The versioned inline namespace must be transparent: mechlens::x and mechlens::v0_1::x are one entity.
static_assert(std::is_same_v<mechlens::v0_1::index_t, mechlens::index_t>, "inline namespace v0_1 is not transparent");
static_assert(std::is_same_v<mechlens::index_t, std::ptrdiff_t>, "index_t must be ptrdiff_t (as Eigen::Index)");
static_assert(std::is_same_v<mechlens::v0_1::tensor<float, 2>, mechlens::tensor<float, 2>>,
              "tensor must live in the versioned namespace");
static_assert(std::is_same_v<mechlens::v0_1::model_config, mechlens::model_config>,
              "model_config must live in the versioned namespace");

#if defined(CONSUMER_EXPECTED_VERSION_MAJOR) && defined(CONSUMER_EXPECTED_VERSION_MINOR)
static_assert(MECHLENS_VERSION_MAJOR == CONSUMER_EXPECTED_VERSION_MAJOR &&
                  MECHLENS_VERSION_MINOR == CONSUMER_EXPECTED_VERSION_MINOR,
              "header version macros disagree with the CMake package version");
#endif

namespace {

int failures = 0;

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "consumer: FAILED: %s\n", what);
        ++failures;
    }
}

void check_tensor() {
    mechlens::tensor<float, 2> t({2, 3});  // (rows, cols)
    check(t.size() == 6, "tensor size");
    check(t(1, 2) == 0.0f, "tensor is zero-initialised");
    for (mechlens::index_t i = 0; i < 2; ++i)
        for (mechlens::index_t j = 0; j < 3; ++j) t(i, j) = static_cast<float>(i * 3 + j);

    const auto m = mechlens::as_matrix(t.view());
    check(m.rows() == 2 && m.cols() == 3 && m(1, 2) == 5.0f, "as_matrix sees the same elements");
    check(m.sum() == 15.0f, "Eigen reduction over a mapped tensor");

    const auto col = t.view().slice(1, 1, 2);  // (rows, 1)
    check(col.extent(0) == 2 && col.extent(1) == 1 && col(1, 0) == 4.0f, "strided slice");

    bool threw = false;
    try {
        (void)t.view().at(2, 0);
    } catch (const mechlens::shape_error&) {
        threw = true;
    }
    check(threw, "out-of-range at() throws shape_error");
}

void check_config() {
    mechlens::model_config c;
    c.d_model = 64;
    c.n_layers = 2;
    c.n_heads = 8;
    c.n_kv_heads = 4;
    c.d_mlp = 172;
    c.d_vocab = 512;
    c.n_ctx = 128;
    check(c.d_head() == 8 && c.group_size() == 2, "model_config derived sizes");
    c.validate();  // a consistent config must not throw

    c.n_heads = 7;
    bool threw = false;
    try {
        c.validate("consumer config");
    } catch (const mechlens::format_error& e) {
        threw = std::string(e.what()).find("consumer config") != std::string::npos;
    }
    check(threw, "inconsistent model_config throws format_error naming its source");
}

}  // namespace

int main() {
    try {
        check_tensor();
        check_config();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "consumer: unexpected exception: %s\n", e.what());
        return 2;
    }
    if (failures != 0) return 1;
    std::printf("consumer: mechlens %d.%d.%d OK\n", MECHLENS_VERSION_MAJOR, MECHLENS_VERSION_MINOR,
                MECHLENS_VERSION_PATCH);
    return 0;
}
