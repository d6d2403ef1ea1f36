"""Helpers for call tests with real peers: SIPp scenarios and baresip phones.

SIPp (tests/peers/scenarios/*.xml, each documented in its header):

    result = run_sipp("uac_call", pbx.sip_port, ["1001;secret1001;1002"], tmp_path, "-d", "1000")
    assert result.returncode == 0, sipp_report(result)

    callee = register_then_uas(pbx, "1002", "secret1002", "uas_answer", tmp_path)
    ...                                      # a UAC calls 1002 through the PBX
    assert wait_sipp(callee).returncode == 0, sipp_report(callee)

Every run writes its traces to the work directory, named after the scenario
and a run number: <tag>_stat.csv (-trace_stat), <tag>_errors.log
(-trace_err), <tag>_messages.log (-trace_msg, unless trace_msg=False) and,
for background runs, <tag>.out / <tag>.err.  sipp_report() gathers what is
useful in an assertion message.

baresip (tests/baresip.py's Baresip with a tone as microphone and the
decoded audio recorded):

    caller, callee = baresip_call(tmp_path, seconds=4, registrar_port=pbx.sip_port)
    assert heard(caller)["dominant"] == pytest.approx(1000, abs=10)   # the callee's tone
    assert heard(callee)["dominant"] == pytest.approx(440, abs=10)    # the caller's tone

What baresip 1.0 needs for that: `module aufile.so` with `audio_source
aufile,<wav>` (the WAV must outlast the call: at its end aufile reports an
error and the call is closed), `module sndfile.so` with `snd_path <dir>`
(it writes dump-<time>-enc.wav, what is sent, and dump-<time>-dec.wav, what
is received, 8 kHz mono 16-bit for G.711), `module g711.so`, and
`module_app menu.so` for the `-e "/dial ..."` command.  No audio player is
needed (`audio_player null,null` is harmless: the decoded audio still goes
through the sndfile filter).  Two phones can call each other without a
registrar: accounts with regint=0, and the caller dials
sip:<user>@127.0.0.1:<the callee's sip port>.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple, Sequence

from audio import analyse, write_tone
from baresip import Baresip
from pbxproc import free_port

SCENARIOS = Path(__file__).resolve().parent / "peers" / "scenarios"

_runs = itertools.count(1)


# ---------------------------------------------------------------- SIPp

def scenario_path(scenario: str | Path) -> Path:
    """A scenario by name ("uac_call") or path."""
    path = Path(scenario)
    if path.suffix != ".xml":
        path = SCENARIOS / f"{scenario}.xml"
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def sipp_data_file(name: str = "g711a.pcap") -> Path | None:
    """A data file shipped with SIPp (g711a.pcap, dtmf_2833_1.pcap...), found at run time.

    Looks in $SIPP_DATA_DIR, then in share/sip-tester and share/sipp next to
    the sipp program's prefix (Debian's sip-tester), then in what dpkg
    says the sip-tester package installed.
    """
    candidates: list[Path] = []
    if os.environ.get("SIPP_DATA_DIR"):
        candidates.append(Path(os.environ["SIPP_DATA_DIR"]) / name)
    program = shutil.which("sipp")
    if program:
        prefix = Path(program).resolve().parent.parent
        candidates += [prefix / "share" / "sip-tester" / name, prefix / "share" / "sipp" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if shutil.which("dpkg"):
        listing = subprocess.run(["dpkg", "-L", "sip-tester"], capture_output=True, text=True)
        for line in listing.stdout.splitlines():
            if line.endswith("/" + name) and Path(line).is_file():
                return Path(line)
    return None


def write_users(workdir: Path, users: Sequence[str], name: str) -> Path:
    """An -inf CSV file: SEQUENTIAL, then one "user;password;..." line per call."""
    path = Path(workdir) / f"{name}.csv"
    path.write_text("SEQUENTIAL\n" + "".join(line + "\n" for line in users))
    return path


def sipp_command(scenario: str | Path, remote_port: int | None, users: Sequence[str] | None, workdir: Path,
                 *extra: str, tag: str, local_port: int = 0, calls: int | None = None,
                 remote_host: str = "127.0.0.1", recv_timeout_ms: int = 10000,
                 trace_msg: bool = True) -> list[str]:
    workdir = Path(workdir)
    args = ["sipp"]
    if remote_port is not None:
        args.append(f"{remote_host}:{remote_port}")
    args += ["-sf", str(scenario_path(scenario)), "-i", "127.0.0.1", "-p", str(local_port), "-nostdin",
             "-recv_timeout", str(recv_timeout_ms),
             "-trace_stat", "-stf", str(workdir / f"{tag}_stat.csv"),
             "-trace_err", "-error_file", str(workdir / f"{tag}_errors.log")]
    if trace_msg:
        args += ["-trace_msg", "-message_file", str(workdir / f"{tag}_messages.log")]
    if users:
        args += ["-inf", str(write_users(workdir, users, tag))]
    if calls is None:
        calls = len(users) if users else 1
    args += ["-m", str(calls), *extra]
    return args


def run_sipp(scenario: str | Path, remote_port: int | None, users: Sequence[str] | None, workdir: Path,
             *extra: str, background: bool = False, local_port: int | None = None, calls: int | None = None,
             timeout: float = 60, recv_timeout_ms: int = 10000, trace_msg: bool = True,
             remote_host: str = "127.0.0.1") -> subprocess.CompletedProcess | subprocess.Popen:
    """Run one SIPp scenario; a CompletedProcess, or with background=True a Popen.

    scenario: a name in tests/peers/scenarios ("uac_call") or a path.
    remote_port: the peer (the PBX, or a SIPp UAS); None for a UAS that
    only waits for calls.  users: the -inf lines ("user;password;callee"),
    or None; -m is their number unless calls is given.  local_port: -p
    (default: a free port; pass 0 to let SIPp choose, which it does from 5060
    upwards).  extra: more sipp arguments ("-d", "1000", "-set",
    "challenge", "1", "-key", "pcap", path...).

    A background run returns at once, after its SIP port is bound when it
    is known; the Popen carries .sipp_tag, .sipp_workdir and .sipp_port.
    Collect it with wait_sipp() (or stop_sipp()).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{Path(scenario).stem}_{next(_runs)}"
    if local_port is None:
        local_port = free_port(also_tcp=False)
    args = sipp_command(scenario, remote_port, users, workdir, *extra, tag=tag, local_port=local_port, calls=calls,
                        remote_host=remote_host, recv_timeout_ms=recv_timeout_ms, trace_msg=trace_msg)
    if not background:
        try:
            result = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as expired:
            result = subprocess.CompletedProcess(args, -9, _text(expired.stdout), _text(expired.stderr)
                                                 + f"\n[sipp killed after {timeout}s]")
        result.sipp_tag, result.sipp_workdir, result.sipp_port = tag, workdir, local_port
        return result
    out = (workdir / f"{tag}.out").open("wb")
    err = (workdir / f"{tag}.err").open("wb")
    try:
        process = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    finally:
        out.close()
        err.close()
    process.sipp_tag, process.sipp_workdir, process.sipp_port = tag, workdir, local_port
    if local_port and not wait_udp_bound(local_port, 5.0, process):
        stop_sipp(process)
        raise RuntimeError(f"sipp {scenario} did not bind port {local_port}:\n{sipp_report(process)}")
    return process


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def wait_sipp(process: subprocess.Popen, timeout: float = 30) -> subprocess.CompletedProcess:
    """Wait for a background SIPp (killed after timeout); its output as a CompletedProcess."""
    try:
        returncode = process.wait(timeout)
        note = ""
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        returncode, note = -9, f"\n[sipp killed after {timeout}s]"
    workdir, tag = process.sipp_workdir, process.sipp_tag
    result = subprocess.CompletedProcess(
        process.args, returncode,
        (workdir / f"{tag}.out").read_text(errors="replace"),
        (workdir / f"{tag}.err").read_text(errors="replace") + note,
    )
    result.sipp_tag, result.sipp_workdir, result.sipp_port = tag, workdir, process.sipp_port
    return result


def stop_sipp(process: subprocess.Popen) -> None:
    """Stop a background SIPp that is still running (SIGTERM, then SIGKILL)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sipp_file(run, suffix: str) -> str:
    """The text of one trace of a run ("errors.log", "messages.log", "stat.csv"); "" if absent."""
    path = Path(run.sipp_workdir) / f"{run.sipp_tag}_{suffix}"
    return path.read_text(errors="replace") if path.exists() else ""


def sipp_report(run, tail: int = 3000) -> str:
    """What to show when a SIPp run did not end as expected."""
    if isinstance(run, subprocess.Popen):
        workdir, tag = run.sipp_workdir, run.sipp_tag
        out = (workdir / f"{tag}.err").read_text(errors="replace") if (workdir / f"{tag}.err").exists() else ""
        status = run.poll()
    else:
        out, status = run.stderr or "", run.returncode
    parts = [f"sipp {run.sipp_tag}: exit status {status}", out[-tail:]]
    for suffix in ("errors.log", "messages.log"):
        text = sipp_file(run, suffix)
        if text:
            parts.append(f"--- {suffix} (end)\n{text[-tail:]}")
    return "\n".join(parts)


def wait_udp_bound(port: int, timeout: float = 5.0, process: subprocess.Popen | None = None) -> bool:
    """Wait until some socket is bound to UDP `port` (Linux: /proc/net/udp), without touching it.

    Elsewhere, waits half a second.  False if `process` exits or time runs out.
    """
    table = Path("/proc/net/udp")
    if not table.exists():
        time.sleep(0.5)
        return process is None or process.poll() is None
    wanted = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 1 and fields[1].endswith(wanted):
                return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def register_then_uas(pbx, user: str, password: str, uas_scenario: str, workdir: Path, port: int | None = None,
                      extra: Sequence[str] = (), calls: int = 1, timeout: float = 15) -> subprocess.Popen:
    """Register `user` from a local port, then start a SIPp UAS on that port; its Popen.

    pbx: a PBXProcess (or its SIP port).  The REGISTER (register.xml, one
    call) must succeed, else RuntimeError.  The UAS scenario then listens on
    the registered port for `calls` calls (extra: more sipp arguments,
    "-d", "2000"...); the PBX's INVITEs to that contact reach it.
    """
    pbx_port = getattr(pbx, "sip_port", pbx)
    port = port or free_port(also_tcp=False)
    registered = run_sipp("register", pbx_port, [f"{user};{password}"], workdir, "-max_non_invite_retrans", "3",
                          local_port=port, timeout=timeout, recv_timeout_ms=5000)
    if registered.returncode != 0:
        raise RuntimeError(f"REGISTER of {user} from port {port} failed:\n{sipp_report(registered)}")
    return run_sipp(uas_scenario, pbx_port, None, workdir, *extra, background=True, local_port=port, calls=calls)


def message_blocks(messages_log: str) -> list[str]:
    """The SIP messages of a -trace_msg log, each without SIPp's banner lines."""
    blocks = re.split(r"^-{10,}.*$", messages_log, flags=re.M)
    messages = []
    for block in blocks:
        lines = block.strip("\n").splitlines()
        while lines and (not lines[0].strip() or re.match(r"^(UDP|TCP|TLS|SCTP) message (sent|received)", lines[0])):
            lines.pop(0)
        if lines:
            messages.append("\n".join(lines))
    return messages


def digest_response_ok(request: str, password: str, header: str = "Proxy-Authorization") -> bool:
    """Whether the MD5 digest in `header` of a request (as text) was made with `password`.

    RFC 2617 / 7616 with or without qop=auth; the uri= of the header is used
    as sent (SIPp puts sip:REMOTE_IP:REMOTE_PORT there, not the Request-URI).
    """
    method = request.split(" ", 1)[0]
    match = re.search(rf"^{header}:\s*Digest\s+(.*)$", request, flags=re.M | re.I)
    if not match:
        return False
    params = dict(
        (key.lower(), value if value else bare)
        for key, value, bare in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', match.group(1))
    )

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{params.get('username')}:{params.get('realm')}:{password}")
    ha2 = md5(f"{method}:{params.get('uri')}")
    if params.get("qop"):
        expected = md5(f"{ha1}:{params.get('nonce')}:{params.get('nc')}:{params.get('cnonce')}:{params['qop']}:{ha2}")
    else:
        expected = md5(f"{ha1}:{params.get('nonce')}:{ha2}")
    return params.get("response", "").lower() == expected


def write_rtp_pcap(path: str | Path, pcm: bytes, codec: str = "PCMU", payload_type: int | None = None,
                   ptime: int = 20, ssrc: int = 0x5EED1234, src_port: int = 40000, dst_port: int = 40002) -> Path:
    """Write 8 kHz s16le `pcm` as a pcap of G.711 RTP packets, one every `ptime` ms, for SIPp's play_pcap_audio.

    Ethernet / IPv4 / UDP framing (what SIPp's own g711a.pcap uses); SIPp
    replaces the addresses and ports when it plays the file, and keeps the
    RTP header (sequence numbers from 1, timestamps from 0, `ssrc`) and the
    packet times.  codec: "PCMU" (payload type 0 unless given) or "PCMA" (8).
    """
    from pbx.media import g711  # the PBX's codec tables: the same bytes phones decode

    encode = g711.encoder(codec)
    if payload_type is None:
        payload_type = 0 if codec.upper() == "PCMU" else 8
    frame = 8 * ptime  # samples per packet
    payload = encode(pcm[:len(pcm) - len(pcm) % 2])
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # link type 1: Ethernet
    for index, start in enumerate(range(0, len(payload) - frame + 1, frame)):
        rtp = struct.pack("!BBHII", 0x80, payload_type & 0x7F, (index + 1) & 0xFFFF, start & 0xFFFFFFFF, ssrc)
        rtp += payload[start:start + frame]
        udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(rtp), 0) + rtp
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), index & 0xFFFF, 0, 64, 17, 0,
                                   bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])))
        words = struct.unpack("!10H", ip)
        checksum = sum(words)
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
        ip[10:12] = struct.pack("!H", ~checksum & 0xFFFF)
        packet = b"\x00" * 12 + b"\x08\x00" + bytes(ip) + udp
        micros = index * ptime * 1000
        out.append(struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(packet), len(packet)) + packet)
    path = Path(path)
    path.write_bytes(b"".join(out))
    return path


def write_tone_pcap(path: str | Path, frequency: float, seconds: float, amplitude: float = 0.5,
                    codec: str = "PCMU") -> Path:
    """A sine tone as a pcap of G.711 RTP (see write_rtp_pcap)."""
    count = int(round(seconds * 8000))
    step = 2.0 * math.pi * frequency / 8000
    pcm = struct.pack(f"<{count}h", *(round(amplitude * 32767 * math.sin(step * n)) for n in range(count)))
    return write_rtp_pcap(path, pcm, codec)


# ---------------------------------------------------------------- RTP on loopback

class RtpSniffer:
    """Count RTP packets crossing the loopback interface (needs root or CAP_NET_RAW).

        with RtpSniffer() as rtp:
            ... a call ...
        assert rtp.count(payload_type=8) > 100
        rtp.count(dst_port=6000)

    Packets are taken as RTP when they are UDP with version 2 in the first
    byte and a payload type that is not RTCP's (72-76); SIP text never has
    version bits 2.  Raises PermissionError when it cannot open its socket.
    """

    _PACKET_OUTGOING = 4

    def __init__(self, interface: str = "lo") -> None:
        self.interface = interface
        self.packets: list[tuple[int, int, int]] = []  # (src port, dst port, payload type)
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RtpSniffer:
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self._socket.bind((self.interface, 0))
        self._socket.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.1)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._socket is not None:
            self._socket.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._socket.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if address[2] == self._PACKET_OUTGOING:  # loopback shows each packet twice
                continue
            self._parse(frame)

    def _parse(self, frame: bytes) -> None:
        if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
            return
        ip = frame[14:]
        header_length = (ip[0] & 0x0F) * 4
        if ip[9] != 17:  # UDP
            return
        udp = ip[header_length:]
        src, dst = struct.unpack("!HH", udp[:4])
        rtp = udp[8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            return
        payload_type = rtp[1] & 0x7F
        if 72 <= payload_type <= 76:
            return
        self.packets.append((src, dst, payload_type))

    def count(self, payload_type: int | None = None, dst_port: int | None = None, src_port: int | None = None) -> int:
        return sum(
            1 for src, dst, pt in list(self.packets)
            if (payload_type is None or pt == payload_type) and (dst_port is None or dst == dst_port)
            and (src_port is None or src == src_port)
        )


class CapturedRtp(NamedTuple):
    time: float  # when it was seen: time.monotonic() for a live capture, the capture time in a pcap file
    src_port: int
    dst_port: int
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


class RtpCapture(RtpSniffer):
    """An RtpSniffer that also keeps every RTP packet it sees (`captured`), to check what a
    phone was sent: which streams (SSRC) in which order, and the audio itself.

        with RtpCapture(dst_ports=range(20000, 20050)) as rtp:
            ... a call ...
        music = [p for p in rtp.captured if p.ssrc != caller_ssrc]
        samples = decode_g711(music)

    dst_ports: keep only packets to these ports (all when None).  Needs root or
    CAP_NET_RAW, like RtpSniffer.
    """

    def __init__(self, interface: str = "lo", dst_ports=None) -> None:
        super().__init__(interface)
        self.dst_ports = dst_ports
        self.captured: list[CapturedRtp] = []

    def _parse(self, frame: bytes) -> None:
        packet = rtp_in_frame(frame, time.monotonic())
        if packet is None or (self.dst_ports is not None and packet.dst_port not in self.dst_ports):
            return
        self.packets.append((packet.src_port, packet.dst_port, packet.payload_type))
        self.captured.append(packet)


def rtp_in_frame(frame: bytes, seen: float) -> CapturedRtp | None:
    """The RTP packet in an Ethernet frame (IPv4, UDP), or None (RTCP, not UDP, not RTP version 2)."""
    if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    header_length = (ip[0] & 0x0F) * 4
    if ip[9] != 17:  # UDP
        return None
    udp = ip[header_length:]
    src, dst, length = struct.unpack("!HHH", udp[:6])
    rtp = udp[8:length]
    if len(rtp) < 12 or rtp[0] >> 6 != 2:
        return None
    payload_type = rtp[1] & 0x7F
    if 72 <= payload_type <= 76:  # RTCP
        return None
    start = 12 + 4 * (rtp[0] & 0x0F)
    if rtp[0] & 0x10 and len(rtp) >= start + 4:  # header extension
        start += 4 + 4 * struct.unpack("!H", rtp[start + 2:start + 4])[0]
    end = len(rtp) - (rtp[-1] if rtp[0] & 0x20 else 0)  # padding
    sequence, timestamp, ssrc = struct.unpack("!HII", rtp[2:12])
    return CapturedRtp(seen, src, dst, payload_type, sequence, timestamp, ssrc, bool(rtp[1] & 0x80),
                       bytes(rtp[start:end]))


def read_rtp_pcap(path: str | Path) -> list[CapturedRtp]:
    """The RTP packets of a pcap file (Ethernet, IPv4, UDP: what SIPp plays), with their capture times."""
    data = Path(path).read_bytes()
    order = ">" if data[:4] == b"\xa1\xb2\xc3\xd4" else "<"
    packets: list[CapturedRtp] = []
    offset = 24
    while offset + 16 <= len(data):
        seconds, micros, length, _ = struct.unpack_from(f"{order}IIII", data, offset)
        packet = rtp_in_frame(data[offset + 16:offset + 16 + length], seconds + micros / 1e6)
        offset += 16 + length
        if packet is not None:
            packets.append(packet)
    return packets


def ssrc_runs(packets: Sequence[CapturedRtp]) -> list[tuple[int, list[CapturedRtp]]]:
    """Consecutive packets of one stream: [(ssrc, its packets)], in arrival order."""
    runs: list[tuple[int, list[CapturedRtp]]] = []
    for packet in packets:
        if runs and runs[-1][0] == packet.ssrc:
            runs[-1][1].append(packet)
        else:
            runs.append((packet.ssrc, [packet]))
    return runs


def decode_g711(packets: Sequence[CapturedRtp], codec: str = "PCMU") -> list[float]:
    """The audio of G.711 packets in the order given, as samples in -1.0..1.0."""
    from pbx.media import g711

    pcm = g711.decoder(codec)(b"".join(p.payload for p in packets))
    return [v / 32768.0 for v in struct.unpack(f"<{len(pcm) // 2}h", pcm)]


# ---------------------------------------------------------------- baresip

def rtp_ports_for(sip_port: int, second: bool = False) -> tuple[int, int]:
    """An RTP port range for a phone: 20000-29999, outside the PBX's test ranges
    (40000 and up, see pbxproc) and Linux's ephemeral ports."""
    base = 20000 + (sip_port % 100) * 100 + (50 if second else 0)
    return base, base + 48


class Phone(Baresip):
    """A baresip whose microphone is a WAV file (a tone by default) and whose audio is recorded.

    directory, user, password, registrar_port (where the account points:
    the PBX, or for a direct call anything), sip_port: as for Baresip.
    tone: the frequency to play (a WAV of tone_seconds is written into
    directory), or wav: a WAV file to play instead.  regint=0: no
    REGISTER.  The recordings go to directory/recordings.
    """

    def __init__(self, directory: Path, user: str, password: str, registrar_port: int, sip_port: int, *,
                 tone: float | None = 440.0, wav: Path | None = None, tone_seconds: float = 60.0,
                 rtp_ports: tuple[int, int] | None = None, regint: int = 60, extra_config: str = "") -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if wav is None:
            wav = write_tone(directory / f"tone-{tone:g}Hz.wav", tone, tone_seconds)
        self.wav = Path(wav)
        self.recordings = directory / "recordings"
        self.recordings.mkdir(exist_ok=True)
        super().__init__(
            directory, user, password, registrar_port, sip_port,
            rtp_ports=rtp_ports or rtp_ports_for(sip_port), regint=regint,
            modules=("g711.so", "aufile.so", "sndfile.so"),
            extra_config=(
                "module_app menu.so\n"
                f"audio_source aufile,{self.wav}\n"
                f"snd_path {self.recordings}\n"
                + extra_config
            ),
        )
        self.user, self.sip_port = user, sip_port

    def recording(self, direction: str = "dec") -> Path | None:
        """The newest recording: "dec" is what the phone received, "enc" what it sent."""
        found = sorted(self.recordings.glob(f"*-{direction}.wav"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def registered(self) -> bool:
        """Whether baresip logged a successful registration ("200 OK ... binding")."""
        return bool(re.search(r"\b200 OK\b.*binding", self.log()))

    def established(self) -> bool:
        return "Call established" in self.log()


def heard(phone: Phone) -> dict:
    """analyse() of what the phone received, or {} when nothing was recorded."""
    path = phone.recording("dec")
    return analyse(path) if path else {}


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def baresip_call(workdir: Path, seconds: float = 4, registrar_port: int | None = None,
                 caller: tuple[str, str, float] = ("1001", "secret1001", 440.0),
                 callee: tuple[str, str, float] = ("1002", "secret1002", 1000.0),
                 register_timeout: float = 10) -> tuple[Phone, Phone]:
    """One call from a baresip to another, each playing its tone; both phones, stopped.

    caller/callee: (user, password, tone Hz).  With registrar_port (the
    PBX), both register there and the caller dials
    sip:<callee>@127.0.0.1:<registrar_port> once the callee is registered;
    without it, neither registers and the caller dials the callee's own
    SIP port.  The caller hangs up when its baresip quits, `seconds` after
    it started.  Recordings: phone.recording("dec"), heard(phone).
    """
    workdir = Path(workdir)
    caller_port, callee_port = free_port(also_tcp=False), free_port(also_tcp=False)
    while callee_port == caller_port:
        callee_port = free_port(also_tcp=False)
    direct = registrar_port is None
    regint = 0 if direct else 600
    b = Phone(workdir / f"phone-{callee[0]}", callee[0], callee[1], caller_port if direct else registrar_port,
              callee_port, tone=callee[2], tone_seconds=seconds + 30, regint=regint,
              rtp_ports=rtp_ports_for(callee_port, second=True))
    a = Phone(workdir / f"phone-{caller[0]}", caller[0], caller[1], callee_port if direct else registrar_port,
              caller_port, tone=caller[2], tone_seconds=seconds + 30, regint=regint,
              rtp_ports=rtp_ports_for(caller_port))
    b.start(int(seconds + register_timeout + 10))
    try:
        if direct:
            wait_udp_bound(callee_port, 5.0, b.process)
        elif not wait_until(b.registered, register_timeout):
            raise RuntimeError(f"{callee[0]} did not register:\n{b.log()[-3000:]}")
        target = f"sip:{callee[0]}@127.0.0.1:{callee_port if direct else registrar_port}"
        a.start(int(round(seconds)), f"/dial {target}")
        a.wait(seconds + 15)
        time.sleep(0.5)  # the BYE reaches the callee, which closes its recordings
    finally:
        b.stop()
        a.stop()
    return a, b
