"""The host side of many offloaded connections moving data both ways at
once (test_faults.py, test_workers.py): each sends the test stream with a
window of SENDs in flight while RECEIVEs stay posted, then a graceful
disconnect with final data; every completion counted, every byte hashed."""
import hashlib
import time

import peer as stream_peer


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


def check_peer_results(results, nbytes, final):
    """bulk_peer.py's result line: every connection ended with our FIN, sent
    all its `nbytes`, and received our stream and `final` whole."""
    want_in = hashlib.sha256(stream_peer.stream(nbytes) + final).hexdigest()
    for r in results:
        assert r["end"] == "eof", r
        assert r["bytes_out"] == nbytes, r
        assert r["bytes_in"] == nbytes + len(final), r
        assert r["sha256_in"] == want_in, r
