"""An attacker on the Linux side of chimneyd's TAP, for test_adversarial.py.

What it offers:

  Wire       a packet socket on the TAP inside the test's namespace (opened by
             switching only the calling thread into the namespace): a sniffer
             thread that records every TCP segment in both directions, answers
             ARP for addresses the test makes up (spoofed hosts), and sends
             frames built with scapy exactly as they are (L2).
  Flow       one 4-tuple as an attacker sees it on the wire: chimneyd's
             snd.max, rcv.nxt, window and timestamps learned from the
             segments, and builders for segments that look like the peer's.
  Host       the control-plane session (chimney.client) with every
             completion message counted by tag, so a test can check that each
             request completed exactly once.
  Duplex     a legitimate connection: chimneyd CONNECTs to a Linux peer (this
             file run as `attack.py peer PORT`) and both sides send the test
             stream (peer.stream) to each other, paced or on demand; finish()
             checks byte counts and sha256 on both sides.
  FakePeer   a TCP endpoint played with scapy at a made-up address, for the
             peers a Linux socket cannot be (one that shrinks its window).

Every address is in 198.18.0.0/15; spoofed ones too.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "clients" / "python"))

import peer as stream_peer  # noqa: E402

PYTHON = "/usr/bin/python3"
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
CLONE_NEWNET = 0x40000000
MOD = 1 << 32

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def seq_add(a: int, b: int) -> int:
    return (a + b) % MOD


def seq_lt(a: int, b: int) -> bool:
    return ((a - b) % MOD) >= (1 << 31)


def seq_geq(a: int, b: int) -> bool:
    return not seq_lt(a, b)


def seq_max(a: int, b: int) -> int:
    return b if seq_lt(a, b) else a


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


# --------------------------------------------------------------------------
# the namespace, for this thread only

_libc = ctypes.CDLL(None, use_errno=True)


class in_netns:
    """Moves the calling thread (only) into a network namespace and back.
    Sockets made inside stay in that namespace."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns({self.name}): {os.strerror(e)}")
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        try:
            if _libc.setns(self.home, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns(back): {os.strerror(e)}")
        finally:
            os.close(self.home)
        return False


# --------------------------------------------------------------------------
# segments as seen on the wire


@dataclass
class Seg:
    """One TCP segment seen on the TAP."""
    n: int                 # index in the wire's record
    t: float               # time.monotonic() when seen
    from_target: bool      # sent by chimneyd (else: the Linux side or a fake host)
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    win: int
    plen: int
    ts: Optional[tuple] = None     # (TSval, TSecr)
    mss: Optional[int] = None
    wscale: Optional[int] = None
    payload: bytes = b""

    @property
    def seg_len(self) -> int:
        return self.plen + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    @property
    def end(self) -> int:
        return seq_add(self.seq, self.seg_len)

    def __repr__(self):
        f = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "A"))
                    if self.flags & bit)
        d = "T>" if self.from_target else ">T"
        return (f"<{d} {self.src}:{self.sport}->{self.dst}:{self.dport} {f} seq={self.seq} "
                f"ack={self.ack} win={self.win} len={self.plen} ts={self.ts} t={self.t:.3f}>")


def _parse_options(b: bytes, seg: Seg) -> None:
    i = 0
    while i < len(b):
        kind = b[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(b) or b[i + 1] < 2:
            return
        olen = b[i + 1]
        data = b[i + 2:i + olen]
        if kind == 2 and olen == 4:
            seg.mss = struct.unpack("!H", data)[0]
        elif kind == 3 and olen == 3:
            seg.wscale = data[0]
        elif kind == 8 and olen == 10:
            seg.ts = struct.unpack("!II", data)
        i += olen


class Wire:
    """The attacker's view of and access to the TAP (see the module doc)."""

    def __init__(self, target, keep_payload_from: Optional[set] = None):
        self.target = target
        self.target_mac = mac_bytes(target.mac)
        self.target_ip = target.target_ip
        self.peer_mac = target.peer_mac
        self.segs: List[Seg] = []
        self.cond = threading.Condition()
        self.fake_hosts: Dict[bytes, bytes] = {}  # ip -> mac answered in ARP
        self.arp_requests: Dict[str, int] = {}     # ip -> requests seen from chimneyd
        self.keep_payload_from = keep_payload_from or set()  # (ip) whose payload is kept
        self._injected: Dict[bytes, int] = {}
        self.last: Dict[tuple, Seg] = {}  # (from_target, sport, dport) -> latest segment
        self._stop = False
        with in_netns(target.netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock.bind((target.iface, ETH_P_ALL))
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._run, name="wire-sniffer", daemon=True)
        self.thread.start()

    # ---- sending

    def send(self, *frames) -> None:
        """Sends frames (scapy packets or bytes) on the TAP as they are."""
        for f in frames:
            b = bytes(f)
            with self.cond:
                self._injected[b] = self._injected.get(b, 0) + 1
            self.sock.send(b)

    def fake_host(self, ip: str, mac: str) -> None:
        """ARP requests for `ip` (a spoofed host) are answered with `mac`."""
        self.fake_hosts[ip_bytes(ip)] = mac_bytes(mac)

    # ---- reading

    def mark(self) -> int:
        with self.cond:
            return len(self.segs)

    def since(self, mark: int, pred: Callable[[Seg], bool] = lambda s: True) -> List[Seg]:
        with self.cond:
            return [s for s in self.segs[mark:] if pred(s)]

    def wait_for(self, pred: Callable[[Seg], bool], timeout: float, mark: int = 0) -> Optional[Seg]:
        """The first segment at or after `mark` that satisfies `pred`, or None."""
        deadline = time.monotonic() + timeout
        i = mark
        with self.cond:
            while True:
                while i < len(self.segs):
                    if pred(self.segs[i]):
                        return self.segs[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()

    # ---- the sniffer thread

    def _run(self) -> None:
        while not self._stop:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            if len(frame) < 34:
                continue
            etype = frame[12:14]
            if etype == b"\x08\x06":
                self._arp(frame)
                continue
            if etype != b"\x08\x00" or frame[14] >> 4 != 4 or frame[23] != 6:
                continue
            if addr[2] == PACKET_OUTGOING:
                with self.cond:
                    left = self._injected.get(frame)
                    if left:
                        # our own frame looped back: not the peer's
                        if left == 1:
                            del self._injected[frame]
                        else:
                            self._injected[frame] = left - 1
                        continue
            ihl = (frame[14] & 0xF) * 4
            total = struct.unpack("!H", frame[16:18])[0]
            l4 = 14 + ihl
            if len(frame) < l4 + 20:
                continue
            sport, dport, seq, ack, offfl, win = struct.unpack("!HHIIHH", frame[l4:l4 + 16])
            doff = (offfl >> 12) * 4
            src = socket.inet_ntoa(frame[26:30])
            s = Seg(0, now, frame[6:12] == self.target_mac, src, socket.inet_ntoa(frame[30:34]),
                    sport, dport, seq, ack, offfl & 0x1FF, win, max(0, total - ihl - doff))
            _parse_options(frame[l4 + 20:l4 + doff], s)
            if s.plen and (s.from_target or src in self.keep_payload_from):
                s.payload = frame[l4 + doff:14 + total]
            with self.cond:
                s.n = len(self.segs)
                self.segs.append(s)
                self.last[(s.from_target, s.sport, s.dport)] = s
                self.cond.notify_all()

    def _arp(self, frame: bytes) -> None:
        if len(frame) < 42 or frame[20:22] != b"\x00\x01":  # requests only
            return
        if frame[6:12] != self.target_mac:
            return
        tpa = frame[38:42]
        ip = socket.inet_ntoa(tpa)
        self.arp_requests[ip] = self.arp_requests.get(ip, 0) + 1
        mac = self.fake_hosts.get(tpa)
        if mac is None:
            return
        reply = (frame[6:12] + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac + tpa +
                 frame[22:28] + frame[28:32])
        self.send(reply)


# --------------------------------------------------------------------------
# one connection as the attacker sees it


class Flow:
    """A connection between chimneyd (`local`) and a peer (`remote`) on the wire."""

    def __init__(self, wire: Wire, local_port: int, remote_ip: str, remote_port: int,
                 remote_mac: Optional[str] = None):
        self.wire = wire
        self.local_ip = wire.target_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.remote_mac = remote_mac or wire.peer_mac

    def ours(self, s: Seg) -> bool:
        """A segment of this connection, either direction."""
        if s.from_target:
            return s.sport == self.local_port and s.dport == self.remote_port and s.dst == self.remote_ip
        return s.dport == self.local_port and s.sport == self.remote_port and s.src == self.remote_ip

    def out(self, s: Seg) -> bool:
        return s.from_target and self.ours(s)

    def inbound(self, s: Seg) -> bool:
        return not s.from_target and self.ours(s)

    def segments(self, mark: int = 0) -> List[Seg]:
        return self.wire.since(mark, self.ours)

    def latest(self, from_target: bool) -> Optional[Seg]:
        """The newest segment of this connection in one direction."""
        key = (True, self.local_port, self.remote_port) if from_target else (False, self.remote_port, self.local_port)
        return self.wire.last.get(key)

    def quiet(self, idle: float = 0.3, timeout: float = 10) -> None:
        """Waits until no segment of the connection was seen for `idle` s."""
        deadline = time.monotonic() + timeout
        while True:
            segs = self.segments()
            last = segs[-1].t if segs else 0
            if time.monotonic() - last >= idle:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"connection {self} never went quiet")
            time.sleep(0.05)

    def state(self) -> "FlowState":
        """chimneyd's sequence variables as the wire shows them."""
        segs = self.segments()
        out = [s for s in segs if s.from_target]
        inb = [s for s in segs if not s.from_target]
        assert out and inb, f"no segments of {self} seen yet"
        syn = next((s for s in out if s.flags & SYN), None)
        assert syn is not None, f"chimneyd's SYN of {self} was not seen"
        rcv_wscale = syn.wscale or 0
        snd_max = syn.end
        for s in out:
            if not (s.flags & RST):
                snd_max = seq_max(snd_max, s.end)
        last = out[-1]
        peer_ts = [s.ts[0] for s in inb if s.ts]
        target_ts = [s.ts[0] for s in out if s.ts]
        return FlowState(snd_max=snd_max, rcv_nxt=last.ack, rcv_wnd=last.win << rcv_wscale,
                         snd_una=inb[-1].ack, peer_tsval=peer_ts[-1] if peer_ts else None,
                         target_tsval=target_ts[-1] if target_ts else None, rcv_wscale=rcv_wscale,
                         peer_win=inb[-1].win)

    def segment(self, *, seq: int, ack: int = 0, flags: int = ACK, win: int = 512,
                payload: bytes = b"", ts: Optional[tuple] = None, options: Optional[list] = None,
                ip_kw: Optional[dict] = None, tcp_kw: Optional[dict] = None):
        """A scapy frame that looks like the peer's: its MACs, addresses, ports."""
        from scapy.all import IP, TCP, Ether, Raw
        opts = list(options or [])
        if ts is not None:
            opts += [("NOP", None), ("NOP", None), ("Timestamp", ts)]
        ip = IP(src=self.remote_ip, dst=self.local_ip, flags="DF", **(ip_kw or {}))
        tcp = TCP(sport=self.remote_port, dport=self.local_port, seq=seq % MOD, ack=ack % MOD,
                  flags=flags, window=win, options=opts, **(tcp_kw or {}))
        frame = Ether(src=self.remote_mac, dst=self.wire.target.mac) / ip / tcp
        if payload:
            frame = frame / Raw(payload)
        return frame

    def raw_segment(self, *, seq: int, ack: int, flags: int, win: int, options: bytes = b"",
                    payload: bytes = b"", dataofs: Optional[int] = None, tcp_len: Optional[int] = None,
                    checksum_xor: int = 0, ip_kw: Optional[dict] = None) -> bytes:
        """The peer's segment with the TCP header written byte by byte, so that
        options, data offset and checksum can be anything. `tcp_len` cuts the
        TCP part (header and payload) short; the IP total length follows it."""
        from scapy.all import IP, Ether, Raw
        from scapy.utils import checksum
        doff = dataofs if dataofs is not None else (20 + len(options)) // 4
        hdr = struct.pack("!HHIIHHHH", self.remote_port, self.local_port, seq % MOD, ack % MOD,
                          (doff << 12) | flags, win, 0, 0) + options
        seg = hdr + payload
        pseudo = ip_bytes(self.remote_ip) + ip_bytes(self.local_ip) + struct.pack("!BBH", 0, 6, len(seg))
        ck = checksum(pseudo + seg) ^ checksum_xor
        seg = seg[:16] + struct.pack("!H", ck) + seg[18:]
        if tcp_len is not None:
            seg = seg[:tcp_len]
        ip = IP(src=self.remote_ip, dst=self.local_ip, flags="DF", proto=6, **(ip_kw or {}))
        return bytes(Ether(src=self.remote_mac, dst=self.wire.target.mac) / ip / Raw(seg))

    def __repr__(self):
        return f"{self.local_ip}:{self.local_port}<->{self.remote_ip}:{self.remote_port}"


@dataclass
class FlowState:
    snd_max: int         # highest sequence number chimneyd sent + 1
    rcv_nxt: int         # the ACK field chimneyd sends
    rcv_wnd: int         # the window chimneyd offers (scaled)
    snd_una: int         # the peer's last ACK
    peer_tsval: Optional[int]
    target_tsval: Optional[int]
    rcv_wscale: int
    peer_win: int        # the peer's last window field

    def ts(self, age: int = 0) -> Optional[tuple]:
        """A timestamp option the peer could send now (TSval aged by `age`)."""
        if self.peer_tsval is None:
            return None
        return ((self.peer_tsval - age) % MOD, self.target_tsval or 0)


# --------------------------------------------------------------------------
# the host (control plane), completions counted


COMPLETIONS = {104: "send", 105: "receive", 106: "disconnect"}


class Host:
    """chimney.client Target with every completion message counted by tag."""

    def __init__(self, target):
        from chimney import protocol as p
        self.t = target.target
        self.counts: Dict[int, int] = {}
        self.returned: Dict[int, int] = {}
        self.requests: list = []
        self.events: list = []
        orig = self.t._dispatch
        lock = threading.Lock()

        def counting(m):
            with lock:
                if int(m.type) in COMPLETIONS:
                    self.counts[m.tag] = self.counts.get(m.tag, 0) + 1
                elif m.type == p.MsgType.TERMINATE_COMPLETE:
                    for s in m.body.sends:
                        self.returned[s.tag] = self.returned.get(s.tag, 0) + 1
            orig(m)

        self.t._dispatch = counting

    def track(self, req):
        self.requests.append(req)
        return req

    def drain_events(self) -> list:
        while True:
            try:
                self.events.append(self.t.next_event(0))
            except TimeoutError:
                return self.events

    def events_of(self, conn, kinds=("ABORT", "RETRIEVE")) -> list:
        return [e for e in self.drain_events() if e.handle == conn.handle and e.kind in kinds]

    def wait_event(self, conn, kind: str, timeout: float):
        """The first event `kind` of `conn` (already seen or arriving within
        `timeout`), or None."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.drain_events():
                if e.handle == conn.handle and e.kind == kind:
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.events.append(self.t.next_event(min(left, 0.1)))
            except TimeoutError:
                pass

    def check_exactly_once(self) -> None:
        """Every request posted completed once (or was handed back once by a
        TERMINATE), and no completion arrived for a tag twice."""
        twice = {tag: n for tag, n in self.counts.items() if n > 1}
        assert not twice, f"completions arrived more than once: {twice}"
        for r in self.requests:
            n = self.counts.get(r.tag, 0) + self.returned.get(r.tag, 0)
            assert r.done() and n == 1, f"{r}: {n} completions"


# --------------------------------------------------------------------------
# a legitimate connection carrying the test stream both ways

CHUNK = 64 * 1024


class Duplex:
    """chimneyd connects to a Linux peer (attack.py peer) on `port`; the host
    keeps receives posted and sends the test stream; so does the peer."""

    def __init__(self, target, host: Host, port: int, *, stall_reading: bool = False, **cached):
        self.target = target
        self.host = host
        self.proc = target.popen([PYTHON, __file__, "peer", str(port)] + (["stall"] if stall_reading else []),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, bufsize=1, cwd=str(HERE))
        line = self.proc.stdout.readline().strip()
        assert line == "listening", f"peer did not start: {line!r} {self.proc.stderr.read()}"
        self.conn = host.t.connect(target.peer_ip, port, **cached)
        self.port = port
        self.sent = 0                 # bytes the host posted
        self.received = bytearray()   # what the host's receives returned
        self.recv_end: Optional[str] = None
        self.errors: List[str] = []
        self._send_lock = threading.Lock()
        self._pending: list = []
        self._stop = threading.Event()
        self._pacer: Optional[threading.Thread] = None
        self._receiver = threading.Thread(target=self._receive_loop, daemon=True)
        self._receiver.start()

    # ---- which segments are ours

    def flow(self, wire: Wire) -> Flow:
        return Flow(wire, self.local_port(wire), self.target.peer_ip, self.port)

    def local_port(self, wire: Wire) -> int:
        s = wire.wait_for(lambda s: s.from_target and s.flags & SYN and s.dport == self.port, 5)
        assert s is not None, "chimneyd's SYN was not seen"
        return s.sport

    # ---- the host's side

    def _receive_loop(self) -> None:
        posted = [self.host.track(self.conn.post_receive(CHUNK)) for _ in range(4)]
        while posted:
            try:
                c = posted[0].wait(0.2)
            except TimeoutError:
                continue
            except Exception as e:  # the session ended
                self.errors.append(f"receive: {e}")
                return
            posted.pop(0)
            if c.status == "NDIS_STATUS_SUCCESS":
                self.received += c.data
                if self.recv_end is None:
                    posted.append(self.host.track(self.conn.post_receive(CHUNK)))
            elif c.status == "NDIS_STATUS_INVALID_STATE":
                self.recv_end = self.recv_end or "fin"    # C-16: after the peer's FIN
            elif c.status == "NDIS_STATUS_REQUEST_ABORTED":
                self.recv_end = "aborted"                # C-17
            else:
                self.errors.append(f"receive completed {c.status}")
                self.recv_end = c.status

    def send(self, n: int) -> list:
        """Posts the next `n` bytes of the stream (in CHUNK requests)."""
        reqs = []
        with self._send_lock:
            while n > 0:
                k = min(n, CHUNK)
                r = self.host.track(self.conn.send(stream_peer.stream(k, self.sent)))
                self._pending.append((r, k))
                reqs.append(r)
                self.sent += k
                n -= k
        return reqs

    def wait_sends(self, timeout: float = 30) -> None:
        """Every send posted so far completes SUCCESS with all its bytes (C-6)."""
        with self._send_lock:
            pending, self._pending = self._pending, []
        for r, k in pending:
            c = r.wait(timeout)
            assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == k, (r, c)

    def pace(self, chunk: int = CHUNK, interval: float = 0.05, peer: bool = True) -> None:
        """The host (and the peer, if `peer`) send `chunk` bytes every
        `interval` s until finish()."""
        if peer:
            self.command(f"pace {chunk} {interval}")

        def run():
            try:
                while not self._stop.is_set():
                    self.send(chunk)
                    with self._send_lock:
                        backlog = [r for r, _ in self._pending if not r.done()]
                    if len(backlog) > 16:   # the peer is not reading: do not flood the region
                        backlog[0].wait(30)
                    self._stop.wait(interval)
            except Exception as e:  # the session ended under it (a failed test)
                if not self._stop.is_set():
                    self.errors.append(f"pacer: {e}")

        self._pacer = threading.Thread(target=run, daemon=True)
        self._pacer.start()

    # ---- the peer's side

    def command(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def peer_send(self, n: int) -> None:
        self.command(f"send {n}")

    def wait_received(self, n: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline and not self.errors:
            time.sleep(0.02)
        assert len(self.received) >= n, f"host received {len(self.received)} of {n} bytes"

    # ---- the end

    def finish(self, timeout: float = 60) -> dict:
        """Stops both directions, closes gracefully and checks every byte:
        the peer's count and sha256 of what the host sent, the host's of what
        the peer sent. Returns the peer's report."""
        self._stop.set()
        if self._pacer:
            self._pacer.join(30)
        self.wait_sends(timeout)
        self.command("close")
        d = self.host.track(self.conn.disconnect(graceful=True)).wait(timeout)
        assert d.status == "NDIS_STATUS_SUCCESS", d
        out, err = self.proc.communicate(timeout=timeout)
        lines = [l for l in out.splitlines() if l.startswith("{")]
        assert lines, f"peer printed no result; stderr: {err}"
        got = json.loads(lines[-1])
        self._receiver.join(timeout)
        assert not self.errors, self.errors
        assert self.recv_end == "fin", self.recv_end
        # What the host sent, as the peer received it.
        assert got["end"] == "eof", got
        assert got["bytes"] == self.sent, (got, self.sent)
        assert got["sha256"] == hashlib.sha256(stream_peer.stream(self.sent)).hexdigest()
        # What the peer sent, as the host received it.
        assert len(self.received) == got["sent"], (len(self.received), got)
        assert hashlib.sha256(self.received).hexdigest() == got["sent_sha256"]
        assert got["sent_sha256"] == hashlib.sha256(stream_peer.stream(got["sent"])).hexdigest()
        self.conn.terminate()
        return got

    def stop(self) -> None:
        self._stop.set()
        if self._pacer:
            self._pacer.join(5)

    def kill_peer(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------
# a TCP endpoint played by the attacker at a made-up address


class FakePeer:
    """A TCP endpoint played with scapy at a made-up address (its ARP is
    answered by the wire; the Linux kernel ignores frames to its MAC). It
    either answers chimneyd's SYN (accept) or opens a connection to a
    chimneyd listener (connect); it keeps the payload chimneyd sends and
    ACKs only when told to, or per a policy (respond)."""

    def __init__(self, wire: Wire, ip: str, port: int, mac: str = "02:00:c6:12:00:32", *,
                 window: int = 65535, wscale: Optional[int] = None, mss: int = 1460,
                 timestamps: bool = True):
        self.wire = wire
        self.ip, self.port, self.mac = ip, port, mac
        self.window, self.wscale, self.mss, self.timestamps = window, wscale, mss, timestamps
        wire.fake_host(ip, mac)
        wire.keep_payload_from.add(ip)
        self.iss = 0x10000000
        self.flow: Optional[Flow] = None
        self.t0 = time.monotonic()
        self.syn: Optional[Seg] = None   # chimneyd's SYN (or SYN-ACK): its ISN
        self._responder = None

    def tsval(self) -> int:
        return int((time.monotonic() - self.t0) * 1000) + 1000

    def _options(self) -> list:
        opts = [("MSS", self.mss)]
        if self.wscale is not None:
            opts.append(("WScale", self.wscale))
        return opts

    def accept(self, timeout: float = 10) -> Flow:
        """Answers chimneyd's SYN (sent after the host's CONNECT) with a SYN-ACK."""
        syn = self.wire.wait_for(lambda s: s.from_target and s.flags & SYN and s.dst == self.ip
                                 and s.dport == self.port, timeout)
        assert syn is not None, f"no SYN to {self.ip}:{self.port}"
        self.syn = syn
        self.flow = Flow(self.wire, syn.sport, self.ip, self.port, self.mac)
        self.wire.send(self.flow.segment(seq=self.iss, ack=seq_add(syn.seq, 1), flags=SYN | ACK,
                                         win=min(self.window, 65535), options=self._options(),
                                         ts=(self.tsval(), syn.ts[0]) if self.timestamps and syn.ts else None))
        return self.flow

    def connect(self, target_port: int, options: Optional[list] = None, win: int = 65535,
                timeout: float = 3) -> Optional[Seg]:
        """Sends a SYN with `options` (default: MSS, window scale, timestamps)
        to a chimneyd listener; on its SYN-ACK completes the handshake with an
        ACK offering `win`. Returns the SYN-ACK (None if none came)."""
        self.flow = Flow(self.wire, target_port, self.ip, self.port, self.mac)
        if options is None:
            options = self._options() + ([("Timestamp", (self.tsval(), 0))] if self.timestamps else [])
        mark = self.wire.mark()
        self.wire.send(self.flow.segment(seq=self.iss, flags=SYN, win=win, options=options))
        synack = self.wire.wait_for(self.flow.out, timeout, mark)
        if synack is None or synack.flags & (SYN | ACK) != SYN | ACK:
            return synack
        self.syn = synack
        self.wire.send(self.flow.segment(seq=seq_add(self.iss, 1), ack=seq_add(synack.seq, 1), flags=ACK,
                                         win=win, ts=(self.tsval(), synack.ts[0]) if synack.ts else None))
        return synack

    def received(self) -> bytes:
        """chimneyd's payload in sequence order from its first byte, as far as
        it is contiguous."""
        base = seq_add(self.syn.seq, 1)
        data: Dict[int, bytes] = {}
        for s in self.flow.segments():
            if s.from_target and s.plen:
                data[(s.seq - base) % MOD] = s.payload
        out = bytearray()
        for off in sorted(data):
            if off <= len(out) < off + len(data[off]):
                out += data[off][len(out) - off:]
        return bytes(out)

    def respond(self, policy: Callable[["FakePeer", Seg], Optional[tuple]]) -> None:
        """From now on every segment chimneyd sends is answered with
        ack(*policy(self, seg)) (None: not answered), until stop()."""
        self.stop()
        self._responding = True
        mark = self.wire.mark()

        def run():
            i = mark
            while self._responding:
                s = self.wire.wait_for(lambda s: self.flow.out(s), 0.1, i)
                if s is None:
                    continue
                i = s.n + 1
                answer = policy(self, s)
                if answer is not None and self._responding:
                    self.ack(*answer)

        self._responder = threading.Thread(target=run, daemon=True)
        self._responder.start()

    def stop(self) -> None:
        if self._responder is not None:
            self._responding = False
            self._responder.join(2)
            self._responder = None

    def ack(self, acked: int, win: int) -> None:
        """ACKs `acked` bytes of chimneyd's payload and offers window field `win`."""
        target_ts = [s.ts[0] for s in self.flow.segments() if s.from_target and s.ts]
        self.wire.send(self.flow.segment(
            seq=seq_add(self.iss, 1), ack=seq_add(self.syn.seq, 1 + acked), flags=ACK, win=win,
            ts=(self.tsval(), target_ts[-1]) if self.timestamps and target_ts else None))


# --------------------------------------------------------------------------
# `attack.py peer PORT [stall]`: the Linux side of a Duplex


def _peer_main(port: int, stall: bool) -> None:
    conn, addr = stream_peer.listen(port)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = 0
    sent_h = hashlib.sha256()
    lock = threading.Lock()
    closing = threading.Event()
    reading = threading.Event()
    if not stall:
        reading.set()
    result = {"peer_port": addr[1]}

    def send(n):
        nonlocal sent
        with lock:
            if closing.is_set():
                return
            data = stream_peer.stream(n, sent)
            conn.sendall(data)
            sent_h.update(data)
            sent += n

    def pace(n, interval):
        while not closing.wait(interval):
            send(n)

    def read():
        h = hashlib.sha256()
        n = 0
        reading.wait()
        try:
            while True:
                d = conn.recv(1 << 20)
                if not d:
                    result["end"] = "eof"
                    break
                h.update(d)
                n += len(d)
        except OSError as e:
            result["end"] = "error"
            result["error"] = str(e)
        result["bytes"] = n
        result["sha256"] = h.hexdigest()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pacer = None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        try:
            if cmd[0] == "send":
                send(int(cmd[1]))
            elif cmd[0] == "pace":
                pacer = threading.Thread(target=pace, args=(int(cmd[1]), float(cmd[2])), daemon=True)
                pacer.start()
            elif cmd[0] == "read":
                reading.set()
            elif cmd[0] == "close":
                with lock:
                    closing.set()
                if pacer:
                    pacer.join()
                conn.shutdown(socket.SHUT_WR)
                reading.set()
                break
        except OSError as e:
            result["send_error"] = str(e)
            reading.set()
            break
    reader.join(60)
    result["sent"] = sent
    result["sent_sha256"] = sent_h.hexdigest()
    conn.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "peer":
        _peer_main(int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "stall")
    else:
        sys.exit(__doc__)
