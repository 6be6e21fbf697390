// Owning tensors, strided views, shape errors and Eigen interop.
#include <mechlens/mechlens.hpp>

#include <cstdint>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_tensor {

using mechlens::index_t;

TEST_CASE("tensor: zero-initialised, 64-byte aligned, row-major", "[tensor]") {
    mechlens::tensor<float, 3> t({2, 3, 5});
    REQUIRE(t.size() == 30);
    REQUIRE(reinterpret_cast<std::uintptr_t>(t.data()) % mechlens::tensor_alignment == 0);
    for (index_t i = 0; i < t.size(); ++i) REQUIRE(t.data()[i] == 0.0f);
    t(1, 2, 4) = 7.0f;
    REQUIRE(t.data()[1 * 15 + 2 * 5 + 4] == 7.0f);
    auto v = t.view();
    REQUIRE(v.strides() == mechlens::extents<3>{15, 5, 1});
    REQUIRE(v[1][2](4) == 7.0f);
}

TEST_CASE("tensor: copies are deep, moves steal", "[tensor]") {
    mechlens::tensor<int, 1> a({4});
    a(2) = 5;
    mechlens::tensor<int, 1> b = a;
    b(2) = 9;
    REQUIRE(a(2) == 5);
    mechlens::tensor<int, 1> c = std::move(b);
    REQUIRE(c(2) == 9);
}

TEST_CASE("tensor_view: shape errors are clear exceptions", "[tensor]") {
    mechlens::tensor<float, 2> t({3, 4});
    auto v = t.view();
    REQUIRE_THROWS_AS(v.at(3, 0), mechlens::shape_error);
    REQUIRE_THROWS_AS(v.slice(1, 2, 5), mechlens::shape_error);
    REQUIRE_THROWS_AS(v.reshape(mechlens::extents<1>{11}), mechlens::shape_error);
    REQUIRE_THROWS_WITH(mechlens::require_shape(v, {4, 3}, "weights"),
                        Catch::Matchers::Contains("weights") && Catch::Matchers::Contains("(4, 3)") &&
                            Catch::Matchers::Contains("(3, 4)"));
    REQUIRE_THROWS_AS((mechlens::tensor<float, 2>({-1, 2})), mechlens::shape_error);
    REQUIRE_THROWS_AS((mechlens::tensor<float, 2>({index_t{1} << 40, index_t{1} << 40})), mechlens::shape_error);
}

TEST_CASE("tensor_view: slices and strided sub-views address the right elements", "[tensor]") {
    mechlens::tensor<float, 3> t({2, 4, 3});
    for (index_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(i);
    auto s = t.view().slice(1, 1, 3);  // (2, 2, 3), strided
    REQUIRE(s.shape() == mechlens::extents<3>{2, 2, 3});
    REQUIRE_FALSE(s.is_contiguous());
    REQUIRE(s(1, 0, 2) == t(1, 1, 2));
    mechlens::tensor<float, 3> dense({2, 2, 3});
    mechlens::copy(mechlens::tensor_view<const float, 3>(s), dense.view());
    REQUIRE(dense(1, 1, 0) == t(1, 2, 0));
    REQUIRE_THROWS_AS(s.reshape(mechlens::extents<1>{12}), mechlens::shape_error);
    auto flat = t.view().reshape(mechlens::extents<2>{8, 3});
    REQUIRE(flat(5, 1) == t(1, 1, 1));
}

TEST_CASE("tensor_view: Eigen maps share storage with the view", "[tensor]") {
    mechlens::tensor<float, 2> t({3, 4});
    auto m = mechlens::as_matrix(t.view());
    m(2, 3) = 1.5f;
    REQUIRE(t(2, 3) == 1.5f);
    auto column_pair = t.view().slice(1, 1, 3);  // rows strided by 4
    auto cm = mechlens::as_matrix(column_pair);
    REQUIRE(cm.rows() == 3);
    REQUIRE(cm.cols() == 2);
    cm(0, 1) = 2.5f;
    REQUIRE(t(0, 2) == 2.5f);
    auto not_dense = t.view().reshape(mechlens::extents<2>{4, 3});
    mechlens::tensor_view<float, 2> transposed(not_dense.data(), {3, 4}, {1, 3});
    REQUIRE_THROWS_AS(mechlens::as_matrix(transposed), mechlens::shape_error);
}

}  // namespace test_tensor
