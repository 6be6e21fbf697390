# mechlens entry points. `make demo` runs the flagship lesson (04, grow / see / intervene); `make test` builds and runs the whole test suite.
# Both first make sure the Debian packages mechlens needs are installed. Build trees and their options are the
# presets in CMakePresets.json (release -> build/, sanitize -> build-sanitize/, bench -> build-bench/).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Keep cmake's own make from printing "Entering directory" for every step (it inherits our MAKELEVEL).
MAKEFLAGS += --no-print-directory

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
APT_PACKAGES := cmake g++ libeigen3-dev libxsimd-dev catch2 libbenchmark-dev python3 python3-numpy
# The sanitizer suite and the fuzzers are built by clang 14 (with its OpenMP and sanitizer runtimes).
APT_CLANG := clang libclang-rt-14-dev libomp-14-dev
APT_AARCH64 := g++-aarch64-linux-gnu qemu-user
FUZZ_SECONDS ?= 60
# Arguments for the demo program and for each benchmark executable, e.g. make bench BENCH_ARGS=--benchmark_filter=rms
DEMO_ARGS ?=
BENCH_ARGS ?=
FORMAT_DIRS := include tests tools examples bench

# ccache when installed. Recursively expanded: make expands a recipe only after its prerequisites (`deps`) ran.
launcher = $(if $(shell command -v ccache 2>/dev/null),-DCMAKE_CXX_COMPILER_LAUNCHER=ccache,-UCMAKE_CXX_COMPILER_LAUNCHER)
# Paths below the checkout are hashed relative to it, and debug info's build directory is not hashed: a fresh clone
# (CI's) reuses the objects another checkout compiled.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1

.PHONY: help deps configure build test demo demo-medicine test-sanitize test-isa test-aarch64 test-tsan fuzz bench single-header format format-check clean

help:
	@echo "make demo           build and run examples/04_grow_induction: grow, see and break an induction circuit"
	@echo "make demo-medicine  build and run examples/08_learned_or_cheated: tell a model that cheated from one that learned"
	@echo "make test           build everything in build/ (Release, -Werror) and run ctest"
	@echo "make test-sanitize  clang 14 ASan+UBSan build in build-sanitize/ and run ctest (consumer tests excluded)"
	@echo "make test-isa       unit tests for the x86-64 level native builds miss: v3 (run) on AVX-512 CPUs, v4 (compiled) on AVX2"
	@echo "make test-aarch64   cross-build the unit tests for ARM64 and run them under qemu-aarch64"
	@echo "make test-tsan      ThreadSanitizer run of concurrent forwards, caches and gradient passes"
	@echo "make fuzz           libFuzzer harnesses of every parser, FUZZ_SECONDS=$(FUZZ_SECONDS) each"
	@echo "make bench          build the benchmarks in build-bench/ and run them (BENCH_ARGS=...)"
	@echo "make single-header  regenerate single_include/mechlens/mechlens.hpp"
	@echo "make format         clang-format every C++ source in place (format-check: report only)"
	@echo "make clean          remove every build-*/ tree and build/"
	@echo "JOBS=$(JOBS) sets build and ctest parallelism."

# Installs what is missing (tools/install_deps.sh: as root, else passwordless sudo, else prints the command).
deps:
	@tools/install_deps.sh $(APT_PACKAGES)

configure: deps
	cmake --preset release $(launcher)

build: configure
	cmake --build --preset release -j $(JOBS)

# ctest is the last thing run, so its summary ends the output.
test: build
	ctest --preset release -j $(JOBS)

# The flagship demo needs no downloaded model; its report and grown model land in build/.
demo: configure
	cmake --build --preset release --target example_04_grow_induction -j $(JOBS)
	cd build && ./examples/example_04_grow_induction $(DEMO_ARGS)

# Model medicine: learned or cheated? Two models grown in about half a minute, diagnosed, confirmed and treated.
demo-medicine: configure
	cmake --build --preset release --target example_08_learned_or_cheated -j $(JOBS)
	cd build && ./examples/example_08_learned_or_cheated $(DEMO_ARGS)

# ASan + UBSan (leak checking on), built by clang; the sanitize test preset sets ASAN_OPTIONS/UBSAN_OPTIONS and
# skips `consumers`.
test-sanitize: deps
	@tools/install_deps.sh $(APT_CLANG)
	cmake --preset sanitize $(launcher)
	cmake --build --preset sanitize -j $(JOBS)
	ctest --preset sanitize -j $(JOBS)

# The x86-64 level the native build (make test) does not already cover, -Werror: on an AVX-512 CPU the AVX2 build
# (x86-64-v3), built and its unit tests run; on an AVX2 CPU the AVX-512 build (x86-64-v4), compiled (it cannot run).
# ISA_LEVELS="x86-64-v3 x86-64-v4" builds both.
ISA_LEVELS ?= $(if $(shell tools/cpu_supports.sh x86-64-v4 && echo yes),x86-64-v3,x86-64-v4)
test-isa: deps
	@for level in $(ISA_LEVELS); do \
	  cmake --preset $$level $(launcher) >/dev/null; \
	  echo "== $$level: build"; cmake --build --preset $$level -j $(JOBS); \
	  if tools/cpu_supports.sh $$level; then echo "== $$level: run"; ctest --preset $$level -j $(JOBS) -L modular; \
	  else echo "== $$level: this CPU lacks $$level: compiled only"; fi; \
	done

test-aarch64: deps
	@tools/install_deps.sh $(APT_AARCH64)
	cmake --preset aarch64 $(launcher)
	cmake --build --preset aarch64 -j $(JOBS)
	ctest --preset aarch64 -j $(JOBS)

test-tsan: deps
	cmake --preset tsan $(launcher)
	cmake --build --preset tsan -j $(JOBS)
	ctest --preset tsan

fuzz: deps
	@tools/install_deps.sh $(APT_CLANG)
	cmake --preset fuzz $(launcher)
	cmake --build --preset fuzz -j $(JOBS)
	tests/fuzz/run_fuzzers.sh build-fuzz $(FUZZ_SECONDS)

bench: deps
	cmake --preset bench $(launcher)
	cmake --build --preset bench -j $(JOBS)
	@benches=$$(find build-bench/bench -maxdepth 1 -type f -executable 2>/dev/null | sort); \
	if [ -z "$$benches" ]; then echo "no benchmark executables in build-bench/bench"; exit 1; fi; \
	for b in $$benches; do echo "== $$b"; "$$b" $(BENCH_ARGS); done

single-header:
	python3 tools/amalgamate.py

format:
	find $(FORMAT_DIRS) \( -name '*.hpp' -o -name '*.cpp' \) -print0 | xargs -0 -r clang-format -i

format-check:
	find $(FORMAT_DIRS) \( -name '*.hpp' -o -name '*.cpp' \) -print0 | xargs -0 -r clang-format --dry-run --Werror

clean:
	rm -rf build build-sanitize build-bench build-x86-64-v3 build-x86-64-v4 build-aarch64 build-tsan build-fuzz
