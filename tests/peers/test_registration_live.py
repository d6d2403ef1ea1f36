"""Registration against the running PBX over UDP and TCP, and across a restart."""

from __future__ import annotations

import socket
import time

from pbx.sip.message import StreamFramer
from pbxproc import PBXProcess
from sipclient import authorization, parse, register


class UDPPhone:
    def __init__(self, pbx_port: int) -> None:
        self.pbx_port = pbx_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.port = self.sock.getsockname()[1]

    def request(self, data: bytes):
        self.sock.sendto(data, ("127.0.0.1", self.pbx_port))
        return parse(self.sock.recv(65535))

    def close(self) -> None:
        self.sock.close()


class TCPPhone:
    def __init__(self, pbx_port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", pbx_port), timeout=2)
        self.port = self.sock.getsockname()[1]
        self.framer = StreamFramer()

    def request(self, data: bytes):
        self.sock.sendall(data)
        while True:
            messages = self.framer.feed(self.sock.recv(65535))
            if messages:
                return messages[0]

    def close(self) -> None:
        self.sock.close()


def do_register(phone, pbx: PBXProcess, user: str, password: str, transport: str = "UDP", **kwargs):
    server = f"127.0.0.1:{pbx.sip_port}"
    common = dict(port=phone.port, server=server, **kwargs)
    data = register(user, **common)
    if transport == "TCP":
        data = data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    challenge = phone.request(data)
    assert challenge.status == 401
    auth = authorization(challenge, user, password, uri=f"sip:{server}")
    data = register(user, cseq=2, authorization=auth, **common)
    if transport == "TCP":
        data = data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    return phone.request(data)


def test_register_over_tcp(tmp_path):
    with PBXProcess(tmp_path) as pbx:
        phone = TCPPhone(pbx.sip_port)
        try:
            response = do_register(phone, pbx, "1002", "secret1002", "TCP")
            assert response.status == 200
            assert response.headers.get_list("Contact") == [f"<sip:1002@127.0.0.1:{phone.port}>;expires=3600"]
        finally:
            phone.close()


def test_tcp_framing_error_closes_only_that_connection(tmp_path):
    with PBXProcess(tmp_path) as pbx:
        bad = socket.create_connection(("127.0.0.1", pbx.sip_port), timeout=2)
        bad.sendall(b"REGISTER sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n")
        assert bad.recv(100) == b""  # closed by the PBX
        bad.close()
        phone = TCPPhone(pbx.sip_port)
        try:
            assert do_register(phone, pbx, "1001", "secret1001", "TCP").status == 200
        finally:
            phone.close()


def test_bindings_survive_a_restart(tmp_path):
    pbx = PBXProcess(tmp_path).start()
    phone = UDPPhone(pbx.sip_port)
    try:
        assert do_register(phone, pbx, "1001", "secret1001").status == 200
        time.sleep(1.5)  # written behind within a second
    finally:
        pbx.stop()
    restarted = PBXProcess(tmp_path, sip_port=pbx.sip_port).start()
    try:
        # A REGISTER without Contact is a query: the binding is still there.
        response = do_register(phone, restarted, "1001", "secret1001", contact="", expires=None, call_id="query-1")
        assert response.status == 200
        [contact] = response.headers.get_list("Contact")
        assert contact.startswith(f"<sip:1001@127.0.0.1:{phone.port}>;expires=")
        assert "PBX ready: 3 extensions, 1 bindings restored" in restarted.log()
    finally:
        phone.close()
        restarted.stop()


def test_malformed_datagrams_never_stop_the_listener(tmp_path):
    with PBXProcess(tmp_path) as pbx:
        phone = UDPPhone(pbx.sip_port)
        try:
            for junk in (b"\x00" * 10, b"\xff\xfe garbage", b"INVITE\r\n\r\n", b"SIP/2.0 200\r\n\r\n", bytes(range(256)) * 20):
                phone.sock.sendto(junk, ("127.0.0.1", pbx.sip_port))
            assert do_register(phone, pbx, "1003", "secret1003").status == 200
        finally:
            phone.close()
