# libpjwebsock build, test and install.
#
#   make            build build/lib/libpjwebsock.so (+ soname links)
#   make demo       build, start a local echo server, run the example client
#   make test       everything CI runs: Rust unit tests, header check,
#                   C tests natively, under valgrind and with ASan/UBSan, examples
#   make header     regenerate include/pjwebsock/websock.h (pinned cbindgen)
#   make install PREFIX=/usr/local DESTDIR=

PREFIX   ?= /usr/local
DESTDIR  ?=
LIBDIR   ?= $(PREFIX)/lib
INCDIR   ?= $(PREFIX)/include

CARGO    ?= cargo
CC       ?= cc
CXX      ?= c++
PYTHON   ?= python3
VERSION  := 0.1.0
SONAME   := libpjwebsock.so.0
CBINDGEN_VERSION := 0.29.4

ROOT     := $(abspath .)
BUILD    := $(ROOT)/build
VENV     := $(ROOT)/.venv
TOOLS    := $(ROOT)/.tools
CBINDGEN := $(TOOLS)/bin/cbindgen
HEADER   := include/pjwebsock/websock.h

CFLAGS_TEST := -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Iinclude -Ic-tests
LDFLAGS_TEST := -L$(BUILD)/lib -lpjwebsock -Wl,-rpath,$(BUILD)/lib -lpthread -ldl
# AddressSanitizer (LeakSanitizer included) and UBSan build of the C tests
# and examples: the first error ends the program with a report.
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_ENV  := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

RUST_SRC := $(shell find src -name '*.rs' -o -name '*.c') Cargo.toml build.rs
CTEST_SRC := $(wildcard c-tests/test_*.c)
CTESTS   := $(patsubst c-tests/%.c,$(BUILD)/c-tests/%,$(CTEST_SRC))
EXAMPLE_SRC := $(wildcard examples-c/*.c)
EXAMPLES := $(patsubst examples-c/%.c,$(BUILD)/examples/%,$(EXAMPLE_SRC))
ASAN_CTESTS := $(patsubst c-tests/%.c,$(BUILD)/asan/c-tests/%,$(CTEST_SRC))
ASAN_EXAMPLES := $(patsubst examples-c/%.c,$(BUILD)/asan/examples/%,$(EXAMPLE_SRC))

.PHONY: all lib demo test test-rust test-c test-valgrind test-asan test-tls test-conformance test-fuzz-replay test-pjlib test-readme \
        fuzz bench bench-smoke check-header header \
        c-tests examples asan-tests deps venv install uninstall clean check-symbols

all: lib

lib: $(BUILD)/lib/$(SONAME)

$(BUILD)/lib/$(SONAME): $(RUST_SRC)
	$(CARGO) build --release --lib
	mkdir -p $(BUILD)/lib
	@# copy then rename: programs still running keep the old file intact
	cp target/release/libpjwebsock.so $@.tmp && mv -f $@.tmp $@
	ln -sf $(SONAME) $(BUILD)/lib/libpjwebsock.so
	cp target/release/libpjwebsock.a $(BUILD)/lib/libpjwebsock.a.tmp && mv -f $(BUILD)/lib/libpjwebsock.a.tmp $(BUILD)/lib/libpjwebsock.a

# ---- system and Python dependencies ------------------------------------

deps:
	@missing=""; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	[ -f /usr/include/openssl/ssl.h ] || missing="$$missing libssl-dev"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	echo 'int main(void){return 0;}' | $(CC) $(SAN_FLAGS) -x c - -o /dev/null 2>/dev/null || \
	  missing="$$missing libgcc-$$($(CC) -dumpversion | cut -d. -f1)-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.ok

$(VENV)/.ok: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/requirements.txt
	touch $@

# ---- header ------------------------------------------------------------

$(CBINDGEN):
	$(CARGO) install cbindgen --version $(CBINDGEN_VERSION) --locked --root $(TOOLS) -q

header: $(CBINDGEN)
	$(CBINDGEN) --config cbindgen.toml --crate pjwebsock --output $(HEADER) -q

check-header: $(CBINDGEN)
	@$(CBINDGEN) --config cbindgen.toml --crate pjwebsock --output $(BUILD)/websock.h.new -q
	@if ! cmp -s $(BUILD)/websock.h.new $(HEADER); then \
	  diff -u $(HEADER) $(BUILD)/websock.h.new | head -40; \
	  echo "FAIL: $(HEADER) is stale; run 'make header' and commit it"; exit 1; \
	fi
	@echo "header: $(HEADER) is up to date"

# The header compiles alone in C99 and C++, and after pjlib-style guards.
check-header-compiles: $(HEADER)
	mkdir -p $(BUILD)
	$(CC) -std=c99 -pedantic -Wall -Wextra -Werror -Iinclude -c c-tests/header_alone.c -o $(BUILD)/header_alone.o
	$(CXX) -std=c++11 -Wall -Wextra -Werror -Iinclude -c c-tests/header_cxx.cpp -o $(BUILD)/header_cxx.o
	@# after stand-ins of pjlib's headers (written from the documented ABI),
	@# from pj/types.h alone (level 1) to pjlib-util/websock.h (level 3)
	for lvl in 1 2 3; do \
	  $(CC) -std=c11 -pedantic -Wall -Wextra -Werror -Ic-tests/fake_pjlib -Iinclude -DFAKE_PJLIB_LEVEL=$$lvl \
	    -c c-tests/header_after_pjlib.c -o $(BUILD)/header_after_pjlib.$$lvl.o || exit 1; \
	  $(CXX) -x c++ -std=c++11 -pedantic -Wall -Wextra -Werror -Ic-tests/fake_pjlib -Iinclude -DFAKE_PJLIB_LEVEL=$$lvl \
	    -c c-tests/header_after_pjlib.c -o $(BUILD)/header_after_pjlib_cxx.$$lvl.o || exit 1; \
	done

# Only the pj_websock_* API is exported from the shared library.
check-symbols: lib
	@bad=$$(nm -D --defined-only $(BUILD)/lib/$(SONAME) | awk '{print $$3}' | grep -v '^pj_websock_' || true); \
	if [ -n "$$bad" ]; then echo "FAIL: unexpected exported symbols:"; echo "$$bad"; exit 1; fi; \
	readelf -d $(BUILD)/lib/$(SONAME) | grep -q 'SONAME.*$(SONAME)' || { echo "FAIL: soname is not $(SONAME)"; exit 1; }; \
	echo "symbols: only pj_websock_* exported, soname $(SONAME)"

# ---- C tests and examples ----------------------------------------------

$(BUILD)/c-tests/%: c-tests/%.c c-tests/common.c c-tests/common.h c-tests/testutil.c c-tests/testutil.h \
                    $(HEADER) $(BUILD)/lib/$(SONAME)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_TEST) $< c-tests/common.c c-tests/testutil.c $(LDFLAGS_TEST) -o $@

$(BUILD)/examples/%: examples-c/%.c $(HEADER) $(BUILD)/lib/$(SONAME)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Iinclude $< $(LDFLAGS_TEST) -o $@

$(BUILD)/asan/c-tests/%: c-tests/%.c c-tests/common.c c-tests/common.h c-tests/testutil.c c-tests/testutil.h \
                         $(HEADER) $(BUILD)/lib/$(SONAME)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_TEST) $(SAN_FLAGS) $< c-tests/common.c c-tests/testutil.c $(LDFLAGS_TEST) -o $@

$(BUILD)/asan/examples/%: examples-c/%.c $(HEADER) $(BUILD)/lib/$(SONAME)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror $(SAN_FLAGS) -Iinclude $< $(LDFLAGS_TEST) -o $@

c-tests: $(CTESTS)
examples: $(EXAMPLES)
asan-tests: $(ASAN_CTESTS) $(ASAN_EXAMPLES)

# ---- test --------------------------------------------------------------

test: deps
	@rm -f $(BUILD)/test-logs/stages.log
	@bash tests/stage.sh "cargo test" $(MAKE) --no-print-directory test-rust
	@bash tests/stage.sh "build" $(MAKE) --no-print-directory lib c-tests examples
	@bash tests/stage.sh "readme examples" $(MAKE) --no-print-directory test-readme
	@bash tests/stage.sh "header" $(MAKE) --no-print-directory check-header check-header-compiles check-symbols check-install
	@bash tests/stage.sh "venv" $(MAKE) --no-print-directory venv
	@bash tests/stage.sh "c tests" $(MAKE) --no-print-directory test-c
	@bash tests/stage.sh "c tests under valgrind" $(MAKE) --no-print-directory test-valgrind
	@bash tests/stage.sh "c tests with ASan and UBSan" $(MAKE) --no-print-directory test-asan
	@bash tests/stage.sh "tls tests" $(MAKE) --no-print-directory test-tls
	@bash tests/stage.sh "conformance" $(MAKE) --no-print-directory test-conformance
	@bash tests/stage.sh "pjlib driver" $(MAKE) --no-print-directory test-pjlib
	@bash tests/stage.sh "fuzz corpus replay" $(MAKE) --no-print-directory test-fuzz-replay
	@bash tests/stage.sh "bench smoke" $(MAKE) --no-print-directory bench-smoke
	@bash tests/summary.sh

# Every complete C program (```c block with int main) in README.md compiles and links.
test-readme: lib
	$(PYTHON) tests/readme_examples.py

test-rust:
	$(CARGO) test --release --lib -q

test-c: venv c-tests examples
	$(VENV)/bin/python tests/run_c_tests.py --bindir $(BUILD)/c-tests --exdir $(BUILD)/examples

test-valgrind: venv c-tests examples
	$(VENV)/bin/python tests/run_c_tests.py --bindir $(BUILD)/c-tests --exdir $(BUILD)/examples --valgrind-only

# The C tests, examples, TLS, conformance and pjlib drivers built with
# AddressSanitizer and UBSan. The library itself is not instrumented, but
# its allocations go through the sanitizer's malloc: leaks of them, and C
# code overrunning them, are reported too.
test-asan: venv asan-tests
	$(SAN_ENV) $(VENV)/bin/python tests/run_c_tests.py --bindir $(BUILD)/asan/c-tests --exdir $(BUILD)/asan/examples
	$(SAN_ENV) $(VENV)/bin/python tests/tls/run.py --bin $(BUILD)/asan/c-tests/test_tls --logdir $(BUILD)/asan/test-logs/tls
	$(SAN_ENV) $(VENV)/bin/python tests/conformance/run.py --bin $(BUILD)/asan/c-tests/test_conformance \
	  --logdir $(BUILD)/asan/test-logs --no-doc-check
	$(SAN_ENV) PJWS_SAN_FLAGS="$(SAN_FLAGS)" $(VENV)/bin/python tests/pjlib/run.py --asan

# wss://: throwaway PKI, TLS peers, natively and under valgrind.
test-tls: venv c-tests
	$(VENV)/bin/python tests/tls/run.py --bin $(BUILD)/c-tests/test_tls --both

# RFC 6455 conformance suite (scripted peer), natively and under valgrind.
test-conformance: venv c-tests
	$(VENV)/bin/python tests/conformance/run.py --bin $(BUILD)/c-tests/test_conformance
	$(VENV)/bin/python tests/conformance/run.py --bin $(BUILD)/c-tests/test_conformance --valgrind

# pjlib mode against a pjproject build (PJPROJECT_DIR=... or pkg-config
# libpjproject), natively and under valgrind, and pjproject's websock_test
# relinked with -lpjwebsock; without pjproject those print
# "SKIPPED: pjproject not found" and count as skipped.
test-pjlib: venv lib
	$(VENV)/bin/python tests/pjlib/run.py --valgrind

# The committed fuzz corpus through the fuzz targets, on stable Rust.
test-fuzz-replay:
	$(CARGO) test --release -q --manifest-path fuzz/Cargo.toml --tests

# Bounded libFuzzer runs of every target (not part of CI).
fuzz:
	bash fuzz/run.sh

# Benchmarks against peer libraries (not part of CI): bench/RESULTS.md.
bench: lib
	bash bench/run.sh $(BENCH_ARGS)

# Builds the bench programs and runs each workload once, tiny.
bench-smoke: lib
	bash bench/smoke.sh

# ---- demo --------------------------------------------------------------

demo: deps
	@$(MAKE) --no-print-directory lib examples venv
	@bash tests/demo.sh $(VENV)/bin/python $(BUILD)/examples/echo_client

# ---- install -----------------------------------------------------------

install: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR)/pjwebsock $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 755 $(BUILD)/lib/$(SONAME) $(DESTDIR)$(LIBDIR)/libpjwebsock.so.$(VERSION)
	ln -sf libpjwebsock.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libpjwebsock.so
	install -m 644 $(BUILD)/lib/libpjwebsock.a $(DESTDIR)$(LIBDIR)/libpjwebsock.a
	install -m 644 $(HEADER) $(DESTDIR)$(INCDIR)/pjwebsock/websock.h
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCDIR@|$(INCDIR)|; s|@VERSION@|$(VERSION)|' \
	    pjwebsock.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/pjwebsock.pc

# make install into a staging dir, then build an example with pkg-config.
check-install: lib
	rm -rf $(BUILD)/stage
	$(MAKE) --no-print-directory install PREFIX=/usr/local DESTDIR=$(BUILD)/stage >/dev/null
	test -L $(BUILD)/stage/usr/local/lib/libpjwebsock.so -a -L $(BUILD)/stage/usr/local/lib/$(SONAME)
	$(CC) -Wall -Werror examples-c/echo_client.c -o $(BUILD)/stage/echo_client \
	    $$(PKG_CONFIG_SYSROOT_DIR=$(BUILD)/stage PKG_CONFIG_PATH=$(BUILD)/stage/usr/local/lib/pkgconfig \
	       pkg-config --cflags --libs pjwebsock) -Wl,-rpath,$(BUILD)/stage/usr/local/lib
	@echo "install: library, soname links, header and pjwebsock.pc usable"

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libpjwebsock.so* $(DESTDIR)$(LIBDIR)/libpjwebsock.a \
	      $(DESTDIR)$(INCDIR)/pjwebsock/websock.h $(DESTDIR)$(LIBDIR)/pkgconfig/pjwebsock.pc

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
