"""rtpengine for the media benchmark: start the userspace daemon, drive it over ng.

    engine = RtpEngine("/usr/bin/rtpengine", workdir)
    engine.start(ng_port)              # rtpengine --table=-1 ... in the foreground
    a_target, b_target = engine.create_session(call_id, a_port, b_port)
    engine.delete_session(call_id)
    engine.stop()

The ng protocol: UDP datagrams "COOKIE <bencoded dict>", answered with the
same cookie and a bencoded dict ("result": "ok").  A session is an "offer"
with the caller's SDP (rtpengine returns the SDP the callee must get: the
port the callee sends to) and an "answer" with the callee's SDP and to-tag
(it returns the port the caller sends to).  Standard library only.
"""

import os
import socket
import subprocess
import time

from register_bench import log, stop_process

HOST = "127.0.0.1"


def bencode(value):
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, (list, tuple)):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return (b"d" + b"".join(bencode(k) + bencode(v)
                                for k, v in sorted(value.items())) + b"e")
    raise TypeError(type(value))


def bdecode(data, i=0):
    """(value, next index); strings come back as str."""
    c = data[i:i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1:end]), end + 1
    if c == b"l":
        i, out = i + 1, []
        while data[i:i + 1] != b"e":
            v, i = bdecode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i, out = i + 1, {}
        while data[i:i + 1] != b"e":
            k, i = bdecode(data, i)
            v, i = bdecode(data, i)
            out[k] = v
        return out, i + 1
    colon = data.index(b":", i)
    n = int(data[i:colon])
    s = data[colon + 1:colon + 1 + n]
    return s.decode(errors="replace"), colon + 1 + n


def sdp(port, session):
    return ("v=0\r\no=- %d 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            "t=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=ptime:20\r\na=sendrecv\r\n" % (session, port))


def sdp_port(text):
    for line in text.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise RuntimeError("no m=audio in %r" % text)


class RtpEngine:
    name = "rtpengine"

    def __init__(self, program, workdir, port_min=40000, port_max=49999,
                 threads=None):
        self.program = program
        self.dir = os.path.join(workdir, "rtpengine")
        os.makedirs(self.dir, exist_ok=True)
        self.logpath = os.path.join(self.dir, "rtpengine.log")
        self.port_min, self.port_max = port_min, port_max
        self.threads = threads
        self.proc = None
        self.sock = None
        self.seq = 0

    def start(self, ng_port):
        self.ng = (HOST, ng_port)
        cmd = [self.program, "--config-file=none", "--table=-1",
               "--interface=" + HOST, "--listen-ng=%s:%d" % self.ng,
               "--port-min=%d" % self.port_min,
               "--port-max=%d" % self.port_max,
               "--foreground", "--log-stderr", "--log-level=4",
               "--pidfile=" + os.path.join(self.dir, "rtpengine.pid")]
        if self.threads:
            cmd.append("--num-threads=%d" % self.threads)
        log("+ " + " ".join(cmd))
        with open(self.logpath, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=self.dir)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("rtpengine exited with %s: %s" % (
                    self.proc.returncode, self._log_tail()))
            try:
                if self.command({"command": "ping"}, 0.3).get(
                        "result") == "pong":
                    return
            except (OSError, RuntimeError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("rtpengine did not answer ping: "
                           + self._log_tail())

    def _log_tail(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return "".join(f.readlines()[-10:])
        except OSError:
            return ""

    def command(self, params, timeout=5.0):
        self.seq += 1
        cookie = b"%d_%d" % (os.getpid(), self.seq)
        self.sock.settimeout(timeout)
        self.sock.sendto(cookie + b" " + bencode(params), self.ng)
        while True:
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                raise RuntimeError("no ng answer to %s" % params["command"])
            got, _, body = data.partition(b" ")
            if got == cookie:
                return bdecode(body)[0]

    def create_session(self, call_id, a_port, b_port):
        """Offer (a's SDP) and answer (b's SDP); (port a sends to, port b sends to)."""
        offer = self.command({"command": "offer", "call-id": call_id,
                              "from-tag": "a-" + call_id,
                              "sdp": sdp(a_port, 1),
                              "replace": ["origin", "session-connection"]})
        if offer.get("result") != "ok":
            raise RuntimeError("offer: %r" % offer)
        answer = self.command({"command": "answer", "call-id": call_id,
                               "from-tag": "a-" + call_id,
                               "to-tag": "b-" + call_id,
                               "sdp": sdp(b_port, 2),
                               "replace": ["origin", "session-connection"]})
        if answer.get("result") != "ok":
            raise RuntimeError("answer: %r" % answer)
        return sdp_port(answer["sdp"]), sdp_port(offer["sdp"])

    def delete_session(self, call_id):
        try:
            self.command({"command": "delete", "call-id": call_id,
                          "from-tag": "a-" + call_id}, 2.0)
        except RuntimeError:
            pass

    def stop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            stop_process(self.proc)
