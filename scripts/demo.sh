#!/usr/bin/env bash
# A local demo of tollgate-webhook, no cluster needed: harden a pod offline, then serve the webhook over
# HTTPS on 127.0.0.1 and send it an AdmissionReview as kube-apiserver would.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -q -p tollgate-webhook -p tollgate-proxy
bin=target/release/tollgate-webhook
work=$(mktemp -d)
trap 'kill "${server:-}" "${proxy:-}" "${upstreams:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

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

echo
echo "== 4. tollgate-proxy: the analysis pod's way out (a local stand-in hub and token endpoint)"
python3 scripts/demo-upstreams.py 18090 18091 &
upstreams=$!
printf 'analysis-7\n' >"$work/client-id"; printf 'demo-secret\n' >"$work/client-secret"
cat >"$work/proxy.yaml" <<YAML
listen: { egress: 127.0.0.1:15001, ingress: 127.0.0.1:15006, admin: 127.0.0.1:15021 }
identity:
  tokenUrl: http://127.0.0.1:18091/realms/flame/protocol/openid-connect/token
  clientIdFile: $work/client-id
  clientSecretFile: $work/client-secret
routes:
  - name: hub-datastore
    prefix: /hub-adapter/kong/datastore/{project_id}
    upstream: http://127.0.0.1:18090/kong/datastore/{project_id}
    auth: token
shutdown: { grace: 1s }
YAML
TOLLGATE_PROJECT_ID=7d1e4a2c target/release/tollgate-proxy --config "$work/proxy.yaml" 2>"$work/proxy.log" &
proxy=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:15021/readyz >/dev/null && break; sleep 0.1; done
echo "-- the app asks (with a cookie and its own Authorization, which must not pass):"
echo "   curl -H 'authorization: Bearer the-apps-own' -H 'cookie: s=1' \$TOLLGATE_EGRESS_URL/hub-adapter/kong/datastore/7d1e4a2c/fhir/Patient"
echo "   -> $(curl -s -H 'authorization: Bearer the-apps-own' -H 'cookie: s=1' http://127.0.0.1:15001/hub-adapter/kong/datastore/7d1e4a2c/fhir/Patient)"
echo "-- another project's data, and a traversal attempt:"
echo "   -> $(curl -s http://127.0.0.1:15001/hub-adapter/kong/datastore/other-project/fhir/Patient)"
echo "   -> $(curl -s --path-as-is 'http://127.0.0.1:15001/hub-adapter/kong/datastore/7d1e4a2c/../other-project/x')"
echo "-- the audit line of the first request:"
grep '"message":"request"' "$work/proxy.log" | head -1 | sed 's/^/   /'
kill -TERM "$proxy"; wait "$proxy" || true
