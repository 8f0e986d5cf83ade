"""A strict stand-in for a Lambda Function URL in front of `cargo lambda watch`.

`cargo lambda watch`'s own HTTP front refuses a body that is not UTF-8 (it
answers 500 before any event exists), so image uploads cannot reach the
function through it. A real Function URL turns every request into a payload
format 2.0 event, base64-encoding a body that is not text, and invokes the
function. This stand-in does the same through the emulator's Invoke API, with
Lambda's limit: an event past 6,291,456 bytes is refused with 413 before the
function sees it. The function answers buffered (a Function URL with
`InvokeMode: BUFFERED`); its proxy response becomes the HTTP answer.

    FunctionUrl("http://127.0.0.1:9000", "azure-openai-image").start().url
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Lambda's synchronous invocation payload limit (6 MB).
MAX_EVENT_BYTES = 6 * 1024 * 1024
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "application/x-www-form-urlencoded")
DOMAIN = "stand-in.lambda-url.us-east-1.on.aws"


def event_for(method: str, target: str, headers: dict[str, str], body: bytes) -> dict:
    """A Function URL's payload format 2.0 event for one request."""
    parsed = urllib.parse.urlsplit(target)
    content_type = headers.get("content-type", "")
    text = not body or (content_type.startswith(TEXT_TYPES) and _is_utf8(body))
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parsed.path,
        "rawQueryString": parsed.query,
        "headers": {**headers, "host": DOMAIN, "x-forwarded-proto": "https"},
        "queryStringParameters": dict(urllib.parse.parse_qsl(parsed.query)) or None,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "stand-in",
            "domainName": DOMAIN,
            "domainPrefix": "stand-in",
            "http": {"method": method, "path": parsed.path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": headers.get("user-agent", "")},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not text,
        "body": body.decode() if text else base64.b64encode(body).decode(),
    }


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode()
        return True
    except UnicodeDecodeError:
        return False


class FunctionUrl:
    """An HTTP server on 127.0.0.1 that invokes `function` on `lambda_url` (the emulator) per request."""

    def __init__(self, lambda_url: str, function: str):
        self.lambda_url = lambda_url.rstrip("/")
        self.function = function
        self.events: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FunctionUrl":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                event = json.dumps(event_for(self.command, self.path, headers, body)).encode()
                front.events.append({"bytes": len(event), "base64": b'"isBase64Encoded": true' in event})
                if len(event) > MAX_EVENT_BYTES:
                    # What Lambda answers, before any function runs.
                    message = {"Message": f"Request must be smaller than {MAX_EVENT_BYTES} bytes for the InvokeFunction operation"}
                    return self._answer(413, {"Content-Type": "application/json"}, json.dumps(message).encode())
                invoke = urllib.request.Request(
                    f"{front.lambda_url}/2015-03-31/functions/{front.function}/invocations",
                    data=event,
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                try:
                    response = urllib.request.urlopen(invoke, timeout=300)
                except urllib.error.HTTPError as err:
                    # The emulator gives a streamed answer's own status: a 4xx or 5xx is an answer too.
                    if err.headers.get("lambda-runtime-function-response-mode") != "streaming":
                        return self._answer(502, {"Content-Type": "application/json"}, err.read())
                    headers = {k: v for k, v in err.headers.items() if k.lower() not in ("vary", "access-control-allow-credentials", "date", "lambda-runtime-function-response-mode")}
                    return self._answer(err.code, headers, err.read())
                with response:
                    if response.headers.get("lambda-runtime-function-response-mode") == "streaming":
                        return self._relay(response)
                    proxy = json.loads(response.read())
                payload = proxy.get("body") or ""
                data = base64.b64decode(payload) if proxy.get("isBase64Encoded") else payload.encode()
                self._answer(int(proxy.get("statusCode", 200)), proxy.get("headers") or {}, data)

            def _relay(self, response) -> None:
                """A streamed answer: the function's status and headers (the
                emulator turned its prelude into them), then its body as it comes."""
                self.send_response(response.status)
                for name, value in response.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "lambda-runtime-function-response-mode", "vary", "access-control-allow-credentials", "date"):
                        self.send_header(name, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := response.read1(65536):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        return Handler
