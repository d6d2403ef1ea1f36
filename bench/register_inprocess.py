"""CPU cost of one authenticated registration inside the PBX, without sockets.

Feeds REGISTER datagrams straight into SIPCore.datagram_received on a
task.Clock, answers the 401 like a phone would, and times only the PBX's
side. It isolates the Python cost of the SIP path (parse, checks, digest,
location update, response) from system calls and the load generator:

    .venv/bin/python bench/register_inprocess.py [--users 2000] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from twisted.internet.task import Clock  # noqa: E402

from pbx.config import parse_config  # noqa: E402
from pbx.service import PBXService  # noqa: E402
from pbx.sip.message import parse_datagram  # noqa: E402
from pbx.sip.transport import Peer  # noqa: E402
from pbx.store.extensions import make_record  # noqa: E402
from sipclient import authorization, register  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the PBX side")
    parser.add_argument("--sort", default="tottime", help="profile order (tottime, cumulative, ...)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh PBXs to time; the best counts")
    args = parser.parse_args()
    profiler = cProfile.Profile() if args.profile else None
    best = min(run_once(args.users, profiler) for _ in range(args.rounds))
    print(f"{best / args.users * 1e6:.0f} us of PBX CPU per registration (2 requests), best of {args.rounds} "
          f"-> {args.users / best:.0f} registrations/s on one core, without sockets")
    if profiler:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(40)


def run_once(count: int, profiler: cProfile.Profile | None) -> float:
    """Register `count` users on a fresh PBX; the PBX thread's CPU seconds."""
    clock = Clock()
    clock.advance(1.7e9)
    pbx = PBXService(parse_config("voicemail: {enabled: false}"), clock)  # as bench/register_bench.py
    pbx.core.ready = True
    users = [str(100000 + i) for i in range(count)]
    for user in users:
        pbx.directory.put(make_record(user, "", "pbx", f"pw{user}"))
    out: list[bytes] = []
    peer = Peer("UDP", "127.0.0.1", 5061, False, lambda data, addr: out.append(data))
    spent = 0.0

    def feed(data: bytes) -> None:
        nonlocal spent
        out.clear()
        if profiler:
            profiler.enable()
        began = time.thread_time()
        pbx.core.datagram_received(data, peer)
        spent += time.thread_time() - began
        if profiler:
            profiler.disable()

    for i, user in enumerate(users):
        feed(register(user, call_id=f"c{i}"))
        auth = authorization(parse_datagram(out[0]), user, f"pw{user}")
        feed(register(user, call_id=f"c{i}", cseq=2, authorization=auth))
        assert parse_datagram(out[0]).status == 200
    pbx.transactions.stop()
    return spent


if __name__ == "__main__":
    main()
