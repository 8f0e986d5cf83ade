"""A strict stand-in for Azure OpenAI image deployments.

It answers `POST /openai/deployments/{deployment}/images/generations` and
`…/images/edits` the way Azure does (shapes from the 2024-10-21 and
2025-04-01-preview inference specs and their examples), with real, decodable
PNGs. Edits take multipart/form-data only, as Azure's edits route does.

Strict: every upstream request is checked against what the connector must
send (path, api-version, api-key, content type, body fields for the model).
A wrong request is recorded as a violation and answered with an error, so a
test fails both on the answer and on `violations`.

Prompts can ask for a fault, the way tests need them:
  [content-filter]  400 content_policy_violation with inner_error (dall-e-3 shape)
  [moderation]      400 moderation_blocked (gpt-image shape)
  [rate-limit]      429 with retry-after
  [server-error]    500 server_error
  [flaky]           503 with retry-after-ms: 50 the first time a prompt is seen, then success
  [large]           incompressible images (a 1536x1024 PNG is about 6 MB as base64)
  [break-stream]    a stream that fails after its first partial image

A gpt-image deployment streams (`stream: true`: partial images, then one
completed event per image) unless its entry says "streams": false; then it
refuses `stream` with a 400, as a dated api-version does.

A deployment whose entry sets "images_per_minute": N has Azure's quota: N
images per rolling minute. Past it, Azure's 429 (its body, `retry-after`,
`retry-after-ms`, `x-ratelimit-remaining-requests: 0`) until the oldest image
of the window is a minute old; within it, every answer carries
`x-ratelimit-remaining-requests` (images left in the window).
  [not-json]        200 with a body that is not JSON

Run alone: python fake_azure.py --port 8081 --deployments '{"img":{"model":"gpt-image-1","api_version":"2025-04-01-preview"}}' --key KEY
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import struct
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GPT_IMAGE = {"gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"}
SIZES = {
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "gpt-image": {"1024x1024", "1536x1024", "1024x1536", "auto"},
}
CONNECTOR_ONLY = {"fallbacks"}

_png_cache: dict[tuple[int, int, int], bytes] = {}


def png(width: int, height: int, shade: int = 0, noise: bool = False) -> bytes:
    """A real PNG of the given size: RGB, one filter byte a row; a colour per
    shade, or random pixels that do not compress."""
    cache_key = (width, height, shade % 8, noise)
    if cache_key not in _png_cache:
        if noise:
            rng = random.Random(shade)
            raw = b"".join(b"\x00" + rng.randbytes(3 * width) for _ in range(height))
        else:
            colour = bytes([(40 * shade) % 256, 120, (255 - 30 * shade) % 256])
            raw = (b"\x00" + colour * width) * height

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        _png_cache[cache_key] = (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
        )
    return _png_cache[cache_key]


def filter_results() -> dict:
    safe = {"filtered": False, "severity": "safe"}
    return {"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe}


class FakeAzure:
    """The server, its expectations and what it saw. Thread-safe."""

    def __init__(self, deployments: dict[str, dict], keys: list[str], host: str = "127.0.0.1", port: int = 0):
        self.deployments = deployments
        self.keys = list(keys)
        # Entra ID access tokens accepted as `Authorization: Bearer`.
        self.tokens: list[str] = []
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.violations: list[str] = []
        self.images: dict[str, bytes] = {}
        self.delay = 0.0
        self.seen_prompts: set[str] = set()
        # Per deployment with a quota: when each image of the last minute was made.
        self.windows: dict[str, list[float]] = {}
        # Per deployment: images made, and requests refused with 429 for the quota.
        self.served: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def base_url(self, deployment: str) -> str:
        return f"{self.url}/openai/deployments/{deployment}"

    def start(self) -> "FakeAzure":
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.violations.clear()

    def reset_quotas(self) -> None:
        with self.lock:
            self.windows.clear()
            self.served.clear()
            self.throttled.clear()

    def take_quota(self, name: str, deployment: dict, images: int) -> tuple[bool, dict]:
        """Takes `images` of the deployment's quota: whether it had room, and
        the rate-limit headers of the answer."""
        limit = deployment.get("images_per_minute")
        if limit is None:
            with self.lock:
                self.served[name] = self.served.get(name, 0) + images
            return True, {}
        now = time.monotonic()
        with self.lock:
            window = [t for t in self.windows.get(name, []) if now - t < 60]
            if len(window) + images > limit:
                self.windows[name] = window
                self.throttled[name] = self.throttled.get(name, 0) + 1
                # Room for `images` once enough of the oldest are a minute old.
                frees = window[len(window) + images - limit - 1] + 60 if images <= limit else now + 60
                wait = max(frees - now, 0.001)
                return False, {
                    "retry-after": str(int(wait) + 1),
                    "retry-after-ms": str(int(wait * 1000) + 1),
                    "x-ratelimit-remaining-requests": "0",
                }
            window.extend([now] * images)
            self.windows[name] = window
            self.served[name] = self.served.get(name, 0) + images
            return True, {"x-ratelimit-remaining-requests": str(limit - len(window))}

    def set_keys(self, keys: list[str]) -> None:
        with self.lock:
            self.keys = list(keys)

    def set_tokens(self, tokens: list[str]) -> None:
        with self.lock:
            self.tokens = list(tokens)

    def _violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes: without this, Nagle holds the body ~40 ms.
            disable_nagle_algorithm = True
            # The rate-limit headers of the request being answered (reassigned, never mutated).
            quota_headers: dict = {}

            def log_message(self, *args):  # quiet: tests read `requests`
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("apim-request-id", "fake-apim-0001")
                for k, v in {**self.quota_headers, **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, error: dict, headers=None):
                self._send(status, json.dumps({"error": error}).encode(), headers=headers)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _event(self, payload: dict) -> None:
                self._chunk(f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode())

            def do_GET(self):
                if self.path.startswith("/_fake/images/"):
                    image = fake.images.get(self.path.rsplit("/", 1)[-1])
                    if image is None:
                        return self._send(404, b"{}")
                    return self._send(200, image, content_type="image/png")
                fake._violation(f"unexpected GET {self.path}")
                self._send(404, b"{}")

            def do_POST(self):
                # One handler serves every request of a kept-alive connection.
                self.quota_headers = {}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                bearer = self.headers.get("Authorization") or ""
                record = {
                    "path": parsed.path,
                    "query": query,
                    "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() not in ("api-key", "authorization")},
                    "api_key_ok": self.headers.get("api-key") in fake.keys,
                    "bearer": bearer.startswith("Bearer "),
                    "bearer_ok": bearer.startswith("Bearer ") and bearer[len("Bearer "):] in fake.tokens,
                    "body": None,
                }
                with fake.lock:
                    fake.requests.append(record)
                parts = parsed.path.split("/")
                v1 = parts[:3] == ["", "openai", "v1"] and len(parts) == 5 and parts[3] == "images"
                operation = parts[4] if v1 else (parts[5] if len(parts) == 6 else None)
                edit = operation == "edits"
                if v1:
                    # The v1 surface names the deployment in the body's `model`.
                    try:
                        named = json.loads(raw).get("model") if not edit else None
                    except ValueError:
                        named = None
                    deployment = fake.deployments.get(named or "")
                    if deployment is None or deployment.get("surface") != "v1":
                        fake._violation(f"v1 request for unknown deployment {named!r}")
                        return self._error(404, {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."})
                    expected_version = [deployment["api_version"]] if deployment.get("api_version") else None
                    if query.get("api-version") != expected_version:
                        fake._violation(f"v1 api-version {query.get('api-version')} != {expected_version}")
                else:
                    if len(parts) != 6 or parts[:3] != ["", "openai", "deployments"] or operation not in ("generations", "edits"):
                        fake._violation(f"unexpected path {parsed.path}")
                        return self._error(404, {"code": "404", "message": "Resource not found"})
                    deployment = fake.deployments.get(parts[3])
                    if deployment is None:
                        return self._error(404, {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."})
                    if query.get("api-version") != [deployment["api_version"]]:
                        fake._violation(f"api-version {query.get('api-version')} != {deployment['api_version']}")
                        return self._error(404, {"code": "404", "message": "Resource not found"})
                if deployment.get("auth") == "entra":
                    # disableLocalAuth: only Entra ID tokens.
                    if self.headers.get("api-key") is not None:
                        fake._violation("an api-key reached an Entra-only resource")
                    if not record["bearer_ok"]:
                        return self._error(401, {"code": "401", "message": "Access denied due to invalid token or wrong API endpoint."})
                else:
                    if record["bearer"]:
                        fake._violation("an Authorization header reached Azure")
                    if not record["api_key_ok"]:
                        return self._error(401, {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."})
                deployment = {**deployment, "name": named if v1 else parts[3]}
                if v1:
                    deployment = {**deployment, "model_in_body": named}
                if edit:
                    return self._edit(raw, deployment)
                if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                    fake._violation(f"content-type {self.headers.get('Content-Type')}")
                try:
                    body = json.loads(raw)
                except ValueError:
                    fake._violation("body is not JSON")
                    return self._error(400, {"code": "invalidPayload", "message": "not JSON"})
                record["body"] = {k: (v if k != "prompt" else f"<{len(v)} chars>") for k, v in body.items()}
                problem = check_body(body, deployment["model"], deployment.get("model_in_body"))
                if problem:
                    fake._violation(problem)
                    return self._error(400, {"code": "invalid_value", "message": problem, "type": "invalid_request_error", "param": None})
                if fake.delay:
                    time.sleep(fake.delay)
                if body.get("stream") and not deployment.get("streams", True):
                    return self._error(400, {"code": "invalid_value", "param": "stream", "type": "invalid_request_error", "message": "Unrecognized request argument supplied: stream"})
                room, self.quota_headers = fake.take_quota(deployment["name"], deployment, body.get("n", 1))
                if not room:
                    return self._throttled("ImageGenerations_Create", query)
                if body.get("stream"):
                    return self._stream(body)
                return self._answer(body, deployment["model"])

            def _throttled(self, operation: str, query: dict):
                """Azure's 429 for a deployment past its quota."""
                version = (query.get("api-version") or ["v1"])[0]
                seconds = self.quota_headers["retry-after"]
                return self._error(429, {
                    "code": "429",
                    "message": f"Requests to the {operation} Operation under Azure OpenAI API version {version} have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
                }, headers=self.quota_headers)

            def _edit(self, raw: bytes, deployment: dict):
                """Azure's edits route: multipart only; every part checked."""
                content_type = self.headers.get("Content-Type") or ""
                if not content_type.startswith("multipart/form-data"):
                    fake._violation(f"an edit sent as {content_type!r}, not multipart/form-data")
                    return self._error(400, {"code": "invalidPayload", "message": "multipart/form-data expected"})
                if deployment["model"] not in GPT_IMAGE:
                    fake._violation(f"an edit sent to {deployment['model']}, which has no edits on Azure")
                    return self._error(404, {"code": "OperationNotSupported", "message": "The images edits operation does not work with the specified model."})
                fields, files, problem = read_form(content_type, raw)
                if problem is None:
                    problem = check_edit(fields, files, deployment["model"])
                record = fake.requests[-1]
                record["body"] = {k: (v if k != "prompt" else f"<{len(v)} chars>") for k, v in fields.items()}
                record["files"] = [(name, filename, ctype, len(data)) for name, filename, ctype, data in files]
                if problem:
                    fake._violation(problem)
                    return self._error(400, {"code": "invalid_value", "message": problem, "type": "invalid_request_error", "param": None})
                first = next(data for name, _, _, data in files if name in ("image", "image[]"))
                if b"[not-an-image]" in first:
                    return self._error(400, {"code": "invalid_image_format", "message": "Invalid image file.", "param": "image", "type": "invalid_request_error"})
                body = {**fields, "n": int(fields.get("n", "1"))}
                if "partial_images" in fields:
                    body["partial_images"] = int(fields["partial_images"])
                if fields.get("stream") == "true" and not deployment.get("streams", True):
                    return self._error(400, {"code": "invalid_value", "param": "stream", "type": "invalid_request_error", "message": "Unrecognized request argument supplied: stream"})
                room, self.quota_headers = fake.take_quota(deployment["name"], deployment, body["n"])
                if not room:
                    return self._throttled("ImageEdits_Create", urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))
                if fields.get("stream") == "true":
                    return self._stream(body, "image_edit")
                return self._answer(body, deployment["model"])

            def _stream(self, body: dict, kind: str = "image_generation"):
                prompt, n = body["prompt"], body.get("n", 1)
                size = body.get("size", "1024x1024")
                size = "1024x1024" if size == "auto" else size
                width, height = (int(x) for x in size.split("x"))
                common = {"created_at": int(time.time()), "size": size, "quality": "high", "background": "opaque", "output_format": "png"}
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("apim-request-id", "fake-apim-0001")
                for k, v in self.quota_headers.items():
                    self.send_header(k, v)
                self.end_headers()
                for i in range(n):
                    for p in range(body.get("partial_images", 0)):
                        small = base64.b64encode(png(64, 64, p)).decode()
                        self._event({"type": f"{kind}.partial_image", "b64_json": small, "partial_image_index": p, **common})
                        time.sleep(0.05)
                        if "[break-stream]" in prompt:
                            self._event({"type": "error", "error": {"code": "server_error", "type": "server_error", "param": None, "message": "The server had an error while generating the image."}})
                            return self._chunk(b"")
                    image = base64.b64encode(png(width, height, i, noise="[large]" in prompt)).decode()
                    usage = {"total_tokens": 150, "input_tokens": 100, "output_tokens": 50, "input_tokens_details": {"text_tokens": 100, "image_tokens": 0}}
                    self._event({"type": f"{kind}.completed", "b64_json": image, **common, "usage": usage})
                self._chunk(b"")

            def _answer(self, body: dict, model: str):
                prompt = body["prompt"]
                if "[content-filter]" in prompt:
                    return self._error(400, {
                        "code": "content_policy_violation",
                        "message": "Your request was rejected as a result of our safety system.",
                        "param": "prompt",
                        "type": "invalid_request_error",
                        "inner_error": {
                            "code": "ResponsibleAIPolicyViolation",
                            "content_filter_results": {**filter_results(), "violence": {"filtered": True, "severity": "high"}},
                            "revised_prompt": "A revised prompt",
                        },
                    })
                if "[moderation]" in prompt:
                    return self._error(400, {"code": "moderation_blocked", "message": "Your request was rejected by the safety system.", "param": None, "type": "image_generation_user_error"})
                if "[rate-limit]" in prompt:
                    return self._error(429, {"code": "429", "message": "Requests to the images API have exceeded the rate limit. Please retry after 7 seconds."}, headers={"retry-after": "7"})
                if "[server-error]" in prompt:
                    return self._error(500, {"message": "The server had an error while processing your request.", "type": "server_error", "param": None, "code": "server_error"})
                if "[flaky]" in prompt:
                    with fake.lock:
                        first = prompt not in fake.seen_prompts
                        fake.seen_prompts.add(prompt)
                    if first:
                        return self._error(503, {"code": "server_error", "message": "The service is temporarily unavailable."}, headers={"retry-after-ms": "50"})
                if "[not-json]" in prompt:
                    return self._send(200, b"<html>gateway</html>", content_type="text/html")
                n = body.get("n", 1)
                size = body.get("size", "1024x1024")
                if size == "auto":
                    size = "1024x1024"
                width, height = (int(x) for x in size.split("x"))
                data = []
                for i in range(n):
                    image = png(width, height, i, noise="[large]" in prompt)
                    if model in GPT_IMAGE:
                        data.append({"b64_json": base64.b64encode(image).decode()})
                    else:
                        item = {"revised_prompt": "A revised prompt", "content_filter_results": filter_results(), "prompt_filter_results": filter_results()}
                        if body.get("response_format", "url") == "b64_json":
                            item["b64_json"] = base64.b64encode(image).decode()
                        else:
                            name = f"{len(fake.images)}-{i}.png"
                            fake.images[name] = image
                            item["url"] = f"{fake.url}/_fake/images/{name}"
                        data.append(item)
                answer = {"created": int(time.time()), "data": data}
                if model in GPT_IMAGE:
                    answer.update({
                        "background": body.get("background", "opaque") if body.get("background") != "auto" else "opaque",
                        "output_format": body.get("output_format", "png"),
                        "quality": body.get("quality", "high") if body.get("quality") != "auto" else "high",
                        "size": size,
                        "usage": {"total_tokens": 100 + 50 * n, "input_tokens": 100, "output_tokens": 50 * n,
                                  "input_tokens_details": {"text_tokens": 100, "image_tokens": 0}},
                    })
                self._send(200, json.dumps(answer).encode())

        return Handler


def read_form(content_type: str, raw: bytes) -> tuple[dict, list, str | None]:
    """A multipart body's text fields and files `(name, filename, content type, data)`."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.default).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    if not message.is_multipart():
        return {}, [], "the multipart body does not parse"
    fields: dict[str, str] = {}
    files: list[tuple[str, str | None, str, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files.append((name, part.get_filename(), part.get_content_type(), data))
        elif name in fields:
            return fields, files, f"field {name!r} sent twice"
        else:
            fields[name] = data.decode()
    return fields, files, None


MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8", "image/webp": b"RIFF"}


def check_edit(fields: dict, files: list, model: str) -> str | None:
    """What Azure's edits route would refuse, or the connector must never send."""
    if fields.get("model") != model:
        return f"model {fields.get('model')!r} is not the deployment's model {model!r}"
    if not fields.get("prompt"):
        return "prompt missing"
    leaked = CONNECTOR_ONLY & fields.keys()
    if leaked:
        return f"connector-only fields reached Azure: {sorted(leaked)}"
    if "response_format" in fields:
        return "response_format sent to a gpt-image model"
    if "stream" in fields and fields["stream"] != "true":
        return f"stream={fields['stream']!r}"
    if "partial_images" in fields and fields.get("stream") != "true":
        return "partial_images sent without stream"
    images = [f for f in files if f[0] in ("image", "image[]")]
    if not 1 <= len(images) <= 16:
        return f"{len(images)} images"
    if len({f[0] for f in images}) != 1 or (len(images) > 1 and images[0][0] != "image[]"):
        return "several images must all be image[]"
    for name, filename, ctype, data in files:
        if name not in ("image", "image[]", "mask"):
            return f"a file in field {name!r}"
        if not filename:
            return f"{name} has no filename"
        if ctype not in MAGIC or not data.startswith(MAGIC[ctype]):
            return f"{name} declared {ctype} but is not one"
        if name == "mask" and ctype != "image/png":
            return "the mask is not a PNG"
    if not 1 <= int(fields.get("n", "1")) <= 10:
        return f"n={fields.get('n')}"
    return None


def check_body(body, model: str, model_in_body: str | None = None) -> str | None:
    """What Azure would refuse, or the connector must never send. On the v1
    surface the body's `model` names the deployment instead of the model."""
    if not isinstance(body, dict):
        return "body is not an object"
    if body.get("model") != (model_in_body or model):
        return f"model {body.get('model')!r} is not {model_in_body or model!r}"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "prompt missing"
    leaked = CONNECTOR_ONLY & body.keys()
    if leaked:
        return f"connector-only fields reached Azure: {sorted(leaked)}"
    if "stream" in body and (model not in GPT_IMAGE or body["stream"] is not True):
        return f"stream={body['stream']!r} sent for {model}"
    if "partial_images" in body and not body.get("stream"):
        return "partial_images sent without stream"
    n = body.get("n", 1)
    if model in GPT_IMAGE:
        if "response_format" in body:
            return "response_format sent to a gpt-image model"
        if "style" in body:
            return "style sent to a gpt-image model"
        if not 1 <= n <= 10:
            return f"n={n}"
        if body.get("size", "auto") not in SIZES["gpt-image"]:
            return f"size {body.get('size')}"
    elif model == "dall-e-3":
        if n != 1:
            return f"n={n} for dall-e-3"
        if body.get("size", "1024x1024") not in SIZES["dall-e-3"]:
            return f"size {body.get('size')}"
        if body.get("quality", "standard") not in {"standard", "hd"}:
            return f"quality {body.get('quality')}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deployments", required=True, help="JSON: deployment -> {model, api_version}")
    parser.add_argument("--key", action="append", required=True)
    args = parser.parse_args()
    fake = FakeAzure(json.loads(args.deployments), args.key, port=args.port)
    print(f"fake Azure listening on {fake.url}", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
