"""Offloaded connections against the Linux kernel (CONTRACT.md, issue 4's
done-when): the Python host asks chimneyd to connect to a Linux listener in
the namespace; the data path runs offloaded; the Linux side's own byte counts
and hashes are the judge, and the wire check (wirecheck.py) judges what went
over the TAP. Long transfers capture headers only (snaplen): their checksums
go unverified, everything else is checked.
"""

import hashlib
import json
import subprocess
import time
from pathlib import Path

from conftest import PYTHON, LinuxPeer, send_stream

import peer as stream_peer
import pytest

MiB = 1 << 20
HEADERS_ONLY = pytest.mark.wire(snaplen=128)


def wait_disconnect(t, conn, timeout=30):
    """The peer's FIN (C-16) on `conn`: before a terminate, so that the FIN
    does not arrive after it and meet the slow path's RST."""
    deadline = time.monotonic() + timeout
    while True:
        ev = t.next_event(max(0.1, deadline - time.monotonic()))
        if ev.kind == "DISCONNECT" and ev.handle == conn.handle:
            return ev


@HEADERS_ONLY
def test_connect_send_100MiB_then_graceful_disconnect_with_final_data(target, wire):
    """C-6 (every send SUCCESS with all its bytes), C-11/C-12 (final data with
    the FIN, SUCCESS once ACKed, exact bytes_transferred), C-16 (the peer's
    FIN as DISCONNECT); the Linux side's count and sha256 are the judge."""
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
    wait_disconnect(t, conn)
    conn.terminate()
    s, = wire.check().stream_list()
    assert s.bytes_from_target == total + len(final) and s.target_fin_acked and s.peer_fin_acked, s


def receive_stream(conn, total, window):
    """Receives `total` bytes of the test stream with `window` 1 MiB receives
    posted (C-9), checks them by hash, returns the receives still posted."""
    h = hashlib.sha256()
    received = 0
    posted = [conn.post_receive(MiB) for _ in range(window)]
    while received < total:
        c = posted.pop(0).wait(60)
        assert c.status == "NDIS_STATUS_SUCCESS", c.status
        h.update(c.data)
        received += len(c.data)
        posted.append(conn.post_receive(MiB))
    assert received == total
    assert h.hexdigest() == hashlib.sha256(stream_peer.stream(total)).hexdigest()
    return posted


@HEADERS_ONLY
def test_receive_100MiB_from_linux_then_its_fin(target, wire):
    """C-9 (posted receives filled FIFO), C-16 (DISCONNECT after the last
    byte; receives still posted complete INVALID_STATE)."""
    t = target.target
    total = 100 * MiB
    linux = LinuxPeer(target, "source", 7002, total)
    conn = t.connect(target.peer_ip, 7002)
    posted = receive_stream(conn, total, window=8)
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
    s, = wire.check().stream_list()
    assert s.bytes_from_peer == total and s.target_fin_acked and s.peer_fin_acked, s


def test_abortive_disconnect_with_4MiB_outstanding_to_a_stalled_reader(target, wire):
    """C-13: the disconnect completes SUCCESS once the RST is sent, the
    outstanding sends REQUEST_ABORTED; one RST and no FIN on the wire."""
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
    # C-13: the RST is ours to send here, a FIN is not.
    s, = wire.check(allow_rst_from_target=True, allow_fin_from_target=False).stream_list()
    assert len(s.rsts_from_target) == 1, s


def test_terminate_during_a_pending_graceful_disconnect(target, wire):
    """C-12 (the seed: a pending graceful disconnect completes
    UPLOAD_IN_PROGRESS), C-21 (sends answered, unfinished ones handed back in
    order with the state)."""
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
    # C-21: every send is answered: ACKed ones SUCCESS, the rest handed back
    # in order with the state (UPLOAD_IN_PROGRESS, returned).
    statuses = [r.wait(10) for r in sends]
    returned = [c for c in statuses if c.status == "NDIS_STATUS_UPLOAD_IN_PROGRESS"]
    assert returned and all(c.returned for c in returned), statuses
    assert all(c.status in ("NDIS_STATUS_SUCCESS", "NDIS_STATUS_UPLOAD_IN_PROGRESS") for c in statuses)
    first = statuses.index(returned[0])
    assert all(c.status == "NDIS_STATUS_UPLOAD_IN_PROGRESS" for c in statuses[first:]), "in order"
    linux.proc.kill()
    linux.proc.wait(10)
    # Uploaded to a host without a stack: whatever Linux still sends (the
    # answer to a last window probe) meets the slow path's RST (RFC 9293
    # §3.10.7.1); the Linux side resets the connection when it dies.
    wire.check(allow_rst_from_target=True)


def serve_one(t, conn, expect_in, reply_bytes):
    """Host side of a passive connection: receive everything until the peer's
    FIN (DISCONNECT), then send `reply_bytes` of the stream and close."""
    posted = receive_stream(conn, expect_in, window=4)
    for r in posted:
        assert r.wait(30).status == "NDIS_STATUS_INVALID_STATE"  # after the peer's FIN (C-16)
    send_stream(conn, reply_bytes)
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS"
    return d


def test_linux_client_to_a_chimney_listener(target, wire):
    """Passive open (LISTEN, ACCEPT): C-9 and C-16 on the way in, C-6 and
    C-11/C-12 on the way out; both FINs ACKed on the wire."""
    t = target.target
    t.listen(7100)
    total = 16 * MiB
    client = target.popen([PYTHON, str(Path(__file__).with_name("linux_client.py")), target.target_ip, "7100",
                           str(total)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=str(Path(__file__).parent))
    conn = t.accept(30)
    serve_one(t, conn, total, 8 * MiB)
    out, err = client.communicate(timeout=60)
    got = json.loads(out.splitlines()[-1])
    assert got["end"] == "eof", (got, err)
    assert got["bytes"] == 8 * MiB
    assert got["sha256"] == hashlib.sha256(stream_peer.stream(8 * MiB)).hexdigest()
    conn.terminate()
    t.release_listen(7100)
    s, = wire.check().stream_list()
    assert s.syn_from == "peer" and s.target_fin_acked and s.peer_fin_acked, s


def test_listener_beyond_its_backlog_answers_with_syn_cookies(target, wire):
    """RFC 4987 §3.6: beyond its backlog a listener answers with SYN cookies,
    and the connections they open work end to end."""
    # Backlog 1 and eight clients at once: the rest get cookies (RFC 4987)
    # and every connection still works end to end.
    t = target.target
    t.listen(7101, backlog=1)
    n, total = 8, 256 * 1024
    client = target.popen([PYTHON, str(Path(__file__).with_name("linux_client.py")), target.target_ip, "7101",
                           str(total), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=str(Path(__file__).parent))
    conns = [t.accept(30) for _ in range(n)]
    for conn in conns:
        serve_one(t, conn, total, 1000)
    out, err = client.communicate(timeout=60)
    results = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(results) == n, err
    for r in results:
        assert r["end"] == "eof" and r["bytes"] == 1000, r
    stats = t.stats()
    assert stats["connections"] >= n
    assert stats["syn_cookies_accepted"] >= 1, stats  # some came through cookies
    assert stats["established_passive"] >= n
    for conn in conns:
        conn.terminate()
    t.release_listen(7101)
    streams = wire.check().stream_list()
    assert len(streams) == n and all(s.target_fin_acked and s.peer_fin_acked for s in streams)


def test_terminate_then_offload_the_state_again(target, wire):
    """C-21 then C-1..C-3: the state a terminate returns, offloaded again,
    continues the same stream (one connection, no RST on the wire)."""
    # A host takes a connection back (terminate, C-21) and hands it over again
    # (offload, C-1..C-3) as a dict: the Linux peer sees one unbroken stream.
    t = target.target
    linux = LinuxPeer(target, "sink", 7005)
    conn = t.connect(target.peer_ip, 7005)
    first = 3 * MiB
    send_stream(conn, first)
    state = conn.terminate()
    assert state["state"] == "ESTABLISHED"
    assert state["snd_una"] == state["snd_max"], "everything was ACKed before the terminate"
    assert state["constant"]["remote_port"] == 7005 and state["path"]["path_mtu"] == 1500
    again = t.offload(state)
    second = 2 * MiB
    tail = stream_peer.stream(second, first)
    for off in range(0, second, MiB):
        c = again.send(tail[off:off + MiB]).wait(30)
        assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == MiB, c
    d = again.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS"
    got = linux.result()
    assert got["bytes"] == first + second and got["end"] == "eof"
    assert got["sha256"] == hashlib.sha256(stream_peer.stream(first + second)).hexdigest()
    wait_disconnect(t, again)
    again.terminate()
    s, = wire.check().stream_list()  # one connection, no RST: the upload left no trace on the wire
    assert s.bytes_from_target == first + second, s
