"""Every RFC 4475 / RFC 5118 torture message, sent to the running PBX over UDP.

Each must get the answer expected.tsv allows (or none where dropping is
allowed), and the server must answer an OPTIONS right after it.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from conformance_data import cases
from pbx.sip.errors import SIPError
from pbx.sip.message import parse_datagram
from pbxproc import PBXProcess, options_ping

# An authenticating registrar answers a well-formed REGISTER of a stranger
# with a challenge (RFC 4475 §3.3.7 names 401 as the registrar answer).
REGISTRAR_PROCESSING = {"respond-200", "respond-401"}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory):
    # Several torture messages share a branch, sent-by and method, which makes
    # them one transaction to an RFC 3261 server (the second one would get the
    # first one's answer as a retransmission). A tiny T1 lets those
    # transactions end (Timer J = 64*T1) between two such messages.
    with PBXProcess(tmp_path_factory.mktemp("conformance"), sip={"timer_t1": 0.01, "timer_t2": 0.04}) as process:
        process.seen_keys = set()
        yield process


def transaction_key(data: bytes):
    """RFC 3261 §17.2.3 key of a request, or None when it has none."""
    try:
        message = parse_datagram(data)
        via = message.vias[0]
        method = "INVITE" if message.method == "ACK" else message.method
        return via.branch, via.sent_by(), method
    except (SIPError, IndexError, AttributeError):
        return None


def exchange(port: int, data: bytes, wait: float = 0.6) -> list[int]:
    """Send one datagram; the status codes of every answer within `wait`."""
    codes = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(wait)
        s.sendto(data, ("127.0.0.1", port))
        try:
            while True:
                answer = s.recv(65535)
                m = re.match(rb"SIP/2\.0 (\d{3}) ", answer)
                assert m, answer[:80]
                codes.append(int(m.group(1)))
                if codes[-1] >= 200:
                    s.settimeout(0.1)  # a stray second answer would be a bug too
        except socket.timeout:
            pass
    return codes


def allowed(tokens: frozenset[str], is_register: bool, final: int | None) -> bool:
    for token in tokens:
        if token == "parse-ok" and final != 400:
            return True
        if token in ("drop", "drop-or-400") and final is None:
            return True
        if token in ("reject-400", "drop-or-400") and final == 400:
            return True
        if token.startswith("respond-"):
            if final == int(token[8:]):
                return True
            if is_register and token in REGISTRAR_PROCESSING and final == 401:
                return True
    return False


@pytest.mark.peers
@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_torture_message_over_udp(pbx, case):
    key = transaction_key(case.data)
    if key is not None and key in pbx.seen_keys:
        time.sleep(1.0)
    pbx.seen_keys.add(key)
    codes = exchange(pbx.sip_port, case.data)
    finals = [c for c in codes if c >= 200]
    assert len(set(finals)) <= 1, codes  # an INVITE's final is retransmitted until ACK
    final = finals[0] if finals else None
    is_register = case.data.startswith(b"REGISTER ")
    assert allowed(case.tokens, is_register, final), f"{case.name}: answered {codes}, expected {sorted(case.tokens)}"
    answer = options_ping(pbx.sip_port, 1.0)
    assert answer is not None and answer.startswith(b"SIP/2.0 200"), answer
