"""RTP load generator of the media benchmark (media_bench.py).  Standard library only.

Every call has two phones, a (the caller) and b (the callee), each one UDP
socket on 127.0.0.1.  Phone a sends to targets[i][0] (the relay's port for
a, or b's own socket for the direct baseline), phone b to targets[i][1].
Each phone sends 50 packets/s: RTP version 2, payload type 0 (PCMU),
sequence numbers from 0, timestamps +160 per packet, SSRC = the stream's
number, and 160 bytes of payload whose first 8 carry the send time (for the
one-way delay).  172 bytes per packet.

W worker processes (fork) each own whole calls, so each sends and receives
its own streams.  The sends of all streams are spread evenly over the 20 ms
period.  Arrival times are the kernel's (SO_TIMESTAMPNS, CLOCK_REALTIME),
so a busy receiver does not add jitter of its own; a late sender does, and
is reported ("late").

Jitter: RFC 3550 section 6.4.1, J += (|D| - J) / 16 with D the difference
of transit times (arrival - timestamp / 8000) of consecutive packets, in
ms; each stream's J is averaged over its packets, then over streams.
"""

import multiprocessing
import os
import resource
import select
import socket
import struct
import time

HOST = "127.0.0.1"
PERIOD = 0.020
SAMPLES = 160
PAYLOAD = 160
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)    # Linux
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
HEADER = struct.Struct("!BBHII")
SENDTIME = struct.Struct("!d")
TIMESPEC = struct.Struct("@qq")


class PhoneSockets:
    """2 x calls UDP sockets: a of call i on base + 4i, b on base + 4i + 2."""

    def __init__(self, calls, base=20000):
        self.calls, self.base = calls, base
        self.socks = []
        try:
            for i in range(calls):
                for port in (self.a_port(i), self.b_port(i)):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
                    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    s.bind((HOST, port))
                    s.setblocking(False)
                    self.socks.append(s)
        except OSError:
            self.close()
            raise

    def a_port(self, i):
        return self.base + 4 * i

    def b_port(self, i):
        return self.base + 4 * i + 2

    def a(self, i):
        return self.socks[2 * i]

    def b(self, i):
        return self.socks[2 * i + 1]

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []


def _worker(conn, socks, dests, ssrcs, phases, start, duration, drain):
    """Send the streams of `socks` (to `dests`), receive what comes back."""
    n = len(socks)
    by_fd = {s.fileno(): s for s in socks}
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    order = sorted(range(n), key=lambda k: phases[k])
    payload_pad = b"\xff" * (PAYLOAD - SENDTIME.size)
    # receive state, per SSRC
    st_count, st_transit, st_j, st_jsum, st_delay_sum, st_delay_max = \
        {}, {}, {}, {}, {}, {}
    sent = 0
    late_sum, late_max, late_over_5ms = 0.0, 0.0, 0
    end = start + duration
    k, j = 0, 0
    send_done = False
    now_wall_offset = time.time() - time.monotonic()
    mono = time.monotonic
    recvmsg_size = 2048
    ancsize = socket.CMSG_SPACE(TIMESPEC.size)
    stop_at = end + drain
    while True:
        now = mono()
        if not send_done:
            while True:
                idx = order[j]
                due = start + k * PERIOD + phases[idx]
                if due >= end:
                    send_done = True
                    break
                if due > now + 0.0002:
                    break
                lateness = now - due
                if lateness > 0:
                    late_sum += lateness
                    if lateness > late_max:
                        late_max = lateness
                    if lateness > 0.005:
                        late_over_5ms += 1
                pkt = (HEADER.pack(0x80, 0, k & 0xFFFF, (k * SAMPLES)
                                   & 0xFFFFFFFF, ssrcs[idx])
                       + SENDTIME.pack(now + now_wall_offset) + payload_pad)
                try:
                    socks[idx].sendto(pkt, dests[idx])
                    sent += 1
                except OSError:
                    pass
                j += 1
                if j == n:
                    j = 0
                    k += 1
                    now = mono()
            timeout = max(0.0, due - mono()) if not send_done else 0.05
        else:
            if now >= stop_at:
                break
            timeout = min(0.05, stop_at - now)
        for fd, _ in ep.poll(timeout):
            s = by_fd[fd]
            try:
                data, anc, _, _ = s.recvmsg(recvmsg_size, ancsize)
            except (BlockingIOError, InterruptedError):
                continue
            if len(data) < 20:
                continue
            arrival = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = TIMESPEC.unpack(cdata[:TIMESPEC.size])
                    arrival = sec + nsec * 1e-9
            if arrival is None:
                arrival = mono() + now_wall_offset
            _, _, seq, ts, ssrc = HEADER.unpack_from(data)
            (sent_at,) = SENDTIME.unpack_from(data, 12)
            transit = arrival - ts / 8000.0
            delay = arrival - sent_at
            c = st_count.get(ssrc)
            if c is None:
                st_count[ssrc] = 1
                st_transit[ssrc] = transit
                st_j[ssrc] = 0.0
                st_jsum[ssrc] = 0.0
                st_delay_sum[ssrc] = delay
                st_delay_max[ssrc] = delay
                continue
            st_count[ssrc] = c + 1
            d = transit - st_transit[ssrc]
            st_transit[ssrc] = transit
            jj = st_j[ssrc]
            jj += (abs(d) - jj) / 16.0
            st_j[ssrc] = jj
            st_jsum[ssrc] += jj
            st_delay_sum[ssrc] += delay
            if delay > st_delay_max[ssrc]:
                st_delay_max[ssrc] = delay
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send({
        "sent": sent,
        "received": sum(st_count.values()),
        "streams": len(st_count),
        "jitter_means": [st_jsum[s] / max(1, st_count[s] - 1) * 1000.0
                         for s in st_count],
        "delay_sum": sum(st_delay_sum.values()),
        "delay_maxes": [v * 1000.0 for v in st_delay_max.values()],
        "late_sum": late_sum, "late_max": late_max,
        "late_over_5ms": late_over_5ms,
        "cpu": usage.ru_utime + usage.ru_stime,
    })
    conn.close()


def run_workers(phones, targets, duration, workers, drain=1.0):
    """Send for `duration` s from every phone; aggregated results."""
    calls = phones.calls
    workers = max(1, min(workers, calls))
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 1.0 + 0.002 * calls / workers
    procs = []
    for w in range(workers):
        mine = range(w, calls, workers)
        socks, dests, ssrcs, phases = [], [], [], []
        for i in mine:
            # streams 2i (a -> b) and 2i+1 (b -> a); phases spread evenly
            for side, sock in ((0, phones.a(i)), (1, phones.b(i))):
                stream = 2 * i + side
                socks.append(sock)
                dests.append(targets[i][side])
                ssrcs.append(stream + 1)
                phases.append(PERIOD * stream / (2.0 * calls))
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(child, socks, dests, ssrcs,
                                              phases, start, duration,
                                              drain))
        p.start()
        child.close()
        procs.append((p, parent))
    results = []
    for p, parent in procs:
        try:
            if parent.poll(duration + drain + 60):
                results.append(parent.recv())
        except EOFError:
            pass
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join()
    if len(results) != len(procs):
        raise RuntimeError("a worker did not report (%d of %d)"
                           % (len(results), len(procs)))
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    jit = [v for r in results for v in r["jitter_means"]]
    dmax = sorted(v for r in results for v in r["delay_maxes"])
    cpu = sum(r["cpu"] for r in results)
    return {
        "sent": sent,
        "received": received,
        "loss_pct": 100.0 * (sent - received) / sent if sent else 0.0,
        "streams": sum(r["streams"] for r in results),
        "jitter_ms": sum(jit) / len(jit) if jit else 0.0,
        "jitter_max_ms": max(jit) if jit else 0.0,
        "delay_ms": (1000.0 * sum(r["delay_sum"] for r in results) / received
                     if received else 0.0),
        "delay_p99max_ms": dmax[min(len(dmax) - 1, int(0.99 * len(dmax)))]
        if dmax else 0.0,
        "late_mean_ms": 1000.0 * sum(r["late_sum"] for r in results) / sent
        if sent else 0.0,
        "late_max_ms": 1000.0 * max(r["late_max"] for r in results),
        "late_over_5ms": sum(r["late_over_5ms"] for r in results),
        "gen_cpu_pct": 100.0 * cpu / duration,
        "send_wall": duration,
        "workers": workers,
    }


if __name__ == "__main__":
    # self-check: 20 calls straight between phones for 3 s
    multiprocessing.set_start_method("fork")
    ph = PhoneSockets(20, int(os.environ.get("PORT_BASE", "20000")))
    tg = [((HOST, ph.b_port(i)), (HOST, ph.a_port(i))) for i in range(20)]
    print(run_workers(ph, tg, 3.0, 2))
    ph.close()
