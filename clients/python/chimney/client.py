"""A host process's side of chimneyd's control socket (docs/CONTROL_PROTOCOL.md).

    with Target("/run/chimney/chimney.sock") as t:
        conn = t.connect("198.18.0.1", 80)
        conn.send(b"GET / HTTP/1.0\\r\\n\\r\\n").wait(5)
        c = conn.post_receive(4096).wait(5)
        print(c.status, c.data)
        state = conn.terminate()

Pure standard library. One session per Target: a Unix stream socket, one memfd
region shared with the target (payload never travels in messages: SEND data is
copied into the region, RECEIVE data is read from it) and one reader thread that
reads messages as they arrive and hands each to whoever waits for its tag
(requests, calls) or queues it (events, accepted connections).

A host that dies leaves its session detached for chimneyd's control-grace-s;
a new host takes it over with Target.attach(path, state), where `state` is
what the dead host's Target.resume_state() returned (docs/CLIENT.md).

Statuses are NDIS names ("NDIS_STATUS_SUCCESS", CONTRACT.md). A request the
target refuses (ERROR) raises ChimneyError with its code and text; waits with a
timeout raise TimeoutError when it passes; everything waiting raises
ChimneyError when the session ends.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import mmap
import fcntl
import os
import socket
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

from . import protocol as p

DEFAULT_SOCKET = "/run/chimney/chimney.sock"
DEFAULT_REGION_SIZE = 256 << 20
_ALIGN = 64


class ChimneyError(Exception):
    """The target refused a request (ERROR), a completion or offload failed, or the
    session ended. `code`: the NDIS status or 0xE000xxxx protocol error (None for
    errors of this client); `status`: its name; `text`: what the target said."""

    def __init__(self, code: Optional[int], text: str):
        self.code = code
        self.text = text
        self.status = _code_name(code) if code is not None else None
        super().__init__(f"{self.status}: {text}" if code is not None else text)


def _attach_error(text: str) -> ChimneyError:
    return ChimneyError(None, f"attach: {text}")


class RegionFull(ChimneyError):
    """No room in the registered region for a buffer of that size (yet: buffers
    are freed when their requests complete)."""

    def __init__(self, nbytes: int, region_size: int):
        super().__init__(None, f"no free buffer of {nbytes} bytes in the {region_size}-byte region")


def _code_name(code: int) -> str:
    try:
        return p.ProtocolError(code).name
    except ValueError:
        return p.status_name(code)


# ---- values as the user sees them

def _ip_to_int(ip) -> int:
    return int(ip) if isinstance(ip, int) else int(ipaddress.IPv4Address(ip))


def _ip_to_str(v: int) -> str:
    return str(ipaddress.IPv4Address(v))


def _mac_to_bytes(v) -> bytes:
    if isinstance(v, str):
        parts = v.split(":")
        if len(parts) != 6:
            raise ValueError(f"bad MAC address {v!r}")
        return bytes(int(x, 16) for x in parts)
    b = bytes(v)
    if len(b) != 6:
        raise ValueError(f"a MAC address is 6 bytes, got {len(b)}")
    return b


def _mac_to_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


@dataclass
class Completion:
    """How a SEND, RECEIVE or DISCONNECT request ended."""
    status: str                 # NDIS name
    bytes_transferred: int
    data: Optional[bytes] = None  # receives: the bytes the target wrote into the buffer
    status_value: int = 0
    returned: bool = False      # a send handed back by TERMINATE (C-21), not completed

    @property
    def ok(self) -> bool:
        return self.status_value == p.STATUS_SUCCESS


@dataclass
class Event:
    """An EVENT the target indicated (C-16..C-18) or RECEIVE_READY."""
    conn: Optional["Connection"]
    kind: str                   # DISCONNECT, ABORT, RETRIEVE, SEND_BACKLOG_CHANGE, RECEIVE_READY
    reason: Optional[str]       # RETRIEVE: TimeoutExpiration, UploadRequested, InvalidState, TimeWait
    value: int                  # SEND_BACKLOG_CHANGE: bytes; RECEIVE_READY: bytes waiting
    handle: int = 0


class _Waiter:
    """One outstanding tag: the reply arrives on the reader thread."""

    def __init__(self, expect: Tuple[int, ...]):
        self.expect = expect
        self.done = threading.Event()
        self.message: Optional[p.Message] = None
        self.error: Optional[ChimneyError] = None
        self.on_reply = None  # called on the reader thread, under the target's lock

    def wait(self, timeout: Optional[float], what: str) -> p.Message:
        if not self.done.wait(timeout):
            raise TimeoutError(f"{what}: no reply within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.message is not None
        return self.message


class Request:
    """A SEND, RECEIVE or DISCONNECT in flight; completed exactly once.
    `inherited`: posted by the dead host whose session Target.attach took over."""

    def __init__(self, target: "Target", conn: "Connection", kind: str, tag: int,
                 buf: Optional[Tuple[int, int]], inherited: bool = False):
        self.target = target
        self.conn = conn
        self.kind = kind  # "send", "receive", "disconnect"
        self.tag = tag
        self.inherited = inherited
        self._buf = buf   # (offset, allocated length) in the region, freed on completion
        self._data_off = buf[0] if buf else None  # where its data starts (None: not in our mapping)
        self.region = 0   # the region id its buffer is in (0: no buffer)
        self.offset = buf[0] if buf else 0  # its buffer's offset in that region
        self._waiter = _Waiter({"send": (p.MsgType.SEND_COMPLETE,),
                                "receive": (p.MsgType.RECEIVE_COMPLETE,),
                                "disconnect": (p.MsgType.DISCONNECT_COMPLETE,)}[kind])
        self.completion: Optional[Completion] = None
        self.data_length = 0

    def done(self) -> bool:
        return self._waiter.done.is_set()

    def wait(self, timeout: Optional[float] = None) -> Completion:
        """The completion; TimeoutError if none within `timeout` seconds (the
        request stays outstanding: wait again), ChimneyError if the target
        refused it or the session ended."""
        if not self._waiter.done.wait(timeout):
            raise TimeoutError(f"{self.kind} (tag {self.tag}): no completion within {timeout} s")
        if self._waiter.error is not None:
            raise self._waiter.error
        assert self.completion is not None
        return self.completion

    def __repr__(self):
        state = self.completion.status if self.completion else ("failed" if self._waiter.error else "pending")
        return f"<Request {self.kind} tag={self.tag} {state}{' inherited' if self.inherited else ''}>"


class Connection:
    """An offloaded connection, by its session handle."""

    def __init__(self, target: "Target", handle: int, remote_ip: str = "", remote_port: int = 0,
                 local_ip: str = "", local_port: int = 0):
        self.target = target
        self.handle = handle
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.local_ip = local_ip
        self.local_port = local_port
        self.terminated = False
        self.inherited_send: Optional[Request] = None  # offload(): the SEND of 'send_data'

    def send(self, data: bytes) -> Request:
        """Copies `data` into the region and posts a SEND (completes when all of
        it is sent and ACKed, C-6)."""
        return self.target._post_send(self, bytes(data))

    def post_receive(self, nbytes: int, push: bool = True) -> Request:
        """Posts a RECEIVE of up to `nbytes`; push=False completes only when full (C-9)."""
        return self.target._post_receive(self, nbytes, push)

    def disconnect(self, graceful: bool = True, data: bytes = b"") -> Request:
        """Graceful (FIN, optionally after `data`, C-11) or abortive (RST, C-13)."""
        return self.target._post_disconnect(self, graceful, bytes(data))

    def terminate(self, timeout: Optional[float] = 30.0) -> Dict[str, Any]:
        """Uploads the connection (C-21). Returns the delegated state as a dict
        (field names of chimney::DelegatedState, 'state' as a TcpState name) with
        'send_data': [(tag, bytes_transferred), ...] of the sends handed back,
        'unacked_send_data': their bytes not yet ACKed, in order (what a new
        offload inherits; None when one of them is an inherited send whose
        buffer this Target does not map), and 'receive_data': the undelivered
        bytes."""
        return self.target._terminate(self, timeout)

    def __repr__(self):
        return (f"<Connection {self.handle:#x} {self.local_ip or '*'}:{self.local_port} -> "
                f"{self.remote_ip}:{self.remote_port}{' terminated' if self.terminated else ''}>")


class _Allocator:
    """First fit over the region, 64-byte aligned, neighbours merged on free."""

    def __init__(self, size: int):
        self.size = size
        self.free: List[List[int]] = [[0, size]]  # [offset, length], sorted by offset

    def alloc(self, n: int) -> Optional[Tuple[int, int]]:
        n = max(_ALIGN, (n + _ALIGN - 1) // _ALIGN * _ALIGN)
        for i, (off, length) in enumerate(self.free):
            if length >= n:
                if length == n:
                    del self.free[i]
                else:
                    self.free[i] = [off + n, length - n]
                return off, n
        return None

    def release(self, off: int, n: int) -> None:
        i = 0
        while i < len(self.free) and self.free[i][0] < off:
            i += 1
        self.free.insert(i, [off, n])
        if i + 1 < len(self.free) and off + n == self.free[i + 1][0]:
            self.free[i][1] += self.free[i + 1][1]
            del self.free[i + 1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == off:
            self.free[i - 1][1] += self.free[i][1]
            del self.free[i]

    def reserve(self, off: int, n: int) -> Optional[Tuple[int, int]]:
        """Marks [off, off + n), widened to 64-byte boundaries, in use (the
        buffer of a request another Target allocated); None if any of it is
        not free."""
        start = off // _ALIGN * _ALIGN
        end = max(start + _ALIGN, (off + n + _ALIGN - 1) // _ALIGN * _ALIGN)
        for i, (f_off, f_len) in enumerate(self.free):
            if f_off <= start and end <= f_off + f_len:
                pieces = [[f_off, start - f_off], [end, f_off + f_len - end]]
                self.free[i:i + 1] = [p_ for p_ in pieces if p_[1] > 0]
                return start, end - start
        return None

    def available(self) -> int:
        return sum(length for _, length in self.free)


def region_memfd(size: int, name: str = "chimney-region") -> int:
    """A memfd of `size` bytes as chimneyd takes a region (sealed against
    shrinking). A host that wants a successor to read its buffers after it
    dies keeps a copy of this descriptor in a process that outlives it and
    passes it as Target(region_fd=...) and Target.attach(region_fd=...)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        # chimneyd maps the region; sealed, it can never shrink under it.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except BaseException:
        os.close(fd)
        raise
    return fd


_EVENT_KINDS = {k: k.name for k in p.WireEvent}
_STATE_SECTIONS = {"constant": p.ConstState, "cached": p.CachedState, "delegated": p.DelegatedState,
                   "path": p.PathState}
_STATE_FIELD_SECTION = {f.name: section for section, cls in _STATE_SECTIONS.items() for f in fields(cls)}


def cached_state(**kw) -> p.CachedState:
    """A CachedState from keyword arguments named as chimney::CachedState's fields
    (congestion: 'newreno', 'cubic' or 0/1); the rest keep their defaults."""
    c = p.CachedState()
    for k, v in kw.items():
        if not hasattr(c, k):
            raise TypeError(f"unknown cached-state field {k!r} "
                            f"(known: {', '.join(f.name for f in fields(p.CachedState))})")
        if k == "congestion" and isinstance(v, str):
            v = p.CongestionAlgorithm[v.upper()]
        setattr(c, k, v)
    return c


def offload_state_from_dict(d: Dict[str, Any]) -> Tuple[p.OffloadState, bytes, bytes]:
    """(OffloadState, receive_data, send_data) from a dict keyed like
    chimney::OffloadState: either nested ('constant', 'cached', 'delegated',
    'path' sub-dicts) or flat (the field names are unique across the four), or
    both. IPs may be dotted strings, MACs "02:00:00:00:00:01" strings, 'state' a
    TcpState name or value, 'congestion' 'newreno'/'cubic'. 'receive_data' and
    'send_data' (bytes) may sit at the top or in 'delegated'; a 'send_data' list
    as terminate() returns it is replaced by its 'unacked_send_data'."""
    flat: Dict[str, Any] = {}

    def put(k, v):
        if k in flat:
            raise ValueError(f"offload state: {k!r} given twice")
        flat[k] = v

    for k, v in d.items():
        if k in _STATE_SECTIONS:
            if not isinstance(v, dict):
                raise ValueError(f"offload state: {k!r} must be a dict")
            for k2, v2 in v.items():
                put(k2, v2)
        else:
            put(k, v)

    receive_data = bytes(flat.pop("receive_data", b""))
    send_data = flat.pop("send_data", b"")
    unacked = flat.pop("unacked_send_data", None)
    if not isinstance(send_data, (bytes, bytearray, memoryview)):
        if unacked is None:
            raise ValueError("offload state: 'send_data' must be bytes")
        send_data = unacked
    send_data = bytes(send_data)
    for k in ("status",):  # what terminate() adds beside the state
        flat.pop(k, None)

    s = p.OffloadState()
    for k, v in flat.items():
        section = _STATE_FIELD_SECTION.get(k)
        if section is None:
            raise ValueError(f"offload state: unknown field {k!r}")
        if k in ("local_ip", "remote_ip"):
            v = _ip_to_int(v)
        elif k in ("local_mac", "next_hop_mac"):
            v = _mac_to_bytes(v)
        elif k == "state":
            v = p.TcpState[v.upper()] if isinstance(v, str) else p.TcpState(v)
        elif k == "congestion":
            v = p.CongestionAlgorithm[v.upper()] if isinstance(v, str) else p.CongestionAlgorithm(v)
        setattr(getattr(s, section), k, v)
    return s, receive_data, send_data


def section_to_dict(section) -> Dict[str, Any]:
    """ConstState, CachedState or PathState as offload() takes them back."""
    out: Dict[str, Any] = {}
    for f in fields(section):
        v = getattr(section, f.name)
        if f.name in ("local_ip", "remote_ip"):
            v = _ip_to_str(v)
        elif f.name in ("local_mac", "next_hop_mac"):
            v = _mac_to_str(v)
        elif isinstance(v, bool):
            v = bool(v)
        else:
            v = int(v)
        out[f.name] = v
    return out


def delegated_to_dict(d: p.DelegatedState) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in fields(p.DelegatedState):
        v = getattr(d, f.name)
        out[f.name] = p.TcpState(v).name if f.name == "state" else int(v)
    return out


_STATE_KEYS = ("session", "next_tag", "region", "connections", "requests")
_CONN_KEYS = ("handle", "remote_ip", "remote_port", "local_ip", "local_port")
_REQUEST_KEYS = ("tag", "handle", "kind", "region", "offset", "length")
_FIRST_TAG_UNKNOWN = 1 << 48  # tags of a taken-over session whose next_tag is not known start here


def _uint(v, bits: int, what: str, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v < (1 << bits):
        raise _attach_error(f"{what} must be an integer in [{low}, 2**{bits}), got {v!r}")
    return v


def _dict_of(v, keys: Tuple[str, ...], what: str) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise _attach_error(f"{what} must be a dict, got {type(v).__name__}")
    unknown = sorted(set(v) - set(keys))
    if unknown:
        raise _attach_error(f"{what}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(keys)})")
    return v


def _parse_resume_state(state) -> Dict[str, Any]:
    """Checks a resume state (Target.resume_state() or a bare session id)
    before anything is sent; ChimneyError names what is wrong."""
    if isinstance(state, int) and not isinstance(state, bool):
        state = {"session": state}
    d = _dict_of(state, _STATE_KEYS, "the state (Target.resume_state() or a session id)")
    if "session" not in d:
        raise _attach_error("the state has no 'session' (the id HELLO_REPLY gave the dead host)")
    out: Dict[str, Any] = {"session": _uint(d["session"], 64, "'session'", 1)}
    region = None
    if d.get("region") is not None:
        r = _dict_of(d["region"], ("id", "size"), "'region'")
        if "id" not in r or "size" not in r:
            raise _attach_error("'region' needs 'id' and 'size'")
        region = {"id": _uint(r["id"], 32, "'region' id", 1), "size": _uint(r["size"], 64, "'region' size", 1)}
    out["region"] = region
    conns: List[Dict[str, Any]] = []
    seen = set()
    raw_conns = d.get("connections", [])
    if not isinstance(raw_conns, (list, tuple)):
        raise _attach_error(f"'connections' must be a list, got {type(raw_conns).__name__}")
    for i, c in enumerate(raw_conns):
        c = _dict_of(c, _CONN_KEYS, f"connections[{i}]")
        if "handle" not in c:
            raise _attach_error(f"connections[{i}] has no 'handle'")
        h = _uint(c["handle"], 32, f"connections[{i}] handle", 1)
        if h in seen:
            raise _attach_error(f"handle {h:#x} is named twice")
        seen.add(h)
        conns.append({"handle": h, "remote_ip": str(c.get("remote_ip", "")),
                      "remote_port": _uint(c.get("remote_port", 0), 16, f"connections[{i}] remote_port"),
                      "local_ip": str(c.get("local_ip", "")),
                      "local_port": _uint(c.get("local_port", 0), 16, f"connections[{i}] local_port")})
    out["connections"] = conns
    reqs: List[Dict[str, Any]] = []
    tags = set()
    raw_reqs = d.get("requests", [])
    if not isinstance(raw_reqs, (list, tuple)):
        raise _attach_error(f"'requests' must be a list, got {type(raw_reqs).__name__}")
    for i, r in enumerate(raw_reqs):
        r = _dict_of(r, _REQUEST_KEYS, f"requests[{i}]")
        missing = [k for k in ("tag", "handle", "kind") if k not in r]
        if missing:
            raise _attach_error(f"requests[{i}] has no {', '.join(map(repr, missing))}")
        tag = _uint(r["tag"], 64, f"requests[{i}] tag", 1)
        if tag in tags:
            raise _attach_error(f"tag {tag} is named twice")
        tags.add(tag)
        h = _uint(r["handle"], 32, f"requests[{i}] handle", 1)
        if h not in seen:
            raise _attach_error(f"requests[{i}] (tag {tag}) is on handle {h:#x}, which 'connections' does not name")
        if r["kind"] not in ("send", "receive", "disconnect"):
            raise _attach_error(f"requests[{i}] kind must be 'send', 'receive' or 'disconnect', got {r['kind']!r}")
        length = _uint(r.get("length", 0), 32, f"requests[{i}] length")
        reqs.append({"tag": tag, "handle": h, "kind": r["kind"],
                     "region": _uint(r.get("region", region["id"] if region and length else 0), 32,
                                     f"requests[{i}] region"),
                     "offset": _uint(r.get("offset", 0), 64, f"requests[{i}] offset"), "length": length})
    out["requests"] = reqs
    if d.get("next_tag") is None:
        out["next_tag"] = max([_FIRST_TAG_UNKNOWN] + [t + 1 for t in tags])
    else:
        out["next_tag"] = _uint(d["next_tag"], 64, "'next_tag'", 1)
        if tags and max(tags) >= out["next_tag"]:
            raise _attach_error(f"'next_tag' {out['next_tag']} is not above every request's tag (up to {max(tags)})")
    return out


class Target:
    """A session with chimneyd: connects, says HELLO, registers one memfd region
    of `region_size` bytes (default 256 MiB). `timeout` bounds each call that
    waits for a reply (HELLO, REGISTER_MEMORY, CONNECT, LISTEN, OFFLOAD,
    TERMINATE, STATS, ATTACH).

    `region_fd`: a memfd of the caller's (region_memfd()) to register instead
    of a new one; the caller keeps it (the Target never closes it), so that a
    process that outlives this one can give it to Target.attach. `attach`: see
    Target.attach, which is the way to use it."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, region_size: Optional[int] = None,
                 timeout: Optional[float] = 10.0, *, region_fd: Optional[int] = None, attach=None):
        plan = _parse_resume_state(attach) if attach is not None else None
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._wlock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # events, accepts, closing
        self._waiters: Dict[int, _Waiter] = {}
        self._requests: Dict[int, Request] = {}
        self._conns: Dict[int, Connection] = {}
        self._events: collections.deque = collections.deque()
        self._accepts: collections.deque = collections.deque()
        self._next_tag = 1
        self._closed: Optional[ChimneyError] = None
        self.unsolicited_errors: List[Tuple[int, str]] = []  # ERRORs with tag 0 or an unknown tag
        # Replies no request or call of this Target waits for (after an attach:
        # completions of requests the dead host posted and `attach` was not told of).
        self.unclaimed: List[p.Message] = []
        self.inherited: List[Request] = []  # attach: the dead host's requests, in the state's order
        self.attached: Optional[p.Attached] = None  # attach: ATTACHED (connections, regions)
        self.session = 0
        self.server_version = 0
        self.max_message = p.MAX_MESSAGE
        self.region = 0
        self._fd = -1  # the memfd this Target made (closed on close(); a region_fd is the caller's)
        self._map: Optional[mmap.mmap] = None
        self._sock = None

        if region_fd is not None:
            try:
                size = os.fstat(region_fd).st_size
            except (OSError, TypeError, ValueError) as e:
                raise ChimneyError(None, f"region_fd {region_fd!r}: {e}") from None
            if plan is not None:
                if plan["region"] is None:
                    raise _attach_error("region_fd needs the state's 'region' (the id and size of the region "
                                       "this memory is)")
                if region_size is not None and region_size != plan["region"]["size"]:
                    raise _attach_error(f"region_size {region_size} is not the state's region size "
                                       f"{plan['region']['size']}")
                region_size = plan["region"]["size"]
            elif region_size is None:
                region_size = size
            if size < region_size:
                text = f"region_fd is {size} bytes, smaller than the region's {region_size}"
                raise _attach_error(text) if plan is not None else ChimneyError(None, text)
        elif region_size is None:
            region_size = DEFAULT_REGION_SIZE
        if region_size <= 0:
            raise ValueError(f"region_size must be positive, got {region_size}")
        self.region_size = region_size
        self._alloc = _Allocator(region_size)

        try:
            if region_fd is not None:
                try:
                    self._map = mmap.mmap(region_fd, region_size)
                except OSError as e:
                    raise ChimneyError(None, f"region_fd {region_fd}: cannot map it: {e}") from None
            if plan is not None:
                self._take_over(plan, mapped=region_fd is not None)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            self._sock.connect(socket_path)
            self._sock.settimeout(None)
            self._reader = threading.Thread(target=self._read_loop, name="chimney-client-reader", daemon=True)
            self._reader.start()
            reply = self._call(p.Hello(p.VERSION), (p.MsgType.HELLO_REPLY,), timeout).body
            if reply.server_version != p.VERSION:
                raise ChimneyError(p.ProtocolError.UNSUPPORTED_VERSION,
                                   f"server speaks version {reply.server_version}, this client {p.VERSION}")
            self.session, self.server_version, self.max_message = (reply.session, reply.server_version,
                                                                   reply.max_message)
            if plan is not None:
                self._attach(plan, timeout)
            if region_fd is None:
                self._fd = region_memfd(region_size)
                self._map = mmap.mmap(self._fd, region_size)
            if region_fd is None or plan is None:
                self.region = self._call(p.RegisterMemory(region_size), (p.MsgType.REGISTERED,), timeout,
                                         fd=self._fd if region_fd is None else region_fd).body.region
        except BaseException:
            self.close()
            raise

    @classmethod
    def attach(cls, socket_path: str, state, *, region_fd: Optional[int] = None,
               region_size: Optional[int] = None, timeout: Optional[float] = 10.0) -> "Target":
        """Takes over the detached session of a host that went away (ATTACH,
        docs/CONTROL_PROTOCOL.md "Sessions"), within chimneyd's control-grace-s.

        `state`: what the dead host's Target.resume_state() returned (JSON-able),
        or just its session id. The session's connections become Connection
        objects of this Target (`connections`), with the same handles; the
        requests the dead host had outstanding become Request objects
        (`inherited`), with the same tags, and complete when the target's
        completions for them arrive: those queued while nobody was attached
        follow ATTACHED, the rest come as the requests finish. Events of the
        connections come through next_event() as usual.

        `region_fd`: the dead host's region memory (a memfd kept by a process
        that outlived it): mapped again, so inherited receives carry their
        data and new requests use the same region. Without it a new region of
        `region_size` bytes is registered for new requests, and inherited
        receives complete with data None (their bytes are in memory only
        chimneyd still maps).

        New tags start at the state's next_tag (2**48 when the state has none),
        so none collides with a tag of the dead host. Completions the target had
        already written to the dead host's socket are gone: a request in
        `state` that completed that way never completes here (wait with a
        timeout). `attached` holds what ATTACHED counted (connections, regions);
        compare it with the state. Raises ChimneyError for a bad state or
        region_fd (before anything is sent) and for no detached session with
        that id and this uid (NOT_ALLOWED); TimeoutError when no reply comes in
        `timeout`."""
        return cls(socket_path, region_size, timeout, region_fd=region_fd, attach=state)

    def _take_over(self, plan: Dict[str, Any], mapped: bool) -> None:
        """Before ATTACH is sent: the connections and requests of the state, so
        that the completions and events following ATTACHED find them."""
        for c in plan["connections"]:
            self._conns[c["handle"]] = Connection(self, c["handle"], c["remote_ip"], c["remote_port"],
                                                  c["local_ip"], c["local_port"])
        for r in plan["requests"]:
            buf = None
            if mapped and r["length"] and r["region"] == plan["region"]["id"]:
                buf = self._alloc.reserve(r["offset"], r["length"])
                if buf is None:
                    raise _attach_error(f"request tag {r['tag']}: buffer [{r['offset']}, +{r['length']}) lies "
                                       f"outside the {self.region_size}-byte region or overlaps another request's")
            req = Request(self, self._conns[r["handle"]], r["kind"], r["tag"], buf, inherited=True)
            req._data_off = r["offset"] if buf is not None else None
            req.data_length = r["length"]
            req.region = r["region"]
            req.offset = r["offset"]
            self._requests[r["tag"]] = req
            self.inherited.append(req)
        self._next_tag = plan["next_tag"]
        if mapped:
            self.region = plan["region"]["id"]

    def _attach(self, plan: Dict[str, Any], timeout: Optional[float]) -> None:
        def on_reply(m: p.Message) -> None:  # before anything queued behind ATTACHED is dispatched
            self.session = plan["session"]
            self.attached = m.body

        # What ATTACHED counts is not checked against the state: the queued
        # completions have come to this session, and ending it now would lose them.
        self._call(p.Attach(plan["session"]), (p.MsgType.ATTACHED,), timeout, on_reply=on_reply)

    @property
    def connections(self) -> List[Connection]:
        """This session's connections that are not terminated (after an attach,
        those it took over first, in the state's order)."""
        with self._lock:
            return [c for c in self._conns.values() if not c.terminated]

    def resume_state(self) -> Dict[str, Any]:
        """What a successor needs to take this session over with Target.attach
        if this process dies: the session id, the region (id and size), the
        next tag, the connections and the outstanding requests (tag, handle,
        kind, region, offset, length). JSON-able; it changes with every request
        posted and every completion, so a host saves it after each."""
        with self._lock:
            return {
                "session": self.session,
                "next_tag": self._next_tag,
                "region": {"id": self.region, "size": self.region_size} if self._map is not None else None,
                "connections": [{"handle": c.handle, "remote_ip": c.remote_ip, "remote_port": c.remote_port,
                                 "local_ip": c.local_ip, "local_port": c.local_port}
                                for c in self._conns.values() if not c.terminated],
                "requests": [{"tag": r.tag, "handle": r.conn.handle, "kind": r.kind, "region": r.region,
                              "offset": r.offset, "length": r.data_length}
                             for r in self._requests.values()],
            }

    # ---- context manager

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Ends the session (the target aborts its connections after its grace
        period) and releases the region. Idempotent."""
        with self._lock:
            already = self._closed is not None and self._sock is None
        if already:
            return
        self._fail_all(ChimneyError(None, "session closed by the client"))
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        reader = getattr(self, "_reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(5.0)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ---- calls

    def connect(self, ip, port: int, local_port: int = 0, *, timeout: Optional[float] = None,
                **cached) -> Connection:
        """CONNECT: the target opens the connection itself; returns when it is
        offloaded. `cached`: CachedState fields (ttl=..., nagle=..., congestion='newreno', ...)."""
        body = p.Connect(_ip_to_int(ip), port, local_port, cached_state(**cached))
        conn = Connection(self, 0, _ip_to_str(body.remote_ip), port, "", local_port)
        return self._offload_call(body, conn, timeout, "CONNECT")

    def listen(self, port: int, backlog: int = 16, *, timeout: Optional[float] = None, **cached) -> None:
        """LISTEN: connections to `port` are offloaded as they are accepted (accept())."""
        self._call(p.Listen(port, backlog, cached_state(**cached)), (p.MsgType.OK,), self._t(timeout))

    def release_listen(self, port: int, *, timeout: Optional[float] = None) -> None:
        self._call(p.ReleaseListen(port), (p.MsgType.OK,), self._t(timeout))

    def accept(self, timeout: Optional[float] = None) -> Connection:
        """The next connection accepted on a listening port (TimeoutError if none in time)."""
        return self._pop(self._accepts, timeout, "accept")

    def offload(self, state: Dict[str, Any], *, timeout: Optional[float] = None) -> Connection:
        """OFFLOAD an existing connection (C-1): `state` keyed like
        chimney::OffloadState (see offload_state_from_dict), with inherited
        receive data under 'receive_data' and inherited send data under
        'send_data' (bytes), which is SENT as soon as the offload completes
        (conn.inherited_send is that request; OFFLOAD announces its length,
        so that in a FIN state the inherited FIN goes after it)."""
        s, receive_data, send_data = offload_state_from_dict(state)
        if len(send_data) > self.region_available():
            raise RegionFull(len(send_data), self.region_size)
        k = s.constant
        conn = Connection(self, 0, _ip_to_str(k.remote_ip), k.remote_port, _ip_to_str(k.local_ip), k.local_port)
        conn = self._offload_call(p.Offload(s, receive_data, len(send_data)), conn, timeout, "OFFLOAD")
        if send_data:
            try:
                conn.inherited_send = conn.send(send_data)
            except ChimneyError as e:
                e.conn = conn  # offloaded all the same: the caller can still terminate it
                raise
        return conn

    def next_event(self, timeout: Optional[float] = None) -> Event:
        """The next event of any connection of this session (TimeoutError if none in time)."""
        return self._pop(self._events, timeout, "next_event")

    def stats(self, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        return json.loads(self._call(p.Stats(), (p.MsgType.STATS_REPLY,), self._t(timeout)).body.json)

    def region_available(self) -> int:
        """Free bytes in the region (buffers of outstanding requests are in use)."""
        with self._lock:
            return self._alloc.available()

    # ---- internals: requests

    def _t(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def _offload_call(self, body, conn: Connection, timeout, what: str) -> Connection:
        def on_reply(m: p.Message) -> None:
            if m.type == p.MsgType.OFFLOAD_COMPLETE and m.body.status == p.STATUS_SUCCESS:
                conn.handle = m.body.handle
                self._conns[conn.handle] = conn  # before any event of it is read

        reply = self._call(body, (p.MsgType.OFFLOAD_COMPLETE,), self._t(timeout), on_reply=on_reply)
        if reply.body.status != p.STATUS_SUCCESS:
            raise ChimneyError(reply.body.status, f"{what} refused")
        return conn

    def _post_send(self, conn: Connection, data: bytes) -> Request:
        return self._post(conn, "send", data, len(data),
                          lambda tag, buf: p.Send(conn.handle, buf))

    def _post_receive(self, conn: Connection, nbytes: int, push: bool) -> Request:
        flags = 0 if push else p.RECEIVE_NO_PUSH
        return self._post(conn, "receive", None, nbytes,
                          lambda tag, buf: p.Receive(conn.handle, buf, flags))

    def _post_disconnect(self, conn: Connection, graceful: bool, data: bytes) -> Request:
        kind = 0 if graceful else 1
        return self._post(conn, "disconnect", data, len(data),
                          lambda tag, buf: p.Disconnect(conn.handle, kind, buf))

    def _post(self, conn: Connection, kind: str, data: Optional[bytes], nbytes: int, make) -> Request:
        if nbytes < 0 or nbytes > 0xFFFFFFFF:
            raise ValueError(f"{kind}: {nbytes} bytes does not fit a buffer (u32)")
        if conn.terminated:
            raise ChimneyError(p.ProtocolError.UNKNOWN_HANDLE, f"{kind}: connection {conn.handle:#x} was terminated")
        with self._lock:
            self._check_open()
            alloc = None
            if nbytes > 0:
                alloc = self._alloc.alloc(nbytes)
                if alloc is None:
                    raise RegionFull(nbytes, self.region_size)
            tag = self._new_tag()
            req = Request(self, conn, kind, tag, alloc)
            req.data_length = nbytes
            req.region = self.region if alloc else 0
            if data:
                self._map[alloc[0]:alloc[0] + nbytes] = data
            self._requests[tag] = req
        offset = alloc[0] if alloc else 0
        try:
            self._write(p.Message(None, tag, make(tag, p.BufferRef(self.region, offset, nbytes))))
        except BaseException:
            with self._lock:
                self._requests.pop(tag, None)
                self._free(req)
            raise
        return req

    def _terminate(self, conn: Connection, timeout) -> Dict[str, Any]:
        result: Dict[str, Any] = {}

        def on_reply(m: p.Message) -> None:
            if m.type != p.MsgType.TERMINATE_COMPLETE:
                return
            t = m.body
            unacked = bytearray()
            unreadable = False
            for s in t.sends:  # handed back: they will not complete on their own
                req = self._requests.pop(s.tag, None)
                if req is None:
                    continue
                if s.bytes_transferred < req.data_length:
                    if req._data_off is None:
                        unreadable = True  # an inherited send in memory this Target does not map
                    else:
                        off = req._data_off
                        unacked += self._map[off + s.bytes_transferred:off + req.data_length]
                self._complete(req, p.status_value("NDIS_STATUS_UPLOAD_IN_PROGRESS"), s.bytes_transferred,
                               returned=True)
            # Every other request of the connection completed before this (C-21).
            for tag, req in list(self._requests.items()):
                if req.conn is conn:
                    del self._requests[tag]
                    self._fail(req, ChimneyError(None, f"{req.kind} (tag {tag}) not completed before "
                                                       "TERMINATE_COMPLETE"))
            result.update(delegated_to_dict(t.state.delegated))
            # The rest of the state, so that the dict can be offloaded again as it is.
            result["constant"] = section_to_dict(t.state.constant)
            result["cached"] = section_to_dict(t.state.cached)
            result["path"] = section_to_dict(t.state.path)
            result["send_data"] = [(s.tag, s.bytes_transferred) for s in t.sends]
            result["unacked_send_data"] = None if unreadable else bytes(unacked)
            result["receive_data"] = bytes(t.receive_data)
            conn.terminated = True
            self._conns.pop(conn.handle, None)

        reply = self._call(p.Terminate(conn.handle), (p.MsgType.TERMINATE_COMPLETE,), self._t(timeout),
                           on_reply=on_reply)
        if reply.body.status != p.STATUS_SUCCESS:
            raise ChimneyError(reply.body.status, f"TERMINATE of handle {conn.handle:#x} failed")
        return result

    def _call(self, body, expect, timeout, fd: Optional[int] = None, on_reply=None) -> p.Message:
        w = _Waiter(tuple(expect))
        w.on_reply = on_reply
        with self._lock:
            self._check_open()
            tag = self._new_tag()
            self._waiters[tag] = w
        what = type(body).__name__.upper()
        try:
            self._write(p.Message(None, tag, body), fd)
            return w.wait(timeout, what)
        finally:
            with self._lock:
                self._waiters.pop(tag, None)

    def _new_tag(self) -> int:
        tag = self._next_tag
        self._next_tag += 1
        return tag

    def _write(self, m: p.Message, fd: Optional[int] = None) -> None:
        data = p.encode(m)
        with self._wlock:
            sock = self._sock
            if sock is None:
                raise ChimneyError(None, "session closed")
            try:
                if fd is None:
                    sock.sendall(data)
                else:
                    sent = socket.send_fds(sock, [data], [fd])
                    if sent < len(data):
                        sock.sendall(data[sent:])
            except OSError as e:
                raise ChimneyError(None, f"control socket: {e}") from None

    def _pop(self, queue: collections.deque, timeout: Optional[float], what: str):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not queue:
                self._check_open()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{what}: nothing within {timeout} s")
                self._cond.wait(left)
            return queue.popleft()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    # ---- internals: the reader thread (everything below runs under self._lock)

    def _read_loop(self) -> None:
        buf = bytearray()
        why = "the target closed the session"
        try:
            while True:
                sock = self._sock
                if sock is None:
                    return
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while True:
                    n = p.message_length(buf)
                    if n is None or len(buf) < n:
                        break
                    m = p.decode(bytes(buf[:n]))
                    del buf[:n]
                    with self._cond:
                        self._dispatch(m)
        except p.DecodeError as e:
            why = f"undecodable message from the target: {e}"
        except OSError as e:
            why = f"control socket: {e}"
        code = None
        if self.unsolicited_errors:
            code, text = self.unsolicited_errors[-1]
            why += f" (its last error: {text})"
        self._fail_all(ChimneyError(code, why))

    def _dispatch(self, m: p.Message) -> None:
        t = m.type
        if t == p.MsgType.EVENT:
            e = m.body
            reason = p.RETRIEVE_REASONS[e.reason] if e.reason else None
            self._events.append(Event(self._conns.get(e.handle), _EVENT_KINDS[e.kind], reason, e.value, e.handle))
            self._cond.notify_all()
            return
        if t == p.MsgType.ACCEPT:
            a = m.body
            conn = Connection(self, a.handle, _ip_to_str(a.remote_ip), a.remote_port, "", a.local_port)
            self._conns[a.handle] = conn
            self._accepts.append(conn)
            self._cond.notify_all()
            return
        req = self._requests.pop(m.tag, None)
        if req is not None:
            if t == p.MsgType.ERROR:
                self._fail(req, ChimneyError(m.body.code, m.body.text))
            elif t in req._waiter.expect and m.body.handle == req.conn.handle:
                self._complete(req, m.body.status, m.body.bytes_transferred)
            elif t in req._waiter.expect:
                self._fail(req, ChimneyError(None, f"{req.kind} (tag {m.tag}) completed for handle "
                                                   f"{m.body.handle:#x}, posted on {req.conn.handle:#x}"))
            else:
                self._fail(req, ChimneyError(None, f"{req.kind} (tag {m.tag}) answered by {t.name}"))
            return
        w = self._waiters.get(m.tag)
        if w is None or w.done.is_set():
            if t == p.MsgType.ERROR:
                self.unsolicited_errors.append((m.body.code, m.body.text))
            else:
                self.unclaimed.append(m)
            return
        if t == p.MsgType.ERROR:
            w.error = ChimneyError(m.body.code, m.body.text)
        elif t not in w.expect:
            w.error = ChimneyError(None, f"tag {m.tag} answered by {t.name}, expected "
                                         f"{'/'.join(p.MsgType(x).name for x in w.expect)}")
        else:
            w.message = m
            if w.on_reply is not None:
                w.on_reply(m)
        w.done.set()

    def _complete(self, req: Request, status: int, bytes_transferred: int, returned: bool = False) -> None:
        data = None
        if req.kind == "receive":
            n = min(bytes_transferred, req.data_length)
            if n and req._data_off is not None:
                data = bytes(self._map[req._data_off:req._data_off + n])
            elif not n or not req.inherited:
                data = b""
            # else None: an inherited receive whose buffer this Target does not map
        req.completion = Completion(p.status_name(status), bytes_transferred, data, status, returned)
        self._free(req)
        req._waiter.done.set()

    def _fail(self, req: Request, error: ChimneyError) -> None:
        self._free(req)
        req._waiter.error = error
        req._waiter.done.set()

    def _free(self, req: Request) -> None:
        if req._buf is not None:
            self._alloc.release(*req._buf)
            req._buf = None

    def _fail_all(self, error: ChimneyError) -> None:
        with self._cond:
            if self._closed is None:
                self._closed = error
            for req in self._requests.values():
                self._fail(req, self._closed)
            self._requests.clear()
            for w in self._waiters.values():
                if not w.done.is_set():
                    w.error = self._closed
                    w.done.set()
            self._cond.notify_all()
