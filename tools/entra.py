"""Strict stand-ins for the two identity services no real peer runs for here:
Microsoft Entra ID's v2.0 token endpoint, and AWS STS's GetWebIdentityToken
(IAM outbound identity federation; moto has no such action).

TokenEndpoint: `POST /{tenant}/oauth2/v2.0/token`, a form body with the
client-credentials grant and either `client_secret` or a JWT-bearer
`client_assertion`, answered as Entra answers: `{"token_type": "Bearer",
"expires_in": …, "access_token": …}`, or an AADSTS error body.

Sts: the AWS Query protocol (`Action=GetWebIdentityToken&Version=2011-06-15`,
`Audience.member.1=…`) over a SigV4-signed POST, answered with STS's XML, or
its error XML. Both count their calls and record what they were sent.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class _Server:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.violations: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> int:
        with self.lock:
            return len(self.requests)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.violations.clear()

    def _violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                server.answer(self, self.path, {k.lower(): v for k, v in self.headers.items()}, form)

        return Handler


class TokenEndpoint(_Server):
    """Entra ID's token endpoint for one tenant and its apps.

    `apps` maps a client id to how it proves itself: `{"secret": …}` or
    `{"assertion": …}`, and its `mode`: "ok", "down" (503) or "refuse"
    (401 invalid_client, AADSTS7000215). Tokens are `token`, each lives
    `expires_in` seconds.
    """

    def __init__(self, tenant: str, apps: dict[str, dict]):
        self.tenant = tenant
        self.apps = apps
        self.token = "entra-token-A"
        self.expires_in = 3599
        super().__init__()

    def calls_for(self, client_id: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["form"].get("client_id") == client_id)

    def answer(self, handler, path: str, headers: dict, form: dict) -> None:
        with self.lock:
            shown = {k: ("<redacted>" if k in ("client_secret", "client_assertion") else v) for k, v in form.items()}
            self.requests.append({"path": path, "form": shown})
        if path != f"/{self.tenant}/oauth2/v2.0/token":
            self._violation(f"token request to {path}")
            return handler.send(404, b"{}", "application/json")
        if not (headers.get("content-type") or "").startswith("application/x-www-form-urlencoded"):
            self._violation(f"content-type {headers.get('content-type')}")
        app = self.apps.get(form.get("client_id", ""), {})
        mode = app.get("mode", "ok")
        if mode == "down":
            return handler.send(503, json.dumps({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred."}).encode(), "application/json")
        problems = []
        if form.get("grant_type") != "client_credentials":
            problems.append(f"grant_type {form.get('grant_type')!r}")
        if not app:
            problems.append(f"unknown client {form.get('client_id')!r}")
        if not form.get("scope", "").endswith("/.default"):
            problems.append(f"scope {form.get('scope')!r}")
        if "secret" in app and form.get("client_secret") != app["secret"]:
            problems.append("client_secret")
        if "assertion" in app and (form.get("client_assertion_type") != ASSERTION_TYPE or form.get("client_assertion") != app["assertion"]):
            problems.append("client_assertion")
        if problems and mode == "ok":
            self._violation(f"token request: {problems}")
        if problems or mode == "refuse":
            body = {
                "error": "invalid_client",
                "error_description": f"AADSTS7000215: Invalid client secret provided. Secret: {form.get('client_secret', '')}",
                "error_codes": [7000215],
                "trace_id": "00000000-0000-0000-0000-000000000000",
            }
            return handler.send(401, json.dumps(body).encode(), "application/json")
        body = {"token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in, "access_token": self.token}
        handler.send(200, json.dumps(body).encode(), "application/json")


class Sts(_Server):
    """STS's GetWebIdentityToken. `mode`: "ok" or "refuse" (AccessDenied, federation not enabled)."""

    TOKEN = "eyJraWQiOiJzdGFuZC1pbiJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUifQ.sig"

    def __init__(self):
        self.mode = "ok"
        super().__init__()

    def answer(self, handler, path: str, headers: dict, form: dict) -> None:
        with self.lock:
            self.requests.append({"path": path, "form": form})
        if not (headers.get("authorization") or "").startswith("AWS4-HMAC-SHA256 "):
            self._violation("an unsigned STS request")
        if form.get("Action") != "GetWebIdentityToken" or form.get("Version") != "2011-06-15":
            self._violation(f"STS action {form.get('Action')} {form.get('Version')}")
            return handler.send(400, b"<ErrorResponse/>", "text/xml")
        if self.mode == "refuse":
            body = (
                '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                "<Code>AccessDenied</Code><Message>Outbound web identity federation is not enabled for this account.</Message>"
                "</Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
            )
            return handler.send(403, body.encode(), "text/xml")
        body = (
            '<GetWebIdentityTokenResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetWebIdentityTokenResult>'
            f"<WebIdentityToken>{self.TOKEN}</WebIdentityToken><Expiration>2099-01-01T00:00:00Z</Expiration>"
            "</GetWebIdentityTokenResult><ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000001</RequestId>"
            "</ResponseMetadata></GetWebIdentityTokenResponse>"
        )
        handler.send(200, body.encode(), "text/xml")
