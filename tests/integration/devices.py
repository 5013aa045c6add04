"""Shared pieces of the tests that run on every device kind (test_devices.py,
test_real_peers.py).

Each module defines a `target` fixture parametrized over DEVICES (named so
that conftest attaches chimneyd's log to a failure):

    @pytest.fixture(params=DEVICES)
    def target(request, chimneyd, tmp_path):
        with target_on(request.param, chimneyd, tmp_path) as t:
            yield t

so that each test gets a chimneyd of its own, in a namespace of its own, on

  tap          chimneyd's own net_tap port; the Linux kernel sees its TAP;
  virtio_user  a virtio-user port whose vhost-user backend is dpdk-testpmd in
               io mode bridging net_vhost to a TAP in the namespace
               (chimney.testing.VhostUserForwarder), so the Linux kernel is
               still the peer.
"""

import collections
import threading

from conftest import start_target

DEVICES = ["tap", "virtio_user"]
SUCCESS = "NDIS_STATUS_SUCCESS"
INVALID_STATE = "NDIS_STATUS_INVALID_STATE"


def target_on(device, chimneyd, tmp_path):
    """A chimneyd of a test's own on `device`: a context manager yielding
    chimney.testing.Target (what the modules' `target` fixtures yield)."""
    return start_target(chimneyd, tmp_path, device=device)


def skip_backlog_events(t, timeout=30):
    """The next event that is not advice (SEND_BACKLOG_CHANGE, RECEIVE_READY)."""
    ev = t.next_event(timeout)
    while ev.kind in ("SEND_BACKLOG_CHANGE", "RECEIVE_READY"):
        ev = t.next_event(timeout)
    return ev


class InThread:
    """Runs fn(*args) in a thread; result() joins and re-raises its exception."""

    def __init__(self, fn, *args):
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn, args):
        try:
            self.value = fn(*args)
        except BaseException as e:  # re-raised in result()
            self.error = e

    def result(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "thread still running"
        if self.error is not None:
            raise self.error
        return self.value


class ChimneyStream:
    """Reads an offloaded connection as a byte stream (a host's recv()):
    keeps `window` receives of `chunk` bytes posted (push mode, C-9) and
    buffers what they bring. The peer's FIN shows as receives completing
    INVALID_STATE (C-16): then `eof` is set and reads return what is left."""

    def __init__(self, conn, chunk=64 * 1024, window=4):
        self.conn = conn
        self.chunk = chunk
        self.buf = bytearray()
        self.eof = False
        self.received = 0
        self.posted = collections.deque(conn.post_receive(chunk) for _ in range(window))

    def fill(self, timeout=30):
        """Waits for the oldest posted receive; False once at EOF."""
        if self.eof:
            return False
        c = self.posted.popleft().wait(timeout)
        if c.status == INVALID_STATE:
            self.eof = True
            return False
        assert c.status == SUCCESS, c
        self.buf += c.data
        self.received += len(c.data)
        self.posted.append(self.conn.post_receive(self.chunk))
        return True

    def read_exact(self, n, timeout=30):
        while len(self.buf) < n:
            if not self.fill(timeout):
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, delimiter, limit=1 << 16, timeout=30):
        """Bytes up to and including `delimiter`."""
        while True:
            i = self.buf.find(delimiter)
            if i >= 0:
                return self.read_exact(i + len(delimiter))
            if len(self.buf) > limit:
                raise ValueError(f"no {delimiter!r} in the first {limit} bytes")
            if not self.fill(timeout):
                raise EOFError(f"EOF before {delimiter!r}")

    def read_to_eof(self, timeout=30):
        while self.fill(timeout):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out
