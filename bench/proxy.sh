#!/usr/bin/env bash
# tollgate-proxy side by side with what it replaces and what it is built on, on one route as the FLAME
# sidecar has it (a prefix, stripped; a constant Authorization header; keep-alive to the upstream; one
# access/audit line per request, to a file):
#   - nginx, one worker (the FLAME node's per-analysis nginx), and haproxy, one thread;
#   - bare pingora (bench/src/bin/bare_pingora.rs): the same route with none of tollgate's checks;
#   - tollgate-proxy with `auth: bearerFile` and with `auth: token` (a local token endpoint).
# All in front of one upstream (nginx answering 200 with a short body), each loaded in turn by wrk (one
# thread, 32 connections), in rounds: PROXY_BENCH_ROUNDS (3) rounds of PROXY_BENCH_SECONDS (5 s) each, every
# server once per round, so that a change in the machine's speed during the run falls on all of them alike
# (requests per second: the mean of the rounds; p99: their median). Then resident memory: idle, after the
# load, and with 256 connections open. Prints bench/run.sh table rows on stdout; takes about 2 minutes after
# the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq >&2
  # No service starts: these are run by hand below.
  $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${need[@]}" >&2
fi
work=$(mktemp -d)
chmod 755 "$work"
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
# Bare pingora twice: on mimalloc, as tollgate-proxy runs (the like-for-like floor), and on glibc's allocator,
# as pingora ships, to see the allocator's share.
cargo build --release --locked -q -p tollgate-bench --features mimalloc >&2
cp "$bin/bare-pingora" "$work/bare-pingora-mimalloc"
cargo build --release --locked -q -p tollgate-proxy -p tollgate-bench >&2
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

UP=16080 NGINX=16001 HAPROXY=16002 BARE=16003 TG=16004 TG_TOKEN=16005 BARE_MI=16008 IDP=16090 HUB=16091
TOKEN=bench-token-0123456789abcdef

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench/proxy.sh: nothing listens on $1" >&2
  return 1
}
start() { # name command...: run in the background, output to $work/name.log
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
status_kib() { # field pids...: that /proc/PID/status field (in KiB) of the processes together
  local field=$1 total=0 pid
  shift
  for pid in "$@"; do total=$((total + $(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status"))); done
  echo "$total"
}
rss_kib() { status_kib VmRSS "$@"; }
# The anonymous part of the resident set: the processes' own memory. The rest is pages of their binary and
# libraries, which the page cache shares between every process (every sidecar on a node) that maps them.
anon_kib() { status_kib RssAnon "$@"; }
nginx_pids() { # name: the master and its workers
  local master
  master=$(cat "$work/$1.pid")
  echo "$master" $(pgrep -P "$master")
}

nginx_conf() { # name body: an nginx that runs in the foreground with everything under $work
  cat >"$work/$1.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
user nobody nogroup;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $work/$1-body;
  proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fastcgi;
  uwsgi_temp_path $work/$1-uwsgi;
  scgi_temp_path $work/$1-scgi;
  $2
}
EOF
}

# The upstream everyone forwards to.
nginx_conf upstream "access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 'upstream says hi'; } }"
start upstream nginx -c "$work/upstream.conf"

# nginx as the FLAME sidecar: one worker, prefix stripped, the header set, keep-alive upstream, access log.
: >"$work/nginx-access.log"
chmod 666 "$work/nginx-access.log"
nginx_conf sidecar "access_log $work/nginx-access.log; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 32; }
  server { listen 127.0.0.1:$NGINX;
    location /storage/ { proxy_pass http://up/; proxy_http_version 1.1; proxy_set_header Connection '';
      proxy_set_header Authorization 'Bearer $TOKEN'; } }"
start nginx nginx -c "$work/sidecar.conf"

cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  log stdout format raw daemon
defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend sidecar
  bind 127.0.0.1:$HAPROXY
  http-request deny deny_status 404 unless { path_beg /storage/ }
  default_backend up
backend up
  http-request replace-path ^/storage(/.*) \1
  http-request set-header Authorization "Bearer $TOKEN"
  server up 127.0.0.1:$UP
EOF
start haproxy haproxy -db -f "$work/haproxy.cfg"

start bare "$bin/bare-pingora" "127.0.0.1:$BARE" "127.0.0.1:$UP" /storage "$TOKEN"
start bare-mimalloc "$work/bare-pingora-mimalloc" "127.0.0.1:$BARE_MI" "127.0.0.1:$UP" /storage "$TOKEN"
bare_mi_pid=${pids[-1]}

# tollgate-proxy: the same route with a bearer file, and (a second proxy) with a token it fetches itself.
echo "$TOKEN" >"$work/bearer"
echo bench-client >"$work/client-id"
echo bench-secret >"$work/client-secret"
start idp python3 scripts/demo-upstreams.py "$HUB" "$IDP"
cat >"$work/tollgate.yaml" <<EOF
listen: { egress: '127.0.0.1:$TG', admin: '127.0.0.1:16021', ingress: '127.0.0.1:16006' }
routes:
- { name: storage, prefix: /storage, upstream: 'http://127.0.0.1:$UP', auth: bearerFile, bearerFile: '$work/bearer' }
EOF
cat >"$work/tollgate-token.yaml" <<EOF
listen: { egress: '127.0.0.1:$TG_TOKEN', admin: '127.0.0.1:16022', ingress: '127.0.0.1:16007' }
identity: { tokenUrl: 'http://127.0.0.1:$IDP/token', clientIdFile: '$work/client-id', clientSecretFile: '$work/client-secret' }
routes:
- { name: storage, prefix: /storage, upstream: 'http://127.0.0.1:$UP', auth: token }
EOF
start tollgate "$bin/tollgate-proxy" --config "$work/tollgate.yaml"
tollgate_pid=${pids[-1]}
start tollgate-token "$bin/tollgate-proxy" --config "$work/tollgate-token.yaml"

for port in $UP $NGINX $HAPROXY $BARE $BARE_MI $TG $TG_TOKEN; do wait_port "$port"; done
for port in $NGINX $HAPROXY $BARE $BARE_MI $TG $TG_TOKEN; do
  for _ in $(seq 100); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/storage/result") || true
    [ "$status" = 200 ] && break
    sleep 0.05
  done
  [ "$status" = 200 ] || { echo "bench/proxy.sh: :$port/storage/result answers $status" >&2; exit 1; }
done
sleep 0.5
tollgate_idle=$(rss_kib "$tollgate_pid")
tollgate_idle_anon=$(anon_kib "$tollgate_pid")
nginx_idle=$(rss_kib $(nginx_pids sidecar))
nginx_idle_anon=$(anon_kib $(nginx_pids sidecar))

# wrk's Requests/sec and its 99th percentile latency in ms.
load() { # port
  local out
  out=$(wrk -t1 -c32 -d"${PROXY_BENCH_SECONDS:-5}s" --latency "http://127.0.0.1:$1/storage/result")
  echo "$out" >&2
  if grep -q "Non-2xx" <<<"$out"; then echo "bench/proxy.sh: non-2xx answers from :$1" >&2; exit 1; fi
  awk '/Requests\/sec/ {rps = $2}
       $1 == "99%" { v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v);
                     ms = (unit == "us") ? v / 1000 : (unit == "s") ? v * 1000 : v }
       END { printf "%.0f %.2f\n", rps, ms }' <<<"$out"
}
names=(nginx haproxy bare bare-mimalloc tollgate tollgate-token)
declare -A port_of=([nginx]=$NGINX [haproxy]=$HAPROXY [bare]=$BARE [bare-mimalloc]=$BARE_MI [tollgate]=$TG [tollgate-token]=$TG_TOKEN)
declare -A rounds_rps rounds_p99 rps p99
for round in $(seq "${PROXY_BENCH_ROUNDS:-3}"); do
  for name in "${names[@]}"; do
    echo "-- $name, round $round" >&2
    read -r r p < <(load "${port_of[$name]}")
    rounds_rps[$name]+="$r "
    rounds_p99[$name]+="$p "
  done
done
for name in "${names[@]}"; do
  # shellcheck disable=SC2086 # the rounds' values, one word each
  read -r rps[$name] p99[$name] < <(python3 -c 'import statistics, sys
n = len(sys.argv) // 2
r, p = [float(v) for v in sys.argv[1:n + 1]], [float(v) for v in sys.argv[n + 1:]]
print(f"{statistics.mean(r):.0f} {statistics.median(p):.2f}")' ${rounds_rps[$name]} ${rounds_p99[$name]})
  echo "$name: rounds ${rounds_rps[$name]}/s -> ${rps[$name]}/s; p99 ${rounds_p99[$name]}ms -> ${p99[$name]} ms" >&2
done
tollgate_loaded=$(rss_kib "$tollgate_pid")
tollgate_loaded_anon=$(anon_kib "$tollgate_pid")
nginx_loaded=$(rss_kib $(nginx_pids sidecar))

# 256 connections open at once, each having made one request and kept alive.
python3 - "$TG" "$NGINX" "$BARE_MI" >"$work/held.log" 2>&1 <<'EOF' &
import socket, sys, time
held = []
for port in sys.argv[1:]:
    for _ in range(256):
        s = socket.create_connection(("127.0.0.1", int(port)))
        s.sendall(b"GET /storage/result HTTP/1.1\r\nhost: x\r\n\r\n")
        s.recv(4096)
        held.append(s)
print("held", flush=True)
time.sleep(30)
EOF
holder=$!
pids+=("$holder")
for _ in $(seq 200); do grep -q held "$work/held.log" && break; sleep 0.05; done
tollgate_256=$(rss_kib "$tollgate_pid")
tollgate_256_anon=$(anon_kib "$tollgate_pid")
nginx_256=$(rss_kib $(nginx_pids sidecar))
nginx_256_anon=$(anon_kib $(nginx_pids sidecar))
bare_256=$(rss_kib "$bare_mi_pid")
bare_256_anon=$(anon_kib "$bare_mi_pid")
kill "$holder"

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}×')" "$1" "$2"; }
mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1024:.1f} MiB')" "$1"; }
row() { printf 'ROW\tproxy\t%s\t%s\t%s\t%s\t%s\n' "$@"; }
row "rps, one thread, prefix route + bearer header (wrk, 32 connections)" "${rps[tollgate]}/s" \
  "nginx ${rps[nginx]}/s, haproxy ${rps[haproxy]}/s" "$(ratio "${rps[tollgate]}" "${rps[nginx]}") nginx" "≥ 1.0× nginx (1.2×)"
row "p99 at saturation" "${p99[tollgate]} ms" "nginx ${p99[nginx]} ms" "$(ratio "${p99[tollgate]}" "${p99[nginx]}")" "≤ 1.0× nginx"
row "bare pingora, same route and allocator (mimalloc) (rps)" "—" "${rps[bare-mimalloc]}/s" \
  "tollgate = $(ratio "${rps[tollgate]}" "${rps[bare-mimalloc]}") bare" "tollgate ≥ 0.9× bare"
row "bare pingora as shipped (glibc's allocator) (rps)" "—" "${rps[bare]}/s (nginx ${rps[nginx]}/s)" \
  "bare = $(ratio "${rps[bare]}" "${rps[nginx]}") nginx; on mimalloc $(ratio "${rps[bare-mimalloc]}" "${rps[bare]}")" "the allocator's share"
row "\`auth: token\` vs \`bearerFile\` (rps)" "${rps[tollgate-token]}/s" "bearerFile ${rps[tollgate]}/s" \
  "$(ratio "${rps[tollgate-token]}" "${rps[tollgate]}")" "≈ 1.0×"
row "RSS idle / after load (of it anonymous)" "$(mib "$tollgate_idle") / $(mib "$tollgate_loaded") ($(mib "$tollgate_idle_anon") / $(mib "$tollgate_loaded_anon"))" \
  "nginx $(mib "$nginx_idle") / $(mib "$nginx_loaded") (master + worker; $(mib "$nginx_idle_anon") anonymous idle)" "" "≤ 10 MiB idle"
row "RSS with 256 open connections (of it anonymous)" "$(mib "$tollgate_256") ($(mib "$tollgate_256_anon"))" "nginx $(mib "$nginx_256") ($(mib "$nginx_256_anon")); bare pingora $(mib "$bare_256") ($(mib "$bare_256_anon"))" "" "≤ 32 MiB"
