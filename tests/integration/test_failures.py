"""Failures around an offloaded connection (issue 5, "Faults"): the peer
vanishes mid-transfer, or the host is killed mid-transfer. The contract's
answer is checked, and nothing may leak: the connection table and every pool
return to their baseline (read from STATS by a session of its own).
"""
import os
import signal
import subprocess
import time

from conftest import PYTHON, LinuxPeer
import peer as stream_peer

from chimney.client import Target

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
POOLS = ("port0_mbufs_free", "port0_attach_mbufs_free", "op_records_free")


def pools(stats):
    return {k: stats[k] for k in POOLS}


def settle(observer, baseline, timeout=15.0):
    """Waits until no connection is left and every pool is back at `baseline`."""
    deadline = time.monotonic() + timeout
    while True:
        s = observer.stats()
        if s["connections"] == 0 and pools(s) == baseline:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s: connections {s['connections']}, pools {pools(s)}, "
                                 f"baseline {baseline}")
        time.sleep(0.1)


def test_peer_gone_mid_transfer_raises_retrieve_timeout_and_leaks_nothing(fresh):
    """C-18: the Linux side's link goes down in the middle of a transfer; the
    retransmission limit (max_retransmissions from the cached state) raises
    RETRIEVE(TimeoutExpiration). The host terminates (C-21): every send
    completes exactly once, SUCCESS up to what was ACKed and handed back in
    order (UPLOAD_IN_PROGRESS) after it."""
    with fresh() as ns:
        t = ns.target
        baseline = pools(t.stats())
        linux = LinuxPeer(ns, "sink", 7201)
        conn = t.connect(ns.peer_ip, 7201, max_retransmissions=4, initial_rcv_wnd=4 * MiB)
        sends = [conn.send(stream_peer.stream(MiB, i * MiB)) for i in range(8)]
        assert sends[0].wait(30).status == "NDIS_STATUS_SUCCESS"
        more = [conn.send(stream_peer.stream(MiB, (8 + i) * MiB)) for i in range(8)]
        ns.run(["ip", "link", "set", "dev", ns.iface, "down"])  # the peer is gone
        started = time.monotonic()
        ev = t.next_event(60)
        while ev.kind in ("SEND_BACKLOG_CHANGE", "RECEIVE_READY"):
            ev = t.next_event(60)
        assert (ev.kind, ev.reason) == ("RETRIEVE", "TimeoutExpiration"), ev
        # 4 retransmissions with backoff from an RTO of at least 200 ms.
        assert time.monotonic() - started >= 0.2 + 0.4 + 0.8 + 1.6, "too early for the limit"
        state = conn.terminate()
        done = [r.wait(10) for r in sends + more]
        statuses = [c.status for c in done]
        assert set(statuses) <= {"NDIS_STATUS_SUCCESS", "NDIS_STATUS_UPLOAD_IN_PROGRESS"}, statuses
        assert "NDIS_STATUS_UPLOAD_IN_PROGRESS" in statuses, "data was outstanding when the link went"
        first = statuses.index("NDIS_STATUS_UPLOAD_IN_PROGRESS")
        assert all(s == "NDIS_STATUS_UPLOAD_IN_PROGRESS" for s in statuses[first:]), "returned in order"
        assert all(c.returned for c in done[first:])
        assert state["snd_una"] != state["snd_max"]
        settle(t, baseline)
        linux.proc.kill()


def test_host_killed_mid_transfer_connections_aborted_after_grace_nothing_leaks(fresh):
    """The host process is SIGKILLed while 8 MiB of its sends are in flight.
    Its session is detached for control-grace-s; nobody ATTACHes, so its
    connection is aborted (RST: the Linux peer sees ECONNRESET) and released,
    and its memory and every pool return to the baseline."""
    with fresh("--control-grace-s", "2") as ns:
        with Target(ns.control_socket) as observer:
            baseline = pools(observer.stats())
            linux = LinuxPeer(ns, "sink", 7202)
            host = subprocess.Popen([PYTHON, os.path.join(HERE, "host_stream.py"), ns.control_socket,
                                     ns.peer_ip, "7202"], stdout=subprocess.PIPE, text=True)
            try:
                assert host.stdout.readline().strip() == "streaming"
                time.sleep(0.3)
                s = observer.stats()
                assert s["sessions"] == 2 and s["connections"] == 1, s
                host.send_signal(signal.SIGKILL)
                host.wait(10)
            finally:
                if host.poll() is None:
                    host.kill()
                    host.wait(10)
            got = linux.result(timeout=30)
            assert got["end"] == "reset" and got["bytes"] > 0, got
            s = settle(observer, baseline)
            assert s["sessions_detached"] == 1 and s["orphans_aborted"] == 1, s
            assert s["sessions"] == 1, s
