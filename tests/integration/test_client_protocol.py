"""The Python codec (chimney.protocol) alone, no chimneyd: the golden bytes of
tests/unit/control/golden.hex (the same hand-written vectors the C++ codec's
tests check), round trips of every message type, every truncation rejected, and
the field checks with the same error texts as lib/control/protocol.cpp."""

import re
import struct

import pytest

from conftest import ROOT
from chimney import protocol as p
from chimney.protocol import (Accept, BufferRef, CachedState, Completion, ConstState, DecodeError,
                              DelegatedState, Disconnect, Error, Event, Hello, HelloReply, Listen,
                              Message, MsgType, Offload, OffloadComplete, OffloadState, Ok, PathState,
                              Receive, Registered, RegisterMemory, ReleaseListen, ReturnedSend, Send,
                              Stats, StatsReply, TcpState, Terminate, TerminateComplete,
                              UnregisterMemory, WireEvent, Connect, decode, encode, message_length)

GOLDEN = ROOT / "tests" / "unit" / "control" / "golden.hex"


def load_golden():
    blocks, name = {}, None
    for line in GOLDEN.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            name = m.group(1)
            blocks[name] = bytearray()
            continue
        for word in line.split():
            assert len(word) == 2, f"bad hex word {word!r} in {name}"
            blocks[name].append(int(word, 16))
    return {k: bytes(v) for k, v in blocks.items()}


# ---- the messages of golden.hex, built as test_protocol.cpp builds them

def golden_connect_cached():
    return CachedState(initial_rcv_wnd=65535, ttl=64, tos=0x10, nagle=True, keepalive=True,
                       keepalive_timeout_ms=7_200_000, keepalive_interval_ms=75_000, keepalive_probes=9,
                       max_retransmissions=15, max_persist_probes=3, congestion=p.CongestionAlgorithm.CUBIC)


def golden_offload_state():
    return OffloadState(
        constant=ConstState(local_ip=0xC6120002, remote_ip=0xC6120001, local_port=40000, remote_port=80,
                            remote_mss=1460, snd_wscale=7, rcv_wscale=9, window_scaling=True,
                            timestamps=True, sack=True),
        cached=CachedState(initial_rcv_wnd=131072, ttl=64, tos=0, nagle=False, keepalive=True,
                           keepalive_timeout_ms=7_200_000, keepalive_interval_ms=75_000,
                           keepalive_probes=9, max_retransmissions=15, max_persist_probes=0,
                           congestion=p.CongestionAlgorithm.NEWRENO),
        delegated=DelegatedState(state=TcpState.ESTABLISHED, dup_ack_count=2, total_rt=3,
                                 rcv_nxt=0xA0000001, rcv_wnd=65536, snd_una=0xB0000001,
                                 snd_nxt=0xB0000101, snd_max=0xB0000201, snd_wnd=131072,
                                 max_snd_wnd=196608, snd_wl1=0xA0000000, snd_wl2=0xB0000001,
                                 cwnd=14600, ssthresh=0x7FFFFFFF, srtt_us=20000, rttvar_us=5000,
                                 ts_recent=0x12345678, ts_recent_age_ms=10, ts_time=0x00ABCDEF,
                                 retransmit_timer_ms=200, keepalive_timer_ms=0),
        path=PathState(local_mac=bytes([2, 0, 0, 0, 0, 1]), next_hop_mac=bytes([2, 0, 0, 0, 0, 2]),
                       path_mtu=1500))


def golden_terminate_state():
    return OffloadState(
        constant=ConstState(remote_mss=0),
        cached=CachedState(initial_rcv_wnd=0, ttl=0, tos=0, nagle=False, keepalive=False,
                           keepalive_timeout_ms=0, keepalive_interval_ms=0, keepalive_probes=0,
                           max_retransmissions=0, max_persist_probes=0,
                           congestion=p.CongestionAlgorithm.NEWRENO),
        delegated=DelegatedState(state=TcpState.FIN_WAIT_2, dup_ack_count=0, total_rt=1, rcv_nxt=16,
                                 rcv_wnd=65280, snd_una=32, snd_nxt=48, snd_max=64, snd_wnd=4096,
                                 max_snd_wnd=8192, snd_wl1=15, snd_wl2=32, cwnd=1460, ssthresh=16384,
                                 srtt_us=1000, rttvar_us=500, ts_recent=0, ts_recent_age_ms=0,
                                 ts_time=100, retransmit_timer_ms=300, keepalive_timer_ms=0),
        path=PathState(path_mtu=0))


GOLDEN_MESSAGES = {
    "hello": Message(MsgType.HELLO, 0x0102030405060708, Hello(1)),
    "hello_reply": Message(MsgType.HELLO_REPLY, 0x0102030405060708, HelloReply(1, 65536, 0x0000000100000002)),
    "register_memory": Message(MsgType.REGISTER_MEMORY, 2, RegisterMemory(256 << 20)),
    "connect": Message(MsgType.CONNECT, 9, Connect(0xC6120001, 80, 0, golden_connect_cached())),
    "send": Message(MsgType.SEND, 42, Send(0x11223344, BufferRef(2, 0x100002000, 1460))),
    "receive": Message(MsgType.RECEIVE, 43, Receive(0x11223344, BufferRef(2, 0x4000, 65536), p.RECEIVE_NO_PUSH)),
    "disconnect": Message(MsgType.DISCONNECT, 7, Disconnect(5, 1, BufferRef(3, 16, 0))),
    "offload": Message(MsgType.OFFLOAD, 1, Offload(golden_offload_state(), b"abc", 0x200)),
    "offload_complete": Message(MsgType.OFFLOAD_COMPLETE, 9, OffloadComplete(0xC0231004, 0)),
    "receive_complete": Message(MsgType.RECEIVE_COMPLETE, 0x1122334455667788,
                                Completion(3, 0xC023000C, 0x100000000)),
    "terminate_complete": Message(MsgType.TERMINATE_COMPLETE, 16,
                                  TerminateComplete(5, 0, golden_terminate_state(),
                                                    [ReturnedSend(0x21, 100), ReturnedSend(0x22, 0)], b"hi")),
    "stats": Message(MsgType.STATS, 3, Stats()),
    "ok": Message(MsgType.OK, 3, Ok()),
    "event": Message(MsgType.EVENT, 0, Event(0x00010002, WireEvent.RETRIEVE, 1, 0x01020304)),
    "accept": Message(MsgType.ACCEPT, 0, Accept(8080, 51000, 0xC6120001, 0x00020001)),
    "error": Message(MsgType.ERROR, 5, Error(0xE0000004, "no handle 7")),
}


def every_type():
    """One message of every type (24, the three completions apart), fields non-default."""
    s = golden_offload_state()
    s.delegated.state = TcpState.CLOSE_WAIT
    s.cached.congestion = p.CongestionAlgorithm.CUBIC
    c = golden_connect_cached()
    c.nagle = False
    data = bytes((i * 7 + 3) & 0xFF for i in range(1000))
    M = Message
    return [
        M(MsgType.HELLO, 0xFFFFFFFFFFFFFFFF, Hello(0xDEADBEEF)),
        M(MsgType.REGISTER_MEMORY, 2, RegisterMemory(0x123456789ABCDEF0)),
        M(MsgType.UNREGISTER_MEMORY, 3, UnregisterMemory(0x80000001)),
        M(MsgType.CONNECT, 4, Connect(0x01020304, 443, 61000, c)),
        M(MsgType.LISTEN, 5, Listen(8080, 128, c)),
        M(MsgType.OFFLOAD, 6, Offload(s, data)),
        M(MsgType.SEND, 7, Send(0x01000001, BufferRef(7, 0xFFFFFFFFFFFF0000, 0xFFFFFFFF))),
        M(MsgType.RECEIVE, 8, Receive(0x02000002, BufferRef(1, 12345, 0x80000000), 0)),
        M(MsgType.DISCONNECT, 9, Disconnect(0x03000003, 0, BufferRef(4, 0x77, 33))),
        M(MsgType.TERMINATE, 10, Terminate(0xCAFEF00D)),
        M(MsgType.STATS, 11, Stats()),
        M(MsgType.RELEASE_LISTEN, 12, ReleaseListen(65535)),
        M(MsgType.ATTACH, 13, p.Attach(0x0102030405060708)),
        M(MsgType.ATTACHED, 14, p.Attached(7, 2)),
        M(MsgType.HELLO_REPLY, 101, HelloReply(1, 32768, 0xABCDEF0123456789)),
        M(MsgType.REGISTERED, 102, Registered(0x55AA55AA)),
        M(MsgType.OFFLOAD_COMPLETE, 103, OffloadComplete(0, 0x00030004)),
        M(MsgType.SEND_COMPLETE, 104, Completion(0x10, 0xC0231001, 1)),
        M(MsgType.RECEIVE_COMPLETE, 105, Completion(0x11, 0xC0000184, 0)),
        M(MsgType.DISCONNECT_COMPLETE, 106, Completion(0x12, 0, 0xFFFFFFFFFFFFFFFF)),
        M(MsgType.TERMINATE_COMPLETE, 107,
          TerminateComplete(0x13, 0xC0000001, s, [ReturnedSend(1, 2), ReturnedSend(3, 4),
                                                  ReturnedSend(0xFFFFFFFFFFFFFFFF, 0)], data)),
        M(MsgType.STATS_REPLY, 108, StatsReply('{"connections": 3, "name": "caf\u00e9 \u2603"}')),
        M(MsgType.OK, 109, Ok()),
        M(MsgType.EVENT, 0, Event(0x14, WireEvent.SEND_BACKLOG_CHANGE, 0, 262144)),
        M(MsgType.ACCEPT, 0, Accept(80, 40001, 0xC6120001, 0x15)),
        M(MsgType.ERROR, 199, Error(0xE0000001, "SEND: body is 16 bytes, expected 20 \u00e9")),
    ]


EVERY = every_type()


def ids(messages):
    return [MsgType(m.type).name for m in messages]


def fix_length(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b[4:]


def decode_error(b) -> str:
    with pytest.raises(DecodeError) as e:
        decode(b)
    return str(e.value)


# ---- golden bytes

def test_golden_file_has_every_vector():
    assert sorted(load_golden()) == sorted(GOLDEN_MESSAGES)


@pytest.mark.parametrize("name", sorted(GOLDEN_MESSAGES))
def test_golden_encode(name):
    assert encode(GOLDEN_MESSAGES[name]).hex() == load_golden()[name].hex()


@pytest.mark.parametrize("name", sorted(GOLDEN_MESSAGES))
def test_golden_decode(name):
    b = load_golden()[name]
    assert message_length(b) == len(b)
    assert decode(b) == GOLDEN_MESSAGES[name]


def test_offload_state_is_136_bytes():
    assert p.OFFLOAD_STATE_SIZE == 136
    assert len(encode(Message(MsgType.OFFLOAD, 0, Offload()))) == 16 + 136 + 4 + 4
    assert len(encode(Message(MsgType.TERMINATE_COMPLETE, 0, TerminateComplete()))) == 16 + 8 + 136 + 4 + 4


# ---- round trips

def test_every_type_is_covered():
    assert sorted(int(m.type) for m in EVERY) == sorted(int(t) for t in MsgType)


@pytest.mark.parametrize("m", EVERY, ids=ids(EVERY))
def test_round_trip(m):
    b = encode(m)
    assert message_length(b) == len(b)
    d = decode(b)
    assert d == m
    assert d.type == m.type
    assert encode(d) == b


def test_every_tcp_state_and_event():
    for st in TcpState:
        s = OffloadState()
        s.delegated.state = st
        d = decode(encode(Message(MsgType.OFFLOAD, 1, Offload(s))))
        assert d.body.state.delegated.state is st
    for kind in WireEvent:
        for reason in range(5):
            d = decode(encode(Message(MsgType.EVENT, 0, Event(1, kind, reason, 2))))
            assert d.body == Event(1, kind, reason, 2)


def test_type_comes_from_the_body_except_for_completions():
    assert decode(encode(Message(MsgType.HELLO, 1, Ok()))).type == MsgType.OK
    assert decode(encode(Message(None, 1, Ok()))).type == MsgType.OK
    for t in (MsgType.HELLO, MsgType.TERMINATE_COMPLETE, None):
        with pytest.raises(ValueError):
            encode(Message(t, 1, Completion()))
    for t in p.COMPLETION_TYPES:
        assert encode(Message(t, 1, Completion()))[6:8] == struct.pack("<H", t)


def test_largest_and_oversized_messages():
    data = bytes(p.MAX_MESSAGE - 16 - 136 - 8)
    b = encode(Message(MsgType.OFFLOAD, 1, Offload(OffloadState(), data)))
    assert len(b) == p.MAX_MESSAGE
    assert decode(b).body.receive_data == data
    assert len(encode(Message(MsgType.ERROR, 1, Error(1, "x" * (p.MAX_MESSAGE - 20))))) == p.MAX_MESSAGE
    with pytest.raises(ValueError):
        encode(Message(MsgType.OFFLOAD, 1, Offload(OffloadState(), data + b"x")))
    with pytest.raises(ValueError):
        encode(Message(MsgType.STATS_REPLY, 1, StatsReply("{" * p.MAX_MESSAGE)))
    with pytest.raises(ValueError):
        encode(Message(MsgType.TERMINATE_COMPLETE, 1, TerminateComplete(sends=[ReturnedSend()] * (p.MAX_MESSAGE // 16))))


def test_values_that_do_not_fit_are_refused():
    with pytest.raises(ValueError):
        encode(Message(MsgType.SEND, 1, Send(1 << 32, BufferRef())))
    with pytest.raises(ValueError):
        encode(Message(MsgType.LISTEN, 1, Listen(port=70000)))
    with pytest.raises(ValueError):
        encode(Message(MsgType.HELLO, -1, Hello()))
    s = OffloadState()
    s.path.local_mac = b"\x01\x02"
    with pytest.raises(ValueError):
        encode(Message(MsgType.OFFLOAD, 1, Offload(s)))


# ---- truncation

@pytest.mark.parametrize("m", EVERY, ids=ids(EVERY))
def test_every_prefix_is_rejected(m):
    b = encode(m)
    for n in range(len(b)):
        with pytest.raises(DecodeError):
            decode(b[:n])
        if n < 16:
            assert message_length(b[:n]) is None
        else:
            assert message_length(b[:n]) == len(b)


@pytest.mark.parametrize("m", EVERY, ids=ids(EVERY))
def test_short_bodies_with_a_consistent_header_are_rejected(m):
    b = encode(m)
    for n in range(16, len(b)):
        cut = fix_length(b[:n])
        if m.type == MsgType.STATS_REPLY or (m.type == MsgType.ERROR and n >= 20):
            try:
                decode(cut)
            except DecodeError as e:  # a cut inside a UTF-8 sequence
                assert "is not valid UTF-8" in str(e)
            continue
        assert decode_error(cut).startswith(MsgType(m.type).name + ": "), n


def test_error_texts_name_the_type_and_sizes():
    b = encode(Message(MsgType.SEND, 1, Send(1, BufferRef(1, 0, 1))))
    assert decode_error(fix_length(b[:-4])) == "SEND: body is 16 bytes, expected 20"
    b = encode(Message(MsgType.TERMINATE, 1, Terminate(1))) + b"\0"
    assert decode_error(fix_length(b)) == "TERMINATE: body is 5 bytes, expected 4"
    assert decode_error(b) == "header: length is 20 but 21 bytes given"
    assert decode_error(b[:10]) == "header: 10 bytes, expected at least 16"
    b = encode(Message(MsgType.STATS, 1, Stats())) + b"\0"
    assert decode_error(fix_length(b)) == "STATS: body is 1 bytes, expected 0"
    b = encode(Message(MsgType.OFFLOAD, 1, Offload()))
    assert decode_error(fix_length(b[:-1])) == "OFFLOAD: body is 143 bytes, expected at least 144"
    b = encode(Message(MsgType.ERROR, 1, Error()))
    assert decode_error(fix_length(b[:-1])) == "ERROR: body is 3 bytes, expected at least 4"


@pytest.mark.parametrize("m", [m for m in EVERY if m.type not in (
    MsgType.OFFLOAD, MsgType.TERMINATE_COMPLETE, MsgType.STATS_REPLY, MsgType.ERROR)],
    ids=ids([m for m in EVERY if m.type not in (
        MsgType.OFFLOAD, MsgType.TERMINATE_COMPLETE, MsgType.STATS_REPLY, MsgType.ERROR)]))
def test_fixed_bodies_must_match_exactly(m):
    assert decode_error(fix_length(encode(m) + b"\0")).startswith(MsgType(m.type).name + ": body is ")


# ---- variable bodies

def put_u32(b: bytes, at: int, v: int) -> bytes:
    return b[:at] + struct.pack("<I", v) + b[at + 4:]


def test_offload_count_must_match_the_rest():
    b = encode(Message(MsgType.OFFLOAD, 1, Offload(OffloadState(), b"\1\2\3")))
    at = 16 + 136 + 4  # after send_data_to_follow
    assert decode_error(put_u32(b, at, 4)) == "OFFLOAD: n is 4 but 3 bytes of receive data follow"
    assert decode_error(put_u32(b, at, 2)) == "OFFLOAD: n is 2 but 3 bytes of receive data follow"
    assert decode_error(put_u32(b, at, 0xFFFFFFFF)) == \
        "OFFLOAD: n is 4294967295 but 3 bytes of receive data follow"


def test_terminate_complete_counts_must_match_the_rest():
    t = TerminateComplete(sends=[ReturnedSend(1, 10), ReturnedSend(2, 20)], receive_data=b"\x09\x09\x09")
    good = encode(Message(MsgType.TERMINATE_COMPLETE, 1, t))
    n_sends_at = 16 + 8 + 136
    n_at = n_sends_at + 4 + 32
    assert decode_error(put_u32(good, n_sends_at, 3)) == \
        "TERMINATE_COMPLETE: n_sends is 3 (48 bytes) but only 39 bytes follow"
    assert decode_error(put_u32(good, n_sends_at, 0xFFFFFFFF)) == \
        "TERMINATE_COMPLETE: n_sends is 4294967295 (68719476720 bytes) but only 39 bytes follow"
    assert "TERMINATE_COMPLETE: n is 2 but 19 bytes" in decode_error(put_u32(good, n_sends_at, 1))
    assert decode_error(put_u32(good, n_at, 4)) == \
        "TERMINATE_COMPLETE: n is 4 but 3 bytes of receive data follow"
    assert decode_error(put_u32(good, n_at, 2)) == \
        "TERMINATE_COMPLETE: n is 2 but 3 bytes of receive data follow"


@pytest.mark.parametrize("bad", [b"\xff", b"ok\xc3", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80"])
def test_texts_must_be_utf8(bad):
    assert decode_error(encode(Message(MsgType.ERROR, 1, Error(1, bad)))).startswith(
        "ERROR: text is not valid UTF-8")
    assert decode_error(encode(Message(MsgType.STATS_REPLY, 1, StatsReply(bad)))).startswith(
        "STATS_REPLY: json is not valid UTF-8")


def test_valid_utf8_texts():
    assert decode(encode(Message(MsgType.ERROR, 1, Error(1, "\U0001F600 \u20ac")))).body.text == "\U0001F600 \u20ac"
    assert decode(encode(Message(MsgType.STATS_REPLY, 1, StatsReply("")))).body.json == ""


# ---- header

def header(length, version, mtype, tag=0):
    return struct.pack("<IHHQ", length, version, mtype, tag)


def test_message_length_waits_for_a_whole_header():
    b = encode(Message(MsgType.SEND, 1, Send()))
    for n in range(16):
        assert message_length(b[:n]) is None
    assert message_length(b[:16]) == len(b)
    assert message_length(header(100, 1, 77)) == 100  # the header alone, even of an unknown type
    assert message_length(memoryview(b)) == len(b)


@pytest.mark.parametrize("length", [0, 1, 15, p.MAX_MESSAGE + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_length_out_of_range(length):
    want = f"header: length is {length}, expected 16..{p.MAX_MESSAGE}"
    with pytest.raises(DecodeError, match=re.escape(want)):
        message_length(header(length, 1, 1))
    assert decode_error(header(length, 1, 1)) == want


def test_length_limits():
    assert message_length(header(16, 1, 11)) == 16
    assert message_length(header(p.MAX_MESSAGE, 1, 6)) == p.MAX_MESSAGE


@pytest.mark.parametrize("version", [0, 2, 0x0100, 0xFFFF])
def test_only_version_1(version):
    want = f"header: version is {version}, expected 1"
    with pytest.raises(DecodeError, match=re.escape(want)):
        message_length(header(16, version, 11))
    assert decode_error(header(16, version, 11)) == want


def test_unknown_types():
    known = {int(t) for t in MsgType}
    for t in list(range(300)) + [0x0101, 0xFFFF]:
        try:
            decode(header(16, 1, t))
            error = ""
        except DecodeError as e:
            error = str(e)
        if t in known:
            assert "unknown" not in error
        else:
            assert error == f"header: unknown message type {t}"


# ---- field values

def test_disconnect_kind():
    assert decode_error(encode(Message(MsgType.DISCONNECT, 1, Disconnect(1, 2)))) == \
        "DISCONNECT: kind is 2, expected 0 (graceful) or 1 (abortive)"
    assert decode_error(encode(Message(MsgType.DISCONNECT, 1, Disconnect(1, 0xFFFFFFFF)))) == \
        "DISCONNECT: kind is 4294967295, expected 0 (graceful) or 1 (abortive)"


@pytest.mark.parametrize("flags", [2, 3, 0x80000000])
def test_receive_flags(flags):
    assert decode_error(encode(Message(MsgType.RECEIVE, 1, Receive(1, BufferRef(), flags)))) == \
        "RECEIVE: flags is 0x%08x, only bit 0 (no push) is defined" % flags


def test_tcp_state_in_range():
    s = OffloadState()
    s.delegated.state = 11
    assert decode_error(encode(Message(MsgType.OFFLOAD, 1, Offload(s)))) == \
        "OFFLOAD: delegated.state is 11, expected 0..10 (TcpState)"
    s.delegated.state = 255
    assert decode_error(encode(Message(MsgType.TERMINATE_COMPLETE, 1, TerminateComplete(state=s)))) == \
        "TERMINATE_COMPLETE: delegated.state is 255, expected 0..10 (TcpState)"


def test_congestion():
    c = CachedState(congestion=2)
    want = "cached.congestion is 2, expected 0 (newreno) or 1 (cubic)"
    assert decode_error(encode(Message(MsgType.CONNECT, 1, Connect(1, 2, 3, c)))) == "CONNECT: " + want
    assert decode_error(encode(Message(MsgType.LISTEN, 1, Listen(1, 2, c)))) == "LISTEN: " + want
    assert decode_error(encode(Message(MsgType.OFFLOAD, 1, Offload(OffloadState(cached=c))))) == "OFFLOAD: " + want


CONNECT_CACHED = 16 + 8
OFFLOAD_CONST = 16
OFFLOAD_CACHED = 16 + 20
OFFLOAD_DELEGATED = 16 + 44
OFFLOAD_PADDING = 16 + 134


def poke(b: bytes, at: int, v: int) -> bytes:
    return b[:at] + bytes([v]) + b[at + 1:]


def test_booleans_are_zero_or_one():
    b = poke(encode(Message(MsgType.CONNECT, 1, Connect())), CONNECT_CACHED + 6, 2)
    assert decode_error(b) == "CONNECT: cached.nagle is 2, expected 0 or 1"
    b = poke(encode(Message(MsgType.LISTEN, 1, Listen())), 16 + 4 + 7, 0xFF)
    assert decode_error(b) == "LISTEN: cached.keepalive is 255, expected 0 or 1"


def test_reserved_and_padding_must_be_zero():
    good = encode(Message(MsgType.OFFLOAD, 1, Offload()))
    assert decode_error(poke(good, OFFLOAD_CONST + 16, 8)) == \
        "OFFLOAD: constant.flags is 0x08, only bits 0..2 (window_scaling, timestamps, sack) are defined"
    assert decode_error(poke(good, OFFLOAD_CONST + 18, 1)) == "OFFLOAD: constant.reserved is 1, expected 0"
    assert decode_error(poke(good, OFFLOAD_CACHED + 23, 0x80)) == \
        "OFFLOAD: cached.reserved is 2147483648, expected 0"
    assert decode_error(poke(good, OFFLOAD_PADDING + 1, 1)) == "OFFLOAD: padding is 1, expected 0"
    assert decode_error(poke(good, OFFLOAD_DELEGATED, 11)) == \
        "OFFLOAD: delegated.state is 11, expected 0..10 (TcpState)"
    b = poke(encode(Message(MsgType.CONNECT, 1, Connect())), CONNECT_CACHED + 20, 1)
    assert decode_error(b) == "CONNECT: cached.reserved is 1, expected 0"
    b = poke(encode(Message(MsgType.EVENT, 0, Event())), 16 + 6, 1)
    assert decode_error(b) == "EVENT: reserved is 1, expected 0"


def test_event_kind_and_reason():
    assert decode_error(encode(Message(MsgType.EVENT, 0, Event(1, 5, 0, 0)))) == "EVENT: kind is 5, expected 0..4"
    assert decode_error(encode(Message(MsgType.EVENT, 0, Event(1, WireEvent.RETRIEVE, 5, 0)))) == \
        "EVENT: reason is 5, expected 0..4 (RetrieveReason)"


def test_statuses_are_carried_as_is_and_named():
    d = decode(encode(Message(MsgType.SEND_COMPLETE, 1, Completion(1, 0xC0000099, 0))))
    assert d.body.status == 0xC0000099
    assert p.status_name(0xC0000099) == "NDIS_STATUS_0xC0000099"
    assert p.status_name(0) == "NDIS_STATUS_SUCCESS"
    assert p.status_name(0xC023100C) == "NDIS_STATUS_OFFLOAD_TCP_RCV_WINDOW"
    assert p.status_value("NDIS_STATUS_UPLOAD_IN_PROGRESS") == 0xC0231001
    assert len(p.STATUS_NAMES) == 11


def test_status_names_match_lib_chimney():
    """The table in chimney.cpp and the Python one agree entry by entry."""
    src = (ROOT / "lib" / "chimney" / "chimney.cpp").read_text()
    hdr = (ROOT / "lib" / "chimney" / "status.hpp").read_text()
    values = {m.group(1): int(m.group(2), 16)
              for m in re.finditer(r"(\w+)\s*=\s*0x([0-9A-Fa-f]+)", hdr)}
    names = dict(re.findall(r"\{Status::(\w+),\s*\"(NDIS_STATUS_\w+)\"\}", src))
    assert len(names) == len(p.STATUS_NAMES)
    for enum_name, ndis_name in names.items():
        assert p.STATUS_NAMES[values[enum_name]] == ndis_name


def test_first_error_wins():
    s = OffloadState()
    s.cached.congestion = 9
    s.delegated.state = 12
    assert decode_error(encode(Message(MsgType.OFFLOAD, 1, Offload(s)))) == \
        "OFFLOAD: cached.congestion is 9, expected 0 (newreno) or 1 (cubic)"


# ---- the client (chimney.client) against a scripted fake target: no chimneyd,
# only the control socket as the spec describes it

import mmap  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from chimney.client import ChimneyError, RegionFull, Target  # noqa: E402

SUCCESS = 0
ABORTED = 0xC023000C


class FakeTarget:
    """Accepts one session on a Unix socket, answers HELLO and REGISTER_MEMORY
    (mapping the memfd it receives), and hands every other message to
    `handler(fake, message)`, which may answer with fake.send(...)."""

    def __init__(self, path, handler):
        self.path = str(path)
        self.handler = handler
        self.received = []
        self.region = None
        self.region_size = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.conn = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def send(self, type_, tag, body):
        self.conn.sendall(encode(Message(type_, tag, body)))

    def run(self):
        self.conn, _ = self.listener.accept()
        buf = b""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.conn, 1 << 16, 4)
            except OSError:
                return
            if not data:
                return
            buf += data
            while (n := message_length(buf)) is not None and len(buf) >= n:
                m = decode(buf[:n])
                buf = buf[n:]
                self.received.append(m)
                if m.type == MsgType.HELLO:
                    self.send(MsgType.HELLO_REPLY, m.tag, HelloReply(1, 65536, 77))
                elif m.type == MsgType.REGISTER_MEMORY:
                    assert len(fds) == 1, "REGISTER_MEMORY carries one fd"
                    self.region_size = m.body.size
                    self.region = mmap.mmap(fds[0], m.body.size)
                    os.close(fds[0])
                    self.send(MsgType.REGISTERED, m.tag, Registered(5))
                else:
                    self.handler(self, m)

    def close(self):
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.conn.close()
        self.listener.close()


@pytest.fixture
def fake(tmp_path):
    made = []

    def start(handler=lambda fake, m: None):
        f = FakeTarget(tmp_path / "chimney.sock", handler)
        made.append(f)
        return f
    yield start
    for f in made:
        f.close()


def complete_everything(fake, m):
    """A target that offloads, completes sends and receives at once, and fills
    receive buffers with 'x'."""
    T = MsgType
    if m.type in (T.CONNECT, T.OFFLOAD):
        fake.send(T.OFFLOAD_COMPLETE, m.tag, OffloadComplete(SUCCESS, 0x10001))
    elif m.type == T.SEND:
        fake.send(T.SEND_COMPLETE, m.tag, Completion(m.body.handle, SUCCESS, m.body.buf.length))
    elif m.type == T.RECEIVE:
        b = m.body.buf
        n = min(b.length, 5)
        fake.region[b.offset:b.offset + n] = b"x" * n
        fake.send(T.RECEIVE_COMPLETE, m.tag, Completion(m.body.handle, SUCCESS, n))
    elif m.type == T.DISCONNECT:
        fake.send(T.DISCONNECT_COMPLETE, m.tag, Completion(m.body.handle, SUCCESS, m.body.buf.length))
    elif m.type in (T.LISTEN, T.RELEASE_LISTEN):
        fake.send(T.OK, m.tag, Ok())
    elif m.type == T.STATS:
        fake.send(T.STATS_REPLY, m.tag, StatsReply('{"sessions": 1}'))


def test_client_session_and_requests(fake):
    f = fake(complete_everything)
    with Target(f.path, region_size=1 << 20, timeout=5) as t:
        assert (t.session, t.region) == (77, 5)
        assert f.region_size == 1 << 20
        conn = t.connect("198.18.0.1", 80, ttl=32, congestion="newreno")
        assert conn.handle == 0x10001
        connect = f.received[2].body
        assert (connect.remote_ip, connect.remote_port, connect.cached.ttl) == (0xC6120001, 80, 32)
        assert connect.cached.congestion == p.CongestionAlgorithm.NEWRENO

        c = conn.send(b"hello").wait(5)
        assert (c.status, c.bytes_transferred, c.ok) == ("NDIS_STATUS_SUCCESS", 5, True)
        send = f.received[-1].body
        assert bytes(f.region[send.buf.offset:send.buf.offset + 5]) == b"hello"  # zero-copy: in the region

        c = conn.post_receive(100, push=False).wait(5)
        assert (c.data, c.bytes_transferred) == (b"xxxxx", 5)
        assert f.received[-1].body.flags == p.RECEIVE_NO_PUSH

        c = conn.disconnect(data=b"bye").wait(5)
        assert f.received[-1].body.kind == 0 and f.received[-1].body.buf.length == 3
        assert conn.disconnect(graceful=False).wait(5).status == "NDIS_STATUS_SUCCESS"
        assert f.received[-1].body.kind == 1

        assert t.region_available() == 1 << 20  # every buffer freed on completion
        assert t.stats() == {"sessions": 1}
        t.listen(8080, backlog=4)
        assert f.received[-1].body.backlog == 4


def test_client_errors_raise_with_code_and_text(fake):
    def handler(fake, m):
        fake.send(MsgType.ERROR, m.tag, Error(0xE0000004, f"no handle {m.body.handle}"))
    f = fake(handler)
    with Target(f.path, region_size=1 << 20, timeout=5) as t:
        from chimney.client import Connection
        conn = Connection(t, 9)
        with pytest.raises(ChimneyError) as e:
            conn.send(b"abc").wait(5)
        assert e.value.code == 0xE0000004 and e.value.text == "no handle 9"
        assert e.value.status == "UNKNOWN_HANDLE"
        assert t.region_available() == 1 << 20


def test_client_refused_offload(fake):
    f = fake(lambda fake, m: fake.send(MsgType.OFFLOAD_COMPLETE, m.tag, OffloadComplete(0xC0231004, 0)))
    with Target(f.path, region_size=1 << 20, timeout=5) as t:
        with pytest.raises(ChimneyError) as e:
            t.connect("198.18.0.1", 80)
        assert e.value.status == "NDIS_STATUS_OFFLOAD_TCP_ENTRIES"


def test_client_waits_time_out_and_never_hang(fake):
    f = fake()  # answers nothing past REGISTER_MEMORY
    with Target(f.path, region_size=1 << 20, timeout=0.2) as t:
        with pytest.raises(TimeoutError):
            t.connect("198.18.0.1", 80)
        from chimney.client import Connection
        req = Connection(t, 1).post_receive(10)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            req.wait(0.2)
        with pytest.raises(TimeoutError):
            t.next_event(0.1)
        with pytest.raises(TimeoutError):
            t.accept(0.1)
        assert time.monotonic() - start < 2
        # The target going away fails what still waits, at once.
        f.conn.shutdown(socket.SHUT_RDWR)
        with pytest.raises(ChimneyError, match="closed the session"):
            req.wait(5)
        with pytest.raises(ChimneyError):
            t.next_event(5)


def test_client_events_and_accepts(fake):
    def handler(fake, m):
        if m.type == MsgType.LISTEN:
            fake.send(MsgType.OK, m.tag, Ok())
            fake.send(MsgType.ACCEPT, 0, Accept(8080, 40000, 0xC6120001, 0x20002))
            fake.send(MsgType.EVENT, 0, Event(0x20002, WireEvent.RETRIEVE, 2, 0))
            fake.send(MsgType.EVENT, 0, Event(0x20002, WireEvent.RECEIVE_READY, 0, 1234))
    f = fake(handler)
    with Target(f.path, region_size=1 << 20, timeout=5) as t:
        t.listen(8080)
        conn = t.accept(5)
        assert (conn.handle, conn.remote_ip, conn.remote_port, conn.local_port) == \
            (0x20002, "198.18.0.1", 40000, 8080)
        e = t.next_event(5)
        assert (e.conn, e.kind, e.reason) == (conn, "RETRIEVE", "UploadRequested")
        e = t.next_event(5)
        assert (e.kind, e.reason, e.value) == ("RECEIVE_READY", None, 1234)


def test_client_offload_and_terminate(fake):
    sends = []

    def handler(fake, m):
        T = MsgType
        if m.type == T.OFFLOAD:
            fake.send(T.OFFLOAD_COMPLETE, m.tag, OffloadComplete(SUCCESS, 0x30003))
        elif m.type == T.SEND:
            sends.append(m)  # never completed: handed back by TERMINATE
        elif m.type == T.TERMINATE:
            st = OffloadState()
            st.delegated.state = TcpState.CLOSE_WAIT
            st.delegated.snd_una = 1000
            fake.send(T.TERMINATE_COMPLETE, m.tag,
                      TerminateComplete(m.body.handle, SUCCESS, st,
                                        [ReturnedSend(s.tag, 2) for s in sends], b"undelivered"))
    f = fake(handler)
    with Target(f.path, region_size=1 << 20, timeout=5) as t:
        conn = t.offload({
            "constant": {"local_ip": "198.18.0.2", "remote_ip": "198.18.0.1", "local_port": 40000,
                         "remote_port": 80, "remote_mss": 1460, "sack": True},
            "cached": {"congestion": "cubic", "nagle": False},
            "delegated": {"state": "ESTABLISHED", "snd_una": 1000, "snd_nxt": 1004, "snd_max": 1004},
            "path": {"next_hop_mac": "02:00:00:00:00:01"},
            "receive_data": b"inherited",
            "send_data": b"abcd",
        })
        off = f.received[2].body
        assert off.receive_data == b"inherited"
        assert (off.state.constant.local_ip, off.state.constant.sack) == (0xC6120002, True)
        assert off.state.delegated.state == TcpState.ESTABLISHED
        assert off.state.path.next_hop_mac == bytes([2, 0, 0, 0, 0, 1])
        deadline = time.monotonic() + 5
        while not sends and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sends and sends[0].body.buf.length == 4  # the inherited send data, SENT after the offload
        second = conn.send(b"efgh")
        while len(sends) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

        state = conn.terminate()
        assert state["state"] == "CLOSE_WAIT" and state["snd_una"] == 1000
        assert state["send_data"] == [(conn.inherited_send.tag, 2), (second.tag, 2)]
        assert state["unacked_send_data"] == b"cdgh"
        assert state["receive_data"] == b"undelivered"
        c = second.wait(1)
        assert (c.returned, c.status, c.bytes_transferred) == (True, "NDIS_STATUS_UPLOAD_IN_PROGRESS", 2)
        assert t.region_available() == 1 << 20
        with pytest.raises(ChimneyError):
            conn.send(b"late")


def test_client_region_full(fake):
    f = fake(complete_everything)
    with Target(f.path, region_size=4096, timeout=5) as t:
        conn = t.connect("198.18.0.1", 80)
        with pytest.raises(RegionFull):
            conn.send(b"x" * 5000)


def test_offload_state_dict_forms():
    from chimney.client import offload_state_from_dict
    nested, _, _ = offload_state_from_dict({"constant": {"remote_port": 80}, "delegated": {"state": 7}})
    flat, rd, sd = offload_state_from_dict({"remote_port": 80, "state": "CLOSE_WAIT", "receive_data": b"r",
                                            "send_data": b"s"})
    assert nested == flat and (rd, sd) == (b"r", b"s")
    with pytest.raises(ValueError):
        offload_state_from_dict({"no_such_field": 1})
    with pytest.raises(ValueError):
        offload_state_from_dict({"remote_port": 1, "constant": {"remote_port": 2}})
