# mechlens entry points. `make demo` runs the flagship lesson (04, grow / see / intervene); `make test` builds and runs the whole test suite.
# Both first make sure the Debian packages mechlens needs are installed. Build trees and their options are the
# presets in CMakePresets.json (release -> build/, sanitize -> build-sanitize/, bench -> build-bench/).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Keep cmake's own make from printing "Entering directory" for every step (it inherits our MAKELEVEL).
MAKEFLAGS += --no-print-directory

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
APT_PACKAGES := cmake g++ libeigen3-dev libxsimd-dev catch2 libbenchmark-dev python3
APT_OPTIONAL := ccache
# Arguments for the demo program and for each benchmark executable, e.g. make bench BENCH_ARGS=--benchmark_filter=rms
DEMO_ARGS ?=
BENCH_ARGS ?=
FORMAT_DIRS := include tests tools examples bench

# ccache when installed. Recursively expanded: make expands a recipe only after its prerequisites (`deps`) ran.
launcher = $(if $(shell command -v ccache 2>/dev/null),-DCMAKE_CXX_COMPILER_LAUNCHER=ccache,-UCMAKE_CXX_COMPILER_LAUNCHER)

.PHONY: help deps configure build test demo test-sanitize bench single-header format format-check clean

help:
	@echo "make demo           build and run examples/04_grow_induction: grow, see and break an induction circuit"
	@echo "make test           build everything in build/ (Release, -Werror) and run ctest"
	@echo "make test-sanitize  ASan+UBSan build in build-sanitize/ and run ctest (consumer tests excluded)"
	@echo "make bench          build the benchmarks in build-bench/ and run them (BENCH_ARGS=...)"
	@echo "make single-header  regenerate single_include/mechlens/mechlens.hpp"
	@echo "make format         clang-format every C++ source in place (format-check: report only)"
	@echo "make clean          remove build/, build-sanitize/ and build-bench/"
	@echo "JOBS=$(JOBS) sets build and ctest parallelism."

# Installs what is missing: as root directly, else through passwordless sudo, else prints the command and fails.
# ccache is optional: installed when possible, never required.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	optional=""; for p in $(APT_OPTIONAL); do dpkg -s "$$p" >/dev/null 2>&1 || optional="$$optional $$p"; done; \
	if [ -z "$$missing$$optional" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	elif [ -n "$$missing" ]; then \
	  echo "mechlens needs Debian packages that are not installed:$$missing"; \
	  echo "Install them with:"; echo "  sudo apt-get install -y$$missing"; exit 1; \
	else exit 0; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	if [ -n "$$missing" ]; then \
	  echo "Installing$$missing$$optional ..."; \
	  $$sudo apt-get update -qq; \
	  $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  for p in $$missing; do dpkg -s "$$p" >/dev/null 2>&1 || { echo "apt-get did not install $$p"; exit 1; }; done; \
	fi; \
	if [ -n "$$optional" ]; then \
	  { $$sudo apt-get install -y -qq --no-install-recommends $$optional >/dev/null 2>&1 || \
	    { $$sudo apt-get update -qq >/dev/null 2>&1 && \
	      $$sudo apt-get install -y -qq --no-install-recommends $$optional >/dev/null 2>&1; }; } || \
	  echo "note: could not install$$optional (optional); building without it"; \
	fi

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

# ASan + UBSan (leak checking on); the sanitize test preset sets ASAN_OPTIONS/UBSAN_OPTIONS and skips `consumers`.
test-sanitize: deps
	cmake --preset sanitize $(launcher)
	cmake --build --preset sanitize -j $(JOBS)
	ctest --preset sanitize -j $(JOBS)

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
	rm -rf build build-sanitize build-bench
