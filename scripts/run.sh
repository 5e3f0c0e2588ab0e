#!/bin/sh
# `make run`: starts the demo slow backend and a local httpd with the module
# in front of it, on loopback ports, from a self-contained directory.
# `make stop-run` (or `scripts/run.sh stop`) stops both, by pid.
set -e
TOP=$(cd "$(dirname "$0")/.." && pwd)
DIR=${APX_RUN_DIR:-/tmp/mod_asyncproxy-run}
PORT=${PORT:-8080}
BPORT=${BACKEND_PORT:-9000}

stop() {
    if [ -f "$DIR/logs/httpd.pid" ]; then
        kill "$(cat "$DIR/logs/httpd.pid")" 2>/dev/null || true
    fi
    if [ -f "$DIR/slowd.pid" ]; then
        kill "$(cat "$DIR/slowd.pid")" 2>/dev/null || true
        rm -f "$DIR/slowd.pid"
    fi
}
if [ "$1" = stop ]; then
    stop
    echo "stopped"
    exit 0
fi
stop
sleep 0.3
mkdir -p "$DIR/logs" "$DIR/htdocs"
sed -e "s#@TOP@#$TOP#g" -e "s#@DIR@#$DIR#g" -e "s#@PORT@#$PORT#g" \
    -e "s#@BPORT@#$BPORT#g" "$TOP/scripts/run.conf.in" > "$DIR/httpd.conf"
[ "$(id -u)" = 0 ] && chown www-data "$DIR/logs" 2>/dev/null || true
ulimit -n 20000 2>/dev/null || true
"$TOP/build/bench/slowd" -q -a 127.0.0.1 -p "$BPORT" -P "$DIR/slowd.pid" \
    >"$DIR/logs/slowd.log" 2>&1 </dev/null &
sleep 0.3
/usr/sbin/apache2 -f "$DIR/httpd.conf" -k start
sleep 0.5
cat <<EOM

mod_asyncproxy is running (event MPM, 1 child, 25 threads) in $DIR
  demo slow backend:  http://127.0.0.1:$BPORT/delay/MS/BYTES
  through the proxy:  http://127.0.0.1:$PORT/demo/delay/1000/100   (1 s backend)

Try:
  curl -i http://127.0.0.1:$PORT/demo/delay/1000/100
  curl http://127.0.0.1:$PORT/apx-status          # the module's figures
  wrk -c 2000 -t 2 -d 10s http://127.0.0.1:$PORT/demo/delay/1000/100
                                   # 2000 parked requests on 25 threads
Logs: $DIR/logs/error_log   Stop: make stop-run
EOM
