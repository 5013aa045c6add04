"""Adversarial input against offloaded connections (issue 5).

Every test runs its own chimneyd in its own namespace. A legitimate
connection (chimneyd CONNECTs to a Linux peer, attack.Duplex) carries the
test stream both ways, paced, for the whole test, while an attacker on the
Linux side of the TAP (attack.Wire: a packet socket in the namespace, frames
built with scapy, sent at L2 with the peer's MACs) watches the wire and sends
crafted segments at a second offloaded connection (the victim, also to a
Linux peer), at the legitimate connection itself, or at a listener. The
attacker learns sequence numbers, windows and timestamps the way an on-path
attacker would: from the segments it sniffs.

For each attack the test checks the reaction the RFCs ask for where the wire
or the host can see it (a challenge ACK with SEQ = SND.NXT and ACK = RCV.NXT,
silence, an ABORT event, a drop counter in /chimney/drops), the engine
counter that names the reason (/chimney/engine: rst_in_challenged,
drop_paws, drop_ack_unsent, ...), and that injected bytes never reach the
host. Every test ends with scene.finish(): the legitimate transfer (and
the victim's, where it survives) completes with the right byte counts and
sha256 on both sides, every host request completed exactly once, no ABORT or
RETRIEVE reached the host for a connection that was not meant to end, and
chimneyd is alive.

Run as root: /usr/bin/python3 -m pytest -v tests/integration/test_adversarial.py
"""

import contextlib
import json
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from attack import ACK, FIN, MOD, PSH, RST, SYN, Duplex, FakePeer, Flow, Host, Wire, seq_add
from conftest import PYTHON, start_target

import peer as stream_peer
from scapy.all import ICMP, IP, TCP, Ether, IPerror, IPOption, TCPerror, fragment

EVIL = b"EVIL" * 25          # what the attacker tries to slip into a stream
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------
# the scene: chimneyd, the attacker's wire, the host, a legitimate transfer


class Scene:
    def __init__(self, target):
        self.target = target
        target.ping(1)  # the target has learned the Linux side
        self.wire = Wire(target)
        self.host = Host(target)
        self.legit = Duplex(target, self.host, 7001)
        self.duplexes = [self.legit]
        self.ended = set()  # connections an attack was meant to end

    def victim(self, port=7002, exchange=1000, **cached):
        """A second offloaded connection to a Linux peer, idle after a small
        exchange both ways; returns (duplex, flow, state as the wire shows it)."""
        v = Duplex(self.target, self.host, port, **cached)
        self.duplexes.append(v)
        flow = v.flow(self.wire)
        if exchange:
            v.peer_send(exchange)
            v.send(exchange)
            v.wait_sends()
            v.wait_received(exchange)
        flow.quiet()
        st = flow.state()
        assert st.snd_una == st.snd_max, st
        return v, flow, st

    def drops(self):
        return self.target.drops()

    def finish(self):
        """The end every test shares (see the module doc)."""
        for d in self.duplexes:
            if d.conn.handle not in self.ended:
                try:
                    d.finish()
                except (AssertionError, TimeoutError) as e:
                    tail = "\n  ".join(map(repr, d.flow(self.wire).segments()[-12:]))
                    raise AssertionError(f"{d.port}: {e}\nlast segments on the wire:\n  {tail}") from e
        self.host.check_exactly_once()
        bad = [e for e in self.host.drain_events()
               if e.kind in ("ABORT", "RETRIEVE") and e.handle not in self.ended]
        assert not bad, f"unexpected events: {bad}"
        assert self.target.alive(), "chimneyd died"
        self.target.ping(1)

    def close(self):
        for d in self.duplexes:
            d.stop()
        self.wire.close()
        for d in self.duplexes:
            d.kill_peer()


@contextlib.contextmanager
def staged(target, peer_pacing=True):
    s = Scene(target)
    try:
        s.legit.pace(peer=peer_pacing)
        yield s
    finally:
        s.close()


@pytest.fixture
def scene(fresh_target):
    """The legitimate transfer runs both ways, paced, for the whole test."""
    with staged(fresh_target) as s:
        yield s


def expect_ack(wire, flow, mark, st, timeout=1.0):
    """Exactly one pure ACK from chimneyd answers: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>."""
    r = wire.wait_for(flow.out, timeout, mark)
    assert r is not None, "no ACK in reply"
    assert r.flags == ACK and r.plen == 0, r
    assert r.seq == st.snd_max and r.ack == st.rcv_nxt, (r, st)
    time.sleep(0.3)
    replies = wire.since(mark, flow.out)
    assert len(replies) == 1, replies
    return r


def expect_silence(wire, flow, mark, wait=0.5):
    time.sleep(wait)
    replies = wire.since(mark, flow.out)
    assert not replies, f"chimneyd answered: {replies}"


def engine(target):
    """The TCP engine's counters of port 0 (lib/tcp/stats.hpp), /chimney/engine."""
    return target.telemetry("/chimney/engine,0")


def expect_counted(target, before, counter, others=(), timeout=2.0):
    """`counter` of the engine moved (the workers publish every 10 ms) and
    none of `others` did: the reaction had the reason the RFC gives."""
    deadline = time.monotonic() + timeout
    while True:
        after = engine(target)
        if after[counter] > before[counter] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert after[counter] > before[counter], f"{counter} did not move"
    moved = {o: after[o] - before[o] for o in others if after[o] != before[o]}
    assert not moved, f"counted otherwise too: {moved}"


def wait_drops(target, before, reason, n, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        after = target.drops()
        if after[reason] >= before[reason] + n or time.monotonic() > deadline:
            return after
        time.sleep(0.02)


# --------------------------------------------------------------------------
# RST (RFC 5961 §3, RFC 9293 §3.10.7.4, CONTRACT C-17)

RST_CASES = {
    # name: (offset from RCV.NXT, flags, "challenge" | "drop" | "abort"); -1
    # is "the right edge" (RCV.NXT + RCV.WND - 1)
    "in_window_next_byte": (1, "R", "challenge"),
    "in_window_right_edge_with_ack": (-1, "RA", "challenge"),
    "below_window": (-1000, "R", "drop"),
    "beyond_window_with_ack": ("wnd+1000", "RA", "drop"),
    "half_the_space_away": (1 << 31, "R", "drop"),
    "exact": (0, "R", "abort"),
    "exact_with_ack": (0, "RA", "abort"),
}


@pytest.mark.parametrize("case", list(RST_CASES))
def test_blind_rst(scene, case):
    """RFC 5961 §3.2 (and RFC 9293 §3.10.7.4 first and second checks, C-17):
    a RST whose sequence number is exactly RCV.NXT resets the connection (the
    host gets ABORT, outstanding receives complete REQUEST_ABORTED, nothing
    is sent in reply); one in the window but not exact gets a challenge ACK
    and changes nothing; one outside the window is dropped silently."""
    v, flow, st = scene.victim()
    offset, flags, reaction = RST_CASES[case]
    if offset == -1:
        offset = st.rcv_wnd - 1
    elif offset == "wnd+1000":
        offset = st.rcv_wnd + 1000
    bits = RST | (ACK if flags == "RA" else 0)
    before = engine(scene.target)
    mark = scene.wire.mark()
    scene.wire.send(flow.segment(seq=seq_add(st.rcv_nxt, offset), ack=st.snd_max, flags=bits, win=0,
                                 ts=st.ts()))
    rst_counters = {"challenge": "rst_in_challenged", "drop": "rst_in_ignored", "abort": "rst_in_accepted"}
    expect_counted(scene.target, before, rst_counters[reaction],
                   [c for r, c in rst_counters.items() if r != reaction])
    if reaction == "challenge":
        expect_ack(scene.wire, flow, mark, st)
    elif reaction == "drop":
        expect_silence(scene.wire, flow, mark)
    if reaction != "abort":
        assert not scene.host.events_of(v.conn), "the RST ended the connection"
        # The connection carries on, both ways (finish checks the bytes).
        v.peer_send(5000)
        v.send(5000)
        v.wait_received(6000)
    else:
        ev = scene.host.wait_event(v.conn, "ABORT", 3)
        assert ev is not None, "no ABORT for a RST at RCV.NXT"
        scene.ended.add(v.conn.handle)
        v._receiver.join(5)
        assert v.recv_end == "aborted", v.recv_end      # C-17: REQUEST_ABORTED
        expect_silence(scene.wire, flow, mark, 0.3)      # a RST is never answered
        state = v.conn.terminate()                       # C-20: until the host terminates
        assert state["rcv_nxt"] == st.rcv_nxt
        # The data path has forgotten it: the peer's next segment is answered
        # with a RST by the slow path (RFC 9293 §3.10.7.1).
        mark = scene.wire.mark()
        v.peer_send(100)
        r = scene.wire.wait_for(flow.out, 3, mark)
        assert r is not None and r.flags & RST, r
    scene.finish()


# --------------------------------------------------------------------------
# SYN on an established connection (RFC 5961 §4)


@pytest.mark.parametrize("where", ["at_rcv_nxt", "in_window", "below_window", "beyond_window"])
def test_syn_on_established_connection(scene, where):
    """RFC 5961 §4.2: a SYN on a synchronized connection, whatever its
    sequence number, is answered with a challenge ACK
    (<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>) and resets nothing (RFC 9293
    §3.10.7.4 fourth check)."""
    v, flow, st = scene.victim()
    seq = {"at_rcv_nxt": st.rcv_nxt, "in_window": st.rcv_nxt + st.rcv_wnd // 2,
           "below_window": st.rcv_nxt - 5000, "beyond_window": st.rcv_nxt + st.rcv_wnd + 5000}[where]
    before = engine(scene.target)
    mark = scene.wire.mark()
    scene.wire.send(flow.segment(seq=seq, flags=SYN, win=65535, ts=st.ts(),
                                 options=[("MSS", 1460), ("WScale", 7), ("SAckOK", b"")]))
    expect_ack(scene.wire, flow, mark, st)
    # In the window: the challenge ACK of §4.2; outside it the first check of
    # RFC 9293 §3.10.7.4 answers with the same ACK before the SYN is looked at.
    in_window = where in ("at_rcv_nxt", "in_window")
    expect_counted(scene.target, before, "syn_in_challenged" if in_window else "drop_out_of_window",
                   ["rst_in_accepted"])
    assert not scene.host.events_of(v.conn)
    v.peer_send(3000)
    v.send(3000)
    scene.finish()


# --------------------------------------------------------------------------
# data with an unacceptable ACK, out of window, or without ACK (RFC 5961 §5)

DATA_CASES = {
    # name: (ack(st), seq(st), flags, reply expected, engine counter)
    "ack_of_data_never_sent": (lambda st: st.snd_max + 1000, lambda st: st.rcv_nxt, PSH | ACK, True,
                               "drop_ack_unsent"),
    "ack_far_beyond_snd_nxt": (lambda st: st.snd_max + (1 << 30), lambda st: st.rcv_nxt, PSH | ACK, True,
                               "drop_ack_unsent"),
    "ack_older_than_max_window": (lambda st: st.snd_una - (1 << 30), lambda st: st.rcv_nxt, PSH | ACK, True,
                                  "drop_old_ack"),
    "beyond_receive_window": (lambda st: st.snd_max, lambda st: st.rcv_nxt + st.rcv_wnd + 100, PSH | ACK, True,
                              "drop_out_of_window"),
    "old_duplicate": (lambda st: st.snd_max, lambda st: st.rcv_nxt - 500, PSH | ACK, True, "drop_out_of_window"),
    "no_ack_bit": (lambda st: 0, lambda st: st.rcv_nxt, PSH, False, "drop_no_ack_flag"),
    "fin_acking_data_never_sent": (lambda st: st.snd_max + 1000, lambda st: st.rcv_nxt, FIN | ACK, True,
                                   "drop_ack_unsent"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_blind_data_injection(scene, case):
    """RFC 5961 §5.2: data whose ACK is outside (SND.UNA - MAX.SND.WND) ..
    SND.NXT is discarded and an ACK sent (RFC 9293 §3.10.7.4: SEG.ACK >
    SND.NXT "acks something not yet sent"); data outside the receive window
    gets an ACK and is dropped (first check); a segment without ACK is
    dropped silently (fifth check). In every case RCV.NXT stays where it was
    and the host never sees the bytes: the peer's real bytes at the same
    sequence numbers arrive afterwards and the stream hashes right (and an
    injected FIN with such an ACK ends nothing: no DISCONNECT, C-16)."""
    v, flow, st = scene.victim()
    ack, seq, flags, reply, counter = DATA_CASES[case]
    before = engine(scene.target)
    mark = scene.wire.mark()
    scene.wire.send(flow.segment(seq=seq(st), ack=ack(st), flags=flags, win=st.peer_win, ts=st.ts(),
                                 payload=b"" if flags & FIN else EVIL))
    if reply:
        expect_ack(scene.wire, flow, mark, st)
    else:
        expect_silence(scene.wire, flow, mark)
    expect_counted(scene.target, before, counter)
    assert len(v.received) == 1000, "injected bytes reached the host"
    assert not scene.host.events_of(v.conn, ("DISCONNECT", "ABORT")), "an injected FIN or RST was taken"
    v.peer_send(4000)  # the real bytes at the sequence numbers the attacker used
    v.wait_received(5000)
    scene.finish()


# --------------------------------------------------------------------------
# old timestamps (RFC 7323 §5 PAWS)


@pytest.mark.parametrize("age", [1, (1 << 31) - 1])
def test_paws_old_timestamp(scene, age):
    """RFC 7323 §5.3 R1: a segment whose TSval is older than TS.Recent is
    dropped and answered with an ACK, even when its sequence number (RCV.NXT)
    and ACK are exactly right; its bytes never reach the host."""
    v, flow, st = scene.victim()
    assert st.peer_tsval is not None, "the connection negotiated timestamps"
    before = engine(scene.target)
    mark = scene.wire.mark()
    scene.wire.send(flow.segment(seq=st.rcv_nxt, ack=st.snd_max, flags=PSH | ACK, win=st.peer_win,
                                 ts=st.ts(age), payload=EVIL))
    expect_ack(scene.wire, flow, mark, st)
    expect_counted(scene.target, before, "drop_paws")
    assert len(v.received) == 1000, "a PAWS-failed segment reached the host"
    v.peer_send(4000)
    v.wait_received(5000)
    scene.finish()


# --------------------------------------------------------------------------
# the reassembly budget (lib/tcp/receive.cpp ooo_insert)

OOO_BUDGET = 256  # chimneyd --ooo-segments-per-connection for this test (default 4096)


def test_out_of_order_flood_exhausts_only_the_connections_budget(chimneyd, tmp_path):
    """RFC 9293 §3.10.7.4 (seventh) lets a receiver keep segments beyond a
    hole; RFC 5961 §5 expects a bound on what an attacker can make it hold.
    The attacker sends 1-byte segments with gaps between them beyond the
    hole at RCV.NXT, so no two merge and each needs a reassembly node: twice
    the per-connection budget. The bytes are the peer's real ones, at their real
    offsets, so the stream can still hash right. What is over the budget is
    dropped and counted (drop_ooo_budget), never an error or a crash. The
    other connections keep their transfers, and once the peer fills the hole
    the victim's stream arrives complete. The retransmissions fill what was
    dropped. (chimneyd runs with a budget of 256, above what an 8-bit count
    holds, so that 512 frames cross it.)"""
    with start_target(chimneyd, tmp_path, extra_args=["--ooo-segments-per-connection", str(OOO_BUDGET)]) as t, \
            staged(t) as scene:
        _out_of_order_flood(scene)


def _out_of_order_flood(scene):
    v, flow, st = scene.victim()
    before = engine(scene.target)
    base = 1000                       # the peer's stream offset at RCV.NXT
    real = stream_peer.stream(base + 2 * 2 * OOO_BUDGET + 2)
    frames = [flow.segment(seq=st.rcv_nxt + off, ack=st.snd_max, flags=ACK, win=st.peer_win, ts=st.ts(),
                           payload=real[base + off:base + off + 1])
              for off in range(2, 2 * 2 * OOO_BUDGET + 2, 2)]
    scene.wire.send(*frames)
    deadline = time.monotonic() + 5
    while engine(scene.target)["drop_ooo_budget"] - before["drop_ooo_budget"] < OOO_BUDGET \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    after = engine(scene.target)
    dropped = after["drop_ooo_budget"] - before["drop_ooo_budget"]
    arrived = after["ooo_segments_in"] - before["ooo_segments_in"]  # held or dropped
    assert dropped >= OOO_BUDGET, (dropped, arrived)  # the second half found the budget spent
    assert arrived >= len(frames), (arrived, len(frames))
    assert len(v.received) == 1000, "bytes beyond the hole reached the host"
    v.peer_send(4000)                 # fills the hole; the real bytes overlap what is held
    v.wait_received(5000)
    scene.finish()


# --------------------------------------------------------------------------
# malformed segments aimed at the live connection: dropped and counted


def _good(flow, st, payload=EVIL):
    """A segment the victim would accept: at RCV.NXT, a valid ACK and TSval."""
    return dict(seq=st.rcv_nxt, ack=st.snd_max, flags=PSH | ACK, win=st.peer_win, payload=payload)


def _ts(st):
    import struct
    tsval, tsecr = st.ts()
    return b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, tsecr)


def _fragments(flow, st):
    pkt = flow.segment(seq=st.rcv_nxt, ack=st.snd_max, flags=PSH | ACK, win=st.peer_win, ts=st.ts(),
                       payload=EVIL * 4)
    pkt[IP].flags = 0
    frags = fragment(pkt[IP], fragsize=200)
    assert len(frags) >= 2
    return [Ether(src=flow.remote_mac, dst=flow.wire.target.mac) / f for f in frags]


def _bad_ip_checksum(flow, st):
    pkt = flow.segment(ts=st.ts(), **_good(flow, st))
    good = Ether(bytes(pkt))[IP].chksum
    pkt[IP].chksum = good ^ 0x5A5A
    return [pkt]


MALFORMED = {
    # name: (drop reason, frames(flow, st))
    "tcp_header_cut_short": ("tcp_truncated",
                             lambda f, st: [f.raw_segment(**_good(f, st), options=_ts(st), tcp_len=12)]),
    "data_offset_beyond_segment": ("tcp_bad_data_offset",
                                   lambda f, st: [f.raw_segment(**_good(f, st, b"EVIL"), options=_ts(st),
                                                                dataofs=15)]),
    "data_offset_below_five": ("tcp_bad_data_offset",
                               lambda f, st: [f.raw_segment(**_good(f, st), options=_ts(st), dataofs=4)]),
    "option_length_zero": ("tcp_bad_option",
                           lambda f, st: [f.raw_segment(**_good(f, st), options=b"\x08\x00\x01\x01" + _ts(st))]),
    "option_length_one": ("tcp_bad_option",
                          lambda f, st: [f.raw_segment(**_good(f, st), options=b"\x08\x01\x01\x01" + _ts(st))]),
    "option_past_header": ("tcp_bad_option",
                           lambda f, st: [f.raw_segment(**_good(f, st), options=b"\x01\x01\x01\x01\x01\x01\x08\x0a"
                                                        + _ts(st)[4:8])]),
    "timestamp_option_short": ("tcp_bad_option",
                               lambda f, st: [f.raw_segment(**_good(f, st), options=b"\x01\x01\x08\x06"
                                                            + _ts(st)[4:8] + b"\x01\x01\x01\x00")]),
    "sack_option_odd_length": ("tcp_bad_option",
                               lambda f, st: [f.raw_segment(**_good(f, st), options=_ts(st)
                                                            + b"\x01\x05\x09" + b"\0" * 9)]),
    "mss_option_in_data_wrong_length": ("tcp_bad_option",
                                        lambda f, st: [f.raw_segment(**_good(f, st), options=_ts(st)
                                                                     + b"\x02\x03\x00\x00")]),
    "tcp_bad_checksum": ("tcp_bad_checksum",
                         lambda f, st: [f.raw_segment(**_good(f, st), options=_ts(st), checksum_xor=0x0101)]),
    "ip_bad_checksum": ("ip_bad_checksum", _bad_ip_checksum),
    "ip_options": ("ip_options",
                   lambda f, st: [f.segment(ts=st.ts(), **_good(f, st),
                                            ip_kw={"options": [IPOption(b"\x94\x04\x00\x00")]})]),
    "ip_fragments": ("ip_fragment", _fragments),
    "ip_total_length_beyond_frame": ("ip_bad_total_length",
                                     lambda f, st: [f.segment(ts=st.ts(), **_good(f, st),
                                                              ip_kw={"len": 1400})]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_segment_on_live_connection(scene, case):
    """RFC 9293 §3.1 (header and option format; MUST-7: an option with an
    illegal length must not crash the stack; MUST-3: the checksum),
    RFC 791 §3.1 / RFC 1122 §3.2.1 (IP header, checksum, options) and §3.2
    (fragments: chimney does not reassemble; docs/ARCHITECTURE.md): each
    frame is aimed at the victim's 4-tuple with RCV.NXT, a valid ACK and
    TSval, so it would be delivered if it got through. It is dropped and
    counted under its reason in /chimney/drops, nothing answers it, and the
    host never sees its bytes."""
    v, flow, st = scene.victim()
    reason, build = MALFORMED[case]
    expect_dropped(scene, flow, build(flow, st), reason)
    assert len(v.received) == 1000, "a malformed segment reached the host"
    v.peer_send(4000)
    v.wait_received(5000)
    scene.finish()


def expect_dropped(scene, flow, frames, reason):
    """The frames are dropped and counted under `reason` (and nothing else),
    and chimneyd sends nothing on the connection in answer."""
    before = scene.drops()
    mark = scene.wire.mark()
    scene.wire.send(*frames)
    after = wait_drops(scene.target, before, reason, len(frames))
    assert after[reason] - before[reason] == len(frames), (reason, before[reason], after[reason])
    moved = {r: after[r] - before[r] for r in after if r != reason and after[r] != before[r]}
    assert not moved, f"other drop reasons moved: {moved}"
    expect_silence(scene.wire, flow, mark, 0.3)


ICMP_ERRORS = {
    # name: (type, code, extra ICMP fields); all quote the victim's segment
    "port_unreachable": (3, 3, {}),               # RFC 5927 §5.2: a "hard error", the blind reset
    "protocol_unreachable": (3, 2, {}),
    "fragmentation_needed_mtu_68": (3, 4, {"nexthopmtu": 68}),   # RFC 5927 §7: the PMTUD attack
    "source_quench": (4, 0, {}),                  # RFC 6633: deprecated, never acted on
}


@pytest.mark.parametrize("case", list(ICMP_ERRORS))
def test_icmp_errors_about_the_connection(scene, case):
    """RFC 5927 (ICMP attacks against TCP): ICMP errors that quote the
    victim's 4-tuple and a sequence number in flight could reset the
    connection (§5.2) or shrink its segments to 68-byte MTUs (§7). chimney
    answers only echo requests (docs/ARCHITECTURE.md): every other ICMP
    message is dropped and counted (icmp_unsupported), and the connection
    keeps its segment size and carries on."""
    v, flow, st = scene.victim()
    itype, code, extra = ICMP_ERRORS[case]
    quoted = IPerror(src=flow.local_ip, dst=flow.remote_ip, flags="DF") / \
        TCPerror(sport=flow.local_port, dport=flow.remote_port, seq=st.snd_una, ack=st.rcv_nxt, flags="A")
    frame = Ether(src=flow.remote_mac, dst=scene.target.mac) / \
        IP(src=flow.remote_ip, dst=flow.local_ip) / ICMP(type=itype, code=code, **extra) / quoted
    expect_dropped(scene, flow, [frame], "icmp_unsupported")
    mark = scene.wire.mark()
    v.send(20000)
    v.peer_send(1000)
    v.wait_sends()
    # The sniffer may still be reading what the ACKs already answered.
    assert scene.wire.wait_for(lambda s: flow.out(s) and s.plen, 5, mark), "no data segment seen"
    sizes = [s.plen for s in flow.segments(mark) if s.from_target and s.plen]
    assert max(sizes) == 1448, f"segments shrank: {sizes}"
    assert not scene.host.events_of(v.conn)
    scene.finish()


@pytest.mark.parametrize("builder", ["raw_segment", "segment"])
def test_well_formed_injection_is_accepted(scene, builder):
    """The premise of the tests above (RFC 5961 §1: an attacker who knows
    the 4-tuple, RCV.NXT, an acceptable ACK and TS.Recent can inject data):
    the same frame as the malformed ones, built by the same builder but well
    formed, is accepted and its bytes reach the host. So each drop above is
    the malformation's doing, not a mistake in the attacker's numbers."""
    v, flow, st = scene.victim()
    if builder == "raw_segment":
        frame = flow.raw_segment(**_good(flow, st), options=_ts(st))
    else:
        frame = flow.segment(ts=st.ts(), **_good(flow, st))
    scene.wire.send(frame)
    v.wait_received(1000 + len(EVIL), timeout=5)
    assert bytes(v.received[1000:]) == EVIL
    # The stream is now the attacker's: end it with a RST (C-13).
    d = scene.host.track(v.conn.disconnect(graceful=False)).wait(10)
    assert d.status == "NDIS_STATUS_SUCCESS"
    scene.ended.add(v.conn.handle)
    v._receiver.join(5)
    v.conn.terminate()
    scene.finish()


# --------------------------------------------------------------------------
# zero windows (RFC 9293 §3.8.6, RFC 1122 §4.2.2.17)


def probes_of(flow, mark, snd_una):
    """chimneyd's zero-window probes: no data at SND.UNA - 1 (chimney's and
    Linux's kind) or one byte at SND.UNA (RFC 9293 §3.8.6.1)."""
    return [s for s in flow.segments(mark) if s.from_target and not s.flags & (RST | SYN)
            and ((s.plen == 0 and s.seq == (snd_una - 1) % MOD) or (s.plen == 1 and s.seq == snd_una))]


@pytest.mark.parametrize("max_persist_probes", [0, 2])
def test_zero_window_forever(scene, max_persist_probes):
    """RFC 9293 §3.8.6.1 (MUST-36, MUST-37; RFC 1122 §4.2.2.17): a peer
    that keeps its window closed (a Linux socket nobody reads) is probed,
    first after about an RTO, then at exponentially growing intervals; as
    long as it answers the probes the connection stays open (no RETRIEVE, a
    cached max_persist_probes counts unanswered probes only, C-18), and
    when it reads again every byte the host sent arrives, in order."""
    v, flow, st = scene.victim(port=7003, stall_reading=True, max_persist_probes=max_persist_probes)
    before = engine(scene.target)
    v.send(8 << 20)
    closed = scene.wire.wait_for(lambda s: flow.inbound(s) and s.win == 0, 20)
    assert closed is not None, "the peer's window never closed"
    # Everything chimneyd sent is ACKed, the window is zero: persist.
    deadline = time.monotonic() + 10
    while True:
        last_in, snd_max = flow.latest(False), flow.state().snd_max
        if last_in.win == 0 and last_in.ack == snd_max:
            break
        assert time.monotonic() < deadline, (last_in, snd_max)
        time.sleep(0.05)
    una = last_in.ack
    mark = closed.n
    time.sleep(max(0.0, closed.t + 6 - time.monotonic()))
    probes = probes_of(flow, mark, una)
    assert len(probes) >= 4, f"{len(probes)} probes in 6 s: {probes}"
    gaps = [b.t - a.t for a, b in zip(probes, probes[1:])]
    for g0, g1 in zip(gaps, gaps[1:]):
        assert g1 >= 1.5 * g0, f"no exponential backoff: intervals {gaps}"
    answers = [s for s in flow.segments(mark) if not s.from_target and s.win == 0 and s.ack == una]
    assert len(answers) >= len(probes) - 1, "the peer answers every probe"
    assert engine(scene.target)["window_probes"] - before["window_probes"] >= len(probes)
    assert not scene.host.events_of(v.conn), "the connection was given up while the peer answers"
    assert not any(r.done() and r.completion.status != "NDIS_STATUS_SUCCESS" for r in scene.host.requests)
    v.command("read")
    v.wait_sends(60)
    scene.finish()


def test_window_shrunk_to_zero_with_data_in_flight(scene):
    """RFC 9293 §3.8.6 (MUST-34: a sender is robust against a shrinking
    window; SHLD-17: it SHOULD NOT time the connection out for data beyond
    the right edge; MUST-35: a window shrunk to zero is probed in the
    standard way):
    a peer (played by the attacker) ACKs the first 1000 bytes with a zero
    window while the rest is in flight, then answers everything with the same
    ACK. chimneyd keeps probing and does not give up (no RETRIEVE, even with
    max_retransmissions 3); when the window opens it sends the rest and the
    send completes with every byte in order."""
    fake = FakePeer(scene.wire, "198.18.0.50", 9000)
    got = {}
    th = threading.Thread(target=lambda: got.setdefault(
        "conn", scene.host.t.connect("198.18.0.50", 9000, max_retransmissions=3)))
    th.start()
    flow = fake.accept()
    th.join(10)
    conn = got["conn"]
    data = stream_peer.stream(30000)
    fake.respond(lambda fp, s: (1000, 0) if s.plen or s.seq != seq_add(fp.syn.seq, 1) else None)
    send = scene.host.track(conn.send(data))
    first = scene.wire.wait_for(lambda s: flow.out(s) and s.plen, 3)
    assert first is not None
    before = engine(scene.target)
    shrunk = time.monotonic()
    time.sleep(5)  # max_retransmissions 3: four RTOs from 200 ms are 3 s
    after = [s for s in flow.segments(first.n + 1) if s.from_target and s.t > shrunk + 0.1]
    assert len(after) >= 3, f"the shrunk window was not probed: {after}"
    assert engine(scene.target)["window_probes"] - before["window_probes"] >= 3
    assert not scene.host.events_of(conn), "the connection was given up while the peer answers"
    assert not send.done()
    fake.respond(lambda fp, s: (len(fp.received()), 65535))
    fake.ack(1000, 65535)
    c = send.wait(15)
    assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == len(data), c
    assert fake.received() == data
    fake.stop()
    state = conn.terminate()
    assert state["snd_una"] == state["snd_max"]
    scene.finish()


# --------------------------------------------------------------------------
# ACKs of data never sent, with data outstanding (RFC 5961 §5, RFC 9293 §3.10.7.4)


@pytest.mark.parametrize("forged", ["never_sent", "far_future", "older_than_max_window"])
def test_forged_ack_completes_nothing(scene, forged):
    """RFC 5961 §5.2 / RFC 9293 §3.10.7.4 fifth check: an ACK outside
    (SND.UNA - MAX.SND.WND) .. SND.NXT is answered with an ACK and dropped:
    SND.UNA does not move, so a send whose bytes the peer never ACKed does
    not complete (C-6); the peer's real ACK completes it later."""
    fake = FakePeer(scene.wire, "198.18.0.51", 9001, mac="02:00:c6:12:00:33")
    got = {}
    th = threading.Thread(target=lambda: got.setdefault("conn", scene.host.t.connect("198.18.0.51", 9001)))
    th.start()
    flow = fake.accept()
    th.join(10)
    conn = got["conn"]
    data = stream_peer.stream(2 * 1448)  # whole segments: Nagle holds no tail back
    send = scene.host.track(conn.send(data))
    deadline = time.monotonic() + 5
    while len(fake.received()) < len(data):
        assert time.monotonic() < deadline, f"chimneyd did not send: {flow.segments()}"
        time.sleep(0.02)
    flow.quiet(0.1)
    st_rcv_nxt = seq_add(fake.iss, 1)
    snd_max = seq_add(fake.syn.seq, 1 + len(data))
    ack = {"never_sent": snd_max + 1000, "far_future": snd_max + (1 << 30),
           "older_than_max_window": fake.syn.seq + 1 - (1 << 30)}[forged]
    target_ts = [s.ts[0] for s in flow.segments() if s.from_target and s.ts][-1]
    before = engine(scene.target)
    mark = scene.wire.mark()
    scene.wire.send(flow.segment(seq=st_rcv_nxt, ack=ack, flags=ACK, win=65535, ts=(fake.tsval(), target_ts)))
    r = scene.wire.wait_for(lambda s: flow.out(s) and s.plen == 0, 1, mark)
    assert r is not None and r.flags == ACK and r.seq == snd_max and r.ack == st_rcv_nxt, r
    expect_counted(scene.target, before, "drop_old_ack" if forged == "older_than_max_window" else "drop_ack_unsent")
    time.sleep(0.3)
    assert not send.done(), f"a forged ACK completed the send: {send.completion}"
    fake.ack(len(data), 65535)
    c = send.wait(5)
    assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == len(data), c
    conn.terminate()
    scene.finish()


# --------------------------------------------------------------------------
# hostile SYN options at a listener


def max_flight(flow):
    """The most bytes chimneyd had in flight beyond the peer's latest ACK."""
    acked, worst = None, 0
    for s in flow.segments():
        if not s.from_target:
            acked = s.ack if s.flags & ACK else acked
        elif s.plen and acked is not None:
            worst = max(worst, (s.end - acked) % MOD)
    return worst


LISTENER_CASES = {
    # name: (SYN options, window field the client offers, check)
    "window_scale_255": ([("MSS", 1460), ("WScale", 255), ("Timestamp", (1000, 0))], 1, "scale14"),
    "mss_0": ([("MSS", 0), ("WScale", 7), ("Timestamp", (1000, 0))], 512, "mss536"),
    "mss_1": ([("MSS", 1), ("WScale", 7), ("Timestamp", (1000, 0))], 512, "mss64"),
}


@pytest.mark.parametrize("case", list(LISTENER_CASES))
def test_listener_hostile_syn_options(scene, case):
    """Hostile options in a SYN to a chimneyd listener. RFC 7323 §2.3: a
    window scale above 14 is used as 14 (a window field of 1 then offers
    16384 bytes, never more in flight). RFC 9293 §3.7.1: an MSS option of 0
    says nothing usable and is taken as absent (the default 536 applies, as
    Linux does); an MSS below chimney's floor of 64 is raised to it (Linux:
    48). Either way the handshake is accepted and the host's data arrives
    whole, in segments that fit."""
    options, win, check = LISTENER_CASES[case]
    scene.host.t.listen(7100, backlog=4)
    fake = FakePeer(scene.wire, "198.18.0.60", 40000, mac="02:00:c6:12:00:3c")
    synack = fake.connect(7100, options=options, win=win)
    assert synack is not None and synack.flags & (SYN | ACK) == SYN | ACK, synack
    conn = scene.host.t.accept(5)
    assert conn.remote_ip == "198.18.0.60"
    fake.respond(lambda fp, s: (len(fp.received()), win) if s.plen else None)
    n = 200_000 if check == "scale14" else 20_000
    data = stream_peer.stream(n)
    c = scene.host.track(conn.send(data)).wait(30)
    assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == n, c
    assert fake.received() == data
    sizes = [s.plen for s in fake.flow.segments() if s.from_target and s.plen]
    if check == "scale14":
        assert max_flight(fake.flow) <= win << 14, max_flight(fake.flow)
    elif check == "mss536":
        assert max(sizes) == 536 - 12, sizes[:5]   # the default MSS less the timestamp option
    else:
        assert max(sizes) == 64 - 12, sizes[:5]
    fake.stop()
    conn.terminate()
    scene.finish()


def test_listener_syn_with_malformed_option(scene):
    """RFC 9293 §3.1 (MUST-7): a SYN whose option list is
    malformed (an option of length 0) is dropped and counted (tcp_bad_option),
    gets no SYN-ACK and leaves no half-open connection behind."""
    scene.host.t.listen(7100, backlog=4)
    fake = FakePeer(scene.wire, "198.18.0.61", 40001, mac="02:00:c6:12:00:3d")
    fake.flow = Flow(scene.wire, 7100, fake.ip, fake.port, fake.mac)
    before = scene.drops()
    mark = scene.wire.mark()
    scene.wire.send(fake.flow.raw_segment(seq=1000, ack=0, flags=SYN, win=65535,
                                          options=b"\x02\x04\x05\xb4\x08\x00\x01\x01"))
    after = wait_drops(scene.target, before, "tcp_bad_option", 1)
    assert after["tcp_bad_option"] == before["tcp_bad_option"] + 1
    expect_silence(scene.wire, fake.flow, mark)
    assert scene.host.t.stats()["synack_sent"] == 0
    scene.finish()


@pytest.mark.parametrize("where", ["in_window", "at_rcv_nxt", "beyond_window"])
def test_rst_in_syn_received(scene, where):
    """RFC 9293 §3.10.7.4 in SYN-RECEIVED with RFC 5961 §3.2: a RST one
    hundred bytes into the window gets a challenge ACK
    <SEQ=ISS+1><ACK=IRS+1><CTL=ACK>, and the half-open connection lives on:
    the peer's ACK completes it and the host accepts it. A RST at RCV.NXT
    ends it: no more SYN-ACK retransmissions, and the late ACK meets a RST
    (no connection). A RST beyond the window is dropped without a reply."""
    t = scene.host.t
    t.listen(7100, backlog=4)
    fake = FakePeer(scene.wire, "198.18.0.62", 40002, mac="02:00:c6:12:00:3e")
    fake.flow = Flow(scene.wire, 7100, fake.ip, fake.port, fake.mac)
    mark = scene.wire.mark()
    scene.wire.send(fake.flow.segment(seq=fake.iss, flags=SYN, win=65535,
                                      options=fake._options() + [("Timestamp", (fake.tsval(), 0))]))
    synack = scene.wire.wait_for(fake.flow.out, 3, mark)
    assert synack is not None and synack.flags == SYN | ACK, synack
    rcv_nxt = seq_add(fake.iss, 1)
    seq = {"in_window": seq_add(rcv_nxt, 100), "at_rcv_nxt": rcv_nxt, "beyond_window": seq_add(rcv_nxt, 1 << 30)}[where]
    before = t.stats()["handshake_challenge_acks"]
    mark = scene.wire.mark()
    scene.wire.send(fake.flow.segment(seq=seq, flags=RST, win=0))
    reply = scene.wire.wait_for(lambda s: fake.flow.out(s) and not s.flags & SYN, 0.7, mark)
    final_ack = fake.flow.segment(seq=rcv_nxt, ack=seq_add(synack.seq, 1), flags=ACK, win=65535,
                                  ts=(fake.tsval(), synack.ts[0]) if synack.ts else None)
    if where == "in_window":
        assert reply is not None, "no challenge ACK"
        assert reply.flags == ACK and reply.plen == 0, reply
        assert reply.seq == seq_add(synack.seq, 1) and reply.ack == rcv_nxt, reply
        assert t.stats()["handshake_challenge_acks"] == before + 1
        scene.wire.send(final_ack)
        conn = t.accept(5)
        assert conn.remote_ip == fake.ip and conn.remote_port == fake.port
        conn.terminate()
    else:
        assert reply is None, f"chimneyd answered the RST: {reply}"
        assert t.stats()["handshake_challenge_acks"] == before
        if where == "at_rcv_nxt":
            mark = scene.wire.mark()
            time.sleep(1.5)  # a SYN-ACK retransmission would have come after 1 s
            assert not scene.wire.since(mark, lambda s: fake.flow.out(s) and s.flags & SYN), \
                "the half-open connection outlived the RST"
            scene.wire.send(final_ack)
            rst = scene.wire.wait_for(lambda s: fake.flow.out(s) and s.flags & RST, 2, mark)
            assert rst is not None, "the late ACK found a connection"
        else:
            scene.wire.send(final_ack)
            conn = t.accept(5)
            conn.terminate()
    scene.finish()


# --------------------------------------------------------------------------
# SYN flood (RFC 4987)


@pytest.mark.parametrize("sources", ["answering_arp", "silent"])
def test_syn_flood_at_listener(scene, sources):
    """RFC 4987 §3.6 (SYN cookies) and §2 (the attack): 400 SYNs from 200
    spoofed 198.18.0.x sources fill a listener's backlog of 8; every SYN
    beyond it is answered with a cookie and no state, so only the backlog's
    SYN-ACKs are ever retransmitted. Two Linux clients connect meanwhile and
    each moves 1 MiB up and gets its reply, and the paced transfer goes on.
    With sources that answer ARP, a cookie is also shown to work: a spoofed
    host that ACKs its SYN-ACK is accepted (ACCEPT), and an ACK with a wrong
    cookie gets a RST (RFC 9293 §3.10.7.2) and no connection. With silent
    sources the SYN-ACKs wait for ARP answers that never come and are
    dropped (neighbour_unresolved)."""
    t = scene.target
    scene.host.t.listen(7100, backlog=8)
    flood_mac = "02:00:c6:12:ff:01"
    srcs = [f"198.18.0.{i}" for i in range(50, 250)]
    if sources == "answering_arp":
        for ip in srcs:
            scene.wire.fake_host(ip, flood_mac)
    rng = random.Random(5961)
    frames = [Ether(src=flood_mac, dst=t.mac) /
              IP(src=ip, dst=t.target_ip) /
              TCP(sport=20000 + k, dport=7100, seq=rng.getrandbits(32), flags="S",
                                              window=65535, options=[("MSS", 1460), ("SAckOK", b""),
                                                                     ("Timestamp", (rng.getrandbits(32), 0)),
                                                                     ("WScale", 7)])
              for k in range(2) for ip in srcs]
    before = scene.host.t.stats()
    mark = scene.wire.mark()
    scene.wire.send(*frames)
    client = t.popen([PYTHON, str(HERE / "linux_client.py"), t.target_ip, "7100", str(1 << 20), "2"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(HERE))
    served = [scene.host.t.accept(20) for _ in range(2)]
    for conn in served:
        assert conn.remote_ip == t.peer_ip, conn
        got = bytearray()
        while True:
            r = scene.host.track(conn.post_receive(1 << 20)).wait(30)
            if r.status != "NDIS_STATUS_SUCCESS":
                assert r.status == "NDIS_STATUS_INVALID_STATE", r   # the client's FIN (C-16)
                break
            got += r.data
        assert bytes(got) == stream_peer.stream(1 << 20)
        c = scene.host.track(conn.send(b"reply" * 200)).wait(10)
        assert c.status == "NDIS_STATUS_SUCCESS"
        assert scene.host.track(conn.disconnect(graceful=True)).wait(10).status == "NDIS_STATUS_SUCCESS"
    out, err = client.communicate(timeout=30)
    results = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(results) == 2 and all(r["end"] == "eof" and r["bytes"] == 1000 for r in results), (results, err)
    stats = scene.host.t.stats()
    assert stats["syn_cookies_sent"] - before["syn_cookies_sent"] >= len(frames) - 8, stats

    if sources == "answering_arp":
        synacks = scene.wire.since(mark, lambda s: s.from_target and s.flags & SYN and s.dst in srcs)
        per_tuple = {}
        for s in synacks:
            per_tuple.setdefault((s.dst, s.dport), []).append(s)
        assert len(per_tuple) == len(frames), "every SYN is answered"
        retransmitted = [k for k, v in per_tuple.items() if len(v) > 1]
        assert len(retransmitted) <= 8, f"state kept beyond the backlog: {len(retransmitted)}"
        # A cookie holder completes the handshake: the cookie is the state.
        # (The last SYNs of the flood found the backlog full: cookies.)
        cookie_tuple = (frames[-1][IP].src, frames[-1][TCP].sport)
        assert len(per_tuple[cookie_tuple]) == 1
        sa = per_tuple[cookie_tuple][0]
        flood = Flow(scene.wire, 7100, sa.dst, sa.dport, flood_mac)
        syn_frame = next(f for f in frames if f[IP].src == sa.dst and f.sport == sa.dport)
        scene.wire.send(flood.segment(seq=seq_add(syn_frame.seq, 1), ack=seq_add(sa.seq, 1), flags=ACK,
                                      win=1024, ts=(syn_frame[TCP].options[2][1][0] + 1,
                                                    sa.ts[0])))
        accepted = scene.host.t.accept(5)
        assert (accepted.remote_ip, accepted.remote_port) == cookie_tuple
        accepted.terminate()
        # ... and a wrong cookie gets a RST and nothing else.
        other = (frames[-2][IP].src, frames[-2][TCP].sport)
        sa2 = per_tuple[other][0]
        flood2 = Flow(scene.wire, 7100, sa2.dst, sa2.dport, flood_mac)
        syn2 = next(f for f in frames if f[IP].src == sa2.dst and f.sport == sa2.dport)
        rejected = scene.host.t.stats()["syn_cookies_rejected"]
        m2 = scene.wire.mark()
        scene.wire.send(flood2.segment(seq=seq_add(syn2.seq, 1), ack=seq_add(sa2.seq, 1 + 12345), flags=ACK,
                                       win=1024))
        rst = scene.wire.wait_for(flood2.out, 2, m2)
        assert rst is not None and rst.flags & RST, rst
        assert scene.host.t.stats()["syn_cookies_rejected"] == rejected + 1
    else:
        # Three unanswered ARP requests a second apart, then the SYN-ACKs
        # waiting for them are dropped.
        after = wait_drops(scene.target, scene.drops(), "neighbour_unresolved", 0, timeout=0)
        deadline = time.monotonic() + 8
        while after["neighbour_unresolved"] < len(frames) and time.monotonic() < deadline:
            time.sleep(0.2)
            after = scene.drops()
        assert after["neighbour_unresolved"] >= len(frames), after
        assert not scene.wire.since(mark, lambda s: s.from_target and s.flags & SYN and s.dst in srcs)
    for conn in served:
        conn.terminate()
    scene.finish()


# --------------------------------------------------------------------------
# a barrage at the busy legitimate connection


def _barrage_frame(case, flow, wscale, rng):
    """One attack segment from the newest state the wire shows."""
    out, inb = flow.latest(True), flow.latest(False)
    rcv_nxt, snd_nxt, una = out.ack, out.end, inb.ack
    wnd = out.win << wscale
    ts = (inb.ts[0], out.ts[0]) if inb.ts and out.ts else None
    if case == "rst_in_window":
        return flow.segment(seq=rcv_nxt + 1 + rng.randrange(wnd - 2), flags=RST, win=0, ts=ts)
    if case == "rst_out_of_window":
        return flow.segment(seq=rcv_nxt + wnd + rng.randrange(1 << 30), flags=RST, win=0, ts=ts)
    if case == "syn_in_window":
        return flow.segment(seq=rcv_nxt + rng.randrange(wnd), flags=SYN, win=65535, ts=ts)
    if case == "ack_of_data_never_sent":
        return flow.segment(seq=rcv_nxt, ack=snd_nxt + (1 << 24) + rng.randrange(1 << 20), flags=ACK,
                            win=inb.win, ts=ts)
    if case == "sack_for_data_in_flight":
        # Claims everything but the first segment in flight arrived (RFC 2018).
        return flow.segment(seq=rcv_nxt, ack=una, flags=ACK, win=inb.win, options=[("SAck", (una + 1448, snd_nxt))],
                            ts=ts)
    if case == "zero_window_ack":
        return flow.segment(seq=rcv_nxt, ack=una, flags=ACK, win=0, ts=ts)
    if case == "data_with_old_timestamp":
        return flow.segment(seq=rcv_nxt, ack=una, flags=PSH | ACK, win=inb.win,
                            ts=((ts[0] - 1 - rng.randrange(1 << 20)) % MOD, ts[1]), payload=EVIL)
    if case == "data_acking_unsent":
        return flow.segment(seq=rcv_nxt, ack=snd_nxt + (1 << 24), flags=PSH | ACK, win=inb.win, ts=ts,
                            payload=EVIL)
    raise ValueError(case)


BARRAGE = {
    # name: pure ACKs from chimneyd expected in reply ("some" or "none")
    "rst_in_window": "some",
    "rst_out_of_window": "none",
    "syn_in_window": "some",
    "ack_of_data_never_sent": "some",
    "sack_for_data_in_flight": None,   # may start a recovery: not counted
    "zero_window_ack": None,   # persist probes may follow: not counted
    "data_with_old_timestamp": "some",
    "data_acking_unsent": "some",
}


@pytest.mark.parametrize("case", list(BARRAGE))
def test_barrage_at_busy_connection(fresh_target, case):
    """The legitimate connection itself under attack while the host streams
    to the Linux peer: 200 segments in about a second, each computed from the
    newest sequence numbers sniffed (RFC 5961 §3.2 in-window RSTs and §4 SYNs
    get challenge ACKs, out-of-window RSTs are dropped silently; §5.2 ACKs of
    data never sent are answered and ignored; RFC 7323 §5.3 PAWS drops old
    data; a spoofed zero-window ACK only pauses the sender until the peer's
    next ACK, RFC 9293 §3.10.7.4; forged SACK blocks for data in flight,
    RFC 2018 §8 / RFC 6675, at most start a needless recovery). Afterwards the peer sends too, and both
    directions arrive whole: nothing injected reached the host, no send
    completed on a forged ACK, no abort."""
    with staged(fresh_target, peer_pacing=False) as scene:
        flow = scene.legit.flow(scene.wire)
        assert scene.wire.wait_for(lambda s: flow.inbound(s) and s.ts, 5) is not None
        time.sleep(0.3)
        rng = random.Random(hash(case) & 0xFFFF)
        mark = scene.wire.mark()
        rcv_nxt = flow.latest(True).ack
        wscale = flow.state().rcv_wscale
        for _ in range(200):
            scene.wire.send(_barrage_frame(case, flow, wscale, rng))
            time.sleep(0.005)
        time.sleep(0.3)
        pure = [s for s in flow.segments(mark) if s.from_target and s.plen == 0 and s.flags == ACK]
        if BARRAGE[case] is None:
            pass
        elif BARRAGE[case] == "some":
            assert pure, "no challenge ACK"
            assert all(s.ack == rcv_nxt for s in pure), pure[:3]
        else:
            assert not pure, f"chimneyd answered: {pure[:3]}"
        assert not scene.host.events_of(scene.legit.conn)
        assert len(scene.legit.received) == 0, "injected bytes reached the host"
        scene.legit.peer_send(300_000)
        scene.legit.wait_received(300_000)
        scene.finish()
