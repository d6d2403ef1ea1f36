"""RTP port pairs from the configured range (`server.rtp_port_range_start/_end`).

RTP uses an even port and RTCP the odd one above it (RFC 3550 §11), so the
pool deals in even ports only. Ports go round-robin: a released port joins
the back of the queue, so a pair freed by one call is not handed to the next
call at once, while stale packets for the old call may still be in flight.
"""

from __future__ import annotations

from collections import deque


class NoPortsAvailable(Exception):
    """Every RTP port pair is in use (or could not be bound): the call gets 503."""


class PortPool:
    """Even RTP ports in [start, end] whose RTCP port (+1) is also in range.

    Some ports of the range may be held by other programs; the pool cannot
    know. When binding fails the relay calls `mark_unusable(port)` and then
    `allocate()` again. A port marked unusable goes to the back of the queue
    like a released one: it is tried again only after every other pair has
    had its turn, by which time the other program has often let it go. There
    is no permanent blacklist, because a port held by a short-lived client
    socket comes back.
    """

    def __init__(self, start: int, end: int) -> None:
        first = start + (start & 1)
        ports = range(first, end, 2)  # port + 1 <= end
        if not ports:
            raise ValueError(f"RTP port range {start}-{end} holds no even/odd port pair")
        self.start = start
        self.end = end
        self._free: deque[int] = deque(ports)
        self._in_use: set[int] = set()
        self.capacity = len(ports)
        self.bind_failures = 0

    def allocate(self) -> int:
        """An even port whose pair is not in use; raises NoPortsAvailable when none is left."""
        try:
            port = self._free.popleft()
        except IndexError:
            raise NoPortsAvailable(
                f"all {self.capacity} RTP port pairs of {self.start}-{self.end} are in use"
            ) from None
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        """Give a pair back; it is handed out again only after all the others."""
        try:
            self._in_use.remove(port)
        except KeyError:
            raise ValueError(f"RTP port {port} is not allocated") from None
        self._free.append(port)

    def mark_unusable(self, port: int) -> None:
        """An allocated pair could not be bound (another program has it): release it to the back."""
        self.release(port)
        self.bind_failures += 1

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def __contains__(self, port: object) -> bool:
        """Whether a port is currently allocated."""
        return port in self._in_use
