"""The handover of a connection from the slow path to the engine.

When the slow path completes a handshake (a listener's, or a CONNECT's), the
established state goes to the owner worker's engine as an offload; segments
of the 4-tuple that reach chimneyd before the engine has installed the TCB
find no connection there and go to the slow path. The slow path keeps them
and passes them to the engine behind the offload (SlowPath::hand_over), so
the peer's first data is taken at once: it is never retransmitted.

The judges: the capture (wirecheck.py), where no data segment of a peer may
appear twice; the data each side received (count and sha256); and the
handover counters of telemetry (/chimney/port,0: handshake_parked, taken by
the engine: handshake_parked_delivered, dropped: handshake_parked_dropped).
Without the handover a Linux client that writes at once loses its first
segment to most of these races and sends it again after its RTO.

Run as root: /usr/bin/python3 -m pytest -v tests/integration/test_handover.py
"""

import hashlib
import json
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from attack import ACK, FIN, PSH, RST, SYN, FakePeer, Flow, Wire, seq_add
from conftest import PYTHON

import peer as stream_peer

HERE = Path(__file__).resolve().parent
CONNECTIONS = 20
NBYTES = 1000  # one segment: the peer's first and only data

# A Linux listener that writes at once on each accepted connection: NBYTES of
# the test stream, then its FIN; it reads to EOF and reports each connection.
LINUX_SERVER = r"""
import hashlib, json, socket, sys, threading
sys.path.insert(0, sys.argv[3])
import peer
port, count = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(count)
print("listening", flush=True)
data = peer.stream(1000)
results = []
def serve(s, addr):
    r = {"remote_port": addr[1]}
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        h, n = hashlib.sha256(), 0
        s.settimeout(30)
        while True:
            d = s.recv(1 << 16)
            if not d:
                break
            h.update(d)
            n += len(d)
        r.update(end="eof", bytes=n, sha256=h.hexdigest())
    except OSError as e:
        r.update(end="error", error=str(e))
    s.close()
    results.append(r)
threads = []
for _ in range(count):
    s, addr = srv.accept()
    t = threading.Thread(target=serve, args=(s, addr))
    t.start()
    threads.append(t)
for t in threads:
    t.join(60)
for r in results:
    print(json.dumps(r), flush=True)
"""


def handover_counters(target):
    """The handover counters of port 0, summed over the lcores (telemetry)."""
    port = target.telemetry("/chimney/port,0")
    return {k: port[k] for k in ("handshake_parked", "handshake_parked_delivered", "handshake_parked_dropped")}


def check_handover(target, before=None):
    """Nothing was dropped in the handover, and all that was kept reached an engine."""
    # The worker takes what was kept in its next loop: let it.
    deadline = time.monotonic() + 5
    while True:
        c = handover_counters(target)
        if c["handshake_parked"] == c["handshake_parked_delivered"] + c["handshake_parked_dropped"] \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert c["handshake_parked_dropped"] == 0, c
    assert c["handshake_parked"] == c["handshake_parked_delivered"], c
    return c


def peer_data_retransmissions(analysis):
    """Data segments of the Linux side seen more than once (stream, relative seq)."""
    seen = Counter((f.stream, f.seq) for f in analysis.frames if not f.from_target and f.length > 0)
    return {k: n for k, n in seen.items() if n > 1}


def serve_and_close(target_conn, expect: bytes):
    """The host side of one connection: receives until the peer's FIN (C-16:
    a posted receive then completes INVALID_STATE), checks the data, closes."""
    got = bytearray()
    while True:
        r = target_conn.post_receive(1 << 16).wait(30)
        if r.status != "NDIS_STATUS_SUCCESS":
            assert r.status == "NDIS_STATUS_INVALID_STATE", r
            break
        got += r.data
    assert bytes(got) == expect, (len(got), len(expect))
    d = target_conn.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS", d


def release_and_judge(target, conns, wire):
    """Terminates `conns`, then judges the handover: its counters, and the
    capture, where no peer data segment may appear twice. Returns the
    capture's analysis."""
    for conn in conns:
        conn.terminate()
    check_handover(target)
    analysis = wire.check()
    again = peer_data_retransmissions(analysis)
    assert not again, f"the peer sent its first data again (stream, seq): {again}"
    return analysis


def test_linux_clients_write_at_once(fresh_target, wire):
    """Twenty Linux clients connect to a chimney listener and write their
    data right behind the handshake's last ACK: each one's data reaches the
    host, none is sent twice, and the handover dropped nothing."""
    target = fresh_target
    t = target.target
    t.listen(7300, backlog=CONNECTIONS + 4)
    client = target.popen([PYTHON, str(HERE / "linux_client.py"), target.target_ip, "7300", str(NBYTES),
                           str(CONNECTIONS)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(HERE))
    try:
        conns = [t.accept(20) for _ in range(CONNECTIONS)]
        for conn in conns:
            serve_and_close(conn, stream_peer.stream(NBYTES))
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    results = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(results) == CONNECTIONS and all(r["end"] == "eof" for r in results), (results, err)
    analysis = release_and_judge(target, conns, wire)
    assert len(analysis.stream_list()) == CONNECTIONS


def test_linux_server_writes_on_accept(fresh_target, wire):
    """Chimney connects twenty times to a Linux listener that writes at once
    on accept: the data is taken as it comes, none is sent twice."""
    target = fresh_target
    t = target.target
    server = target.popen([PYTHON, "-c", LINUX_SERVER, "7301", str(CONNECTIONS), str(HERE)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(HERE))
    try:
        assert server.stdout.readline().strip() == "listening", server.stderr.read()
        conns = [t.connect(target.peer_ip, 7301) for _ in range(CONNECTIONS)]
        reply = stream_peer.stream(300)
        for conn in conns:
            c = conn.send(reply).wait(30)
            assert c.status == "NDIS_STATUS_SUCCESS", c
            serve_and_close(conn, stream_peer.stream(NBYTES))
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    results = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(results) == CONNECTIONS, (out, err)
    want = hashlib.sha256(reply).hexdigest()
    assert all(r["end"] == "eof" and r["bytes"] == len(reply) and r["sha256"] == want for r in results), results
    release_and_judge(target, conns, wire)


# --------------------------------------------------------------------------
# the races made on purpose: a peer played with scapy (attack.FakePeer)


@pytest.fixture
def fake_wire(fresh_target):
    fresh_target.ping(1)
    w = Wire(fresh_target)
    try:
        yield w
    finally:
        w.close()


def wait_ack_of(wire, flow, ack, mark, timeout=2.0):
    """chimneyd's first segment on `flow` that acknowledges up to `ack`."""
    return wire.wait_for(lambda s: flow.out(s) and s.flags & ACK and s.ack == ack % (1 << 32), timeout, mark)


@pytest.mark.parametrize("fin", [False, True], ids=["data", "data_fin"])
def test_data_on_the_final_ack(fresh_target, fake_wire, fin):
    """RFC 9293 §3.10.7.4 in SYN-RECEIVED: the ACK that completes the
    handshake carries the peer's first data (and its FIN): the handshake
    completes with it and the engine takes the data (and the FIN) once it
    has the connection: it is ACKed and reaches the host, and the peer
    never has to send it again."""
    t = fresh_target.target
    t.listen(7302, backlog=4)
    fake = FakePeer(fake_wire, "198.18.0.71", 41000, mac="02:00:c6:12:00:47")
    # The SYN, then the final ACK with data, without a pure ACK before it.
    fake.flow = flow = Flow(fake_wire, 7302, fake.ip, fake.port, fake.mac)
    mark = fake_wire.mark()
    fake_wire.send(flow.segment(seq=fake.iss, flags=SYN, win=65535,
                                options=fake._options() + [("Timestamp", (fake.tsval(), 0))]))
    synack = fake_wire.wait_for(flow.out, 3, mark)
    assert synack is not None and synack.flags == SYN | ACK, synack
    data = stream_peer.stream(NBYTES)
    mark = fake_wire.mark()
    fake_wire.send(flow.segment(seq=seq_add(fake.iss, 1), ack=seq_add(synack.seq, 1),
                                flags=ACK | PSH | (FIN if fin else 0), win=65535, payload=data,
                                ts=(fake.tsval(), synack.ts[0]) if synack.ts else None))
    conn = t.accept(5)
    assert (conn.remote_ip, conn.remote_port) == (fake.ip, fake.port)
    want = seq_add(fake.iss, 1 + NBYTES + (1 if fin else 0))
    ack = wait_ack_of(fake_wire, flow, want, mark)
    assert ack is not None, f"the data{' and FIN' if fin else ''} on the final ACK was not ACKed: " \
                            f"{fake_wire.since(mark, flow.out)}"
    r = conn.post_receive(1 << 16).wait(10)
    assert r.status == "NDIS_STATUS_SUCCESS" and r.data == data, r
    c = handover_counters(fresh_target)
    assert c == {"handshake_parked": 1, "handshake_parked_delivered": 1, "handshake_parked_dropped": 0}, c
    st = t.stats()  # the slow path's own count, in the control protocol's STATS
    assert (st["handshake_parked"], st["handshake_parked_dropped"]) == (1, 0), st
    conn.terminate()


def test_final_ack_out_of_window_then_ahead_of_rcv_nxt(fresh_target, fake_wire):
    """RFC 9293 §3.10.7.4 in SYN-RECEIVED, first check: a segment outside
    the window is answered with <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> and
    dropped, not reset, and the handshake stays. Fifth: an acceptable ACK
    on a segment beyond RCV.NXT (the peer's first segment lost) completes
    the handshake; the engine keeps the segment out of order, and the
    missing one fills the hole: the host receives the bytes in order."""
    t = fresh_target.target
    t.listen(7304, backlog=4)
    fake = FakePeer(fake_wire, "198.18.0.74", 41004, mac="02:00:c6:12:00:4a")
    fake.flow = flow = Flow(fake_wire, 7304, fake.ip, fake.port, fake.mac)
    fake_wire.send(flow.segment(seq=fake.iss, flags=SYN, win=65535,
                                options=fake._options() + [("Timestamp", (fake.tsval(), 0))]))
    synack = fake_wire.wait_for(flow.out, 3)
    assert synack is not None and synack.flags == SYN | ACK, synack
    ts = lambda: (fake.tsval(), synack.ts[0]) if synack.ts else None  # noqa: E731
    rcv_nxt = seq_add(fake.iss, 1)
    # An old segment (before RCV.NXT): an ACK, no RST.
    mark = fake_wire.mark()
    fake_wire.send(flow.segment(seq=seq_add(fake.iss, -2000), ack=seq_add(synack.seq, 1), flags=ACK,
                                win=65535, ts=ts()))
    reply = fake_wire.wait_for(lambda s: flow.out(s) and not s.flags & SYN, 2, mark)
    assert reply is not None and reply.flags == ACK and reply.ack == rcv_nxt \
        and reply.seq == seq_add(synack.seq, 1), fake_wire.since(mark, flow.out)
    # The second half of the peer's first data, its first half lost.
    data = stream_peer.stream(NBYTES)
    half = NBYTES // 2
    mark = fake_wire.mark()
    fake_wire.send(flow.segment(seq=seq_add(rcv_nxt, half), ack=seq_add(synack.seq, 1), flags=ACK | PSH,
                                win=65535, payload=data[half:], ts=ts()))
    conn = t.accept(5)
    assert (conn.remote_ip, conn.remote_port) == (fake.ip, fake.port)
    dup = wait_ack_of(fake_wire, flow, rcv_nxt, mark)
    assert dup is not None, f"no ACK of RCV.NXT for the segment beyond it: {fake_wire.since(mark, flow.out)}"
    fake_wire.send(flow.segment(seq=rcv_nxt, ack=seq_add(synack.seq, 1), flags=ACK | PSH,
                                win=65535, payload=data[:half], ts=ts()))
    assert wait_ack_of(fake_wire, flow, seq_add(rcv_nxt, NBYTES), mark) is not None, \
        fake_wire.since(mark, flow.out)
    r = conn.post_receive(1 << 16).wait(10)
    assert r.status == "NDIS_STATUS_SUCCESS" and r.data == data, r
    assert not [s for s in fake_wire.since(0, flow.out) if s.flags & RST], "chimneyd reset the handshake"
    conn.terminate()


def test_data_right_behind_the_synack(fresh_target, fake_wire):
    """Active open: the peer's SYN-ACK and its first data reach chimneyd back
    to back, the data before the engine can have the connection (it needs
    the SYN-ACK to be handled first): the engine takes it, ACKs it, and the
    host receives it."""
    t = fresh_target.target
    fake = FakePeer(fake_wire, "198.18.0.72", 41001, mac="02:00:c6:12:00:48")
    data = stream_peer.stream(NBYTES)
    box = {}
    th = threading.Thread(target=lambda: box.update(conn=t.connect(fake.ip, fake.port)))
    th.start()
    syn = fake_wire.wait_for(lambda s: s.from_target and s.flags & SYN and s.dst == fake.ip
                             and s.dport == fake.port, 10)
    assert syn is not None, "no SYN"
    fake.syn = syn
    fake.flow = flow = Flow(fake_wire, syn.sport, fake.ip, fake.port, fake.mac)
    mark = fake_wire.mark()
    ts = (fake.tsval(), syn.ts[0]) if syn.ts else None
    # Built first: sent within microseconds of each other.
    frames = [bytes(flow.segment(seq=fake.iss, ack=seq_add(syn.seq, 1), flags=SYN | ACK, win=65535,
                                 options=fake._options(), ts=ts)),
              bytes(flow.segment(seq=seq_add(fake.iss, 1), ack=seq_add(syn.seq, 1), flags=ACK | PSH,
                                 win=65535, payload=data, ts=ts))]
    fake_wire.send(*frames)
    th.join(10)
    conn = box.get("conn")
    assert conn is not None, "CONNECT did not complete"
    ack = wait_ack_of(fake_wire, flow, seq_add(fake.iss, 1 + NBYTES), mark)
    assert ack is not None, f"the data behind the SYN-ACK was not ACKed: {fake_wire.since(mark, flow.out)}"
    r = conn.post_receive(1 << 16).wait(10)
    assert r.status == "NDIS_STATUS_SUCCESS" and r.data == data, r
    c = handover_counters(fresh_target)
    assert c["handshake_parked_dropped"] == 0 and c["handshake_parked"] == c["handshake_parked_delivered"], c
    conn.terminate()


def test_data_on_the_ack_of_a_syn_cookie(fresh_target, fake_wire):
    """RFC 4987 §3.6: the listener's backlog is full, so the SYN is answered
    with a cookie and no state; the ACK that returns the cookie carries the
    peer's first data: the connection is accepted and the engine takes the
    data."""
    t = fresh_target.target
    t.listen(7303, backlog=1)
    # A half-open connection fills the backlog (its peer never ACKs).
    filler = FakePeer(fake_wire, "198.18.0.73", 41002, mac="02:00:c6:12:00:49")
    ff = Flow(fake_wire, 7303, filler.ip, filler.port, filler.mac)
    mark = fake_wire.mark()
    fake_wire.send(ff.segment(seq=filler.iss, flags=SYN, win=65535, options=filler._options()))
    assert fake_wire.wait_for(ff.out, 3, mark) is not None
    fake = FakePeer(fake_wire, "198.18.0.74", 41003, mac="02:00:c6:12:00:4a")
    flow = Flow(fake_wire, 7303, fake.ip, fake.port, fake.mac)
    before = t.stats()
    mark = fake_wire.mark()
    fake_wire.send(flow.segment(seq=fake.iss, flags=SYN, win=65535,
                                options=fake._options() + [("Timestamp", (fake.tsval(), 0))]))
    synack = fake_wire.wait_for(flow.out, 3, mark)
    assert synack is not None and synack.flags == SYN | ACK, synack
    assert t.stats()["syn_cookies_sent"] == before["syn_cookies_sent"] + 1
    data = stream_peer.stream(NBYTES)
    mark = fake_wire.mark()
    fake_wire.send(flow.segment(seq=seq_add(fake.iss, 1), ack=seq_add(synack.seq, 1), flags=ACK | PSH,
                                win=65535, payload=data, ts=(fake.tsval(), synack.ts[0])))
    conn = t.accept(5)
    assert (conn.remote_ip, conn.remote_port) == (fake.ip, fake.port)
    assert t.stats()["syn_cookies_accepted"] == before["syn_cookies_accepted"] + 1
    ack = wait_ack_of(fake_wire, flow, seq_add(fake.iss, 1 + NBYTES), mark)
    assert ack is not None, f"the data on the cookie's ACK was not ACKed: {fake_wire.since(mark, flow.out)}"
    r = conn.post_receive(1 << 16).wait(10)
    assert r.status == "NDIS_STATUS_SUCCESS" and r.data == data, r
    c = handover_counters(fresh_target)
    assert c == {"handshake_parked": 1, "handshake_parked_delivered": 1, "handshake_parked_dropped": 0}, c
    conn.terminate()
