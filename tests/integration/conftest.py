"""Integration tests: chimneyd in a network namespace, a real Linux peer on its TAP.

Run as root with Debian's interpreter (scripts/test does both):
    /usr/bin/python3 -m pytest -v tests/integration

The binary is build/app/chimneyd/chimneyd, or $CHIMNEYD. When it is missing
every test fails (not skips) and says how to build it.
"""

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from chimney.testing import Namespace, TargetInNamespace  # noqa: E402
from wirecheck import Wire  # noqa: E402

PYTHON = "/usr/bin/python3"
PEER = str(Path(__file__).with_name("peer.py"))
MiB = 1 << 20


class LinuxPeer:
    """peer.py (a Linux TCP peer) running inside the target's namespace;
    `gate()` releases the gated modes."""

    def __init__(self, target, mode, port, *args):
        import subprocess
        self.proc = target.popen([PYTHON, PEER, mode, str(port), *map(str, args)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "listening", f"peer did not start: {line!r} {self.proc.stderr.read()}"

    def gate(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout=60):
        import json
        out, err = self.proc.communicate(timeout=timeout)
        lines = [l for l in out.splitlines() if l.startswith("{")]
        assert lines, f"peer printed no result; stderr: {err}"
        return json.loads(lines[-1])


class LinuxCtl:
    """peer.py's scripted modes (ctl: a Linux listener; ctl-connect: a Linux
    client) inside the target's namespace: `cmd("send 1000")` sends a command
    and returns its JSON answer; every read has a deadline."""

    def __init__(self, target, *args, expect="listening"):
        import subprocess
        self.proc = target.popen([PYTHON, PEER, *map(str, args)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = b""
        self.first = None
        if expect == "listening":
            line = self.readline(30)
            assert line == "listening", f"peer did not start: {line!r} {self._stderr()}"
        else:
            self.first = self.json(30)

    def _stderr(self):
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def readline(self, timeout):
        import select
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"peer said nothing within {timeout} s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"peer exited ({self.proc.wait(5)}): {self._stderr()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    def json(self, timeout=30):
        import json
        return json.loads(self.readline(timeout))

    def accepted(self, timeout=30):
        """The ctl listener's first line: the connection it accepted."""
        if self.first is None:
            self.first = self.json(timeout)
        return self.first

    def cmd(self, line, timeout=60):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        return self.json(timeout)

    def send_only(self, line):
        """Sends a command without waiting for its answer (read it with json())."""
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def quit(self, timeout=30):
        out = self.cmd("quit", timeout)
        self.proc.wait(timeout)
        return out


def send_stream(conn, total, chunk=MiB, window=8, stop=None, start=0):
    """Sends `total` bytes of the test stream (peer.stream) from its offset
    `start` through a chimney.client Connection with `window` SENDs in flight;
    every one must complete SUCCESS with all its bytes (C-6). Returns the
    bytes sent."""
    import peer as stream_peer
    pending, sent = [], 0
    while sent < total or pending:
        while sent < total and len(pending) < window and not (stop and stop.is_set()):
            n = min(chunk, total - sent)
            pending.append((conn.send(stream_peer.stream(n, start + sent)), n))
            sent += n
        if not pending:
            break
        req, n = pending.pop(0)
        c = req.wait(60)
        assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == n, c
    return sent


def wait_until(what, fn, timeout=10.0, interval=0.05):
    """Polls fn() until it returns something true; AssertionError with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {v!r})")
        time.sleep(interval)


# The pools a test checks against their baseline (nothing leaked), from STATS.
POOLS = ("port0_mbufs_free", "port0_attach_mbufs_free", "op_records_free")


def pools(stats):
    return {k: stats[k] for k in POOLS}


def chimneyd_binary() -> Path:
    return Path(os.environ.get("CHIMNEYD") or ROOT / "build" / "app" / "chimneyd" / "chimneyd")


@pytest.fixture(scope="session")
def chimneyd() -> str:
    path = chimneyd_binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"chimneyd binary not found at {path}: build it with scripts/build "
                    f"(or point $CHIMNEYD at one)", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, TAP): run scripts/test "
                    "or sudo /usr/bin/python3 -m pytest tests/integration", pytrace=False)
    return str(path)


def start_target(chimneyd: str, log_dir, **options) -> TargetInNamespace:
    return TargetInNamespace(chimneyd, cwd=str(ROOT), log_dir=str(log_dir), **options)


@pytest.fixture(scope="module")
def target(chimneyd, tmp_path_factory):
    """One chimneyd per test module (most tests only read counters or ping)."""
    with start_target(chimneyd, tmp_path_factory.mktemp("chimneyd")) as t:
        yield t


@pytest.fixture
def fresh_target(chimneyd, tmp_path):
    """A chimneyd of its own, for tests that stop it."""
    with start_target(chimneyd, tmp_path) as t:
        yield t


@pytest.fixture
def fresh(chimneyd, tmp_path):
    """A chimneyd of this test's own (its counters start at zero)."""
    def make(*extra_args):
        return start_target(chimneyd, tmp_path, extra_args=list(extra_args))
    return make


@pytest.fixture
def scratch_netns():
    """An empty namespace: chimneyd runs that should fail at once still run in one."""
    with Namespace() as ns:
        yield ns


def pytest_configure(config):
    config.addinivalue_line("markers", "wire(**options): options of the `wire` capture "
                                       "(wirecheck.Wire: snaplen, buffer_kib, keep)")


@pytest.fixture
def wire(request, tmp_path):
    """The wire check (wirecheck.py) around this test: tcpdump on the Linux
    side of the TAP of the test's target (`fresh_target` if the test uses it,
    else the module's `target`), running before the test body starts. Call
    `wire.check(allow_rst_from_target=..., allow_fin_from_target=...)` where
    the scenario is done; a test that does not is checked with the defaults
    (no RST from chimney) at teardown. The pcap is kept under tmp_path when
    anything failed."""
    name = "fresh_target" if "fresh_target" in request.fixturenames else "target"
    marker = request.node.get_closest_marker("wire")
    w = Wire(request.getfixturevalue(name), tmp_path, **(marker.kwargs if marker else {}))
    w.start()
    yield w
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.outcome != "passed"  # failed, or an expected failure
    try:
        if not failed and not w.checked:
            w.check()
    finally:
        w.finish(failed=failed or w.failed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of chimneyd's log to the report (and,
    with the `wire` fixture, what the capture shows and where it is)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    w = funcargs.get("wire")
    if w is not None and not w.failed:
        try:
            a = w.analyse()
            report.sections.append(("wire capture", a.report(a.findings)))
        except Exception as e:  # the test's own failure matters more
            report.sections.append(("wire capture", f"{w.pcap}: not analysed: {e}"))
    for name in ("target", "fresh_target"):
        t = funcargs.get(name)
        if t is not None and hasattr(t, "log_tail"):
            report.sections.append((f"chimneyd log ({t.log_path}), last lines",
                                    t.log_tail(60)))

