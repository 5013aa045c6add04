"""Malformed and foreign frames: each is dropped and counted under its reason
(/chimney/drops before and after), nothing else moves, and the target still
answers ping afterwards.

Frames are built here with scapy and sent from inside the namespace, on the
Linux side of the TAP, by one long-lived scapy process (sendp through an L2
socket). Every frame goes to the target (its MAC, 198.18.0.0/15 addresses),
or to the broadcast MAC for ARP.
"""

import errno
import subprocess
import time

import pytest
from scapy.all import ARP, Ether, ICMP, IP, IPOption, Raw, TCP, UDP, checksum  # noqa: F401
from scapy.config import conf

from conftest import PYTHON

conf.verb = 0

SENDER = r"""
import sys
from scapy.all import conf
conf.verb = 0
sock = conf.L2socket(iface=sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    # "raw:" sends on the packet socket itself: scapy would pad a frame the
    # kernel refuses (EINVAL for < 14 bytes) to 60 bytes and send that instead.
    raw = line.startswith("raw:")
    send = sock.outs.send if raw else sock.send
    try:
        for frame in line[4 if raw else 0:].split(","):
            send(bytes.fromhex(frame))
        print("ok", flush=True)
    except OSError as e:
        print("err %d %s" % (e.errno or 0, e), flush=True)
"""


class Sender:
    """Sends raw frames on the TAP's Linux side, inside the namespace."""

    def __init__(self, target):
        self.proc = target.popen([PYTHON, "-c", SENDER, target.iface], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 bufsize=1)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"scapy sender did not start: {line!r} {self.proc.stderr.read()}")

    def send(self, *frames: bytes, raw: bool = False) -> str:
        self.proc.stdin.write(("raw:" if raw else "") + ",".join(bytes(f).hex() for f in frames) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def sender(target):
    target.ping(1)  # the target has learned the peer; the Linux side is up
    s = Sender(target)
    yield s
    s.close()


# --------------------------------------------------------------------------
# frame builders: f(t) -> list of frames, given the running target t


def eth(t, **kw):
    kw.setdefault("dst", t.mac)
    kw.setdefault("src", t.peer_mac)
    return Ether(**kw)


def ip(t, **kw):
    kw.setdefault("src", t.peer_ip)
    kw.setdefault("dst", t.target_ip)
    return IP(**kw)


def echo(t, ip_kw=None, **icmp_kw):
    return eth(t) / ip(t, **(ip_kw or {})) / ICMP(id=0x4242, seq=1, **icmp_kw) / Raw(b"x" * 16)


def syn(t, dport=8080, **tcp_kw):
    tcp_kw.setdefault("flags", "S")
    return TCP(sport=40100, dport=dport, seq=1000, window=8192, **tcp_kw)


def with_bad_ip_checksum(frame):
    good = Ether(bytes(frame))[IP].chksum
    frame[IP].chksum = good ^ 0x5a5a
    return frame


def with_bad_tcp_checksum(frame):
    good = Ether(bytes(frame))[TCP].chksum
    frame[TCP].chksum = good ^ 0x0101
    return frame


def with_bad_icmp_checksum(frame):
    good = Ether(bytes(frame))[ICMP].chksum
    frame[ICMP].chksum = good ^ 0x0101
    return frame


def raw_ip_header(t, *, proto, total_len, ihl=5, version=4, flags_frag=0, options=b""):
    """An IPv4 header with a correct checksum over whatever fields are given."""
    hdr = bytearray(bytes(IP(src=t.peer_ip, dst=t.target_ip, proto=proto)))[:20]
    hdr[0] = (version << 4) | ihl
    hdr[2:4] = total_len.to_bytes(2, "big")
    hdr[6:8] = flags_frag.to_bytes(2, "big")
    hdr += options
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "little")
    return bytes(hdr)


CASES = {
    # Ethernet
    "eth_header_only_ipv4": ("ip_truncated", lambda t: [eth(t, type=0x0800)]),
    "eth_header_only_arp": ("arp_truncated", lambda t: [eth(t, type=0x0806)]),
    "eth_not_for_us": ("eth_not_for_us", lambda t: [eth(t, dst="02:00:c6:12:00:63") / ip(t) / syn(t)]),
    "ethertype_local_experimental": ("eth_unsupported_type",
                                     lambda t: [eth(t, type=0x88B5) / Raw(b"chimney" * 8)]),
    "ethertype_vlan": ("eth_unsupported_type",
                       lambda t: [eth(t, type=0x8100) / Raw(b"\x00\x01\x08\x00" + b"\0" * 40)]),
    # ARP
    "arp_truncated": ("arp_truncated",
                      lambda t: [eth(t, type=0x0806) / Raw(bytes(ARP(pdst=t.target_ip))[:20])]),
    "arp_bad_hardware_type": ("arp_unsupported",
                              lambda t: [eth(t, dst="ff:ff:ff:ff:ff:ff") /
                                         ARP(hwtype=6, psrc=t.peer_ip, hwsrc=t.peer_mac,
                                             pdst=t.target_ip)]),
    "arp_for_another_ip": ("arp_not_for_us",
                           lambda t: [eth(t, dst="ff:ff:ff:ff:ff:ff") /
                                      ARP(op=1, psrc=t.peer_ip, hwsrc=t.peer_mac,
                                          pdst="198.18.0.99")]),
    # IPv4
    "ip_truncated": ("ip_truncated", lambda t: [eth(t, type=0x0800) / Raw(bytes(ip(t) / syn(t))[:12])]),
    "ip_bad_version": ("ip_bad_version",
                       lambda t: [eth(t, type=0x0800) / Raw(raw_ip_header(t, proto=6, total_len=40, version=6)
                                               + bytes(syn(t))[:20])]),
    "ip_ihl_too_small": ("ip_bad_ihl",
                         lambda t: [eth(t, type=0x0800) / Raw(raw_ip_header(t, proto=6, total_len=40, ihl=4)
                                                 + bytes(syn(t))[:20])]),
    "ip_ihl_beyond_frame": ("ip_bad_ihl",
                            lambda t: [eth(t, type=0x0800) / Raw(raw_ip_header(t, proto=6, total_len=24,
                                                                  ihl=15) + b"\0" * 4)]),
    "ip_total_length_beyond_frame": ("ip_bad_total_length",
                                     lambda t: [eth(t) / ip(t, len=200) / syn(t)]),
    "ip_total_length_below_header": ("ip_bad_total_length",
                                     lambda t: [eth(t) / ip(t, len=12) / syn(t)]),
    "ip_bad_checksum": ("ip_bad_checksum", lambda t: [with_bad_ip_checksum(echo(t))]),
    "ip_options": ("ip_options",
                   lambda t: [eth(t) / ip(t, options=[IPOption(b"\x01\x01\x01\x00")]) / syn(t)]),
    "ip_more_fragments": ("ip_fragment", lambda t: [echo(t, ip_kw={"flags": "MF"})]),
    "ip_fragment_offset": ("ip_fragment", lambda t: [echo(t, ip_kw={"frag": 10})]),
    "ip_for_another_address": ("ip_not_for_us",
                               lambda t: [echo(t, ip_kw={"dst": "198.18.0.99"})]),
    "ip_udp": ("ip_unsupported_proto",
               lambda t: [eth(t) / ip(t) / UDP(sport=40000, dport=9) / Raw(b"u" * 8)]),
    # ICMP
    "icmp_truncated": ("icmp_truncated", lambda t: [eth(t) / ip(t, proto=1) / Raw(b"\x08\x00\xf7")]),
    "icmp_bad_checksum": ("icmp_bad_checksum", lambda t: [with_bad_icmp_checksum(echo(t))]),
    "icmp_timestamp_request": ("icmp_unsupported", lambda t: [echo(t, type=13)]),
    # TCP
    "tcp_truncated": ("tcp_truncated", lambda t: [eth(t) / ip(t, proto=6) / Raw(bytes(syn(t))[:12])]),
    "tcp_data_offset_too_small": ("tcp_bad_data_offset",
                                  lambda t: [eth(t) / ip(t) / syn(t, dataofs=4)]),
    "tcp_data_offset_beyond_segment": ("tcp_bad_data_offset",
                                       lambda t: [eth(t) / ip(t) / syn(t, dataofs=15)]),
    "tcp_bad_checksum": ("tcp_bad_checksum",
                         lambda t: [with_bad_tcp_checksum(eth(t) / ip(t) / syn(t))]),
    "tcp_option_zero_length": ("tcp_bad_option",
                               lambda t: [eth(t) / ip(t) / syn(t, dataofs=6) /
                                          Raw(b"\x02\x00\x05\xb4")]),
    "tcp_option_overlong": ("tcp_bad_option",
                            lambda t: [eth(t) / ip(t) / syn(t, dataofs=6) /
                                       Raw(b"\x08\x28\x00\x00")]),
    "tcp_option_length_missing": ("tcp_bad_option",
                                  lambda t: [eth(t) / ip(t) / syn(t, dataofs=6) /
                                             Raw(b"\x01\x01\x01\x02")]),
    "tcp_mss_wrong_length": ("tcp_bad_option",
                             lambda t: [eth(t) / ip(t) / syn(t, dataofs=6) /
                                        Raw(b"\x02\x03\x05\x01")]),
    "tcp_rst_for_no_connection": ("tcp_rst_no_connection",
                                  lambda t: [eth(t) / ip(t) / syn(t, flags="R")]),
}


def wait_for_drop(target, before, reason, count, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        after = target.drops()
        if after[reason] >= before[reason] + count or time.monotonic() >= deadline:
            return after
        time.sleep(0.02)


@pytest.mark.parametrize("case", list(CASES))
def test_dropped_and_counted(target, sender, case):
    """Each frame is dropped and counted under its reason only, and nothing is
    sent in answer: IPv4 header checks (RFC 791 §3.1; RFC 1122 §3.2.1.1 version,
    §3.2.1.2 checksum, §3.2.1.3 addressing: silently discarded), ICMP checksum
    (RFC 792), TCP header, checksum and option lengths (RFC 9293 §3.1, MUST-3,
    MUST-7), a RST for no connection (RFC 9293 §3.10.7.1: discarded). IP
    options and fragments are dropped by design (docs/ARCHITECTURE.md)."""
    reason, build = CASES[case]
    frames = build(target)
    port_before = target.port(0)
    before = target.drops()
    assert reason in before, f"no drop reason {reason!r} in /chimney/drops"
    result = sender.send(*frames)
    assert result == "ok", f"sending failed: {result}"
    after = wait_for_drop(target, before, reason, len(frames))
    assert after[reason] - before[reason] == len(frames), \
        f"{reason}: {before[reason]} -> {after[reason]} after {len(frames)} frame(s)"
    moved = {r: after[r] - before[r] for r in after if r != reason and after[r] != before[r]}
    assert not moved, f"other drop reasons moved too: {moved}"
    # nothing was answered: a dropped frame gets no reply (ARP, RST, ICMP error)
    # (ARP traffic of its own, e.g. Linux re-probing its neighbour entry, may happen)
    port_after = target.port(0)
    arp = sum(port_after.get(k, 0) - port_before.get(k, 0) for k in ("arp_replies", "arp_requests"))
    sent = port_after["tx_packets"] - port_before["tx_packets"] - arp
    assert sent == 0, f"target transmitted {sent} packet(s) other than ARP in answer"
    assert port_after["rx_packets"] - port_before["rx_packets"] >= len(frames)
    # and it still works
    target.ping(1)


def test_truncated_ethernet_cannot_cross_a_tap(target, sender):
    """eth_truncated (a frame under 14 bytes) cannot be produced through a Linux TAP:
    the kernel refuses to send it (EINVAL), so it never reaches the target. The
    reason is covered by lib/net's unit tests; here we pin down why it is not."""
    result = sender.send(bytes(eth(target))[:10], raw=True)
    assert result.startswith(f"err {errno.EINVAL}"), result


def test_still_answers_after_bad_input(target, sender):
    burst = [build(target) for _, build in CASES.values()]
    frames = [f for group in burst for f in group]
    before = sum(target.drops().values())
    assert sender.send(*frames) == "ok"
    deadline = time.monotonic() + 3
    while sum(target.drops().values()) < before + len(frames) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(target.drops().values()) == before + len(frames)
    cp = target.ping(3)
    assert "3 received" in cp.stdout, cp.stdout
    # a closed port is still refused
    cp = target.run([PYTHON, "-c", "import socket,sys; s=socket.socket(); s.settimeout(2); "
                     "print(s.connect_ex((sys.argv[1], 8080)))", target.target_ip])
    assert int(cp.stdout) == errno.ECONNREFUSED
    assert target.alive()
