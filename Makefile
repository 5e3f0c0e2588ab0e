# mod_asyncproxy — build, tests, demo, benchmarks.
#
#   make            engine library + module (build/mod_asyncproxy.so)
#   make test       every test: compat-check (builds on httpd 2.4.52), unit
#                   (plain, ASan+UBSan, TSan) + integration
#   make run        start a local httpd with the module in front of the demo backend
#   make bench-engine   engine micro-benchmarks (printed, not asserted)
#   make fuzz       libFuzzer targets of the HTTP codec, each run for FUZZ_SECONDS
#   make DEBUG=1 SAN=address,undefined   sanitizer build of library and module

CC      ?= gcc
APXS    ?= apxs
PROVE   ?= prove

WARN := -std=gnu99 -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow \
        -Wstrict-prototypes -Wmissing-prototypes -Wdeclaration-after-statement \
        -Wpointer-arith -Wformat-security

APR_CFLAGS  := $(shell apr-1-config --cflags --cppflags --includes 2>/dev/null)
APR_LIBS    := $(shell apr-1-config --link-ld 2>/dev/null)
APU_CFLAGS  := $(shell apu-1-config --includes 2>/dev/null)
HTTPD_INC   := $(shell $(APXS) -q INCLUDEDIR 2>/dev/null)

ifeq ($(DEBUG),1)
OPT := -O1 -g -DAPX_DEBUG=1
else
OPT := -O2 -g
endif
ifneq ($(SAN),)
OPT += -fsanitize=$(SAN) -fno-omit-frame-pointer
SAN_LD := -fsanitize=$(SAN)
endif

B        := build
ENG_SRC  := $(wildcard poller/*.c)
ENG_OBJ  := $(patsubst poller/%.c,$(B)/poller/%.o,$(ENG_SRC))
GLUE_SRC := mod_asyncproxy.c $(wildcard httpd/*.c)
GLUE_HDR := $(wildcard httpd/*.h)
LIB      := $(B)/libapx.a
MODULE   := $(B)/mod_asyncproxy.so
ENG_CFLAGS := $(WARN) $(OPT) -fPIC -fvisibility=hidden -Iinclude $(APR_CFLAGS) -pthread

UNIT_SRC  := $(wildcard t/unit/*.c)
UNIT_NAMES := $(patsubst t/unit/%.c,%,$(UNIT_SRC))
# Threaded unit tests that also run under ThreadSanitizer.
TSAN_TESTS ?= $(filter coro poller poller_wake cache,$(UNIT_NAMES))

.PHONY: all deps test compat-check unit unit-asan unit-tsan integration run stop-run bench bench-engine fuzz clean cache-tests

all: $(MODULE)

deps:
	@./scripts/deps.sh

$(B)/poller/%.o: poller/%.c $(wildcard include/*.h) $(wildcard poller/*.h) | $(B)/poller
	$(CC) $(ENG_CFLAGS) -c $< -o $@

$(B)/poller $(B)/t $(B)/t-asan $(B)/t-tsan $(B)/t-uctx:
	mkdir -p $@

$(LIB): $(ENG_OBJ)
	rm -f $@
	ar rcs $@ $^

# The module is linked directly (no libtool): apxs only tells where httpd's
# headers are. -fvisibility=hidden must never reach the glue: it would hide
# asyncproxy_module; the version script keeps the glue's other symbols
# local instead.
$(MODULE): $(GLUE_SRC) $(LIB) $(wildcard include/*.h) $(GLUE_HDR) httpd/exports.map
	$(CC) $(WARN) $(OPT) -fPIC -shared -Iinclude -I$(HTTPD_INC) $(APR_CFLAGS) $(APU_CFLAGS) \
	    -pthread $(GLUE_SRC) $(LIB) -lssl -lcrypto -lz -Wl,--version-script=httpd/exports.map -o $@ $(SAN_LD)
	@nm -D --defined-only $@ | awk '$$2 ~ /[TDB]/ && $$3 !~ /^_/ {print $$3}' | \
	    grep -vx asyncproxy_module && { echo "unexpected exported symbols in $@" >&2; exit 1; } || true

# The glue must build on every supported httpd 2.4 (2.4.52 and later):
# compile it against the installed headers seen as 2.4.52 — module magic
# number set back, names 2.4.52 lacks poisoned (t/compat/httpd-2.4.52.h) —
# so a newer name used without a guard of httpd/compat.h fails.
COMPAT_VIEWS := $(wildcard t/compat/httpd-*.h)
compat-check: $(GLUE_SRC) $(COMPAT_VIEWS) $(wildcard include/*.h) $(GLUE_HDR)
	@set -e; for v in $(COMPAT_VIEWS); do \
	    echo "compat-check: glue against $$v"; \
	    $(CC) $(WARN) -fsyntax-only -include $$v -Iinclude -I$(HTTPD_INC) \
	        $(APR_CFLAGS) $(APU_CFLAGS) -pthread $(GLUE_SRC); \
	done

# Unit tests #include the .c files they test (to reach statics, as h2o
# does) and link only poller/log.c besides, so each test stands alone.
UNIT_BUILD = $(CC) $(WARN) $(1) -Iinclude -Ipoller -It/unit $(APR_CFLAGS) -pthread \
	$< poller/log.c -o $@ $(APR_LIBS) -lz -lpthread
$(B)/t/%.t: t/unit/%.c poller/*.c $(wildcard poller/*.h) $(wildcard include/*.h) $(wildcard t/unit/*.h) | $(B)/t
	$(call UNIT_BUILD,-O2 -g)
# The ucontext fallback of the coroutine switch, built and run too.
$(B)/t-uctx/%.t: t/unit/%.c poller/*.c $(wildcard poller/*.h) $(wildcard include/*.h) $(wildcard t/unit/*.h) | $(B)/t-uctx
	$(call UNIT_BUILD,-O2 -g -DAPX_CORO_UCONTEXT=1)
# (in a variable: a comma inside $(call ...) would split the argument)
ASAN_UNIT := -O1 -g -DAPX_DEBUG=1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
$(B)/t-asan/%.t: t/unit/%.c poller/*.c $(wildcard poller/*.h) $(wildcard include/*.h) $(wildcard t/unit/*.h) | $(B)/t-asan
	$(call UNIT_BUILD,$(ASAN_UNIT))
$(B)/t-tsan/%.t: t/unit/%.c poller/*.c $(wildcard poller/*.h) $(wildcard include/*.h) $(wildcard t/unit/*.h) | $(B)/t-tsan
	$(call UNIT_BUILD,-O1 -g -DAPX_DEBUG=1 -fsanitize=thread)

unit: $(addprefix $(B)/t/,$(addsuffix .t,$(UNIT_NAMES))) $(if $(filter coro,$(UNIT_NAMES)),$(B)/t-uctx/coro.t)
	$(PROVE) $^

unit-asan: $(addprefix $(B)/t-asan/,$(addsuffix .t,$(UNIT_NAMES)))
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    $(PROVE) $^

unit-tsan: $(addprefix $(B)/t-tsan/,$(addsuffix .t,$(TSAN_TESTS)))
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(PROVE) $^

# Hostile and normal clients of the hardening tests (t/integration/4x-*).
HOSTILE := $(B)/t/hostile
$(HOSTILE): t/tools/hostile.c | $(B)/t
	$(CC) $(WARN) -O2 -g $< -o $@

integration: $(MODULE) $(HOSTILE)
	$(MAKE) -C bench slowd
	$(PROVE) -It/lib t/integration/

test: deps
	$(MAKE) all
	$(MAKE) compat-check
	$(MAKE) unit
	$(MAKE) unit-asan
	$(MAKE) unit-tsan
	$(MAKE) integration

run: deps
	$(MAKE) all
	$(MAKE) -C bench slowd
	./scripts/run.sh

stop-run:
	./scripts/run.sh stop

# The external RFC 9111 suite (issue 12): CACHE_SUITE is a checkout of
# http-tests/cache-tests with `npm i` done; the summary goes to
# bench/results/cache-tests-latest.md.
cache-tests: $(MODULE)
	@test -n "$(CACHE_SUITE)" || { echo "make cache-tests CACHE_SUITE=DIR (a checkout of http-tests/cache-tests, npm i done)" >&2; exit 2; }
	./scripts/cache-tests.pl $(CACHE_SUITE) --out bench/results/cache-tests-latest.md

bench-engine:
	$(MAKE) -C bench engine

bench: deps all
	$(MAKE) -C bench all

fuzz:
	$(MAKE) -C fuzz run

clean:
	rm -rf $(B)
	-$(MAKE) -C bench clean
	-$(MAKE) -C fuzz clean
