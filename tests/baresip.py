"""Run baresip, a real softphone, headless against the PBX under test.

baresip 1.0 stops writing what it hears (the sndfile dec recording) at the
first re-INVITE that is not sendrecv, for the rest of the call: tests of a
held baresip check the RTP sent to it, not its recording.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

MODULE_PATH = "/usr/lib/baresip/modules"


class Baresip:
    """One baresip instance with its own config directory and account."""

    def __init__(self, directory: Path, user: str, password: str, pbx_port: int, sip_port: int,
                 rtp_ports: tuple[int, int] = (42000, 42100), regint: int = 60, modules: tuple[str, ...] = ("g711.so",),
                 extra_config: str = "") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "config").write_text(
            f"sip_listen 127.0.0.1:{sip_port}\n"
            "net_interface 127.0.0.1\n"
            f"rtp_ports {rtp_ports[0]}-{rtp_ports[1]}\n"
            "audio_player null,null\n"
            "audio_alert null,null\n"
            f"module_path {MODULE_PATH}\n"
            + "".join(f"module {m}\n" for m in modules)
            + "module_app account.so\n"
            + extra_config
        )
        (self.directory / "accounts").write_text(
            f"<sip:{user}@127.0.0.1:{pbx_port};transport=udp>;auth_pass={password};regint={regint};"
            "answermode=auto;audio_codecs=PCMU\n"
        )
        (self.directory / "contacts").write_text("")
        self.log_path = self.directory / "baresip.log"
        self.process: subprocess.Popen | None = None

    def start(self, seconds: int, *commands: str) -> Baresip:
        args = ["baresip", "-f", str(self.directory), "-t", str(seconds)]
        for command in commands:
            args += ["-e", command]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
