"""Faults on the wire (issue 5): chimneyd's own impairment stage
(--impair-rx/--impair-tx, lib/net/impair.hpp) loses, reorders, duplicates and
corrupts frames in both directions while offloaded connections carry data
both ways at once to a Linux peer. Everything must arrive (sha256 on both
sides), every request must complete exactly once (C-6, C-9), graceful
disconnects must complete SUCCESS with exact counts (C-11, C-12), and the
pools and the connection table must return to their baseline.

Sizes: the issue asks for 256 MiB through one connection and 64 MiB through
each of 64 connections; CHIMNEY_FAULT_FULL=1 runs exactly that (it takes
long: see docs/TESTING.md for measured times). The default run, the one CI
makes, keeps loss 1% at 256 MiB and scales the heavier profiles down so the
whole module stays within a few minutes; CHIMNEY_FAULT_SCALE multiplies
every size. A failure names the impairment seed; replay it with
CHIMNEY_IMPAIR_SEED=<seed>.
"""
import hashlib
import json
import os
import subprocess
import time

import pytest

from conftest import PYTHON, pools, start_target, wait_until
import peer as stream_peer
from wirecheck import Wire

from chimney.client import Target

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
BULK_PEER = os.path.join(HERE, "bulk_peer.py")
SCALE = float(os.environ.get("CHIMNEY_FAULT_SCALE", "1"))
DEADLINE = float(os.environ.get("CHIMNEY_FAULT_DEADLINE", "0"))
# A directory: each run keeps a capture of the Linux side of the TAP there
# (frames chimney's TX stage dropped are not in it; frames its RX stage drops are).
PCAP_DIR = os.environ.get("CHIMNEY_FAULT_PCAP")

PROFILES = {
    # loss, with 10% reordering, 2% duplication and 1% corruption, each direction
    "loss1": "loss=1%,reorder=10%,duplicate=2%,corrupt=1%",
    "loss5": "loss=5%,reorder=10%,duplicate=2%,corrupt=1%",
    "loss20": "loss=20%,reorder=10%,duplicate=2%,corrupt=1%",
}
SEEDS = {"loss1": 1001, "loss5": 1005, "loss20": 1020}
FULL = os.environ.get("CHIMNEY_FAULT_FULL") == "1"
# (bytes each way through one connection, bytes each way through each of 64)
SIZES = {
    "loss1": (256 * MiB, 16 * MiB),
    "loss5": (64 * MiB, 4 * MiB),
    "loss20": (512 * 1024, 64 * 1024),
}


def size(profile, which):
    full = (256 * MiB, 64 * MiB)[which]
    return int((full if FULL else SIZES[profile][which]) * SCALE)


class Stream:
    """One connection's host side: sends `total` bytes of the test stream
    with `window` SENDs in flight while `window` RECEIVEs are posted, then a
    graceful disconnect carrying `final` bytes once every SEND completed.
    Counts every completion; a second completion of a request would be a
    KeyError in the client (tags are freed on completion)."""

    def __init__(self, conn, total, final, chunk, window):
        self.conn, self.total, self.final, self.chunk, self.window = conn, total, final, chunk, window
        self.sent = 0
        self.sends = []      # (request, length)
        self.receives = []
        self.h = hashlib.sha256()
        self.received = 0
        self.peer_fin = False
        self.receive_closed = False
        self.disconnect = None
        self.completed = {"send": 0, "receive": 0, "disconnect": 0}
        self.posted = {"send": 0, "receive": 0, "disconnect": 0}

    def step(self):
        """Moves the connection on without blocking; True if anything happened."""
        moved = False
        while self.sends and self.sends[0][0].done():
            req, n = self.sends.pop(0)
            c = req.wait(0)
            self.completed["send"] += 1
            assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == n, (self.conn, c)
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
            else:
                # C-16: receives still posted at the peer's FIN (its DISCONNECT
                # event may still be on its way: the client queues events apart).
                assert c.status == "NDIS_STATUS_INVALID_STATE", (self.conn, c)
                assert self.received == self.total, (self.conn, self.received)
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
        return (self.peer_fin and not self.receives and self.disconnect is not None
                and self.disconnect.done())


def run_streams(t, conns, total, final, chunk, window, deadline_s):
    streams = {c.handle: Stream(c, total, final, chunk, window) for c in conns}
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
                # C-16: after every byte before the FIN was delivered (the last
                # receive completions may still be on their way to us).
                s.peer_fin = True
                moved = True
            elif ev.kind in ("ABORT", "RETRIEVE"):
                raise AssertionError(f"{ev.kind} {ev.reason} on {s.conn if s else ev.handle}")
        if not moved:
            if time.monotonic() > deadline:
                stuck = [(s.conn, f"sent {s.sent} received {s.received} peer_fin {s.peer_fin} "
                                  f"receive_closed {s.receive_closed} receives pending {len(s.receives)} "
                                  f"sends pending {len(s.sends)} disconnect {s.disconnect} "
                                  f"posted {s.posted} completed {s.completed}")
                         for s in streams.values() if not s.finished()]
                raise AssertionError(f"not finished within {deadline_s} s: {stuck[:4]}")
            time.sleep(0.0005)
    for s in streams.values():
        assert s.received == total, (s.conn, s.received)
        d = s.disconnect.wait(0)
        s.completed["disconnect"] += 1
        # C-12: SUCCESS once the FIN and the final data were ACKed; exact count.
        assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == len(final), (s.conn, d)
        assert s.h.hexdigest() == hashlib.sha256(stream_peer.stream(total)).hexdigest(), s.conn
        assert s.completed == s.posted, (s.conn, s.completed, s.posted)  # each exactly once
    return streams


def engine_summary(ns):
    e = ns.telemetry("/chimney/engine,0") or {}
    return {k: v for k, v in e.items() if v and k in (
        "segments_in", "segments_out", "retransmits", "fast_retransmits", "rto_expirations",
        "sack_recoveries", "dup_acks", "drop_out_of_window", "drop_ooo_budget", "no_mbuf")}


def fault_run(chimneyd, tmp_path, profile, nconn, nbytes, port, deadline_s):
    seed = int(os.environ.get("CHIMNEY_IMPAIR_SEED", SEEDS[profile]))
    spec = PROFILES[profile]
    final = stream_peer.stream(1000, nbytes)
    # RFC 9293's MSL of 2 minutes, not chimneyd's default 30 s: at 20% loss
    # the Linux peer's RTO grows to a minute or more, and a TIME_WAIT of 60 s
    # ended before its last retransmission came, which then met a RST.
    with start_target(chimneyd, tmp_path, extra_args=["--impair-rx", spec, "--impair-tx", spec,
                                                      "--impair-seed", str(seed),
                                                      "--msl-ms", "120000"]) as ns:
        wire = Wire(ns, PCAP_DIR, name=f"faults-{profile}-x{nconn}-{seed}.pcap").start() if PCAP_DIR else None
        region = min(max(nconn * 8 * MiB, 64 * MiB), 1024 * MiB)
        with Target(ns.control_socket, region_size=region) as t:
            baseline = pools(t.stats())
            linux = ns.popen([PYTHON, BULK_PEER, str(port), str(nconn), str(nbytes)],
                             stdout=subprocess.PIPE, text=True)
            assert linux.stdout.readline().strip() == "listening"
            try:
                conns = [t.connect(ns.peer_ip, port, initial_rcv_wnd=4 * MiB, timeout=30)
                         for _ in range(nconn)]
                chunk = 256 * 1024 if nconn > 1 else MiB
                started = time.monotonic()
                run_streams(t, conns, nbytes, final, chunk, 4, deadline_s)
                elapsed = time.monotonic() - started
                out, _ = linux.communicate(timeout=300)  # its last FIN may wait out a long RTO
            except BaseException as e:
                raise AssertionError(f"impairment {spec}, seed {seed} (replay: "
                                     f"CHIMNEY_IMPAIR_SEED={seed}): {e}\n"
                                     f"engine: {engine_summary(ns)}\n"
                                     f"chimneyd log: {ns.log_path}") from e
            finally:
                if linux.poll() is None:
                    linux.kill()
                if wire is not None:
                    wire.stop()
                    print(f"capture: {wire.pcap}")
            results = json.loads(out.strip().splitlines()[-1])
            want_in = hashlib.sha256(stream_peer.stream(nbytes) + final).hexdigest()
            for r in results:
                assert r["end"] == "eof", r
                assert r["bytes_out"] == nbytes, r
                assert r["bytes_in"] == nbytes + len(final), r
                assert r["sha256_in"] == want_in, r
            for c in conns:
                c.terminate()
            # Nothing leaks: connections released, every pool back where it was.
            wait_until("connections released and pools at their baseline",
                       lambda: (lambda s: s["connections"] == 0
                                and pools(s) == baseline)(t.stats()))
            imp = ns.port(0)
            print(f"{profile} x{nconn} {nbytes / 1024:.0f} KiB each way: {elapsed:.1f} s, "
                  f"rx {imp.get('impair_rx')}, tx {imp.get('impair_tx')}, engine {engine_summary(ns)}")
            for d in ("impair_rx", "impair_tx"):
                assert imp[d]["lost"] > 0 and imp[d]["corrupted"] > 0 and imp[d]["duplicated"] > 0 \
                    and imp[d]["reordered"] > 0, imp  # the faults really happened


@pytest.mark.parametrize("profile", list(PROFILES))
def test_one_connection_both_ways(chimneyd, tmp_path, profile):
    fault_run(chimneyd, tmp_path, profile, 1, size(profile, 0), 7101, DEADLINE or 1800)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_64_connections_both_ways(chimneyd, tmp_path, profile):
    fault_run(chimneyd, tmp_path, profile, 64, size(profile, 1), 7102, DEADLINE or 1800)
