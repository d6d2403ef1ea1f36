"""The registrar through the SIP core, on a task.Clock and a fake socket."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.service import PBXService
from pbx.sip.transport import Peer
from pbx.store.extensions import make_record
from sipclient import authorization, challenge_params, parse, register

CONFIG = """
auth:
  realm: pbx
  algorithms: [MD5, SHA-256]
registrar:
  min_expires: 60
  max_expires: 3600
  default_expires: 600
"""


class Harness:
    def __init__(self, config_text: str = CONFIG) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.pbx = PBXService(parse_config(config_text), self.clock)
        self.pbx.core.ready = True
        self.pbx.directory.put(make_record("1001", "Alice", "pbx", "secret1001"))
        self.pbx.directory.put(make_record("1002", "Bob", "pbx", "secret1002"))
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.events: list[dict] = []
        self.pbx.events.subscribe("registration.changed", lambda name, fields: self.events.append(fields))

    def send(self, data: bytes, port: int = 5061):
        self.sent.clear()
        peer = Peer("UDP", "127.0.0.1", port, False, lambda d, addr: self.sent.append((d, addr)))
        self.pbx.core.datagram_received(data, peer)
        assert len(self.sent) == 1, self.sent
        return parse(self.sent[0][0])

    def register(self, user: str, password: str, algorithm: str = "MD5", **kwargs):
        cseq = kwargs.pop("cseq", 1)
        challenge = self.send(register(user, cseq=cseq, **kwargs))
        assert challenge.status == 401
        auth = authorization(challenge, user, password, algorithm=algorithm)
        return self.send(register(user, cseq=cseq + 1, authorization=auth, **kwargs))


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.pbx.transactions.stop()


def test_register_without_credentials_is_challenged_md5_first(h):
    response = h.send(register("1001"))
    assert response.status == 401
    algorithms = [v.split("algorithm=")[1].split(",")[0] for v in response.headers.values("WWW-Authenticate")]
    assert algorithms == ["MD5", "SHA-256"]
    assert challenge_params(response)["qop"] == "auth"


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_register_with_right_password(h, algorithm):
    response = h.register("1001", "secret1001", algorithm)
    assert response.status == 200
    assert response.headers.get_list("Contact") == ["<sip:1001@127.0.0.1:5061>;expires=3600"]
    [binding] = h.pbx.location.lookup("1001")
    assert (binding.source_host, binding.source_port, binding.user_agent) == ("127.0.0.1", 5061, "test-ua")
    assert h.events == [{"aor": "1001", "contacts": ["sip:1001@127.0.0.1:5061"]}]


def test_wrong_password_is_forbidden(h):
    assert h.register("1001", "nope").status == 403
    assert h.pbx.location.lookup("1001") == []


def test_unknown_user_looks_exactly_like_a_known_one(h):
    def shape(response):
        return [
            {k: v for k, v in challenge_params(response, alg).items() if k not in ("nonce",)}
            for alg in ("MD5", "SHA-256")
        ], response.status, response.reason

    known = h.send(register("1001"))
    unknown = h.send(register("1099"))
    assert shape(known) == shape(unknown)
    assert h.register("1099", "guess").status == h.register("1001", "guess").status == 403


def test_credentials_of_another_extension_are_refused(h):
    challenge = h.send(register("1002"))
    auth = authorization(challenge, "1001", "secret1001")
    assert h.send(register("1002", cseq=2, authorization=auth)).status == 403


def test_expires_zero_removes_binding(h):
    assert h.register("1001", "secret1001").status == 200
    response = h.register("1001", "secret1001", expires=0, cseq=3)
    assert response.status == 200
    assert response.headers.get_list("Contact") == []
    assert h.pbx.location.lookup("1001") == []


def test_star_removes_every_binding(h):
    h.register("1001", "secret1001", contact="<sip:1001@10.0.0.1:5060>")
    h.register("1001", "secret1001", contact="<sip:1001@10.0.0.2:5060>", cseq=3)
    assert len(h.pbx.location.lookup("1001")) == 2
    assert h.register("1001", "secret1001", contact="*", expires=0, cseq=5).status == 200
    assert h.pbx.location.lookup("1001") == []


def test_star_with_nonzero_expires_is_bad_request(h):
    assert h.register("1001", "secret1001", contact="*", expires=60).status == 400


def test_interval_too_brief(h):
    response = h.register("1001", "secret1001", expires=10)
    assert response.status == 423
    assert response.headers.get("Min-Expires") == "60"


def test_expires_parameter_wins_and_is_capped(h):
    response = h.register("1001", "secret1001", contact="<sip:1001@10.0.0.1>;expires=99999", expires=120)
    assert response.headers.get_list("Contact") == ["<sip:1001@10.0.0.1>;expires=3600"]


def test_default_expires_when_none_given(h):
    response = h.register("1001", "secret1001", expires=None)
    assert response.headers.get_list("Contact") == ["<sip:1001@127.0.0.1:5061>;expires=600"]


def test_several_contacts_and_refresh(h):
    h.register("1001", "secret1001", contact="<sip:1001@10.0.0.1:5060>", call_id="a")
    h.clock.advance(100)
    h.register("1001", "secret1001", contact="<sip:1001@10.0.0.2:5060>", call_id="b")
    h.clock.advance(100)
    response = h.register("1001", "secret1001", contact="<sip:1001@10.0.0.1:5060>", call_id="a", cseq=3)
    assert sorted(response.headers.get_list("Contact")) == [
        "<sip:1001@10.0.0.1:5060>;expires=3600",
        "<sip:1001@10.0.0.2:5060>;expires=3500",
    ]


def test_bindings_expire_on_the_clock(h):
    h.register("1001", "secret1001", expires=60)
    h.events.clear()
    h.clock.advance(59)
    assert h.pbx.expire_bindings() is None and h.pbx.location.lookup("1001")
    h.clock.advance(2)
    h.pbx.expire_bindings()
    assert h.pbx.location.lookup("1001") == []
    assert h.events == [{"aor": "1001", "contacts": []}]


def test_query_returns_current_contacts(h):
    h.register("1001", "secret1001")
    response = h.register("1001", "secret1001", contact="", expires=None, cseq=3)
    assert response.headers.get_list("Contact") == ["<sip:1001@127.0.0.1:5061>;expires=3600"]


def test_stale_nonce_gets_stale_challenge(h):
    challenge = h.send(register("1001"))
    h.clock.advance(301)
    auth = authorization(challenge, "1001", "secret1001")
    response = h.send(register("1001", cseq=2, authorization=auth))
    assert response.status == 401
    assert challenge_params(response)["stale"].lower() == "true"


def test_replayed_nonce_count_is_rechallenged(h):
    challenge = h.send(register("1001"))
    auth = authorization(challenge, "1001", "secret1001")
    assert h.send(register("1001", cseq=2, authorization=auth)).status == 200
    replay = h.send(register("1001", cseq=2, authorization=auth))
    assert replay.status == 401


def test_foreign_nonce_after_restart_is_rechallenged_not_forbidden(h):
    other = Harness()
    challenge = other.send(register("1001"))
    other.pbx.transactions.stop()
    auth = authorization(challenge, "1001", "secret1001")
    assert h.send(register("1001", cseq=2, authorization=auth)).status == 401


def test_challenge_is_stateless(h):
    # RFC 3261 §8.2.7: a challenge keeps no transaction; a retransmission of
    # the request is simply challenged again, with a fresh nonce.
    data = register("1001", branch="z9hG4bKretrans")
    first = h.send(data)
    assert first.status == 401
    assert len(h.pbx.transactions) == 0
    again = h.send(data)
    assert again.status == 401
    assert again.headers.get("WWW-Authenticate") != first.headers.get("WWW-Authenticate")
    assert len(h.pbx.transactions) == 0


def test_retransmission_of_an_authenticated_register_gets_the_same_answer(h):
    challenge = h.send(register("1001"))
    data = register("1001", cseq=2, branch="z9hG4bKretrans2",
                    authorization=authorization(challenge, "1001", "secret1001"))
    first = h.send(data)
    assert first.status == 200
    assert len(h.pbx.transactions) == 1
    h.sent.clear()
    h.pbx.core.datagram_received(data, Peer("UDP", "127.0.0.1", 5061, False, lambda d, a: h.sent.append((d, a))))
    assert len(h.sent) == 1
    assert parse(h.sent[0][0]).status == 200
    assert parse(h.sent[0][0]).headers.get("To") == first.headers.get("To")  # the same response, same tag


def test_response_goes_to_source_port_with_rport(h):
    h.send(register("1001"), port=40000)
    data, addr = h.sent[0]
    assert addr == ("127.0.0.1", 40000)
    assert b"rport=40000" in data


def test_to_must_be_a_sip_uri(h):
    data = register("1001").replace(b"To: <sip:1001@127.0.0.1:5060>", b"To: <tel:+15551001>")
    assert h.send(data).status == 400


@pytest.mark.parametrize("contact", ['"Joe" <sip:joe@example.org>;;;;', "<sip:a@h", "sip:u@h?Route=x"])
def test_malformed_contact_is_400_after_authentication(h, contact):
    assert h.send(register("1001", contact=contact)).status == 401
    assert h.register("1001", "secret1001", contact=contact, cseq=3).status == 400


def test_refresh_emits_registration_refreshed_not_changed(h):
    refreshed: list[dict] = []
    h.pbx.events.subscribe("registration.refreshed", lambda name, fields: refreshed.append(fields))
    h.register("1001", "secret1001")
    assert refreshed == [] and len(h.events) == 1
    h.clock.advance(300)
    assert h.register("1001", "secret1001", cseq=3).status == 200
    assert refreshed == [{"aor": "1001", "contacts": ["sip:1001@127.0.0.1:5061"]}]
    assert len(h.events) == 1, "a refresh does not change the contact set"
    h.register("1001", "secret1001", expires=0, cseq=5)
    assert len(refreshed) == 1 and h.events[-1] == {"aor": "1001", "contacts": []}


def test_refused_register_emits_nothing(h):
    refreshed: list[dict] = []
    h.pbx.events.subscribe("registration.refreshed", lambda name, fields: refreshed.append(fields))
    h.register("1001", "secret1001")
    assert h.register("1001", "wrong", cseq=3).status == 403
    assert h.register("1001", "secret1001", expires=10, cseq=5).status == 423
    assert refreshed == [] and len(h.events) == 1
