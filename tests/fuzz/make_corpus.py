#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets; run once, the files are committed.

tests/fuzz/corpus/protocol/ (fuzz_protocol): the hand-written golden vectors of
tests/unit/control/golden.hex, one message of each type the vectors lack, built
with the Python codec (clients/python), and a stream of several messages back
to back.

tests/fuzz/corpus/packet/ (fuzz_packet): programs in that target's input
format (see fuzz_packet.cpp and the encoder below) that take the engine's
connections through the paths worth mutating from: ACKs, data in and out of
order, SACK and NewReno recovery, the peer's FIN and ours to TIME_WAIT, RSTs
and SYNs, timers, zero windows, held transmit buffers, terminate and offload
again. Files named regress-* there are inputs that once found a bug; this
script leaves them alone.

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""

import re
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from chimney import protocol as p  # noqa: E402

OUT = ROOT / "tests" / "fuzz" / "corpus" / "protocol"
PACKET_OUT = ROOT / "tests" / "fuzz" / "corpus" / "packet"


def golden():
    blocks, name = {}, None
    for line in (ROOT / "tests" / "unit" / "control" / "golden.hex").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            name = m.group(1)
            blocks[name] = bytearray()
        else:
            blocks[name] += bytes.fromhex(line)
    return {k: bytes(v) for k, v in blocks.items()}


def extra():
    M, T = p.Message, p.MsgType
    s = p.OffloadState()
    s.delegated.state = p.TcpState.CLOSE_WAIT
    return {
        "unregister_memory": M(T.UNREGISTER_MEMORY, 3, p.UnregisterMemory(1)),
        "listen": M(T.LISTEN, 5, p.Listen(8080, 16, p.CachedState())),
        "terminate": M(T.TERMINATE, 10, p.Terminate(7)),
        "release_listen": M(T.RELEASE_LISTEN, 12, p.ReleaseListen(8080)),
        "registered": M(T.REGISTERED, 2, p.Registered(1)),
        "send_complete": M(T.SEND_COMPLETE, 42, p.Completion(7, 0, 1460)),
        "disconnect_complete": M(T.DISCONNECT_COMPLETE, 7, p.Completion(7, 0xC023000C, 0)),
        "stats_reply": M(T.STATS_REPLY, 11, p.StatsReply('{"sessions": 1, "connections": 2}')),
        "offload_empty": M(T.OFFLOAD, 6, p.Offload(s, b"")),
    }


# --- fuzz_packet programs -------------------------------------------------
# Field layouts as fuzz_packet.cpp reads them (little-endian).

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
SEQ_RCV_NXT, SEQ_PEER_NEXT, SEQ_FAR, SEQ_RAW = 0, 1, 2, 3
ACK_UNA, ACK_MAX, ACK_NXT, ACK_RAW = 0, 1, 2, 3


class Program:
    def __init__(self, variant=0):
        self.b = bytearray([variant])

    def frame(self, conn, flags=ACK, seq=0, ack=0, seq_mode=SEQ_PEER_NEXT, ack_mode=ACK_MAX, win=512,
              ts=None, sack=(), mss=None, wscale=None, sack_permitted=False, raw_opts=None, plen=0,
              mutate=0, burst=False, stranger=False, trunc=None, stray=None):
        """ts: (delta from ts_recent, ecr); sack: [(left - snd.una, length)]."""
        sel = conn | (4 if stranger else 0) | (0x80 if burst else 0)
        b = bytearray([0, sel, flags, seq_mode | (ack_mode << 2)])
        b += struct.pack("<IIH", seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, win)
        if raw_opts is not None:
            optsel = 0x80
        else:
            optsel = (1 if ts else 0) | (2 if sack else 0) | (max(len(sack) - 1, 0) << 2)
            optsel |= (0x10 if mss is not None else 0) | (0x20 if wscale is not None else 0)
            optsel |= 0x40 if sack_permitted else 0
        b.append(optsel)
        b += struct.pack("<HB", plen, mutate)
        if raw_opts is not None:
            b += bytes([len(raw_opts)]) + bytes(raw_opts)
        else:
            if ts:
                b += struct.pack("<hB", ts[0], ts[1])
            for left, length in sack[: 3 if ts else 4]:
                b += struct.pack("<hH", left, length)
            if mss is not None:
                b += struct.pack("<H", mss)
            if wscale is not None:
                b.append(wscale)
        if mutate & 0x40:
            b.append(trunc or 0)
        if mutate & 0x80:
            b.append(stray or 0)
        self.b += b
        return self

    def raw(self, conn, data, ethertype=0, verified=False):
        self.b += bytes([5, conn, ethertype | (0x80 if verified else 0), len(data)]) + bytes(data)
        return self

    def send(self, conn, n, nbs=1, chain=False):
        big = n >= 8192
        self.b += bytes([6, conn | ((nbs - 1) << 2) | (0x10 if chain else 0) | (0x80 if big else 0)])
        self.b += struct.pack("<H", n)
        return self

    def receive(self, conn, n, nbs=1, nopush=False):
        big = n >= 4096
        self.b += bytes([7, conn | ((nbs - 1) << 2) | (0x10 if nopush else 0) | (0x80 if big else 0)])
        self.b += struct.pack("<H", n)
        return self

    def disconnect(self, conn, n=0):
        self.b += bytes([8, conn]) + struct.pack("<H", n)
        return self

    def abort(self, conn):
        self.b += bytes([9, conn])
        return self

    def terminate(self, conn):
        self.b += bytes([10, conn])
        return self

    def advance(self, ms=0, us=None, minutes=None, steps=1):
        if us is not None:
            mode, v = 0, us
        elif minutes is not None:
            mode, v = 3, minutes
        elif ms < 65536:
            mode, v = 1, ms
        else:
            mode, v = 2, ms // 16
        self.b += bytes([11, mode | ((steps - 1) << 2)]) + struct.pack("<H", v)
        return self

    def nic(self, hold=False, release=False):
        self.b += bytes([12, (1 if hold else 0) | (2 if release else 0)])
        return self

    def accept(self, mode):
        self.b += bytes([13, mode])
        return self

    def reoffload(self, conn, toggle_keepalive=False, without_disconnect_data=False):
        self.b += bytes([14, conn | (0x10 if toggle_keepalive else 0) | (0x20 if without_disconnect_data else 0)])
        return self

    def cached(self, conn, v, window=False):
        self.b += bytes([15, conn | (0x10 if window else 0), v])
        return self


def packet_programs():
    P = Program
    ts = (1, 1)  # conn 0 and conn 3 carry timestamps
    progs = {}
    # Conn 0: everything in flight ACKed, then data in order into the posted receives.
    p = P()
    p.frame(0, ACK, ts=ts)
    for i in range(4):
        p.frame(0, ACK | (PSH if i == 3 else 0), ts=ts, plen=1000)
    p.advance(50)
    progs["ack_and_data"] = p
    # Out of order with a hole, SACKed by us, then the hole filled.
    p = P()
    p.frame(0, ACK, seq=1000, seq_mode=SEQ_RCV_NXT, ts=ts, plen=1000)
    p.frame(0, ACK, seq=3000, seq_mode=SEQ_RCV_NXT, ts=ts, plen=500)
    p.frame(0, ACK, seq=0, seq_mode=SEQ_RCV_NXT, ts=ts, plen=1000)
    p.frame(0, ACK | PSH, seq=2000, seq_mode=SEQ_RCV_NXT, ts=ts, plen=1000)
    progs["reassembly"] = p
    # Three duplicate ACKs with SACK blocks above a hole: SACK recovery, then a full ACK.
    p = P()
    for i in range(3):
        p.frame(0, ACK, ack=0, ack_mode=ACK_UNA, ts=ts, sack=[(1448, 1448 * (i + 1))])
    p.advance(5)
    p.frame(0, ACK, ts=ts)
    progs["sack_recovery"] = p
    # NewReno: conn 1 (no options) sends, three duplicate ACKs, a partial ACK, a full one.
    p = P()
    p.send(1, 7000, nbs=2).advance(1)
    p.frame(1, ACK, ack=0, ack_mode=ACK_UNA, win=16384)
    for _ in range(3):
        p.frame(1, ACK, ack=0, ack_mode=ACK_UNA, win=16384)
    p.frame(1, ACK, ack=1460, ack_mode=ACK_UNA, win=16384)
    p.frame(1, ACK, win=16384)
    progs["newreno_recovery"] = p
    # The peer closes conn 0: FIN after data, DISCONNECT, then our close to LAST_ACK and CLOSED.
    p = P()
    p.frame(0, ACK, ts=ts, plen=200).frame(0, ACK | FIN, ts=ts, plen=100)
    p.receive(0, 100).disconnect(0, 300).advance(1)
    p.frame(0, ACK, ts=ts)
    p.advance(10)
    progs["peer_close_then_ours"] = p
    # Conn 2 (FIN_WAIT_1): all ACKed (FIN_WAIT_2), the peer's FIN (TIME_WAIT), a
    # retransmitted FIN answered from TIME_WAIT, then 2 MSL pass.
    p = P(variant=0x10)
    p.advance(1).frame(2, ACK, win=8000).frame(2, ACK, win=8000)
    p.frame(2, ACK | FIN, win=8000)
    p.frame(2, ACK | FIN, seq=0, seq_mode=SEQ_RCV_NXT, win=8000)
    p.frame(2, ACK | FIN, seq=-1, seq_mode=SEQ_RCV_NXT, win=8000)
    p.advance(minutes=1)
    p.frame(2, ACK | FIN, seq=-1, seq_mode=SEQ_RCV_NXT, win=8000)
    progs["time_wait"] = p
    # Simultaneous close on conn 0: our FIN and the peer's cross (CLOSING).
    p = P()
    p.frame(0, ACK, ts=ts).disconnect(0, 10).advance(1)
    p.frame(0, ACK | FIN, ack=0, ack_mode=ACK_UNA, ts=ts)
    p.frame(0, ACK, ts=ts)
    progs["closing"] = p
    # RSTs: in window (challenge ACK), at rcv.nxt (ABORT), and a SYN (challenge ACK).
    p = P()
    p.frame(3, RST, seq=5, seq_mode=SEQ_RCV_NXT, ts=ts)
    p.frame(3, SYN, seq=0, seq_mode=SEQ_RCV_NXT, ts=ts)
    p.frame(3, RST, seq=0, seq_mode=SEQ_RCV_NXT)
    p.frame(0, RST | ACK, seq=0, seq_mode=SEQ_RCV_NXT)
    progs["rst_syn"] = p
    # Retransmission timeouts on conn 0 until the limit raises RETRIEVE.
    p = P()
    p.advance(ms=120000, steps=32)
    progs["rto_to_retrieve"] = p
    # Keepalive on conn 1: idle probes, unanswered, then one answered.
    p = P()
    p.advance(3000, steps=8).frame(1, ACK, seq=-1, seq_mode=SEQ_RCV_NXT, win=16384)
    p.advance(ms=5000, steps=16)
    progs["keepalive"] = p
    # Conn 1 offloaded behind a zero window (variant bit 5): persist probes, then a window.
    p = P(variant=0x20)
    p.send(1, 3000).advance(ms=20000, steps=20)
    p.frame(1, ACK, win=4000).advance(10)
    progs["persist"] = p
    # The peer shrinks conn 0's window to zero and opens it again.
    p = P()
    p.frame(0, ACK, ack=0, ack_mode=ACK_UNA, win=0, ts=ts).send(0, 5000).advance(ms=3000, steps=10)
    p.frame(0, ACK, win=1024, ts=ts).advance(10)
    progs["zero_window"] = p
    # Receive window: the host takes nothing, then half, then posts receives (no push).
    p = P(variant=0x08)
    p.accept(1).frame(3, ACK | PSH, seq=0, seq_mode=SEQ_RCV_NXT, ts=ts, plen=50)
    for i in range(4):
        p.frame(0, ACK, ts=ts, plen=1400)
    p.accept(2).receive(0, 3000, nbs=3, nopush=True).receive(0, 0).advance(300)
    progs["indications"] = p
    # Abortive disconnect with sends outstanding and frames held by the NIC.
    p = P()
    p.nic(hold=True).send(0, 9000, nbs=3, chain=True).advance(1).abort(0)
    p.send(0, 10).receive(0, 10).nic(release=True)
    progs["abortive_held"] = p
    # Terminate while the NIC holds buffers; offload again and go on.
    p = P()
    p.nic(hold=True).frame(0, ACK, ack=1000, ack_mode=ACK_UNA, ts=ts).terminate(0).terminate(2)
    p.advance(1).nic(release=True).advance(1)
    p.reoffload(0).reoffload(2, toggle_keepalive=True)
    p.frame(0, ACK, ts=ts).send(0, 1000).advance(1).frame(0, ACK, ts=ts)
    progs["terminate_reoffload"] = p
    # A burst of frames, some checksums bad, some chained, truncated, padded.
    p = P()
    for i in range(40):
        p.frame(0, ACK | (PSH if i % 7 == 0 else 0), ts=ts, plen=100 + i, burst=True,
                mutate=[0, 0x10, 0x20 | 3, 6, 7, 5, 0x40][i % 7], trunc=30)
    p.frame(1, ACK, stranger=True, win=100)
    p.frame(1, SYN, stranger=True, win=100)
    progs["burst_mutations"] = p
    # Options: raw bytes, SYN-only options on data segments, a bad option list.
    p = P()
    p.frame(0, ACK, ts=ts, mss=1200, wscale=9, sack_permitted=True)
    p.frame(0, ACK, raw_opts=[1, 1, 8, 10, 0, 0, 0, 200, 0, 0, 0, 1])
    p.frame(0, ACK, raw_opts=[5, 10, 0, 0, 0, 0, 0, 0, 0, 0], mutate=5)
    p.frame(2, ACK, raw_opts=[2, 3, 0], mutate=5)
    progs["options"] = p
    # Raw frames: ARP request and ICMP echo for us, a TCP header of our own.
    p = P()
    arp = bytes([0, 1, 8, 0, 6, 4, 0, 1]) + bytes([2, 0, 0, 0, 0, 0x10]) + bytes([198, 18, 0, 1]) + bytes(6) + bytes([198, 18, 0, 2])
    p.raw(0, arp, ethertype=1)
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2])
    p.raw(0, ip + bytes([8, 0, 0, 0, 0, 1, 0, 1]), verified=True)
    tcp = bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2]) + struct.pack(
        ">HHIIBBHHH", 40000, 5000, 0, 0, 0x50, ACK, 100, 0, 0)
    p.raw(0, tcp, verified=True)
    progs["raw_frames"] = p
    # Cached-state updates (Nagle, keepalive, window) and queries.
    p = P(variant=0x01)
    p.cached(1, 0x23).cached(0, 0x4F, window=True).send(1, 100).send(1, 100).advance(500)
    progs["cached_updates"] = p
    # Far and wrapped sequence numbers, old ACKs (RFC 5961), ACKs of unsent data.
    p = P(variant=0x80)
    p.frame(0, ACK, seq=0x12345, seq_mode=SEQ_FAR, ts=ts, plen=10)
    p.frame(0, ACK, ack=-30000, ack_mode=ACK_UNA, ts=ts)
    p.frame(0, ACK, ack=5000, ack_mode=ACK_MAX, ts=ts)
    p.frame(0, ACK, ts=(-5000, 1), plen=10)
    p.frame(0, ACK, ts=ts, plen=1800)
    progs["sequence_edges"] = p
    return progs


def packet_main():
    PACKET_OUT.mkdir(parents=True, exist_ok=True)
    progs = packet_programs()
    for name, prog in sorted(progs.items()):
        (PACKET_OUT / name).write_bytes(bytes(prog.b))
    print(f"{len(progs)} seeds in {PACKET_OUT.relative_to(ROOT)}")


def main():
    packet_main()
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = golden()
    for name, m in extra().items():
        seeds[name] = p.encode(m)
    seeds["stream"] = seeds["hello"] + seeds["send"] + seeds["event"] + seeds["stats"]
    for name, b in sorted(seeds.items()):
        if name != "stream":
            p.decode(b)  # every single-message seed is valid
        (OUT / name).write_bytes(b)
    print(f"{len(seeds)} seeds in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
