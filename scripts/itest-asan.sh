#!/bin/sh
# itest-asan.sh — runs the integration suite once against the module built
# with AddressSanitizer, and reports every ASan report httpd wrote.
#
#   scripts/itest-asan.sh                     # all of t/integration/
#   scripts/itest-asan.sh t/integration/21-async-lifecycle.t ...
#
# Not part of `make test` (it takes a few minutes and rebuilds the module).
# The sanitizer build is made in a copy of the sources (APX_ASAN_DIR, default
# a fresh /tmp/apx-asan-XXXXXX), so build/ of the work tree is left alone.
# Debian's apache2 is not built with ASan: the runtime is preloaded into it
# (LD_PRELOAD=libasan.so, which must come first), passed through
# APX::Httpd's APX_HTTPD_ENV; APX_MODULE_SO points the tests at the ASan
# module. Leak detection is off (httpd frees pools at exit, or never). ASan
# writes each report to $DIR/asan/asan.<pid> (the first error ends that
# process, without a core: abort_on_error=0; the tests then fail too).
#
# Exit status: 0 = tests passed and no ASan report; 1 = ASan reported
# something (printed); 2 = build failed; 3 = tests failed, no ASan report.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
DIR=${APX_ASAN_DIR:-$(mktemp -d /tmp/apx-asan-XXXXXX)}
SRC=$DIR/src
LOGDIR=$DIR/asan
mkdir -p "$SRC" "$LOGDIR"
# children run as www-data when started by root: they must write reports
chmod 1777 "$LOGDIR"
chmod 0755 "$DIR"

echo "itest-asan: building the module with -fsanitize=address in $SRC"
(cd "$TOP" && tar --exclude=./build --exclude=./.git -cf - .) | (cd "$SRC" && tar -xf -)
if ! (cd "$SRC" && make clean >/dev/null 2>&1; make DEBUG=1 SAN=address) >"$DIR/build.log" 2>&1; then
    tail -30 "$DIR/build.log"
    echo "itest-asan: build failed (log: $DIR/build.log)"
    exit 2
fi
make -C "$TOP/bench" slowd >/dev/null || { echo "itest-asan: cannot build slowd"; exit 2; }

LIBASAN=$(gcc -print-file-name=libasan.so)
[ -e "$LIBASAN" ] || { echo "itest-asan: libasan.so not found ($LIBASAN)"; exit 2; }

APX_MODULE_SO=$SRC/build/mod_asyncproxy.so
# Coroutines switch stacks: the engine tells ASan (fiber annotations);
# detect_stack_use_after_return stays off so fake stacks are not involved.
APX_HTTPD_ENV="LD_PRELOAD=$LIBASAN ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:detect_stack_use_after_return=0:log_path=$LOGDIR/asan"
export APX_MODULE_SO APX_HTTPD_ENV

if [ $# -eq 0 ]; then
    set -- t/integration/
fi
echo "itest-asan: running $* with $APX_MODULE_SO"
echo "itest-asan: APX_HTTPD_ENV=$APX_HTTPD_ENV"
cd "$TOP"
prove -It/lib "$@"
rc=$?

reports=$(ls "$LOGDIR" 2>/dev/null | wc -l)
if [ "$reports" -gt 0 ]; then
    echo "itest-asan: $reports ASan report file(s) in $LOGDIR:"
    for f in "$LOGDIR"/*; do
        echo "===== $f"
        head -60 "$f"
    done
    exit 1
fi
echo "itest-asan: no ASan report (reports would be in $LOGDIR)"
[ $rc -eq 0 ] || { echo "itest-asan: tests failed (prove exit $rc)"; exit 3; }
echo "itest-asan: OK"
exit 0
