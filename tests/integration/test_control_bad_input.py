"""The control socket against bad input (docs/CONTROL_PROTOCOL.md): what a host
sends that chimneyd cannot accept gets ERROR with the request's tag and a text
naming the problem; a stream that cannot be resynchronised (bad length) ends
that session only; every other session and connection carries on.

Messages are written here as bytes on a bare Unix socket (valid ones built with
chimney.protocol, broken ones with struct); the Python client is used where a
whole transfer is needed. Linux peers (peer.py) run inside the test's namespace
and judge what reached the wire.
"""

import hashlib
import fcntl
import json
import mmap
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import POOLS, PYTHON, ROOT, LinuxPeer, pools, send_stream, wait_until
from chimney import protocol as p
from chimney.client import ChimneyError, Target as Client

import peer as stream_peer

MiB = 1 << 20
E = p.ProtocolError
T = p.MsgType
HEADER = struct.Struct("<IHHQ")


# ---------------------------------------------------------------------------
# helpers



def sealed_memfd(name, size):
    """A memfd as a host must register it: sealed against shrinking."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    return fd

class Raw:
    """One control session over a bare socket: bytes out, decoded messages in.
    Messages of tag 0 (EVENT, ACCEPT) are kept aside in `unsolicited`."""

    def __init__(self, path, hello=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buf = b""
        self.eof = False
        self.unsolicited = []
        self.pending = []  # decoded, not yet taken
        self.next_tag = 1000
        self.maps = []
        if hello:
            r = self.call(p.Hello(p.VERSION))
            assert r.type == T.HELLO_REPLY and r.body.server_version == p.VERSION, r
            self.session = r.body.session

    def close(self):
        self.sock.close()
        for m in self.maps:
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tag(self):
        self.next_tag += 1
        return self.next_tag

    def write(self, data, fds=()):
        if fds:
            sent = socket.send_fds(self.sock, [data], list(fds))
            if sent < len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)

    def send(self, body, tag=None, fds=()):
        tag = self.tag() if tag is None else tag
        self.write(p.encode(p.Message(None, tag, body)), fds)
        return tag

    def _read(self, timeout):
        """One more decoded message (None at EOF); TimeoutError if none in time."""
        deadline = time.monotonic() + timeout
        while True:
            n = p.message_length(self.buf)
            if n is not None and len(self.buf) >= n:
                m = p.decode(self.buf[:n])
                self.buf = self.buf[n:]
                return m
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message from chimneyd within {timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                raise TimeoutError(f"no message from chimneyd within {timeout} s") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk

    def reply(self, tag, timeout=5):
        """The next message with this tag (others are kept for later)."""
        for i, m in enumerate(self.pending):
            if m.tag == tag:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(max(0.0, deadline - time.monotonic()))
            if m is None:
                raise EOFError(f"chimneyd closed the session before answering tag {tag}")
            if m.tag == tag:
                return m
            if m.tag == 0 and m.type in (T.EVENT, T.ACCEPT):
                self.unsolicited.append(m)
            else:
                self.pending.append(m)

    def call(self, body, fds=(), timeout=5):
        return self.reply(self.send(body, fds=fds), timeout)

    def error(self, body, code, *words, fds=(), timeout=5):
        """Sends `body`; asserts the answer is ERROR(code) with the request's tag
        and a text containing every one of `words`; returns the text."""
        tag = self.send(body, fds=fds)
        return expect_error(self.reply(tag, timeout), tag, code, *words)

    def next_message(self, timeout=5):
        if self.pending:
            return self.pending.pop(0)
        return self._read(timeout)

    def quiet(self, seconds):
        """Asserts nothing arrives for `seconds`."""
        try:
            m = self._read(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"chimneyd answered {m} where it should wait for more bytes")

    def ended(self, timeout=5):
        """Reads until EOF; returns the messages that came before it."""
        out = list(self.pending)
        self.pending.clear()
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(max(0.0, deadline - time.monotonic()))
            if m is None:
                return out
            out.append(m)

    def still_works(self):
        r = self.call(p.Stats())
        assert r.type == T.STATS_REPLY, r
        return json.loads(r.body.json)

    def register(self, size, memfd_size=None):
        """A memfd region: (region id, its mapping)."""
        fd = sealed_memfd("chimney-test", size if memfd_size is None else memfd_size)
        try:
            r = self.call(p.RegisterMemory(size), fds=[fd])
            assert r.type == T.REGISTERED, r
            m = mmap.mmap(fd, size)
            self.maps.append(m)
            return r.body.region, m
        finally:
            os.close(fd)

    def connect(self, ip, port, timeout=10):
        r = self.call(p.Connect(ip_int(ip), port, 0, p.CachedState()), timeout=timeout)
        assert r.type == T.OFFLOAD_COMPLETE and r.body.status == p.STATUS_SUCCESS, r
        return r.body.handle


def expect_error(m, tag, code, *words):
    assert m.type == T.ERROR, f"expected ERROR for tag {tag}, got {m}"
    assert m.tag == tag, f"ERROR carries tag {m.tag}, the request's was {tag}: {m.body.text!r}"
    assert m.body.code == code, f"ERROR code {m.body.code:#x}, expected {code:#x}: {m.body.text!r}"
    for w in words:
        assert w in m.body.text, f"ERROR text {m.body.text!r} does not name {w!r}"
    return m.body.text


def ip_int(ip):
    return int.from_bytes(socket.inet_aton(ip), "big")


def header(length, mtype, tag, version=p.VERSION):
    return HEADER.pack(length, version, mtype, tag)


def frame(mtype, tag, body, version=p.VERSION):
    """A message with any type and body (the length is right)."""
    return header(16 + len(body), mtype, tag, version) + body


def body_of(body):
    return p.encode(p.Message(None, 0, body))[16:]


def sha(n, offset=0):
    return hashlib.sha256(stream_peer.stream(n, offset)).hexdigest()


def settled(observer, baseline):
    """STATS once the connections are gone and every pool is back to `baseline`."""
    def check():
        s = observer.stats()
        return s if s["connections"] == 0 and pools(s) == baseline else None
    try:
        return wait_until("connections released and pools back to their baseline", check, 10)
    except AssertionError:
        s = observer.stats()
        raise AssertionError(f"after 10 s: connections {s['connections']}, pools {pools(s)}, "
                             f"baseline {baseline}") from None


# ---------------------------------------------------------------------------
# well-formed requests first: STATS


def test_stats_answers_json(target):
    with Raw(target.control_socket) as s:
        r = s.call(p.Stats())
        assert r.type == T.STATS_REPLY
        stats = json.loads(r.body.json)
    assert isinstance(stats, dict)
    for key in ("sessions", "connections", "requests", "errors", "sessions_refused", *POOLS):
        assert isinstance(stats.get(key), int), (key, stats)
    assert stats["sessions"] >= 1
    assert stats["port0_mbufs_free"] > 0
    assert target.target.stats()["sessions"] >= 1  # the client's view, same JSON


# ---------------------------------------------------------------------------
# messages the codec refuses: ERROR MALFORMED with the tag, the session goes on

REQUESTS = {
    T.HELLO: p.Hello(1),
    T.REGISTER_MEMORY: p.RegisterMemory(4096),
    T.UNREGISTER_MEMORY: p.UnregisterMemory(1),
    T.CONNECT: p.Connect(ip_int("198.18.0.1"), 9, 0, p.CachedState()),
    T.LISTEN: p.Listen(9, 1, p.CachedState()),
    T.OFFLOAD: p.Offload(p.OffloadState(), b""),
    T.SEND: p.Send(1, p.BufferRef(1, 0, 1)),
    T.RECEIVE: p.Receive(1, p.BufferRef(1, 0, 1), 0),
    T.DISCONNECT: p.Disconnect(1, 0, p.BufferRef(0, 0, 0)),
    T.TERMINATE: p.Terminate(1),
    T.STATS: p.Stats(),
    T.RELEASE_LISTEN: p.ReleaseListen(9),
}


@pytest.mark.parametrize("mtype", list(REQUESTS), ids=lambda t: t.name)
def test_bad_body_sizes(target, mtype):
    body = body_of(REQUESTS[mtype])
    with Raw(target.control_socket) as s:
        cases = [body + b"\0"]  # one byte too many
        if body:
            cases.append(body[:-1])  # one byte short
            cases.append(b"")
        for bad in cases:
            tag = s.tag()
            s.write(frame(mtype, tag, bad))
            text = expect_error(s.reply(tag), tag, E.MALFORMED, mtype.name)
            if mtype == T.OFFLOAD and len(bad) > len(body):
                assert "receive data follow" in text, text  # n says 0, one byte follows
            else:
                assert f"body is {len(bad)} bytes" in text, text
        s.still_works()


@pytest.mark.parametrize("mtype,body,words", [
    (T.DISCONNECT, body_of(p.Disconnect(1, 2, p.BufferRef())), ("kind is 2",)),
    (T.RECEIVE, body_of(p.Receive(1, p.BufferRef(1, 0, 1), 2)), ("flags",)),
    (T.CONNECT, body_of(p.Connect(1, 9, 0, p.CachedState()))[:8]
     + struct.pack("<IBBBBIIBBBBI", 65535, 64, 0, 2, 0, 1, 1, 1, 1, 0, 1, 0), ("cached.nagle is 2",)),
    (T.CONNECT, body_of(p.Connect(1, 9, 0, p.CachedState()))[:8]
     + struct.pack("<IBBBBIIBBBBI", 65535, 64, 0, 1, 0, 1, 1, 1, 1, 0, 7, 0), ("cached.congestion is 7",)),
    (T.LISTEN, body_of(p.Listen(9, 1, p.CachedState()))[:4]
     + struct.pack("<IBBBBIIBBBBI", 65535, 64, 0, 1, 0, 1, 1, 1, 1, 0, 1, 5), ("cached.reserved is 5",)),
    (T.OFFLOAD, body_of(p.Offload(p.OffloadState(), b"abc"))[:-3], ("n is 3 but 0 bytes",)),
], ids=["disconnect-kind", "receive-flags", "nagle", "congestion", "reserved", "offload-n"])
def test_bad_fields(target, mtype, body, words):
    with Raw(target.control_socket) as s:
        tag = s.tag()
        s.write(frame(mtype, tag, body))
        expect_error(s.reply(tag), tag, E.MALFORMED, mtype.name, *words)
        s.still_works()


def test_unknown_types(target):
    with Raw(target.control_socket) as s:
        for t in (0, 14, 100, 113, 198, 200, 0xFFFF):
            tag = s.tag()
            s.write(frame(t, tag, b"\0" * 8))
            expect_error(s.reply(tag), tag, E.MALFORMED, f"unknown message type {t}")
        s.still_works()


TARGET_TO_HOST = {
    T.HELLO_REPLY: p.HelloReply(), T.REGISTERED: p.Registered(1),
    T.OFFLOAD_COMPLETE: p.OffloadComplete(0, 1), T.SEND_COMPLETE: p.Completion(1, 0, 1),
    T.RECEIVE_COMPLETE: p.Completion(1, 0, 1), T.DISCONNECT_COMPLETE: p.Completion(1, 0, 0),
    T.TERMINATE_COMPLETE: p.TerminateComplete(1, 0), T.STATS_REPLY: p.StatsReply("{}"),
    T.OK: p.Ok(), T.EVENT: p.Event(1, p.WireEvent.ABORT, 0, 0), T.ACCEPT: p.Accept(9, 9, 1, 1),
    T.ERROR: p.Error(E.MALFORMED, "from the host"),
}


def test_target_to_host_types_sent_by_the_host(target):
    with Raw(target.control_socket) as s:
        for mtype, body in TARGET_TO_HOST.items():
            tag = s.tag()
            s.write(p.encode(p.Message(mtype, tag, body)))
            expect_error(s.reply(tag), tag, E.MALFORMED, mtype.name, "not a request")
        s.still_works()


def test_a_message_in_pieces_is_answered_once_whole(target):
    with Raw(target.control_socket) as s:
        tag = s.tag()
        data = p.encode(p.Message(None, tag, p.RegisterMemory(4096)))  # no fd: an ERROR
        data += p.encode(p.Message(None, tag + 1, p.Stats()))
        s.next_tag += 1
        s.write(data[:7])       # not even a header
        s.quiet(0.3)
        s.write(data[7:20])     # a header and part of the body
        s.quiet(0.3)
        for i in range(20, len(data)):
            s.write(data[i:i + 1])
        expect_error(s.reply(tag), tag, E.BAD_BUFFER, "REGISTER_MEMORY", "file descriptor")
        assert s.reply(tag + 1).type == T.STATS_REPLY


def test_oversized_body_within_the_maximum_is_refused_and_skipped(target):
    with Raw(target.control_socket) as s:
        big = b"\xa5" * (p.MAX_MESSAGE - 16)  # the largest message there can be
        tag = s.tag()
        s.write(frame(T.SEND, tag, big))
        expect_error(s.reply(tag, timeout=15), tag, E.MALFORMED, "SEND", f"body is {len(big)} bytes")
        s.still_works()


def test_a_host_that_closes_mid_message_ends_only_its_session(target):
    with Raw(target.control_socket) as observer:
        before = observer.still_works()
        s = Raw(target.control_socket)
        s.write(header(4096, T.SEND, 5) + b"\0" * 100)  # then the host goes away
        s.close()
        wait_until("the session closed", lambda: observer.still_works()["sessions_closed"]
                   > before["sessions_closed"], 5)
        assert observer.still_works()["sessions"] == before["sessions"]


# ---------------------------------------------------------------------------
# framing errors: the stream cannot be resynchronised, the session ends


def framing_error(path, data):
    """Writes data, then a STATS right behind it, on a new session (after
    HELLO); returns every message received before chimneyd closed the session."""
    with Raw(path) as s:
        s.write(data + p.encode(p.Message(None, 4242, p.Stats())))
        msgs = s.ended(5)
    return msgs


@pytest.mark.parametrize("length", [0, 8, 15])
def test_length_below_the_header_ends_the_session(target, length):
    msgs = framing_error(target.control_socket, header(length, T.STATS, 31337))
    assert len(msgs) == 1, msgs  # one ERROR, nothing after it: the session ended
    m = msgs[0]
    assert m.type == T.ERROR and m.body.code == E.MALFORMED, m
    assert f"length is {length}" in m.body.text, m.body.text
    # Below 16 bytes the "message" ends before the header's tag field: either
    # that field or 0 is a fair answer.
    assert m.tag in (0, 31337), m


@pytest.mark.parametrize("length", [p.MAX_MESSAGE + 1, 0xFFFFFFFF])
def test_length_above_the_maximum_ends_the_session(target, length):
    msgs = framing_error(target.control_socket, header(length, T.STATS, 31337))
    assert len(msgs) == 1, msgs
    m = msgs[0]
    assert m.type == T.ERROR and m.body.code == E.MALFORMED, m
    assert f"length is {length}" in m.body.text and str(p.MAX_MESSAGE) in m.body.text, m.body.text


@pytest.mark.parametrize("version", [0, 2, 0xFFFF])
def test_unknown_version_is_refused(target, version):
    with Raw(target.control_socket) as s:
        s.write(frame(T.STATS, 31337, b"", version=version))
        m = s.next_message()
    assert m.type == T.ERROR, m
    assert f"version is {version}" in m.body.text, m.body.text


@pytest.mark.parametrize("version", [0, 2])
def test_unknown_version_gets_the_unsupported_version_code(target, version):
    with Raw(target.control_socket) as s:
        s.write(frame(T.STATS, 31337, b"", version=version))
        m = s.next_message()
    assert m.type == T.ERROR and m.body.code == E.UNSUPPORTED_VERSION, m


@pytest.mark.parametrize("data", [frame(T.STATS, 31337, b"", version=2),
                                  header(p.MAX_MESSAGE + 1, T.STATS, 31337)], ids=["version", "length"])
def test_a_refused_header_is_answered_with_its_tag(target, data):
    with Raw(target.control_socket) as s:
        s.write(data)
        m = s.next_message()
    assert m.type == T.ERROR and m.tag == 31337, m


def test_framing_error_ends_only_that_session(target):
    """A transfer in another session goes on and completes with the right hash;
    a connection of a third, well-behaved raw session is untouched too."""
    linux = LinuxPeer(target, "sink", 7301)
    with Client(target.control_socket, region_size=32 * MiB) as host:
        conn = host.connect(target.peer_ip, 7301)
        total = 24 * MiB
        half = send_stream(conn, total // 2)
        with Raw(target.control_socket) as bad:
            bad.write(header(3, T.SEND, 1) + b"garbage")
            msgs = bad.ended(5)
            assert [m.type for m in msgs] == [T.ERROR] and msgs[0].body.code == E.MALFORMED, msgs
        # the rest of the stream, in the same session, on the same connection
        pending = []
        sent = half
        while sent < total:
            pending.append(conn.send(stream_peer.stream(MiB, sent)))
            sent += MiB
            if len(pending) >= 8:
                assert pending.pop(0).wait(30).ok
        for r in pending:
            assert r.wait(30).ok
        d = conn.disconnect(graceful=True, data=b"end").wait(30)
        assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == 3
        got = linux.result()
        assert got["end"] == "eof"
        assert got["bytes"] == total + 3
        assert got["sha256"] == hashlib.sha256(stream_peer.stream(total) + b"end").hexdigest()
        conn.terminate()


# ---------------------------------------------------------------------------
# REGISTER_MEMORY / UNREGISTER_MEMORY


def test_register_memory_without_an_fd(target):
    with Raw(target.control_socket) as s:
        s.error(p.RegisterMemory(MiB), E.BAD_BUFFER, "REGISTER_MEMORY", "file descriptor")
        region, _ = s.register(MiB)  # the session carries on
        assert region != 0


def test_register_memory_smaller_memfd_and_size_zero(target):
    with Raw(target.control_socket) as s:
        fd = sealed_memfd("small", 4096)
        try:
            s.error(p.RegisterMemory(4097), E.BAD_BUFFER, "REGISTER_MEMORY", "smaller", fds=[fd])
            s.error(p.RegisterMemory(0), E.BAD_BUFFER, "REGISTER_MEMORY", fds=[fd])
        finally:
            os.close(fd)
        s.register(4096)


def test_register_memory_does_not_take_an_fd_sent_with_another_message(target):
    with Raw(target.control_socket) as s:
        fd = sealed_memfd("stray", MiB)
        try:
            tag = s.send(p.Stats(), fds=[fd])  # an fd on a message that takes none
            assert s.reply(tag).type == T.STATS_REPLY
        finally:
            os.close(fd)
        s.error(p.RegisterMemory(MiB), E.BAD_BUFFER, "REGISTER_MEMORY", "file descriptor")


def test_register_memory_over_control_max_memory_mb(fresh):
    with fresh("--control-max-memory-mb", "4") as t:
        with Raw(t.control_socket) as s:
            fd = sealed_memfd("big", 8 * MiB)
            try:
                s.error(p.RegisterMemory(4 * MiB + 1), E.LIMIT, "control-max-memory-mb", fds=[fd])
                r1, _ = s.register(3 * MiB)
                s.error(p.RegisterMemory(MiB + 1), E.LIMIT, "control-max-memory-mb", fds=[fd])
                r2, _ = s.register(MiB)  # exactly the limit
                s.error(p.RegisterMemory(4096), E.LIMIT, "control-max-memory-mb", fds=[fd])
                assert s.call(p.UnregisterMemory(r1)).type == T.OK
                s.register(3 * MiB)  # unregistering gave it back
            finally:
                os.close(fd)
            # The limit is per session: another one has its own.
            with Raw(t.control_socket) as other:
                other.register(4 * MiB)
            s.still_works()


def test_unregister_unknown_region(target):
    with Raw(target.control_socket) as s:
        s.error(p.UnregisterMemory(0), E.BAD_BUFFER, "UNREGISTER_MEMORY", "region 0")
        s.error(p.UnregisterMemory(77), E.BAD_BUFFER, "UNREGISTER_MEMORY", "region 77", "not registered")
        region, _ = s.register(4096)
        assert s.call(p.UnregisterMemory(region)).type == T.OK
        s.error(p.UnregisterMemory(region), E.BAD_BUFFER, "not registered")  # twice


def test_an_unsealed_memfd_is_refused_and_a_sealed_one_cannot_shrink(target):
    # A region that shrank under chimneyd would fault it (SIGBUS): only a memfd
    # sealed against shrinking is mapped.
    with Raw(target.control_socket) as s:
        fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
        os.ftruncate(fd, MiB)
        try:
            s.error(p.RegisterMemory(MiB), E.BAD_BUFFER, "REGISTER_MEMORY", "F_SEAL_SHRINK", fds=[fd])
        finally:
            os.close(fd)
        fd = sealed_memfd("sealed", MiB)
        try:
            assert s.call(p.RegisterMemory(MiB), fds=[fd]).type == T.REGISTERED
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        s.still_works()


# ---------------------------------------------------------------------------
# buffers and handles on a live connection


def test_buffers_outside_the_region_unknown_or_unregistered(target):
    linux = LinuxPeer(target, "sink", 7302)
    size = 64 * 1024
    with Raw(target.control_socket) as s:
        region, mem = s.register(size)
        h = s.connect(target.peer_ip, 7302)
        bad = [
            (p.BufferRef(region, size, 1), "outside"),
            (p.BufferRef(region, size - 10, 11), "outside"),
            (p.BufferRef(region, 0, size + 1), "outside"),
            (p.BufferRef(region, (1 << 64) - 1, 2), "outside"),
            (p.BufferRef(region, 8, 0xFFFFFFFF), "outside"),
            (p.BufferRef(region + 40, 0, 1), "not registered"),
            (p.BufferRef(0, 0, 1), "not registered"),
        ]
        for buf, words in bad:
            s.error(p.Send(h, buf), E.BAD_BUFFER, "SEND", words)
            s.error(p.Receive(h, buf, 0), E.BAD_BUFFER, "RECEIVE", words)
            s.error(p.Disconnect(h, 0, buf), E.BAD_BUFFER, "DISCONNECT", words)
        # The connection is untouched: a valid SEND from the region goes out.
        mem[0:1000] = stream_peer.stream(1000)
        c = s.call(p.Send(h, p.BufferRef(region, 0, 1000)), timeout=10)
        assert c.type == T.SEND_COMPLETE and c.body.status == p.STATUS_SUCCESS and c.body.bytes_transferred == 1000
        # A region gone is a region unknown.
        assert s.call(p.UnregisterMemory(region)).type == T.OK
        s.error(p.Send(h, p.BufferRef(region, 0, 1)), E.BAD_BUFFER, "SEND", f"region {region}", "not registered")
        s.error(p.Receive(h, p.BufferRef(region, 0, 1), 0), E.BAD_BUFFER, "RECEIVE", "not registered")
        s.error(p.Disconnect(h, 0, p.BufferRef(region, 0, 1)), E.BAD_BUFFER, "DISCONNECT", "not registered")
        d = s.call(p.Disconnect(h, 0, p.BufferRef()), timeout=10)  # no final data: no buffer needed
        assert d.type == T.DISCONNECT_COMPLETE and d.body.status == p.STATUS_SUCCESS, d
        got = linux.result()
        assert got["end"] == "eof" and got["bytes"] == 1000 and got["sha256"] == sha(1000), got
        assert s.call(p.Terminate(h), timeout=10).type == T.TERMINATE_COMPLETE
        # Terminated, the handle is released (C-20): it names nothing any more.
        region, _ = s.register(4096)
        for name, make in HANDLE_REQUESTS:
            s.error(make(h, region), E.UNKNOWN_HANDLE, name, str(h))


def test_unregister_while_a_request_uses_the_region_is_refused(target):
    linux = LinuxPeer(target, "gated-source", 7303, 3000)
    with Raw(target.control_socket) as s:
        region, mem = s.register(64 * 1024)
        other, _ = s.register(4096)
        h = s.connect(target.peer_ip, 7303)
        rtag = s.send(p.Receive(h, p.BufferRef(region, 4096, 3000), 1))  # no push: only when full
        time.sleep(0.2)
        s.error(p.UnregisterMemory(region), E.BAD_BUFFER, "UNREGISTER_MEMORY", "in use")
        assert s.call(p.UnregisterMemory(other)).type == T.OK  # a region no request names goes
        linux.gate()
        c = s.reply(rtag, timeout=10)
        assert c.type == T.RECEIVE_COMPLETE and c.body.status == p.STATUS_SUCCESS, c
        assert c.body.bytes_transferred == 3000
        assert mem[4096:4096 + 3000] == stream_peer.stream(3000)
        assert s.call(p.UnregisterMemory(region)).type == T.OK  # free once it completed
        d = s.call(p.Disconnect(h, 0, p.BufferRef()), timeout=10)  # the peer reads until our FIN
        assert d.type == T.DISCONNECT_COMPLETE and d.body.status == p.STATUS_SUCCESS, d
        got = linux.result()
        assert got["bytes"] == 3000 and got["end"] == "eof", got
        assert s.call(p.Terminate(h), timeout=10).type == T.TERMINATE_COMPLETE


HANDLE_REQUESTS = [
    ("SEND", lambda h, r: p.Send(h, p.BufferRef(r, 0, 100))),
    ("RECEIVE", lambda h, r: p.Receive(h, p.BufferRef(r, 0, 100), 0)),
    ("DISCONNECT", lambda h, r: p.Disconnect(h, 1, p.BufferRef())),  # abortive, had it been accepted
    ("DISCONNECT", lambda h, r: p.Disconnect(h, 0, p.BufferRef(r, 0, 10))),
    ("TERMINATE", lambda h, r: p.Terminate(h)),
]


def test_requests_on_an_unknown_handle(target):
    with Raw(target.control_socket) as s:
        region, _ = s.register(4096)
        for h in (0, 1, 0xDEADBEEF, 0xFFFFFFFF):
            for name, make in HANDLE_REQUESTS:
                s.error(make(h, region), E.UNKNOWN_HANDLE, name, str(h))
        s.still_works()


def test_requests_on_another_sessions_handle(target):
    linux = LinuxPeer(target, "sink", 7304)
    with Client(target.control_socket, region_size=8 * MiB) as owner, Raw(target.control_socket) as thief:
        conn = owner.connect(target.peer_ip, 7304)
        first = owner.stats()
        region, _ = thief.register(4096)
        for name, make in HANDLE_REQUESTS:
            thief.error(make(conn.handle, region), E.UNKNOWN_HANDLE, name, str(conn.handle))
        # The owner's connection is as it was: a stream and a graceful close.
        total = 4 * MiB
        send_stream(conn, total)
        d = conn.disconnect(graceful=True, data=b"tail").wait(10)
        assert d.status == "NDIS_STATUS_SUCCESS" and d.bytes_transferred == 4
        got = linux.result()
        assert got["end"] == "eof", got  # no RST from the thief's abortive DISCONNECT
        assert got["bytes"] == total + 4
        assert got["sha256"] == hashlib.sha256(stream_peer.stream(total) + b"tail").hexdigest()
        assert owner.stats()["connections"] == first["connections"]
        conn.terminate()


def test_another_sessions_listening_port(target):
    with Client(target.control_socket, region_size=MiB) as owner, Raw(target.control_socket) as thief:
        owner.listen(7309)
        thief.error(p.ReleaseListen(7309), p.status_value("NDIS_STATUS_INVALID_STATE"), "RELEASE_LISTEN", "7309")
        thief.error(p.Listen(7309, 4, p.CachedState()), p.status_value("NDIS_STATUS_INVALID_STATE"),
                    "LISTEN", "7309")
        # The owner's listener still accepts.
        target.python("import socket,sys; s=socket.create_connection((sys.argv[1], 7309), timeout=5); "
                      "s.sendall(b'hi'); s.close()", target.target_ip)
        conn = owner.accept(10)
        assert conn.remote_ip == target.peer_ip and conn.local_port == 7309
        c = conn.post_receive(2).wait(10)
        assert c.data == b"hi"
        conn.terminate()
        owner.release_listen(7309)


# ---------------------------------------------------------------------------
# control-max-requests


def test_control_max_requests(fresh):
    """Beyond control-max-requests a request gets ERROR LIMIT; the receives
    that were taken complete in order with their bytes (C-9)."""
    n, size = 4, 1000
    with fresh("--control-max-requests", str(n)) as t:
        linux = LinuxPeer(t, "gated-source", 7305, n * size)
        with Client(t.control_socket, region_size=MiB) as host:
            conn = host.connect(t.peer_ip, 7305)
            posted = [conn.post_receive(size, push=False) for _ in range(n)]
            for kind, post in (("RECEIVE", lambda: conn.post_receive(size)),
                               ("SEND", lambda: conn.send(b"x")),
                               ("DISCONNECT", lambda: conn.disconnect(graceful=False))):
                with pytest.raises(ChimneyError) as e:
                    post().wait(5)
                assert e.value.code == E.LIMIT, e.value
                assert kind in e.value.text and "control-max-requests" in e.value.text, e.value.text
            # The requests that were taken complete, in order, with the right bytes.
            linux.gate()
            data = b""
            for r in posted:
                c = r.wait(10)
                assert c.status == "NDIS_STATUS_SUCCESS" and c.bytes_transferred == size, c
                data += c.data
            assert data == stream_peer.stream(n * size)
            # Room again: a SEND goes through (the peer reads until our FIN).
            c = conn.send(b"after the limit").wait(10)
            assert c.status == "NDIS_STATUS_SUCCESS", c
            assert conn.disconnect(graceful=True).wait(10).status == "NDIS_STATUS_SUCCESS"
            assert linux.result()["bytes"] == n * size
            conn.terminate()


# ---------------------------------------------------------------------------
# a host that goes away mid-transfer


HOST_SCRIPT = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from chimney.client import Target
sys.path.insert(0, sys.argv[2])
import peer
t = Target(sys.argv[3], region_size=8 << 20)
conn = t.connect(sys.argv[4], int(sys.argv[5]))
sends = [conn.send(peer.stream(256 * 1024, i * 256 * 1024)) for i in range(16)]
print("sending", conn.handle, flush=True)
time.sleep(120)
"""


def test_host_killed_mid_transfer_aborts_its_connection(fresh):
    with fresh("--control-grace-s", "1") as t:
        with Client(t.control_socket, region_size=MiB) as observer:
            baseline = pools(observer.stats())
            linux = LinuxPeer(t, "stall", 7306)
            host = subprocess.Popen([PYTHON, "-c", HOST_SCRIPT, str(ROOT / "clients" / "python"),
                                     str(Path(__file__).parent), t.control_socket, t.peer_ip, "7306"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            try:
                line = host.stdout.readline()
                assert line.startswith("sending"), line
                wait_until("data outstanding", lambda: observer.stats()["connections"] == 1, 5)
                time.sleep(0.5)  # the peer's window fills: most of the 4 MiB is outstanding
                stats = observer.stats()
                assert stats["connections"] == 1 and stats["sessions"] == 2, stats
                os.kill(host.pid, signal.SIGKILL)
                host.wait(5)
            finally:
                if host.poll() is None:
                    os.kill(host.pid, signal.SIGKILL)
                    host.wait(5)
            got = linux.result(timeout=15)
            assert got["end"] == "reset", got  # the orphan was aborted with a RST
            after = settled(observer, baseline)
            assert after["sessions"] == 1 and after["orphans_aborted"] == 1, after
            assert after["sessions_detached"] == 1, after  # kept for the grace period first
            assert after["connections_released"] == after["connections_offloaded"] == 1, after


def test_host_closing_its_socket_mid_transfer_aborts_its_connection(fresh):
    with fresh("--control-grace-s", "1") as t:
        with Client(t.control_socket, region_size=MiB) as observer:
            baseline = pools(observer.stats())
            linux = LinuxPeer(t, "sink", 7307)
            host = Client(t.control_socket, region_size=16 * MiB)
            try:
                conn = host.connect(t.peer_ip, 7307)
                stop = threading.Event()
                errors = []

                def pump():
                    try:
                        send_stream(conn, 1 << 40, stop=stop)  # until the session goes
                    except Exception as e:  # noqa: BLE001 - the session's end, whatever form it takes
                        errors.append(e)

                th = threading.Thread(target=pump, daemon=True)
                th.start()
                wait_until("data flowing", lambda: observer.stats()["completions"] >= 8, 10)
            finally:
                host.close()  # mid-transfer: SENDs outstanding
            stop.set()
            th.join(10)
            assert errors and isinstance(errors[0], ChimneyError), errors  # the session's end
            got = linux.result(timeout=15)
            assert got["end"] == "reset", got
            after = settled(observer, baseline)
            assert after["sessions"] == 1 and after["orphans_aborted"] == 1, after


# ---------------------------------------------------------------------------
# who may connect

UID = 65534  # nobody

UID_CLIENT = r"""
import json, os, socket, struct, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    out["connect_errno"] = e.errno
    print(json.dumps(out)); sys.exit(0)
try:  # HELLO, STATS
    s.sendall(struct.pack("<IHHQI", 20, 1, 1, 7, 1) + struct.pack("<IHHQ", 16, 1, 11, 8))
except OSError as e:  # a refusing server may have closed already; its ERROR is still queued
    out["send_errno"] = e.errno
buf, msgs, done = b"", [], False
while not done:  # until STATS_REPLY (served) or the end of the session (refused)
    try:
        c = s.recv(65536)
    except OSError as e:
        out["recv_errno"] = e.errno
        c = b""
    if not c:
        break
    buf += c
    while len(buf) >= 16 and len(buf) >= struct.unpack_from("<I", buf)[0]:
        n, v, t, tag = struct.unpack_from("<IHHQ", buf)
        body, buf = buf[16:n], buf[n:]
        m = {"type": t, "tag": tag}
        if t == 199:
            m["code"] = struct.unpack_from("<I", body)[0]
            m["text"] = body[4:].decode()
        if t == 108:
            m["json"] = json.loads(body.decode())
            done = True
        msgs.append(m)
out["messages"] = msgs
print(json.dumps(out))
"""


def as_nobody(path):
    cp = subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                         PYTHON, "-I", "-c", UID_CLIENT, path],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=20, cwd="/")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["uid"] == UID and out["gid"] == UID and out["groups"] == [], out
    return out


def check_modes(path):
    d, s = os.stat(os.path.dirname(path)), os.stat(path)
    assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == 0, oct(d.st_mode)
    assert stat.S_ISSOCK(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o600 and s.st_uid == 0, oct(s.st_mode)


def hand_to(path, uid):
    """What an administrator does to let one uid reach the socket without
    widening its modes: the directory and the socket become that uid's."""
    os.chown(os.path.dirname(path), uid, uid)
    os.chown(path, uid, uid)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_uid_not_allowed_is_refused(fresh):
    with fresh() as t:
        check_modes(t.control_socket)
        # As chimneyd leaves them (root's, 0700 and 0600), the OS refuses first.
        out = as_nobody(t.control_socket)
        assert out.get("connect_errno") == 13, out  # EACCES
        # Handed to that uid, the socket is reached, and the server refuses it
        # (SO_PEERCRED): ERROR "not allowed", nothing else, the session closed.
        hand_to(t.control_socket, UID)
        out = as_nobody(t.control_socket)
        assert "connect_errno" not in out, out
        msgs = out["messages"]
        assert len(msgs) == 1, msgs
        assert msgs[0]["type"] == T.ERROR and msgs[0]["code"] == E.NOT_ALLOWED, msgs
        assert "uid" in msgs[0]["text"], msgs
        with Raw(t.control_socket) as root:  # root still gets in
            assert root.still_works()["sessions_refused"] == 1


def test_uid_in_control_allowed_uids_is_served(fresh):
    with fresh("--control-allowed-uids", str(UID)) as t:
        check_modes(t.control_socket)
        out = as_nobody(t.control_socket)
        assert out.get("connect_errno") == 13, out  # 0700/0600 root's: the allowance alone is not enough
        hand_to(t.control_socket, UID)
        out = as_nobody(t.control_socket)
        msgs = out["messages"]
        assert [m["type"] for m in msgs] == [T.HELLO_REPLY, T.STATS_REPLY], msgs
        assert msgs[0]["tag"] == 7 and msgs[1]["tag"] == 8
        assert msgs[1]["json"]["sessions_refused"] == 0
