#pragma once
/// @file
/// A restricted unpickler for the `data.pkl` that `torch.save(state_dict)` writes: it understands the pickle opcodes
/// of protocols 2 to 4 that such a file uses and accepts only the globals a state dict needs
/// (`collections.OrderedDict`, torch's tensor and parameter rebuild functions, the typed storage classes). Any other
/// global is rejected by name before anything is built, so no pickle can make the reader run code (PyTorch's
/// `weights_only` idea). Nothing is recursive; stack, memo, marks and objects are bounded.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/zip.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Element type of a PyTorch storage, named after its legacy storage class (`torch.FloatStorage` is f32).
enum class torch_dtype : std::uint8_t {
    f32,      ///< torch.float32 (FloatStorage).
    f64,      ///< torch.float64 (DoubleStorage).
    f16,      ///< torch.float16 (HalfStorage).
    bf16,     ///< torch.bfloat16 (BFloat16Storage).
    i64,      ///< torch.int64 (LongStorage).
    i32,      ///< torch.int32 (IntStorage).
    i16,      ///< torch.int16 (ShortStorage).
    i8,       ///< torch.int8 (CharStorage).
    u8,       ///< torch.uint8 (ByteStorage).
    boolean,  ///< torch.bool (BoolStorage).
};

/// The name of a dtype as PyTorch prints it without the `torch.` prefix ("float32", "bool", ...).
constexpr std::string_view torch_dtype_name(torch_dtype t) noexcept {
    switch (t) {
        case torch_dtype::f32: return "float32";
        case torch_dtype::f64: return "float64";
        case torch_dtype::f16: return "float16";
        case torch_dtype::bf16: return "bfloat16";
        case torch_dtype::i64: return "int64";
        case torch_dtype::i32: return "int32";
        case torch_dtype::i16: return "int16";
        case torch_dtype::i8: return "int8";
        case torch_dtype::u8: return "uint8";
        case torch_dtype::boolean: return "bool";
    }
    return "?";
}

/// Bytes per element of a dtype.
constexpr std::size_t torch_dtype_size(torch_dtype t) noexcept {
    switch (t) {
        case torch_dtype::f64:
        case torch_dtype::i64: return 8;
        case torch_dtype::f32:
        case torch_dtype::i32: return 4;
        case torch_dtype::f16:
        case torch_dtype::bf16:
        case torch_dtype::i16: return 2;
        case torch_dtype::i8:
        case torch_dtype::u8:
        case torch_dtype::boolean: return 1;
    }
    return 1;
}

/// True for the floating-point dtypes (the ones that hold weights).
constexpr bool torch_dtype_is_floating(torch_dtype t) noexcept {
    return t == torch_dtype::f32 || t == torch_dtype::f64 || t == torch_dtype::f16 || t == torch_dtype::bf16;
}

namespace detail {

/// What a pickle value is; `object` kinds live in the unpickler's arena.
enum class pickle_kind : std::uint8_t { none, boolean, integer, floating, string, tuple, list, dict, global, storage,
                                        tensor, mark };

struct pickle_object;

/// One value on the unpickler's stack or in its memo: scalars inline, everything else a pointer into the arena
/// (so BINGET shares instead of copying, as Python does, and cycles cannot leak).
struct pickle_value {
    pickle_kind kind = pickle_kind::none;  ///< What this is.
    bool boolean = false;                  ///< For pickle_kind::boolean.
    std::int64_t integer = 0;              ///< For pickle_kind::integer.
    double floating = 0.0;                 ///< For pickle_kind::floating.
    pickle_object* object = nullptr;       ///< For every other kind (string, containers, global, storage, tensor).
};

/// A string, container, allowed global, storage reference or tensor built by the unpickler.
struct pickle_object {
    std::string text;                    ///< A string's content, a global's "module.name", a storage's key.
    std::vector<pickle_value> items;     ///< A tuple's or list's items; a dict's values.
    std::vector<std::string> keys;       ///< A dict's keys (always strings), in insertion order.
    std::unordered_map<std::string, std::size_t> index;  ///< A dict's key -> position, so re-setting keeps order.
    torch_dtype dtype = torch_dtype::f32;  ///< A storage's element type.
    std::uint64_t numel = 0;             ///< A storage's element count (from the persistent id).
    pickle_object* storage = nullptr;    ///< A tensor's storage.
    std::uint64_t offset = 0;            ///< A tensor's storage offset, in elements.
    std::vector<std::int64_t> sizes;     ///< A tensor's extents.
    std::vector<std::int64_t> strides;   ///< A tensor's strides, in elements.
    bool visited = false;                ///< Set by walkers that must not see a dict twice.
};

/// Limits that keep a hostile pickle from exhausting memory (real state dicts stay far below them).
inline constexpr std::size_t pickle_max_stack = std::size_t{1} << 20;
inline constexpr std::size_t pickle_max_marks = std::size_t{1} << 16;
inline constexpr std::size_t pickle_max_memo = std::size_t{1} << 22;
inline constexpr std::size_t pickle_max_objects = std::size_t{1} << 22;
inline constexpr std::size_t pickle_max_rank = 32;

/// The storage classes a state dict may name, and their dtypes.
inline bool torch_storage_dtype(std::string_view global, torch_dtype& out) noexcept {
    struct entry {
        std::string_view name;
        torch_dtype dtype;
    };
    static constexpr entry table[] = {
        {"torch.FloatStorage", torch_dtype::f32},  {"torch.DoubleStorage", torch_dtype::f64},
        {"torch.HalfStorage", torch_dtype::f16},   {"torch.BFloat16Storage", torch_dtype::bf16},
        {"torch.LongStorage", torch_dtype::i64},   {"torch.IntStorage", torch_dtype::i32},
        {"torch.ShortStorage", torch_dtype::i16},  {"torch.CharStorage", torch_dtype::i8},
        {"torch.ByteStorage", torch_dtype::u8},    {"torch.BoolStorage", torch_dtype::boolean},
    };
    for (const entry& e : table)
        if (e.name == global) {
            out = e.dtype;
            return true;
        }
    return false;
}

/// The callable globals a state dict may name (the storage classes are the others allowed).
inline bool torch_callable_allowed(std::string_view global) noexcept {
    return global == "collections.OrderedDict" || global == "torch._utils._rebuild_tensor_v2" ||
           global == "torch._utils._rebuild_tensor" || global == "torch._utils._rebuild_parameter" ||
           global == "torch._utils._rebuild_parameter_with_state";
}

/// Runs a pickle program over `bytes`, building only what a state dict holds; errors name `where`. The result
/// points into the unpickler, which must outlive it.
class torch_unpickler {
public:
    /// An unpickler over `bytes` (the content of data.pkl); `where` prefixes every error.
    torch_unpickler(std::span<const std::byte> bytes, std::string where)
        : r_(bytes.data(), bytes.size(), where), where_(std::move(where)) {}

    torch_unpickler(const torch_unpickler&) = delete;             ///< The result points into the arena.
    torch_unpickler& operator=(const torch_unpickler&) = delete;  ///< The result points into the arena.

    /// Executes the program up to STOP and returns the value it produced.
    pickle_value run() {
        while (true) {
            const auto op = r_.read<std::uint8_t>("pickle opcode");
            if (op == '.') {  // STOP
                if (marks_.size() != 0) fail("STOP inside an open MARK");
                return pop("STOP");
            }
            step(op);
        }
    }

private:
    [[noreturn]] void fail(const std::string& problem) const {
        format_fail(where_, "data.pkl: " + problem + " (at byte " + std::to_string(r_.position()) + ")");
    }

    pickle_object* make() {
        if (arena_.size() >= pickle_max_objects) fail("more than " + std::to_string(pickle_max_objects) + " objects");
        return &arena_.emplace_back();
    }
    pickle_value make_value(pickle_kind kind) {
        pickle_value v;
        v.kind = kind;
        v.object = make();
        return v;
    }

    void push(const pickle_value& v) {
        if (stack_.size() >= pickle_max_stack) fail("stack deeper than " + std::to_string(pickle_max_stack));
        stack_.push_back(v);
    }
    std::size_t floor() const noexcept { return marks_.empty() ? 0 : marks_.back(); }
    pickle_value pop(std::string_view op) {
        if (stack_.size() <= floor()) fail(std::string(op) + " on an empty stack");
        pickle_value v = stack_.back();
        stack_.pop_back();
        return v;
    }
    pickle_value& top(std::string_view op) {
        if (stack_.size() <= floor()) fail(std::string(op) + " on an empty stack");
        return stack_.back();
    }
    /// Removes and returns everything above the last MARK, and the mark.
    std::vector<pickle_value> pop_mark(std::string_view op) {
        if (marks_.empty()) fail(std::string(op) + " without a MARK");
        const std::size_t at = marks_.back();
        marks_.pop_back();
        std::vector<pickle_value> items(stack_.begin() + static_cast<std::ptrdiff_t>(at), stack_.end());
        stack_.resize(at);
        return items;
    }

    void push_int(std::int64_t v) {
        pickle_value p;
        p.kind = pickle_kind::integer;
        p.integer = v;
        push(p);
    }
    void push_string(std::uint64_t length) {
        pickle_value v = make_value(pickle_kind::string);
        v.object->text = r_.read_string(length, "string");
        push(v);
    }
    void push_tuple(std::vector<pickle_value> items) {
        pickle_value v = make_value(pickle_kind::tuple);
        v.object->items = std::move(items);
        push(v);
    }
    void memo_put(std::uint64_t key) {
        const pickle_value& v = top("memo put");
        if (memo_.size() >= pickle_max_memo && memo_.find(key) == memo_.end())
            fail("memo larger than " + std::to_string(pickle_max_memo) + " entries");
        memo_[key] = v;
    }
    void memo_get(std::uint64_t key) {
        const auto it = memo_.find(key);
        if (it == memo_.end()) fail("memo key " + std::to_string(key) + " was never stored");
        push(it->second);
    }

    std::string read_line(std::string_view what) {
        std::string out;
        while (true) {
            const auto c = static_cast<char>(r_.read<std::uint8_t>(what));
            if (c == '\n') return out;
            if (out.size() >= 256) fail(std::string(what) + " longer than 256 characters");
            out += c;
        }
    }

    void global(const std::string& module, const std::string& name) {
        const std::string full = module + "." + name;
        torch_dtype dtype{};
        if (!torch_callable_allowed(full) && !torch_storage_dtype(full, dtype))
            fail("refusing the global '" + printable(full) +
                 "': a state dict needs only OrderedDict, torch's tensor rebuild functions and storage types");
        pickle_value v = make_value(pickle_kind::global);
        v.object->text = full;
        push(v);
    }

    void set_item(pickle_object& dict, const pickle_value& key, const pickle_value& value) {
        if (key.kind != pickle_kind::string) fail("a dict key is not a string");
        const auto [it, inserted] = dict.index.try_emplace(key.object->text, dict.keys.size());
        if (inserted) {
            dict.keys.push_back(key.object->text);
            dict.items.push_back(value);
        } else {
            dict.items[it->second] = value;
        }
    }
    pickle_object& expect_kind(pickle_value& v, pickle_kind kind, std::string_view what) {
        if (v.kind != kind || v.object == nullptr) fail(std::string(what));
        return *v.object;
    }

    std::int64_t int_arg(const pickle_value& v, std::string_view what) {
        if (v.kind != pickle_kind::integer) fail(std::string(what) + " is not an integer");
        return v.integer;
    }
    std::vector<std::int64_t> ints(const pickle_value& v, std::string_view what) {
        if (v.kind != pickle_kind::tuple && v.kind != pickle_kind::list) fail(std::string(what) + " is not a tuple");
        if (v.object->items.size() > pickle_max_rank)
            fail(std::string(what) + " has more than " + std::to_string(pickle_max_rank) + " dimensions");
        std::vector<std::int64_t> out;
        for (const pickle_value& item : v.object->items) {
            const std::int64_t x = int_arg(item, what);
            if (x < 0) fail(std::string(what) + " holds a negative value");
            out.push_back(x);
        }
        return out;
    }

    pickle_value rebuild_tensor(const std::vector<pickle_value>& args, const std::string& function) {
        if (args[0].kind != pickle_kind::storage) fail(function + ": the first argument is not a storage");
        pickle_value v = make_value(pickle_kind::tensor);
        v.object->storage = args[0].object;
        const std::int64_t offset = int_arg(args[1], function + " storage offset");
        if (offset < 0) fail(function + ": negative storage offset");
        v.object->offset = static_cast<std::uint64_t>(offset);
        v.object->sizes = ints(args[2], function + " size");
        v.object->strides = ints(args[3], function + " stride");
        if (v.object->sizes.size() != v.object->strides.size())
            fail(function + ": size and stride have different lengths");
        return v;
    }

    void reduce() {
        pickle_value args = pop("REDUCE");
        pickle_value callable = pop("REDUCE");
        if (callable.kind != pickle_kind::global) fail("REDUCE of something that is not an allowed global");
        if (args.kind != pickle_kind::tuple) fail("REDUCE arguments are not a tuple");
        const std::string& f = callable.object->text;
        const std::vector<pickle_value>& a = args.object->items;
        if (f == "collections.OrderedDict") {
            if (!a.empty()) fail("OrderedDict called with arguments");
            push(make_value(pickle_kind::dict));
        } else if (f == "torch._utils._rebuild_tensor_v2") {
            if (a.size() != 6 && a.size() != 7) fail(f + " called with " + std::to_string(a.size()) + " arguments");
            push(rebuild_tensor(a, f));
        } else if (f == "torch._utils._rebuild_tensor") {
            if (a.size() != 4) fail(f + " called with " + std::to_string(a.size()) + " arguments");
            push(rebuild_tensor(a, f));
        } else if (f == "torch._utils._rebuild_parameter" || f == "torch._utils._rebuild_parameter_with_state") {
            if (a.size() < 3 || a.size() > 4 || a[0].kind != pickle_kind::tensor)
                fail(f + " is not called with a tensor and its flags");
            push(a[0]);
        } else {
            fail("'" + printable(f) + "' is a storage type, not something to call");
        }
    }

    void persistent_load() {
        pickle_value pid = pop("BINPERSID");
        if (pid.kind != pickle_kind::tuple || pid.object->items.size() != 5)
            fail("a persistent id is not a ('storage', type, key, location, size) tuple");
        const std::vector<pickle_value>& p = pid.object->items;
        if (p[0].kind != pickle_kind::string || p[0].object->text != "storage")
            fail("a persistent id is not a storage");
        if (p[1].kind != pickle_kind::global) fail("a storage type is not a global");
        torch_dtype dtype{};
        if (!torch_storage_dtype(p[1].object->text, dtype))
            fail("'" + printable(p[1].object->text) + "' is not a storage type");
        if (p[2].kind != pickle_kind::string) fail("a storage key is not a string");
        const std::string& key = p[2].object->text;
        if (key.empty() || key.size() > 64 || key.find_first_of("/\\") != std::string::npos || key == "." ||
            key == "..")
            fail("storage key '" + printable(key, 64) + "' is not a plain file name");
        if (p[3].kind != pickle_kind::string) fail("a storage location is not a string");
        const std::int64_t numel = int_arg(p[4], "storage size");
        if (numel < 0) fail("negative storage size");
        const auto found = storages_.find(key);
        if (found != storages_.end()) {
            // The same key names the same storage: its type and size must agree.
            if (found->second->dtype != dtype || found->second->numel != static_cast<std::uint64_t>(numel))
                fail("storage '" + printable(key) + "' is named twice with different types or sizes");
            pickle_value v;
            v.kind = pickle_kind::storage;
            v.object = found->second;
            push(v);
            return;
        }
        pickle_value v = make_value(pickle_kind::storage);
        v.object->text = key;
        v.object->dtype = dtype;
        v.object->numel = static_cast<std::uint64_t>(numel);
        storages_.emplace(key, v.object);
        push(v);
    }

    void build() {
        pickle_value state = pop("BUILD");
        pickle_value& target = top("BUILD");
        // OrderedDict state (e.g. the `_metadata` attribute of a state dict) is accepted and ignored; tensors and
        // parameters take only an empty state.
        if (target.kind == pickle_kind::dict) {
            if (state.kind != pickle_kind::dict && state.kind != pickle_kind::tuple && state.kind != pickle_kind::none)
                fail("BUILD of a dict with a state that is not a dict");
        } else if (target.kind == pickle_kind::tensor) {
            const bool empty = state.kind == pickle_kind::none ||
                               ((state.kind == pickle_kind::dict || state.kind == pickle_kind::tuple) &&
                                state.object->items.empty());
            if (!empty) fail("BUILD of a tensor with attributes");
        } else {
            fail("BUILD of something that is neither a dict nor a tensor");
        }
    }

    void step(std::uint8_t op) {
        switch (op) {
            case 0x80: {  // PROTO
                const auto version = r_.read<std::uint8_t>("protocol");
                if (version < 2 || version > 5) fail("pickle protocol " + std::to_string(version) + " (2 to 5 read)");
                return;
            }
            case 0x95: r_.read<std::uint64_t>("frame length"); return;  // FRAME: framing does not change meaning
            case '(':                                                   // MARK
                if (marks_.size() >= pickle_max_marks) fail("more than " + std::to_string(pickle_max_marks) + " MARKs");
                marks_.push_back(stack_.size());
                return;
            case '}': push(make_value(pickle_kind::dict)); return;   // EMPTY_DICT
            case ']': push(make_value(pickle_kind::list)); return;   // EMPTY_LIST
            case ')': push_tuple({}); return;                        // EMPTY_TUPLE
            case 'N': push(pickle_value{}); return;                  // NONE
            case 0x88:                                               // NEWTRUE
            case 0x89: {                                             // NEWFALSE
                pickle_value v;
                v.kind = pickle_kind::boolean;
                v.boolean = op == 0x88;
                push(v);
                return;
            }
            case 'J': push_int(r_.read<std::int32_t>("BININT")); return;
            case 'K': push_int(r_.read<std::uint8_t>("BININT1")); return;
            case 'M': push_int(r_.read<std::uint16_t>("BININT2")); return;
            case 0x8a: {  // LONG1: little-endian two's complement of n bytes
                const auto n = r_.read<std::uint8_t>("LONG1 length");
                if (n > 8) fail("LONG1 integer wider than 64 bits");
                const std::byte* p = r_.take(n, "LONG1");
                std::uint64_t u = 0;
                for (std::size_t i = 0; i < n; ++i) u |= static_cast<std::uint64_t>(p[i]) << (8 * i);
                if (n > 0 && n < 8 && (static_cast<unsigned>(p[n - 1]) & 0x80u)) u |= ~std::uint64_t{0} << (8 * n);
                push_int(static_cast<std::int64_t>(u));
                return;
            }
            case 'G': {  // BINFLOAT: big-endian IEEE double
                const std::byte* p = r_.take(8, "BINFLOAT");
                std::uint64_t u = 0;
                for (std::size_t i = 0; i < 8; ++i) u = (u << 8) | static_cast<std::uint64_t>(p[i]);
                pickle_value v;
                v.kind = pickle_kind::floating;
                std::memcpy(&v.floating, &u, sizeof u);
                push(v);
                return;
            }
            case 'X': push_string(r_.read<std::uint32_t>("BINUNICODE length")); return;
            case 0x8c: push_string(r_.read<std::uint8_t>("SHORT_BINUNICODE length")); return;
            case 0x8d: push_string(r_.read<std::uint64_t>("BINUNICODE8 length")); return;
            case 't': push_tuple(pop_mark("TUPLE")); return;
            case 0x85: {  // TUPLE1
                pickle_value a = pop("TUPLE1");
                push_tuple({a});
                return;
            }
            case 0x86: {  // TUPLE2
                pickle_value b = pop("TUPLE2"), a = pop("TUPLE2");
                push_tuple({a, b});
                return;
            }
            case 0x87: {  // TUPLE3
                pickle_value c = pop("TUPLE3"), b = pop("TUPLE3"), a = pop("TUPLE3");
                push_tuple({a, b, c});
                return;
            }
            case 's': {  // SETITEM
                pickle_value value = pop("SETITEM"), key = pop("SETITEM");
                set_item(expect_kind(top("SETITEM"), pickle_kind::dict, "SETITEM on something that is not a dict"),
                         key, value);
                return;
            }
            case 'u': {  // SETITEMS
                std::vector<pickle_value> items = pop_mark("SETITEMS");
                if (items.size() % 2 != 0) fail("SETITEMS with an odd number of items");
                pickle_object& dict =
                    expect_kind(top("SETITEMS"), pickle_kind::dict, "SETITEMS on something that is not a dict");
                for (std::size_t i = 0; i < items.size(); i += 2) set_item(dict, items[i], items[i + 1]);
                return;
            }
            case 'a': {  // APPEND
                pickle_value value = pop("APPEND");
                expect_kind(top("APPEND"), pickle_kind::list, "APPEND to something that is not a list")
                    .items.push_back(value);
                return;
            }
            case 'e': {  // APPENDS
                std::vector<pickle_value> items = pop_mark("APPENDS");
                pickle_object& list =
                    expect_kind(top("APPENDS"), pickle_kind::list, "APPENDS to something that is not a list");
                list.items.insert(list.items.end(), items.begin(), items.end());
                return;
            }
            case 'q': memo_put(r_.read<std::uint8_t>("BINPUT index")); return;
            case 'r': memo_put(r_.read<std::uint32_t>("LONG_BINPUT index")); return;
            case 0x94: memo_put(memo_.size()); return;  // MEMOIZE
            case 'h': memo_get(r_.read<std::uint8_t>("BINGET index")); return;
            case 'j': memo_get(r_.read<std::uint32_t>("LONG_BINGET index")); return;
            case '0': pop("POP"); return;
            case '1': pop_mark("POP_MARK"); return;
            case '2': push(top("DUP")); return;
            case 'c': {  // GLOBAL
                const std::string module = read_line("GLOBAL module");
                const std::string name = read_line("GLOBAL name");
                global(module, name);
                return;
            }
            case 0x93: {  // STACK_GLOBAL
                pickle_value name = pop("STACK_GLOBAL"), module = pop("STACK_GLOBAL");
                if (name.kind != pickle_kind::string || module.kind != pickle_kind::string)
                    fail("STACK_GLOBAL of something that is not a string");
                global(module.object->text, name.object->text);
                return;
            }
            case 'R': reduce(); return;
            case 'b': build(); return;
            case 'Q': persistent_load(); return;
            default: break;
        }
        static constexpr char digits[] = "0123456789abcdef";
        std::string hex = "0x";
        hex += digits[op >> 4];
        hex += digits[op & 0xFu];
        fail("opcode " + hex + " is not one a state dict uses; refusing it");
    }

    byte_reader r_;
    std::string where_;
    std::deque<pickle_object> arena_;  // a deque: pointers to its elements stay valid as it grows
    std::vector<pickle_value> stack_;
    std::vector<std::size_t> marks_;
    std::unordered_map<std::uint64_t, pickle_value> memo_;
    std::unordered_map<std::string, pickle_object*> storages_;
};

}  // namespace detail
MECHLENS_END_NAMESPACE
