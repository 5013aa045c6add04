#!/usr/bin/env python3
"""A Linux TCP peer for the integration tests, run inside the test's namespace
with `ip netns exec`. It prints one JSON line when it is done.

  peer.py sink PORT            accept one connection, read to EOF (or reset);
                               report bytes, sha256, and how it ended
  peer.py source PORT NBYTES   accept one connection, send NBYTES of the test
                               stream, then close; report bytes and sha256
  peer.py gated-sink PORT      like sink, but reads nothing until a line on stdin
  peer.py stall PORT           accept one connection, never read; report how
                               the connection ended (ECONNRESET expected)
  peer.py echo-close PORT      accept, read to EOF, then close (half-close test)
  peer.py gated-source PORT NBYTES
                               accept one connection, wait for a line on stdin,
                               then send NBYTES of the test stream and close
                               (the test decides when data starts to flow)

It prints 'listening' on stdout once it listens, so the test can connect.
"""
import errno
import hashlib
import json
import socket
import sys
import time


PERIOD = 65537  # prime: no segment or chunk size lines up with it
_PATTERN = hashlib.shake_256(b"chimney test stream").digest(PERIOD)
_DOUBLE = _PATTERN * 2


def stream(n, offset=0):
    """The test stream: byte i is _PATTERN[i % PERIOD]."""
    out = bytearray()
    while n > 0:
        start = offset % PERIOD
        take = min(n, PERIOD)
        out += _DOUBLE[start:start + take]
        offset += take
        n -= take
    return bytes(out)


def chunks(total, size=1 << 16):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield stream(n, sent)
        sent += n


def listen(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4)
    print("listening", flush=True)
    conn, addr = srv.accept()
    srv.close()
    return conn, addr


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    conn, addr = listen(port)
    result = {"peer": addr[0], "peer_port": addr[1]}
    h = hashlib.sha256()
    n = 0
    try:
        if mode == "gated-sink":
            sys.stdin.readline()  # stalls (its window fills) until the test says go
        if mode in ("sink", "echo-close", "gated-sink"):
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    result["end"] = "eof"
                    break
                h.update(data)
                n += len(data)
        elif mode in ("source", "gated-source"):
            total = int(sys.argv[3])
            if mode == "gated-source":
                sys.stdin.readline()
            for c in chunks(total):
                conn.sendall(c)
                h.update(c)
                n += len(c)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(1 << 16):
                pass
            result["end"] = "eof"
        elif mode == "stall":
            # Never read; watch the socket's state: a RST closes it with
            # ECONNRESET pending (SO_ERROR) even while data sits unread.
            deadline = time.time() + 60
            while time.time() < deadline:
                err = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                state = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                if err == errno.ECONNRESET or state == 7:  # TCP_CLOSE
                    result["end"] = "reset"
                    # The state may be read just after the RST that the
                    # SO_ERROR read before it missed: ask once more.
                    err = err or conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        result["error"] = errno.errorcode.get(err, str(err))
                    break
                time.sleep(0.05)
            else:
                result["end"] = "timeout"
    except ConnectionResetError:
        result["end"] = "reset"
        result["error"] = "ECONNRESET"
    result["bytes"] = n
    result["sha256"] = h.hexdigest()
    conn.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
