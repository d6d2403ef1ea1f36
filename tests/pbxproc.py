"""Run the real PBX (`twistd -n pbx`) in a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

TWISTD = str(Path(sys.executable).with_name("twistd"))
PROJECT = Path(__file__).resolve().parent.parent

EXTENSIONS = [
    {"number": "1001", "name": "Alice", "password": "secret1001", "voicemail_pin": "1234"},
    {"number": "1002", "name": "Bob", "password": "secret1002"},
    {"number": "1003", "name": "Carol", "password": "secret1003"},
]


def free_port(kind: int = socket.SOCK_DGRAM, also_tcp: bool = True) -> int:
    """A port free for UDP (and TCP), on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not also_tcp:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def options_ping(port: int, timeout: float = 0.5) -> bytes | None:
    """Send one OPTIONS over UDP; the raw answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        local = s.getsockname()[1]
        branch = f"z9hG4bKping{time.monotonic_ns()}"
        s.sendto(
            (
                f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:test@127.0.0.1>;tag=p1\r\n"
                f"To: <sip:ping@127.0.0.1:{port}>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


class PBXProcess:
    """A PBX on loopback with its own config, database and log in `directory`."""

    def __init__(self, directory: Path, **overrides) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sip_port = overrides.pop("sip_port", None) or free_port()
        self.api_port = free_port(socket.SOCK_STREAM, also_tcp=False)
        rtp_start = 40000 + (self.sip_port % 200) * 100
        while rtp_start <= self.sip_port <= rtp_start + 98 or rtp_start <= self.api_port <= rtp_start + 98:
            rtp_start = 40000 + (rtp_start - 40000 + 100) % 20000  # keep clear of our own listeners
        self.config = {
            "server": {
                "sip_host": "127.0.0.1",
                "sip_port": self.sip_port,
                "rtp_port_range_start": rtp_start,
                "rtp_port_range_end": rtp_start + 98,
                "server_name": "PBX-under-test",
            },
            "api": {"host": "127.0.0.1", "port": self.api_port},
            "database": {"path": str(self.directory / "pbx.db")},
            "extensions": EXTENSIONS,
            # Off unless a test is about voicemail: busy and unanswered calls
            # then end the way the call tests expect (486, 408, 480).
            "voicemail": {"enabled": False, "storage_path": str(self.directory / "voicemail")},
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:
                self.config[section] = values
        self.config_path = self.directory / "config.yml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.directory / "twistd.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait: float = 15.0) -> PBXProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [TWISTD, "--pidfile=", "-n", "pbx", "--config", str(self.config_path)],
            cwd=self.directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PBX exited with {self.process.returncode}:\n{self.log()}")
            answer = options_ping(self.sip_port, 0.3)
            if answer is not None and answer.startswith(b"SIP/2.0 200"):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"PBX did not answer OPTIONS within {wait}s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        return time.monotonic() - began

    def finished_record(self, since: float = 0.0, timeout: float = 5.0) -> dict:
        """The newest call record started after `since`, once no call is open any more
        (records are written when calls end)."""
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(self.directory / "pbx.db") as db:
                db.row_factory = sqlite3.Row
                row = db.execute("SELECT * FROM cdr WHERE start_time >= ? ORDER BY start_time DESC LIMIT 1",
                                 (since,)).fetchone()
                still_open = db.execute("SELECT COUNT(*) FROM calls_open").fetchone()[0]
            if row is not None and not still_open:
                return dict(row)
            if time.monotonic() > deadline:
                raise AssertionError(f"no finished call record since {since} (open: {still_open})")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> PBXProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def have(program: str) -> bool:
    return shutil.which(program) is not None


def env_without_pythonpath() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def prompt_seconds(*names: str) -> float:
    """How long shipped prompts last, played one after the other (as the PBX reads them: 8 kHz)."""
    from pbx.media.wav import read_wav

    return sum(len(read_wav(PROJECT / "prompts" / f"{name}.wav")) / 2 / 8000 for name in names)
