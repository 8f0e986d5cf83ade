"""./scripts/run as a new user meets it: it builds before it serves, says at
once when its port is taken, and leaves no process behind on any path.

Each run carries a marker in its environment, which every process it starts
inherits (moto, cargo, cargo lambda watch, the function): whatever still
carries it after the run has ended was left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import stack  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds left-over processes through /proc")


class Run:
    """./scripts/run in the background, its output collected line by line."""

    def __init__(self, *args: str, **env: str):
        self.marker = uuid.uuid4().hex
        self.lines: list[str] = []
        full_env = dict(os.environ, AOI_RUN_MARKER=self.marker, **env)
        self.popen = subprocess.Popen([str(ROOT / "scripts" / "run"), *args], env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.popen.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f}s:\n{self.output}")

    def wait(self, timeout: float) -> int:
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def left_behind(self) -> list[str]:
        found = []
        needle = f"AOI_RUN_MARKER={self.marker}".encode()
        for pid in stack._pids():
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(f"{pid}: {stack._cmdline(pid)}")
            except OSError:
                continue
        return found

    def kill(self) -> None:
        """The test's own clean-up, should an assertion fail mid-run: the run
        first (it stops what it started), then whatever still carries the marker."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for line in self.left_behind():
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def runs():
    started: list[Run] = []
    yield lambda *args, **env: started.append(Run(*args, **env)) or started[-1]
    for run in started:
        run.kill()


def test_a_taken_port_is_reported_at_once_with_its_holder(runs):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        run = runs("--port", str(port))
        code = run.wait(timeout=60)
        took = time.monotonic() - started
    assert code != 0
    assert took < 15, f"the taken port took {took:.0f}s to report:\n{run.output}"
    assert f"port {port}" in run.output and f"pid {os.getpid()}" in run.output, run.output
    assert run.left_behind() == []


def test_the_stack_fixture_reports_a_taken_port_before_building(tmp_path, monkeypatch):
    def no_build():
        raise AssertionError("built although the port was taken")

    monkeypatch.setattr(stack, "build_function", no_build)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(stack.PortInUse, match=f"pid {os.getpid()}"):
            stack.Connector({}, tmp_path, port=port).start()


def test_a_build_error_stops_the_start_before_the_emulator_and_leaves_nothing(runs, tmp_path):
    # A rustc that cannot run: cargo fails at once, as on a compile error.
    rustc = tmp_path / "rustc"
    rustc.write_text("#!/bin/sh\necho 'error: this rustc is broken on purpose' >&2\nexit 1\n")
    rustc.chmod(0o755)
    run = runs("--port", str(stack.free_port()), "--keep-logs", RUSTC=str(rustc))
    code = run.wait(timeout=120)
    assert code != 0
    assert "the build failed" in run.output, run.output
    log_dir = Path(run.wait_for_line(r"^Logs: (\S+)", 1).group(1))
    try:
        # The build comes before the emulator: a failed one never starts cargo lambda watch.
        assert not list(log_dir.glob("connector-*.log")), run.output
    finally:
        subprocess.run(["rm", "-rf", str(log_dir)], check=False)
    assert run.left_behind() == []


def test_the_run_builds_then_serves_and_an_interrupt_stops_everything(runs):
    # A stale binary: the build the run makes before starting the emulator has work to do.
    (ROOT / "src" / "main.rs").touch()
    port = stack.free_port()
    run = runs("--port", str(port))
    log_dir = Path(run.wait_for_line(r"^Logs: (\S+)", 30).group(1))
    assert run.lines[0].startswith("Logs: "), "the log folder comes first"
    log = Path(run.wait_for_line(r"is up on .*function log: (\S+)\)", 600).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as answer:
        assert answer.status == 200
    function_log = log.read_text(errors="replace")
    # The emulator's own `cargo run` found the binary fresh: the run built it first.
    assert "Compiling azure-openai-image" not in function_log, function_log
    # No request reached the emulator before the function could take it.
    assert "refused" not in function_log, function_log
    assert 'api_version="2024-10-21"' in run.output, "the printed example matches the README's"
    # The local key is limited (a budget of ten dall-e-3 images, 5 requests a minute): a refusal is a few curls away.
    refused = None
    for _ in range(11):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/images/generations",
            data=b'{"model": "dall-e-3", "prompt": "A cute cat", "size": "1024x1024", "quality": "standard"}',
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-local-dev"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert answer.headers["x-ratelimit-limit-requests"] == "5"
        except urllib.error.HTTPError as e:
            refused = e
            break
    assert refused is not None and refused.code == 429, "the local key's limits never refused"
    assert json.loads(refused.read())["error"]["code"] in ("rate_limit_exceeded", "insufficient_quota")

    run.popen.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 0, run.output
    assert run.left_behind() == []
    assert not log_dir.exists(), "the log folder is removed unless --keep-logs"
