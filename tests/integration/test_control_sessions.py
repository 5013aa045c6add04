"""Sessions that go away (issue 4): a lost session's connections wait
control-grace-s for a session of the same uid to ATTACH and collect the
completions queued meanwhile; nobody attaching means abort (RST) and release.
"""

import hashlib
import time

from chimney import protocol as p
from chimney.protocol import MsgType as T
from test_control_bad_input import E, LinuxPeer, Raw, expect_error, wait_until

import peer as stream_peer

MiB = 1 << 20


def detached(t, n):
    with Raw(t.control_socket) as o:
        return o.still_works()["sessions_detached"] == n


def test_a_lost_session_is_re_attached_and_collects_its_completions(fresh):
    """docs/CONTROL_PROTOCOL.md, Sessions: ATTACH within control-grace-s takes
    over handles and regions; the SEND that completed meanwhile is delivered
    then, with its tag (C-6: SUCCESS with all its bytes)."""
    with fresh("--control-grace-s", "30") as t:
        linux = LinuxPeer(t, "gated-sink", 7401)
        a = Raw(t.control_socket)
        region, mem = a.register(MiB)
        data = stream_peer.stream(MiB)
        mem[:] = data
        h = a.connect(t.peer_ip, 7401)
        send_tag = a.send(p.Send(h, p.BufferRef(region, 0, MiB)))
        session = a.session
        a.sock.close()  # the host's socket goes; its mapping stays (same process)
        wait_until("the session detached", lambda: detached(t, 1), 5)
        linux.gate()  # the peer reads now: the SEND completes while nobody listens
        time.sleep(0.5)
        b = Raw(t.control_socket)
        try:
            m = b.call(p.Attach(session))
            assert m.type == T.ATTACHED, m
            assert m.body.connections == 1 and m.body.regions == 1, m
            c = b.reply(send_tag, timeout=10)  # queued while detached, same tag
            assert c.type == T.SEND_COMPLETE, c
            assert c.body.status == p.STATUS_SUCCESS and c.body.bytes_transferred == MiB, c
            d = b.call(p.Disconnect(h, 0, p.BufferRef(region, 0, 0)), timeout=10)
            assert d.type == T.DISCONNECT_COMPLETE and d.body.status == p.STATUS_SUCCESS, d
            got = linux.result()
            assert got["bytes"] == MiB and got["sha256"] == hashlib.sha256(data).hexdigest(), got
            stats = b.still_works()
            assert stats["sessions_attached"] == 1 and stats["orphans_aborted"] == 0, stats
        finally:
            b.close()
            for mp in a.maps:
                mp.close()


def test_attach_needs_a_detached_session_of_the_same_uid(fresh):
    with fresh("--control-grace-s", "30") as t:
        with Raw(t.control_socket) as live, Raw(t.control_socket) as other:
            # A live session cannot be taken over, nor one that does not exist.
            expect_error(other.reply(other.send(p.Attach(live.session))), other.tag() - 1, E.NOT_ALLOWED,
                         "ATTACH", "no detached session")
            tag = other.send(p.Attach(987654))
            expect_error(other.reply(tag), tag, E.NOT_ALLOWED, "no detached session 987654")
            live.still_works()


def test_nobody_attaching_aborts_after_the_grace_period(fresh):
    """Nobody attaching within control-grace-s: each connection is aborted
    (RST, as in C-13) and released (orphans_aborted)."""
    with fresh("--control-grace-s", "1") as t:
        linux = LinuxPeer(t, "stall", 7402)
        a = Raw(t.control_socket)
        region, mem = a.register(MiB)
        h = a.connect(t.peer_ip, 7402)
        a.send(p.Send(h, p.BufferRef(region, 0, MiB)))
        a.close()
        got = linux.result(timeout=15)
        assert got["end"] == "reset", got
        with Raw(t.control_socket) as o:
            s = wait_until("released", lambda: (lambda st: st if st["connections"] == 0 else None)(o.still_works()), 5)
            assert s["sessions_detached"] == 1 and s["orphans_aborted"] == 1, s
