"""The wire check itself (wirecheck.py), on captures made with scapy: a clean
conversation passes, and each fault it is there to find is found, in the
frame that has it. No chimneyd and no namespace: only scapy and tshark.
"""

import pytest
from scapy.all import IP, TCP, Ether, Raw, wrpcap

from wirecheck import analyse_pcap

T, P = "198.18.0.2", "198.18.0.1"   # chimney (the target) and the Linux peer
TPORT, PPORT = 49152, 7001
T_ISN, P_ISN = 1000, 50000


def seg(frm, flags, seq, ack, payload=b"", win=512, opts=None, chksum=None):
    src, dst = (T, P) if frm == "T" else (P, T)
    sport, dport = (TPORT, PPORT) if frm == "T" else (PPORT, TPORT)
    tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=win, options=opts or [])
    if chksum is not None:
        tcp.chksum = chksum
    pkt = Ether(src="02:00:00:00:00:02" if frm == "T" else "02:00:c6:12:00:01",
                dst="02:00:c6:12:00:01" if frm == "T" else "02:00:00:00:00:02") / IP(src=src, dst=dst) / tcp
    return pkt / Raw(payload) if payload else pkt


def conversation(mutate=None):
    """chimney opens (wscale 7 both ways), sends 100 bytes, closes first;
    the peer ACKs and closes. `mutate(list)` changes it before it is written."""
    t, p = T_ISN, P_ISN
    frames = [
        seg("T", "S", t, 0, win=65535, opts=[("MSS", 1460), ("WScale", 7)]),
        seg("P", "SA", p, t + 1, win=65535, opts=[("MSS", 1460), ("WScale", 7)]),
        seg("T", "A", t + 1, p + 1, win=512),
        seg("T", "PA", t + 1, p + 1, b"x" * 100, win=512),
        seg("P", "A", p + 1, t + 101, win=512),
        seg("T", "FA", t + 101, p + 1, win=512),
        seg("P", "A", p + 1, t + 102, win=512),
        seg("P", "FA", p + 1, t + 102, win=512),
        seg("T", "A", t + 102, p + 2, win=512),
    ]
    if mutate:
        mutate(frames)
    for i, f in enumerate(frames):
        f.time = 1000.0 + i * 0.01
    return frames


def judge(tmp_path, frames, **allow):
    path = str(tmp_path / "c.pcap")
    wrpcap(path, frames)
    a = analyse_pcap(path, T)
    return a, a.failures(**allow)


def kinds(failures):
    return sorted({f.kind for f in failures})


def test_a_clean_close_has_no_findings_and_its_facts(tmp_path):
    a, failures = judge(tmp_path, conversation())
    assert failures == [], a.report(failures)
    (s,) = a.stream_list()
    assert s.syn_from == "target"
    assert len(s.fins_from_target) == 1 and s.target_fin_acked
    assert len(s.fins_from_peer) == 1 and s.peer_fin_acked
    assert s.bytes_from_target == 100 and s.bytes_from_peer == 0
    assert not s.crossed
    # A FIN is a finding only where the test forbids it.
    assert kinds(a.failures(allow_fin_from_target=False)) == ["fin"]


def test_crossing_fins_are_recognised(tmp_path):
    def cross(fr):
        # The peer's FIN leaves before it ACKed chimney's.
        fr[6:9] = [seg("P", "FA", P_ISN + 1, T_ISN + 101), seg("T", "A", T_ISN + 102, P_ISN + 2),
                   seg("P", "A", P_ISN + 2, T_ISN + 102)]
    a, failures = judge(tmp_path, conversation(cross))
    assert failures == [], a.report(failures)
    (s,) = a.stream_list()
    assert s.crossed and s.target_fin_acked and s.peer_fin_acked


@pytest.mark.parametrize("fault, kind, frame", [
    # chimney's window: edge 1001+512*128 at frame 3, then 1 byte further right at frame 4 is fine,
    # then it moves left.
    (lambda fr: fr.__setitem__(5, seg("T", "FA", T_ISN + 101, P_ISN + 1, win=100)), "window-shrink", 6),
    (lambda fr: fr.__setitem__(3, seg("T", "PA", T_ISN + 1, P_ISN + 1, b"x" * 100, chksum=0x1234)), "checksum", 4),
    (lambda fr: fr.__setitem__(8, seg("T", "A", T_ISN + 102, P_ISN + 500)), "ack-unseen", 9),
    (lambda fr: fr.__setitem__(8, seg("T", "A", T_ISN + 102, P_ISN)), "ack-backwards", 9),
    (lambda fr: fr.insert(6, seg("T", "FA", T_ISN + 102, P_ISN + 1)), "fin-moved", 7),
    (lambda fr: fr.insert(6, seg("T", "PA", T_ISN + 102, P_ISN + 1, b"late")), "data-after-fin", 7),
    (lambda fr: fr.__setitem__(3, seg("T", "PA", T_ISN + 51, P_ISN + 1, b"x" * 50)), "gap", 4),
    (lambda fr: fr[4:5].clear() or fr.insert(4, seg("P", "A", P_ISN + 1, T_ISN + 101, win=1))
     or fr.insert(5, seg("T", "PA", T_ISN + 101, P_ISN + 1, b"y" * 200)), "window-exceeded", 6),
    (lambda fr: fr.insert(9, seg("T", "RA", T_ISN + 102, P_ISN + 2)), "rst", 10),
    (lambda fr: fr.insert(6, seg("T", "RA", T_ISN + 102, P_ISN + 1)), "after-rst", 10),
])
def test_each_fault_is_found_in_its_frame(tmp_path, fault, kind, frame):
    a, failures = judge(tmp_path, conversation(fault), allow_rst_from_target=kind == "after-rst")
    found = [f for f in failures if f.kind == kind]
    assert found, a.report(failures)
    assert found[0].frame.number == frame, a.report(failures)
    assert str(found[0]).startswith(f"#{frame} "), "the report names the frame"


def test_a_malformed_frame_is_found(tmp_path):
    def mutate(fr):
        bad = seg("T", "A", T_ISN + 102, P_ISN + 2)
        raw = bytes(bad)
        # A TCP data offset of 15 words (60 bytes) in a 20-byte header.
        raw = raw[:14 + 20 + 12] + bytes([0xF0 | (raw[14 + 20 + 12] & 0x0F)]) + raw[14 + 20 + 13:]
        fr.append(Ether(raw))
    a, failures = judge(tmp_path, conversation(mutate))
    assert "malformed" in kinds(failures), a.report(failures)
    assert [f.frame.number for f in failures if f.kind == "malformed"] == [10]


def test_rst_allowed_when_the_test_says_so(tmp_path):
    def mutate(fr):
        fr.append(seg("T", "RA", T_ISN + 102, P_ISN + 2))
    a, failures = judge(tmp_path, conversation(mutate), allow_rst_from_target=True)
    assert failures == [], a.report(failures)
    assert len(a.stream_list()[0].rsts_from_target) == 1


def test_zero_window_probes_must_back_off(tmp_path):
    def mutate(fr):
        # The peer closes its window; chimney probes at once, then ever faster.
        del fr[5:]
        fr.append(seg("P", "A", P_ISN + 1, T_ISN + 101, win=0))
        for _ in range(3):
            fr.append(seg("T", "A", T_ISN + 100, P_ISN + 1))
            fr.append(seg("P", "A", P_ISN + 1, T_ISN + 101, win=0))
    a, failures = judge(tmp_path, conversation(mutate))
    assert "zero-window-probe" in kinds(failures), a.report(failures)


def test_a_new_syn_on_the_same_ports_is_a_new_connection(tmp_path):
    def mutate(fr):
        # chimney resets the connection; the peer opens the 4-tuple again.
        fr.append(seg("T", "RA", T_ISN + 102, P_ISN + 2))
        fr.append(seg("P", "S", P_ISN + 70000, 0, win=65535, opts=[("WScale", 7)]))
        fr.append(seg("T", "SA", T_ISN + 90000, P_ISN + 70001, win=65535, opts=[("WScale", 7)]))
        fr.append(seg("P", "A", P_ISN + 70001, T_ISN + 90001))
        fr.append(seg("T", "PA", T_ISN + 90001, P_ISN + 70001, b"again"))
    a, failures = judge(tmp_path, conversation(mutate), allow_rst_from_target=True)
    assert failures == [], a.report(failures)
    first, second = a.stream_list()
    assert first.syn_from == "target" and len(first.rsts_from_target) == 1
    assert second.syn_from == "peer" and second.bytes_from_target == 5 and not second.rsts_from_target
