"""jupyterlab-genv 0.4.0, the real one: its server extension and its kernel provisioner in a
real Jupyter server on 127.0.0.1, driving this project's ``genv`` (found on PATH, as the
extension finds it). No browser: its REST endpoints are called as its front end calls them.

The case it exists for: a kernel's environment survives a kernel restart. Jupyter keeps the
kernel id and its connection file while the kernel process is gone for a moment, and the
provisioner asks for the environment's devices in exactly that moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import peers
from shellkit import with_genv_path

DEADLINE = 60.0


class Server:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}",
                     "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
        return json.loads(text) if text else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kernel_pid(kernel_id: str, not_pid: int | None = None) -> int:
    """The pid of the kernel process whose command line names ``kernel_id`` (waiting)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == not_pid:
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if f"kernel-{kernel_id}.json".encode() in cmdline and b"ipykernel" in cmdline:
                return int(entry)
        time.sleep(0.05)
    raise AssertionError(f"no process of kernel {kernel_id}")


def _environ(pid: int) -> dict[str, str]:
    data = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode() for key, value in pairs}


@pytest.fixture
def server(fake_machine: Any, shared_tmp: Path) -> Iterator[Server]:
    """A Jupyter server as root (its connection files in root's Jupyter runtime folder),
    with a kernel spec that launches through jupyterlab-genv's provisioner."""
    if os.geteuid() != 0:
        pytest.skip("the server runs as root here, with root's Jupyter runtime folder")
    venv = peers.ensure(peers.JUPYTER)
    spec = shared_tmp / "jupyter-path" / "kernels" / "genvpy"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"],
        "display_name": "Python (genv)", "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "genv-provisioner"}},
    }))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "XDG_", "GENV_ENVIRONMENT", "CUDA_VISIBLE"))}
    env.update(HOME=pwd.getpwuid(0).pw_dir, JUPYTER_PATH=str(spec.parents[1]),
               PATH=with_genv_path(f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"))
    port = _free_port()
    token = secrets.token_hex(16)
    log = (shared_tmp / "server.log").open("w")
    process = subprocess.Popen(
        [str(venv / "bin" / "jupyter-server"), "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--no-browser",
         "--allow-root", f"--ServerApp.root_dir={shared_tmp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=shared_tmp,
    )
    server = Server(f"http://127.0.0.1:{port}", token)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                server.call("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError((shared_tmp / "server.log").read_text()) from None
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def _genv(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "genv", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_a_kernel_keeps_its_devices_through_a_restart(server: Server, fake_machine: Any) -> None:
    kernel_id = server.call("POST", "/api/kernels", {"name": "genvpy"})["id"]
    first = _kernel_pid(kernel_id)
    assert _environ(first)["CUDA_VISIBLE_DEVICES"] == ""  # no environment yet: none

    # The front end's "activate": genv envs activate --eid E --uid U --kernel-id K
    server.call("POST", "/jupyterlab-genv/activate", {"eid": "nb1", "kernel_id": kernel_id})
    assert server.call("GET", f"/jupyterlab-genv/find?kernel_id={kernel_id}") == "nb1"
    # Its terminal then attaches devices with the ordinary commands.
    attached = _genv("devices", "attach", "--eid", "nb1", "--count", "1")
    assert (attached.returncode, attached.stdout) == (0, "0\n"), attached.stderr
    # The user column of an environment made with --uid alone is the uid, as in 1.4.3.
    assert server.call("GET", "/jupyterlab-genv/envs") == [
        {"eid": "nb1", "user": "0", "name": "", "pids": []}
    ]
    assert server.call("GET", "/jupyterlab-genv/devices") == [
        {"eid": "nb1", "env": ""}, {"eid": "", "env": ""}, {"eid": "", "env": ""},
        {"eid": "", "env": ""},
    ]

    server.call("POST", f"/api/kernels/{kernel_id}/restart")
    second = _kernel_pid(kernel_id, not_pid=first)
    assert _environ(second)["CUDA_VISIBLE_DEVICES"] == "0"
    assert _genv("envs", "find", "--kernel-id", kernel_id).stdout == "nb1\n"

    # Shut down: Jupyter removes the connection file, and the environment ends with it.
    server.call("DELETE", f"/api/kernels/{kernel_id}")
    deadline = time.monotonic() + DEADLINE
    while _genv("envs", "ps", "--format", "csv", "--no-header").stdout:
        assert time.monotonic() < deadline, "the environment outlived its kernel"
        time.sleep(0.1)
    assert _genv("devices", "find", "--eid", "nb1").stdout == "\n"
