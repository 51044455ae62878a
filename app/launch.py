"""Start the dashboard server: ``launch(port, demo_dir)`` (used by ``tcpa-viz app``) or
``python app/launch.py [--port N] [--demo-dir DIR] [--checkpoint PATH ...]``.

Only the standard library is imported here, so the module also works as a plain script.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

DASHBOARD = Path(__file__).resolve().parent / "dashboard.py"


def streamlit_command(port: int | None = None, demo_dir: str | None = None, checkpoints: Sequence[str] = (),
                      address: str | None = None, python: str | None = None) -> list[str]:
    """The ``python -m streamlit run app/dashboard.py ...`` command line (headless, no usage statistics, no
    file watching)."""
    cmd = [python or sys.executable, "-m", "streamlit", "run", str(DASHBOARD), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           "--server.fileWatcherType", "none", "--runner.postScriptGC", "false"]
    if port is not None:
        cmd += ["--server.port", str(int(port))]
    if address is not None:
        cmd += ["--server.address", address]
    extra: list[str] = []
    if demo_dir is not None:
        extra += ["--demo-dir", str(demo_dir)]
    for path in checkpoints:
        extra += ["--checkpoint", str(path)]
    return [*cmd, "--", *extra] if extra else cmd


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (chosen by the operating system)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Block until the server at ``url`` answers Streamlit's health check. Raises ``RuntimeError`` when
    ``process`` exits first or nothing answers within ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the dashboard server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise RuntimeError(f"the dashboard did not answer on {url} within {timeout_s:.0f} s")


def launch(port: int | None = None, demo_dir: str | None = None, checkpoints: Sequence[str] = (),
           address: str | None = None) -> int:
    """Run the dashboard until it exits or this process is interrupted/terminated; returns its exit status.

    ``port=None`` lets Streamlit choose (8501 or the next free one); ``demo_dir=None`` lists ``demo_out``.
    SIGTERM sent to this process (when called from the main thread) is passed on to the server.
    """
    process = subprocess.Popen(streamlit_command(port, demo_dir, checkpoints, address))

    def stop(signum: int, _frame: FrameType | None) -> None:
        process.send_signal(signum)

    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if on_main_thread else None
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry of this module."""
    parser = argparse.ArgumentParser(description="Start the tcpa-viz dashboard.")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--address", default=None, help="address to listen on (default: Streamlit's)")
    parser.add_argument("--demo-dir", default=None, help="folder whose checkpoints are listed (default demo_out)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH", help="extra checkpoint")
    args = parser.parse_args(argv)
    return launch(args.port, args.demo_dir, args.checkpoint, args.address)


if __name__ == "__main__":
    sys.exit(main())
