"""The local stack: moto server as Secrets Manager, the Azure stand-in, and the
connector under `cargo lambda watch` (or on its plain local listener).

The run command and the end-to-end tests both start their servers through
this module, so what a developer runs by hand is what the tests check. Every
server binds to 127.0.0.1 and is stopped by whoever started it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
REGION = "us-east-1"
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
    """Polls `url` until it answers (any HTTP status) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s\n{tail}")


class Process:
    """A child process in its own process group, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT):
        self.args = args
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "ab")
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        self._log_file.close()


class Moto:
    """moto server standing in for AWS Secrets Manager, recording requests so
    a test can count the connector's GetSecretValue calls."""

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
        wait_for(f"{self.url}/moto-api/", 60, self.process.popen, self.process.log)
        self._post("/moto-api/recorder/start-recording")
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

    def start(self, timeout: float = 900) -> "Connector":
        env = dict(os.environ, **self.settings)
        env.setdefault("RUST_LOG", "info")
        if self.mode == "lambda":
            # cargo-lambda's own cargo build, then the runtime emulator on our port.
            env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
            args = [tool("cargo-lambda"), "lambda", "watch", "--ignore-changes", "-A", "127.0.0.1", "-P", str(self.port)]
        else:
            binary = ROOT / "target" / "debug" / "azure-openai-image"
            if not binary.exists():
                subprocess.run(["cargo", "build", "--quiet"], cwd=ROOT, check=True)
            args = [str(binary), "--listen", f"127.0.0.1:{self.port}"]
        self.process = Process(args, env, self.log_dir / f"connector-{self.mode}-{self.port}.log")
        wait_for(f"{self.url}/health", timeout, self.process.popen, self.process.log)
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
