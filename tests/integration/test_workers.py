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
import json
import os
import socket
import subprocess


from conftest import PYTHON, pools, start_target, wait_until
import peer as stream_peer
from streams import check_peer_results, run_streams

from chimney.client import Target

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
BULK_PEER = os.path.join(HERE, "bulk_peer.py")
NCONN = 16
NBYTES = 4 * MiB
CHUNK, WINDOW = 256 * 1024, 4  # per connection: SENDs and RECEIVEs in flight
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


def worker_engines(ns):
    """Per worker: its engines' counters and its steering counters (telemetry)."""
    out = {}
    for lcore in ns.telemetry("/chimney/lcores"):
        info = ns.telemetry(f"/chimney/lcore,{lcore}")
        if info.get("role") == "worker":
            out[info["worker"]] = info
    return out


def exchange(t, conns, peer, final):
    """NBYTES both ways on every connection, then graceful disconnects; the
    Linux side's result checked and returned; the connections terminated."""
    run_streams(t, conns, NBYTES, final, CHUNK, WINDOW, 120)
    out, _ = peer.communicate(timeout=120)
    results = json.loads(out.strip().splitlines()[-1])
    check_peer_results(results, NBYTES, final)
    for c in conns:
        c.terminate()
    return results


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
            active = exchange(t, conns, linux, final)

            # -- passive opens: a Linux client's connections to a LISTEN
            t.listen(7302, backlog=NCONN)
            client = ns.popen([PYTHON, BULK_PEER, "--connect", ns.target_ip, "7302", str(NCONN), str(NBYTES)],
                              stdout=subprocess.PIPE, text=True)
            accepted = [t.accept(timeout=30) for _ in range(NCONN)]
            assert client.stdout.readline().strip() == "connected"
            passive = exchange(t, accepted, client, final)
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
