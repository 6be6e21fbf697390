// fire_site: hook sites inside other engines' buffers (include/mechlens/hooks/engine.hpp). Run-time behaviour:
// dispatch by kind, write-through (patching), strided views, positions, and the errors for impossible sites.

#include <mechlens/mechlens.hpp>
#include <mechlens/hooks/engine.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace {

using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

/// Records every call and adds 1 to the first element of each activation (so tests can see writes land).
template <mechlens::kind_set Wanted>
struct recorder {
    struct call {
        std::string name;
        std::vector<index_t> shape;
        index_t start = 0;
        float sum = 0.0f;
    };
    std::vector<call> calls;

    static constexpr bool wants(site_kind kind) { return Wanted.contains(kind); }

    template <std::size_t Rank>
    void on_activation(const site& s, mechlens::tensor_view<float, Rank> view, const mechlens::hook_context& ctx) {
        call c{mechlens::to_string(s), {view.shape().begin(), view.shape().end()}, ctx.start_position, 0.0f};
        if constexpr (Rank == 3) {
            for (index_t b = 0; b < view.extent(0); ++b)
                for (index_t p = 0; p < view.extent(1); ++p)
                    for (index_t i = 0; i < view.extent(2); ++i) c.sum += view(b, p, i);
        } else {
            for (index_t b = 0; b < view.extent(0); ++b)
                for (index_t h = 0; h < view.extent(1); ++h)
                    for (index_t p = 0; p < view.extent(2); ++p)
                        for (index_t i = 0; i < view.extent(3); ++i) c.sum += view(b, h, p, i);
            view(0, 0, 0, 0) += 1.0f;
        }
        if constexpr (Rank == 3) view(0, 0, 0) += 1.0f;
        calls.push_back(std::move(c));
    }
};

using resid_recorder = recorder<mechlens::kind_set::of({site_kind::resid_post, site_kind::attn_pattern})>;
static_assert(mechlens::hook_policy<resid_recorder>);

}  // namespace

TEST_CASE("fire_site hands wanted sites to the policy and skips the others", "[engine_hooks]") {
    std::vector<float> x{1.0f, 2.0f, 3.0f, 4.0f};  // (1, 1, 4): one token of a 4-wide residual stream
    resid_recorder hooks;

    mechlens::fire_site<site_kind::resid_post>(hooks, 2, x.data(), {1, 1, 4}, 7);
    mechlens::fire_site<site_kind::mlp_out>(hooks, 2, x.data(), {1, 1, 4}, 7);  // not wanted: nothing happens
    REQUIRE(hooks.calls.size() == 1);
    CHECK(hooks.calls[0].name == "blocks.2.hook_resid_post");
    CHECK(hooks.calls[0].shape == std::vector<index_t>{1, 1, 4});
    CHECK(hooks.calls[0].start == 7);
    CHECK(hooks.calls[0].sum == 10.0f);
    CHECK(x[0] == 2.0f);  // the policy's write reached the engine's buffer

    // The run-time flavour: the same site given as a value.
    mechlens::fire_site(hooks, site{site_kind::resid_post, 0}, x.data(), {1, 1, 4});
    mechlens::fire_site(hooks, site{site_kind::embed, -1}, x.data(), {1, 1, 4});  // not wanted
    REQUIRE(hooks.calls.size() == 2);
    CHECK(hooks.calls[1].name == "blocks.0.hook_resid_post");
    CHECK(hooks.calls[1].start == 0);
    CHECK(x[0] == 3.0f);

    // no_hooks, as a temporary and as an lvalue: never touches the buffer.
    mechlens::fire_site<site_kind::resid_post>(mechlens::no_hooks{}, 0, x.data(), {1, 1, 4});
    mechlens::no_hooks none;
    mechlens::fire_site(none, site{site_kind::resid_post, 0}, x.data(), {1, 1, 4});
    CHECK(x[0] == 3.0f);
}

TEST_CASE("fire_site takes strided views of an engine's own layout", "[engine_hooks]") {
    // A llama2.c-style attention buffer: (n_heads, n_ctx) with only the first pos + 1 keys of each row in use.
    const index_t heads = 2, n_ctx = 6, pos = 2;
    std::vector<float> att(static_cast<std::size_t>(heads * n_ctx), 0.0f);
    for (index_t h = 0; h < heads; ++h)
        for (index_t t = 0; t <= pos; ++t) att[static_cast<std::size_t>(h * n_ctx + t)] = 0.25f;
    att[static_cast<std::size_t>(n_ctx - 1)] = 100.0f;  // stale data beyond the visible keys must stay invisible

    // hook_pattern is (batch, head, query_pos, key_pos) = (1, heads, 1, pos + 1).
    const mechlens::tensor_view<float, 4> pattern(att.data(), {1, heads, 1, pos + 1}, {heads * n_ctx, n_ctx, n_ctx, 1});
    resid_recorder hooks;
    mechlens::fire_site<site_kind::attn_pattern>(hooks, 1, pattern, pos);
    REQUIRE(hooks.calls.size() == 1);
    CHECK(hooks.calls[0].name == "blocks.1.attn.hook_pattern");
    CHECK(hooks.calls[0].shape == std::vector<index_t>{1, 2, 1, 3});
    CHECK(hooks.calls[0].start == pos);
    CHECK(hooks.calls[0].sum == Approx(6 * 0.25));
    CHECK(att[0] == 1.25f);
}

TEST_CASE("fire_site rejects sites that cannot exist", "[engine_hooks]") {
    std::vector<float> x(8, 0.0f);
    resid_recorder hooks;
    using Catch::Matchers::Contains;
    // A block site needs a layer; a global site must not have one.
    CHECK_THROWS_WITH(mechlens::fire_site(hooks, site{site_kind::resid_post, -1}, x.data(), {1, 1, 8}),
                      Contains("needs a layer >= 0"));
    CHECK_THROWS_WITH(mechlens::fire_site<site_kind::resid_post>(hooks, -3, x.data(), {1, 1, 8}),
                      Contains("needs a layer >= 0"));
    recorder<mechlens::kind_set::all()> all;
    CHECK_THROWS_WITH(mechlens::fire_site(all, site{site_kind::embed, 0}, x.data(), {1, 1, 8}),
                      Contains("global site and needs layer -1"));
    // Run-time sites get their rank checked at run time (the compile-time flavour static_asserts instead).
    CHECK_THROWS_AS(mechlens::fire_site(hooks, site{site_kind::resid_post, 0}, x.data(), {1, 1, 2, 4}),
                    mechlens::shape_error);
    CHECK_THROWS_WITH(mechlens::fire_site(hooks, site{site_kind::attn_pattern, 0}, x.data(), {1, 1, 8}),
                      Contains("blocks.0.attn.hook_pattern has rank 4"));
    CHECK_THROWS_AS(mechlens::fire_site(hooks, site{site_kind::resid_post, 0}, nullptr, {1, 1, 8}),
                    std::invalid_argument);
    // Errors only for wanted sites: an unwanted impossible site costs nothing and says nothing.
    CHECK_NOTHROW(mechlens::fire_site(hooks, site{site_kind::mlp_out, -1}, nullptr, {1, 1, 8}));
    CHECK(hooks.calls.empty());
    CHECK(x == std::vector<float>(8, 0.0f));
}
