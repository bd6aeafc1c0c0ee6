#!/usr/bin/env python3
"""Local stand-ins for the demo: a hub that echoes what it received, and a Keycloak-like token endpoint."""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hub(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"hub saw": {"path": self.path, "authorization": self.headers.get("authorization"),
                                       "cookie": self.headers.get("cookie")}}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass

class Keycloak(BaseHTTPRequestHandler):
    issued = 0
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Keycloak.issued += 1
        body = json.dumps({"access_token": f"demo-token-{Keycloak.issued}", "token_type": "Bearer", "expires_in": 300}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass

servers = [ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hub), ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Keycloak)]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
