"""The wire check: a capture on the Linux side of the TAP, judged by tshark.

Every integration test that talks TCP through chimneyd can record what went
over the wire and fail on what a correct stack never sends:

    def test_something(target, wire):        # `wire` is a pytest fixture (conftest)
        ...                                   # traffic
        wire.check(allow_rst_from_target=True)

or, with a target made inside the test (the `fresh` factory):

    with start_target(...) as t, Wire(t, tmp_path) as w:
        ...
        w.check()

The capture is tcpdump inside the target's namespace on the Linux end of the
TAP (`tcpdump -i IFACE -U --immediate-mode -w FILE tcp`), started and stopped
by PID; the test goes on only once tcpdump says it is listening. At check()
the capture is stopped (after the wire has gone quiet) and read by tshark
with sequence analysis, relative sequence numbers and IP/TCP checksum
validation. Findings (each printed with frame number, time, addresses, flags,
seq/ack/len/win and what is wrong):

  malformed          a frame tshark cannot dissect (_ws.malformed)
  checksum           a bad IPv4 or TCP checksum
  ack-unseen         chimney ACKs bytes the peer never sent (tshark: "ACKed
                     segment that wasn't captured"; also computed from the
                     peer's highest sequence number)
  gap                chimney's sequence numbers skip bytes it never sent
                     (tshark: "Previous segment(s) not captured"): frames
                     chimney writes into the TAP are captured before anything
                     in the kernel can drop them, so with a complete capture
                     a gap is chimney's
  window-shrink      chimney moves the right edge of its receive window
                     (SEG.ACK + SEG.WND << scale) left of one it offered
                     before (RFC 9293 §3.8.6.2.2, RFC 1122 §4.2.2.16)
  window-exceeded    chimney sends data beyond the right edge the peer
                     offered (RFC 9293 §3.8.6; a zero-window probe may carry
                     one byte)
  ack-backwards      chimney's ACK number goes back
  fin-moved          chimney's FIN at a different sequence number than before
  data-after-fin     chimney sends data after its FIN
  after-rst          chimney sends anything but a RST on a connection after
                     its own RST (C-13: nothing is processed or ACKed after it)
  rst / fin          a RST (or FIN) from chimney where the test does not allow one
  zero-window-probe  probes sooner than an RTO after the window closed, or
                     closer together than the one before (RFC 1122 §4.2.2.17:
                     exponential back-off)
  capture            the capture itself is incomplete (tcpdump dropped frames)
                     while it holds a gap or unseen ACK that needs it complete

Retransmissions, duplicate ACKs, window updates, zero windows, reused ports
and keep-alives are not findings. Gaps and unseen ACKs on the Linux side say
nothing about chimney and are listed as notes only.

The pcap stays under the test's tmp_path when the check (or the test) fails,
and is removed when it passes.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TSHARK = "/usr/bin/tshark"
TCPDUMP = "/usr/bin/tcpdump"

# Fields read for every TCP frame (one tab-separated line each).
_FIELDS = [
    "frame.number", "frame.time_relative", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport",
    "tcp.stream", "tcp.flags", "tcp.seq", "tcp.ack", "tcp.seq_raw", "tcp.ack_raw", "tcp.len",
    "tcp.window_size_value", "tcp.options.wscale.shift", "tcp.checksum.status",
    "ip.checksum.status", "_ws.expert.message", "frame.protocols",
]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _seq_lt(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


def _seq_gt(a: int, b: int) -> bool:
    return _seq_lt(b, a)


def _seq_diff(a: int, b: int) -> int:
    """a - b as a signed 32-bit sequence distance."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= 0x80000000 else d


def flags_str(f: int) -> str:
    names = [(SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "A")]
    return "".join(n for bit, n in names if f & bit) or "."


@dataclass
class Frame:
    number: int
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    stream: int
    flags: int
    seq: int          # relative
    ack: int          # relative
    seq_raw: int
    ack_raw: int
    length: int
    win: int          # the raw 16-bit field
    wscale: Optional[int]
    tcp_checksum: Optional[int]  # 0 bad, 1 good, 2 unverified
    ip_checksum: Optional[int]
    experts: List[str]
    protocols: str
    from_target: bool = False

    def has(self, f: int) -> bool:
        return bool(self.flags & f)

    def line(self) -> str:
        return (f"#{self.number} {self.time:.6f}s {self.src}:{self.sport} > {self.dst}:{self.dport} "
                f"[{flags_str(self.flags)}] seq={self.seq} ack={self.ack} len={self.length} win={self.win}")


@dataclass
class Finding:
    kind: str
    frame: Optional[Frame]
    text: str

    def __str__(self) -> str:
        where = self.frame.line() if self.frame is not None else "(capture)"
        return f"{where}  {self.kind}: {self.text}"


@dataclass
class Stream:
    """What one TCP connection did on the wire (a tshark tcp.stream, split
    where a new SYN opens the 4-tuple again)."""
    index: int
    target: Tuple[str, int] = ("", 0)
    peer: Tuple[str, int] = ("", 0)
    frames: int = 0
    syn_from: Optional[str] = None          # "target" or "peer": who opened it
    fins_from_target: List[Frame] = field(default_factory=list)
    fins_from_peer: List[Frame] = field(default_factory=list)
    rsts_from_target: List[Frame] = field(default_factory=list)
    rsts_from_peer: List[Frame] = field(default_factory=list)
    target_fin_acked: bool = False          # the peer ACKed chimney's FIN
    peer_fin_acked: bool = False            # chimney ACKed the peer's FIN
    bytes_from_target: int = 0              # payload span (highest seq - ISN - 1, FIN excluded)
    bytes_from_peer: int = 0
    # Sequence numbers, raw, of the FINs (each side's one FIN)
    target_fin_seq: Optional[int] = None
    peer_fin_seq: Optional[int] = None
    # Was each FIN sent before its sender saw the other one (a crossing)?
    crossed: bool = False

    def __str__(self) -> str:
        return (f"stream {self.index} {self.target[0]}:{self.target[1]} <-> {self.peer[0]}:{self.peer[1]} "
                f"opened by {self.syn_from}, {self.frames} frames, FIN target={len(self.fins_from_target)}"
                f"{'(ACKed)' if self.target_fin_acked else ''} peer={len(self.fins_from_peer)}"
                f"{'(ACKed)' if self.peer_fin_acked else ''}, RST target={len(self.rsts_from_target)} "
                f"peer={len(self.rsts_from_peer)}, bytes target={self.bytes_from_target} "
                f"peer={self.bytes_from_peer}{', FINs crossed' if self.crossed else ''}")


class WireCheckError(AssertionError):
    pass


@dataclass
class Analysis:
    pcap: str
    frames: List[Frame]
    streams: Dict[int, Stream]
    findings: List[Finding]
    notes: List[str]
    capture_stats: Dict[str, int]

    def stream_list(self) -> List[Stream]:
        return [self.streams[k] for k in sorted(self.streams)]

    def failures(self, allow_rst_from_target: bool = False, allow_fin_from_target: bool = True,
                 allow: Tuple[str, ...] = ()) -> List[Finding]:
        out = []
        for f in self.findings:
            if f.kind in allow:
                continue
            if f.kind == "rst" and allow_rst_from_target:
                continue
            if f.kind == "fin" and allow_fin_from_target:
                continue
            out.append(f)
        return out

    def report(self, findings: List[Finding]) -> str:
        lines = [f"wire check: {len(findings)} finding(s) in {self.pcap}",
                 f"  (tshark -r {self.pcap} -o tcp.relative_sequence_numbers:TRUE "
                 f"-o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE)"]
        for f in findings[:40]:
            lines.append("  " + str(f))
        if len(findings) > 40:
            lines.append(f"  ... and {len(findings) - 40} more")
        lines.append(f"  capture: {self.capture_stats}")
        for s in self.stream_list():
            lines.append("  " + str(s))
        for n in self.notes[:10]:
            lines.append("  note: " + n)
        lines.append(_expert_summary(self.pcap))
        return "\n".join(lines)


class Wire:
    """A capture on the Linux side of a target's TAP (chimney.testing.Target)."""

    def __init__(self, target, directory, name: str = "wire.pcap", snaplen: Optional[int] = None,
                 buffer_kib: int = 65536, keep: bool = False):
        self.target = target
        self.pcap = str(Path(directory) / name)
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib
        self.keep = keep
        self.proc: Optional[subprocess.Popen] = None
        self.capture_stats: Dict[str, int] = {}
        self.stderr = ""
        self.checked = False
        self.failed = False
        self.analysis: Optional[Analysis] = None

    # ---- capture

    def _mtu(self) -> int:
        out = self.target.run(["ip", "-o", "link", "show", "dev", self.target.iface], check=False).stdout
        m = re.search(r"\bmtu (\d+)", out)
        return int(m.group(1)) if m else 1500

    def start(self, timeout: float = 30.0) -> "Wire":
        if self.proc is not None:
            return self
        # Whole frames (Ethernet header + MTU), and a ring large enough that a
        # long transfer loses nothing: the ring holds buffer / snaplen frames.
        snaplen = self.snaplen or self._mtu() + 14 + 4
        if os.path.exists(self.pcap):
            os.unlink(self.pcap)
        self.proc = self.target.popen(
            [TCPDUMP, "-i", self.target.iface, "-n", "-U", "--immediate-mode", "-s", str(snaplen),
             "-B", str(self.buffer_kib), "-w", self.pcap, "tcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump prints "listening on IFACE" once the capture is active.
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stderr.fileno()
        while b"listening on" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._kill()
                raise WireCheckError(f"tcpdump did not start capturing on {self.target.iface}: "
                                     f"{buf.decode(errors='replace')}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk and self.proc.poll() is not None:
                    continue
                buf += chunk
        self.stderr = buf.decode(errors="replace")
        return self

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(60)

    def stop(self, quiet_s: float = 0.3, max_wait_s: float = 5.0) -> None:
        """Waits until the capture file has not grown for `quiet_s`, then
        stops tcpdump by PID (SIGINT: it flushes and reports its counts)."""
        if self.proc is None or self.proc.poll() is not None:
            self._read_stats()
            return
        deadline = time.monotonic() + max_wait_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = os.path.getsize(self.pcap) if os.path.exists(self.pcap) else 0
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.05)
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._kill()
            _, err = self.proc.communicate()
        self.stderr += (err or b"").decode(errors="replace")
        self._read_stats()

    def _read_stats(self) -> None:
        for key, rx in (("captured", r"(\d+) packets? captured"),
                        ("received", r"(\d+) packets? received by filter"),
                        ("dropped", r"(\d+) packets? dropped by kernel")):
            m = re.search(rx, self.stderr)
            if m:
                self.capture_stats[key] = int(m.group(1))

    def __enter__(self) -> "Wire":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop()
        if exc_type is None and not self.checked:
            self.check()
        self.finish(failed=exc_type is not None or self.failed)
        return False

    def finish(self, failed: bool) -> None:
        """Stops the capture; the pcap is removed unless something failed."""
        self.stop()
        if not failed and not self.keep and os.path.exists(self.pcap):
            os.unlink(self.pcap)

    # ---- analysis

    def analyse(self) -> Analysis:
        self.stop()
        if self.analysis is not None:
            return self.analysis
        self.analysis = analyse_pcap(self.pcap, self.target.target_ip, self.capture_stats)
        return self.analysis

    def streams(self) -> List[Stream]:
        return self.analyse().stream_list()

    def check(self, allow_rst_from_target: bool = False, allow_fin_from_target: bool = True,
              allow: Tuple[str, ...] = ()) -> Analysis:
        """Stops the capture, analyses it and fails (WireCheckError, an
        AssertionError) listing every finding. `allow_rst_from_target`:
        the scenario allows chimney to send RSTs (abortive disconnect, the
        slow path answering a connection it no longer has);
        `allow_fin_from_target`: chimney may close its sending half; `allow`:
        further finding kinds the scenario explains (name them in the test)."""
        self.checked = True
        a = self.analyse()
        findings = a.failures(allow_rst_from_target, allow_fin_from_target, allow)
        if findings:
            self.failed = True
            raise WireCheckError(a.report(findings))
        return a


def analyse_pcap(pcap: str, target_ip: str, capture_stats: Optional[Dict[str, int]] = None) -> Analysis:
    """Reads a capture with tshark and judges every frame from `target_ip`
    (chimney) as the module doc says."""
    return _analyse(pcap, _read_frames(pcap, target_ip), capture_stats or {})


def _tshark_base(pcap: str) -> List[str]:
    return [TSHARK, "-n", "-r", pcap, "-o", "tcp.relative_sequence_numbers:TRUE",
            "-o", "tcp.analyze_sequence_numbers:TRUE", "-o", "tcp.check_checksum:TRUE",
            "-o", "ip.check_checksum:TRUE"]


def _expert_summary(pcap: str) -> str:
    cp = subprocess.run(_tshark_base(pcap) + ["-q", "-z", "expert,warn"], stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
    text = cp.stdout.strip()
    return "  tshark -z expert,warn:\n" + "\n".join("    " + l for l in text.splitlines()[:30])


def _int(v: str, default: Optional[int] = None) -> Optional[int]:
    if v == "":
        return default
    v = v.split(";")[0]
    return int(v, 0)


def _read_frames(pcap: str, target_ip: str) -> List[Frame]:
    cmd = _tshark_base(pcap) + ["-Y", "tcp", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
                                "-E", "aggregator=;", "-E", "quote=n"]
    for f in _FIELDS:
        cmd += ["-e", f]
    cp = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=600)
    if cp.returncode != 0:
        raise WireCheckError(f"tshark failed on {pcap} ({cp.returncode}): {cp.stderr.strip()}")
    frames = []
    for line in cp.stdout.splitlines():
        v = line.split("\t")
        if len(v) < len(_FIELDS):
            v += [""] * (len(_FIELDS) - len(v))
        # An ICMP error quoting a TCP header shows two sets of addresses:
        # only the outer frame matters here, and those are skipped.
        if ";" in v[2] or ";" in v[6]:
            continue
        fr = Frame(number=int(v[0]), time=float(v[1]), src=v[2], sport=_int(v[3]), dst=v[4], dport=_int(v[5]),
                   stream=_int(v[6]), flags=_int(v[7]), seq=_int(v[8], 0), ack=_int(v[9], 0),
                   seq_raw=_int(v[10], 0), ack_raw=_int(v[11], 0), length=_int(v[12], 0), win=_int(v[13], 0),
                   wscale=_int(v[14]), tcp_checksum=_int(v[15]), ip_checksum=_int(v[16]),
                   experts=[e for e in v[17].split(";") if e] if v[17] else [], protocols=v[18])
        fr.from_target = fr.src == target_ip
        frames.append(fr)
    return frames


def _analyse(pcap: str, frames: List[Frame], stats: Dict[str, int]) -> Analysis:
    findings: List[Finding] = []
    notes: List[str] = []
    streams: Dict[int, Stream] = {}
    dropped = stats.get("dropped", 0) + max(0, stats.get("received", 0) - stats.get("captured", 0))

    class Side:
        def __init__(self):
            self.isn: Optional[int] = None
            self.wscale: Optional[int] = None
            self.syn_seen = False
            self.max_end: Optional[int] = None    # highest seq + len (+SYN/FIN) sent
            self.max_edge: Optional[int] = None   # highest right edge offered (ack + wnd << scale)
            self.last_ack: Optional[int] = None
            self.fin_seq: Optional[int] = None
            self.rst = False
            self.last_win_bytes: Optional[int] = None

    sides: Dict[Tuple[int, bool], Side] = {}
    probes: Dict[int, List[Frame]] = {}
    zero_since: Dict[int, float] = {}
    # tshark keeps one tcp.stream for a 4-tuple opened again when it saw no
    # clean end (a RST, a TIME_WAIT reused): a new SYN starts a new
    # connection (an incarnation) here; connections are numbered in order.
    current: Dict[int, int] = {}   # tcp.stream -> connection number
    counter = iter(range(1 << 30))

    def side(key: int, of_target: bool) -> Side:
        return sides.setdefault((key, of_target), Side())

    def scale(stream: int, of_target: bool) -> Optional[int]:
        """The shift applied to windows that side sends, None if unknown."""
        me, other = sides.get((stream, of_target)), sides.get((stream, not of_target))
        if me is None or other is None or not me.syn_seen or not other.syn_seen:
            return None
        if me.wscale is None or other.wscale is None:
            return 0  # RFC 7323 §2.2: both must send the option
        return min(me.wscale, 14)

    for fr in frames:
        key = current.get(fr.stream)
        if key is not None and fr.has(SYN) and not fr.has(ACK):
            mine = sides.get((key, fr.from_target))
            if mine is None or mine.isn is None or mine.isn != fr.seq_raw:
                key = None  # not a retransmitted SYN: a new connection
        if key is None:
            key = current[fr.stream] = next(counter)
            streams[key] = Stream(key)
        s = streams[key]
        fr.stream = key
        s.frames += 1
        if fr.from_target:
            s.target, s.peer = (fr.src, fr.sport), (fr.dst, fr.dport)
        else:
            s.target, s.peer = (fr.dst, fr.dport), (fr.src, fr.sport)
        me, other = side(key, fr.from_target), side(key, not fr.from_target)
        who = "chimney" if fr.from_target else "peer"

        # Malformed frames and checksums, either side.
        if "_ws.malformed" in fr.protocols or any("Malformed" in e for e in fr.experts):
            findings.append(Finding("malformed", fr, f"{who} sent a frame tshark cannot dissect"))
        # RFC 1624 §3: 0xffff and 0x0000 both stand for zero in the TCP
        # checksum; tshark calls the former bad, the receiver takes either.
        rfc1624 = any("0xffff instead of 0x0000" in e for e in fr.experts)
        if fr.ip_checksum == 0 or (fr.tcp_checksum == 0 and not rfc1624):
            findings.append(Finding("checksum", fr, f"bad {'IPv4' if fr.ip_checksum == 0 else 'TCP'} "
                                                    f"checksum from {who}"))

        if fr.has(SYN):
            me.syn_seen = True
            me.isn = fr.seq_raw
            me.wscale = fr.wscale
            if not fr.has(ACK):
                s.syn_from = "target" if fr.from_target else "peer"
            elif s.syn_from is None:
                s.syn_from = "peer" if fr.from_target else "target"
        end = (fr.seq_raw + fr.length + (1 if fr.has(SYN) else 0) + (1 if fr.has(FIN) else 0)) & 0xFFFFFFFF

        lost = any(e.startswith("Previous segment") for e in fr.experts)
        ack_unseen = any(e.startswith("ACKed segment that wasn't captured") for e in fr.experts)

        if not fr.from_target:
            if lost or ack_unseen:
                notes.append(f"{fr.line()}: {'; '.join(fr.experts)} (the Linux side: not chimney's)")
            if fr.has(RST):
                s.rsts_from_peer.append(fr)
                me.rst = True
            if fr.has(FIN):
                s.fins_from_peer.append(fr)
                if s.peer_fin_seq is None:
                    s.peer_fin_seq = (fr.seq_raw + fr.length) & 0xFFFFFFFF
                    # Crossing: the peer's FIN leaves while chimney's FIN is out and unACKed by it.
                    if s.target_fin_seq is not None and not s.target_fin_acked:
                        s.crossed = True
            if fr.has(ACK) and s.target_fin_seq is not None and _seq_gt(fr.ack_raw, s.target_fin_seq):
                s.target_fin_acked = True
            if fr.has(ACK) and not fr.has(RST) and not fr.has(SYN):
                sc = scale(fr.stream, False)
                if sc is not None:
                    edge = (fr.ack_raw + (fr.win << sc)) & 0xFFFFFFFF
                    if me.max_edge is None or _seq_gt(edge, me.max_edge):
                        me.max_edge = edge
                    me.last_win_bytes = fr.win << sc
                    if fr.win == 0:
                        zero_since.setdefault(fr.stream, fr.time)
                    else:
                        zero_since.pop(fr.stream, None)
                        probes.pop(fr.stream, None)
            if fr.length or fr.has(SYN) or fr.has(FIN):
                if me.max_end is None or _seq_gt(end, me.max_end):
                    me.max_end = end
            continue

        # ---- from chimney
        if fr.has(RST):
            s.rsts_from_target.append(fr)
            findings.append(Finding("rst", fr, "RST from chimney"))
            me.rst = True
            continue
        if me.rst:
            findings.append(Finding("after-rst", fr, "chimney sent this after its own RST on the connection"))
        if lost:
            findings.append(Finding("gap", fr, "chimney's sequence skips bytes it never put on the wire "
                                               "(tshark: previous segment not captured)"))
        if fr.has(ACK) and not fr.has(SYN):
            # What chimney ACKs must have been sent by the peer.
            if other.max_end is not None and _seq_gt(fr.ack_raw, other.max_end):
                findings.append(Finding("ack-unseen", fr, f"chimney ACKs {_seq_diff(fr.ack_raw, other.max_end)} "
                                                          "byte(s) beyond anything the peer sent"))
            elif ack_unseen and other.max_end is None:
                findings.append(Finding("ack-unseen", fr, "tshark: ACKed segment that wasn't captured"))
            if me.last_ack is not None and _seq_lt(fr.ack_raw, me.last_ack):
                findings.append(Finding("ack-backwards", fr,
                                        f"ACK went back by {-_seq_diff(fr.ack_raw, me.last_ack)} from {me.last_ack}"))
            if me.last_ack is None or _seq_gt(fr.ack_raw, me.last_ack):
                me.last_ack = fr.ack_raw
            if s.peer_fin_seq is not None and _seq_gt(fr.ack_raw, s.peer_fin_seq):
                s.peer_fin_acked = True
            sc = scale(fr.stream, True)
            if sc is not None:
                edge = (fr.ack_raw + (fr.win << sc)) & 0xFFFFFFFF
                if me.max_edge is not None and _seq_lt(edge, me.max_edge):
                    findings.append(Finding("window-shrink", fr,
                                            f"right edge {edge} is {-_seq_diff(edge, me.max_edge)} byte(s) left of "
                                            f"{me.max_edge} offered before (scale {sc})"))
                if me.max_edge is None or _seq_gt(edge, me.max_edge):
                    me.max_edge = edge
        # Data beyond the window the peer offered (a probe may carry one byte).
        if fr.length and other.max_edge is not None:
            over = _seq_diff((fr.seq_raw + fr.length) & 0xFFFFFFFF, other.max_edge)
            if over > 0 and not (fr.length == 1 and other.last_win_bytes == 0):
                findings.append(Finding("window-exceeded", fr, f"{over} byte(s) beyond the peer's right edge "
                                                               f"{other.max_edge}"))
        # Zero-window probes: an RTO after the window closed, then backing off.
        # A probe: SEG.SEQ = SND.NXT - 1 without data (as Linux and chimney
        # send them), or one byte at SND.NXT (RFC 9293 §3.8.6.1).
        is_probe = not fr.has(FIN) and me.max_end is not None and (
            (fr.length == 0 and fr.seq_raw == (me.max_end - 1) & 0xFFFFFFFF) or
            (fr.length == 1 and fr.seq_raw == me.max_end) or
            any("Zero Window Probe" in e for e in fr.experts))
        if is_probe and fr.stream in zero_since:
            seen = probes.setdefault(fr.stream, [])
            prev_t = seen[-1].time if seen else zero_since[fr.stream]
            gap = fr.time - prev_t
            if not seen and gap < 0.15:
                findings.append(Finding("zero-window-probe", fr, f"first probe {gap * 1000:.0f} ms after the "
                                                                 "window closed (RFC 1122 §4.2.2.17: an RTO)"))
            if len(seen) >= 2 and gap < 0.8 * (seen[-1].time - seen[-2].time):
                findings.append(Finding("zero-window-probe", fr,
                                        f"probe {gap * 1000:.0f} ms after the last, the one before came after "
                                        f"{(seen[-1].time - seen[-2].time) * 1000:.0f} ms (no back-off)"))
            seen.append(fr)
        if fr.has(FIN):
            s.fins_from_target.append(fr)
            fin_seq = (fr.seq_raw + fr.length) & 0xFFFFFFFF
            if me.fin_seq is not None and fin_seq != me.fin_seq:
                findings.append(Finding("fin-moved", fr, f"FIN at {fin_seq}, before at {me.fin_seq}"))
            if me.fin_seq is None:
                me.fin_seq = fin_seq
                s.target_fin_seq = fin_seq
                if s.peer_fin_seq is not None and not s.peer_fin_acked:
                    s.crossed = True
                findings.append(Finding("fin", fr, "FIN from chimney"))
        elif me.fin_seq is not None and fr.length and _seq_gt((fr.seq_raw + fr.length) & 0xFFFFFFFF, me.fin_seq):
            findings.append(Finding("data-after-fin", fr, f"data beyond chimney's FIN at {me.fin_seq}"))
        if fr.length or fr.has(SYN) or fr.has(FIN):
            if me.max_end is None or _seq_gt(end, me.max_end):
                me.max_end = end

    # Payload spans.
    for (idx, of_target), sd in sides.items():
        if sd.isn is None or sd.max_end is None:
            continue
        span = _seq_diff(sd.max_end, sd.isn) - 1
        fin = sd.fin_seq is not None if of_target else streams[idx].peer_fin_seq is not None
        span -= 1 if fin else 0
        if of_target:
            streams[idx].bytes_from_target = max(span, 0)
        else:
            streams[idx].bytes_from_peer = max(span, 0)

    # Gaps and unseen ACKs need a complete capture to mean anything.
    if dropped and any(f.kind in ("gap", "ack-unseen") for f in findings):
        findings.append(Finding("capture", None, f"tcpdump lost {dropped} frame(s): the gaps and unseen ACKs "
                                                 "above may be the capture's"))
    # One "fin" finding per FIN-sending connection is enough.
    return Analysis(pcap, frames, streams, findings, notes, dict(stats))
