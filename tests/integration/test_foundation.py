"""The target's foundation: ARP, ICMP echo, RST for unknown flows, telemetry,
signals, shutdown and option errors, each against a Linux peer over the TAP."""

import errno
import json
import re
import signal
import time

import pytest

from conftest import PYTHON, ROOT

DROP_REASONS = [
    "eth_truncated", "eth_not_for_us", "eth_unsupported_type", "headers_not_contiguous",
    "arp_truncated", "arp_unsupported", "arp_not_for_us", "ip_truncated", "ip_bad_version",
    "ip_bad_ihl", "ip_bad_total_length", "ip_bad_checksum", "ip_options", "ip_fragment",
    "ip_not_for_us", "ip_bad_source", "ip_unsupported_proto", "icmp_truncated",
    "icmp_bad_checksum", "icmp_unsupported", "tcp_truncated", "tcp_bad_data_offset",
    "tcp_bad_checksum", "tcp_bad_option", "tcp_rst_no_connection", "slowpath_ring_full",
    "neighbour_unresolved", "tx_full", "no_mbuf",
]
PORT_KEYS = {"name", "kind", "mac", "address", "rx_packets", "rx_bytes", "tx_packets",
             "tx_bytes", "rx_missed", "rx_errors", "tx_errors"}
LCORE_KEYS = {"rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "to_slowpath", "drops"}


# ---------------------------------------------------------------- ARP, ICMP


def test_ping_is_answered(target):
    """ICMP echo (RFC 792; RFC 1122 §3.2.2.6): one reply per request, no duplicates."""
    cp = target.run(["ping", "-n", "-c", "3", "-W", "1", "-i", "0.2", target.target_ip],
                    check=False, timeout=15)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert re.search(r"\b3 packets transmitted, 3 received\b", cp.stdout), cp.stdout
    # one reply per request, no duplicates
    assert "DUP" not in cp.stdout


def test_linux_arp_entry_has_the_target_mac(target):
    """ARP (RFC 826): the Linux peer resolves the target's address to the port's MAC."""
    target.ping(1)
    out = target.run(["ip", "neigh", "show", target.target_ip, "dev", target.iface]).stdout
    m = re.search(r"lladdr ([0-9a-f:]{17})", out)
    assert m, f"no neighbour entry for {target.target_ip}: {out!r}"
    assert "FAILED" not in out and "INCOMPLETE" not in out, out
    assert m.group(1).lower() == target.mac
    # the peer has a MAC of its own: the entry cannot be right by accident
    assert target.mac != target.peer_mac.lower()


# ---------------------------------------------------------------- TCP to closed ports

CONNECT_SNIPPET = r"""
import errno, json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
t0 = time.monotonic()
rc = s.connect_ex((sys.argv[1], int(sys.argv[2])))
print(json.dumps({"errno": rc, "name": errno.errorcode.get(rc, str(rc)),
                  "seconds": time.monotonic() - t0}))
"""


def test_connect_to_closed_port_is_refused_at_once(target):
    """RFC 9293 §3.10.7.1 (CLOSED): a SYN for no connection is answered with
    a RST, so a Linux connect() fails with ECONNREFUSED at once."""
    target.ping(1)  # resolve ARP first: the second connect must not wait for it
    for port in (8080, 9):
        cp = target.run([PYTHON, "-c", CONNECT_SNIPPET, target.target_ip, str(port)], timeout=15)
        result = json.loads(cp.stdout)
        assert result["errno"] == errno.ECONNREFUSED, result
        assert result["seconds"] < 1.0, result


SYN_SNIPPET = r"""
import json, sys
from scapy.all import Ether, IP, TCP, conf, srp1
conf.verb = 0
iface, dst_mac, src_mac, src, dst, sport, dport, seq = sys.argv[1:9]
syn = (Ether(dst=dst_mac, src=src_mac) /
       IP(src=src, dst=dst) /
       TCP(sport=int(sport), dport=int(dport), flags="S", seq=int(seq), window=64240,
           options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]))
ans = srp1(syn, iface=iface, timeout=2, verbose=0)
if ans is None or TCP not in ans:
    print(json.dumps(None))
else:
    t = ans[TCP]
    print(json.dumps({"flags": str(t.flags), "seq": t.seq, "ack": t.ack, "sport": t.sport,
                      "dport": t.dport, "src": ans[IP].src, "dst": ans[IP].dst,
                      "payload": len(bytes(t.payload)), "eth_src": ans[Ether].src,
                      "eth_dst": ans[Ether].dst}))
"""


def test_syn_to_closed_port_gets_rst_ack(target):
    """RFC 9293 §3.10.7.1: a SYN without ACK for no connection gets
    <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, counted in rst_sent."""
    target.ping(1)
    before = target.port(0)
    seq = 0x12345678
    cp = target.run([PYTHON, "-c", SYN_SNIPPET, target.iface, target.mac, target.peer_mac,
                     target.peer_ip, target.target_ip, "40001", "7777", str(seq)], timeout=30)
    reply = json.loads(cp.stdout.strip().splitlines()[-1])
    assert reply is not None, f"no answer to a SYN for a closed port; stderr: {cp.stderr}"
    # RFC 9293 §3.10.7.1: no ACK in the SYN -> <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    assert reply["flags"] == "RA", reply
    assert reply["ack"] == seq + 1, reply
    assert reply["seq"] == 0, reply
    assert (reply["sport"], reply["dport"]) == (7777, 40001), reply
    assert (reply["src"], reply["dst"]) == (target.target_ip, target.peer_ip), reply
    assert reply["eth_src"].lower() == target.mac
    assert reply["eth_dst"].lower() == target.peer_mac.lower()
    assert reply["payload"] == 0, reply
    after = target.port(0)
    assert after["rst_sent"] >= before["rst_sent"] + 1, (before, after)


# ---------------------------------------------------------------- telemetry


def test_telemetry_lists_the_chimney_commands(target):
    commands = target.telemetry("/")
    for c in ("/chimney/ports", "/chimney/port", "/chimney/lcores", "/chimney/lcore",
              "/chimney/drops"):
        assert c in commands, commands


def test_telemetry_ports_lcores_and_drops(target):
    assert target.telemetry("/chimney/ports") == [0]
    port = target.port(0)
    assert PORT_KEYS <= set(port), sorted(PORT_KEYS - set(port))
    assert port["kind"] == "tap"
    assert port["address"] == f"{target.target_ip}/{target.prefix_len}"
    assert re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", port["mac"]), port["mac"]
    lcores = target.telemetry("/chimney/lcores")
    assert isinstance(lcores, list) and len(lcores) >= 2, lcores  # main + a worker
    for lcore in lcores:
        info = target.telemetry(f"/chimney/lcore,{lcore}")
        assert LCORE_KEYS <= set(info), (lcore, sorted(LCORE_KEYS - set(info)))
        assert set(DROP_REASONS) <= set(info["drops"]), sorted(set(DROP_REASONS) - set(info["drops"]))
    drops = target.drops()
    assert set(DROP_REASONS) <= set(drops), sorted(set(DROP_REASONS) - set(drops))
    # bad parameters answer null rather than something made up
    assert target.telemetry("/chimney/port,99") is None
    assert target.telemetry("/chimney/lcore,999") is None


def _lcore_totals(target):
    totals = {"rx_packets": 0, "tx_packets": 0, "rx_bytes": 0, "tx_bytes": 0}
    for lcore in target.telemetry("/chimney/lcores"):
        info = target.telemetry(f"/chimney/lcore,{lcore}")
        for k in totals:
            totals[k] += info[k]
    return totals


def test_counters_rise_with_traffic(target):
    target.ping(1)
    port0, lc0 = target.port(0), _lcore_totals(target)
    target.ping(3)
    port1, lc1 = target.port(0), _lcore_totals(target)
    for k in ("rx_packets", "tx_packets"):
        assert port1[k] >= port0[k] + 3, (k, port0[k], port1[k])
        assert lc1[k] >= lc0[k] + 3, (k, lc0[k], lc1[k])
    for k in ("rx_bytes", "tx_bytes"):
        assert port1[k] >= port0[k] + 3 * 98, (k, port0[k], port1[k])  # 14+20+8+56 per echo
    if "icmp_echo_replies" in port1:
        assert port1["icmp_echo_replies"] >= port0["icmp_echo_replies"] + 3
    assert port1["rx_errors"] == 0 and port1["tx_errors"] == 0, port1


# ---------------------------------------------------------------- signals, shutdown


def test_sigusr1_logs_the_counters(target):
    target.ping(2)
    start = len(target.log())
    target.signal(signal.SIGUSR1)
    m = target.wait_for_log(r"port 0 [^\n]*rx (\d+) pkts", timeout=5, start=start)
    assert int(m.group(1)) >= 2
    target.wait_for_log(r"lcore \d+ [^\n]*rx \d+ pkts", timeout=5, start=start)
    assert target.alive(), "SIGUSR1 must not stop chimneyd"
    target.ping(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(fresh_target, sig):
    t = fresh_target
    t.ping(1)
    assert t.iface_exists()
    t0 = time.monotonic()
    t.signal(sig)
    rc = t.process.wait(10)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit code {rc}"
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    assert not t.iface_exists(), f"{t.iface} still in {t.netns} after chimneyd exited"
    log = t.log()
    assert re.search(r"port 0 \S+ stopped", log), "no 'port 0 ... stopped' line in the log"
    assert re.search(r"\] stopped\s*$", log), "log does not end with 'stopped'"
    assert "[error]" not in log.split("chimneyd ready", 1)[1], "errors logged after ready"


# ---------------------------------------------------------------- options


def run_chimneyd(ns, chimneyd, *args, timeout=20):
    """Runs chimneyd with ``args`` in a scratch namespace; if it did start, it does no harm."""
    return ns.run([chimneyd, *args], timeout=timeout, cwd=str(ROOT))


EAL = ["--file-prefix", "ctest-badopt"]  # used only if chimneyd wrongly went on to start


@pytest.mark.parametrize("args,option", [
    (EAL + ["--", "--port", "kind=bogus"], "port"),
    (EAL + ["--", "--port", "kind=tap,address=198.18.0.2/24,mtu=12"], "port"),
    (EAL + ["--", "--log-level", "loud"], "log-level"),
    (EAL + ["--", "--idle-sleep-us", "banana"], "idle-sleep-us"),
    (EAL + ["--", "--idle-sleep-us", "200000"], "idle-sleep-us"),
    (EAL + ["--", "--no-such-option"], "no-such-option"),
    (["--no-such-option"], "no-such-option"),  # without `--` every argument is chimneyd's
    (EAL + ["--", "--config", "/nonexistent/chimney.conf"], "config"),
], ids=["port-kind", "port-mtu", "log-level", "idle-sleep-us-text", "idle-sleep-us-range",
        "unknown-option", "unknown-option-no-eal", "config-missing"])
def test_bad_option_exits_2_naming_it(scratch_netns, chimneyd, args, option):
    cp = run_chimneyd(scratch_netns, chimneyd, *args)
    assert cp.returncode == 2, f"exit {cp.returncode}; stderr: {cp.stderr!r}"
    lines = [line for line in cp.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one error line, got: {cp.stderr!r}"
    assert option in lines[0], f"error line does not name --{option}: {lines[0]!r}"
    assert "ready" not in cp.stdout + cp.stderr


def test_help_exits_0_and_lists_options(scratch_netns, chimneyd):
    cp = run_chimneyd(scratch_netns, chimneyd, "--help")
    assert cp.returncode == 0, cp.stderr
    for option in ("--config", "--port", "--log-level", "--idle-sleep-us"):
        assert option in cp.stdout, f"{option} missing from --help"
