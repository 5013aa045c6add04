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
import json
import os
import subprocess
import time

import pytest

from conftest import PYTHON, pools, start_target, wait_until
import peer as stream_peer
from streams import check_peer_results, run_streams
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
                out, _ = linux.communicate(timeout=600)  # its last FIN may wait out a long RTO
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
            check_peer_results(json.loads(out.strip().splitlines()[-1]), nbytes, final)
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


# At 20% loss each way an exchange fails about 36% of the time, and a run of
# failures on one connection backs its RTO off to the cap (RFC 6298 §5.5; 60 s
# here, 120 s in Linux): about one run in ten has a tail of several minutes on
# one connection (docs/TESTING.md: captures of two). Expected to fail, not
# strictly, because of a second case seen once in CI and not understood yet:
# two graceful disconnects (our final data and FIN, in LAST_ACK) did not
# complete within 900 s, with no RETRIEVE either.
@pytest.mark.parametrize("profile", [p if p != "loss20" else pytest.param(p, marks=pytest.mark.xfail(
    strict=False, reason="at 20% loss through 64 connections a graceful disconnect once never completed "
                         "(docs/TESTING.md); RTO tails can also pass the deadline"))
    for p in PROFILES])
def test_64_connections_both_ways(chimneyd, tmp_path, profile):
    deadline = 600 if profile == "loss20" else 1800
    fault_run(chimneyd, tmp_path, profile, 64, size(profile, 1), 7102, DEADLINE or deadline)
