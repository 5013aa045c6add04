"""The control protocol's messages and their codec (docs/CONTROL_PROTOCOL.md, version 1).

Pure standard library. It mirrors lib/control/protocol.cpp: the same layouts,
the same checks and the same error texts ("SEND: body is 16 bytes, expected 20"),
so the C++ and Python codecs accept exactly the same bytes. Both are pinned by
the hand-written vectors of tests/unit/control/golden.hex.

    encode(Message) -> bytes                 raises ValueError (too long, bad value)
    message_length(buf) -> int | None        None until 16 bytes are there;
                                             raises DecodeError for a bad header
    decode(buf) -> Message                   exactly one whole message;
                                             raises DecodeError naming the problem

OffloadState is 136 bytes on the wire: the spec's fields add up to 134 bytes,
then two bytes of zero padding (the spec's "padding to 128" cannot hold).
Integers are little-endian; IPv4 addresses are u32 in host order
(198.18.0.1 == 0xC6120001), as chimney::ConstState keeps them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Union

VERSION = 1
HEADER_SIZE = 16
MAX_MESSAGE = (16 << 20) + 65536  # lib/control/protocol.hpp kMaxMessage
MAX_BODY = MAX_MESSAGE - HEADER_SIZE

CONST_STATE_SIZE = 20
CACHED_STATE_SIZE = 24
DELEGATED_STATE_SIZE = 76
PATH_STATE_SIZE = 14
OFFLOAD_STATE_FIELDS = CONST_STATE_SIZE + CACHED_STATE_SIZE + DELEGATED_STATE_SIZE + PATH_STATE_SIZE
OFFLOAD_STATE_SIZE = 136

RECEIVE_NO_PUSH = 1
FLAG_WINDOW_SCALING = 1
FLAG_TIMESTAMPS = 2
FLAG_SACK = 4


class MsgType(enum.IntEnum):
    HELLO = 1
    REGISTER_MEMORY = 2
    UNREGISTER_MEMORY = 3
    CONNECT = 4
    LISTEN = 5
    OFFLOAD = 6
    SEND = 7
    RECEIVE = 8
    DISCONNECT = 9
    TERMINATE = 10
    STATS = 11
    RELEASE_LISTEN = 12
    ATTACH = 13

    HELLO_REPLY = 101
    REGISTERED = 102
    OFFLOAD_COMPLETE = 103
    SEND_COMPLETE = 104
    RECEIVE_COMPLETE = 105
    DISCONNECT_COMPLETE = 106
    TERMINATE_COMPLETE = 107
    STATS_REPLY = 108
    OK = 109
    EVENT = 110
    ACCEPT = 111
    ATTACHED = 112
    ERROR = 199


COMPLETION_TYPES = (MsgType.SEND_COMPLETE, MsgType.RECEIVE_COMPLETE, MsgType.DISCONNECT_COMPLETE)


class ProtocolError(enum.IntEnum):
    """ERROR.code values beside the NDIS statuses."""
    MALFORMED = 0xE0000001
    UNSUPPORTED_VERSION = 0xE0000002
    BAD_BUFFER = 0xE0000003
    UNKNOWN_HANDLE = 0xE0000004
    LIMIT = 0xE0000005
    NOT_ALLOWED = 0xE0000006


class WireEvent(enum.IntEnum):
    DISCONNECT = 0
    ABORT = 1
    RETRIEVE = 2
    SEND_BACKLOG_CHANGE = 3
    RECEIVE_READY = 4


class TcpState(enum.IntEnum):
    """chimney::TcpState, in its order (RFC 9293 §3.3.2); names as chimney prints them."""
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10


class CongestionAlgorithm(enum.IntEnum):
    NEWRENO = 0
    CUBIC = 1


# chimney::RetrieveReason, in its order.
RETRIEVE_REASONS = ("None", "TimeoutExpiration", "UploadRequested", "InvalidState", "TimeWait")

# The NDIS statuses of CONTRACT.md, named as lib/chimney/chimney.cpp names them.
STATUS_NAMES = {
    0x00000000: "NDIS_STATUS_SUCCESS",
    0x00000103: "NDIS_STATUS_PENDING",
    0xC023000C: "NDIS_STATUS_REQUEST_ABORTED",
    0xC0231001: "NDIS_STATUS_UPLOAD_IN_PROGRESS",
    0xC0000184: "NDIS_STATUS_INVALID_STATE",
    0xC0000001: "NDIS_STATUS_FAILURE",
    0xC000009A: "NDIS_STATUS_RESOURCES",
    0xC0231004: "NDIS_STATUS_OFFLOAD_TCP_ENTRIES",
    0xC023100A: "NDIS_STATUS_OFFLOAD_TCP_XMIT_BUFFER",
    0xC023100B: "NDIS_STATUS_OFFLOAD_TCP_RCV_BUFFER",
    0xC023100C: "NDIS_STATUS_OFFLOAD_TCP_RCV_WINDOW",
}
STATUS_VALUES = {name: value for value, name in STATUS_NAMES.items()}
STATUS_SUCCESS = 0


def status_name(value: int) -> str:
    """"NDIS_STATUS_SUCCESS", ...; "NDIS_STATUS_0x........" for a value not listed."""
    name = STATUS_NAMES.get(value)
    return name if name is not None else "NDIS_STATUS_0x%08X" % value


def status_value(name: str) -> int:
    """The NDIS value of a status name; raises KeyError for an unknown name."""
    return STATUS_VALUES[name]


class DecodeError(ValueError):
    """Bytes that are not a valid message; the text names the type and the field."""


# ---- state (chimney::OffloadState, lib/chimney/offload_state.hpp; same field names)

@dataclass
class ConstState:
    local_ip: int = 0
    remote_ip: int = 0
    local_port: int = 0
    remote_port: int = 0
    remote_mss: int = 536
    snd_wscale: int = 0
    rcv_wscale: int = 0
    window_scaling: bool = False
    timestamps: bool = False
    sack: bool = False


@dataclass
class CachedState:
    initial_rcv_wnd: int = 65535
    ttl: int = 64
    tos: int = 0
    nagle: bool = True
    keepalive: bool = False
    keepalive_timeout_ms: int = 7_200_000
    keepalive_interval_ms: int = 75_000
    keepalive_probes: int = 9
    max_retransmissions: int = 15
    max_persist_probes: int = 0
    congestion: int = CongestionAlgorithm.CUBIC


@dataclass
class DelegatedState:
    state: int = TcpState.ESTABLISHED
    rcv_nxt: int = 0
    rcv_wnd: int = 0
    snd_una: int = 0
    snd_nxt: int = 0
    snd_max: int = 0
    snd_wnd: int = 0
    max_snd_wnd: int = 0
    snd_wl1: int = 0
    snd_wl2: int = 0
    cwnd: int = 0
    ssthresh: int = 0x7FFFFFFF
    srtt_us: int = 0
    rttvar_us: int = 0
    ts_recent: int = 0
    ts_recent_age_ms: int = 0
    ts_time: int = 0
    total_rt: int = 0
    dup_ack_count: int = 0
    retransmit_timer_ms: int = 0
    keepalive_timer_ms: int = 0


# The u32 fields of DelegatedState, in wire order.
DELEGATED_U32 = ("rcv_nxt", "rcv_wnd", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "max_snd_wnd",
                 "snd_wl1", "snd_wl2", "cwnd", "ssthresh", "srtt_us", "rttvar_us", "ts_recent",
                 "ts_recent_age_ms", "ts_time", "retransmit_timer_ms", "keepalive_timer_ms")


@dataclass
class PathState:
    local_mac: bytes = bytes(6)
    next_hop_mac: bytes = bytes(6)
    path_mtu: int = 1500


@dataclass
class OffloadState:
    constant: ConstState = field(default_factory=ConstState)
    cached: CachedState = field(default_factory=CachedState)
    delegated: DelegatedState = field(default_factory=DelegatedState)
    path: PathState = field(default_factory=PathState)


# ---- bodies (the structs of lib/control/protocol.hpp; same names and fields)

@dataclass
class BufferRef:
    region: int = 0
    offset: int = 0
    length: int = 0


@dataclass
class Hello:
    client_version: int = VERSION


@dataclass
class RegisterMemory:
    size: int = 0


@dataclass
class UnregisterMemory:
    region: int = 0


@dataclass
class Connect:
    remote_ip: int = 0
    remote_port: int = 0
    local_port: int = 0
    cached: CachedState = field(default_factory=CachedState)


@dataclass
class Listen:
    port: int = 0
    backlog: int = 0
    cached: CachedState = field(default_factory=CachedState)


@dataclass
class Offload:
    state: OffloadState = field(default_factory=OffloadState)
    receive_data: bytes = b""
    # C-3: bytes of inherited send data the host posts as SENDs after the
    # offload; in FIN_WAIT_1, CLOSING and LAST_ACK the inherited FIN follows them.
    send_data_to_follow: int = 0


@dataclass
class Send:
    handle: int = 0
    buf: BufferRef = field(default_factory=BufferRef)


@dataclass
class Receive:
    handle: int = 0
    buf: BufferRef = field(default_factory=BufferRef)
    flags: int = 0


@dataclass
class Disconnect:
    handle: int = 0
    kind: int = 0  # 0 graceful, 1 abortive
    buf: BufferRef = field(default_factory=BufferRef)


@dataclass
class Terminate:
    handle: int = 0


@dataclass
class Stats:
    pass


@dataclass
class ReleaseListen:
    port: int = 0


@dataclass
class Attach:
    session: int = 0


@dataclass
class Attached:
    connections: int = 0
    regions: int = 0


@dataclass
class HelloReply:
    server_version: int = VERSION
    max_message: int = MAX_MESSAGE
    session: int = 0


@dataclass
class Registered:
    region: int = 0


@dataclass
class OffloadComplete:
    status: int = STATUS_SUCCESS
    handle: int = 0


@dataclass
class Completion:
    """SEND_COMPLETE, RECEIVE_COMPLETE, DISCONNECT_COMPLETE: Message.type says which."""
    handle: int = 0
    status: int = STATUS_SUCCESS
    bytes_transferred: int = 0


@dataclass
class ReturnedSend:
    tag: int = 0
    bytes_transferred: int = 0


@dataclass
class TerminateComplete:
    handle: int = 0
    status: int = STATUS_SUCCESS
    state: OffloadState = field(default_factory=OffloadState)
    sends: List[ReturnedSend] = field(default_factory=list)
    receive_data: bytes = b""


@dataclass
class StatsReply:
    json: Union[str, bytes] = ""  # bytes are written as they are (tests of invalid UTF-8)


@dataclass
class Ok:
    pass


@dataclass
class Event:
    handle: int = 0
    kind: int = WireEvent.DISCONNECT
    reason: int = 0
    value: int = 0


@dataclass
class Accept:
    local_port: int = 0
    remote_port: int = 0
    remote_ip: int = 0
    handle: int = 0


@dataclass
class Error:
    code: int = 0
    text: Union[str, bytes] = ""  # bytes are written as they are (tests of invalid UTF-8)


Body = Union[Hello, RegisterMemory, UnregisterMemory, Connect, Listen, Offload, Send, Receive,
             Disconnect, Terminate, Stats, ReleaseListen, HelloReply, Registered, OffloadComplete,
             Completion, TerminateComplete, StatsReply, Ok, Event, Accept, Error, Attach, Attached]

BODY_TYPES = {
    Hello: MsgType.HELLO, RegisterMemory: MsgType.REGISTER_MEMORY,
    UnregisterMemory: MsgType.UNREGISTER_MEMORY, Connect: MsgType.CONNECT, Listen: MsgType.LISTEN,
    Offload: MsgType.OFFLOAD, Send: MsgType.SEND, Receive: MsgType.RECEIVE,
    Disconnect: MsgType.DISCONNECT, Terminate: MsgType.TERMINATE, Stats: MsgType.STATS,
    ReleaseListen: MsgType.RELEASE_LISTEN, HelloReply: MsgType.HELLO_REPLY,
    Registered: MsgType.REGISTERED, OffloadComplete: MsgType.OFFLOAD_COMPLETE,
    TerminateComplete: MsgType.TERMINATE_COMPLETE, StatsReply: MsgType.STATS_REPLY, Ok: MsgType.OK,
    Event: MsgType.EVENT, Accept: MsgType.ACCEPT, Error: MsgType.ERROR,
    Attach: MsgType.ATTACH, Attached: MsgType.ATTACHED,
}


@dataclass
class Message:
    """type is read by encode only for a Completion (SEND/RECEIVE/DISCONNECT_COMPLETE);
    every other body names its own type. A decoded message's type is the header's."""
    type: Optional[int]
    tag: int
    body: Body


# ---- encoding

_HEADER = struct.Struct("<IHHQ")
_CACHED = struct.Struct("<IBBBBIIBBBBI")
_CONST = struct.Struct("<IIHHHBBB3s")
_DELEGATED = struct.Struct("<BBH18I")
_PATH = struct.Struct("<6s6sH2s")
_BUFFER = struct.Struct("<IQI")
assert _CONST.size == CONST_STATE_SIZE and _CACHED.size == CACHED_STATE_SIZE
assert _DELEGATED.size == DELEGATED_STATE_SIZE and _PATH.size == PATH_STATE_SIZE + 2


def _pack(fmt: str, *values) -> bytes:
    try:
        return struct.pack(fmt, *values)
    except struct.error as e:
        raise ValueError(f"value out of range for {fmt}: {values}: {e}") from None


def _bool(v) -> int:
    return 1 if v else 0


def _cached_bytes(c: CachedState) -> bytes:
    return _pack(_CACHED.format, c.initial_rcv_wnd, c.ttl, c.tos, _bool(c.nagle), _bool(c.keepalive),
                 c.keepalive_timeout_ms, c.keepalive_interval_ms, c.keepalive_probes,
                 c.max_retransmissions, c.max_persist_probes, int(c.congestion), 0)


def _mac(v, name: str) -> bytes:
    b = bytes(v)
    if len(b) != 6:
        raise ValueError(f"{name} must be 6 bytes, got {len(b)}")
    return b


def _offload_state_bytes(s: OffloadState) -> bytes:
    k, d, p = s.constant, s.delegated, s.path
    flags = ((FLAG_WINDOW_SCALING if k.window_scaling else 0) | (FLAG_TIMESTAMPS if k.timestamps else 0)
             | (FLAG_SACK if k.sack else 0))
    out = _pack(_CONST.format, k.local_ip, k.remote_ip, k.local_port, k.remote_port, k.remote_mss,
                k.snd_wscale, k.rcv_wscale, flags, bytes(3))
    out += _cached_bytes(s.cached)
    out += _pack(_DELEGATED.format, int(d.state), d.dup_ack_count, d.total_rt,
                 *(getattr(d, f) for f in DELEGATED_U32))
    out += _pack(_PATH.format, _mac(p.local_mac, "path.local_mac"), _mac(p.next_hop_mac, "path.next_hop_mac"),
                 p.path_mtu, bytes(2))
    assert len(out) == OFFLOAD_STATE_SIZE
    return out


def _text(v) -> bytes:
    return bytes(v) if isinstance(v, (bytes, bytearray)) else v.encode("utf-8")


def _buffer_bytes(b: BufferRef) -> bytes:
    return _pack(_BUFFER.format, b.region, b.offset, b.length)


def _body_bytes(body) -> bytes:
    t = type(body)
    if t is Hello:
        return _pack("<I", body.client_version)
    if t is RegisterMemory:
        return _pack("<Q", body.size)
    if t in (UnregisterMemory, Registered):
        return _pack("<I", body.region)
    if t is Connect:
        return _pack("<IHH", body.remote_ip, body.remote_port, body.local_port) + _cached_bytes(body.cached)
    if t is Listen:
        return _pack("<HH", body.port, body.backlog) + _cached_bytes(body.cached)
    if t is Offload:
        data = bytes(body.receive_data)
        return _offload_state_bytes(body.state) + _pack("<II", body.send_data_to_follow, len(data)) + data
    if t is Send:
        return _pack("<I", body.handle) + _buffer_bytes(body.buf)
    if t is Receive:
        return _pack("<I", body.handle) + _buffer_bytes(body.buf) + _pack("<I", body.flags)
    if t is Disconnect:
        return _pack("<II", body.handle, body.kind) + _buffer_bytes(body.buf)
    if t is Terminate:
        return _pack("<I", body.handle)
    if t in (Stats, Ok):
        return b""
    if t is Attach:
        return _pack("<Q", body.session)
    if t is Attached:
        return _pack("<II", body.connections, body.regions)
    if t is ReleaseListen:
        return _pack("<H", body.port)
    if t is HelloReply:
        return _pack("<IIQ", body.server_version, body.max_message, body.session)
    if t is OffloadComplete:
        return _pack("<II", body.status, body.handle)
    if t is Completion:
        return _pack("<IIQ", body.handle, body.status, body.bytes_transferred)
    if t is TerminateComplete:
        data = bytes(body.receive_data)
        parts = [_pack("<II", body.handle, body.status), _offload_state_bytes(body.state),
                 _pack("<I", len(body.sends))]
        parts.extend(_pack("<QQ", s.tag, s.bytes_transferred) for s in body.sends)  # linear, not +=
        parts += [_pack("<I", len(data)), data]
        return b"".join(parts)
    if t is StatsReply:
        return _text(body.json)
    if t is Event:
        return _pack("<IBBHI", body.handle, int(body.kind), body.reason, 0, body.value)
    if t is Accept:
        return _pack("<HHII", body.local_port, body.remote_port, body.remote_ip, body.handle)
    if t is Error:
        return _pack("<I", body.code) + _text(body.text)
    raise TypeError(f"not a message body: {body!r}")


def type_of(m: Message) -> MsgType:
    if isinstance(m.body, Completion):
        if m.type not in COMPLETION_TYPES:
            raise ValueError(f"a Completion needs type SEND/RECEIVE/DISCONNECT_COMPLETE, not {m.type!r}")
        return MsgType(m.type)
    return BODY_TYPES[type(m.body)]


def encode(m: Message) -> bytes:
    """The message, header included. Raises ValueError when it would exceed
    MAX_MESSAGE or a field does not fit its width."""
    mtype = type_of(m)
    body = _body_bytes(m.body)
    length = HEADER_SIZE + len(body)
    if length > MAX_MESSAGE:
        raise ValueError(f"{mtype.name}: message of {length} bytes exceeds {MAX_MESSAGE}")
    return _pack("<IHHQ", length, VERSION, int(mtype), m.tag) + body


# ---- decoding

def message_length(buf) -> Optional[int]:
    """The length of the message at the start of buf once its header is whole:
    None while fewer than 16 bytes are there; DecodeError for a length outside
    16..MAX_MESSAGE or a version other than 1."""
    if len(buf) < HEADER_SIZE:
        return None
    length, version = struct.unpack_from("<IH", buf, 0)
    if length < HEADER_SIZE or length > MAX_MESSAGE:
        raise DecodeError(f"header: length is {length}, expected {HEADER_SIZE}..{MAX_MESSAGE}")
    if version != VERSION:
        raise DecodeError(f"header: version is {version}, expected {VERSION}")
    return length


class _Check:
    """Collects the first error of a decode, prefixed with the message type's name."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.error: Optional[str] = None

    def fail(self, text: str) -> None:
        if self.error is None:
            self.error = f"{self.prefix}: {text}"

    def body_is(self, have: int, want: int) -> bool:
        if have != want:
            self.fail(f"body is {have} bytes, expected {want}")
        return self.error is None

    def body_at_least(self, have: int, want: int) -> bool:
        if have < want:
            self.fail(f"body is {have} bytes, expected at least {want}")
        return self.error is None

    def boolean(self, name: str, v: int) -> bool:
        if v > 1:
            self.fail(f"{name} is {v}, expected 0 or 1")
        return v == 1

    def zero(self, name: str, v: int) -> None:
        if v != 0:
            self.fail(f"{name} is {v}, expected 0")


def _get_cached(buf, off: int, c: _Check, name: str) -> CachedState:
    (wnd, ttl, tos, nagle, keepalive, ka_to, ka_iv, probes, rexmt, persist, congestion,
     reserved) = _CACHED.unpack_from(buf, off)
    s = CachedState(initial_rcv_wnd=wnd, ttl=ttl, tos=tos,
                    nagle=c.boolean(f"{name}.nagle", nagle), keepalive=c.boolean(f"{name}.keepalive", keepalive),
                    keepalive_timeout_ms=ka_to, keepalive_interval_ms=ka_iv, keepalive_probes=probes,
                    max_retransmissions=rexmt, max_persist_probes=persist)
    if congestion > CongestionAlgorithm.CUBIC:
        c.fail(f"{name}.congestion is {congestion}, expected 0 (newreno) or 1 (cubic)")
        s.congestion = congestion
    else:
        s.congestion = CongestionAlgorithm(congestion)
    c.zero(f"{name}.reserved", reserved)
    return s


def _get_offload_state(buf, off: int, c: _Check) -> OffloadState:
    s = OffloadState()
    (lip, rip, lport, rport, mss, snd_ws, rcv_ws, flags, reserved) = _CONST.unpack_from(buf, off)
    if flags & ~(FLAG_WINDOW_SCALING | FLAG_TIMESTAMPS | FLAG_SACK):
        c.fail("constant.flags is 0x%02x, only bits 0..2 (window_scaling, timestamps, sack) are defined" % flags)
    for b in reserved:
        c.zero("constant.reserved", b)
    s.constant = ConstState(local_ip=lip, remote_ip=rip, local_port=lport, remote_port=rport, remote_mss=mss,
                            snd_wscale=snd_ws, rcv_wscale=rcv_ws,
                            window_scaling=bool(flags & FLAG_WINDOW_SCALING),
                            timestamps=bool(flags & FLAG_TIMESTAMPS), sack=bool(flags & FLAG_SACK))
    off += CONST_STATE_SIZE
    s.cached = _get_cached(buf, off, c, "cached")
    off += CACHED_STATE_SIZE
    state, dup, total_rt, *u32s = _DELEGATED.unpack_from(buf, off)
    if state > TcpState.TIME_WAIT:
        c.fail(f"delegated.state is {state}, expected 0..{int(TcpState.TIME_WAIT)} (TcpState)")
    d = DelegatedState(state=TcpState(state) if state <= TcpState.TIME_WAIT else state,
                       dup_ack_count=dup, total_rt=total_rt)
    for name, v in zip(DELEGATED_U32, u32s):
        setattr(d, name, v)
    s.delegated = d
    off += DELEGATED_STATE_SIZE
    local_mac, next_hop_mac, mtu, padding = _PATH.unpack_from(buf, off)
    s.path = PathState(local_mac=local_mac, next_hop_mac=next_hop_mac, path_mtu=mtu)
    for b in padding:
        c.zero("padding", b)
    return s


def _get_text(raw: bytes, c: _Check, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        c.fail(f"{name} is not valid UTF-8 (at byte {e.start})")
        return ""


def _decode_body(mtype: MsgType, body: bytes, c: _Check):
    n = len(body)
    T = MsgType
    if mtype == T.HELLO:
        return Hello(*struct.unpack("<I", body)) if c.body_is(n, 4) else None
    if mtype == T.REGISTER_MEMORY:
        return RegisterMemory(*struct.unpack("<Q", body)) if c.body_is(n, 8) else None
    if mtype == T.UNREGISTER_MEMORY:
        return UnregisterMemory(*struct.unpack("<I", body)) if c.body_is(n, 4) else None
    if mtype == T.CONNECT:
        if not c.body_is(n, 8 + CACHED_STATE_SIZE):
            return None
        ip, rport, lport = struct.unpack_from("<IHH", body)
        return Connect(ip, rport, lport, _get_cached(body, 8, c, "cached"))
    if mtype == T.LISTEN:
        if not c.body_is(n, 4 + CACHED_STATE_SIZE):
            return None
        port, backlog = struct.unpack_from("<HH", body)
        return Listen(port, backlog, _get_cached(body, 4, c, "cached"))
    if mtype == T.OFFLOAD:
        if not c.body_at_least(n, OFFLOAD_STATE_SIZE + 8):
            return None
        state = _get_offload_state(body, 0, c)
        to_follow, length = struct.unpack_from("<II", body, OFFLOAD_STATE_SIZE)
        rest = n - OFFLOAD_STATE_SIZE - 8
        if length != rest:
            c.fail(f"n is {length} but {rest} bytes of receive data follow")
            return None
        return Offload(state, bytes(body[OFFLOAD_STATE_SIZE + 8:]), to_follow)
    if mtype == T.SEND:
        if not c.body_is(n, 20):
            return None
        handle, region, offset, length = struct.unpack("<IIQI", body)
        return Send(handle, BufferRef(region, offset, length))
    if mtype == T.RECEIVE:
        if not c.body_is(n, 24):
            return None
        handle, region, offset, length, flags = struct.unpack("<IIQII", body)
        if flags & ~RECEIVE_NO_PUSH:
            c.fail("flags is 0x%08x, only bit 0 (no push) is defined" % flags)
        return Receive(handle, BufferRef(region, offset, length), flags)
    if mtype == T.DISCONNECT:
        if not c.body_is(n, 24):
            return None
        handle, kind, region, offset, length = struct.unpack("<IIIQI", body)
        if kind > 1:
            c.fail(f"kind is {kind}, expected 0 (graceful) or 1 (abortive)")
        return Disconnect(handle, kind, BufferRef(region, offset, length))
    if mtype == T.TERMINATE:
        return Terminate(*struct.unpack("<I", body)) if c.body_is(n, 4) else None
    if mtype == T.STATS:
        return Stats() if c.body_is(n, 0) else None
    if mtype == T.RELEASE_LISTEN:
        return ReleaseListen(*struct.unpack("<H", body)) if c.body_is(n, 2) else None
    if mtype == T.ATTACH:
        return Attach(*struct.unpack("<Q", body)) if c.body_is(n, 8) else None
    if mtype == T.ATTACHED:
        return Attached(*struct.unpack("<II", body)) if c.body_is(n, 8) else None

    if mtype == T.HELLO_REPLY:
        return HelloReply(*struct.unpack("<IIQ", body)) if c.body_is(n, 16) else None
    if mtype == T.REGISTERED:
        return Registered(*struct.unpack("<I", body)) if c.body_is(n, 4) else None
    if mtype == T.OFFLOAD_COMPLETE:
        return OffloadComplete(*struct.unpack("<II", body)) if c.body_is(n, 8) else None
    if mtype in COMPLETION_TYPES:
        return Completion(*struct.unpack("<IIQ", body)) if c.body_is(n, 16) else None
    if mtype == T.TERMINATE_COMPLETE:
        if not c.body_at_least(n, 8 + OFFLOAD_STATE_SIZE + 4 + 4):
            return None
        handle, status = struct.unpack_from("<II", body)
        state = _get_offload_state(body, 8, c)
        off = 8 + OFFLOAD_STATE_SIZE
        (n_sends,) = struct.unpack_from("<I", body, off)
        off += 4
        remaining = n - off
        if 16 * n_sends + 4 > remaining:
            c.fail(f"n_sends is {n_sends} ({16 * n_sends} bytes) but only {remaining} bytes follow")
            return None
        sends = [ReturnedSend(*struct.unpack_from("<QQ", body, off + 16 * i)) for i in range(n_sends)]
        off += 16 * n_sends
        (length,) = struct.unpack_from("<I", body, off)
        off += 4
        if length != n - off:
            c.fail(f"n is {length} but {n - off} bytes of receive data follow")
            return None
        return TerminateComplete(handle, status, state, sends, bytes(body[off:]))
    if mtype == T.STATS_REPLY:
        return StatsReply(_get_text(bytes(body), c, "json"))
    if mtype == T.OK:
        return Ok() if c.body_is(n, 0) else None
    if mtype == T.EVENT:
        if not c.body_is(n, 12):
            return None
        handle, kind, reason, reserved, value = struct.unpack("<IBBHI", body)
        c.zero("reserved", reserved)
        if kind > WireEvent.RECEIVE_READY:
            c.fail(f"kind is {kind}, expected 0..{int(WireEvent.RECEIVE_READY)}")
        if reason > len(RETRIEVE_REASONS) - 1:
            c.fail(f"reason is {reason}, expected 0..{len(RETRIEVE_REASONS) - 1} (RetrieveReason)")
        return Event(handle, WireEvent(kind) if kind <= WireEvent.RECEIVE_READY else kind, reason, value)
    if mtype == T.ACCEPT:
        return Accept(*struct.unpack("<HHII", body)) if c.body_is(n, 12) else None
    if mtype == T.ERROR:
        if not c.body_at_least(n, 4):
            return None
        (code,) = struct.unpack_from("<I", body)
        return Error(code, _get_text(bytes(body[4:]), c, "text"))
    raise AssertionError(mtype)


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)


def decode(buf) -> Message:
    """Decodes exactly one whole message (len(buf) must be its length)."""
    buf = bytes(buf)
    if len(buf) < HEADER_SIZE:
        raise DecodeError(f"header: {len(buf)} bytes, expected at least {HEADER_SIZE}")
    length = message_length(buf)
    if length != len(buf):
        raise DecodeError(f"header: length is {length} but {len(buf)} bytes given")
    _, _, mtype, tag = _HEADER.unpack_from(buf)
    if mtype not in _KNOWN_TYPES:
        raise DecodeError(f"header: unknown message type {mtype}")
    mtype = MsgType(mtype)
    c = _Check(mtype.name)
    body = _decode_body(mtype, buf[HEADER_SIZE:], c)
    if c.error is not None:
        raise DecodeError(c.error)
    return Message(mtype, tag, body)
