"""Run chimneyd inside a throw-away network namespace (standard library only).

    from chimney.testing import TargetInNamespace

    with TargetInNamespace("build/app/chimneyd/chimneyd", log_level="debug") as t:
        t.run(["ping", "-c", "1", t.target_ip])
        print(t.telemetry("/chimney/drops"))

What it does, in order:
  1. makes a fresh namespace (``chimney-<pid>-<n>``), brings ``lo`` up and by
     default turns IPv6 off in it (no router solicitations or MLD reports
     reach the target's drop counters);
  2. starts chimneyd inside it (``ip netns exec``), so net_tap creates the TAP
     there, with an explicit EAL ``--file-prefix`` (telemetry lives under
     /var/run/dpdk/<file_prefix>/), writing stdout and stderr to a log file;
  3. waits for the ``chimneyd ready`` line (raises TargetStartError with the
     log's tail if chimneyd exits first or the timeout passes);
  4. gives the Linux side of the TAP the peer address and brings it up.

With ``device="virtio_user"`` chimneyd runs on a virtio-user port instead: a
vhost-user backend (VhostUserForwarder: dpdk-testpmd in io mode bridging a
net_vhost port to a net_tap port) starts in the namespace first, and the TAP
the Linux side uses is testpmd's, so the Linux kernel is still the peer.

On leaving the ``with`` block, whatever happened inside it, chimneyd is
stopped by PID (SIGTERM, then SIGKILL after ``stop_timeout``), every process
started with ``popen()`` is ended by PID, the namespace is deleted and the
DPDK runtime directory of our own file prefix is removed.

Addresses must lie in 198.18.0.0/15 (RFC 2544 benchmarking space): the
constructor refuses anything else, so a test cannot reach another network.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

__all__ = [
    "Namespace",
    "TargetInNamespace",
    "VhostUserForwarder",
    "DEVICES",
    "Target",
    "TargetStartError",
    "CommandError",
    "TelemetryError",
    "telemetry_query",
    "telemetry_socket_path",
    "TEST_NETWORK",
]

TEST_NETWORK = ipaddress.ip_network("198.18.0.0/15")
DEVICES = ("tap", "virtio_user")  # what TargetInNamespace(device=...) can set up
READY_LINE = "chimneyd ready"
IP = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "ip"
_counter = itertools.count(1)


class TargetStartError(RuntimeError):
    """chimneyd did not come up: exited early or never logged READY_LINE."""


class CommandError(subprocess.CalledProcessError):
    """A command run in the namespace failed; its message carries the output."""

    def __str__(self) -> str:
        text = super().__str__()
        for name, out in (("stdout", self.stdout), ("stderr", self.stderr)):
            if out:
                if isinstance(out, bytes):
                    out = out.decode(errors="replace")
                text += f"\n{name}:\n{out.rstrip()}"
        return text


class TelemetryError(RuntimeError):
    """The telemetry socket could not be reached or answered badly."""


# --------------------------------------------------------------------------
# DPDK telemetry (v2 protocol: SOCK_SEQPACKET, JSON)


def dpdk_runtime_dir(file_prefix: str) -> str:
    """The EAL runtime directory of a file prefix (as root: /var/run/dpdk)."""
    if os.geteuid() == 0:
        base = "/var/run/dpdk"
    else:
        base = os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "dpdk")
    return os.path.join(base, file_prefix)


def telemetry_socket_path(file_prefix: str) -> str:
    return os.path.join(dpdk_runtime_dir(file_prefix), "dpdk_telemetry.v2")


def telemetry_query(socket_path: str, cmd: str, timeout: float = 5.0) -> Any:
    """Sends one command and returns the value of its reply ``{"<cmd>": value}``.

    ``cmd`` may carry parameters after a comma (``/chimney/port,0``); the reply
    is keyed by the command without them. A command that failed or is unknown
    answers null, returned here as None.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(timeout)
    try:
        try:
            s.connect(socket_path)
        except OSError as e:
            raise TelemetryError(f"cannot connect to {socket_path}: {e}") from e
        info = json.loads(s.recv(65536).decode())
        max_len = int(info.get("max_output_len", 16384)) if isinstance(info, dict) else 16384
        s.send(cmd.encode())
        raw = s.recv(max(max_len, 65536))
    except (OSError, ValueError) as e:
        raise TelemetryError(f"telemetry {cmd!r} on {socket_path}: {e}") from e
    finally:
        s.close()
    if not raw:
        raise TelemetryError(f"telemetry {cmd!r}: connection closed without a reply")
    try:
        reply = json.loads(raw.decode())
    except ValueError as e:
        raise TelemetryError(f"telemetry {cmd!r}: reply is not JSON: {raw[:200]!r}") from e
    key = cmd.split(",", 1)[0]
    if not isinstance(reply, dict) or key not in reply:
        raise TelemetryError(f"telemetry {cmd!r}: unexpected reply {reply!r}")
    return reply[key]


# --------------------------------------------------------------------------
# helpers


def _check_test_address(what: str, addr: str) -> ipaddress.IPv4Address:
    a = ipaddress.ip_address(addr)
    if a.version != 4 or a not in TEST_NETWORK:
        raise ValueError(f"{what} {addr} is outside {TEST_NETWORK}: tests use that range only")
    return a


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([IP, *args], check=check, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _namespaces() -> set:
    out = _ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _parent_death_signal() -> None:
    """preexec_fn: the child gets SIGTERM if the test process dies abruptly."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except Exception:  # pragma: no cover - best effort only
        pass


def _option_args(options: Mapping[str, Any]) -> list:
    """{"log_level": "debug", "idle_sleep_us": 0} -> ["--log-level", "debug", ...]."""
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    return args


# --------------------------------------------------------------------------
# a bare namespace


class Namespace:
    """Context manager: an empty network namespace (lo up, IPv6 off), deleted on exit.

    For running something that should not start at all (bad options) where
    it could do no harm if it did, and for tools that need a namespace only.
    """

    def __init__(self, name: Optional[str] = None, disable_ipv6: bool = True):
        self.name = name or f"chimney-{os.getpid()}-{next(_counter)}"
        self.disable_ipv6 = disable_ipv6
        self._made = False

    def __enter__(self) -> "Namespace":
        if self.name in _namespaces():
            raise RuntimeError(f"network namespace {self.name} already exists; not touching it")
        _ip("netns", "add", self.name)
        self._made = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            if self.disable_ipv6:
                subprocess.run([IP, "netns", "exec", self.name, "sysctl", "-q", "-w",
                                "net.ipv6.conf.all.disable_ipv6=1",
                                "net.ipv6.conf.default.disable_ipv6=1"],
                               check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.delete()
        return False

    def delete(self) -> None:
        if not self._made:
            return
        for _ in range(20):
            cp = _ip("netns", "del", self.name, check=False)
            if cp.returncode == 0 or self.name not in _namespaces():
                self._made = False
                return
            time.sleep(0.1)
        raise RuntimeError(f"cannot delete namespace {self.name}: {cp.stderr.strip()}")

    def argv(self, cmd: Sequence[str]) -> list:
        return [IP, "netns", "exec", self.name, *[str(c) for c in cmd]]

    def run(self, cmd: Sequence[str], *, timeout: float = 30, check: bool = False,
            **kwargs) -> subprocess.CompletedProcess:
        """Runs ``cmd`` in the namespace, output captured as text; killed after ``timeout``."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        kwargs.setdefault("preexec_fn", _parent_death_signal)
        return subprocess.run(self.argv(cmd), timeout=timeout, check=check, **kwargs)


# --------------------------------------------------------------------------
# a vhost-user backend for virtio-user ports

TESTPMD = shutil.which("dpdk-testpmd", path="/usr/bin:/usr/local/bin:/usr/sbin:/sbin") or "dpdk-testpmd"
STDBUF = shutil.which("stdbuf", path="/usr/bin:/bin")
TESTPMD_READY_LINE = "Press enter to exit"


class VhostUserForwarder:
    """dpdk-testpmd in a namespace as the vhost-user backend of a virtio-user port.

    testpmd forwards in io mode between ``--vdev net_vhost0,iface=<socket>``
    (the vhost-user server; chimneyd's virtio-user port is its client) and
    ``--vdev net_tap0,iface=<tap>`` (a TAP in the namespace, where the Linux
    kernel is the peer). It runs with no PCI bus, its own ``--file-prefix``
    and ``--no-huge``: without hugepages the EAL (22.11) backs its memory with
    a memfd mapped shared, which is what vhost-user needs — the frontend
    (chimneyd, also ``--no-huge``) sends that fd and the backend maps it.

    Started and stopped by PID (SIGTERM, then SIGKILL); stopping also removes
    its DPDK runtime directory and the socket. Its forwarding lcore busy-polls
    (testpmd has no idle sleep): ``lcores`` (EAL ``--lcores``) chooses where it
    runs — by default both its lcores on CPU 0, where chimneyd's main lcore
    (mostly asleep) runs, away from chimneyd's worker lcores (CPU 1 on, with
    chimneyd's default ``-l0-N``); ``nice`` lowers its priority.

        with VhostUserForwarder("ns", "vu0", "/tmp/d/vhost.sock", "vh1", log_path="/tmp/d/t.log"):
            ...  # chimneyd --port kind=virtio_user,path=/tmp/d/vhost.sock,address=...
    """

    def __init__(self, netns: str, tap_iface: str, socket_path: str, file_prefix: str, *,
                 log_path: str, lcores: str = "0@0,1@0", nice: int = 0,
                 memory_mb: int = 256, mbufs: int = 8192, queues: int = 1,
                 ready_timeout: float = 20.0, stop_timeout: float = 10.0,
                 testpmd: str = TESTPMD, extra_args: Iterable[str] = ()):
        if len(tap_iface) > 15:
            raise ValueError(f"interface name {tap_iface!r} is longer than 15 characters")
        self.netns = netns
        self.tap_iface = tap_iface
        self.socket_path = socket_path
        self.file_prefix = file_prefix
        self.log_path = log_path
        self.nice = nice
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        eal = [testpmd, "--no-huge", "-m", str(memory_mb), "--no-pci", "--file-prefix", file_prefix,
               "--lcores", lcores,
               "--vdev", f"net_vhost0,iface={socket_path},queues={queues}",
               "--vdev", f"net_tap0,iface={tap_iface}"]
        app = ["--forward-mode=io", "--nb-cores=1", f"--total-num-mbufs={mbufs}",
               f"--rxq={queues}", f"--txq={queues}", *[str(a) for a in extra_args]]
        # stdout line-buffered, so that the ready line reaches the log at once
        self.argv = ([STDBUF, "-oL"] if STDBUF else []) + eal + ["--"] + app
        self.process: Optional[subprocess.Popen] = None
        self._log_file = None

    def __enter__(self) -> "VhostUserForwarder":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop()
        return False

    def log(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def _preexec(self) -> None:
        _parent_death_signal()
        if self.nice:
            os.nice(self.nice)

    def start(self) -> None:
        if os.path.exists(self.socket_path):
            raise RuntimeError(f"{self.socket_path} exists already; not touching it")
        self._log_file = open(self.log_path, "wb")
        self._log_file.write(("$ ip netns exec " + self.netns + " " + " ".join(self.argv)
                              + "\n").encode())
        self._log_file.flush()
        # stdin is a pipe kept open: non-interactive testpmd forwards until it
        # reads a line (or EOF) there, or a signal arrives.
        self.process = subprocess.Popen([IP, "netns", "exec", self.netns, *self.argv],
                                        stdin=subprocess.PIPE, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, preexec_fn=self._preexec)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            ready = (TESTPMD_READY_LINE in self.log() if STDBUF else True)
            if (ready and os.path.exists(self.socket_path)
                    and _ip("-n", self.netns, "link", "show", "dev", self.tap_iface,
                            check=False).returncode == 0):
                return
            rc = self.process.poll()
            if rc is not None:
                raise TargetStartError(f"dpdk-testpmd (vhost-user backend) exited with code {rc} "
                                       f"(log {self.log_path}); last lines:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise TargetStartError(f"dpdk-testpmd not forwarding after {self.ready_timeout}s "
                                       f"(log {self.log_path}); last lines:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> Optional[int]:
        """Ends testpmd by PID and removes what it left; returns its exit code."""
        rc = None
        if self.process is not None:
            TargetInNamespace._end(self.process, self.stop_timeout)
            rc = self.process.returncode
            if self.process.stdin is not None:
                try:
                    self.process.stdin.close()
                except OSError:
                    pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.process is not None and self.process.poll() is not None:
            shutil.rmtree(dpdk_runtime_dir(self.file_prefix), ignore_errors=True)
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        return rc


# --------------------------------------------------------------------------
# the running target


class Target:
    """A chimneyd running in its namespace; yielded by TargetInNamespace."""

    def __init__(self, owner: "TargetInNamespace"):
        self._owner = owner
        self.netns: str = owner.netns
        self.iface: str = owner.iface  # the Linux side (with virtio_user: testpmd's TAP)
        self.device: str = owner.device
        self.forwarder: Optional[VhostUserForwarder] = owner.forwarder
        self.target_ip: str = owner.target_ip
        self.peer_ip: str = owner.peer_ip
        self.prefix_len: int = owner.prefix_len
        self.file_prefix: str = owner.file_prefix
        self.log_path: str = owner.log_path
        self.argv: list = list(owner.argv)
        self.process: subprocess.Popen = owner.process
        self.pid: int = owner.process.pid

        self.control_socket: str = owner.control_socket
        self._client = None

    @property
    def target(self):
        """A chimney.client.Target connected to this chimneyd's control socket
        (made on first use, closed when the namespace goes)."""
        if self._client is None:
            from chimney.client import Target as Client
            self._client = Client(self.control_socket)
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    # ---- processes inside the namespace

    def netns_argv(self, cmd: Sequence[str]) -> list:
        return [IP, "netns", "exec", self.netns, *[str(c) for c in cmd]]

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 30,
            input: Optional[str] = None, capture: bool = True, text: bool = True,
            **kwargs) -> subprocess.CompletedProcess:
        """Runs ``cmd`` inside the namespace and waits for it.

        Output is captured (``.stdout``, ``.stderr``) unless capture=False. With
        check=True a non-zero exit raises CalledProcessError whose message
        includes the output.
        """
        if capture:
            kwargs.setdefault("stdout", subprocess.PIPE)
            kwargs.setdefault("stderr", subprocess.PIPE)
        if input is None:
            kwargs.setdefault("stdin", subprocess.DEVNULL)
        cp = subprocess.run(self.netns_argv(cmd), input=input, timeout=timeout, text=text,
                            **kwargs)
        if check and cp.returncode != 0:
            raise CommandError(cp.returncode, list(cmd), cp.stdout, cp.stderr)
        return cp

    def popen(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        """Starts ``cmd`` inside the namespace; it is ended by PID on exit."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("preexec_fn", _parent_death_signal)
        p = subprocess.Popen(self.netns_argv(cmd), **kwargs)
        self._owner._children.append(p)
        return p

    def python(self, code: str, *args: str, timeout: float = 30, check: bool = True,
               input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Runs a Python snippet with Debian's interpreter inside the namespace."""
        return self.run([self._owner.python, "-c", code, *args], timeout=timeout,
                        check=check, input=input)

    def ping(self, count: int = 1, wait: float = 1, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["ping", "-n", "-c", str(count), "-W", str(wait), "-i", "0.2",
                         self.target_ip], check=check, timeout=count * (wait + 1) + 5)

    # ---- telemetry

    @property
    def telemetry_socket(self) -> str:
        return telemetry_socket_path(self.file_prefix)

    def telemetry(self, cmd: str, timeout: float = 5.0) -> Any:
        """The value of the telemetry reply to ``cmd`` (None for a null reply)."""
        return telemetry_query(self.telemetry_socket, cmd, timeout)

    def port(self, index: int = 0) -> dict:
        value = self.telemetry(f"/chimney/port,{index}")
        if not isinstance(value, dict):
            raise TelemetryError(f"/chimney/port,{index} answered {value!r}")
        return value

    def drops(self) -> dict:
        value = self.telemetry("/chimney/drops")
        if not isinstance(value, dict):
            raise TelemetryError(f"/chimney/drops answered {value!r}")
        return value

    @property
    def mac(self) -> str:
        """The target's MAC on port 0, as telemetry reports it (lower case)."""
        return str(self.port(0)["mac"]).lower()

    @property
    def peer_mac(self) -> str:
        """The Linux side of the TAP's MAC."""
        out = _ip("-n", self.netns, "-o", "link", "show", "dev", self.iface).stdout
        m = re.search(r"link/ether ([0-9a-f:]{17})", out)
        if not m:
            raise RuntimeError(f"no MAC for {self.iface}: {out!r}")
        return m.group(1)

    # ---- log and lifecycle

    def log(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 5.0, start: int = 0) -> re.Match:
        """Waits until the log (from character ``start``) matches the regex."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log(), start)
            if m:
                return m
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {pattern!r} in {self.log_path} after {timeout}s; tail:\n"
                                   + self.log_tail())
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout``; returns chimneyd's exit code.

        Raises subprocess.TimeoutExpired if it is still running then (the
        context manager's exit will SIGKILL it).
        """
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.process.wait(timeout)

    def iface_exists(self) -> bool:
        return _ip("-n", self.netns, "link", "show", "dev", self.iface, check=False).returncode == 0


class TargetInNamespace:
    """Context manager: chimneyd in a fresh network namespace. See the module doc.

    Keyword arguments it understands itself:
      netns, iface           names (default: unique per process and instance)
      device                 "tap" (default: chimneyd's own net_tap port, named iface) or
                             "virtio_user" (chimneyd on virtio-user; a VhostUserForwarder
                             started first in the namespace bridges it to a TAP named iface)
      forwarder_options      keywords for VhostUserForwarder (lcores, nice, ...)
      target_ip, peer_ip     default 198.18.0.2 and 198.18.0.1 (198.18.0.0/15 only)
      prefix_len             default 24
      mac, mtu               added to the --port spec when given
      port_spec              the whole --port value instead (iface/target_ip kept for the peer side)
      file_prefix            EAL --file-prefix (default ctest-<pid>-<n>)
      eal_args               more EAL options (before `--`)
      extra_args             more chimneyd options (after the generated ones)
      log_dir, log_path      where the log goes (default a temp dir)
      ready_timeout          seconds to wait for READY_LINE (default 60: on a loaded 2-core machine the EAL alone once took over 30 s)
      stop_timeout           seconds between SIGTERM and SIGKILL on exit (default 10)
      configure_peer         give the Linux side its address and bring it up (default True)
      peer_mac               MAC for the Linux side; "auto" (default) 02:00:<peer IPv4>, so
                             it differs from the target's (net_tap copies the port's MAC
                             to the kernel interface); None keeps net_tap's
      disable_ipv6           turn IPv6 off in the namespace (default True)
      cwd, env               for chimneyd (cwd matters: it reads ./config/chimney.conf)
      python                 interpreter for Target.python() (default /usr/bin/python3)
    Every other keyword becomes a chimneyd option: log_level="debug" -> --log-level debug,
    True -> a bare flag, a list -> the option repeated, None/False -> left out.
    """

    def __init__(self, chimneyd_path: str, *, netns: Optional[str] = None,
                 iface: Optional[str] = None, device: str = "tap",
                 forwarder_options: Optional[Mapping[str, Any]] = None,
                 target_ip: str = "198.18.0.2",
                 peer_ip: str = "198.18.0.1", prefix_len: int = 24, mac: Optional[str] = None,
                 mtu: Optional[int] = None, port_spec: Optional[str] = None,
                 file_prefix: Optional[str] = None, eal_args: Iterable[str] = (),
                 extra_args: Iterable[str] = (), log_dir: Optional[str] = None,
                 log_path: Optional[str] = None, ready_timeout: float = 60.0,
                 stop_timeout: float = 10.0, configure_peer: bool = True,
                 disable_ipv6: bool = True, peer_mac: Optional[str] = "auto",
                 cwd: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None, python: str = "/usr/bin/python3",
                 **options: Any):
        self.chimneyd_path = os.path.abspath(chimneyd_path)
        if not os.access(self.chimneyd_path, os.X_OK):
            raise FileNotFoundError(f"chimneyd not found or not executable: {self.chimneyd_path}")
        n = next(_counter)
        pid = os.getpid()
        self.netns = netns or f"chimney-{pid}-{n}"
        self.iface = iface or f"ct{pid}x{n}"
        if len(self.iface) > 15:
            raise ValueError(f"interface name {self.iface!r} is longer than 15 characters")
        self.target_ip = str(_check_test_address("target_ip", target_ip))
        self.peer_ip = str(_check_test_address("peer_ip", peer_ip))
        self.prefix_len = int(prefix_len)
        net = ipaddress.ip_network(f"{self.target_ip}/{self.prefix_len}", strict=False)
        if not net.subnet_of(TEST_NETWORK):
            raise ValueError(f"{net} is not inside {TEST_NETWORK}")
        if ipaddress.ip_address(self.peer_ip) not in net:
            raise ValueError(f"peer {self.peer_ip} is not on the target's prefix {net}")
        self.file_prefix = file_prefix or f"ctest-{pid}-{n}"
        if device not in DEVICES:
            raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
        self.device = device
        self.forwarder_options = dict(forwarder_options or {})
        self.forwarder: Optional[VhostUserForwarder] = None
        self._vhost_dir = None
        self.vhost_socket: Optional[str] = None
        if device == "virtio_user":
            self._vhost_dir = tempfile.mkdtemp(prefix="chimney-vhost-")
            self.vhost_socket = os.path.join(self._vhost_dir, "vhost.sock")
        if port_spec is None:
            if device == "virtio_user":
                port_spec = (f"kind=virtio_user,path={self.vhost_socket},"
                             f"address={self.target_ip}/{self.prefix_len}")
            else:
                port_spec = f"kind=tap,iface={self.iface},address={self.target_ip}/{self.prefix_len}"
            if mtu is not None:
                port_spec += f",mtu={mtu}"
            if mac is not None:
                port_spec += f",mac={mac}"
        self.port_spec = port_spec
        self.eal_args = [str(a) for a in eal_args]
        self.extra_args = [str(a) for a in extra_args]
        self.options = options
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.configure_peer = configure_peer
        self.disable_ipv6 = disable_ipv6
        if peer_mac == "auto":
            # net_tap gives the kernel side of the TAP the port's own MAC; a
            # distinct, locally administered one makes the link look like a
            # wire between two hosts (02:00 + the peer's IPv4 address).
            peer_mac = "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(self.peer_ip).packed)
        self.peer_mac = peer_mac
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.python = python
        self._tmpdir = None
        if log_path is None:
            if log_dir is None:
                self._tmpdir = tempfile.mkdtemp(prefix="chimney-log-")
                log_dir = self._tmpdir
            os.makedirs(log_dir, exist_ok=True)
            log_path = os.path.join(log_dir, f"chimneyd-{self.netns}.log")
        self.log_path = os.path.abspath(log_path)
        # Each target its own control socket, in a private directory.
        self._ctl_dir = tempfile.mkdtemp(prefix="chimney-ctl-")
        self.control_socket = os.path.join(self._ctl_dir, "control.sock")
        self.argv = [self.chimneyd_path, "--file-prefix", self.file_prefix, *self.eal_args, "--",
                     "--port", self.port_spec, "--control-socket", self.control_socket,
                     *_option_args(options), *self.extra_args]
        self.process: Optional[subprocess.Popen] = None
        self._children: list = []
        self._namespace: Optional[Namespace] = None
        self._log_file = None
        self.handle: Optional[Target] = None

    # ---- context manager

    def __enter__(self) -> Target:
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise
        return self.handle

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._cleanup()
        return False

    # ---- start

    def _start(self) -> None:
        self._namespace = Namespace(self.netns, self.disable_ipv6)
        self._namespace.__enter__()
        if self.device == "virtio_user":
            self.forwarder = VhostUserForwarder(
                self.netns, self.iface, self.vhost_socket, self.file_prefix + "-vhost",
                log_path=os.path.join(os.path.dirname(self.log_path),
                                      f"testpmd-{self.netns}.log"),
                **self.forwarder_options)
            self.forwarder.start()

        self._log_file = open(self.log_path, "wb")
        self._log_file.write(("$ ip netns exec " + self.netns + " " + " ".join(self.argv)
                              + "\n").encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            [IP, "netns", "exec", self.netns, *self.argv],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=self.cwd, env=self.env, preexec_fn=_parent_death_signal)
        self.handle = Target(self)
        self._wait_ready()
        if self.configure_peer:
            self._configure_peer()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if READY_LINE in self.handle.log():
                return
            rc = self.process.poll()
            if rc is not None:
                raise TargetStartError(
                    f"chimneyd exited with code {rc} before it was ready "
                    f"(log {self.log_path}); last lines:\n{self.handle.log_tail()}")
            if time.monotonic() >= deadline:
                raise TargetStartError(
                    f"chimneyd not ready after {self.ready_timeout}s (log {self.log_path}); "
                    f"last lines:\n{self.handle.log_tail()}")
            time.sleep(0.05)

    def _configure_peer(self) -> None:
        deadline = time.monotonic() + 5
        while not self.handle.iface_exists():
            if time.monotonic() >= deadline:
                raise TargetStartError(
                    f"chimneyd is ready but {self.iface} is not in namespace {self.netns}; "
                    f"log tail:\n{self.handle.log_tail()}")
            time.sleep(0.05)
        if self.peer_mac:
            _ip("-n", self.netns, "link", "set", "dev", self.iface, "address", self.peer_mac)
        _ip("-n", self.netns, "addr", "add", f"{self.peer_ip}/{self.prefix_len}",
            "dev", self.iface)
        _ip("-n", self.netns, "link", "set", self.iface, "up")

    # ---- cleanup (every step runs, whatever failed before it)

    def _cleanup(self) -> None:
        problems = []
        if self.handle is not None:
            try:
                self.handle.close_client()
            except Exception as e:
                problems.append(f"control client: {e}")
        for p in self._children:
            try:
                self._end(p, 3.0)
            except Exception as e:  # keep going
                problems.append(f"child {p.pid}: {e}")
        if self.process is not None:
            try:
                self._end(self.process, self.stop_timeout)
            except Exception as e:
                problems.append(f"chimneyd {self.process.pid}: {e}")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.forwarder is not None:
            try:
                self.forwarder.stop()
            except Exception as e:
                problems.append(f"dpdk-testpmd {self.forwarder.pid}: {e}")
        if self._namespace is not None:
            try:
                self._namespace.delete()
            except Exception as e:
                problems.append(str(e))
        shutil.rmtree(self._ctl_dir, ignore_errors=True)
        if self._vhost_dir is not None and (self.forwarder is None or not self.forwarder.alive()):
            shutil.rmtree(self._vhost_dir, ignore_errors=True)
        runtime = dpdk_runtime_dir(self.file_prefix)
        if os.path.isdir(runtime) and (self.process is None or self.process.poll() is not None):
            shutil.rmtree(runtime, ignore_errors=True)
        if problems:
            print("chimney.testing cleanup: " + "; ".join(problems), file=sys.stderr)

    @staticmethod
    def _end(p: subprocess.Popen, timeout: float) -> None:
        if p.poll() is not None:
            return
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
