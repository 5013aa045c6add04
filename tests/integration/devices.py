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

memif is not among DEVICES: there the peer is not the kernel but
`chimney-bench peer` (memif_target below, the test_memif_* tests).
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


# ---------------------------------------------------------------- memif
#
# chimneyd on a memif port, with `chimney-bench peer` as the other end: a
# tcp::Engine of its own on the memif's server side, run by chimneyd's own
# pieces (the worker's receive step, the slow path's ARP and listeners), with
# a service on each listening port. It reports every connection it releases
# as one JSON line (bytes and sha256 each way, how it ended, its graceful
# disconnect's status and bytes_transferred): the peer's own counts are the
# judge on that side, as the Linux side's are on the others.

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from chimney.testing import Namespace, dpdk_runtime_dir

MEMIF_TARGET_IP = "198.18.0.2"
MEMIF_PEER_IP = "198.18.0.1"
MEMIF_TARGET_MAC = "02:00:c6:12:00:02"
MEMIF_PEER_MAC = "02:00:c6:12:00:01"
MEMIF_SERVICES = {"sink": 7001, "source": 7002, "echo": 7003}


def bench_binary(chimneyd: str) -> Path:
    """chimney-bench: $CHIMNEY_BENCH, else the one built beside chimneyd
    (<build>/app/chimney-bench/chimney-bench, as conftest finds chimneyd)."""
    env = os.environ.get("CHIMNEY_BENCH")
    if env:
        return Path(env)
    return Path(chimneyd).resolve().parents[1] / "chimney-bench" / "chimney-bench"


class MemifPeer:
    """`chimney-bench peer` in a namespace of its own, the memif server on a
    filesystem socket (socket-abstract=no: chimneyd, in another namespace,
    reaches it by path). Started and stopped by PID; stopping removes its
    EAL runtime directory if it could not."""

    def __init__(self, bench: str, socket_path: str, out_path: str, source_bytes: int,
                 ready_timeout: float = 60.0):
        self.out_path = out_path
        self.ns = Namespace()
        self.exit = None
        self.process = None
        self.argv = [bench, "peer", "--cpu", "0", "--memory", "256", "--max-connections", "1024",
                     "--socket", socket_path, "--memif-devargs", "socket-abstract=no",
                     "--address", f"{MEMIF_PEER_IP}/24", "--mac", MEMIF_PEER_MAC,
                     "--listen", f"{MEMIF_SERVICES['sink']}=sink",
                     "--listen", f"{MEMIF_SERVICES['source']}=source,bytes={source_bytes}",
                     "--listen", f"{MEMIF_SERVICES['echo']}=echo"]
        self.ns.__enter__()
        try:
            with open(out_path, "wb") as out:
                self.process = subprocess.Popen(self.ns.argv(self.argv), stdin=subprocess.DEVNULL,
                                                stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + ready_timeout
            while not any(e.get("event") == "ready" for e in self.lines()):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chimney-bench peer did not start: {self.text()[-3000:]}")
                time.sleep(0.05)
            self.ready = next(e for e in self.lines() if e.get("event") == "ready")
        except BaseException:
            self.stop()
            raise

    def text(self) -> str:
        try:
            return Path(self.out_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self):
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # a line still being written
        return out

    def report(self, service, timeout=60):
        """The report of the next connection of `service` released after
        those already taken (each is handed out once)."""
        taken = self.__dict__.setdefault("_taken", set())
        deadline = time.monotonic() + timeout
        while True:
            closed = [e for e in self.lines() if e.get("event") == "closed"]
            for i, e in enumerate(closed):
                if i not in taken and e["service"] == service:
                    taken.add(i)
                    return e
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {service} report within {timeout} s: {self.text()[-2000:]}")
            time.sleep(0.05)

    def stop(self, timeout=15):
        """SIGTERM by PID; returns the peer's exit line (its counters)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process is not None:
            # The EAL prefix is cbench-<pid> (`ip netns exec` execs the bench in place).
            shutil.rmtree(dpdk_runtime_dir(f"cbench-{self.process.pid}"), ignore_errors=True)
        self.ns.delete()
        if self.exit is None:
            self.exit = next((e for e in self.lines() if e.get("event") == "exit"), None)
        return self.exit


class MemifSetup:
    """What memif_target yields: `target` (chimney.testing.Target: chimneyd
    and its control client), `peer` (MemifPeer), the addresses and ports."""

    def __init__(self, target, peer):
        self.target = target
        self.peer = peer
        self.peer_ip = MEMIF_PEER_IP
        self.target_ip = MEMIF_TARGET_IP
        self.ports = MEMIF_SERVICES


class memif_target:
    """Context manager: chimney-bench peer (memif server) first, then chimneyd
    in its own namespace as the memif client of that socket:

        --port kind=memif,role=client,path=<sock>,address=198.18.0.2/24,
               devargs=socket-abstract=no,id=0,mac=02:00:c6:12:00:02

    Everything goes at the end whatever happened: chimneyd, then the peer
    (both by PID), their namespaces, runtime directories and the socket's
    directory."""

    def __init__(self, chimneyd, bench, tmp_path, source_bytes):
        self.chimneyd, self.bench, self.tmp_path = chimneyd, bench, tmp_path
        self.source_bytes = source_bytes
        self.dir = None
        self.peer = None
        self.owner = None

    def __enter__(self) -> MemifSetup:
        try:
            self.dir = tempfile.mkdtemp(prefix="chimney-memif-")
            sock = os.path.join(self.dir, "memif.sock")
            self.peer = MemifPeer(str(self.bench), sock, str(Path(self.tmp_path) / "peer.out"),
                                  self.source_bytes)
            spec = (f"kind=memif,role=client,path={sock},address={MEMIF_TARGET_IP}/24,"
                    f"devargs=socket-abstract=no,id=0,mac={MEMIF_TARGET_MAC}")
            self.owner = start_target(self.chimneyd, self.tmp_path, port_spec=spec,
                                      configure_peer=False, peer_ip=MEMIF_PEER_IP,
                                      target_ip=MEMIF_TARGET_IP)
            t = self.owner.__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return MemifSetup(t, self.peer)

    def __exit__(self, *exc):
        if self.owner is not None:
            self.owner.__exit__(None, None, None)
        if self.peer is not None:
            self.peer.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False
