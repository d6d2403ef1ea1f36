"""The RTP port pool: even ports, pairs never handed out twice, round-robin reuse."""

from __future__ import annotations

import pytest

from pbx.media.portpool import NoPortsAvailable, PortPool


def test_even_ports_whose_rtcp_port_is_in_range():
    pool = PortPool(10000, 10009)
    ports = [pool.allocate() for _ in range(pool.capacity)]
    assert ports == [10000, 10002, 10004, 10006, 10008]
    assert PortPool(10001, 10010).allocate() == 10002  # an odd start rounds up
    assert PortPool(10000, 10008).capacity == 4  # 10008 would need 10009 for RTCP
    with pytest.raises(ValueError):
        PortPool(10000, 10000)


def test_exhaustion_and_release():
    pool = PortPool(20000, 20005)
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    assert len({a, b, c}) == 3 and pool.available == 0 and pool.in_use == 3
    with pytest.raises(NoPortsAvailable):
        pool.allocate()
    pool.release(b)
    assert b not in pool and pool.available == 1
    assert pool.allocate() == b
    with pytest.raises(NoPortsAvailable):
        pool.allocate()


def test_a_released_port_is_not_reused_at_once():
    pool = PortPool(30000, 30099)
    first = pool.allocate()
    pool.release(first)
    seen = [pool.allocate() for _ in range(pool.capacity - 1)]
    assert first not in seen  # every other pair comes first
    assert pool.allocate() == first


def test_never_the_same_port_twice_while_in_use():
    pool = PortPool(40000, 40019)
    held: set[int] = set()
    for step in range(200):
        if step % 3 == 2:
            pool.release(held.pop())
        else:
            try:
                port = pool.allocate()
            except NoPortsAvailable:
                pool.release(held.pop())
                continue
            assert port not in held and port % 2 == 0
            held.add(port)
    assert pool.in_use == len(held)


def test_release_of_a_port_not_allocated_is_an_error():
    pool = PortPool(10000, 10010)
    port = pool.allocate()
    pool.release(port)
    with pytest.raises(ValueError):
        pool.release(port)
    with pytest.raises(ValueError):
        pool.release(12345)


def test_mark_unusable_sends_the_port_to_the_back():
    pool = PortPool(10000, 10009)
    taken = pool.allocate()  # another program has 10000
    pool.mark_unusable(taken)
    assert pool.bind_failures == 1 and taken not in pool
    assert [pool.allocate() for _ in range(4)] == [10002, 10004, 10006, 10008]
    assert pool.allocate() == taken  # tried again only after all the others
