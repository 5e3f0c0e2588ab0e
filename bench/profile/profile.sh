#!/bin/bash
# Licensed under the Apache License, Version 2.0 (the "License"); you may not
# use this file except in compliance with the License.  You may obtain a copy
# of the License at http://www.apache.org/licenses/LICENSE-2.0
#
# bench/profile/profile.sh — the measurements behind bench/PROFILE.md, one
# at a time, each on a fresh slowd + Apache (1 child x 25 threads, the
# bench's asyncproxy config plus /apx-status) on loopback:
#
#   profile.sh rss       [CONNS [DELAY_MS]]          RSS per in-flight request
#   profile.sh strace    CONNS DELAY_MS BYTES [SECS] syscalls per request
#   profile.sh callgrind CONNS DELAY_MS BYTES [SECS] instructions per request
#   profile.sh perf      CONNS DELAY_MS BYTES [SECS] perf record -g of the child
#   profile.sh parks     CONNS DELAY_MS BYTES [SECS] parks/adoptions per request
#   profile.sh first     CONNS DELAY_MS BYTES        CPU of a connection's first request
#   profile.sh idletrim  CONNS                       syscalls per idle trim (memory.c)
#
# BYTES may carry a query (1024?max-age=60). Environment: APX_MODULE_SO (the
# module; default build/mod_asyncproxy.so), EXTRA (more httpd.conf lines),
# KEEP=1 (keep the run directory). Counts (syscalls, instructions, parks)
# are what to compare: seconds on a shared 2-core box are not.
# Every process started here is stopped by pid.
set -e
TOP=$(cd "$(dirname "$0")/../.." && pwd)
SO=${APX_MODULE_SO:-$TOP/build/mod_asyncproxy.so}
SLOWD=$TOP/build/bench/slowd
MODE=${1:?usage: $0 rss|strace|callgrind|perf|parks|first|idletrim ...}
shift
D=$(mktemp -d /tmp/apx-profile-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$D/logs/httpd.pid" ] && kill "$(cat "$D/logs/httpd.pid")" 2>/dev/null || true
    sleep 0.5
    [ -n "$KEEP" ] && echo "kept $D" || rm -rf "$D"
}
trap cleanup EXIT
ulimit -n 20000

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# slowd + the httpd.conf of the bench's asyncproxy row (1 child)
setup() {
    mkdir -p "$D/logs" "$D/htdocs"
    "$SLOWD" -q -a 127.0.0.1 -p 0 -b 4096 > "$D/slowd.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do grep -q listening "$D/slowd.out" && break; sleep 0.1; done
    BPORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$D/slowd.out")
    PORT=$(free_port)
    local B=$TOP/bench/conf
    sed -e "s|@DIR@|$D|g" -e "s|@PORT@|$PORT|g" -e "s|@BPORT@|$BPORT|g" -e "s|@MPM@|event|g" \
        -e "s|@SERVERS@|1|g" -e "s|@THREADS@|25|g" -e "s|@MAXWORKERS@|25|g" -e "s|@USER@||" \
        -e "s|@BUCKETS@||" -e "s|@MODULE@|$SO|g" \
        "$B/httpd-base.conf.in" "$B/httpd-asyncproxy.conf.in" > "$D/httpd.conf"
    printf '\n%s\n' "<Location /apx-status>" "SetHandler asyncproxy-status" "</Location>" \
        "${EXTRA:-}" >> "$D/httpd.conf"
}

start_httpd() {
    apache2 -f "$D/httpd.conf" -k start
    for _ in $(seq 50); do [ -s "$D/logs/httpd.pid" ] && break; sleep 0.1; done
    sleep 0.5
    CHILD=$(cat /proc/"$(cat "$D/logs/httpd.pid")"/task/*/children | tr ' ' '\n' | head -1)
    wrk -t 1 -c 16 -d 1s "http://127.0.0.1:$PORT/b/delay/0/1024" > /dev/null
    sleep 1.2
}

# strace -c output ($D/strace.out) per unit: strace_per COUNT "per request"
strace_per() {
    awk -v n="$1" -v per="$2" '/^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ {
             name = $NF; calls = $4; err = (NF == 6) ? $5 : 0;
             printf "%-16s %8.2f %s (%.2f failed)\n", name, calls / n, per, err / n }' \
        "$D/strace.out"
}

# the top LINES rows of $D/perf.data sorted by SORT: perf_top SORT LINES
perf_top() {
    perf report -i "$D/perf.data" --stdio --no-children --sort "$1" -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -"$2"
}

# user + system clock ticks of the child, all threads
cpu_ticks() { awk '{print $14 + $15}' /proc/"$CHILD"/stat; }

status() { curl -s "http://127.0.0.1:$PORT/apx-status" | sed -n "s/^AsyncProxy$1: //p"; }

load() {    # CONNS DELAY BYTES SECS -> wrk in the background, pid in WRK
    wrk -t 2 -c "$1" -d "$4s" --timeout 10s --latency \
        "http://127.0.0.1:$PORT/b/delay/$2/$3" > "$D/wrk.out" &
    WRK=$!
    PIDS+=($WRK)
}

case $MODE in
rss)
    N=${1:-1000}; DELAY=${2:-1000}
    setup; start_httpd
    IDLE=$("$TOP/bench/profile/smaps.pl" "$CHILD")
    load "$N" "$DELAY" 1024 8
    sleep 5
    LOAD=$("$TOP/bench/profile/smaps.pl" "$CHILD")
    echo "idle:            $IDLE"
    echo "$N in flight:  $LOAD"
    echo "parked now: $(status ParkedNow)  stacks in use: $(status StacksInUse)"
    wait "$WRK"
    perl -e '($a) = $ARGV[0] =~ /total=(\d+)/; ($b) = $ARGV[1] =~ /total=(\d+)/;
             printf "RSS per in-flight request: %.1f KB\n", ($b - $a) / $ARGV[2]' "$IDLE" "$LOAD" "$N"
    ;;
strace|perf|parks)
    N=${1:?conns}; DELAY=${2:?delay ms}; BYTES=${3:?bytes}; T=${4:-5}
    setup; start_httpd
    load "$N" "$DELAY" "$BYTES" $((T + 7))
    sleep 3
    R0=$(status RequestsTotal); P0=$(status ParksTotal); A0=$(status AdoptedTotal)
    X0=$(cat /proc/"$CHILD"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    C0=$(cpu_ticks)
    if [ "$MODE" = strace ]; then
        TIDS=$(ls /proc/"$CHILD"/task | sed 's/^/-p /' | tr '\n' ' ')
        # shellcheck disable=SC2086
        timeout -s INT "$T" strace -c -f $TIDS -o "$D/strace.out" 2>/dev/null || true
    elif [ "$MODE" = perf ]; then
        perf record -F 2000 -g -p "$CHILD" -o "$D/perf.data" -- sleep "$T" > /dev/null 2>&1
    else
        sleep "$T"
    fi
    X1=$(cat /proc/"$CHILD"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    C1=$(cpu_ticks)
    R1=$(status RequestsTotal); P1=$(status ParksTotal); A1=$(status AdoptedTotal)
    echo "worker stalls (watchdog) so far: $(status WorkerStalls); arms kept $(status ArmsKept), fired $(status ArmsFired), rewatches $(status Rewatches)"
    REQ=$((R1 - R0))
    echo "requests in the window: $REQ; parks/request $(echo "scale=2; ($P1 - $P0) / $REQ" | bc);" \
         "adopted connections: $((A1 - A0)); context switches/request" \
         "$(echo "scale=2; ($X1 - $X0) / $REQ" | bc);" \
         "child CPU/request $(echo "($C1 - $C0) * 1000000 / $(getconf CLK_TCK) / $REQ" | bc) us (under $MODE)"
    if [ "$MODE" = strace ]; then
        strace_per "$REQ" "per request"
    elif [ "$MODE" = perf ]; then
        perf_top dso 12
        perf_top sym 30
    fi
    wait "$WRK" || true
    grep -E "Requests/sec|  99%" "$D/wrk.out" | tr -s ' ' | tr '\n' ' '; echo
    ;;
idletrim)
    # CONNS connections, one fast proxied request each, then quiet: each is
    # trimmed after 1 s idle; strace -c of the child over 3 s of that
    N=${1:?conns}
    setup; start_httpd
    ulimit -n 20000
    HOLD=4 READY="$D/ready" "$TOP/bench/profile/first-requests.pl" "$PORT" /b/delay/0/1024 \
        "$N" "$(cat "$D/logs/httpd.pid")" "$CHILD" > /dev/null &
    HOLDER=$!
    PIDS+=($HOLDER)
    while [ ! -f "$D/ready" ] && kill -0 "$HOLDER" 2>/dev/null; do sleep 0.05; done
    T0=$(status IdleTrims)
    # shellcheck disable=SC2046
    strace -c -f $(ls /proc/"$CHILD"/task | sed 's/^/-p /') -o "$D/strace.out" 2>/dev/null &
    STRACEPID=$!
    sleep 3
    kill -INT "$STRACEPID"; wait "$STRACEPID" || true
    T1=$(status IdleTrims)
    echo "idle trims in the window: $((T1 - T0))"
    strace_per $((T1 - T0)) "per trim"
    wait "$HOLDER" || true
    ;;
first)
    N=${1:?conns}; DELAY=${2:?delay ms}; BYTES=${3:?bytes}
    setup; start_httpd
    ulimit -n 20000
    if [ -n "$PERF" ]; then     # PERF=1: perf record -g of the child over the burst
        perf record -F 4000 -g -p "$CHILD" -o "$D/perf.data" > /dev/null 2>&1 &
        PERFPID=$!; sleep 0.5
    fi
    if [ -n "$STRACE" ]; then   # STRACE=1: strace -c of the child over the burst
        # shellcheck disable=SC2046
        strace -c -f $(ls /proc/"$CHILD"/task | sed 's/^/-p /') -o "$D/strace.out" 2>/dev/null &
        STRACEPID=$!; sleep 0.5
    fi
    G0=$(status GateWaits); S0=$(status ParkDelaySkipped); P0=$(status ParksTotal)
    # URL=/static.html: httpd's own cost of a first request (a 1 KiB file)
    head -c 1024 /dev/zero | tr '\0' x > "$D/htdocs/static.html"
    "$TOP/bench/profile/first-requests.pl" "$PORT" "${URL:-/b/delay/$DELAY/$BYTES}" "$N" \
        "$(cat "$D/logs/httpd.pid")" "$CHILD"
    if [ -n "$PERF" ]; then
        kill -INT "$PERFPID"; wait "$PERFPID" || true
        perf_top "${PERFSORT:-dso,sym}" 40
    fi
    if [ -n "$STRACE" ]; then
        kill -INT "$STRACEPID"; wait "$STRACEPID" || true
        strace_per "$N" "per first request"
    fi
    echo "module, over the burst: gate waits $(( $(status GateWaits) - G0 )), park delays skipped $(( $(status ParkDelaySkipped) - ${S0:-0} )), parks $(( $(status ParksTotal) - P0 ))"
    ;;
callgrind)
    # apache2 -X (one process) under valgrind; counters zeroed after the
    # warm-up, dumped after the measured load
    N=${1:?conns}; DELAY=${2:?delay ms}; BYTES=${3:?bytes}; T=${4:-10}
    setup
    valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" --dump-instr=no \
        apache2 -X -f "$D/httpd.conf" > "$D/vg.out" 2>&1 &
    VG=$!
    PIDS+=($VG)
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.3; done
    wrk -t 1 -c 4 -d 3s --timeout 20s "http://127.0.0.1:$PORT/b/delay/0/1024" > /dev/null
    sleep $((DELAY / 1000 + 2))
    callgrind_control -z "$VG" > /dev/null
    wrk -t 1 -c "$N" -d "${T}s" --timeout 30s "http://127.0.0.1:$PORT/b/delay/$DELAY/$BYTES" > "$D/wrk.out"
    sleep $((DELAY / 1000 + 1))
    callgrind_control -d "$VG" > /dev/null
    sleep 1
    REQ=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$D/wrk.out")
    callgrind_annotate --threshold=100 --auto=no "$D/cg.out.1" 2>/dev/null \
        | grep -v 'start_thread\|clone.S\|???:0x0000000000' > "$D/cg.txt"
    TOT=$(sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' "$D/cg.txt" | tr -d ,)
    echo "requests $REQ, instructions (Ir) $TOT: $((TOT / REQ)) per request"
    awk -v n="$REQ" '/^ *[0-9,]+ \(/ && /\[/ { v = $1; gsub(",", "", v);
             o = $0; sub(/.*\[/, "", o); sub(/\].*/, "", o); sub(/.*\//, "", o); by[o] += v }
         END { for (k in by) printf "%8.0f  %s\n", by[k] / n, k }' "$D/cg.txt" | sort -rn | head -8
    grep -E '^ *[0-9,]+ \(' "$D/cg.txt" | head -30 | awk -v n="$REQ" '{ v = $1; gsub(",", "", v);
             $1 = ""; $2 = ""; sub(/^ +/, ""); sub(/ \[.*/, ""); sub(/.*:/, "");
             printf "%8.0f  %s\n", v / n, $0 }'
    ;;
*)
    echo "usage: $0 rss|strace|callgrind|perf|parks|first|idletrim ..." >&2
    exit 2
    ;;
esac
