"""The core scenarios on each kind of device chimneyd runs on here:

  tap          chimneyd's own net_tap port; the kernel sees its TAP.
  virtio_user  chimneyd on a virtio-user port; its vhost-user backend is
               dpdk-testpmd in io mode bridging net_vhost to a TAP in the
               namespace (chimney.testing.VhostUserForwarder), where the
               kernel sees it.
  memif        chimneyd as the memif client of `chimney-bench peer`, whose
               own engine (with chimneyd's ARP and listener code) runs a
               sink, a source and an echo (devices.memif_target).

The tap and virtio_user tests run once per device (the `target` fixture of
devices.py) with the Linux kernel as the peer; the memif tests (test_memif_*)
have the bench as the peer. Each run has its own namespace(s), chimneyd (and
testpmd or the bench). The peer's own byte counts and hashes are the judge.
"""

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, LinuxPeer, send_stream
from devices import DEVICES, InThread, bench_binary, memif_target, skip_backlog_events, target_on

from chimney.client import ChimneyError

import peer as stream_peer

MiB = 1 << 20
ACCEPT_S = 90  # a peer started with `ip netns exec` may be slow to start on a loaded machine
HERE = Path(__file__).parent
PEER_PORT = 7001


@pytest.fixture(params=DEVICES)
def target(request, chimneyd, tmp_path):
    """A chimneyd of this test's own on each device (devices.py)."""
    with target_on(request.param, chimneyd, tmp_path) as t:
        yield t


def sha(n, offset=0):
    return hashlib.sha256(stream_peer.stream(n, offset)).hexdigest()


def receive_exactly(conn, total, window=8, chunk=MiB):
    """Keeps `window` receives of `chunk` bytes posted until `total` bytes of
    the test stream came in; returns (sha256 hex, receives still posted)."""
    h = hashlib.sha256()
    received = 0
    posted = [conn.post_receive(chunk) for _ in range(window)]
    while received < total:
        c = posted.pop(0).wait(60)
        assert c.status == "NDIS_STATUS_SUCCESS", (c, received)
        h.update(c.data)
        received += len(c.data)
        posted.append(conn.post_receive(chunk))
    assert received == total
    return h.hexdigest(), posted


# ---------------------------------------------------------------- ARP and ICMP


def test_arp_both_ways_and_ping(target):
    """ARP both ways (RFC 826: chimney's request before its SYN, the kernel's
    request answered) and ICMP echo (RFC 792); the refused CONNECT completes
    REQUEST_ABORTED (docs/CONTROL_PROTOCOL.md, handshakes)."""
    # chimney resolves the peer itself (its ARP request) before its SYN; the
    # closed port answers RST, so the CONNECT is refused.
    t = target.target
    with pytest.raises(ChimneyError) as refused:
        t.connect(target.peer_ip, 7999)
    assert refused.value.status == "NDIS_STATUS_REQUEST_ABORTED", refused.value
    port = target.port(0)
    assert port["arp_requests"] >= 1, port
    # The kernel learnt chimney's MAC from that request, and answers pings.
    cp = target.run(["ping", "-n", "-c", "3", "-W", "1", "-i", "0.2", target.target_ip],
                    check=False, timeout=60)  # generous: a loaded machine
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert re.search(r"\b3 packets transmitted, 3 received\b", cp.stdout), cp.stdout
    assert "DUP" not in cp.stdout
    out = target.run(["ip", "neigh", "show", target.target_ip, "dev", target.iface]).stdout
    m = re.search(r"lladdr ([0-9a-f:]{17})", out)
    assert m and "FAILED" not in out and "INCOMPLETE" not in out, out
    assert m.group(1).lower() == target.mac != target.peer_mac.lower()
    # A fresh request from the kernel is answered too (the entry was flushed).
    target.run(["ip", "neigh", "flush", "dev", target.iface])
    target.ping(1)
    after = target.port(0)
    assert after["arp_replies"] >= port["arp_replies"] + 1, (port, after)
    assert after["icmp_echo_replies"] >= port["icmp_echo_replies"] + 4, (port, after)
    assert after["rx_errors"] == 0 and after["tx_errors"] == 0, after


# ---------------------------------------------------------------- active open

DUPLEX_PEER = r"""
import hashlib, json, socket, sys, threading
import peer
port, total = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(1)
print("listening", flush=True)
conn, addr = srv.accept()
sent = {"bytes": 0}
def send():
    try:
        for c in peer.chunks(total):
            conn.sendall(c)
            sent["bytes"] += len(c)
        conn.shutdown(socket.SHUT_WR)
    except OSError as e:
        sent["error"] = str(e)
th = threading.Thread(target=send)
th.start()
h, n, end = hashlib.sha256(), 0, "eof"
try:
    while True:
        d = conn.recv(1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
except OSError as e:
    end = str(e)
th.join()
print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "end": end, "sent": sent}), flush=True)
"""


def test_connect_32MiB_each_way_at_once(target):
    """chimney CONNECTs to a Linux listener; both sides send 32 MiB of the test
    stream at the same time, then each closes its half: C-6, C-9, C-16
    (DISCONNECT after the last byte, later receives INVALID_STATE), C-12."""
    t = target.target
    total = 32 * MiB
    linux = target.popen([PYTHON, "-c", DUPLEX_PEER, str(PEER_PORT), str(total)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(HERE))
    assert linux.stdout.readline().strip() == "listening"
    conn = t.connect(target.peer_ip, PEER_PORT)
    sender = InThread(send_stream, conn, total)
    digest, posted = receive_exactly(conn, total)
    assert digest == sha(total)
    assert sender.result() == total
    # The peer's FIN after its last byte (C-16); later receives: INVALID_STATE.
    assert skip_backlog_events(t).kind == "DISCONNECT"
    for r in posted:
        assert r.wait(10).status == "NDIS_STATUS_INVALID_STATE"
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == 0, d
    out, err = linux.communicate(timeout=60)
    got = json.loads(out.splitlines()[-1])
    assert got["sent"] == {"bytes": total}, (got, err)
    assert got["end"] == "eof" and got["bytes"] == total, got
    assert got["sha256"] == sha(total)
    conn.terminate()


def test_graceful_disconnect_delivers_exactly_the_bytes_sent(target):
    """C-11/C-12: the final data rides with the FIN; SUCCESS only once both
    are ACKed, bytes_transferred = exactly that data; the peer reads
    every byte once and then EOF."""
    t = target.target
    linux = LinuxPeer(target, "sink", PEER_PORT)
    conn = t.connect(target.peer_ip, PEER_PORT)
    body = 3 * MiB + 777
    send_stream(conn, body, chunk=MiB // 2)
    final = stream_peer.stream(12345, body)
    d = conn.disconnect(graceful=True, data=final).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == len(final), d
    got = linux.result()
    assert got["end"] == "eof" and got["bytes"] == body + len(final), got
    assert got["sha256"] == sha(body + len(final))
    # The peer closed after EOF: its FIN reaches us as DISCONNECT.
    assert skip_backlog_events(t).kind == "DISCONNECT"
    state = conn.terminate()
    assert state["snd_una"] == state["snd_max"], state


def test_abortive_disconnect_with_data_outstanding(target):
    """C-13: RST at once; every send still outstanding completes
    REQUEST_ABORTED (none SUCCESS after the first aborted one, C-7); the peer
    sees ECONNRESET."""
    t = target.target
    linux = LinuxPeer(target, "stall", PEER_PORT)
    conn = t.connect(target.peer_ip, PEER_PORT)
    size = 256 * 1024
    sends = [conn.send(stream_peer.stream(size, i * size)) for i in range(16)]
    time.sleep(1.0)  # the stalled reader's window fills; most of the 4 MiB waits
    d = conn.disconnect(graceful=False).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS", d
    statuses = [s.wait(10).status for s in sends]
    assert statuses[-1] == "NDIS_STATUS_REQUEST_ABORTED", statuses
    first = statuses.index("NDIS_STATUS_REQUEST_ABORTED")
    assert set(statuses[first:]) == {"NDIS_STATUS_REQUEST_ABORTED"}, statuses
    assert set(statuses[:first]) <= {"NDIS_STATUS_SUCCESS"}, statuses
    got = linux.result()
    assert got["end"] == "reset" and got.get("error") == "ECONNRESET", got
    conn.terminate()


# ---------------------------------------------------------------- passive open


def test_linux_client_to_a_chimney_listener(target):
    """A Linux client connects to a chimney LISTEN, sends 8 MiB and its FIN;
    the host reads it all (C-9, C-16), answers 8 MiB and closes gracefully
    (C-11/C-12)."""
    t = target.target
    t.listen(7100)
    up, down = 8 * MiB, 8 * MiB
    client = target.popen([PYTHON, str(HERE / "linux_client.py"), target.target_ip, "7100", str(up)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(HERE))
    conn = t.accept(ACCEPT_S)
    assert conn.remote_ip == target.peer_ip and conn.local_port == 7100
    digest, posted = receive_exactly(conn, up, window=4)
    assert digest == sha(up)
    assert skip_backlog_events(t).kind == "DISCONNECT"
    for r in posted:
        assert r.wait(10).status == "NDIS_STATUS_INVALID_STATE"
    send_stream(conn, down)
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS", d
    out, err = client.communicate(timeout=60)
    got = json.loads(out.splitlines()[-1])
    assert got["end"] == "eof" and got["bytes"] == down, (got, err)
    assert got["sha256"] == sha(down)
    conn.terminate()
    t.release_listen(7100)


# ---------------------------------------------------------------- memif
#
# chimneyd on a memif port with chimney-bench peer as the other end
# (devices.memif_target): the bench's own engine, behind chimneyd's ARP and
# listener code, runs a sink, a source and an echo. The peer's reports (bytes
# and sha256 of what it received and sent, its disconnect's outcome) are the
# judge on its side, the host's completions on ours.

MEMIF_BYTES = 4 * MiB


@pytest.fixture
def bench(chimneyd):
    path = bench_binary(chimneyd)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"chimney-bench not found at {path}: build it with scripts/build "
                    f"(or point $CHIMNEY_BENCH at one)", pytrace=False)
    return str(path)


@pytest.fixture
def memif(chimneyd, bench, tmp_path):
    """chimney-bench peer (memif server, 198.18.0.1) and a chimneyd of this
    test's own as its memif client (198.18.0.2); stopped by PID at the end."""
    with memif_target(chimneyd, bench, tmp_path, source_bytes=MEMIF_BYTES) as m:
        yield m


def finish_memif(m, closed):
    """Stops the peer and checks its counters: `closed` connections, every
    one closed as the contract says (none aborted, refused or failed), none
    left open."""
    m.target.close_client()
    ex = m.peer.stop()
    assert ex is not None, m.peer.text()[-2000:]
    assert ex["closed"] == closed and ex["failed"] == 0 and ex["refused"] == 0, ex
    assert ex["open"] == 0, ex
    return ex


def test_memif_arp_and_a_closed_port(memif):
    """ARP over memif both ways through the peer's copy of chimneyd's slow
    path (RFC 826): chimney's request before its SYN is answered; the peer's
    closed port answers the SYN with RST (RFC 9293 §3.10.7.1), so the CONNECT
    completes REQUEST_ABORTED."""
    t = memif.target.target
    with pytest.raises(ChimneyError) as refused:
        t.connect(memif.peer_ip, 7999)
    assert refused.value.status == "NDIS_STATUS_REQUEST_ABORTED", refused.value
    port = memif.target.port(0)
    assert port["arp_requests"] >= 1, port
    assert port["rx_errors"] == 0 and port["tx_errors"] == 0, port
    ex = finish_memif(memif, 0)
    assert ex["arp_replies"] >= 1 and ex["rst_sent"] >= 1, ex


def test_memif_send_4MiB_to_the_sink_graceful_with_exact_bytes(memif):
    """chimney -> peer: 4 MiB of the test stream, the last 12345 bytes riding
    with the FIN. C-11/C-12: the graceful disconnect completes SUCCESS only
    once the FIN and all data are ACKed, with bytes_transferred exactly its
    data; the peer counted and hashed every byte once (C-6), then closed its
    half: DISCONNECT (C-16)."""
    t = memif.target.target
    conn = t.connect(memif.peer_ip, memif.ports["sink"])
    final = stream_peer.stream(12345, MEMIF_BYTES - 12345)
    assert send_stream(conn, MEMIF_BYTES - len(final)) == MEMIF_BYTES - len(final)
    d = conn.disconnect(graceful=True, data=final).wait(60)
    assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == len(final), d
    assert skip_backlog_events(t).kind == "DISCONNECT"
    state = conn.terminate()
    assert state["snd_una"] == state["snd_max"], state
    got = memif.peer.report("sink")
    assert got["end"] == "closed" and got["peer_fin"], got
    assert got["received"] == MEMIF_BYTES and got["received_sha256"] == sha(MEMIF_BYTES), got
    assert got["disconnect"] == "NDIS_STATUS_SUCCESS" and got["disconnect_bytes"] == 0, got
    finish_memif(memif, 1)


def test_memif_receive_4MiB_from_the_source(memif):
    """peer -> chimney: the source sends 4 MiB of the test stream and its
    FIN. C-9: the host's receives complete in order with every byte (sha256
    on both sides); C-16: DISCONNECT after the last byte, receives posted
    after it complete INVALID_STATE; C-12: our graceful disconnect SUCCESS
    with bytes_transferred 0; the peer's own disconnect SUCCESS (its FIN
    ACKed) with exactly its bytes ACKed."""
    t = memif.target.target
    conn = t.connect(memif.peer_ip, memif.ports["source"])
    digest, posted = receive_exactly(conn, MEMIF_BYTES, window=4, chunk=256 * 1024)
    assert digest == sha(MEMIF_BYTES)
    assert skip_backlog_events(t).kind == "DISCONNECT"
    for r in posted:
        assert r.wait(10).status == "NDIS_STATUS_INVALID_STATE"
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == 0, d
    conn.terminate()
    got = memif.peer.report("source")
    assert got["end"] == "closed" and got["peer_fin"], got
    assert got["sent"] == MEMIF_BYTES == got["sent_posted"], got
    assert got["sent_sha256"] == sha(MEMIF_BYTES), got
    assert got["disconnect"] == "NDIS_STATUS_SUCCESS" and got["disconnect_bytes"] == 0, got
    finish_memif(memif, 1)


def test_memif_echo_4MiB_both_ways_at_once(memif):
    """Both ways on one connection at once: chimney sends 4 MiB to the echo
    while it reads the echo back (C-5, C-6, C-9; sha256 on both sides). Then
    C-11/C-12: our graceful disconnect SUCCESS with bytes_transferred 0 once
    the FIN is ACKed; the echo closes after it: DISCONNECT (C-16), the
    receives still posted complete INVALID_STATE."""
    t = memif.target.target
    conn = t.connect(memif.peer_ip, memif.ports["echo"])
    sender = InThread(send_stream, conn, MEMIF_BYTES)
    digest, posted = receive_exactly(conn, MEMIF_BYTES, window=4, chunk=256 * 1024)
    assert digest == sha(MEMIF_BYTES)
    assert sender.result() == MEMIF_BYTES
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == 0, d
    assert skip_backlog_events(t).kind == "DISCONNECT"
    for r in posted:
        assert r.wait(10).status == "NDIS_STATUS_INVALID_STATE"
    conn.terminate()
    got = memif.peer.report("echo")
    assert got["end"] == "closed" and got["peer_fin"], got
    assert got["received"] == got["sent"] == MEMIF_BYTES, got
    assert got["received_sha256"] == got["sent_sha256"] == sha(MEMIF_BYTES), got
    assert got["disconnect"] == "NDIS_STATUS_SUCCESS" and got["disconnect_bytes"] == 0, got
    finish_memif(memif, 1)
