#!/usr/bin/env python3
"""A FLAME analysis as the Python SDK runs one (PrivateAIM/python-sdk 0.6.x, flamesdk), in the standard library only.

It reads its configuration as flamesdk's NodeConfig does (env ANALYSIS_ID, PROJECT_ID, KEYCLOAK_TOKEN,
DATA_SOURCE_TOKEN, DEPLOYMENT_NAME; every URL is http://nginx-<DEPLOYMENT_NAME>/...), makes the SDK's calls in
the SDK's order with the SDK's headers (httpx's defaults, the clients' headers, each call's own; ../shared/flame/
FACTS.md section 2, E01..E19), serves what the SDK's FastAPI app serves on 0.0.0.0:8000 (POST /webhook,
/token_refresh, /partner_status; GET /healthz with token_remaining_time read from KEYCLOAK_TOKEN's exp with
base64.b64decode, as the SDK does), and reports what it did and saw as JSON lines on stdout:

  {"event": "call", "id": "E07", "method": ..., "path": ..., "status": ...}     every call through the sidecar
  {"event": "inbound", "method": ..., "path": ..., "authorization": ...}        every call into the app
  {"event": "attack", "name": ..., "status"/"error": ..., "refused": ...}       what the app must not be able to do
  {"event": "done", ...}                                                       the summary, once finished

The script is the analysis of tests/tests/node_flame.rs: it plays an aggregator that also reads data
(FlameCoreSDK(aggregator_requires_data=True)), exchanges messages with the one partner node the broker stand-in
simulates, computes for --compute-seconds (longer than the test realm's token lifetime) and submits a final
result. The attack checks use the test's fixtures (ATTACK_* below).
"""

import argparse
import base64
import gzip
import http.client
import io
import json
import os
import pickle
import re
import socket
import sys
import threading
import time
import urllib.parse
import uuid
import zlib
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTTPX_DEFAULTS = [
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Connection", "keep-alive"),
    ("User-Agent", "python-httpx/0.28.1"),
]

# The test's fixtures for the attack checks (tests/tests/node_flame.rs sets them up in the stand-ins).
ATTACK_OTHER_PROJECT = "other-project"
ATTACK_OTHER_SOURCE = "other-source"          # a Kong data store of the other project
ATTACK_STOLEN_KEY = "key-of-other-project"    # a valid Kong key, of the other project's consumer
ATTACK_OTHER_ANALYSIS = "other-analysis"
ATTACK_OTHER_OBJECT = "other-object"          # a local object of the other analysis in storage
ATTACK_FORGED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJjbGllbnRfaWQiOiJvdGhlci1hbmFseXNpcyJ9.forged"


def emit(event, **fields):
    fields["event"] = event
    fields["time"] = round(time.time(), 3)
    sys.stdout.write(json.dumps(fields, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class NodeConfig:
    """flamesdk/resources/node_config.py"""

    def __init__(self):
        self.finished = False
        self.analysis_id = os.getenv('ANALYSIS_ID')
        self.project_id = os.getenv('PROJECT_ID')
        self.keycloak_token = os.getenv('KEYCLOAK_TOKEN')
        self.data_source_token = os.getenv('DATA_SOURCE_TOKEN')
        self.nginx_name = f'nginx-{os.getenv("DEPLOYMENT_NAME")}'
        self.node_role = None
        self.node_id = None


def merge(*header_lists):
    """httpx's header merging: later names replace earlier ones (case-insensitively), in place."""
    merged = []
    for headers in header_lists:
        for name, value in headers:
            for i, (existing, _) in enumerate(merged):
                if existing.lower() == name.lower():
                    merged[i] = (name, value)
                    break
            else:
                merged.append((name, value))
    return merged


def quote_path(path):
    """httpx percent-encodes a path's spaces and non-ASCII characters as UTF-8, keeping its delimiters."""
    return urllib.parse.quote(path, safe="/!$&'()*+,;=:@%~")


def multipart(data, files):
    """httpx's multipart/form-data: the data fields, then the files."""
    boundary = os.urandom(16).hex()
    out = io.BytesIO()
    for name, value in data.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(str(value).encode() + b"\r\n")
    for name, (filename, content) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  f'Content-Type: application/octet-stream\r\n\r\n'.encode())
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class Response:
    def __init__(self, status, headers, content):
        self.status_code = status
        self.headers = headers
        self.content = content

    @property
    def text(self):
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.content)

    def ok(self):
        return 200 <= self.status_code < 300


class Client:
    """An httpx client's behaviour on the wire: base URL, client headers, httpx's defaults, redirects followed."""

    def __init__(self, host, base_path, headers=()):
        self.host = host
        self.base_path = base_path
        self.headers = list(headers)

    def request(self, call_id, method, url, headers=(), json_body=None, data=None, files=None, timeout=60):
        path, _, query = url.partition("?")
        target = quote_path(self.base_path + path) + (("?" + query) if query else "")
        body = None
        extra = []
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            extra = [("Content-Length", str(len(body))), ("Content-Type", "application/json")]
        elif files is not None:
            body, content_type = multipart(data or {}, files)
            extra = [("Content-Length", str(len(body))), ("Content-Type", content_type)]
        sent = merge([("Host", self.host)], HTTPX_DEFAULTS, self.headers, extra, headers)
        for _ in range(20):
            response = self._send(method, target, sent, body, timeout)
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                location = urllib.parse.urlsplit(response.headers["location"])
                target = location.path + (("?" + location.query) if location.query else "")
                if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                    method, body = "GET", None
                    sent = [(n, v) for n, v in sent if n.lower() not in ("content-length", "content-type")]
                continue
            break
        emit("call", id=call_id, method=method, path=urllib.parse.unquote(target), target=target, status=response.status_code,
             request_headers=sorted({n.lower() for n, _ in sent}))
        return response

    def _send(self, method, target, headers, body, timeout):
        connection = http.client.HTTPConnection(self.host, 80, timeout=timeout)
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders(body)
            answer = connection.getresponse()
            content = answer.read()
            encoding = (answer.getheader("content-encoding") or "").lower()
            if encoding == "gzip":
                content = gzip.decompress(content)
            elif encoding == "deflate":
                content = zlib.decompress(content)
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, content)
        finally:
            connection.close()


class Analysis:
    def __init__(self, compute_seconds):
        self.compute_seconds = compute_seconds
        self.config = NodeConfig()
        self.runstatus = "starting"
        self.progress = 0
        self.finished = False
        self.log_queue = []
        self.po = None
        self.incoming = []
        self.known_ids = set()
        self.message_number = 0
        self.lock = threading.Lock()
        self.inbound = []
        self.failures = []
        self.attacks = []

    # ---- logging (FlameLogger: every line streamed to the PO once it is attached) ----

    def log(self, msg, log_type="info"):
        emit("log", log=msg, log_type=log_type)
        self.log_queue.append({"log": msg, "log_type": log_type, "status": self.runstatus, "progress": self.progress})
        if self.po is not None:
            while self.log_queue:
                entry = self.log_queue.pop(0)
                body = {"log": entry["log"], "log_type": entry["log_type"], "analysis_id": self.config.analysis_id,
                        "status": entry["status"], "progress": entry["progress"]}
                response = self.po.request("E06", "POST", "/stream_logs", headers=[("Content-Type", "application/json")], json_body=body)
                self.expect(response, "E06 stream_logs")

    def expect(self, response, what):
        if not response.ok():
            self.failures.append(f"{what}: {response.status_code} {response.text[:200]}")
            emit("failure", what=what, status=response.status_code, body=response.text[:500])

    def bearer(self):
        return [("Authorization", f"Bearer {self.config.keycloak_token}")]

    # ---- FlameCoreSDK.__init__ ----

    def wait_until_nginx_online(self):
        """E01: retried without a pause on an HTTP error (as the SDK does), a second after a transport error."""
        client = Client(self.config.nginx_name, "")
        attempts = 0
        while True:
            attempts += 1
            if attempts > 5000:
                emit("failure", what="E01 never answered 2xx; giving up (the SDK would loop forever)")
                sys.exit(3)
            try:
                response = client.request("E01", "GET", "/healthz", timeout=60)
            except (OSError, http.client.HTTPException) as e:
                emit("transport_error", id="E01", error=repr(e))
                time.sleep(1)
                continue
            if response.ok():
                return attempts
            emit("warning", id="E01", status=response.status_code, body=response.text[:200])

    def connect_message_broker(self):
        c = self.config
        self.broker = Client(c.nginx_name, "/message-broker", self.bearer() + [("Accept", "application/json")])
        response = self.broker.request("E02", "POST", f"/analyses/{os.getenv('ANALYSIS_ID')}/messages/subscriptions",
                                       json_body={"webhookUrl": f"http://{c.nginx_name}/analysis/webhook"})
        self.expect(response, "E02 subscribe")
        response = self.broker.request("E03", "GET", f"/analyses/{os.getenv('ANALYSIS_ID')}/participants/self",
                                       headers=[("Connection", "close")])
        self.expect(response, "E03 participants/self")
        response = self.broker.request("E04", "GET", f"/analyses/{c.analysis_id}/participants/self", headers=[("Connection", "close")])
        self.expect(response, "E04 get_self_config")
        info = response.json()
        c.node_role, c.node_id = info["nodeType"], info["nodeId"]
        response = self.broker.request("E05", "GET", f"/analyses/{c.analysis_id}/participants", headers=[("Connection", "close")])
        self.expect(response, "E05 participants")
        self.participants = [p for p in response.json() if p["nodeId"] != c.node_id]

    def refresh_clients(self):
        c = self.config
        self.broker = Client(c.nginx_name, "/message-broker", self.bearer() + [("Accept", "application/json")])
        self.po = Client(c.nginx_name, "/po", self.bearer() + [("accept", "application/json")])
        self.storage = Client(c.nginx_name, "/storage", self.bearer())
        self.hub = Client(c.nginx_name, "/hub-adapter", self.bearer() + [("accept", "application/json")])

    def start(self):
        self.log("Starting FlameCoreSDK")
        self.log("\tExtracting node config")
        attempts = self.wait_until_nginx_online()
        emit("nginx_online", attempts=attempts)
        self.connect_message_broker()
        self.log("\tConnecting to MessageBroker...success")
        self.po = Client(self.config.nginx_name, "/po", self.bearer() + [("accept", "application/json")])
        self.log("\tConnecting to PO service...success")
        self.storage = Client(self.config.nginx_name, "/storage", self.bearer())
        self.log("\tConnecting to ResultService...success")
        # aggregator_requires_data=True: the data API even for the aggregator.
        self.data = Client(self.config.nginx_name, "/kong", [("apikey", self.config.data_source_token),
                                                            ("Content-Type", "application/json")])
        self.hub = Client(self.config.nginx_name, "/hub-adapter", self.bearer() + [("accept", "application/json")])
        response = self.hub.request("E07", "GET", f"/kong/datastore/{self.config.project_id}")
        self.expect(response, "E07 datastore")
        self.sources = response.json()["data"]
        self.log("\tConnecting to DataApi...success")
        server = ThreadingHTTPServer(("0.0.0.0", 8000), make_handler(self))
        threading.Thread(target=server.serve_forever, name="flame-api").start()
        self.log("\tStarting FlameApi thread...success")
        self.runstatus = "executing"
        self.log("FlameCoreSDK ready")

    # ---- messages (MessageBrokerClient) ----

    def send_message(self, recipients, category, message, akn=None):
        c = self.config
        if akn is None:
            body = dict(message)
            body["meta"] = {"type": "outgoing", "category": category, "id": f"{c.node_id[:4]}-{self.message_number}-{str(uuid.uuid4())[-4:]}",
                            "akn_id": None, "status": "unread", "sender": c.node_id, "created_at": str(datetime.now()),
                            "arrived_at": None, "number": self.message_number}
        else:
            body = akn
        self.message_number += 1
        response = self.broker.request("E19", "POST", f"/analyses/{os.getenv('ANALYSIS_ID')}/messages",
                                       json_body={"recipients": recipients, "message": body},
                                       headers=[("Connection", "close"), ("Content-Type", "application/json")])
        self.expect(response, f"E19 send_message {category}")
        return body

    def receive_message(self, body):
        """MessageBrokerClient.receive_message: acknowledge what needs it."""
        needs_ack = body["meta"]["akn_id"] is None
        body["meta"]["type"] = "incoming"
        if needs_ack:
            body["meta"]["akn_id"] = self.config.node_id
            body["meta"]["arrived_at"] = str(datetime.now())
        with self.lock:
            if body["meta"]["id"] not in self.known_ids:
                self.known_ids.add(body["meta"]["id"])
            self.incoming.append(body)
        if needs_ack:
            self.send_message([body["meta"]["sender"]], body["meta"]["category"], None, akn=body)

    def await_incoming(self, predicate, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            with self.lock:
                for message in self.incoming:
                    if predicate(message):
                        return message
            time.sleep(0.5)
        return None

    # ---- the analysis ----

    def get_data(self):
        datasets = []
        for source in self.sources:
            name = source["name"]
            response = self.data.request("E08", "GET", f"/{name}/fhir/Patient?_summary=count", headers=[("Connection", "close")])
            self.expect(response, "E08 fhir")
            response = self.data.request("E09", "GET", f"/{name}/s3", headers=[("Connection", "close")])
            self.expect(response, "E09 s3 listing")
            keys = re.findall(r'<Key>(.*?)</Key>', str(response.text))
            emit("s3_keys", keys=keys)
            for key in keys:
                response = self.data.request("E10", "GET", f"/{name}/s3/{key}", headers=[("Connection", "close")])
                self.expect(response, f"E10 s3 object {key}")
                datasets.append((key, response.content))
        return datasets

    def push_result(self, call_id, result, type_, tag=None, remote_node_id=None, local_dp=None, output_type="pickle"):
        if local_dp is not None or (type_ == "final" and output_type == "str"):
            file_body = str(result).encode("utf-8")
        else:
            file_body = pickle.dumps(result)
        data = {"remote_node_id": remote_node_id} if remote_node_id is not None else ({"tag": tag} if tag else {})
        path = f"/{'intermediate' if type_ == 'global' else type_}"
        if local_dp is not None:
            path += "/localdp"
            data.update({k: str(v) for k, v in local_dp.items()})
        ext = ".txt" if (local_dp is not None or output_type == "str") else ".pkl"
        filename = f"result_{str(uuid.uuid4())[-4:]}_{datetime.now().strftime('%y%m%d%H%M%S')}{ext}"
        response = self.storage.request(call_id, "PUT", path, files={"file": (filename, file_body)}, data=data,
                                        headers=[("Connection", "close")])
        self.expect(response, f"{call_id} push_result {path}")
        return response

    def attack(self, name, client, method, path, headers=(), refused_if=lambda r: r.status_code == 403):
        try:
            response = client.request("attack", method, path, headers=list(headers))
            refused = refused_if(response)
            self.attacks.append({"name": name, "status": response.status_code, "refused": refused})
            emit("attack", name=name, status=response.status_code, refused=refused, body=response.text[:300])
        except (OSError, http.client.HTTPException) as e:
            self.attacks.append({"name": name, "error": repr(e), "refused": True})
            emit("attack", name=name, error=repr(e), refused=True)

    def attacks_run(self):
        c = self.config
        # Kong with a key of the app's own (another project's valid key): the proxy puts the analysis' key in its
        # place, so Kong's ACL refuses the other project's data store.
        stolen = Client(c.nginx_name, "/kong", [("apikey", ATTACK_STOLEN_KEY), ("Content-Type", "application/json")])
        self.attack("kong-other-project-with-own-key", stolen, "GET", f"/{ATTACK_OTHER_SOURCE}/fhir/Patient?_summary=count",
                    refused_if=lambda r: r.status_code in (401, 403))
        self.attack("kong-own-source-with-own-key", stolen, "GET", f"/{self.sources[0]['name']}/fhir/Patient",
                    refused_if=lambda r: True)  # answered, but Kong must have seen the analysis' key, not this one
        forged = Client(c.nginx_name, "/storage", [("Authorization", f"Bearer {ATTACK_FORGED_TOKEN}")])
        self.attack("storage-other-analysis-object-with-own-token", forged, "GET", f"/local/{ATTACK_OTHER_OBJECT}",
                    refused_if=lambda r: r.status_code in (401, 403, 404))
        self.attack("storage-delete-local", self.storage, "DELETE", "/local", refused_if=lambda r: r.status_code in (403, 405))
        self.attack("hub-other-project", self.hub, "GET", f"/kong/datastore/{ATTACK_OTHER_PROJECT}")
        self.attack("broker-other-analysis-participants", self.broker, "GET", f"/analyses/{ATTACK_OTHER_ANALYSIS}/participants")
        self.attack("broker-other-analysis-messages", self.broker, "GET", f"/analyses/{ATTACK_OTHER_ANALYSIS}/messages")
        root = Client(c.nginx_name, "")
        self.attack("keycloak-through-the-sidecar", root, "POST", "/realms/flame/protocol/openid-connect/token")
        self.attack("own-ingress-through-the-sidecar", root, "GET", "/analysis/healthz")
        # Past the sidecar: by name (DNS) and by the cluster DNS's address.
        for name, target in (("direct-kong", ("flame-kong-proxy", 80)), ("direct-storage", ("flame-node-storage-service", 8080)),
                             ("direct-dns-server", ("10.96.0.10", 53))):
            try:
                with socket.create_connection(target, timeout=3):
                    pass
                self.attacks.append({"name": name, "refused": False})
                emit("attack", name=name, refused=False, error=None)
            except OSError as e:
                self.attacks.append({"name": name, "error": repr(e), "refused": True})
                emit("attack", name=name, error=repr(e), refused=True)

    def run(self):
        c = self.config
        started = time.time()
        self.start()
        partner_ids = [p["nodeId"] for p in self.participants]
        data = self.get_data()
        self.progress = 20
        self.log(f"read {len(data)} objects from {len(self.sources)} data source(s)")
        # Local intermediate results under a tag, read back as the SDK does (E11..E14).
        self.push_result("E11", {"round": 1, "objects": len(data)}, "local", tag="round-1")
        response = self.storage.request("E12", "GET", "/local/tags")
        self.expect(response, "E12 local tags")
        tags = [t["name"] for t in response.json()["tags"]]
        response = self.storage.request("E13", "GET", "/local/tags/round-1")
        self.expect(response, "E13 tag urls")
        urls = ["/local/" + item["url"].split("/local/")[1] for item in response.json()["results"]]
        for url in urls:
            response = self.storage.request("E14", "GET", url, timeout=60)
            self.expect(response, "E14 local object")
            emit("read_back", url=url, value=repr(pickle.loads(response.content)))
        # A global intermediate result for the partner (E15), read back (E16).
        response = self.push_result("E15", {"round": 1, "sum": 79}, "global", remote_node_id=partner_ids[0])
        intermediate_id = response.json()["url"].split("/")[-1]
        response = self.storage.request("E16", "GET", f"/intermediate/{intermediate_id}?remote_node_id={c.node_id}", timeout=60)
        self.expect(response, "E16 intermediate")
        # A message to the partner: acknowledged, and answered with a message the webhook acknowledges.
        sent = self.send_message(partner_ids, "intermediate_ready", {"url": intermediate_id})
        ack = self.await_incoming(lambda m: m["meta"]["id"] == sent["meta"]["id"] and m["meta"]["akn_id"] in partner_ids, 60)
        reply = self.await_incoming(lambda m: m["meta"]["category"] == "partner_result", 60)
        emit("messages", acknowledged=ack is not None, partner_reply=reply is not None)
        if ack is None or reply is None:
            self.failures.append("messages: no acknowledgement or no partner reply through /webhook")
        self.progress = 50
        # Computing, for longer than the realm's token lifetime: the calls after it need the proxy's next token.
        computed_until = time.time() + self.compute_seconds
        while time.time() < computed_until:
            time.sleep(min(5, max(0, computed_until - time.time())))
            self.log(f"computing ({int(time.time() - started)} s)")
        self.progress = 80
        self.attacks_run()
        self.push_result("E11", {"round": 2}, "local", tag="round-2")
        response = self.hub.request("E07", "GET", f"/kong/datastore/{c.project_id}")
        self.expect(response, "E07 datastore again")
        self.push_result("E17", "mean age 39.5", "final", output_type="str")
        self.push_result("E18", 39.5, "final", local_dp={"epsilon": 1.0, "sensitivity": 0.5})
        self.progress = 100
        # analysis_finished to every participant, then this node is done.
        self.send_message(partner_ids, "analysis_finished", {})
        self.finished = True
        self.runstatus = "executed"
        self.log("analysis finished")
        emit("done", seconds=round(time.time() - started, 1), failures=self.failures, attacks=self.attacks, tags=tags,
             inbound=self.inbound_summary(), token_is_placeholder=self.token_is_placeholder())

    def inbound_summary(self):
        with self.lock:
            return [{"method": i["method"], "path": i["path"]} for i in self.inbound]

    def token_is_placeholder(self):
        try:
            payload = self.config.keycloak_token.split(".")[1]
            payload += "=" * (-len(payload) % 4)
            return "placeholder" in base64.b64decode(payload).decode("utf-8", errors="replace")
        except Exception:
            return False

    # ---- the FastAPI app's endpoints ----

    def healthz(self):
        return {"status": self._finished(), "token_remaining_time": extract_remaining_time_from_token(self.config.keycloak_token)}

    def _finished(self):
        main_alive = threading.main_thread().is_alive()
        if self.runstatus == "stopped":
            return "stopped"
        if not main_alive and not self.finished:
            return "failed"
        if self.runstatus == "failed":
            return "failed"
        if self.runstatus == "executed" or self.finished:
            return "executed"
        return "executing"


def extract_remaining_time_from_token(token):
    """flamesdk/resources/utils/utils.py, to the letter: standard base64, not base64url."""
    try:
        token = token.split(".")[1]
        missing_padding = len(token) % 4
        if missing_padding != 0:
            token += "=" * (4 - missing_padding)
        payload = json.loads(base64.b64decode(token).decode("utf-8"))
        exp_time = payload.get("exp")
        if exp_time is None:
            return 0
        remaining = exp_time - int(time.time())
        return remaining if remaining > 0 else 0
    except Exception as e:
        emit("token_error", error=repr(e))
        return 0


def make_handler(analysis):
    class Handler(BaseHTTPRequestHandler):
        server_version = "uvicorn"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, value):
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def body(self):
            length = int(self.headers.get("content-length") or 0)
            return json.loads(self.rfile.read(length) or b"null")

        def record(self, extra=None):
            entry = {"method": self.command, "path": self.path, "authorization": self.headers.get("authorization"),
                     "headers": sorted({k.lower() for k in self.headers.keys()}), "peer": self.client_address[0]}
            entry.update(extra or {})
            with analysis.lock:
                analysis.inbound.append(entry)
            emit("inbound", **entry)

        def do_GET(self):
            if self.path == "/healthz":
                answer = analysis.healthz()
                self.record({"answer": answer})
                self.reply(200, answer)
            elif self.path in ("/webhook", "/token_refresh", "/partner_status"):
                self.record()
                self.reply(405, {"detail": "Method Not Allowed"})
            else:
                self.record()
                self.reply(404, {"detail": "Not Found"})

        def do_POST(self):
            try:
                body = self.body()
            except ValueError:
                self.record()
                self.reply(422, {"detail": "body is not JSON"})
                return
            if self.path == "/webhook":
                self.record({"category": (body or {}).get("meta", {}).get("category"), "akn_id": (body or {}).get("meta", {}).get("akn_id")})
                analysis.receive_message(body)
                if body["meta"]["category"] == "analysis_finished":
                    analysis.finished = True
                self.reply(200, None)
            elif self.path == "/token_refresh":
                token = (body or {}).get("token")
                self.record({"token_received": bool(token)})
                if not token:
                    self.reply(400, {"detail": "Token is required"})
                    return
                analysis.config.keycloak_token = token
                analysis.refresh_clients()
                self.reply(200, {"message": "Token refreshed successfully"})
            elif self.path == "/partner_status":
                self.record()
                self.reply(200, {"status": analysis.runstatus})
            elif self.path == "/healthz":
                self.record()
                self.reply(405, {"detail": "Method Not Allowed"})
            else:
                self.record()
                self.reply(404, {"detail": "Not Found"})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compute-seconds", type=int, default=45)
    args = parser.parse_args()
    analysis = Analysis(args.compute_seconds)
    try:
        analysis.run()
    except Exception as e:  # the SDK logs and carries on; here the test wants to see it
        analysis.failures.append(repr(e))
        analysis.runstatus = "failed"
        emit("done", failures=analysis.failures, attacks=analysis.attacks, inbound=analysis.inbound_summary(), crashed=repr(e))
        raise


if __name__ == "__main__":
    main()
