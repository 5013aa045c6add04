"""Connections across worker lcores (issue 6): chimneyd with --workers 2 on a
multi-queue TAP (one RX/TX queue pair per worker), 16 connections each way
(CONNECTs to a Linux listener, a Linux client's connections to a LISTEN)
carrying data both ways at once, sha256 on both sides, every request
completed once, graceful disconnects SUCCESS with exact counts.

Placement is checked from outside: the owner worker of each connection is
computed here with an independent Toeplitz hash (the symmetric key and the
128-entry table of lib/dataplane/rss.hpp) from the 4-tuples the Linux side
saw, and must match the connections each worker's engines report in
telemetry (/chimney/lcore,<id>: engine.offloads); both workers must own
connections. A TAP has no hardware RSS: the kernel picks the queue, and a
frame that reaches the other worker is steered to its owner (steered_out /
steered_in, steer_ring_full drops: none).
"""
import hashlib
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import PYTHON, pools, start_target, wait_until
import peer as stream_peer

from chimney.client import Target

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
BULK_PEER = os.path.join(HERE, "bulk_peer.py")
NCONN = 16
NBYTES = 4 * MiB
WORKERS = 2  # chimneyd spreads main + 2 worker lcores over this machine's 2 CPUs itself

# ---------------------------------------------------------------------------
# The placement, computed independently of chimney's C++ (rss.hpp).

SYMMETRIC_KEY = bytes([0x6d, 0x5a] * 20)
RETA_SIZE = 128


def toeplitz(key: bytes, data: bytes) -> int:
    """The Toeplitz hash as a NIC computes it (Microsoft RSS): for every set
    input bit i (most significant first), XOR in the 32 key bits from bit i."""
    k = int.from_bytes(key, "big")
    nbits = len(key) * 8
    h = 0
    for i in range(len(data) * 8):
        if data[i // 8] & (0x80 >> (i % 8)):
            h ^= (k >> (nbits - 32 - i)) & 0xFFFFFFFF
    return h


def owner(src_ip: str, dst_ip: str, src_port: int, dst_port: int, workers: int = WORKERS) -> int:
    data = (socket.inet_aton(src_ip) + socket.inet_aton(dst_ip)
            + src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big"))
    return (toeplitz(SYMMETRIC_KEY, data) % RETA_SIZE) % workers


def test_python_toeplitz_matches_the_verification_suite():
    """The reference above is right: Microsoft's RSS verification vector
    (IPv4 with TCP) and symmetry with chimney's key."""
    ms_key = bytes.fromhex("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c"
                           "6a42b73bbeac01fa")
    data = (socket.inet_aton("66.9.149.187") + socket.inet_aton("161.142.100.80")
            + (2794).to_bytes(2, "big") + (1766).to_bytes(2, "big"))
    assert toeplitz(ms_key, data) == 0x51ccc178
    assert owner("198.18.0.2", "198.18.0.1", 49152, 7000) == owner("198.18.0.1", "198.18.0.2", 7000, 49152)


# ---------------------------------------------------------------------------
# The host's side of one connection: sends, receives, graceful disconnect.

class Stream:
    """Sends `total` bytes of the test stream with `window` SENDs in flight
    while `window` RECEIVEs are posted, then a graceful disconnect carrying
    `final` once every SEND completed; counts every completion (a request
    completed twice would be a KeyError in the client)."""

    def __init__(self, conn, total, final, chunk=256 * 1024, window=4):
        self.conn, self.total, self.final, self.chunk, self.window = conn, total, final, chunk, window
        self.sent = self.received = 0
        self.sends, self.receives = [], []
        self.h = hashlib.sha256()
        self.peer_fin = self.receive_closed = False
        self.disconnect = None
        self.posted = {"send": 0, "receive": 0, "disconnect": 0}
        self.completed = {"send": 0, "receive": 0, "disconnect": 0}

    def step(self):
        moved = False
        while self.sends and self.sends[0][0].done():
            req, n = self.sends.pop(0)
            c = req.wait(0)
            self.completed["send"] += 1
            assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == n, (self.conn, c)  # C-6
            moved = True
        while self.sent < self.total and len(self.sends) < self.window:
            n = min(self.chunk, self.total - self.sent)
            self.sends.append((self.conn.send(stream_peer.stream(n, self.sent)), n))
            self.posted["send"] += 1
            self.sent += n
            moved = True
        while self.receives and self.receives[0].done():
            c = self.receives.pop(0).wait(0)
            self.completed["receive"] += 1
            if c.status == "NDIS_STATUS_SUCCESS":
                self.h.update(c.data)
                self.received += len(c.data)
            else:  # C-16: receives still posted at the peer's FIN
                assert c.status == "NDIS_STATUS_INVALID_STATE", (self.conn, c)
                self.receive_closed = True
            moved = True
        if not self.peer_fin and not self.receive_closed:
            while len(self.receives) < self.window:
                self.receives.append(self.conn.post_receive(self.chunk))
                self.posted["receive"] += 1
                moved = True
        if self.disconnect is None and self.sent == self.total and not self.sends:
            self.disconnect = self.conn.disconnect(graceful=True, data=self.final)
            self.posted["disconnect"] += 1
            moved = True
        return moved

    def finished(self):
        return self.peer_fin and not self.receives and self.disconnect is not None and self.disconnect.done()


def run_streams(t, conns, total, final, deadline_s=120):
    streams = {c.handle: Stream(c, total, final) for c in conns}
    deadline = time.monotonic() + deadline_s
    while not all(s.finished() for s in streams.values()):
        moved = False
        for s in streams.values():
            moved |= s.step()
        while True:
            try:
                ev = t.next_event(0)
            except TimeoutError:
                break
            s = streams.get(ev.handle)
            if ev.kind == "DISCONNECT" and s is not None:
                s.peer_fin = True  # C-16
                moved = True
            elif ev.kind in ("ABORT", "RETRIEVE"):
                raise AssertionError(f"{ev.kind} {ev.reason} on {s.conn if s else ev.handle}")
        if not moved:
            if time.monotonic() > deadline:
                stuck = [(s.conn, s.sent, s.received, s.peer_fin, s.posted, s.completed)
                         for s in streams.values() if not s.finished()]
                raise AssertionError(f"not finished within {deadline_s} s: {stuck[:4]}")
            time.sleep(0.0005)
    want = hashlib.sha256(stream_peer.stream(total)).hexdigest()
    for s in streams.values():
        assert s.received == total and s.h.hexdigest() == want, (s.conn, s.received)
        d = s.disconnect.wait(0)
        s.completed["disconnect"] += 1
        # C-12: SUCCESS once the FIN and the final data were ACKed; exact count.
        assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == len(final), (s.conn, d)
        assert s.completed == s.posted, (s.conn, s.completed, s.posted)  # each exactly once
    return streams


# ---------------------------------------------------------------------------
# A Linux client: NCONN connections to chimney's LISTEN, each sending NBYTES
# of the test stream and its FIN while reading to EOF (bulk_peer.py's
# listener, turned round).

CLIENT = r"""
import errno, json, selectors, socket, sys
sys.path.insert(0, sys.argv[1])
from bulk_peer import CHUNK, PERIOD, VIEW, Conn
ip, port, n, nbytes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sel = selectors.DefaultSelector()
conns = []
for _ in range(n):
    s = socket.create_connection((ip, port), timeout=30)
    s.setblocking(False)
    c = Conn(s, s.getsockname(), nbytes)  # peer_port: the client's own port
    conns.append(c)
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
print("connected", flush=True)
live, draining = n, []
while live:
    for c in [c for c in draining if c.acked()]:  # every byte and both FINs ACKed
        draining.remove(c)
        c.sock.close()
        live -= 1
    for key, mask in sel.select(timeout=0.05 if draining else 1.0):
        c = key.data
        try:
            if mask & selectors.EVENT_WRITE and c.sent < c.to_send:
                off = c.sent % PERIOD
                k = min(CHUNK, c.to_send - c.sent, 2 * PERIOD - off)
                c.sent += c.sock.send(VIEW[off:off + k])
            if c.sent == c.to_send and not c.shut:
                c.sock.shutdown(socket.SHUT_WR)
                c.shut = True
            if mask & selectors.EVENT_READ and not c.eof:
                data = c.sock.recv(1 << 20)
                if data:
                    c.h.update(data)
                    c.received += len(data)
                else:
                    c.eof = True
            if c.eof and c.shut:
                sel.unregister(c.sock)
                draining.append(c)
                continue
            sel.modify(c.sock, (0 if c.eof else selectors.EVENT_READ) | (0 if c.shut else selectors.EVENT_WRITE), c)
        except BlockingIOError:
            continue
        except OSError as e:
            c.end = errno.errorcode.get(e.errno, str(e))
        if c.end is not None:
            sel.unregister(c.sock)
            c.sock.close()
            live -= 1
print(json.dumps([c.result() for c in conns]), flush=True)
"""


# ---------------------------------------------------------------------------


def worker_engines(ns):
    """Per worker: its engines' counters and its steering counters (telemetry)."""
    out = {}
    for lcore in ns.telemetry("/chimney/lcores"):
        info = ns.telemetry(f"/chimney/lcore,{lcore}")
        if info.get("role") == "worker":
            out[info["worker"]] = info
    return out


def check_linux_results(results, nbytes, final):
    want_in = hashlib.sha256(stream_peer.stream(nbytes) + final).hexdigest()
    for r in results:
        assert r["end"] == "eof", r
        assert r["bytes_out"] == nbytes, r
        assert r["bytes_in"] == nbytes + len(final), r
        assert r["sha256_in"] == want_in, r


def test_connections_spread_over_two_workers(chimneyd, tmp_path):
    final = stream_peer.stream(1000, NBYTES)
    with start_target(chimneyd, tmp_path, workers=WORKERS) as ns:
        log = ns.log()
        assert f"{WORKERS} worker lcore(s)" in log, ns.log_tail()
        assert "placement:" in log, ns.log_tail()
        with Target(ns.control_socket, region_size=256 * MiB) as t:
            baseline = pools(t.stats())

            # -- active opens: CONNECTs to a Linux listener
            linux = ns.popen([PYTHON, BULK_PEER, "7301", str(NCONN), str(NBYTES)],
                             stdout=subprocess.PIPE, text=True)
            assert linux.stdout.readline().strip() == "listening"
            conns = [t.connect(ns.peer_ip, 7301, initial_rcv_wnd=2 * MiB, timeout=30) for _ in range(NCONN)]
            st = t.stats()
            # An ephemeral port is chosen for the least-loaded worker.
            assert [st[f"worker{w}_connections"] for w in range(WORKERS)] == [NCONN // WORKERS] * WORKERS, st
            run_streams(t, conns, NBYTES, final)
            out, _ = linux.communicate(timeout=120)
            active = json.loads(out.strip().splitlines()[-1])
            check_linux_results(active, NBYTES, final)
            for c in conns:
                c.terminate()

            # -- passive opens: a Linux client's connections to a LISTEN
            t.listen(7302, backlog=NCONN)
            client = ns.popen([PYTHON, "-c", CLIENT, HERE, ns.target_ip, "7302", str(NCONN), str(NBYTES)],
                              stdout=subprocess.PIPE, text=True)
            accepted = [t.accept(timeout=30) for _ in range(NCONN)]
            assert client.stdout.readline().strip() == "connected"
            run_streams(t, accepted, NBYTES, final)
            out, _ = client.communicate(timeout=120)
            passive = json.loads(out.strip().splitlines()[-1])
            check_linux_results(passive, NBYTES, final)
            for c in accepted:
                c.terminate()
            t.release_listen(7302)

            wait_until("connections released and pools at their baseline",
                       lambda: (lambda s: s["connections"] == 0 and pools(s) == baseline)(t.stats()))

        # Each worker's engines own exactly the connections the independent
        # hash gives it, and both own some.
        expect = [0] * WORKERS
        for r in active:    # the Linux listener saw chimney's ephemeral port
            expect[owner(ns.target_ip, ns.peer_ip, r["peer_port"], 7301)] += 1
        for r in passive:   # the Linux client's own port
            expect[owner(ns.target_ip, ns.peer_ip, 7302, r["peer_port"])] += 1
        workers = wait_until("engine counters published",
                             lambda: (lambda w: w if sum(w[i]["engine"]["terminates"] for i in w) == 2 * NCONN
                                      else None)(worker_engines(ns)))
        got = [workers[w]["engine"]["offloads"] for w in range(WORKERS)]
        steered = {w: (workers[w]["steered_out"], workers[w]["steered_in"]) for w in workers}
        print(f"offloads per worker {got} (expected {expect}); steered (out, in) per worker {steered}; "
              f"drops {ns.drops().get('steer_ring_full')}")
        assert got == expect, (got, expect)
        assert all(n > 0 for n in got), got
        assert ns.drops()["steer_ring_full"] == 0
        assert sum(o for o, _ in steered.values()) == sum(i for _, i in steered.values())
