"""The whole-process benchmark: what the connector adds to a direct call to
the same Azure stand-in (a steady one, `latency serve`), its memory, its cold
start and its package size.

    .venv/bin/python tools/bench.py [--small 200] [--large 20] [--no-package] [--no-lambda-model]

Prints one table (BENCHMARKS.md holds a run), then the Lambda model: the
function under a CPU quota equal to a Lambda memory size's share of a vCPU
(cgroup v1 `cpu` controller, as root), its streamed answers through a shaper
that passes 6 MB at full speed and the rest at 2 MB/s. Needs a release build
(`cargo build --release`) and, for the package size, the Lambda zip
(`cargo lambda build --release --arm64 --output-format zip`); it builds what
is missing.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack  # noqa: E402

ROOT = stack.ROOT
TARGET = stack.target_dir()
BINARY = TARGET / "release" / "azure-openai-image"
LATENCY = TARGET / "release" / "examples" / "latency"
ZIP = TARGET / "lambda" / "azure-openai-image" / "bootstrap.zip"
AZURE_KEY = "bench-azure-key"
CLIENT_KEY = "bench-client-key"

# (label, prompt, n, size): the stand-in's [large] images do not compress (about 4 MB of base64 at 1024x1024).
CASES = [
    ("small (n=1, ~20 KB)", "a lighthouse", 1, "1024x1024"),
    ("n=1, 4 MB", "[large] a lighthouse", 1, "1024x1024"),
    ("n=4, 16 MB", "[large] a lighthouse", 4, "1024x1024"),
]


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[str, bytes]:
    """A multipart/form-data body as the SDKs upload it, and its content type."""
    boundary = "----bench-boundary-7MA4YWxkTrZu0gW"
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, data in files.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def upload_png(size: int) -> bytes:
    """A PNG of about `size` bytes: a 1024x1024 header, then filler image data (the connector reads headers only)."""
    import struct

    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1024, 1024, 8, 2, 0, 0, 0) + b"\0\0\0\0"
    data = os.urandom(size)
    return header + struct.pack(">I", len(data)) + b"IDAT" + data + b"\0\0\0\0" + b"\0\0\0\0IEND\0\0\0\0"


def timed_posts(targets: list[tuple[str, str, dict, bytes]], count: int, warmup: int = 3) -> tuple[list[list[float]], int]:
    """Milliseconds per request for each target (url, path, headers, body), from the latency
    client (examples/latency.rs): after 3 warm-up rounds, on one kept-alive connection each, the
    targets taking turns request by request. Also returns the first target's body size."""
    with tempfile.NamedTemporaryFile("wb", suffix=".bodies") as bodies:
        # One body a line; a binary one (an upload) as base64 behind "b64:".
        lines = [body if b"\n" not in body and b"\r" not in body else b"b64:" + base64.b64encode(body) for *_, body in targets]
        bodies.write(b"\n".join(lines) + b"\n")
        bodies.flush()
        specs = ["|".join([url + path] + [f"{k}:{v}" for k, v in headers.items()]) for url, path, headers, _ in targets]
        out = subprocess.run([str(LATENCY), "time", str(count), str(warmup), bodies.name, *specs], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"latency client: {out.stderr.strip()}")
    result = json.loads(out.stdout)
    return result["ms"], result["bytes"][0]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_start_ms(env: dict, runs: int = 20, preexec=None) -> float:
    """Process start to its first `invocation/next` poll, against a stand-in Runtime API that only timestamps it."""
    results = []
    for _ in range(runs):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        run_env = dict(os.environ, **env)
        run_env.update(AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}", RUST_LOG="warn")
        started = time.perf_counter()
        process = subprocess.Popen([str(BINARY)], env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec)
        server.settimeout(10)
        conn, _ = server.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        results.append((time.perf_counter() - started) * 1000)
        assert b"/invocation/next" in data, data
        process.kill()
        process.wait()
        conn.close()
        server.close()
    return statistics.median(results)


def first_request_ms(listener, headers: dict, model: str = "azure-image", **env: str) -> tuple[float, float]:
    """A fresh listener's first small generation (secrets, and for Entra ID a token, fetched), and the p50 of the next 20."""
    process, url = listener("stream", **env)
    try:
        stack.wait_for(f"{url}/health", 30)
        body = json.dumps({"model": model, "prompt": "a lighthouse"}).encode()
        (first,), _ = timed_posts([(url, "/v1/images/generations", headers, body)], 1, warmup=0)
        (later,), _ = timed_posts([(url, "/v1/images/generations", headers, body)], 20, warmup=0)
        return first[0], pct(later, 50)
    finally:
        process.kill()


# The Lambda model. Lambda gives a function CPU in proportion to its memory,
# one vCPU at 1,769 MB; a streamed answer's first 6 MB go at full speed, the
# rest at 2 MB/s at most (Lambda's documented limits for response streaming).
ONE_VCPU_MB = 1769
LAMBDA_SIZES = (128, 1024)
FULL_SPEED_BYTES = 6_000_000
CAPPED_RATE = 2_000_000  # bytes per second
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
MODEL_BUCKET = "bench-images"
MODEL_CASES = [("n=1, 4 MB", 1), ("n=4, 16.8 MB", 4)]


class CpuShare:
    """A cgroup (v1 `cpu` controller) whose CFS quota is `memory_mb`'s share of one CPU."""

    def __init__(self, memory_mb: int):
        self.share = memory_mb / ONE_VCPU_MB
        self.path = CGROUP_CPU / f"aoi-bench-{os.getpid()}-{memory_mb}"

    def __enter__(self) -> "CpuShare":
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text("100000")
        (self.path / "cpu.cfs_quota_us").write_text(str(round(100_000 * self.share)))
        return self

    def enter(self) -> None:
        """For `preexec_fn`: the child joins the cgroup before it execs, so its start is limited too."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def __exit__(self, *_) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (CGROUP_CPU / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        self.path.rmdir()


class Shaper:
    """A TCP proxy in front of the connector that passes each connection's answer as Lambda
    streams one: the first 6 MB at full speed, the rest at 2 MB/s. Requests pass unshaped."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def requests() -> None:
            while data := client.recv(65536):
                upstream.sendall(data)

        threading.Thread(target=requests, daemon=True).start()
        sent, capped_since = 0, None
        try:
            while data := upstream.recv(65536):
                for at in range(0, len(data), 16384):
                    piece = data[at : at + 16384]
                    if sent + len(piece) > FULL_SPEED_BYTES:
                        capped_since = capped_since or time.monotonic()
                        # Bytes past the first 6 MB, this piece included: due at 2 MB/s from the crossing.
                        over = sent + len(piece) - FULL_SPEED_BYTES
                        time.sleep(max(0.0, capped_since + over / CAPPED_RATE - time.monotonic()))
                    client.sendall(piece)
                    sent += len(piece)
        finally:
            client.close()
            upstream.close()

    def stop(self) -> None:
        self.server.close()


def shaped_post(port: int, body: bytes, headers: dict) -> tuple[float, dict, bytes]:
    """Seconds from the request to the answer's last byte, on a new connection through the shaper."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/images/generations", body, {**headers, "connection": "close"})
    response = conn.getresponse()
    data = response.read()
    took = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise SystemExit(f"Lambda model: {response.status} {data[:300]!r}")
    return took, {k.lower(): v for k, v in response.getheaders()}, data


def lambda_model(env: dict, headers: dict, runs: int) -> None:
    """The table of BENCHMARKS.md's "Lambda model": per memory size, the time to the client's
    last byte for plain, gzip and url answers (url: to the last image downloaded from S3), and
    the cold path at 128 MB."""
    if os.geteuid() != 0 or not (CGROUP_CPU / "cgroup.procs").exists():
        print("\nLambda model: skipped (needs root and the cgroup v1 cpu controller at /sys/fs/cgroup/cpu)")
        return
    env = dict(env, IMAGE_BUCKET=MODEL_BUCKET, RESPONSE_MODE="stream")
    print(f"\nLambda model: CPU quota = memory / {ONE_VCPU_MB} MB of one CPU; streamed answers through a shaper, "
          f"{FULL_SPEED_BYTES / 1e6:.0f} MB at full speed then {CAPPED_RATE / 1e6:.0f} MB/s; median of {runs}, seconds")
    print(f"{'memory':>7} {'case':<15} {'plain':>8} {'gzip':>8} {'gzip bytes':>11} {'url answer':>11} {'+ downloads':>12}")
    for memory in LAMBDA_SIZES:
        with CpuShare(memory) as share:
            port = stack.free_port()
            process = subprocess.Popen([str(BINARY), "--listen", f"127.0.0.1:{port}"], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=share.enter)
            shaper = Shaper(port)
            try:
                stack.wait_for(f"http://127.0.0.1:{port}/health", 60)
                for label, n in MODEL_CASES:
                    body = json.dumps({"model": "azure-image", "prompt": "[large] a lighthouse", "n": n, "size": "1024x1024"}).encode()
                    url_body = json.dumps({"model": "azure-image", "prompt": "[large] a lighthouse", "n": n, "size": "1024x1024", "response_format": "url"}).encode()
                    plain, gzip, gzip_bytes, url_answer, url_total = [], [], 0, [], []
                    for _ in range(runs):
                        took, got, data = shaped_post(shaper.port, body, headers)
                        assert "content-encoding" not in got
                        plain.append(took)
                        took, got, data = shaped_post(shaper.port, body, {**headers, "accept-encoding": "gzip, deflate"})
                        gzip.append(took)
                        gzip_bytes = len(data) if got.get("content-encoding") == "gzip" else 0
                        started = time.perf_counter()
                        took, _, data = shaped_post(shaper.port, url_body, headers)
                        url_answer.append(took)
                        for image in json.loads(data)["data"]:
                            with urllib.request.urlopen(image["url"], timeout=120) as r:
                                r.read()
                        url_total.append(time.perf_counter() - started)
                    gz = f"{gzip_bytes / 1e6:>9.2f}MB" if gzip_bytes else f"{'(plain)':>11}"
                    print(f"{memory:>5}MB {label:<15} {statistics.median(plain):>8.2f} {statistics.median(gzip):>8.2f} {gz} "
                          f"{statistics.median(url_answer):>11.2f} {statistics.median(url_total):>12.2f}")
            finally:
                shaper.stop()
                process.kill()
                process.wait()
            if memory == 128:
                # The url path's memory in a process of its own: one image decoded while the one
                # before it uploads, whatever n (n=10 is 42 MB of base64).
                port = stack.free_port()
                fresh = subprocess.Popen([str(BINARY), "--listen", f"127.0.0.1:{port}"], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=share.enter)
                try:
                    stack.wait_for(f"http://127.0.0.1:{port}/health", 60)
                    peaks = []
                    for n in (4, 10):
                        body = json.dumps({"model": "azure-image", "prompt": "[large] a lighthouse", "n": n, "response_format": "url"}).encode()
                        took, _, data = shaped_post(port, body, headers)
                        assert len(json.loads(data)["data"]) == n
                        peaks.append(f"n={n} {peak_rss_mib(fresh.pid):.1f} MiB ({took:.2f} s)")
                    print(f"  peak RSS of a fresh process answering url at {memory} MB, one request after the other: {', then '.join(peaks)}")
                finally:
                    fresh.kill()
                    fresh.wait()
                print(f"  cold start at {memory} MB (process start to the first invocation/next, median of 10): {cold_start_ms(env, 10, share.enter):.1f} ms")
                port = stack.free_port()
                fresh = subprocess.Popen([str(BINARY), "--listen", f"127.0.0.1:{port}"], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=share.enter)
                try:
                    stack.wait_for(f"http://127.0.0.1:{port}/health", 60)
                    small = json.dumps({"model": "azure-image", "prompt": "a lighthouse"}).encode()
                    (first,), _ = timed_posts([(f"http://127.0.0.1:{port}", "/v1/images/generations", headers, small)], 1, warmup=0)
                    (later,), _ = timed_posts([(f"http://127.0.0.1:{port}", "/v1/images/generations", headers, small)], 20, warmup=0)
                    print(f"  first answer of a fresh process at {memory} MB (secrets fetched from moto): {first[0]:.1f} ms, then {pct(later, 50):.1f} ms p50")
                finally:
                    fresh.kill()
                    fresh.wait()


def ensure_builds(package: bool) -> None:
    """Brings the builds up to date (cargo does nothing when they are)."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "azure-openai-image", "--example", "latency"], cwd=ROOT, check=True)
    if package:
        env = dict(os.environ, PATH=f"{stack.VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        subprocess.run([stack.tool("cargo-lambda"), "lambda", "build", "--release", "--arm64", "--output-format", "zip"], cwd=ROOT, env=env, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=200, help="requests for the small case")
    parser.add_argument("--large", type=int, default=20, help="requests for each large case")
    parser.add_argument("--no-package", action="store_true", help="skip the arm64 package build (minutes) and its size")
    parser.add_argument("--no-lambda-model", action="store_true", help="skip the Lambda model (CPU quota and streaming cap)")
    parser.add_argument("--model-runs", type=int, default=3, help="runs of each Lambda model case")
    args = parser.parse_args()
    ensure_builds(package=not args.no_package)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    moto = stack.Moto(log_dir).start()
    # The steady upstream (examples/latency.rs): ready-made answers, so that the upstream's own jitter
    # does not drown what the connector adds. tools/fake_azure.py makes each image anew.
    azure_port = stack.free_port()
    azure = subprocess.Popen([str(LATENCY), "serve", str(azure_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    azure_url = f"http://127.0.0.1:{azure_port}"
    stack.wait_for(f"{azure_url}/ready", 10)
    moto.put_secret("azure-key", AZURE_KEY)
    moto.put_secret("client-keys", json.dumps([CLIENT_KEY]))
    moto.create_bucket(MODEL_BUCKET)
    env = stack.connector_env(moto, stack.image_models(azure_url), "azure-key", CLIENT_API_KEYS_SECRET_ID="client-keys", RUST_LOG="warn")
    def listener(mode: str, **extra: str) -> tuple[subprocess.Popen, str]:
        port = stack.free_port()
        process = subprocess.Popen([str(BINARY), "--listen", f"127.0.0.1:{port}"], env={**os.environ, **env, **extra, "RESPONSE_MODE": mode}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return process, f"http://127.0.0.1:{port}"

    # The same binary twice: answers relayed as Azure's arrive (streaming front doors), and whole (buffered ones).
    local, connector_url = listener("stream")
    buffered, buffered_url = listener("buffered")
    watch = None
    try:
        stack.wait_for(f"{connector_url}/health", 30)
        stack.wait_for(f"{buffered_url}/health", 30)
        idle_rss = peak_rss_mib(local.pid)
        watch = stack.Connector(dict(env, RESPONSE_MODE="stream"), log_dir).start()

        rows = []
        for label, prompt, n, size in CASES:
            count = args.small if "small" in label else args.large
            direct_body = json.dumps({"prompt": prompt, "n": n, "size": size, "model": "gpt-image-1"}).encode()
            client_body = json.dumps({"model": "azure-image", "prompt": prompt, "n": n, "size": size}).encode()
            headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
            (direct, through, whole), size_bytes = timed_posts([
                (azure_url, "/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview", {"api-key": AZURE_KEY, "content-type": "application/json"}, direct_body),
                (connector_url, "/v1/images/generations", headers, client_body),
                (buffered_url, "/v1/images/generations", headers, client_body),
            ], count)
            (lambda_path,), _ = timed_posts([(watch.url, "/v1/images/generations", headers, client_body)], max(5, count // 4))
            rows.append((label, size_bytes, direct, through, whole, lambda_path))
        serving_rss = peak_rss_mib(local.pid)
        buffered_rss = peak_rss_mib(buffered.pid)
        # An edit: a 4 MB upload in, a 4 MB image out (issue 14's case), relayed.
        image = upload_png(4_000_000)
        content_type, direct_form = multipart({"model": "gpt-image-1", "prompt": "[large] add a scarf"}, {"image": image})
        _, client_form = multipart({"model": "azure-image", "prompt": "[large] add a scarf"}, {"image": image})
        count = args.large
        (direct, through, whole), size_bytes = timed_posts([
            (azure_url, "/openai/deployments/gpt-image-1/images/edits?api-version=2025-04-01-preview", {"api-key": AZURE_KEY, "content-type": content_type}, direct_form),
            (connector_url, "/v1/images/edits", {"authorization": f"Bearer {CLIENT_KEY}", "content-type": content_type}, client_form),
            (buffered_url, "/v1/images/edits", {"authorization": f"Bearer {CLIENT_KEY}", "content-type": content_type}, client_form),
        ], count)
        rows.append(("edit, 4 MB up + 4 MB", size_bytes + len(client_form), direct, through, whole, []))

        print(f"{'case':<20} {'body':>9} {'direct p50':>10} {'p99':>8} {'local p50':>10} {'p99':>8} {'ratio':>6} {'added p50':>10} {'budget':>8} {'buffered p50':>12} {'watch p50':>10}   (ms)")
        for label, size_bytes, direct, through, whole, lambda_path in rows:
            added = pct(through, 50) - pct(direct, 50)
            budget = 0.5 + 0.5 * size_bytes / 1e6 if size_bytes > 1e6 else 0.5
            watch_p50 = f"{pct(lambda_path, 50):>10.2f}" if lambda_path else f"{'-':>10}"
            print(f"{label:<20} {size_bytes / 1e6:>7.2f}MB {pct(direct, 50):>10.2f} {pct(direct, 99):>8.2f} {pct(through, 50):>10.2f} {pct(through, 99):>8.2f} {pct(through, 50) / pct(direct, 50):>5.2f}x {added:>10.2f} {budget:>8.2f} {pct(whole, 50):>12.2f} {watch_p50}")
        largest = max(r[1] for r in rows if not r[0].startswith("edit")) / 2**20
        print(f"\npeak RSS: idle after init {idle_rss:.1f} MiB (budget 20)")
        print(f"peak RSS serving the {largest:.1f} MiB case, relayed: {serving_rss:.1f} MiB (budget 20 + 1 x {largest:.1f} = {20 + largest:.1f} MiB)")
        print(f"peak RSS serving the {largest:.1f} MiB case, buffered: {buffered_rss:.1f} MiB (budget 20 + 2 x {largest:.1f} = {20 + 2 * largest:.1f} MiB)")
        print(f"cold start (process start to first invocation/next, release build, median of 20): {cold_start_ms(env):.1f} ms")
        first, later = first_request_ms(listener, headers)
        print(f"first request after start, which fetches the Azure key and client keys from moto: {first:.2f} ms; later ones: {later:.2f} ms p50"
              f" (what prefetching the secrets during init could move into init)")
        # `stream: true` from a deployment answering whole (the completed events made from one
        # buffered call), n = 10 large images: the path's peak memory (issue 12).
        process, url = listener("stream")
        try:
            stack.wait_for(f"{url}/health", 30)
            body = json.dumps({"model": "azure-image", "prompt": "[large] a lighthouse", "n": 10, "stream": True}).encode()
            (_,), whole_bytes = timed_posts([(url, "/v1/images/generations", headers, body)], 1, warmup=0)
            print(f"peak RSS, stream whole path (events from one buffered call), n=10: {peak_rss_mib(process.pid):.1f} MiB for {whole_bytes / 1e6:.1f} MB of events (template memory: 128 MB)")
        finally:
            process.kill()
        # Entra ID with AWS federation, against the stand-ins: one STS call and one Entra call on the first request.
        from entra import Sts, TokenEndpoint

        sts = Sts().start()
        token = TokenEndpoint("bench-tenant", {"bench-client": {"assertion": Sts.TOKEN}}).start()
        try:
            entra_models = stack.image_models(azure_url) + [{
                "name": "entra-image", "model": "gpt-image-1", "baseURL": f"{azure_url}/openai/deployments/gpt-image-1",
                "apiVersion": "2025-04-01-preview",
                "auth": {"type": "entra", "tenantId": "bench-tenant", "clientId": "bench-client", "federation": "aws"},
            }]
            extra = {"IMAGE_MODELS": json.dumps(entra_models), "AZURE_AUTHORITY_HOST": token.url, "AWS_ENDPOINT_URL_STS": sts.url}
            key_first, key_later = first_request_ms(listener, headers, "azure-image", **extra)
            entra_first, entra_later = first_request_ms(listener, headers, "entra-image", **extra)
            print(f"first request, key mode: {key_first:.2f} ms, then {key_later:.2f} ms p50;"
                  f" Entra ID federated: {entra_first:.2f} ms ({sts.calls()} STS and {token.calls()} Entra calls), then {entra_later:.2f} ms p50")
        finally:
            token.stop()
            sts.stop()
        if not args.no_lambda_model:
            lambda_model(env, headers, args.model_runs)
        if ZIP.exists():
            print(f"Lambda package (arm64 zip): {ZIP.stat().st_size / 1e6:.2f} MB")
        else:
            print("Lambda package: not built (cargo lambda build --release --arm64 --output-format zip failed)")
    finally:
        local.kill()
        buffered.kill()
        if watch:
            watch.stop()
        azure.kill()
        moto.stop()


if __name__ == "__main__":
    main()
