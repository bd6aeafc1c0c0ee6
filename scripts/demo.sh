#!/usr/bin/env bash
# A local demo of tollgate-webhook, no cluster needed: harden a pod offline, then serve the webhook over
# HTTPS on 127.0.0.1 and send it an AdmissionReview as kube-apiserver would.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -q -p tollgate-webhook
bin=target/release/tollgate-webhook
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== 1. tollgate-webhook inject -f examples/pod.yaml  (offline, like linkerd inject)"
"$bin" inject -f examples/pod.yaml >"$work/hardened.yaml" 2>"$work/changes.txt"
sed -n '1,400p' "$work/hardened.yaml" | grep -E -A14 '^  initContainers:' | head -15
echo "   ..."
echo "-- what changed ($(wc -l <"$work/changes.txt") changes; first 12):"
head -12 "$work/changes.txt" | sed 's/^/   /'

echo
echo "== 2. a denied pod"
sed 's/restartPolicy: Never/restartPolicy: Never\n  hostNetwork: true/' examples/pod.yaml >"$work/insecure.yaml"
"$bin" inject -f "$work/insecure.yaml" >/dev/null 2>"$work/denied.txt" && exit 1 || echo "   exit $?: $(cat "$work/denied.txt")"

echo
echo "== 3. tollgate-webhook serve on https://127.0.0.1:8443 (self-signed certificate for the demo)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=tollgate-demo \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
"$bin" serve --listen 127.0.0.1:8443 --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --drain-delay 0s 2>"$work/server.log" &
server=$!
for _ in $(seq 50); do curl -sf --cacert "$work/tls.crt" https://127.0.0.1:8443/readyz >/dev/null && break; sleep 0.1; done
curl -sf --cacert "$work/tls.crt" --http2 -H 'content-type: application/json' \
  --data-binary @examples/admission-review.json https://127.0.0.1:8443/mutate >"$work/response.json"
python3 - "$work/response.json" <<'PY'
import base64, json, sys
response = json.load(open(sys.argv[1]))["response"]
ops = json.loads(base64.b64decode(response["patch"]))
print(f"   uid {response['uid']}: allowed={response['allowed']}, {len(ops)} JSONPatch operations, e.g.")
for op in ops[:4]:
    print(f"     {op['op']} {op['path']}")
print("   warnings kubectl would print:")
for warning in response["warnings"][:5]:
    print(f"     Warning: {warning}")
PY
echo "-- the server's log line for that review:"
grep '"review"' "$work/server.log" | sed 's/^/   /'
echo "-- metrics excerpt:"
curl -sf --cacert "$work/tls.crt" https://127.0.0.1:8443/metrics | grep -E '^tollgate_webhook_reviews_total\{outcome="patched"\}' | sed 's/^/   /'
kill -TERM "$server"; wait "$server"
echo "== SIGTERM: drained and stopped"
