#!/usr/bin/env python3
"""Writes garbage.pcap: malformed frames for pktgen's pcap mode (garbage.lua).

pktgen builds only well-formed headers (its range and single modes compute
both checksums), so the frames whose headers are wrong are made here and
replayed by pktgen (`-s 0:tests/pktgen/garbage.pcap`, `pktgen.pcap("0", "on")`).
Every frame is addressed to chimneyd (its MAC and address, from values.lua's
source, offload_known.py, or --chimney-mac/--chimney-ip) and each fails exactly
one check of lib/net/packet.cpp, so one loop of the file adds one to each of
the drop counters printed below (chimneyd's /chimney/drops).

    python3 tests/pktgen/garbage_pcap.py --chimney-mac 02:00:00:00:00:02 \\
        --chimney-ip 198.18.0.2 --out tests/pktgen/garbage.pcap

Standard library only; addresses inside 198.18.0.0/15 only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import struct
import sys

TEST_NETWORK = ipaddress.ip_network("198.18.0.0/15")
HERE = os.path.dirname(os.path.abspath(__file__))


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mac(text: str) -> bytes:
    b = bytes(int(x, 16) for x in text.split(":"))
    if len(b) != 6:
        raise SystemExit(f"bad MAC {text!r}")
    return b


def ip4(text: str) -> bytes:
    a = ipaddress.ip_address(text)
    if a.version != 4 or a not in TEST_NETWORK:
        raise SystemExit(f"{text} is not inside {TEST_NETWORK}")
    return a.packed


class Maker:
    def __init__(self, dst_mac, src_mac, dst_ip, src_ip, dport, sport, seq, ack):
        self.dst_mac, self.src_mac = dst_mac, src_mac
        self.dst_ip, self.src_ip = dst_ip, src_ip
        self.dport, self.sport, self.seq, self.ack = dport, sport, seq, ack

    def tcp(self, payload=b"x" * 18, options=b"", flags=0x10, doff=None, bad_sum=False) -> bytes:
        hlen = 20 + len(options)
        doff = hlen // 4 if doff is None else doff
        hdr = struct.pack("!HHIIBBHHH", self.sport, self.dport, self.seq, self.ack,
                          doff << 4, flags, 8192, 0, 0) + options
        seg = hdr + payload
        pseudo = self.src_ip + self.dst_ip + struct.pack("!BBH", 0, 6, len(seg))
        s = csum(pseudo + seg)
        if bad_sum:
            s ^= 0x5A5A
        return seg[:16] + struct.pack("!H", s) + seg[18:]

    def ip(self, l4: bytes, proto=6, version=4, ihl=5, options=b"", total=None, frag=0x4000,
           bad_sum=False) -> bytes:
        total = 20 + len(options) + len(l4) if total is None else total
        hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, 0x1234, frag, 64, proto, 0,
                          self.src_ip, self.dst_ip) + options
        s = csum(hdr)
        if bad_sum:
            s ^= 0x5A5A
        return hdr[:10] + struct.pack("!H", s) + hdr[12:] + l4

    def eth(self, l3: bytes, ethertype=0x0800) -> bytes:
        frame = self.dst_mac + self.src_mac + struct.pack("!H", ethertype) + l3
        return frame + b"\0" * max(0, 60 - len(frame))  # pad as a NIC would (no CRC in the file)


def frames(m: Maker):
    """(drop counter expected, frame) pairs; each frame fails one check only."""
    t = m.tcp()
    yield "eth_unsupported_type", m.eth(m.ip(t), ethertype=0x86DD)
    yield "ip_bad_version", m.eth(m.ip(t, version=6))
    yield "ip_bad_ihl", m.eth(m.ip(t, ihl=4))
    yield "ip_options", m.eth(m.ip(t, ihl=6, options=b"\x01\x01\x01\x00"))
    yield "ip_bad_total_length", m.eth(m.ip(t, total=16))
    yield "ip_bad_total_length", m.eth(m.ip(t, total=20 + len(t) + 200))
    yield "ip_bad_checksum", m.eth(m.ip(t, bad_sum=True))
    yield "ip_fragment", m.eth(m.ip(t, frag=0x2000))            # MF
    yield "ip_fragment", m.eth(m.ip(t, frag=0x0010))            # offset 128
    yield "ip_unsupported_proto", m.eth(m.ip(t, proto=17))
    yield "tcp_truncated", m.eth(m.ip(t[:12]))                  # 12 bytes of TCP header
    yield "tcp_bad_data_offset", m.eth(m.ip(m.tcp(doff=4)))
    yield "tcp_bad_data_offset", m.eth(m.ip(m.tcp(payload=b"", doff=15)))
    yield "tcp_bad_checksum", m.eth(m.ip(m.tcp(bad_sum=True)))
    yield "tcp_bad_option", m.eth(m.ip(m.tcp(options=b"\x02\x00\x01\x01")))          # length 0
    yield "tcp_bad_option", m.eth(m.ip(m.tcp(options=b"\x08\x28\x00\x00")))          # longer than the header
    yield "tcp_bad_option", m.eth(m.ip(m.tcp(options=b"\x01\x01\x01\x03")))          # kind without length
    yield "tcp_bad_option", m.eth(m.ip(m.tcp(options=b"\x02\x03\x05\xb4")))          # MSS of length 3


def write_pcap(path: str, items) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # LINKTYPE_ETHERNET
        for i, frame in enumerate(items):
            f.write(struct.pack("<IIII", 0, i, len(frame), len(frame)))
            f.write(frame)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", default=os.path.join(HERE, "values.lua"),
                    help="values.lua of offload_known.py (MACs, addresses, ports)")
    ap.add_argument("--chimney-mac")
    ap.add_argument("--chimney-ip")
    ap.add_argument("--peer-mac")
    ap.add_argument("--peer-ip")
    ap.add_argument("--dport", type=int, help="chimneyd's port (default: the offloaded connection's)")
    ap.add_argument("--out", default=os.path.join(HERE, "garbage.pcap"))
    args = ap.parse_args()

    v = {"peer_mac": "02:00:00:00:00:01", "peer_ip": "198.18.0.1", "sport": 40000, "dport": 5001,
         "rcv_nxt": 0xF0000000, "ack": 0x01000000}
    if os.path.exists(args.values):
        for line in open(args.values):
            line = line.strip().rstrip(",")
            if "=" in line and not line.startswith("--"):
                k, val = (x.strip() for x in line.split("=", 1))
                v[k] = val.strip('"') if val.startswith('"') else int(val)
    for k in ("chimney_mac", "chimney_ip", "peer_mac", "peer_ip", "dport"):
        if getattr(args, k) is not None:
            v[k] = getattr(args, k)
    if "chimney_mac" not in v or "chimney_ip" not in v:
        raise SystemExit("no chimneyd MAC/address: run offload_known.py first or give --chimney-mac/--chimney-ip")

    m = Maker(mac(v["chimney_mac"]), mac(v["peer_mac"]), ip4(v["chimney_ip"]), ip4(v["peer_ip"]),
              int(v["dport"]), int(v["sport"]), int(v["rcv_nxt"]), int(v["ack"]))
    items = list(frames(m))
    write_pcap(args.out, [f for _, f in items])
    counts = {}
    for reason, _ in items:
        counts[reason] = counts.get(reason, 0) + 1
    print(f"{args.out}: {len(items)} frames; per loop of the file chimneyd's /chimney/drops should grow by:")
    for reason, n in counts.items():
        print(f"  {reason} += {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
