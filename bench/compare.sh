#!/usr/bin/env bash
# Tollgate benchmark: one run measures a small-response upstream served
#   1. directly, 2. through an nginx reverse proxy, 3. through HAProxy,
#   4. through Tollgate in route mode, 5. through Squid as a forward proxy,
#   6. through Tollgate as a forward proxy,
# and prints requests/s, p50/p99 and the Tollgate/HAProxy, Tollgate/nginx and
# Tollgate/Squid ratios. See bench/README.md for what is measured and the caveats.
#
# Everything runs on 127.0.0.1 with ports picked by this script, in a temp dir,
# and every process it starts is stopped on exit.
#
# Knobs (environment):
#   DURATION=10      seconds measured per case (an "s"/"m" suffix is accepted)
#   WARMUP=2         seconds of unmeasured load before each case
#   CONNECTIONS=50   wrk connections        THREADS=1   wrk threads
#   PIN=1            pin proxies to PROXY_CPU and wrk to LOADGEN_CPU with taskset
#                    (default: the first and second CPU this process may use, usually 0 and 1)
#   UPSTREAM_CPU=    CPU list for the upstream nginx (default: unpinned)
#   CASES="direct nginx haproxy tollgate-route squid tollgate-forward tollgate-local-limit tollgate-global-limit"
#                    tollgate-local-limit / tollgate-global-limit: route mode with one rate limit that is
#                    never reached, kept in the process vs. shared through Redis (REDIS_URL below);
#                    the report gives global/local throughput (target >= 0.8)
#   REDIS_URL=redis://127.0.0.1:6379   Redis for tollgate-global-limit (skipped when unreachable)
#                    tollgate-intercept / squid-bump: HTTPS through a CONNECT tunnel that the proxy
#                    terminates (Tollgate `tls: intercept` vs. Squid `ssl_bump bump`) to a TLS upstream;
#                    the load generator is `hey` (wrk cannot CONNECT), the same for both
#                    nginx-cache / tollgate-cache: the same route with a response cache (nginx
#                    proxy_cache vs. Tollgate `cache: { ttl: 60s }`); after the warm-up every
#                    request is a cache hit, so this compares serving from memory
#                    nginx-h2 / haproxy-h2 / tollgate-h2: the same route with the client speaking HTTP/2
#                    in cleartext with prior knowledge (h2c); load generator h2load (Debian
#                    `nghttp2-client`, installed only when one of these is requested); upstream HTTP/1.1
#   H2_STREAMS=10    h2load concurrent streams per connection (-m) in the h2 cases
#   TOLLGATE_BIN=    use this binary instead of building target/release/tollgate
#   BUILD=1          run `cargo build --release -p tollgate` when TOLLGATE_BIN is unset
#   KEEP_TMP=0       keep the temp dir (configs, logs, raw wrk output) for inspection
#
# Exit status: 0 all measured cases clean (skipped Tollgate cases included),
# 3 a case saw HTTP errors or socket errors, 4 a non-Tollgate case could not run.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
OUT_DIR="$SCRIPT_DIR/out"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
PIN=${PIN:-1}
PROXY_CPU=${PROXY_CPU:-}
LOADGEN_CPU=${LOADGEN_CPU:-}
UPSTREAM_CPU=${UPSTREAM_CPU:-}
CASES=${CASES:-direct nginx haproxy tollgate-route squid tollgate-forward tollgate-local-limit tollgate-global-limit nginx-cache tollgate-cache squid-bump tollgate-intercept}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
TOLLGATE_BIN=${TOLLGATE_BIN:-}
BUILD=${BUILD:-1}
KEEP_TMP=${KEEP_TMP:-0}
H2_STREAMS=${H2_STREAMS:-10}

# wrk takes "10s"; accept a bare number too.
[[ $DURATION =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
[[ $WARMUP =~ ^[0-9]+$ ]] && WARMUP="${WARMUP}s"

# Proxy environment variables must not leak into curl's pre-flight checks.
unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }
loud() {
    local line='!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
    printf '\n%s\n' "$line" >&2
    printf '!!! %s\n' "$@" >&2
    printf '%s\n\n' "$line" >&2
}

# ---------------------------------------------------------------- install --
# Squid with ssl-bump support: Debian's `squid-openssl` (it replaces `squid`; same command).
squid_has_openssl() { squid -v 2>/dev/null | grep -q -- '--with-openssl'; }
install_deps() {
    local missing=() cmd
    # Debian installs the daemons under /usr/sbin, which may be off PATH for non-root.
    export PATH="$PATH:/usr/sbin:/sbin"
    for cmd in wrk haproxy squid curl python3; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if [[ " $CASES " == *" squid-bump "* || " $CASES " == *" tollgate-intercept "* ]]; then
        command -v hey >/dev/null 2>&1 || missing+=(hey)
        command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    fi
    if [[ " $CASES " == *" nginx-h2 "* || " $CASES " == *" haproxy-h2 "* || " $CASES " == *" tollgate-h2 "* ]]; then
        command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
    fi
    if [[ " $CASES " == *" squid-bump "* ]] && ! squid_has_openssl; then
        # Replaces a plain `squid` package if there is one.
        missing=("${missing[@]/#squid/squid-openssl}")
        [[ " ${missing[*]} " == *" squid-openssl "* ]] || missing+=(squid-openssl)
    fi
    # Debian installs the daemons under /usr/sbin, which may be off PATH for non-root.
    local nginx_missing=0
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || nginx_missing=1
    if (( ${#missing[@]} == 0 && nginx_missing == 0 )); then
        return 0
    fi
    (( EUID == 0 )) || die "missing ${missing[*]} $( ((nginx_missing)) && echo nginx); run as root to install them"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install nginx haproxy squid wrk curl python3 by hand"
    log "installing from Debian packages: ${missing[*]} $( ((nginx_missing)) && echo nginx)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if (( ${#missing[@]} > 0 )); then
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if (( nginx_missing )); then
        # nginx-light is the smallest build; newer Debian releases only ship "nginx".
        apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null
    fi
}

install_deps
export PATH="$PATH:/usr/sbin:/sbin"
for cmd in nginx haproxy squid wrk curl python3; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still not found after install"
done

# --------------------------------------------------------------- pinning --
PROXY_PIN=()
LOADGEN_PIN=()
UPSTREAM_PIN=()
NCPU=$(nproc)
# Default to the first two CPUs this process may use (usually 0 and 1; a cpuset
# may hand out other numbers).
read -r CPU_A CPU_B < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[1] if len(c) > 1 else c[0])')
PROXY_CPU=${PROXY_CPU:-$CPU_A}
LOADGEN_CPU=${LOADGEN_CPU:-$CPU_B}
if [[ $PIN == 1 ]]; then
    if ! command -v taskset >/dev/null 2>&1; then
        log "taskset not found: running unpinned"
        PIN=0
    elif (( NCPU < 2 )); then
        log "only $NCPU CPU: running unpinned"
        PIN=0
    else
        PROXY_PIN=(taskset -c "$PROXY_CPU")
        LOADGEN_PIN=(taskset -c "$LOADGEN_CPU")
        [[ -n $UPSTREAM_CPU ]] && UPSTREAM_PIN=(taskset -c "$UPSTREAM_CPU")
    fi
fi

# Other work on the machine skews the figures; say so rather than hide it. The load
# average lags (a previous run still shows in it), so measure CPU use over one second.
LOAD1=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
BUSY_PCT=$(python3 - <<'PY'
import time
def snap():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait
try:
    t0, i0 = snap(); time.sleep(1); t1, i1 = snap()
    print(round(100 * (1 - (i1 - i0) / max(1, t1 - t0))))
except OSError:
    print(0)
PY
)
if (( BUSY_PCT > 15 )); then
    loud "other processes are using ${BUSY_PCT}% of the CPUs right now (load average $LOAD1):" \
        "the figures below will be noisy. Rerun on an idle machine for numbers to quote."
fi

# ------------------------------------------------------- temp dir, ports --
TMP=$(mktemp -d -t tollgate-bench.XXXXXX)
# Squid drops privileges to its own user, which must be able to reach its files.
chmod 755 "$TMP"
PIDS=()

stop_pid() {
    local pid=$1 _
    if kill -0 "$pid" 2>/dev/null; then
        # Each service runs in its own session (setsid), so the group id is its pid:
        # signalling the group also reaches nginx workers and any helper children.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    # Forget it, so cleanup never signals a pid the kernel may have reused.
    local keep=() p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
}

# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        stop_pid "$pid"
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept temp dir $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fixed high ports below the kernel's ephemeral range, so outgoing connections made
# during the run (wrk, proxies to upstream) cannot take them; each is probed by bind.
read -r UP_PORT NGX_PORT HA_PORT SQ_PORT TG_PORT TG_ADMIN_PORT UP_TLS_PORT SQB_PORT < <(python3 - <<'PY'
import random, socket
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except OSError:
    low = 32768
start = random.randint(20000, max(20001, low - 200))
ports, p = [], start
while len(ports) < 8 and p < low:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
    p += 1
print(" ".join(map(str, ports)))
PY
)
[[ -n ${SQB_PORT:-} ]] || die "could not find 8 free ports"

LAST_PID=
# start_bg NAME CMD...: run CMD in its own session with output to $TMP/NAME.out.
start_bg() {
    local name=$1
    shift
    setsid "$@" >"$TMP/$name.out" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_ready PID URL [PROXY]: poll until URL answers (any HTTP status) or 10s pass.
wait_ready() {
    local pid=$1 url=$2 proxy=${3:-} _
    local args=(-s -o /dev/null --max-time 1)
    if [[ $proxy == --* ]]; then args+=("$proxy" --noproxy '*')
    elif [[ -n $proxy ]]; then args+=(-x "$proxy"); else args+=(--noproxy '*'); fi
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl "${args[@]}" "$url" && return 0
        sleep 0.1
    done
    return 1
}

# check_response URL [PROXY]: one request must give 200 and exactly the upstream body.
CHECK_MSG=
check_response() {
    local url=$1 proxy=${2:-} code
    local args=(-sS --max-time 5 -o "$TMP/check.body" -w '%{http_code}')
    if [[ -n $proxy ]]; then args+=(-x "$proxy"); else args+=(--noproxy '*'); fi
    if ! code=$(curl "${args[@]}" "$url" 2>"$TMP/check.err"); then
        CHECK_MSG="request failed: $(tr '\n' ' ' <"$TMP/check.err")"
        return 1
    fi
    if [[ $code != 200 ]]; then
        CHECK_MSG="HTTP $code, body: $(head -c 300 "$TMP/check.body" | tr '\n' ' ')"
        return 1
    fi
    if ! cmp -s "$TMP/check.body" "$TMP/expected.body"; then
        CHECK_MSG="HTTP 200 but body differs from the upstream's: $(head -c 200 "$TMP/check.body" | tr '\n' ' ')"
        return 1
    fi
    return 0
}

count_lines() { if [[ -f $1 ]]; then wc -l <"$1" | tr -d ' '; else echo 0; fi; }

# ------------------------------------------------------------ wrk scripts --
# done() prints one machine-readable line. Latencies come from wrk's histogram in µs.
# wrk's "status" error counter counts responses with status >= 400; the pre-flight
# check of each case also requires 200 and the exact upstream body.
cat >"$TMP/report.lua" <<'LUA'
function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%d seconds=%.3f rps=%.2f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
    "http_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d bytes=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect, e.read, e.write, e.timeout, summary.bytes))
end
LUA
# Forward-proxy form: wrk connects to the proxy and sends an absolute-form request
# line for the upstream, as an HTTP_PROXY client would.
{
    printf 'wrk.path = "http://127.0.0.1:%s/"\n' "$UP_PORT"
    printf 'wrk.headers["Host"] = "127.0.0.1:%s"\n' "$UP_PORT"
    cat "$TMP/report.lua"
} >"$TMP/forward.lua"

# ------------------------------------------------------------ service configs --
# 100-byte body (99 characters and a newline): a small API-like response.
BODY_CONF=$(printf 'tollgate-bench-%084d' 0)
printf '%s\n' "$BODY_CONF" >"$TMP/expected.body"

nginx_common() { # $1 = name
    cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/$1.pid;
error_log $TMP/$1-error.log warn;
events { worker_connections 4096; }
EOF
}

# TLS for the interception cases: a bench CA, the upstream's certificate for 127.0.0.1 signed
# by it (both proxies verify the upstream against it), and Squid's bump CA. Tollgate's CA is
# made by `tollgate ca init` when its case runs.
make_tls() {
    local d=$TMP/tls
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=tollgate-bench upstream CA" -keyout "$d/ca.key" -out "$d/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || return 1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$d/up.key" -out "$d/up.csr" 2>/dev/null || return 1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/up.ext"
    openssl x509 -req -in "$d/up.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/up.ext" -out "$d/up.pem" 2>/dev/null || return 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=tollgate-bench squid bump CA" -keyout "$d/bump.key" -out "$d/bump.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || return 1
    # Squid drops privileges before it reads its CA key (a throwaway key in a temp dir).
    chmod 755 "$d"
    chmod 644 "$d"/*
}
TLS_CASES=0
[[ " $CASES " == *" squid-bump "* || " $CASES " == *" tollgate-intercept "* ]] && TLS_CASES=1
if (( TLS_CASES )); then
    make_tls || die "could not make the TLS certificates with openssl"
    # The TLS upstream listens on 127.0.0.1:443: hey uses the request's Host (which carries the
    # port when it is not the default) as the TLS server name, and an SNI of "127.0.0.1:<port>"
    # is refused by Tollgate (it does not name the CONNECT host) and confused Squid. On 443 the
    # URL has no port, so hey sends no SNI (an IP address) and `Host: 127.0.0.1`.
    python3 -c 'import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 443)); s.close()' 2>/dev/null \
        || die "the interception cases need 127.0.0.1:443 free (and root) for the TLS upstream"
    UP_TLS_PORT=443
fi

mkdir -p "$TMP/nginx-up-tmp" "$TMP/nginx-rp-tmp"
{
    nginx_common nginx-up
    UP_TLS_SERVER=
    if (( TLS_CASES )); then
        # The same 100-byte answer over TLS, for the interception cases.
        UP_TLS_SERVER="
    server {
        listen 127.0.0.1:$UP_TLS_PORT ssl backlog=4096;
        ssl_certificate $TMP/tls/up.pem;
        ssl_certificate_key $TMP/tls/up.key;
        location / {
            default_type text/plain;
            return 200 \"$BODY_CONF\\n\";
        }
    }"
    fi
    cat <<EOF
http {
    access_log off;
    server_tokens off;
    client_body_temp_path $TMP/nginx-up-tmp;
    proxy_temp_path $TMP/nginx-up-tmp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / {
            default_type text/plain;
            return 200 "$BODY_CONF\n";
        }
    }$UP_TLS_SERVER
}
EOF
} >"$TMP/nginx-up.conf"

{
    nginx_common nginx-rp
    cat <<EOF
http {
    # One line per request, like Tollgate's access log; nginx's default (unbuffered) writes.
    access_log $TMP/nginx-access.log combined;
    server_tokens off;
    client_body_temp_path $TMP/nginx-rp-tmp;
    proxy_temp_path $TMP/nginx-rp-tmp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream bench_up {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT backlog=4096;
        location / {
            proxy_pass http://bench_up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$TMP/nginx-rp.conf"

# The same reverse proxy with proxy_cache: the cache-hit comparison for Tollgate's `cache`.
mkdir -p "$TMP/nginx-cache-tmp" "$TMP/nginx-cache-store"
{
    nginx_common nginx-cache
    cat <<EOF
http {
    access_log $TMP/nginx-cache-access.log combined;
    server_tokens off;
    client_body_temp_path $TMP/nginx-cache-tmp;
    proxy_temp_path $TMP/nginx-cache-tmp;
    proxy_cache_path $TMP/nginx-cache-store levels=1:2 keys_zone=bench:10m max_size=256m inactive=10m use_temp_path=off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream bench_up {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT backlog=4096;
        location / {
            proxy_pass http://bench_up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 60s;
            proxy_cache_lock on;
        }
    }
}
EOF
} >"$TMP/nginx-cache.conf"

# The same reverse proxy with an h2c listener (HTTP/2 with prior knowledge; nginx 1.22 syntax,
# `listen ... http2`); HTTP/1.1 with keep-alive to the upstream, like the other cases.
mkdir -p "$TMP/nginx-h2-tmp"
{
    nginx_common nginx-h2
    cat <<EOF
http {
    access_log $TMP/nginx-h2-access.log combined;
    server_tokens off;
    client_body_temp_path $TMP/nginx-h2-tmp;
    proxy_temp_path $TMP/nginx-h2-tmp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    http2_max_requests 1000000;
    upstream bench_up {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT http2 backlog=4096;
        location / {
            proxy_pass http://bench_up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$TMP/nginx-h2.conf"

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    # One line per request to stdout, which this script sends to a file (see README).
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend bench_fe
    bind 127.0.0.1:$HA_PORT
    default_backend bench_be

backend bench_be
    server up 127.0.0.1:$UP_PORT
EOF
# HAProxy with an h2c frontend (`proto h2`: HTTP/2 with prior knowledge); HTTP/1.1 to the upstream.
sed -e "s|bind 127.0.0.1:$HA_PORT|bind 127.0.0.1:$HA_PORT proto h2|" "$TMP/haproxy.cfg" >"$TMP/haproxy-h2.cfg"

mkdir -p "$TMP/squid"
SQUID_USER_LINE=
if (( EUID == 0 )); then
    # Squid refuses to run as root; Debian's package creates the "proxy" user.
    SQUID_USER=$(id -un proxy 2>/dev/null || echo nobody)
    chown "$SQUID_USER" "$TMP/squid"
    SQUID_USER_LINE="cache_effective_user $SQUID_USER"
fi
cat >"$TMP/squid.conf" <<EOF
http_port 127.0.0.1:$SQ_PORT
visible_hostname tollgate-bench
$SQUID_USER_LINE
acl bench_clients src 127.0.0.1/32
http_access allow bench_clients
http_access deny all
cache deny all
cache_mem 8 MB
access_log stdio:$TMP/squid/access.log squid
cache_log $TMP/squid/cache.log
cache_store_log none
pid_filename $TMP/squid/squid.pid
coredump_dir $TMP/squid
netdb_filename none
pinger_enable off
shutdown_lifetime 0 seconds
max_filedescriptors 8192
workers 1
EOF

# Squid with ssl-bump: terminates the client's TLS inside the CONNECT tunnel with a certificate
# minted from its bump CA, verifies the upstream against the bench CA, and forwards in HTTP/1.1,
# like Tollgate's `tls: intercept`. Same logging and no cache. It bumps at step 1 ("client
# first", the certificate is made from the CONNECT target): with `peek` at step 1 Squid 5.7
# answered every request of hey's (Go) TLS client with 503 while curl worked.
if (( TLS_CASES )); then
    mkdir -p "$TMP/squid-bump"
    cat >"$TMP/squid-bump.conf" <<EOF
http_port 127.0.0.1:$SQB_PORT ssl-bump tls-cert=$TMP/tls/bump.pem tls-key=$TMP/tls/bump.key generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s $TMP/squid-bump/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile=$TMP/tls/ca.pem
visible_hostname tollgate-bench
$SQUID_USER_LINE
acl bench_clients src 127.0.0.1/32
http_access allow bench_clients
http_access deny all
cache deny all
cache_mem 8 MB
access_log stdio:$TMP/squid-bump/access.log squid
cache_log $TMP/squid-bump/cache.log
cache_store_log none
pid_filename $TMP/squid-bump/squid.pid
coredump_dir $TMP/squid-bump
netdb_filename none
pinger_enable off
shutdown_lifetime 0 seconds
max_filedescriptors 8192
workers 1
EOF
fi

# One config (and access log) per Tollgate case, so each case's log lines are its own.
tollgate_config() { # CASE
    if [[ $1 == tollgate-intercept ]]; then
        # CONNECT to the TLS upstream, intercepted: every request inside runs the pipeline and
        # goes upstream over a pooled TLS connection verified against the bench CA.
        cat >"$TMP/$1.yaml" <<EOF
listen: { proxy: 127.0.0.1:$TG_PORT, admin: 127.0.0.1:$TG_ADMIN_PORT }
default_action: deny
network_guard:
  allow: ["127.0.0.1:$UP_TLS_PORT"]
connect: { allowed_ports: [$UP_TLS_PORT] }
upstream: { ca_file: $TMP/tls/ca.pem }
tls_intercept: { ca_cert: $TMP/tg-ca/ca.crt, ca_key: $TMP/tg-ca/ca.key }
logging: { access_log: $TMP/$1-access.log, level: warn }
apis:
  - name: bench
    hosts: ["127.0.0.1"]
    tls: intercept
EOF
        return
    fi
    cat >"$TMP/$1.yaml" <<EOF
listen: { proxy: 127.0.0.1:$TG_PORT, admin: 127.0.0.1:$TG_ADMIN_PORT }
default_action: allow
network_guard:
  allow: ["127.0.0.1:$UP_PORT"]
logging: { access_log: $TMP/$1-access.log, level: warn }
apis:
  - name: bench
    hosts: ["127.0.0.1"]
    route: /bench
    upstream: http://127.0.0.1:$UP_PORT
EOF
    # A limit that is never reached, so every request pays for the decision and none is refused.
    case $1 in
    tollgate-local-limit)
        printf '    limits: [{ name: roomy, requests: 1000000000, per: 1h }]\n' >>"$TMP/$1.yaml"
        ;;
    tollgate-global-limit)
        printf '    limits: [{ name: roomy, requests: 1000000000, per: 1h, scope: global }]\n' >>"$TMP/$1.yaml"
        printf 'state: { redis: { url: "%s", prefix: "tollgate-bench-%s" } }\n' "$REDIS_URL" "$$" >>"$TMP/$1.yaml"
        ;;
    tollgate-cache)
        printf '    cache: { ttl: 60s }\n' >>"$TMP/$1.yaml"
        ;;
    esac
}

# Whether REDIS_URL's host:port accepts connections (the global-limit case needs it).
redis_up() {
    python3 - "$REDIS_URL" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
try:
    socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

# --------------------------------------------------------------- tollgate --
TOLLGATE_REASON=
resolve_tollgate() {
    if [[ -n $TOLLGATE_BIN ]]; then
        [[ -x $TOLLGATE_BIN ]] || { TOLLGATE_REASON="TOLLGATE_BIN=$TOLLGATE_BIN is not an executable"; return 1; }
        return 0
    fi
    TOLLGATE_BIN="$REPO_ROOT/target/release/tollgate"
    if [[ $BUILD == 1 ]]; then
        log "building Tollgate: cargo build --release -p tollgate"
        if ! (cd "$REPO_ROOT" && cargo build --release -p tollgate) >"$TMP/cargo-build.log" 2>&1; then
            tail -n 20 "$TMP/cargo-build.log" >&2 || true
            TOLLGATE_REASON="cargo build --release -p tollgate failed (output above)"
            return 1
        fi
    fi
    [[ -x $TOLLGATE_BIN ]] || { TOLLGATE_REASON="$TOLLGATE_BIN not found (BUILD=$BUILD)"; return 1; }
}

want_tollgate=0
[[ " $CASES " == *" tollgate-"* ]] && want_tollgate=1
TOLLGATE_OK=0
if (( want_tollgate )); then
    if resolve_tollgate; then TOLLGATE_OK=1; else loud "Tollgate cases will be SKIPPED: $TOLLGATE_REASON"; fi
fi

# ---------------------------------------------------------------- running --
RESULTS="$TMP/results.tsv"
: >"$RESULTS"
FAILED_CORE=0

# record CASE STATUS REASON LOG_LINES [BENCH-LINE]
record() {
    local reason=${3//$'\t'/ }
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${reason//$'\n'/ }" "$4" "${5:-}" >>"$RESULTS"
}

# run_wrk CASE URL LUA: warm-up, then the measured run; sets BENCH_LINE.
BENCH_LINE=
run_wrk() {
    local case=$1 url=$2 lua=$3
    local wrk_args=(-t "$THREADS" -c "$CONNECTIONS" -s "$lua")
    ${LOADGEN_PIN[@]+"${LOADGEN_PIN[@]}"} wrk "${wrk_args[@]}" -d "$WARMUP" "$url" >"$TMP/wrk-$case-warmup.txt" 2>&1 || true
    ${LOADGEN_PIN[@]+"${LOADGEN_PIN[@]}"} wrk "${wrk_args[@]}" -d "$DURATION" --latency "$url" >"$TMP/wrk-$case.txt" 2>&1 || true
    BENCH_LINE=$(grep -m1 '^BENCH ' "$TMP/wrk-$case.txt" || true)
    [[ -n $BENCH_LINE ]]
}

# measure CASE URL LUA PID LOGFILE PROXY-FOR-CHECK STOP(0/1) FATAL(0/1)
measure() {
    local case=$1 url=$2 lua=$3 pid=$4 logfile=$5 proxy=$6 stop=$7 fatal=$8 lines
    local check_url=$url
    [[ -n $proxy ]] && check_url="http://127.0.0.1:$UP_PORT/"
    if ! check_response "$check_url" "$proxy"; then
        loud "case $case: pre-flight request failed: $CHECK_MSG" "see $TMP/$case.out (KEEP_TMP=1 keeps it)"
        record "$case" failed "pre-flight: $CHECK_MSG" 0
        (( fatal )) && FAILED_CORE=1
        (( stop )) && stop_pid "$pid"
        return 0
    fi
    log "case $case: warm-up $WARMUP, then $DURATION with $CONNECTIONS connections, $THREADS thread(s)"
    if ! run_wrk "$case" "$url" "$lua"; then
        loud "case $case: wrk gave no result:" "$(tail -n 5 "$TMP/wrk-$case.txt")"
        record "$case" failed "wrk gave no result" 0
        (( fatal )) && FAILED_CORE=1
        (( stop )) && stop_pid "$pid"
        return 0
    fi
    # Stop before counting log lines: Squid flushes its buffered log on shutdown.
    (( stop )) && stop_pid "$pid"
    lines=n/a
    [[ -n $logfile ]] && lines=$(count_lines "$logfile")
    record "$case" ok "" "$lines" "$BENCH_LINE"
    log "case $case: $BENCH_LINE"
}

# run_hey CASE URL PROXY: warm-up, then the measured run with hey (HTTPS through a CONNECT
# proxy, keep-alive, certificates not verified by the client: both proxies mint their own);
# sets BENCH_LINE in the same format as report.lua's.
run_hey() {
    local case=$1 url=$2 proxy=$3 secs=${DURATION%s} wsecs=${WARMUP%s}
    [[ $secs =~ ^[0-9]+m$ ]] && secs=$(( ${secs%m} * 60 ))
    [[ $wsecs =~ ^[0-9]+m$ ]] && wsecs=$(( ${wsecs%m} * 60 ))
    ${LOADGEN_PIN[@]+"${LOADGEN_PIN[@]}"} hey -c "$CONNECTIONS" -z "${wsecs}s" -x "$proxy" "$url" >"$TMP/hey-$case-warmup.txt" 2>&1 || true
    ${LOADGEN_PIN[@]+"${LOADGEN_PIN[@]}"} hey -c "$CONNECTIONS" -z "${secs}s" -x "$proxy" "$url" >"$TMP/wrk-$case.txt" 2>&1 || true
    BENCH_LINE=$(python3 - "$TMP/wrk-$case.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def num(pattern, default=None):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default
total = num(r"Total:\s+([\d.]+) secs")
rps = num(r"Requests/sec:\s+([\d.]+)")
if total is None or rps is None:
    sys.exit(0)
pct = {int(p): float(v) * 1000 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", text)}
codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
errors = 0
if "Error distribution:" in text:
    tail = text.split("Error distribution:", 1)[1]
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", tail, re.M))
ok = codes.get(200, 0)
bad = sum(n for c, n in codes.items() if c >= 400)
slowest = num(r"Slowest:\s+([\d.]+) secs", 0.0) * 1000
print(f"BENCH requests={ok + bad} seconds={total:.3f} rps={rps:.2f} p50_ms={pct.get(50, 0):.3f} "
      f"p90_ms={pct.get(90, 0):.3f} p99_ms={pct.get(99, 0):.3f} max_ms={slowest:.3f} http_errors={bad} "
      f"connect_errors=0 read_errors={errors} write_errors=0 timeouts=0 bytes=0")
PY
)
    [[ -n $BENCH_LINE ]]
}

# check_tls URL PROXY CACERT: one request through the intercepting proxy, trusting its CA
# (CACERT "-": not verified), must give 200 and exactly the upstream body.
check_tls() {
    local url=$1 proxy=$2 ca=$3 code trust=(--cacert "$3")
    [[ $ca == - ]] && trust=(-k)
    if ! code=$(curl -sS --max-time 5 -x "$proxy" "${trust[@]}" -o "$TMP/check.body" -w '%{http_code}' "$url" 2>"$TMP/check.err"); then
        CHECK_MSG="request failed: $(tr '\n' ' ' <"$TMP/check.err")"
        return 1
    fi
    if [[ $code != 200 ]] || ! cmp -s "$TMP/check.body" "$TMP/expected.body"; then
        CHECK_MSG="HTTP $code, body: $(head -c 200 "$TMP/check.body" | tr '\n' ' ')"
        return 1
    fi
}

# measure_tls CASE PROXY CACERT PID LOGFILE FATAL(0/1)
measure_tls() {
    local case=$1 proxy=$2 ca=$3 pid=$4 logfile=$5 fatal=$6 lines
    local url="https://127.0.0.1/"
    if ! check_tls "$url" "$proxy" "$ca"; then
        loud "case $case: pre-flight request failed: $CHECK_MSG" "see $TMP/$case.out (KEEP_TMP=1 keeps it)"
        record "$case" failed "pre-flight: $CHECK_MSG" 0
        (( fatal )) && FAILED_CORE=1
        stop_pid "$pid"
        return 0
    fi
    log "case $case: warm-up $WARMUP, then $DURATION with $CONNECTIONS connections (hey, HTTPS via CONNECT)"
    if ! run_hey "$case" "$url" "$proxy"; then
        loud "case $case: hey gave no result:" "$(tail -n 5 "$TMP/wrk-$case.txt")"
        record "$case" failed "hey gave no result" 0
        (( fatal )) && FAILED_CORE=1
        stop_pid "$pid"
        return 0
    fi
    stop_pid "$pid"
    lines=$(count_lines "$logfile")
    record "$case" ok "" "$lines" "$BENCH_LINE"
    log "case $case: $BENCH_LINE"
}

# run_h2load CASE URL: warm-up, then the measured run with h2load over h2c (prior knowledge),
# CONNECTIONS connections with H2_STREAMS streams each; h2load prints no percentiles, so they
# come from its per-request log (--log-file: start, status, microseconds). Sets BENCH_LINE.
run_h2load() {
    local case=$1 url=$2 secs=${DURATION%s} wsecs=${WARMUP%s}
    [[ $secs =~ ^[0-9]+m$ ]] && secs=$(( ${secs%m} * 60 ))
    [[ $wsecs =~ ^[0-9]+m$ ]] && wsecs=$(( ${wsecs%m} * 60 ))
    local args=(-c "$CONNECTIONS" -m "$H2_STREAMS" -t "$THREADS")
    ${LOADGEN_PIN[@]+"${LOADGEN_PIN[@]}"} h2load "${args[@]}" -D "$wsecs" "$url" >"$TMP/h2load-$case-warmup.txt" 2>&1 || true
    ${LOADGEN_PIN[@]+"${LOADGEN_PIN[@]}"} h2load "${args[@]}" -D "$secs" --log-file="$TMP/h2load-$case.log" "$url" >"$TMP/wrk-$case.txt" 2>&1 || true
    BENCH_LINE=$(python3 - "$TMP/wrk-$case.txt" "$TMP/h2load-$case.log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"finished in ([\d.]+)(us|ms|s),", text)
r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
traffic = re.search(r"traffic: .*?\((\d+)\) total", text)
if not (m and r and codes):
    sys.exit(0)
secs = float(m.group(1)) / {"us": 1e6, "ms": 1e3, "s": 1}[m.group(2)]
lat = []
try:
    for line in open(sys.argv[2]):
        f = line.split()
        if len(f) >= 3:
            lat.append(int(f[2]) / 1000)
except OSError:
    pass
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else 0.0
done, failed, errored, timeout = int(r.group(3)), int(r.group(5)), int(r.group(6)), int(r.group(7))
http_errors = int(codes.group(3)) + int(codes.group(4))
print(f"BENCH requests={done} seconds={secs:.3f} rps={done / secs:.2f} p50_ms={pct(50):.3f} "
      f"p90_ms={pct(90):.3f} p99_ms={pct(99):.3f} max_ms={(lat[-1] if lat else 0.0):.3f} "
      f"http_errors={http_errors} connect_errors=0 read_errors={errored} write_errors={max(0, failed - errored - timeout - http_errors)} "
      f"timeouts={timeout} bytes={traffic.group(1) if traffic else 0}")
PY
)
    [[ -n $BENCH_LINE ]]
}

# measure_h2 CASE URL PID LOGFILE FATAL(0/1): pre-flight with curl over h2c, then h2load.
measure_h2() {
    local case=$1 url=$2 pid=$3 logfile=$4 fatal=$5 code lines
    if ! code=$(curl -sS --max-time 5 --http2-prior-knowledge -o "$TMP/check.body" -w '%{http_code} %{http_version}' "$url" 2>"$TMP/check.err") \
        || [[ $code != "200 2" ]] || ! cmp -s "$TMP/check.body" "$TMP/expected.body"; then
        CHECK_MSG="h2c request: ${code:-failed} $(tr '\n' ' ' <"$TMP/check.err") body: $(head -c 200 "$TMP/check.body" 2>/dev/null | tr '\n' ' ')"
        loud "case $case: pre-flight request failed: $CHECK_MSG" "see $TMP/$case.out (KEEP_TMP=1 keeps it)"
        record "$case" failed "pre-flight: $CHECK_MSG" 0
        (( fatal )) && FAILED_CORE=1
        stop_pid "$pid"
        return 0
    fi
    log "case $case: warm-up $WARMUP, then $DURATION with $CONNECTIONS connections x $H2_STREAMS streams (h2load, h2c)"
    if ! run_h2load "$case" "$url"; then
        loud "case $case: h2load gave no result:" "$(tail -n 5 "$TMP/wrk-$case.txt")"
        record "$case" failed "h2load gave no result" 0
        (( fatal )) && FAILED_CORE=1
        stop_pid "$pid"
        return 0
    fi
    stop_pid "$pid"
    lines=$(count_lines "$logfile")
    record "$case" ok "" "$lines" "$BENCH_LINE"
    log "case $case: $BENCH_LINE"
}

skip_case() { # CASE REASON
    loud "case $1 SKIPPED: $2"
    record "$1" skipped "$2" 0
}

log "ports: upstream=$UP_PORT nginx=$NGX_PORT haproxy=$HA_PORT squid=$SQ_PORT tollgate=$TG_PORT admin=$TG_ADMIN_PORT"
log "pinning: $( [[ $PIN == 1 ]] && echo "proxies on CPU $PROXY_CPU, wrk on CPU $LOADGEN_CPU, upstream ${UPSTREAM_CPU:-unpinned}" || echo off)"

start_bg nginx-up ${UPSTREAM_PIN[@]+"${UPSTREAM_PIN[@]}"} nginx -p "$TMP/" -e "$TMP/nginx-up-error.log" -c "$TMP/nginx-up.conf"
UP_PID=$LAST_PID
wait_ready "$UP_PID" "http://127.0.0.1:$UP_PORT/" || die "upstream nginx did not start: $(tail -n 5 "$TMP/nginx-up.out" "$TMP/nginx-up-error.log" 2>/dev/null)"
check_response "http://127.0.0.1:$UP_PORT/" || die "upstream nginx answers wrongly: $CHECK_MSG"

start_tollgate() { # CASE; sets LAST_PID, returns 1 with TOLLGATE_REASON when not up in 10s
    tollgate_config "$1"
    start_bg "$1" ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} "$TOLLGATE_BIN" run --config "$TMP/$1.yaml"
    if ! wait_ready "$LAST_PID" "http://127.0.0.1:$TG_PORT/bench/"; then
        local st out
        out=$(tail -n 5 "$TMP/$1.out" | tr '\n' ' ')
        if kill -0 "$LAST_PID" 2>/dev/null; then
            TOLLGATE_REASON="did not answer on 127.0.0.1:$TG_PORT within 10s: $out"
        else
            wait "$LAST_PID" && st=0 || st=$?
            TOLLGATE_REASON="exited with status $st before answering: $out"
        fi
        stop_pid "$LAST_PID"
        return 1
    fi
}

for case in $CASES; do
    case $case in
    direct)
        measure direct "http://127.0.0.1:$UP_PORT/" "$TMP/report.lua" "$UP_PID" "" "" 0 1
        ;;
    nginx)
        start_bg nginx-rp ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} nginx -p "$TMP/" -e "$TMP/nginx-rp-error.log" -c "$TMP/nginx-rp.conf"
        if wait_ready "$LAST_PID" "http://127.0.0.1:$NGX_PORT/"; then
            measure nginx "http://127.0.0.1:$NGX_PORT/" "$TMP/report.lua" "$LAST_PID" "$TMP/nginx-access.log" "" 1 1
        else
            skip_case nginx "nginx reverse proxy did not start: $(tail -n 3 "$TMP/nginx-rp.out" | tr '\n' ' ')"
            FAILED_CORE=1
        fi
        ;;
    nginx-cache)
        start_bg nginx-cache ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} nginx -p "$TMP/" -e "$TMP/nginx-cache-error.log" -c "$TMP/nginx-cache.conf"
        if wait_ready "$LAST_PID" "http://127.0.0.1:$NGX_PORT/"; then
            measure nginx-cache "http://127.0.0.1:$NGX_PORT/" "$TMP/report.lua" "$LAST_PID" "$TMP/nginx-cache-access.log" "" 1 1
        else
            skip_case nginx-cache "nginx with proxy_cache did not start: $(tail -n 3 "$TMP/nginx-cache.out" | tr '\n' ' ')"
            FAILED_CORE=1
        fi
        ;;
    haproxy)
        # shellcheck disable=SC2016  # $1/$2 are sh's own arguments
        start_bg haproxy ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} sh -c 'exec haproxy -db -f "$1" 2>"$2"' sh "$TMP/haproxy.cfg" "$TMP/haproxy-stderr.log"
        if wait_ready "$LAST_PID" "http://127.0.0.1:$HA_PORT/"; then
            measure haproxy "http://127.0.0.1:$HA_PORT/" "$TMP/report.lua" "$LAST_PID" "$TMP/haproxy.out" "" 1 1
        else
            skip_case haproxy "HAProxy did not start: $(tail -n 3 "$TMP/haproxy-stderr.log" | tr '\n' ' ')"
            FAILED_CORE=1
        fi
        ;;
    squid)
        start_bg squid ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} squid -N -f "$TMP/squid.conf"
        if wait_ready "$LAST_PID" "http://127.0.0.1:$UP_PORT/" "http://127.0.0.1:$SQ_PORT"; then
            measure squid "http://127.0.0.1:$SQ_PORT/" "$TMP/forward.lua" "$LAST_PID" "$TMP/squid/access.log" "http://127.0.0.1:$SQ_PORT" 1 1
        else
            skip_case squid "Squid did not start: $(tail -n 3 "$TMP/squid.out" "$TMP/squid/cache.log" 2>/dev/null | tr '\n' ' ')"
            FAILED_CORE=1
        fi
        ;;
    nginx-h2)
        start_bg nginx-h2 ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} nginx -p "$TMP/" -e "$TMP/nginx-h2-error.log" -c "$TMP/nginx-h2.conf"
        if wait_ready "$LAST_PID" "http://127.0.0.1:$NGX_PORT/" --http2-prior-knowledge; then
            measure_h2 nginx-h2 "http://127.0.0.1:$NGX_PORT/" "$LAST_PID" "$TMP/nginx-h2-access.log" 1
        else
            skip_case nginx-h2 "nginx (h2c) did not start: $(tail -n 3 "$TMP/nginx-h2.out" "$TMP/nginx-h2-error.log" 2>/dev/null | tr '\n' ' ')"
            FAILED_CORE=1
        fi
        ;;
    haproxy-h2)
        # shellcheck disable=SC2016  # $1/$2 are sh's own arguments
        start_bg haproxy-h2 ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} sh -c 'exec haproxy -db -f "$1" 2>"$2"' sh "$TMP/haproxy-h2.cfg" "$TMP/haproxy-h2-stderr.log"
        if wait_ready "$LAST_PID" "http://127.0.0.1:$HA_PORT/" --http2-prior-knowledge; then
            measure_h2 haproxy-h2 "http://127.0.0.1:$HA_PORT/" "$LAST_PID" "$TMP/haproxy-h2.out" 1
        else
            skip_case haproxy-h2 "HAProxy (h2c) did not start: $(tail -n 3 "$TMP/haproxy-h2-stderr.log" | tr '\n' ' ')"
            FAILED_CORE=1
        fi
        ;;
    tollgate-h2)
        if (( ! TOLLGATE_OK )); then
            skip_case "$case" "$TOLLGATE_REASON"
        elif ! start_tollgate "$case"; then
            skip_case "$case" "Tollgate $TOLLGATE_REASON"
        else
            measure_h2 "$case" "http://127.0.0.1:$TG_PORT/bench/" "$LAST_PID" "$TMP/$case-access.log" 0
        fi
        ;;
    squid-bump)
        if ! squid_has_openssl; then
            skip_case squid-bump "this squid has no ssl-bump support (install squid-openssl)"
            FAILED_CORE=1
            continue
        fi
        rm -rf "$TMP/squid-bump/ssl_db"
        if ! /usr/lib/squid/security_file_certgen -c -s "$TMP/squid-bump/ssl_db" -M 16MB >"$TMP/squid-bump-certgen.out" 2>&1; then
            skip_case squid-bump "security_file_certgen -c failed: $(tail -n 2 "$TMP/squid-bump-certgen.out" | tr '\n' ' ')"
            FAILED_CORE=1
            continue
        fi
        (( EUID == 0 )) && chown -R "$SQUID_USER" "$TMP/squid-bump"
        start_bg squid-bump ${PROXY_PIN[@]+"${PROXY_PIN[@]}"} squid -N -f "$TMP/squid-bump.conf"
        if wait_ready "$LAST_PID" "http://127.0.0.1:$UP_PORT/" "http://127.0.0.1:$SQB_PORT"; then
            # Not verified by curl: Squid's client-first certificate names 127.0.0.1 only in its CN.
            measure_tls squid-bump "http://127.0.0.1:$SQB_PORT" - "$LAST_PID" "$TMP/squid-bump/access.log" 1
        else
            skip_case squid-bump "Squid (ssl-bump) did not start: $(tail -n 3 "$TMP/squid-bump.out" "$TMP/squid-bump/cache.log" 2>/dev/null | tr '\n' ' ')"
            FAILED_CORE=1
        fi
        ;;
    tollgate-intercept)
        if (( ! TOLLGATE_OK )); then
            skip_case "$case" "$TOLLGATE_REASON"
        elif ! "$TOLLGATE_BIN" ca init --dir "$TMP/tg-ca" --force >"$TMP/tg-ca.out" 2>&1; then
            skip_case "$case" "tollgate ca init failed: $(tail -n 2 "$TMP/tg-ca.out" | tr '\n' ' ')"
        elif ! start_tollgate "$case"; then
            skip_case "$case" "Tollgate $TOLLGATE_REASON"
        else
            measure_tls "$case" "http://127.0.0.1:$TG_PORT" "$TMP/tg-ca/ca.crt" "$LAST_PID" "$TMP/$case-access.log" 0
        fi
        ;;
    tollgate-route | tollgate-forward | tollgate-local-limit | tollgate-global-limit | tollgate-cache)
        if (( ! TOLLGATE_OK )); then
            skip_case "$case" "$TOLLGATE_REASON"
        elif [[ $case == tollgate-global-limit ]] && ! redis_up; then
            skip_case "$case" "Redis at $REDIS_URL is not reachable"
        elif ! start_tollgate "$case"; then
            skip_case "$case" "Tollgate $TOLLGATE_REASON"
        elif [[ $case != tollgate-forward ]]; then
            measure "$case" "http://127.0.0.1:$TG_PORT/bench/" "$TMP/report.lua" "$LAST_PID" "$TMP/$case-access.log" "" 1 0
        else
            measure "$case" "http://127.0.0.1:$TG_PORT/" "$TMP/forward.lua" "$LAST_PID" "$TMP/$case-access.log" "http://127.0.0.1:$TG_PORT" 1 0
        fi
        ;;
    *)
        die "unknown case '$case' (known: direct nginx haproxy tollgate-route squid tollgate-forward tollgate-local-limit tollgate-global-limit nginx-cache tollgate-cache squid-bump tollgate-intercept nginx-h2 haproxy-h2 tollgate-h2)"
        ;;
    esac
done

# ------------------------------------------------------------------ report --
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
JSON="$OUT_DIR/results-$STAMP.json"

versions() {
    printf 'nginx\t%s\n' "$(nginx -v 2>&1 | head -n1)"
    printf 'haproxy\t%s\n' "$(haproxy -v 2>&1 | head -n1)"
    printf 'squid\t%s\n' "$(squid -v 2>&1 | head -n1)"
    printf 'wrk\t%s\n' "$(wrk -v 2>&1 | head -n1)"
    if command -v h2load >/dev/null 2>&1; then printf 'h2load\t%s\n' "$(h2load --version 2>&1 | head -n1)"; fi
    if (( TOLLGATE_OK )); then
        printf 'tollgate\t%s\n' "$(timeout 5 "$TOLLGATE_BIN" --version 2>&1 | head -n1 || true)"
    fi
    printf 'git\t%s\n' "$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo none)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
}
versions >"$TMP/versions.tsv"

set +e
python3 - "$RESULTS" "$TMP" "$JSON" "$TMP/versions.tsv" <<PY
import json, sys
results_path, tmp, json_path, versions_path = sys.argv[1:5]
settings = {
    "duration": "$DURATION", "warmup": "$WARMUP", "connections": int("$CONNECTIONS"),
    "threads": int("$THREADS"), "pinning": "$PIN" == "1", "proxy_cpu": "$PROXY_CPU",
    "loadgen_cpu": "$LOADGEN_CPU", "upstream_cpu": "$UPSTREAM_CPU" or None, "cpus": int("$NCPU"),
    "load_average_1m_before": float("$LOAD1"), "cpu_busy_pct_before": int("$BUSY_PCT"),
    "body_bytes": 100, "stamp": "$STAMP",
}
labels = {
    "direct": "direct (no proxy)", "nginx": "nginx reverse proxy", "haproxy": "HAProxy",
    "tollgate-route": "Tollgate route mode", "squid": "Squid forward proxy",
    "tollgate-forward": "Tollgate forward proxy",
    "tollgate-local-limit": "Tollgate local limit", "tollgate-global-limit": "Tollgate global limit",
    "nginx-cache": "nginx proxy_cache (hits)", "tollgate-cache": "Tollgate cache (hits)",
    "squid-bump": "Squid ssl-bump (HTTPS)", "tollgate-intercept": "Tollgate intercept (HTTPS)",
    "nginx-h2": "nginx h2c", "haproxy-h2": "HAProxy h2c", "tollgate-h2": "Tollgate route h2c",
}
cases = []
for line in open(results_path):
    name, status, reason, log_lines, bench = line.rstrip("\n").split("\t")
    c = {"case": name, "label": labels.get(name, name), "status": status}
    if reason:
        c["reason"] = reason
    if status == "ok":
        kv = dict(p.split("=", 1) for p in bench.split()[1:])
        for k, v in kv.items():
            c[k] = float(v) if "." in v else int(v)
        c["socket_errors"] = sum(c[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
        c["access_log_lines"] = int(log_lines) if log_lines.isdigit() else None
        try:
            c["wrk_output"] = open(f"{tmp}/wrk-{name}.txt").read()
        except OSError:
            pass
    cases.append(c)
by = {c["case"]: c for c in cases if c["status"] == "ok"}

def ratio(a, b, key):
    if a in by and b in by and by[b][key]:
        return round(by[a][key] / by[b][key], 3)
    return None

ratios = {
    "tollgate_route_over_haproxy_rps": ratio("tollgate-route", "haproxy", "rps"),
    "tollgate_route_over_nginx_rps": ratio("tollgate-route", "nginx", "rps"),
    "tollgate_forward_over_squid_rps": ratio("tollgate-forward", "squid", "rps"),
    "tollgate_route_over_haproxy_p99": ratio("tollgate-route", "haproxy", "p99_ms"),
    "tollgate_route_over_nginx_p99": ratio("tollgate-route", "nginx", "p99_ms"),
    "tollgate_forward_over_squid_p99": ratio("tollgate-forward", "squid", "p99_ms"),
    "tollgate_global_over_local_limit_rps": ratio("tollgate-global-limit", "tollgate-local-limit", "rps"),
    "tollgate_global_over_local_limit_p99": ratio("tollgate-global-limit", "tollgate-local-limit", "p99_ms"),
    "tollgate_cache_over_nginx_cache_rps": ratio("tollgate-cache", "nginx-cache", "rps"),
    "tollgate_cache_over_nginx_cache_p99": ratio("tollgate-cache", "nginx-cache", "p99_ms"),
    "tollgate_intercept_over_squid_bump_rps": ratio("tollgate-intercept", "squid-bump", "rps"),
    "tollgate_intercept_over_squid_bump_p99": ratio("tollgate-intercept", "squid-bump", "p99_ms"),
    "tollgate_h2_over_haproxy_h2_rps": ratio("tollgate-h2", "haproxy-h2", "rps"),
    "tollgate_h2_over_nginx_h2_rps": ratio("tollgate-h2", "nginx-h2", "rps"),
    "tollgate_h2_over_haproxy_h2_p99": ratio("tollgate-h2", "haproxy-h2", "p99_ms"),
    "tollgate_h2_over_nginx_h2_p99": ratio("tollgate-h2", "nginx-h2", "p99_ms"),
}
targets = {
    "tollgate_route_over_haproxy_rps": ">= 1.0",
    "tollgate_route_over_haproxy_p99": "<= 1.0",
    "tollgate_forward_over_squid_rps": ">= 3.0",
    "tollgate_global_over_local_limit_rps": ">= 0.8",
}

print()
print(f"Tollgate benchmark {settings['stamp']}: {settings['duration']} per case after {settings['warmup']} warm-up, "
      f"{settings['connections']} connections, {settings['threads']} wrk thread(s), "
      + (f"proxies pinned to CPU {settings['proxy_cpu']}, wrk to CPU {settings['loadgen_cpu']}" if settings["pinning"] else "unpinned"))
print()
hdr = f"{'case':<24} {'req/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'http err':>9} {'sock err':>9} {'log lines':>10}"
print(hdr)
print("-" * len(hdr))
noisy = []
for c in cases:
    if c["status"] != "ok":
        print(f"{c['label']:<24} {c['status'].upper():>11}  {c.get('reason', '')[:90]}")
        continue
    ll = c["access_log_lines"]
    print(f"{c['label']:<24} {c['rps']:>11.0f} {c['p50_ms']:>8.3f} {c['p99_ms']:>8.3f} "
          f"{c['http_errors']:>9} {c['socket_errors']:>9} {('-' if ll is None else ll):>10}"
          + ("   <== ERRORS" if c["http_errors"] or c["socket_errors"] else ""))
    if c["http_errors"] or c["socket_errors"]:
        noisy.append(c)
print()

noisy_names = {c["case"] for c in cases if c["status"] == "ok" and (c["http_errors"] or c["socket_errors"])}
ratio_cases = {
    "tollgate_route_over_haproxy": ("tollgate-route", "haproxy"),
    "tollgate_route_over_nginx": ("tollgate-route", "nginx"),
    "tollgate_forward_over_squid": ("tollgate-forward", "squid"),
    "tollgate_global_over_local_limit": ("tollgate-global-limit", "tollgate-local-limit"),
    "tollgate_cache_over_nginx_cache": ("tollgate-cache", "nginx-cache"),
    "tollgate_intercept_over_squid_bump": ("tollgate-intercept", "squid-bump"),
    "tollgate_h2_over_haproxy_h2": ("tollgate-h2", "haproxy-h2"),
    "tollgate_h2_over_nginx_h2": ("tollgate-h2", "nginx-h2"),
}

def show(name, key, target=None, better="higher"):
    v = ratios[key]
    if v is None:
        print(f"  {name:<36} n/a (a case was skipped or failed)")
        return
    line = f"  {name:<36} {v:6.2f}x"
    if target is not None:
        ok = v >= target if better == "higher" else v <= target
        line += f"   target {'>=' if better == 'higher' else '<='} {target:.1f}x: {'met' if ok else 'NOT MET'}"
    pair = ratio_cases[key.rsplit("_", 1)[0]]
    if noisy_names & set(pair):
        line += "   INVALID: a case had errors"
    print(line)

print("Ratios (throughput: higher is better; p99: lower is better)")
show("Tollgate(route) / HAProxy  req/s", "tollgate_route_over_haproxy_rps", 1.0)
show("Tollgate(route) / nginx    req/s", "tollgate_route_over_nginx_rps")
show("Tollgate(forward) / Squid  req/s", "tollgate_forward_over_squid_rps", 3.0)
show("Tollgate(route) / HAProxy  p99", "tollgate_route_over_haproxy_p99", 1.0, "lower")
show("Tollgate(route) / nginx    p99", "tollgate_route_over_nginx_p99")
show("Tollgate(forward) / Squid  p99", "tollgate_forward_over_squid_p99")
show("Global limit / local limit req/s", "tollgate_global_over_local_limit_rps", 0.8)
show("Global limit / local limit p99", "tollgate_global_over_local_limit_p99")
show("Tollgate cache / nginx cache req/s", "tollgate_cache_over_nginx_cache_rps")
show("Tollgate cache / nginx cache p99", "tollgate_cache_over_nginx_cache_p99")
show("Tollgate intercept / Squid bump req/s", "tollgate_intercept_over_squid_bump_rps")
show("Tollgate intercept / Squid bump p99", "tollgate_intercept_over_squid_bump_p99")
show("Tollgate h2c / HAProxy h2c req/s", "tollgate_h2_over_haproxy_h2_rps")
show("Tollgate h2c / nginx h2c req/s", "tollgate_h2_over_nginx_h2_rps")
show("Tollgate h2c / HAProxy h2c p99", "tollgate_h2_over_haproxy_h2_p99")
show("Tollgate h2c / nginx h2c p99", "tollgate_h2_over_nginx_h2_p99")
if "direct" in by:
    print()
    print("Share of the direct (no proxy) throughput")
    for c in cases:
        if c["status"] == "ok" and c["case"] != "direct":
            print(f"  {c['label']:<40} {c['rps'] / by['direct']['rps']:6.2f}")

for c in noisy:
    print()
    print("!" * 72)
    print(f"!!! {c['label']}: {c['http_errors']} HTTP error responses (status >= 400) and "
          f"{c['socket_errors']} socket errors (connect {c['connect_errors']}, read {c['read_errors']}, "
          f"write {c['write_errors']}, timeout {c['timeouts']}).")
    print("!!! Its throughput is NOT comparable: answering errors fast is not a win.")
    print("!" * 72)

versions = dict(l.rstrip("\n").split("\t", 1) for l in open(versions_path) if "\t" in l)
with open(json_path, "w") as f:
    json.dump({"settings": settings, "versions": versions, "cases": cases,
               "ratios": ratios, "targets": targets,
               "cases_with_errors": sorted(noisy_names)}, f, indent=2)
print()
print(f"JSON: {json_path}")
sys.exit(3 if noisy else 0)
PY
rc=$?
set -e

if (( rc != 0 && rc != 3 )); then
    die "report generation failed (exit $rc)"
fi
if (( FAILED_CORE )); then
    loud "a non-Tollgate case could not run; see the table above"
    exit 4
fi
exit "$rc"
