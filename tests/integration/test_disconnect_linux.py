"""The disconnect rules (CONTRACT.md C-11..C-17, C-19..C-21; the seed is the
NDIS page of NdisTcpOffloadDisconnectComplete) scripted against the Linux
kernel, every scenario with the wire check (wirecheck.py).

chimneyd runs in the module's namespace; the Linux side is peer.py's scripted
mode (ctl: a Linux listener that chimney CONNECTs to, the active open;
ctl-connect: a Linux client to a chimney LISTEN, the passive open), driven a
step at a time. The judges are the Linux side's own counts, hashes, errno and
TCP state, the completions' statuses and byte counts, and the capture.

Run one scenario by hand (as root):
    CHIMNEYD=build/app/chimneyd/chimneyd /usr/bin/python3 -m pytest -v \\
        tests/integration/test_disconnect_linux.py -k 'simultaneous and racing'
"""

import hashlib
import itertools
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import LinuxCtl, MiB

import peer as stream_peer

KiB = 1 << 10
OPENS = ["active", "passive"]  # chimney CONNECTs to Linux / a Linux client to chimney's LISTEN
_ports = itertools.count(7200)

SUCCESS = "NDIS_STATUS_SUCCESS"
ABORTED = "NDIS_STATUS_REQUEST_ABORTED"
UPLOADING = "NDIS_STATUS_UPLOAD_IN_PROGRESS"
INVALID = "NDIS_STATUS_INVALID_STATE"


def sha(n, offset=0):
    return hashlib.sha256(stream_peer.stream(n, offset)).hexdigest()


# ---------------------------------------------------------------------------
# The host's side: events by connection, receives and sends kept posted.

def drain_events(t):
    stash = t.__dict__.setdefault("_events_by_handle", {})
    while True:
        try:
            e = t.next_event(0)
        except TimeoutError:
            return stash
        stash.setdefault(e.handle, []).append(e)


def wait_event(t, conn, kinds=("DISCONNECT", "ABORT", "RETRIEVE"), timeout=30):
    """The next event of `conn` of one of `kinds` (the module's target is
    shared: other connections' events are kept for them)."""
    stash = t.__dict__.setdefault("_events_by_handle", {})
    deadline = time.monotonic() + timeout
    while True:
        q = stash.setdefault(conn.handle, [])
        for i, e in enumerate(q):
            if e.kind in kinds:
                return q.pop(i)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {kinds} event for {conn} within {timeout} s; had {q}")
        try:
            e = t.next_event(min(left, 0.2))
        except TimeoutError:
            continue
        stash.setdefault(e.handle, []).append(e)


def events_seen(t, conn, kinds=("DISCONNECT", "ABORT", "RETRIEVE")):
    return [e.kind for e in drain_events(t).get(conn.handle, []) if e.kind in kinds]


class Receiver:
    """Keeps `depth` receives posted (C-9) and hashes what they bring, until
    the peer's FIN (C-16: then the posted ones complete INVALID_STATE)."""

    def __init__(self, conn, size=256 * KiB, depth=4, post=True):
        self.conn = conn
        self.size, self.depth = size, depth
        self.posted = []
        self.h = hashlib.sha256()
        self.n = 0
        self.statuses = []
        self.stopped = False
        if post:
            self.start()

    def start(self):
        while len(self.posted) < self.depth:
            self.posted.append(self.conn.post_receive(self.size))

    def pump(self):
        while self.posted and self.posted[0].done():
            c = self.posted.pop(0).wait(0)
            self.statuses.append(c.status)
            if c.status == SUCCESS:
                self.h.update(c.data)
                self.n += len(c.data)
                if not self.stopped:
                    self.posted.append(self.conn.post_receive(self.size))
            else:
                self.stopped = True

    def settle(self, timeout=10):
        """After the FIN: every receive still posted completes (C-16)."""
        for r in self.posted:
            self.statuses.append(r.wait(timeout).status)
        self.posted = []

    @property
    def sha256(self):
        return self.h.hexdigest()


class Sender:
    """Sends `total` bytes of the test stream from `offset`, `window` requests
    of `chunk` bytes in flight; keeps every completion in order."""

    def __init__(self, conn, total, offset=0, chunk=256 * KiB, window=8):
        self.conn, self.total, self.offset = conn, total, offset
        self.chunk, self.window = chunk, window
        self.queued = 0
        self.pending = []
        self.done = []   # (bytes posted, Completion)
        self.pump()

    def pump(self):
        while self.pending and self.pending[0][1].done():
            n, r = self.pending.pop(0)
            self.done.append((n, r.wait(0)))
        while self.queued < self.total and len(self.pending) < self.window:
            n = min(self.chunk, self.total - self.queued)
            self.pending.append((n, self.conn.send(stream_peer.stream(n, self.offset + self.queued))))
            self.queued += n

    def post_all(self):
        while self.queued < self.total:
            n = min(self.chunk, self.total - self.queued)
            self.pending.append((n, self.conn.send(stream_peer.stream(n, self.offset + self.queued))))
            self.queued += n

    @property
    def finished(self):
        return self.queued == self.total and not self.pending

    def wait_all(self, timeout=60):
        for n, r in self.pending:
            self.done.append((n, r.wait(timeout)))
        self.pending = []
        return self.done

    def statuses(self):
        return [c.status for _, c in self.done]

    def acked(self):
        return sum(c.bytes_transferred for _, c in self.done)


def run_until(pred, *pumps, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        for p in pumps:
            p.pump()
        if pred():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.002)


def assert_all_success(sender):
    for n, c in sender.done:
        assert c.status == SUCCESS and c.bytes_transferred == n, (n, c)  # C-6


# ---------------------------------------------------------------------------
# Opening a connection either way.

class Opened:
    def __init__(self, target, open_kind, *peer_args):
        self.target = target
        self.t = target.target
        self.port = next(_ports)
        self.open_kind = open_kind
        self.listening = False
        if open_kind == "active":
            self.linux = LinuxCtl(target, "ctl", self.port, *peer_args)
            self.conn = self.t.connect(target.peer_ip, self.port)
            self.linux_port, self.chimney_port = self.port, self.linux.accepted()["peer_port"]
        else:
            self.t.listen(self.port)
            self.listening = True
            self.linux = LinuxCtl(target, "ctl-connect", target.target_ip, self.port, *peer_args, expect="json")
            assert self.linux.first["event"] == "connected", self.linux.first
            self.conn = self.t.accept(30)
            self.linux_port, self.chimney_port = self.linux.first["local_port"], self.port

    def linux_state(self):
        """The Linux kernel's TCP state of this connection (ss), None when it
        has none left: a socket in TIME_WAIT shows CLOSE to its owner."""
        for line in self.target.run(["ss", "-Htan"]).stdout.splitlines():
            f = line.split()
            if len(f) >= 5 and f[3].endswith(f":{self.linux_port}") and f[4] == f"{self.target.target_ip}:{self.chimney_port}":
                return f[0]
        return None

    def close_listener(self):
        if self.listening:
            self.t.release_listen(self.port)
            self.listening = False


@pytest.fixture
def opened(target):
    made = []

    def make(open_kind, *peer_args):
        o = Opened(target, open_kind, *peer_args)
        made.append(o)
        return o
    yield make
    for o in made:
        o.close_listener()
        if o.linux.proc.poll() is None:
            o.linux.proc.kill()
            o.linux.proc.wait(5)
        if not o.conn.terminated:
            try:
                o.conn.terminate(10)
            except Exception:
                pass


def wait_peer_stalled(linux, timeout=15):
    """Until the Linux reader's window is closed (it reads nothing) and its
    kernel took no new bytes for a while: everything chimney could send is
    in and ACKed."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        st = linux.cmd("status")
        if st["bytes_received"] != last:
            last, since = st["bytes_received"], time.monotonic()
        elif st.get("rcv_wnd", 0) == 0 and time.monotonic() - since > 0.3:
            return st
        assert time.monotonic() < deadline, f"the Linux reader's window never closed: {st}"
        time.sleep(0.05)


def one_stream(wire, **allow):
    a = wire.check(**allow)
    streams = a.stream_list()
    assert len(streams) == 1, [str(s) for s in streams]
    return streams[0]


def both_fins_acked(s):
    assert s.fins_from_target and s.target_fin_acked, f"chimney's FIN sent and ACKed: {s}"
    assert s.fins_from_peer and s.peer_fin_acked, f"the peer's FIN sent and ACKed: {s}"
    assert not s.rsts_from_target and not s.rsts_from_peer, str(s)


# ---------------------------------------------------------------------------
# C-11, C-12: graceful, with and without final data, data both ways.

@pytest.mark.parametrize("peer_bytes", [0, 3 * MiB], ids=["one-way", "both-ways"])
@pytest.mark.parametrize("final", [0, 4321], ids=["no-final-data", "final-data"])
@pytest.mark.parametrize("open_kind", OPENS)
def test_graceful_close_we_close_first(target, wire, opened, open_kind, final, peer_bytes):
    """C-11: outstanding sends complete first, in order, then the FIN (with
    the final data before it); receiving goes on after our FIN. C-12:
    SUCCESS only once FIN and data are ACKed, bytes_transferred = the final
    data. C-16: the peer's FIN comes as DISCONNECT after every byte before
    it. C-19: we closed first, so the connection ends in TIME_WAIT. RFC 9293
    §3.6 (FIN_WAIT_1 -> FIN_WAIT_2 -> TIME_WAIT)."""
    o = opened(open_kind)
    t, conn, linux = o.t, o.conn, o.linux
    total = 2 * MiB
    if peer_bytes:
        linux.cmd(f"send-bg {peer_bytes}")
    rx = Receiver(conn)
    tx = Sender(conn, total)
    tail = stream_peer.stream(final, total)
    run_until(lambda: tx.finished, tx, rx, what="sends")
    d = conn.disconnect(graceful=True, data=tail)
    run_until(d.done, rx, what="graceful disconnect")
    c = d.wait(0)
    assert c.status == SUCCESS and c.bytes_transferred == final, c  # C-12
    assert_all_success(tx)
    got = linux.cmd("wait-eof 30")
    assert got["eof"] and got["rx"] == total + final, got
    assert got["rx_sha256"] == sha(total + final)
    # Receiving goes on (C-11): the peer's data, then its FIN.
    run_until(lambda: rx.n == peer_bytes, rx, what="the peer's data after our FIN")
    assert linux.cmd("wait-send 60")["tx"] == peer_bytes
    linux.cmd("shutdown")
    run_until(lambda: "DISCONNECT" in events_seen(t, conn), rx, what="the peer's FIN (DISCONNECT)")
    rx.settle()
    assert rx.n == peer_bytes and rx.sha256 == sha(peer_bytes)  # C-16: every byte before the FIN
    assert set(rx.statuses[-rx.depth:]) <= {SUCCESS, INVALID}
    state = conn.terminate()
    assert state["state"] == "TIME_WAIT", state  # C-19
    end = linux.quit()
    assert end["error"] is None, end
    s = one_stream(wire)
    both_fins_acked(s)
    assert s.syn_from == ("target" if open_kind == "active" else "peer")
    assert s.bytes_from_target == total + final and s.bytes_from_peer == peer_bytes, s


# ---------------------------------------------------------------------------
# C-16, C-11: the peer closes first; we go on sending, then close (LAST_ACK).

@pytest.mark.parametrize("reader", ["reading", "stalled"])
@pytest.mark.parametrize("open_kind", OPENS)
def test_peer_fin_first_then_our_graceful_close(target, wire, opened, open_kind, reader):
    """C-16: the peer's FIN is indicated (DISCONNECT) only after every byte
    before it was consumed; later receive posts complete INVALID_STATE;
    sending goes on in CLOSE_WAIT (half-close). C-11/C-12: then our graceful
    close (CLOSE_WAIT -> LAST_ACK, RFC 9293 §3.10.4) completes SUCCESS only
    when our FIN is ACKed: with a stalled reader the data and FIN wait
    behind the closed window, and LAST_ACK must not end (nor the disconnect
    complete) on ACKs of the data alone (RFC 9293 §3.10.7.4 LAST-ACK)."""
    args = ["--no-read"] if reader == "stalled" else []
    o = opened(open_kind, *args)
    t, conn, linux = o.t, o.conn, o.linux
    peer_bytes = 1 * MiB + 17
    rx = Receiver(conn)
    linux.cmd(f"send-bg {peer_bytes}")
    run_until(lambda: rx.n == peer_bytes, rx, what="the peer's data")
    assert linux.cmd("wait-send 30")["tx"] == peer_bytes
    linux.cmd("shutdown")
    run_until(lambda: "DISCONNECT" in events_seen(t, conn), rx, what="DISCONNECT")
    assert rx.n == peer_bytes and rx.sha256 == sha(peer_bytes)  # C-16
    rx.settle()
    assert rx.statuses[-1] == INVALID  # C-16: receives after the FIN
    assert conn.post_receive(100).wait(10).status == INVALID
    # Half-close: we keep sending.
    total = 6 * MiB
    tx = Sender(conn, total)
    tx.post_all()
    final = stream_peer.stream(999, total)
    d = conn.disconnect(graceful=True, data=final)
    if reader == "stalled":
        st = wait_peer_stalled(linux)
        assert st["bytes_received"] < total, st
        assert not d.done(), "LAST_ACK: the disconnect waits for the ACK of our FIN"
        linux.cmd("read on")
    c = d.wait(60)
    assert c.status == SUCCESS and c.bytes_transferred == len(final), c
    tx.wait_all(0)
    assert_all_success(tx)  # C-11: the sends completed first
    got = linux.cmd("wait-eof 30")
    assert got["eof"] and got["rx"] == total + len(final) and got["rx_sha256"] == sha(total + len(final)), got
    assert o.linux_state() == "TIME-WAIT"  # the peer closed first (RFC 9293 §3.6)
    state = conn.terminate()
    assert state["state"] == "CLOSED", state  # LAST_ACK ended on the ACK of our FIN
    linux.quit()
    s = one_stream(wire)
    both_fins_acked(s)
    assert s.bytes_from_target == total + len(final) and s.bytes_from_peer == peer_bytes, s


# ---------------------------------------------------------------------------
# C-11: we close first and keep receiving (the peer sends after our FIN).

@pytest.mark.parametrize("open_kind", OPENS)
def test_we_fin_and_keep_receiving(target, wire, opened, open_kind):
    """C-11: only the send half closes; receiving goes on in FIN_WAIT_2.
    The Linux peer reads our FIN (EOF), then sends 8 MiB and closes; every
    byte arrives in order (C-9), then DISCONNECT (C-16), and the connection
    ends in TIME_WAIT (C-19)."""
    o = opened(open_kind)
    t, conn, linux = o.t, o.conn, o.linux
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == SUCCESS and d.bytes_transferred == 0, d
    assert linux.cmd("wait-eof 30")["eof"]
    peer_bytes = 8 * MiB + 5
    linux.cmd(f"send-bg {peer_bytes}")
    rx = Receiver(conn)
    run_until(lambda: rx.n == peer_bytes, rx, what="8 MiB after our FIN")
    assert linux.cmd("wait-send 60")["tx"] == peer_bytes
    linux.cmd("shutdown")
    run_until(lambda: "DISCONNECT" in events_seen(t, conn), rx, what="DISCONNECT")
    rx.settle()
    assert rx.sha256 == sha(peer_bytes)
    assert conn.terminate()["state"] == "TIME_WAIT"
    assert linux.quit()["error"] is None
    s = one_stream(wire)
    both_fins_acked(s)
    assert s.bytes_from_peer == peer_bytes and s.bytes_from_target == 0, s


# ---------------------------------------------------------------------------
# C-13: abortive with sends outstanding.

@pytest.mark.parametrize("pending_graceful", [False, True], ids=["abortive", "graceful-then-abortive"])
@pytest.mark.parametrize("open_kind", OPENS)
def test_abortive_with_sends_outstanding(target, wire, opened, open_kind, pending_graceful):
    """C-13: the only case in which chimney sends a RST on its own; every
    outstanding send completes REQUEST_ABORTED before the disconnect, which
    completes SUCCESS (the RST was sent); a pending graceful disconnect
    completes REQUEST_ABORTED first. C-6/C-7: what completed SUCCESS before
    is exactly what the Linux kernel received (tcpi_bytes_received); at most
    one send is partial. RFC 9293 §3.10.5 ABORT: the peer sees ECONNRESET;
    no FIN was sent, and nothing after the RST."""
    o = opened(open_kind, "--no-read")
    t, conn, linux = o.t, o.conn, o.linux
    order = []
    complete = t._complete

    def record(req, *a, **k):  # the order completions arrive in
        order.append(req)
        complete(req, *a, **k)
    t._complete = record
    try:
        tx = Sender(conn, 4 * MiB)
        tx.post_all()
        graceful = conn.disconnect(graceful=True, data=b"never") if pending_graceful else None
        st = wait_peer_stalled(linux)
        d = conn.disconnect(graceful=False)
        c = d.wait(30)
        assert c.status == SUCCESS, c  # C-13: the RST was sent
        tx.wait_all(10)
    finally:
        t._complete = complete
    statuses = tx.statuses()
    first_aborted = statuses.index(ABORTED)
    assert all(s == SUCCESS for s in statuses[:first_aborted]), statuses
    assert all(s == ABORTED for s in statuses[first_aborted:]), statuses
    partial = [bt for n, bt in ((n, c.bytes_transferred) for n, c in tx.done) if 0 < bt < n]
    assert len(partial) <= 1, partial  # C-7
    assert tx.acked() == st["bytes_received"], (tx.acked(), st)
    # C-13 order: the pending graceful disconnect, then the sends, then the abortive one.
    mine = [r for r in order if r.conn is conn]
    assert mine[-1] is d, mine
    first_aborted_send = next(r for r in mine if r.kind == "send" and r.completion.status == ABORTED)
    if graceful is not None:
        g = graceful.wait(0)
        assert g.status == ABORTED and g.bytes_transferred == 0, g
        assert mine.index(graceful) < mine.index(first_aborted_send), mine
    end = linux.cmd("status")
    assert end["so_error"] == "ECONNRESET" or end["error"] == "ECONNRESET", end
    assert end["state"] == "CLOSE", end
    assert events_seen(t, conn) == [], "C-13: no ABORT event for our own abort"
    conn.terminate()
    linux.quit()
    s = one_stream(wire, allow_rst_from_target=True, allow_fin_from_target=False)
    assert len(s.rsts_from_target) == 1 and not s.fins_from_target, s


# ---------------------------------------------------------------------------
# C-12, C-17: the peer resets during our graceful close.

@pytest.mark.parametrize("when", ["fin-waits-behind-data", "in-fin-wait-2"])
@pytest.mark.parametrize("open_kind", OPENS)
def test_peer_rst_during_our_graceful_close(target, wire, opened, open_kind, when):
    """C-12: a graceful disconnect whose FIN and data were not all ACKed when
    the peer's RST came completes REQUEST_ABORTED (it must not hang), with
    bytes_transferred = its data ACKed; C-17: the RST at rcv_nxt aborts:
    outstanding sends and receives complete REQUEST_ABORTED, then ABORT.
    The bytes ACKed are what the Linux kernel received. In FIN_WAIT_2 the
    disconnect already completed SUCCESS and only ABORT follows. Chimney
    answers the RST with nothing (RFC 9293 §3.10.7.4: a RST is never
    answered)."""
    o = opened(open_kind, *(["--no-read"] if when == "fin-waits-behind-data" else []))
    t, conn, linux = o.t, o.conn, o.linux
    rx = Receiver(conn)
    if when == "fin-waits-behind-data":
        tx = Sender(conn, 4 * MiB)
        tx.post_all()
        final = stream_peer.stream(3000, 4 * MiB)
        d = conn.disconnect(graceful=True, data=final)
        wait_peer_stalled(linux)
        assert not d.done()
    else:
        tx = Sender(conn, 1 * MiB)
        tx.post_all()
        d = conn.disconnect(graceful=True, data=b"fin-wait-2")
        assert d.wait(30).status == SUCCESS
        assert linux.cmd("wait-eof 30")["eof"]
    before = linux.cmd("reset")  # SO_LINGER 0: a RST at Linux's snd_nxt (= our rcv_nxt)
    ev = wait_event(t, conn, ("ABORT",), 30)  # C-17
    assert ev.kind == "ABORT"
    c = d.wait(30)
    tx.wait_all(10)
    rx.pump()
    rx.settle()
    if when == "fin-waits-behind-data":
        assert c.status == ABORTED, c  # C-12
        assert c.bytes_transferred == 0, c  # behind 4 MiB the Linux reader never took
        statuses = tx.statuses()
        assert ABORTED in statuses
        first = statuses.index(ABORTED)
        assert set(statuses[first:]) == {ABORTED}, statuses
        assert tx.acked() + c.bytes_transferred == before["bytes_received"], (tx.acked(), before)
    else:
        assert c.status == SUCCESS and c.bytes_transferred == len(b"fin-wait-2")
        assert_all_success(tx)
    assert set(rx.statuses) == {ABORTED}, rx.statuses  # C-17: posted receives
    assert conn.post_receive(10).wait(10).status == ABORTED
    state = conn.terminate()
    assert state["state"] == "CLOSED", state
    linux.quit()
    s = one_stream(wire)
    assert len(s.rsts_from_peer) == 1 and not s.rsts_from_target, s


# ---------------------------------------------------------------------------
# Simultaneous close: both sides close before seeing the other's FIN.

@pytest.mark.parametrize("how", ["racing", "our-fin-behind-data", "peer-fin-behind-data"])
@pytest.mark.parametrize("open_kind", OPENS)
def test_simultaneous_close(target, wire, opened, open_kind, how):
    """RFC 9293 §3.6 simultaneous close: each side's CLOSE before it saw the
    other's FIN; both FINs must be sent and ACKed, and both ends reach
    TIME_WAIT ("FIN never sent on simultaneous close" is the classic bug).
    racing: the host's DISCONNECT and Linux's shutdown(SHUT_WR) are released
    by one barrier (the FINs cross on the wire when the timing allows: the
    capture says whether they did). our-fin-behind-data: our FIN waits
    behind data the stalled Linux reader's window holds back, the peer's FIN
    arrives in FIN_WAIT_1 (-> CLOSING before our FIN ever left), then the
    window opens. peer-fin-behind-data: chimney's window is closed (no
    receive posted, C-10), Linux's FIN waits behind its data; our FIN goes
    out and Linux moves FIN_WAIT_1 -> CLOSING. C-12: the disconnect
    completes SUCCESS when our FIN is ACKed; C-16: the DISCONNECT comes after
    all the peer's data."""
    args = {"racing": [], "our-fin-behind-data": ["--no-read"],
            "peer-fin-behind-data": ["--sndbuf", str(4 * MiB)]}[how]
    o = opened(open_kind, *args)
    t, conn, linux = o.t, o.conn, o.linux
    sent = 0
    peer_bytes = 0
    rx = Receiver(conn, post=how != "peer-fin-behind-data")
    if how == "racing":
        sent = 64 * KiB
        tx = Sender(conn, sent)
        tx.wait_all(30)
        barrier = threading.Barrier(2)
        box = {}

        def host():
            barrier.wait()
            box["d"] = conn.disconnect(graceful=True)

        th = threading.Thread(target=host)
        th.start()
        barrier.wait()
        linux.cmd("shutdown")
        th.join(10)
        d = box["d"]
    elif how == "our-fin-behind-data":
        sent = 4 * MiB
        tx = Sender(conn, sent)
        tx.post_all()
        d = conn.disconnect(graceful=True)
        wait_peer_stalled(linux)
        linux.cmd("shutdown")
        run_until(lambda: "DISCONNECT" in events_seen(t, conn), rx, what="DISCONNECT in FIN_WAIT_1")
        assert not d.done(), "our FIN is not even sent yet"
        linux.cmd("read on")
    else:
        peer_bytes = 1 * MiB
        linux.cmd(f"send {peer_bytes}")  # into the socket buffer; most waits for our window
        linux.cmd("shutdown")            # its FIN queued behind it
        d = conn.disconnect(graceful=True)
        assert d.wait(30).status == SUCCESS  # Linux ACKs our FIN in FIN_WAIT_1 -> CLOSING
        assert linux.cmd("status")["state"] in ("CLOSING", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT")
        rx.start()
    run_until(lambda: d.done() and "DISCONNECT" in events_seen(t, conn) or False, rx, timeout=60,
              what="both FINs")
    c = d.wait(0)
    assert c.status == SUCCESS, c
    rx.settle()
    assert rx.n == peer_bytes and rx.sha256 == sha(peer_bytes)
    got = linux.cmd("wait-eof 30")
    assert got["eof"] and got["rx"] == sent and got["rx_sha256"] == sha(sent), got
    linux_state = o.linux_state()
    state = conn.terminate()["state"]
    end = linux.quit()
    assert end["error"] is None, end
    s = one_stream(wire)
    both_fins_acked(s)
    # RFC 9293 §3.6: a side that closed before it saw the other's FIN ends in
    # TIME_WAIT; one that saw it first closes from LAST_ACK (C-19). In the
    # scripted variants both closed first. Racing, the wire tells: Linux's
    # FIN leaves at shutdown(), so its ACK field says whether Linux had seen
    # ours; chimney's state says whether it had seen Linux's, and then its
    # FIN must ACK Linux's.
    ours, theirs = s.fins_from_target[0], s.fins_from_peer[0]
    linux_saw_ours = theirs.ack_raw == (s.target_fin_seq + 1) & 0xFFFFFFFF
    if how == "racing":
        if state == "CLOSED":
            assert ours.ack_raw == (s.peer_fin_seq + 1) & 0xFFFFFFFF, "LAST_ACK: our FIN ACKs theirs"
        else:
            assert state == "TIME_WAIT", state
        assert linux_state == (None if linux_saw_ours else "TIME-WAIT"), (linux_state, str(s))
        assert not (linux_saw_ours and state == "CLOSED"), "somebody closed first"
    else:
        assert state == "TIME_WAIT" and linux_state == "TIME-WAIT", (state, linux_state)
    print(f"{how}: chimney {state}, Linux {linux_state}, FINs crossed on the wire: {s.crossed}")
    if how == "our-fin-behind-data":
        assert theirs.number < ours.number


# ---------------------------------------------------------------------------
# C-21, C-12: terminate while a graceful disconnect is pending.

def terminate_with_disconnect_pending(t, conn, linux, state_at):
    """Data (3 MiB) and a graceful disconnect with final data queued behind the
    stalled Linux reader's closed window, in FIN_WAIT_1 or (after the peer's
    FIN) LAST_ACK; then TERMINATE. Returns (state, disconnect completion,
    sender, final data)."""
    if state_at == "LAST_ACK":
        rx = Receiver(conn)
        linux.cmd(f"send {100 * KiB}")
        linux.cmd("shutdown")
        run_until(lambda: "DISCONNECT" in events_seen(t, conn), rx, what="DISCONNECT")
        rx.settle()
        assert rx.n == 100 * KiB
    total = 3 * MiB
    tx = Sender(conn, total)
    tx.post_all()
    final = stream_peer.stream(5000, total)
    d = conn.disconnect(graceful=True, data=final)
    wait_peer_stalled(linux)
    state = conn.terminate()
    c = d.wait(10)
    assert c.status == UPLOADING and c.bytes_transferred == 0, c  # C-12 (the seed), C-21
    assert state["state"] == state_at, state
    tx.wait_all(10)
    statuses = tx.statuses()
    first = statuses.index(UPLOADING)
    assert set(statuses[:first]) <= {SUCCESS} and set(statuses[first:]) == {UPLOADING}, statuses
    assert all(cc.returned for _, cc in tx.done[first:])  # handed back in order (C-21)
    assert len(state["unacked_send_data"]) == total - tx.acked(), "C-21: the sends' data not ACKed, in order"
    assert state["unacked_send_data"] == stream_peer.stream(total - tx.acked(), tx.acked())
    return state, c, tx, final


@pytest.mark.parametrize("state_at", ["FIN_WAIT_1", "LAST_ACK"])
def test_terminate_during_pending_disconnect(target, wire, opened, state_at):
    """C-12 (the seed): a graceful disconnect pending while the connection is
    uploaded completes UPLOAD_IN_PROGRESS with the bytes of its data ACKed
    (none: they wait behind the closed window); C-21: before the terminate
    completes every send is answered (SUCCESS, or handed back in order with
    its unACKed data) and the delegated state comes back whole (FIN_WAIT_1,
    or LAST_ACK after the peer's FIN). On the wire our FIN never left, and
    nothing is sent once the terminate began; what the Linux side sends
    afterwards reaches a host without a stack (the slow path's RST, RFC 9293
    §3.10.7.1, is allowed)."""
    o = opened("active", "--no-read")
    t, conn, linux = o.t, o.conn, o.linux
    state, c, tx, final = terminate_with_disconnect_pending(t, conn, linux, state_at)
    end = linux.cmd("reset")
    assert end["bytes_received"] == tx.acked(), end
    linux.quit()
    s = one_stream(wire, allow_rst_from_target=True, allow_fin_from_target=False)
    assert not s.fins_from_target and s.bytes_from_target == tx.acked(), s


@pytest.mark.parametrize("state_at", ["FIN_WAIT_1", "LAST_ACK"])
def test_offload_again_in_a_fin_state_with_unsent_data(target, wire, opened, state_at):
    """C-1..C-3 after C-21: a connection uploaded in FIN_WAIT_1 or LAST_ACK
    with its data and FIN still queued is offloaded again with that data (the
    sends' unACKed bytes, then the disconnect's final data) as inherited send
    data; the Linux reader must then get one unbroken stream, one EOF after
    the last byte, and our FIN at one sequence number. OFFLOAD says how many
    bytes follow as SENDs (send_data_to_follow): the inherited FIN waits for
    them."""
    o = opened("active", "--no-read")
    t, conn, linux = o.t, o.conn, o.linux
    state, c, tx, final = terminate_with_disconnect_pending(t, conn, linux, state_at)
    total = tx.total
    again = dict(state)
    again["send_data"] = state["unacked_send_data"] + final[c.bytes_transferred:]
    del again["unacked_send_data"]
    conn2 = t.offload(again)
    linux.cmd("read on")
    inherited = conn2.inherited_send.wait(60)
    got = linux.cmd("wait-eof 60")
    print("inherited send:", inherited.status, "Linux:", {k: got[k] for k in ("rx", "eof")})
    assert inherited.status == SUCCESS, inherited
    assert got["eof"] and got["rx"] == total + len(final) and got["rx_sha256"] == sha(total + len(final)), got
    linux.quit()
    s = one_stream(wire)
    assert s.bytes_from_target == total + len(final), s


# ---------------------------------------------------------------------------
# The same 4-tuple again after chimney closed (RFC 9293 §3.10.7.4, RFC 6191).

def exchange(o, nbytes=256 * KiB):
    """256 KiB each way on an open connection; returns the host's Receiver."""
    conn, linux = o.conn, o.linux
    linux.cmd(f"send-bg {nbytes}")
    rx = Receiver(conn)
    tx = Sender(conn, nbytes)
    run_until(lambda: tx.finished and rx.n == nbytes, tx, rx, what="exchange")
    assert_all_success(tx)
    assert rx.sha256 == sha(nbytes)
    return rx


def close(o, rx, chimney_first):
    """Both FINs, ours first or the peer's; returns the terminated state."""
    t, conn, linux = o.t, o.conn, o.linux
    if chimney_first:
        assert conn.disconnect(graceful=True).wait(30).status == SUCCESS
        assert linux.cmd("wait-eof 30")["eof"]
        linux.cmd("shutdown")
        run_until(lambda: "DISCONNECT" in events_seen(t, conn), rx, what="DISCONNECT")
    else:
        linux.cmd("shutdown")
        run_until(lambda: "DISCONNECT" in events_seen(t, conn), rx, what="DISCONNECT")
        assert conn.disconnect(graceful=True).wait(30).status == SUCCESS
        assert linux.cmd("wait-eof 30")["eof"]
    rx.settle()
    state = conn.terminate()
    end = linux.quit()
    assert end["error"] is None, end
    return state


@pytest.mark.parametrize("chimney_first", [True, False], ids=["after-our-TIME_WAIT", "after-our-LAST_ACK"])
@pytest.mark.parametrize("reopen_by", ["linux-client", "chimney-connect"])
def test_same_four_tuple_again(target, wire, opened, reopen_by, chimney_first):
    """After chimney's active close its TIME_WAIT entry holds the 4-tuple
    (C-19). RFC 9293 §3.10.7.4 / RFC 6191: a new SYN for it whose timestamp
    (or, without timestamps, sequence number) is newer than the old
    incarnation's is accepted and starts a new connection; here the Linux
    client comes back from the same source port to chimney's listener, or
    chimney CONNECTs again from the same local port to the Linux listener.
    After chimney's passive close LAST_ACK ended on the ACK of our FIN and
    nothing of the old connection is left (Linux holds the TIME_WAIT and
    reuses it, net.ipv4.tcp_tw_reuse). Either way the new connection opens
    at the first attempt, carries data both ways, closes cleanly, and no RST
    is sent by either side."""
    t = target.target
    # Linux may reuse its own TIME_WAIT for a new connection (RFC 6191 with
    # timestamps) only with tcp_tw_reuse; this namespace is the test's.
    target.run(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
    port = next(_ports)
    local = 40000 + port
    states = []
    for round_ in range(2):
        if reopen_by == "linux-client":
            if round_ == 0:
                t.listen(port)
            linux = LinuxCtl(target, "ctl-connect", target.target_ip, port, "--local-port", local, expect="json")
            assert linux.first["event"] == "connected", (round_, linux.first)
            o = SimpleNamespace(t=t, linux=linux, conn=t.accept(30))
            assert o.conn.remote_port == local
        else:
            linux = LinuxCtl(target, "ctl", port)
            o = SimpleNamespace(t=t, linux=linux, conn=t.connect(target.peer_ip, port, local_port=local, timeout=15))
            assert linux.accepted()["peer_port"] == local
        rx = exchange(o)
        states.append(close(o, rx, chimney_first)["state"])
        if round_ == 0 and not chimney_first:
            time.sleep(1.1)  # Linux reuses a TIME_WAIT only when it is a second old (tcp_twsk_unique)
    if reopen_by == "linux-client":
        t.release_listen(port)
    assert states == (["TIME_WAIT"] * 2 if chimney_first else ["CLOSED"] * 2), states
    a = wire.check()
    streams = a.stream_list()
    assert len(streams) == 2, [str(s) for s in streams]
    for s in streams:
        both_fins_acked(s)
        assert s.syn_from == ("peer" if reopen_by == "linux-client" else "target"), s
