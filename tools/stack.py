"""The local stack: moto server as Secrets Manager and S3, the Azure stand-in,
and the connector under `cargo lambda watch` (or on its plain local listener).

The run command and the end-to-end tests both start their servers through
this module, so what a developer runs by hand is what the tests check. Every
server binds to 127.0.0.1 and is stopped by whoever started it.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
REGION = "us-east-1"
# The usage table's name in the local runs and the tests (README, Budgets and rate limits).
USAGE_TABLE = "azure-openai-image-usage"
# moto accepts any credentials; these only have to look like AWS's.
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    """A command from the project venv, else from PATH."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else name


def wait_for(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Polls `url` until it answers (any HTTP status) or `timeout` passes.
    Only for servers where a request costs nothing (moto, the stand-ins): a
    poll of the Lambda emulator is an invocation, see Connector.start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}:\n{relevant_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s\n{relevant_tail(log)}")


# Cargo's own progress lines: on a failure they bury the lines that say why.
CARGO_NOISE = ("Compiling ", "Checking ", "Downloaded ", "Downloading ", "Updating ", "Locking ", "Adding ", "Blocking ", "Fresh ", "Building ")


def relevant_tail(log: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of a log that are not cargo's progress."""
    if log is None or not log.exists():
        return ""
    kept = [line for line in log.read_text(errors="replace").splitlines() if not line.strip().startswith(CARGO_NOISE)]
    return "\n".join(kept[-lines:])


class PortInUse(RuntimeError):
    pass


def check_port_free(port: int) -> None:
    """Fails at once, naming the holder, when something listens on `port`:
    cargo lambda watch would otherwise fail only after its start."""
    with socket.socket() as s:
        # As the servers bind (tokio and Python set SO_REUSEADDR): only a
        # listener blocks the port, not the TIME_WAIT of a previous run.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(f"port {port} on 127.0.0.1 is already in use by {port_holder(port)}; stop it or pick another port (--port N)") from None


def port_holder(port: int) -> str:
    """`pid N (command line)` of whoever listens on `port`, from /proc (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    holders = []
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                holders.append(f"pid {pid} ({_cmdline(pid)})")
        except OSError:
            continue
    return ", ".join(holders) or "another process (its pid is not visible to this user)"


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()] if os.path.isdir("/proc") else []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    parents = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        parents[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    parents = _parents()
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    try:
        # A zombie has exited; only its parent's wait is missing.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Process:
    """A child process in its own session and process group, logging to a
    file (or to the console when `log` is None)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path | None, cwd: Path = ROOT):
        self.args = args
        self.log = log
        self._log_file = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(log, "ab")
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT if log else None, start_new_session=True)

    def stop(self) -> None:
        """Stops the process group and every process it started. Tools that
        start commands of their own (cargo lambda watch's watchexec runs
        `cargo run` under setsid) put them out of our group, so those are
        found by parentage first, while they are still children."""
        family = descendants(self.popen.pid)
        groups = {self.popen.pid}
        for pid in family:
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):  # politely, then for sure
            for group in groups:
                try:
                    os.killpg(group, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            if self._gone(family, within=10):
                break
        self.popen.wait(timeout=10)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def _gone(self, family: list[int], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.popen.poll()  # reaps our child, which would stay a zombie otherwise
            if not any(alive(pid) for pid in [self.popen.pid, *family]):
                return True
            time.sleep(0.1)
        return False


class Moto:
    """moto server standing in for AWS Secrets Manager and DynamoDB, recording
    requests so a test can count the connector's GetSecretValue calls."""

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.log_dir = log_dir
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Moto":
        env = dict(os.environ, **FAKE_AWS, MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(self.log_dir / f"moto-{self.port}.recording"))
        self.process = Process([tool("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], env, self.log_dir / f"moto-{self.port}.log")
        try:
            wait_for(f"{self.url}/moto-api/", 60, self.process.popen, self.process.log)
            self._post("/moto-api/recorder/start-recording")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None

    def _post(self, path: str) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + path, method="POST"), timeout=10).read()

    def client(self):
        import boto3

        return boto3.client("secretsmanager", endpoint_url=self.url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")

    def put_secret(self, name: str, value: str) -> str:
        client = self.client()
        try:
            return client.create_secret(Name=name, SecretString=value)["ARN"]
        except client.exceptions.ResourceExistsException:
            return client.put_secret_value(SecretId=name, SecretString=value)["ARN"]

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> str:
        """An image bucket for IMAGE_BUCKET (the connector addresses moto path-style)."""
        self.s3().create_bucket(Bucket=name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Empties and deletes a bucket, as an operator might under a running connector."""
        s3 = self.s3()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=name, Key=item["Key"])
        s3.delete_bucket(Bucket=name)
    def dynamodb(self):
        import boto3

        return boto3.client("dynamodb", endpoint_url=self.url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_usage_table(self, name: str = USAGE_TABLE) -> str:
        """The usage table as template.yaml creates it (README: the same as `aws dynamodb create-table`)."""
        client = self.dynamodb()
        try:
            client.create_table(
                TableName=name,
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except client.exceptions.ResourceInUseException:
            return name
        client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})
        return name

    def usage_items(self, name: str = USAGE_TABLE) -> list[dict]:
        """Every usage item, its numbers as ints."""
        items = self.dynamodb().scan(TableName=name, ConsistentRead=True)["Items"]
        return [{k: (int(v["N"]) if "N" in v else v.get("S")) for k, v in item.items()} for item in items]

    def get_secret_value_calls(self, secret_id: str) -> int:
        """GetSecretValue requests for `secret_id` made by the connector (the AWS SDK for Rust)."""
        with urllib.request.urlopen(f"{self.url}/moto-api/recorder/download-recording", timeout=10) as r:
            lines = r.read().decode().splitlines()
        count = 0
        for line in lines:
            record = json.loads(line)
            headers = {k.lower(): v for k, v in record.get("headers", {}).items()}
            if headers.get("x-amz-target") != "secretsmanager.GetSecretValue":
                continue
            if "aws-sdk-rust" not in headers.get("user-agent", "") + headers.get("x-amz-user-agent", ""):
                continue
            body = record.get("body") or ""
            if record.get("body_encoded"):
                body = base64.b64decode(body).decode()
            if json.loads(body or "{}").get("SecretId") == secret_id:
                count += 1
        return count


BIN = "azure-openai-image"


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")


def build_command() -> list[str]:
    """The build of `cargo run --manifest-path Cargo.toml`, which is what
    cargo lambda watch runs for a package with one binary: the same profile,
    features and target dir, so its own build then finds everything fresh."""
    return ["cargo", "build", "--manifest-path", str(ROOT / "Cargo.toml"), "--bin", BIN]


def build_function() -> None:
    """Builds the function with cargo's progress on the console."""
    build = Process(build_command(), dict(os.environ), log=None)
    try:
        code = build.popen.wait()
    except BaseException:
        build.stop()
        raise
    if code != 0:
        raise BuildFailed(f"the build failed ({' '.join(build_command())} exited with {code}); cargo's errors are above")


class BuildFailed(RuntimeError):
    pass


def wait_listening(port: int, timeout: float, process: Process) -> None:
    """Waits until something accepts connections on `port`. A bare connection
    is no invocation, so these probes can be short and often."""
    deadline = time.monotonic() + timeout
    while True:
        _check_running(process)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listened on port {port} within {timeout:.0f}s\n{relevant_tail(process.log)}") from None
            time.sleep(0.5)


def first_invocation(url: str, timeout: float, process: Process) -> None:
    """Sends one request and waits for its answer. Under cargo lambda watch a
    request is an invocation, queued until the function takes it, and it
    stays queued when its client gives up. So there is one request, never a
    retry that would leave one behind; while it waits, the watch process and
    its log are checked, so a dead function fails the start at once."""
    outcome: dict = {}

    def ask() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                outcome["status"] = answer.status
        except urllib.error.HTTPError as e:
            outcome["status"] = e.code
        except Exception as e:  # noqa: BLE001 - reported by the waiting thread
            outcome["error"] = e

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    deadline = time.monotonic() + timeout
    while asker.is_alive():
        _check_running(process)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f}s\n{relevant_tail(process.log)}")
        asker.join(0.5)
    if "error" in outcome:
        raise RuntimeError(f"{url} failed: {outcome['error']}\n{relevant_tail(process.log)}")


# What cargo lambda watch logs when the function's command ends.
FUNCTION_ENDED = ("command exited", "command killed", "command ended by exception")


def _check_running(process: Process) -> None:
    if process.popen.poll() is not None:
        raise RuntimeError(f"{' '.join(process.args[:3])} exited with {process.popen.returncode}:\n{relevant_tail(process.log)}")
    if process.log and process.log.exists():
        text = process.log.read_text(errors="replace")
        if any(marker in text for marker in FUNCTION_ENDED):
            raise RuntimeError(f"the function exited at start:\n{relevant_tail(process.log)}")


class Connector:
    """The function under `cargo lambda watch` (the Lambda path) or on its
    own local listener (`--listen`). Settings reach it through the watcher's
    environment, which the function inherits: `--env-var` would split JSON on commas."""

    def __init__(self, env: dict[str, str], log_dir: Path, mode: str = "lambda", port: int | None = None):
        if mode not in ("lambda", "local"):
            raise ValueError(f"mode must be lambda or local, not {mode}")
        self.mode = mode
        self.port = port or free_port()
        self.settings = env
        self.log_dir = log_dir
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> "Connector":
        """Builds, then serves. The build comes first and on its own because
        every request cargo lambda watch gets before the function runs is
        queued as an invocation, even after its client has gone; and the
        emulator's queue holds 100: past that it deadlocks (see README).
        `timeout` bounds the start after the build. Whatever was started is
        stopped again when the start fails or is interrupted."""
        check_port_free(self.port)
        build_function()
        env = dict(os.environ, **self.settings)
        env.setdefault("RUST_LOG", "info")
        if self.mode == "lambda":
            # cargo-lambda's own `cargo run` finds the binary fresh, then the
            # runtime emulator serves on our port.
            env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
            args = [tool("cargo-lambda"), "lambda", "watch", "--ignore-changes", "-A", "127.0.0.1", "-P", str(self.port)]
        else:
            args = [str(target_dir() / "debug" / BIN), "--listen", f"127.0.0.1:{self.port}"]
        self.process = Process(args, env, self.log_dir / f"connector-{self.mode}-{self.port}.log")
        try:
            wait_listening(self.port, timeout, self.process)
            if self.mode == "lambda":
                first_invocation(f"{self.url}/health", timeout, self.process)
            else:
                wait_for(f"{self.url}/health", timeout, self.process.popen, self.process.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None

    def logs(self) -> str:
        return self.process.log.read_text(errors="replace") if self.process else ""


def image_models(azure_url: str) -> list[dict]:
    """The run command's and the tests' models, on the Azure stand-in."""
    return [
        {"name": "azure-image", "model": "gpt-image-1", "baseURL": f"{azure_url}/openai/deployments/gpt-image-1", "apiVersion": "2025-04-01-preview"},
        {"name": "dall-e-3", "model": "dall-e-3", "baseURL": f"{azure_url}/openai/deployments/dall-e-3", "apiVersion": "2024-10-21"},
        {"name": "gpt-image-nostream", "model": "gpt-image-1", "baseURL": f"{azure_url}/openai/deployments/gpt-image-1-nostream", "apiVersion": "2025-04-01-preview"},
    ]


def fake_deployments() -> dict[str, dict]:
    return {
        "gpt-image-1": {"model": "gpt-image-1", "api_version": "2025-04-01-preview"},
        "dall-e-3": {"model": "dall-e-3", "api_version": "2024-10-21"},
        # A dated api-version that does not stream: the connector makes its streams from buffered calls.
        "gpt-image-1-nostream": {"model": "gpt-image-1", "api_version": "2025-04-01-preview", "streams": False},
    }


def connector_env(moto: Moto | None, models: list[dict], secret_id: str, **extra: str) -> dict[str, str]:
    env = {"IMAGE_MODELS": json.dumps(models), "AZURE_API_KEY_SECRET_ID": secret_id, **extra}
    if moto is not None:
        env.update(FAKE_AWS, AWS_ENDPOINT_URL=moto.url)
    return env


if __name__ == "__main__":
    sys.exit("import this module; the run command is tools/run.py")
