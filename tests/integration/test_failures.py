"""Failures around an offloaded connection (issue 5, "Faults"): the peer
vanishes mid-transfer, or the host is killed mid-transfer. The contract's
answer is checked, and nothing may leak: the connection table and every pool
return to their baseline (read from STATS by a session of its own).
"""
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import PYTHON, LinuxCtl, LinuxPeer, pools, send_stream, wait_until
import peer as stream_peer

from chimney.client import ChimneyError, Target, region_memfd

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
HOST = os.path.join(HERE, "host_stream.py")
SUCCESS = "NDIS_STATUS_SUCCESS"


def settle(observer, baseline, timeout=15.0):
    """Waits until no connection is left and every pool is back at `baseline`."""
    deadline = time.monotonic() + timeout
    while True:
        s = observer.stats()
        if s["connections"] == 0 and pools(s) == baseline:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s: connections {s['connections']}, pools {pools(s)}, "
                                 f"baseline {baseline}")
        time.sleep(0.1)


@contextlib.contextmanager
def host_process(*args, **popen):
    """host_stream.py as a process of its own (the host the tests kill),
    killed by PID and reaped on the way out if it still runs."""
    host = subprocess.Popen([PYTHON, HOST, *map(str, args)], stdout=subprocess.PIPE, text=True, **popen)
    try:
        yield host
    finally:
        if host.poll() is None:
            host.kill()
        host.wait(10)


def kill(host):
    host.send_signal(signal.SIGKILL)
    assert host.wait(10) == -signal.SIGKILL


def test_peer_gone_mid_transfer_raises_retrieve_timeout_and_leaks_nothing(fresh):
    """C-18: the Linux side's link goes down in the middle of a transfer; the
    retransmission limit (max_retransmissions from the cached state) raises
    RETRIEVE(TimeoutExpiration). The host terminates (C-21): every send
    completes exactly once, SUCCESS up to what was ACKed and handed back in
    order (UPLOAD_IN_PROGRESS) after it."""
    with fresh() as ns:
        t = ns.target
        baseline = pools(t.stats())
        linux = LinuxPeer(ns, "sink", 7201)
        conn = t.connect(ns.peer_ip, 7201, max_retransmissions=4, initial_rcv_wnd=4 * MiB)
        sends = [conn.send(stream_peer.stream(MiB, i * MiB)) for i in range(8)]
        assert sends[0].wait(30).status == "NDIS_STATUS_SUCCESS"
        more = [conn.send(stream_peer.stream(MiB, (8 + i) * MiB)) for i in range(8)]
        ns.run(["ip", "link", "set", "dev", ns.iface, "down"])  # the peer is gone
        started = time.monotonic()
        # The 16 MiB before may all be ACKed by now (they take a few ms): these cannot be.
        more += [conn.send(stream_peer.stream(MiB, (16 + i) * MiB)) for i in range(4)]
        ev = t.next_event(60)
        while ev.kind in ("SEND_BACKLOG_CHANGE", "RECEIVE_READY"):
            ev = t.next_event(60)
        assert (ev.kind, ev.reason) == ("RETRIEVE", "TimeoutExpiration"), ev
        # 4 retransmissions with backoff from an RTO of at least 200 ms.
        assert time.monotonic() - started >= 0.2 + 0.4 + 0.8 + 1.6, "too early for the limit"
        state = conn.terminate()
        done = [r.wait(10) for r in sends + more]
        statuses = [c.status for c in done]
        assert set(statuses) <= {"NDIS_STATUS_SUCCESS", "NDIS_STATUS_UPLOAD_IN_PROGRESS"}, statuses
        assert "NDIS_STATUS_UPLOAD_IN_PROGRESS" in statuses, "data was outstanding when the link went"
        first = statuses.index("NDIS_STATUS_UPLOAD_IN_PROGRESS")
        assert all(s == "NDIS_STATUS_UPLOAD_IN_PROGRESS" for s in statuses[first:]), "returned in order"
        assert all(c.returned for c in done[first:])
        assert state["snd_una"] != state["snd_max"]
        settle(t, baseline)
        linux.proc.kill()


def test_host_killed_mid_transfer_connections_aborted_after_grace_nothing_leaks(fresh):
    """The host process is SIGKILLed while 8 MiB of its sends are in flight.
    Its session is detached for control-grace-s; nobody ATTACHes, so its
    connection is aborted (RST: the Linux peer sees ECONNRESET) and released,
    and its memory and every pool return to the baseline."""
    with fresh("--control-grace-s", "2") as ns:
        with Target(ns.control_socket) as observer:
            baseline = pools(observer.stats())
            linux = LinuxPeer(ns, "sink", 7202)
            with host_process(ns.control_socket, ns.peer_ip, 7202) as host:
                assert host.stdout.readline().strip() == "streaming"
                time.sleep(0.3)
                s = observer.stats()
                assert s["sessions"] == 2 and s["connections"] == 1, s
                kill(host)
            got = linux.result(timeout=30)
            assert got["end"] == "reset" and got["bytes"] > 0, got
            s = settle(observer, baseline)
            assert s["sessions_detached"] == 1 and s["orphans_aborted"] == 1, s
            assert s["sessions"] == 1, s


def test_host_killed_mid_transfer_new_host_re_attaches_and_finishes(fresh):
    """C-12 (with C-6, C-9 and docs/CONTROL_PROTOCOL.md "Sessions"): the host
    process is SIGKILLed with 8 MiB of sends in flight (the Linux peer has
    stopped reading) and 4 receives posted. While nobody is attached the peer
    reads again and sends, so every request the dead host left completes and
    its completion waits in the detached session. A new host takes the session
    over within control-grace-s (Target.attach with the dead host's resume
    state and its region's memfd, which the test kept) and gets each of them
    exactly once with its tag: the sends SUCCESS with all their bytes (C-6),
    the receives with the first bytes the peer sent, in order (C-9). The new
    host receives the rest of the peer's data (sha256 checked on the host
    side), sends the rest of the stream and disconnects gracefully with final
    data: SUCCESS with exactly that many bytes (C-12); the Linux side got the
    whole stream (sha256). After the peer's FIN and a terminate, the
    connection table and every pool are back at the baseline, and nothing was
    aborted."""
    phase1, later, received, final = 16 * MiB, 8 * MiB, MiB + 12345, 100003
    with fresh("--control-grace-s", "60") as ns, Target(ns.control_socket) as observer:
        baseline = pools(observer.stats())
        linux = LinuxCtl(ns, "ctl", 7203, "--rcvbuf", 131072)
        region = region_memfd(64 * MiB)
        try:
            with host_process(ns.control_socket, ns.peer_ip, 7203, "--region-fd", region, phase1,
                              stdin=subprocess.PIPE, pass_fds=(region,)) as host:
                assert host.stdout.readline().strip() == "streaming"
                assert linux.accepted()["event"] == "accepted"
                assert json.loads(host.stdout.readline()) == {"phase1": phase1}
                linux.cmd("read off")
                host.stdin.write("go\n")
                host.stdin.flush()
                line = host.stdout.readline()
                assert line, f"the host ended ({host.wait(10)}) instead of printing its state"
                dead = json.loads(line)
                completed_before = observer.stats()["completions"]
                kill(host)
            state, posted = dead["state"], dead["posted"]
            assert posted == phase1 + later, dead
            (handle,) = [c["handle"] for c in state["connections"]]
            sends = [r for r in state["requests"] if r["kind"] == "send"]
            receives = [r for r in state["requests"] if r["kind"] == "receive"]
            assert len(receives) == 4 and len(sends) + len(receives) == len(state["requests"]), state
            assert sum(r["length"] for r in sends) >= 4 * MiB, f"not mid-transfer: {sends}"
            wait_until("the dead host's session detached",
                       lambda: observer.stats()["sessions_detached"] == 1, 10)

            # While nobody is attached: the peer reads again (the sends
            # complete) and sends; the posted receives fill, the rest waits in
            # the target.
            linux.cmd("read on")
            linux.cmd(f"send {received}")
            got = linux.cmd(f"wait-bytes {posted} 60")
            assert got["rx"] == posted and not got["timed_out"], got
            wait_until("chimney ACKed the peer's data",
                       lambda: linux.cmd("status")["bytes_acked"] >= received, 10)
            # Every request the dead host left completed while nobody was
            # attached: their completions wait in the detached session.
            wait_until("the dead host's requests completed",
                       lambda: observer.stats()["completions"] - completed_before == len(state["requests"]), 10)
            s = observer.stats()
            assert s["sessions"] == 2 and s["connections"] == 1 and s["orphans_aborted"] == 0, s

            with Target.attach(ns.control_socket, state, region_fd=region) as t:
                assert t.session == state["session"]
                assert (t.attached.connections, t.attached.regions) == (1, 1), t.attached
                (conn,) = t.connections
                assert conn.handle == handle
                assert [r.tag for r in t.inherited] == [r["tag"] for r in state["requests"]]
                for r in t.inherited:
                    c = r.wait(30)
                    assert c.status == SUCCESS, (r, c)
                    if r.kind == "send":
                        assert c.bytes_transferred == r.data_length, (r, c)
                    else:
                        assert 0 < c.bytes_transferred == len(c.data) <= r.data_length, (r, c)
                host_got = b"".join(r.completion.data for r in t.inherited if r.kind == "receive")
                # What the posted receives could not take waits in the target
                # (C-10); its RECEIVE_READY came to the new session.
                ev = t.next_event(10)
                while ev.kind == "SEND_BACKLOG_CHANGE":
                    ev = t.next_event(10)
                assert (ev.kind, ev.conn) == ("RECEIVE_READY", conn), ev
                assert 0 < ev.value <= received - len(host_got), (ev, len(host_got))
                while len(host_got) < received:
                    c = conn.post_receive(256 << 10).wait(30)
                    assert c.status == SUCCESS and c.data, c
                    host_got += c.data
                assert hashlib.sha256(host_got).hexdigest() == \
                    hashlib.sha256(stream_peer.stream(received)).hexdigest()

                # The new host finishes the transfer where the dead one stopped.
                rest = 8 * MiB
                assert send_stream(conn, rest, start=posted) == rest
                data = stream_peer.stream(final, posted + rest)
                d = conn.disconnect(graceful=True, data=data).wait(30)
                assert (d.status, d.bytes_transferred) == (SUCCESS, final), d
                total = posted + rest + final
                got = linux.cmd("wait-eof 30")
                assert got["eof"] and got["rx"] == total, got
                assert got["rx_sha256"] == hashlib.sha256(stream_peer.stream(total)).hexdigest(), got

                linux.cmd("shutdown")
                ev = t.next_event(30)
                while ev.kind in ("SEND_BACKLOG_CHANGE", "RECEIVE_READY"):
                    ev = t.next_event(30)
                assert (ev.kind, ev.conn) == ("DISCONNECT", conn), ev
                done = conn.terminate()
                assert done["send_data"] == [] and done["receive_data"] == b"", done
                # Every completion found its request: none came twice or for
                # a tag nobody posted.
                assert t.unclaimed == [] and t.unsolicited_errors == [], (t.unclaimed, t.unsolicited_errors)
                s = settle(observer, baseline)
                assert (s["sessions_detached"], s["sessions_attached"], s["orphans_aborted"]) == (1, 1, 0), s
            wait_until("the new host's session closed", lambda: observer.stats()["sessions"] == 1, 10)
            linux.quit()
        finally:
            os.close(region)


def test_attach_bad_input_is_a_clear_error(fresh):
    """Target.attach: a malformed state or region fails before anything is
    sent, a session that is not detached (live, unknown) is NOT_ALLOWED; each
    answer comes at once, and nothing is taken over."""
    with fresh("--control-grace-s", "30") as ns, Target(ns.control_socket) as live:
        bad = [
            ({"session": 0}, None, "'session' must be an integer"),
            ({"connections": []}, None, "no 'session'"),
            ("7", None, "Target.resume_state() or a session id"),
            ({"session": 5, "bogus": 1}, None, "unknown key(s) 'bogus'"),
            ({"session": 5, "connections": [{"handle": 1}, {"handle": 1}]}, None, "named twice"),
            ({"session": 5, "connections": [{"handle": 1}],
              "requests": [{"tag": 3, "handle": 2, "kind": "send"}]}, None, "which 'connections' does not name"),
            ({"session": 5, "connections": [{"handle": 1}],
              "requests": [{"tag": 3, "handle": 1, "kind": "read"}]}, None, "kind must be"),
            ({"session": 5, "next_tag": 3, "connections": [{"handle": 1}],
              "requests": [{"tag": 3, "handle": 1, "kind": "send"}]}, None, "not above every request's tag"),
            ({"session": 5}, "fd", "needs the state's 'region'"),
            ({"session": 5, "region": {"id": 1, "size": 2 * MiB}}, "fd", "smaller than the region's"),
            ({"session": 5, "region": {"id": 1, "size": MiB}, "connections": [{"handle": 1}],
              "requests": [{"tag": 3, "handle": 1, "kind": "receive", "region": 1, "offset": MiB - 64,
                            "length": 128}]}, "fd", "lies outside"),
            ({"session": 5, "region": {"id": 1, "size": MiB}}, -1, "region_fd -1"),
            (987654, None, "no detached session 987654"),
            (live.session, None, "no detached session"),
        ]
        fd = region_memfd(MiB)
        try:
            for state, region, text in bad:
                started = time.monotonic()
                with pytest.raises(ChimneyError) as e:
                    Target.attach(ns.control_socket, state, timeout=5,
                                  region_fd=fd if region == "fd" else region)
                assert text in str(e.value), (state, str(e.value))
                if "no detached session" in text:
                    assert e.value.status == "NOT_ALLOWED", e.value
                assert time.monotonic() - started < 2, (state, "slow")
        finally:
            os.close(fd)
        s = live.stats()
        assert s["sessions_attached"] == 0 and s["connections"] == 0, s
        wait_until("the refused sessions closed", lambda: live.stats()["sessions"] == 1, 5)


def test_attach_without_the_dead_hosts_memory(fresh):
    """Target.attach without region_fd (docs/CLIENT.md): the receive the dead
    host left completes in the new session with its count (C-9) but no data
    (its bytes are in memory only chimneyd maps); new requests use a region
    the new session registers, and work."""
    with fresh("--control-grace-s", "30") as ns, Target(ns.control_socket) as observer:
        baseline = pools(observer.stats())
        linux = LinuxCtl(ns, "ctl", 7204)
        dead = Target(ns.control_socket, region_size=MiB)
        conn = dead.connect(ns.peer_ip, 7204)
        assert linux.accepted()["event"] == "accepted"
        conn.post_receive(4096)
        state = dead.resume_state()
        completed_before = observer.stats()["completions"]
        dead.close()  # its socket ends as when the process dies, and its mapping goes
        wait_until("detached", lambda: observer.stats()["sessions_detached"] == 1, 10)
        linux.cmd("send 1000")
        wait_until("the receive completed", lambda: observer.stats()["completions"] == completed_before + 1, 10)
        with Target.attach(ns.control_socket, state, region_size=MiB) as t:
            (r,) = t.inherited
            c = r.wait(10)
            assert (c.status, c.bytes_transferred, c.data) == (SUCCESS, 1000, None), c
            assert t.region != state["region"]["id"] and t.attached.regions == 1, (t.region, t.attached)
            (conn,) = t.connections
            data = stream_peer.stream(5000, 1000)
            c = conn.send(data).wait(10)
            assert (c.status, c.bytes_transferred) == (SUCCESS, 5000), c
            got = linux.cmd("wait-bytes 5000")
            assert got["rx"] == 5000 and got["rx_sha256"] == hashlib.sha256(data).hexdigest(), got
            conn.terminate()
            assert t.unclaimed == [], t.unclaimed
            settle(observer, baseline)
        linux.quit()
