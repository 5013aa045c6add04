"""Offloaded connections against the Linux kernel (CONTRACT.md, issue 4's
done-when): the Python host asks chimneyd to connect to a Linux listener in
the namespace; the data path runs offloaded; the Linux side's own byte counts
and hashes are the judge.
"""

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON

import peer as stream_peer

PEER = str(Path(__file__).with_name("peer.py"))
MiB = 1 << 20


class LinuxPeer:
    """peer.py running inside the namespace."""

    def __init__(self, target, mode, port, *args):
        self.proc = target.popen([PYTHON, PEER, mode, str(port), *map(str, args)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "listening", f"peer did not start: {line!r} {self.proc.stderr.read()}"

    def result(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        lines = [l for l in out.splitlines() if l.startswith("{")]
        assert lines, f"peer printed no result; stderr: {err}"
        return json.loads(lines[-1])


def send_stream(conn, total, chunk=MiB, window=8):
    """Sends `total` bytes of the test stream with `window` requests in flight;
    returns the completions in order."""
    pending, done, sent = [], [], 0
    while sent < total or pending:
        while sent < total and len(pending) < window:
            n = min(chunk, total - sent)
            pending.append((conn.send(stream_peer.stream(n, sent)), n))
            sent += n
        req, n = pending.pop(0)
        c = req.wait(60)
        assert c.status == "NDIS_STATUS_SUCCESS", c.status
        assert c.bytes_transferred == n  # C-6
        done.append(c)
    return done


def test_connect_send_100MiB_then_graceful_disconnect_with_final_data(target):
    t = target.target
    linux = LinuxPeer(target, "sink", 7001)
    conn = t.connect(target.peer_ip, 7001)
    total = 100 * MiB
    send_stream(conn, total)
    final = stream_peer.stream(4321, total)
    d = conn.disconnect(graceful=True, data=final).wait(30)
    # C-12: SUCCESS means the FIN and the data were ACKed; the count is exact.
    assert d.status == "NDIS_STATUS_SUCCESS"
    assert d.bytes_transferred == len(final)
    got = linux.result()
    assert got["end"] == "eof"
    assert got["bytes"] == total + len(final)
    assert got["sha256"] == hashlib.sha256(stream_peer.stream(total + len(final))).hexdigest()
    conn.terminate()


def test_receive_100MiB_from_linux_then_its_fin(target):
    t = target.target
    total = 100 * MiB
    linux = LinuxPeer(target, "source", 7002, total)
    conn = t.connect(target.peer_ip, 7002)
    h = hashlib.sha256()
    received = 0
    posted = [conn.post_receive(MiB) for _ in range(8)]
    while received < total:
        c = posted.pop(0).wait(60)
        assert c.status == "NDIS_STATUS_SUCCESS", c.status
        h.update(c.data)
        received += len(c.data)
        posted.append(conn.post_receive(MiB))
    assert received == total
    assert h.hexdigest() == hashlib.sha256(stream_peer.stream(total)).hexdigest()
    # C-16: the peer's FIN comes as DISCONNECT once everything was consumed.
    ev = t.next_event(30)
    while ev.kind in ("SEND_BACKLOG_CHANGE", "RECEIVE_READY"):
        ev = t.next_event(30)
    assert ev.kind == "DISCONNECT"
    # Receives still posted complete INVALID_STATE (C-16).
    for r in posted:
        assert r.wait(10).status == "NDIS_STATUS_INVALID_STATE"
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS"
    assert linux.result()["bytes"] == total
    conn.terminate()


def test_abortive_disconnect_with_4MiB_outstanding_to_a_stalled_reader(target):
    t = target.target
    linux = LinuxPeer(target, "stall", 7003)
    conn = t.connect(target.peer_ip, 7003)
    sends = [conn.send(stream_peer.stream(256 * 1024, i * 256 * 1024)) for i in range(16)]
    time.sleep(1.0)  # the peer's window fills; most of it stays outstanding
    d = conn.disconnect(graceful=False).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS"  # C-13: the RST was sent
    statuses = [s.wait(10).status for s in sends]
    assert all(s == "NDIS_STATUS_REQUEST_ABORTED" for s in statuses[-4:]), statuses
    assert "NDIS_STATUS_SUCCESS" not in statuses[statuses.index("NDIS_STATUS_REQUEST_ABORTED"):]
    assert linux.result()["end"] == "reset"  # the Linux side got ECONNRESET
    conn.terminate()


def test_terminate_during_a_pending_graceful_disconnect(target):
    t = target.target
    linux = LinuxPeer(target, "stall", 7004)
    conn = t.connect(target.peer_ip, 7004)
    sends = [conn.send(stream_peer.stream(256 * 1024, i * 256 * 1024)) for i in range(16)]
    time.sleep(0.5)
    d = conn.disconnect(graceful=True, data=b"tail")
    state = conn.terminate()
    # The seed: a disconnect pending while the connection is uploaded.
    assert d.wait(10).status == "NDIS_STATUS_UPLOAD_IN_PROGRESS"
    assert state["state"] in ("FIN_WAIT_1", "ESTABLISHED")
    assert state["snd_una"] != state["snd_max"] or state["send_data"]
    linux.proc.kill()
