"""chimneyctl (app/chimneyctl, lib/client) against chimneyd and Linux peers:
the command-line tool drives the control socket with the C++ client; the
Linux side's own byte counts and hashes are the judge, as in
test_offload_linux.py.
"""

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, LinuxPeer

MiB = 1 << 20


def chimneyctl_binary() -> Path:
    return Path(os.environ.get("CHIMNEYCTL") or ROOT / "build" / "app" / "chimneyctl" / "chimneyctl")


@pytest.fixture(scope="module")
def ctl():
    path = chimneyctl_binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"chimneyctl not found at {path}: build it with ninja -C build", pytrace=False)
    return str(path)


def run_ctl(ctl, target, *args, timeout=120):
    """chimneyctl against this target's control socket (it runs outside the
    namespace: the socket is a file, the connections are chimneyd's)."""
    argv = [ctl, "--socket", target.control_socket, "--timeout", "30", *map(str, args)]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def fnv1a64(data: bytes) -> str:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def lines(cp, prefix):
    return [l for l in cp.stdout.splitlines() if l.startswith(prefix)]


def fields(line):
    """'sent bytes=1 acked=1 fnv1a64=ab' -> {'bytes': '1', ...}"""
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def test_stats_prints_json(ctl, target):
    cp = run_ctl(ctl, target, "stats")
    assert cp.returncode == 0, cp.stderr
    stats = json.loads(cp.stdout)
    assert stats["sessions"] >= 1  # chimneyctl's own
    assert "connections" in stats and "completions" in stats


def test_send_8MiB_file_graceful(ctl, target, tmp_path):
    """C-6 (each send SUCCESS with its bytes), C-12 (graceful disconnect
    SUCCESS); the Linux side's count and sha256 are the judge."""
    data = os.urandom(8 * MiB + 12345)  # not a multiple of the 1 MiB chunk
    f = tmp_path / "payload.bin"
    f.write_bytes(data)
    linux = LinuxPeer(target, "sink", 7201)
    cp = run_ctl(ctl, target, "send", target.peer_ip, 7201, "--file", f, "--graceful")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    sends = lines(cp, "send ")
    assert len(sends) == 9 and all(l.startswith("send NDIS_STATUS_SUCCESS bytes=") for l in sends), cp.stdout
    assert sum(int(fields(l)["bytes"]) for l in sends) == len(data)
    assert lines(cp, "disconnect ") == ["disconnect NDIS_STATUS_SUCCESS bytes=0"]
    summary = fields(lines(cp, "sent ")[0])
    assert int(summary["bytes"]) == len(data) and int(summary["acked"]) == len(data)
    assert summary["fnv1a64"] == fnv1a64(data)
    got = linux.result()
    assert got["end"] == "eof"
    assert got["bytes"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()


def test_send_bytes_pattern(ctl, target):
    n = 3 * MiB + 7
    linux = LinuxPeer(target, "sink", 7202)
    cp = run_ctl(ctl, target, "send", target.peer_ip, 7202, "--bytes", n, "--chunk", "256K")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    pattern = bytes(i % 251 for i in range(n))
    assert fields(lines(cp, "sent ")[0])["acked"] == str(n)
    got = linux.result()
    assert got["bytes"] == n and got["sha256"] == hashlib.sha256(pattern).hexdigest()


def test_recv_from_a_linux_source(ctl, target, tmp_path):
    """C-9 (receives), C-16 (the peer's FIN ends the transfer as DISCONNECT)."""
    import peer as stream_peer
    total = 8 * MiB + 999
    out = tmp_path / "received.bin"
    linux = LinuxPeer(target, "source", 7203, total)
    cp = run_ctl(ctl, target, "recv", target.peer_ip, 7203, "--output", out)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    expected = stream_peer.stream(total)
    summary = fields(lines(cp, "received ")[0])
    assert int(summary["bytes"]) == total
    assert summary["end"] == "DISCONNECT"
    assert summary["fnv1a64"] == fnv1a64(expected)
    got = linux.result()
    assert got["bytes"] == total
    assert hashlib.sha256(out.read_bytes()).hexdigest() == got["sha256"]
    assert lines(cp, "disconnect ") == ["disconnect NDIS_STATUS_SUCCESS bytes=0"]


def test_recv_stops_after_N_bytes(ctl, target):
    import peer as stream_peer
    linux = LinuxPeer(target, "source", 7204, 4 * MiB)
    cp = run_ctl(ctl, target, "recv", target.peer_ip, 7204, "--bytes", "1M")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    summary = fields(lines(cp, "received ")[0])
    assert int(summary["bytes"]) == MiB
    assert summary["fnv1a64"] == fnv1a64(stream_peer.stream(MiB))
    linux.proc.kill()


def test_abortive_to_a_stalled_reader_resets_the_peer(ctl, target):
    """C-13: outstanding sends REQUEST_ABORTED, the disconnect SUCCESS, the
    peer sees a reset."""
    linux = LinuxPeer(target, "stall", 7205)
    cp = run_ctl(ctl, target, "send", target.peer_ip, 7205, "--bytes", "4M", "--abortive")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert lines(cp, "disconnect ") == ["disconnect NDIS_STATUS_SUCCESS bytes=0"], cp.stdout
    statuses = [l.split()[1] for l in lines(cp, "send ")]
    assert len(statuses) == 4
    assert set(statuses) <= {"NDIS_STATUS_SUCCESS", "NDIS_STATUS_REQUEST_ABORTED"}, statuses
    assert statuses[-1] == "NDIS_STATUS_REQUEST_ABORTED"  # a stalled reader cannot have taken 4 MiB
    assert linux.result()["end"] == "reset"


@pytest.mark.parametrize("args, option", [
    (["send", "198.18.0.1", "7000", "--bytes", "lots"], "--bytes"),
    (["send", "198.18.0.1", "7000"], "--file"),
    (["send", "198.18.0.1", "7000", "--bytes", "1", "--file", "/dev/null"], "--file"),
    (["send", "198.18.0.1", "7000", "--bytes", "1", "--graceful", "--abortive"], "--abortive"),
    (["send", "198.18.0.1", "99999", "--bytes", "1"], "PORT"),
    (["send", "198.18.0.300", "7000", "--bytes", "1"], "IP"),
    (["recv", "198.18.0.1"], "PORT"),
    (["recv", "198.18.0.1", "7000", "--frobnicate"], "--frobnicate"),
    (["recv", "198.18.0.1", "7000", "--chunk", "0"], "--chunk"),
    (["stats", "--verbose"], "--verbose"),
    (["--timeout", "soon", "stats"], "--timeout"),
    (["launch"], "launch"),
])
def test_bad_arguments_exit_2_naming_the_option(ctl, target, args, option):
    cp = run_ctl(ctl, target, *args)
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    err = cp.stderr.strip().splitlines()
    assert len(err) == 1 and option in err[0], cp.stderr
    assert cp.stdout == ""


def test_refused_connect_exits_1_with_the_status(ctl, target):
    # Nobody listens on that port of the Linux peer: it answers the SYN with a RST.
    cp = run_ctl(ctl, target, "send", target.peer_ip, 7299, "--bytes", "1K")
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert re.search(r"^connect NDIS_STATUS_REQUEST_ABORTED ", cp.stdout, re.M), cp.stdout
    assert "NDIS_STATUS_REQUEST_ABORTED" in cp.stderr
    cp = run_ctl(ctl, target, "recv", target.peer_ip, 7299)
    assert cp.returncode == 1 and "connect NDIS_STATUS_REQUEST_ABORTED" in cp.stdout, cp.stdout + cp.stderr


def test_no_control_socket_exits_1(ctl, tmp_path):
    cp = subprocess.run([ctl, "--socket", str(tmp_path / "none.sock"), "stats"], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, timeout=10)
    assert cp.returncode == 1 and "none.sock" in cp.stderr


def test_unreachable_peer_exits_1_with_the_status(ctl, target):
    # Nobody has this address on the TAP's prefix: no ARP answer, no SYN-ACK;
    # the handshake gives up after its retransmissions (about 15 s).
    cp = run_ctl(ctl, target, "send", "198.18.0.77", 7000, "--bytes", "1K")
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert re.search(r"^connect NDIS_STATUS_FAILURE 198\.18\.0\.77:7000$", cp.stdout, re.M), cp.stdout


def test_sessions_leave_no_orphans(ctl, target):
    # chimneyctl TERMINATEs what it connected before it goes: chimneyd has
    # nothing to abort when its session closes.
    stats = json.loads(run_ctl(ctl, target, "stats").stdout)
    assert stats["orphans_aborted"] == 0, stats
    assert stats["connections"] == 0, stats
