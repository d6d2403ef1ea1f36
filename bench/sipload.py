"""A minimal SIP UAC and UAS over UDP for the media benchmark.  Standard library only.

Not a SIP stack: just enough to set up calls through the PBX one after the
other and tear them down, on 127.0.0.1.

    sip = SipLoad("127.0.0.1", pbx_port)
    sip.register_uas("2000", "pw2000")        # REGISTER, 401, REGISTER+digest, 200
    legs = sip.setup_calls([(caller, password, a_rtp_port, b_rtp_port), ...])
    # legs[i] = (relay port facing a, relay port facing b)
    sip.hangup_all()                           # BYE from every caller
    sip.close()

One UAC socket places every call (caller 100000+i, digest answered to the
407 with MD5 and qop=auth); one UAS socket, registered as the callee,
answers every INVITE at once with 200 and an SDP naming that call's b
socket (calls are set up one at a time, so the INVITE the UAS gets belongs
to the call being set up).
"""

import hashlib
import os
import re
import select
import socket
import time

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
           "l": "content-length", "c": "content-type"}


def readable(socks, timeout):
    """The sockets of `socks` with data, waiting up to `timeout` s (poll:
    select() fails on descriptors above 1023, which many RTP sockets reach)."""
    poller = select.poll()
    by_fd = {}
    for s in socks:
        poller.register(s.fileno(), select.POLLIN)
        by_fd[s.fileno()] = s
    return [by_fd[fd] for fd, _ in poller.poll(max(0.0, timeout) * 1000.0)]


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


class Message:
    def __init__(self, data):
        text = data.decode("utf-8", errors="replace")
        head, _, self.body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.first = lines[0]
        self.headers = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((COMPACT.get(name, name), value.strip()))
        parts = self.first.split(" ", 2)
        self.is_response = parts[0] == "SIP/2.0"
        self.status = int(parts[1]) if self.is_response else None
        self.method = None if self.is_response else parts[0]

    def get(self, name):
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def all(self, name):
        return [v for n, v in self.headers if n == name]

    @property
    def call_id(self):
        return self.get("call-id")

    @property
    def cseq_method(self):
        return (self.get("cseq") or " ").split()[-1]

    def sdp_port(self):
        m = re.search(r"^m=audio (\d+)", self.body, re.M)
        return int(m.group(1)) if m else None


def digest_header(challenge, method, uri, user, password):
    """The Authorization value for a Digest challenge (MD5, qop=auth if offered)."""
    params = dict((k.lower(), v1 or v2) for k, v1, v2 in re.findall(
        r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', challenge))
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    ha1 = md5("%s:%s:%s" % (user, realm, password))
    ha2 = md5("%s:%s" % (method, uri))
    out = ('Digest username="%s", realm="%s", nonce="%s", uri="%s", '
           'algorithm=MD5' % (user, realm, nonce, uri))
    if "auth" in (params.get("qop") or "").split(","):
        cnonce, nc = os.urandom(8).hex(), "00000001"
        resp = md5("%s:%s:%s:%s:auth:%s" % (ha1, nonce, nc, cnonce, ha2))
        out += ', qop=auth, nc=%s, cnonce="%s"' % (nc, cnonce)
    else:
        resp = md5("%s:%s:%s" % (ha1, nonce, ha2))
    out += ', response="%s"' % resp
    if params.get("opaque"):
        out += ', opaque="%s"' % params["opaque"]
    return out


def sdp(user, port):
    return ("v=0\r\no=%s 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            "t=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=ptime:20\r\na=sendrecv\r\n" % (user, port))


class SipLoad:
    def __init__(self, host, port, timeout=10.0):
        self.host, self.port = host, port
        self.server = (host, port)
        self.timeout = timeout
        self.uac = self._socket()
        self.uas = self._socket()
        self.uac_port = self.uac.getsockname()[1]
        self.uas_port = self.uas.getsockname()[1]
        self.seq = 0
        self.calls = []          # established: dict per call
        self.uas_answers = {}    # Call-ID at the UAS -> 200 bytes
        self.uas_current_port = None
        self.uas_invites = {}    # Call-ID at the UAS -> relay port for b

    def _socket(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((self.host, 0))
        return s

    def close(self):
        self.uac.close()
        self.uas.close()

    def _tag(self):
        self.seq += 1
        return "%x%x" % (os.getpid(), self.seq)

    # ---------------------------------------------------------- the loop

    def _wait(self, want, timeout=None):
        """Run the UAS until a message on the UAC socket satisfies want()."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("no answer from the PBX in time")
            for s in readable([self.uac, self.uas], left):
                data, addr = s.recvfrom(65535)
                msg = Message(data)
                if s is self.uas:
                    self._uas_handle(msg, data, addr)
                    continue
                if want(msg):
                    return msg

    def _uas_handle(self, msg, data, addr):
        if msg.is_response:
            return
        if msg.method == "INVITE":
            cid = msg.call_id
            answer = self.uas_answers.get(cid)
            if answer is None:
                self.uas_invites[cid] = msg.sdp_port()
                body = sdp("callee", self.uas_current_port)
                answer = self._response(msg, 200, "OK", body=body,
                                        to_tag="uas" + self._tag(),
                                        contact=self.uas_port)
                self.uas_answers[cid] = answer
            self.uas.sendto(answer, addr)
        elif msg.method == "ACK":
            return
        else:   # BYE, OPTIONS, anything: 200
            if msg.method == "BYE":
                self.uas_answers.pop(msg.call_id, None)
            self.uas.sendto(self._response(msg, 200, "OK"), addr)

    def _response(self, req, status, reason, body="", to_tag=None,
                  contact=None):
        lines = ["SIP/2.0 %d %s" % (status, reason)]
        lines += ["Via: " + v for v in req.all("via")]
        lines.append("From: " + req.get("from"))
        to = req.get("to")
        if to_tag and ";tag=" not in to:
            to += ";tag=" + to_tag
        lines.append("To: " + to)
        lines.append("Call-ID: " + req.call_id)
        lines.append("CSeq: " + req.get("cseq"))
        if contact:
            lines.append("Contact: <sip:callee@%s:%d>" % (self.host, contact))
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append("Content-Length: %d" % len(body.encode()))
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    # ---------------------------------------------------------- REGISTER

    def register_uas(self, user, password, expires=3600):
        cid = "reg-%s@bench" % self._tag()
        uri = "sip:%s:%d" % (self.host, self.port)
        tag = self._tag()
        auth = None
        for cseq in (1, 2):
            branch = "z9hG4bK-reg-" + self._tag()
            lines = ["REGISTER %s SIP/2.0" % uri,
                     "Via: SIP/2.0/UDP %s:%d;branch=%s;rport"
                     % (self.host, self.uas_port, branch),
                     "Max-Forwards: 70",
                     "From: <sip:%s@%s>;tag=%s" % (user, self.host, tag),
                     "To: <sip:%s@%s>" % (user, self.host),
                     "Call-ID: " + cid, "CSeq: %d REGISTER" % cseq,
                     "Contact: <sip:%s@%s:%d>" % (user, self.host,
                                                  self.uas_port),
                     "Expires: %d" % expires]
            if auth:
                lines.append("Authorization: " + auth)
            lines.append("Content-Length: 0")
            self.uas.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(),
                            self.server)
            msg = self._wait_uas_response(cid, cseq)
            if msg.status == 200:
                return
            if msg.status != 401 or auth:
                raise RuntimeError("REGISTER got %s" % msg.first)
            challenge = next(v for v in msg.all("www-authenticate")
                             if "MD5" in v.upper() or "algorithm" not in v)
            auth = digest_header(challenge, "REGISTER", uri, user, password)
        raise RuntimeError("REGISTER failed")

    def _wait_uas_response(self, cid, cseq):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if not readable([self.uas], 0.5):
                continue
            msg = Message(self.uas.recv(65535))
            if (msg.is_response and msg.call_id == cid
                    and msg.get("cseq").startswith("%d " % cseq)
                    and msg.status >= 200):
                return msg
        raise RuntimeError("no answer to REGISTER")

    # ---------------------------------------------------------- calls

    def _invite(self, call, cseq, auth=None):
        branch = "z9hG4bK-inv-" + self._tag()
        call["branch"] = branch
        lines = ["INVITE %s SIP/2.0" % call["uri"],
                 "Via: SIP/2.0/UDP %s:%d;branch=%s;rport"
                 % (self.host, self.uac_port, branch),
                 "Max-Forwards: 70",
                 "From: <sip:%s@%s>;tag=%s" % (call["user"], self.host,
                                               call["tag"]),
                 "To: <sip:2000@%s>" % self.host,
                 "Call-ID: " + call["cid"], "CSeq: %d INVITE" % cseq,
                 "Contact: <sip:%s@%s:%d>" % (call["user"], self.host,
                                              self.uac_port)]
        if auth:
            lines.append("Proxy-Authorization: " + auth)
        body = sdp(call["user"], call["a_port"])
        lines += ["Content-Type: application/sdp",
                  "Content-Length: %d" % len(body)]
        self.uac.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(),
                        self.server)

    def _ack(self, call, msg, cseq, branch=None):
        to = msg.get("to")
        uri = call["uri"]
        if msg.status == 200:
            m = re.search(r"<([^>]+)>", msg.get("contact") or "")
            if m:
                uri = m.group(1)
            branch = "z9hG4bK-ack-" + self._tag()
        lines = ["ACK %s SIP/2.0" % uri,
                 "Via: SIP/2.0/UDP %s:%d;branch=%s;rport"
                 % (self.host, self.uac_port, branch),
                 "Max-Forwards: 70",
                 "From: <sip:%s@%s>;tag=%s" % (call["user"], self.host,
                                               call["tag"]),
                 "To: " + to, "Call-ID: " + call["cid"],
                 "CSeq: %d ACK" % cseq, "Content-Length: 0"]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.uac.sendto(data, self.server)
        return data, uri, to

    def setup_call(self, user, password, a_port, b_port):
        """One call; returns (relay port for a, relay port for b)."""
        call = {"user": user, "a_port": a_port, "tag": self._tag(),
                "cid": "call-%s@bench" % self._tag(),
                "uri": "sip:2000@%s:%d" % (self.host, self.port)}
        self.uas_current_port = b_port
        before = set(self.uas_invites)
        self._invite(call, 1)
        msg = self._wait(lambda m: m.is_response and m.call_id == call["cid"]
                         and m.status >= 200)
        if msg.status != 407:
            raise RuntimeError("first INVITE got %s" % msg.first)
        self._ack(call, msg, 1, branch=call["branch"])
        challenge = next(v for v in msg.all("proxy-authenticate")
                         if "MD5" in v.upper() or "algorithm" not in v)
        self._invite(call, 2, digest_header(challenge, "INVITE", call["uri"],
                                            user, password))
        msg = self._wait(lambda m: m.is_response and m.call_id == call["cid"]
                         and m.cseq_method == "INVITE" and m.status >= 200)
        if msg.status != 200:
            raise RuntimeError("INVITE got %s" % msg.first)
        ack, uri, to = self._ack(call, msg, 2)
        call.update(ack=ack, target=uri, to=to)
        new = [c for c in self.uas_invites if c not in before]
        if len(new) != 1:
            raise RuntimeError("expected one INVITE at the UAS, got %d"
                               % len(new))
        leg_b = self.uas_invites[new[0]]
        leg_a = msg.sdp_port()
        self.calls.append(call)
        return leg_a, leg_b

    def setup_calls(self, specs):
        return [self.setup_call(*spec) for spec in specs]

    def hangup_all(self, timeout=10.0):
        """BYE from every caller (all sent at once); waits for the 200s."""
        pending = {}
        for call in self.calls:
            lines = ["BYE %s SIP/2.0" % call["target"],
                     "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-bye-%s;rport"
                     % (self.host, self.uac_port, self._tag()),
                     "Max-Forwards: 70",
                     "From: <sip:%s@%s>;tag=%s" % (call["user"], self.host,
                                                   call["tag"]),
                     "To: " + call["to"], "Call-ID: " + call["cid"],
                     "CSeq: 3 BYE", "Content-Length: 0"]
            self.uac.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(),
                            self.server)
            pending[call["cid"]] = call
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            try:
                self._wait(lambda m: m.is_response and m.cseq_method == "BYE"
                           and pending.pop(m.call_id, None) is not None,
                           timeout=max(0.1, deadline - time.monotonic()))
            except RuntimeError:
                break
        self.calls = []
        return len(pending)
