#!/bin/bash
# nginx CPU per full TLS handshake: opens new connections for 8 s with `openssl s_time -new`
# (no request on them) against one nginx and divides its workers' CPU time by the handshakes.
#
#   bench/nginx_handshake_cpu.sh <nginx master pid file> <port> [s_time options, e.g. -cert c.crt -key c.key]
#
# bench/results/tls-handshake.md says how it was used (a scratch platform's nginx and copies
# of its configuration with one thing changed each).
set -euo pipefail
master=$(cat "$1")
port=$2
shift 2
workers=$(pgrep -P "$master")
ticks() {
    local total=0 utime stime
    for pid in $workers; do
        read -r utime stime < <(awk '{print $14, $15}' "/proc/$pid/stat")
        total=$((total + utime + stime))
    done
    echo "$total"
}
before=$(ticks)
line=$(openssl s_time -connect "127.0.0.1:$port" -new -time 8 "$@" 2>&1 | grep "connections in" | head -1)
after=$(ticks)
handshakes=$(echo "$line" | awk '{print $1}')
hz=$(getconf CLK_TCK)
echo "$(echo "$line" | cut -d';' -f1) | nginx CPU $(( (after - before) * 1000 / hz )) ms -> $(( (after - before) * 1000000 / hz / handshakes )) us per handshake"
