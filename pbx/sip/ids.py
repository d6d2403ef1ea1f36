"""Random identifiers (tags, branches, Call-IDs, nonce salt) from buffered CSPRNG reads.

`os.urandom` is a system call each time and a call needs about a dozen
identifiers; reading the kernel's random source 4 KiB at a time gives the
same unpredictable bytes for a fraction of the cost. A forked child starts
with an empty buffer, so two processes never hand out the same bytes.
"""

from __future__ import annotations

import os

__all__ = ["random_bytes", "random_hex"]

_BUFFER_SIZE = 4096
_buffer = b""
_position = 0


def random_bytes(count: int) -> bytes:
    """`count` bytes from the kernel's CSPRNG, never handed out twice."""
    global _buffer, _position
    if count > _BUFFER_SIZE:
        return os.urandom(count)
    end = _position + count
    if end > len(_buffer):
        _buffer, _position, end = os.urandom(_BUFFER_SIZE), 0, count
    chunk = _buffer[_position:end]
    _position = end
    return chunk


def random_hex(count: int) -> str:
    """`count` random bytes as 2 x `count` lower-case hex digits."""
    return random_bytes(count).hex()


def _forget() -> None:
    global _buffer, _position
    _buffer, _position = b"", 0


os.register_at_fork(after_in_child=_forget)
