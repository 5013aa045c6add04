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

Scripted peers for the disconnect scenarios (the test drives every step):

  peer.py ctl PORT [--rcvbuf N] [--sndbuf N] [--no-read]
                               listen, accept one connection, then obey
                               commands on stdin (one a line), answering
                               each with one JSON line
  peer.py ctl-connect IP PORT [--local-port P] [--rcvbuf N] [--sndbuf N] [--no-read]
                               the same as a client: connect (from local port
                               P, SO_REUSEADDR, when given); prints
                               {"event": "connected"|"connect-failed", ...}

  Commands: read on|off (a reader thread takes everything that arrives, hashes
  and counts it; off: the receive buffer fills and the window closes),
  send N (sendall N more bytes of the test stream), send-bg N (the same in
  the background: the answer comes at once), wait-send [T], shutdown
  (SHUT_WR: our FIN), wait-eof [T], wait-bytes N [T], reset (SO_LINGER 0 and
  close: a RST), close, status, quit. Every answer carries the status:
  rx/rx_sha256 (what the reader took), eof, error (errno name, e.g.
  ECONNRESET), tx (bytes handed to the kernel), tcp state, SO_ERROR and
  TCP_INFO's bytes_acked/bytes_received (the kernel's own counts).
"""
import errno
import hashlib
import json
import socket
import struct
import sys
import threading
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


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def tcp_info(sock):
    """The parts of struct tcp_info (linux/tcp.h) the tests compare with."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    info = {"state": TCP_STATES.get(raw[0], str(raw[0]))}
    if len(raw) >= 136:
        info["bytes_acked"], info["bytes_received"] = struct.unpack_from("<QQ", raw, 120)
    if len(raw) >= 236:
        info["snd_wnd"], info["rcv_wnd"] = struct.unpack_from("<II", raw, 228)
    return info


class Scripted:
    """One connection the test drives line by line (the ctl modes)."""

    def __init__(self, conn, reading):
        self.conn = conn
        self.lock = threading.Condition()
        self.reading = threading.Event()
        if reading:
            self.reading.set()
        self.h = hashlib.sha256()
        self.rx = 0
        self.eof = False
        self.error = None
        self.tx = 0
        self.sender = None
        self.send_error = None
        self.closed = False
        self.info = {}
        self.thread = threading.Thread(target=self.reader, daemon=True)
        self.thread.start()

    def stop_reader(self):
        # A recv blocked in the reader would keep the socket alive past
        # close(): SHUT_RD wakes it (nothing goes on the wire), then it ends.
        with self.lock:
            self.closed = True
        try:
            self.conn.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        self.reading.set()
        self.thread.join(5)

    def reader(self):
        while True:
            self.reading.wait()
            try:
                data = self.conn.recv(1 << 20)
            except OSError as e:
                with self.lock:
                    if not self.closed:
                        self.error = errno.errorcode.get(e.errno, str(e))
                    self.lock.notify_all()
                return
            with self.lock:
                if self.closed:
                    return
                if not data:
                    self.eof = True
                    self.lock.notify_all()
                    return
                self.h.update(data)
                self.rx += len(data)
                self.lock.notify_all()

    def status(self, **extra):
        out = {"rx": self.rx, "rx_sha256": self.h.hexdigest(), "eof": self.eof, "error": self.error,
               "tx": self.tx, "send_error": self.send_error}
        if not self.closed:
            try:
                err = self.conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                out["so_error"] = errno.errorcode.get(err, str(err)) if err else None
                self.info = tcp_info(self.conn)
            except OSError:
                pass
        out.update(self.info)
        out.update(extra)
        return out

    def send(self, n):
        try:
            for c in chunks_from(self.tx, n):
                self.conn.sendall(c)
                self.tx += len(c)
        except OSError as e:
            self.send_error = errno.errorcode.get(e.errno, str(e))

    def wait(self, pred, timeout):
        with self.lock:
            return self.lock.wait_for(pred, timeout)

    def command(self, words):
        cmd, args = words[0], words[1:]
        if cmd == "read":
            (self.reading.set if args[0] == "on" else self.reading.clear)()
        elif cmd == "send":
            self.send(int(args[0]))
        elif cmd == "send-bg":
            self.sender = threading.Thread(target=self.send, args=(int(args[0]),), daemon=True)
            self.sender.start()
        elif cmd == "wait-send":
            if self.sender is not None:
                self.sender.join(float(args[0]) if args else 60)
                return self.status(sending=self.sender.is_alive())
        elif cmd == "shutdown":
            self.conn.shutdown(socket.SHUT_WR)
        elif cmd == "wait-eof":
            ok = self.wait(lambda: self.eof or self.error, float(args[0]) if args else 30)
            return self.status(timed_out=not ok)
        elif cmd == "wait-bytes":
            n = int(args[0])
            ok = self.wait(lambda: self.rx >= n or self.eof or self.error, float(args[1]) if len(args) > 1 else 30)
            return self.status(timed_out=not ok)
        elif cmd in ("reset", "close"):
            before = self.status()
            if cmd == "reset":
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.stop_reader()
            self.conn.close()
            return before
        elif cmd not in ("status", "quit"):
            return {"error": f"unknown command {cmd!r}"}
        return self.status()


def chunks_from(offset, total, size=1 << 16):
    done = 0
    while done < total:
        n = min(size, total - done)
        yield stream(n, offset + done)
        done += n


def scripted(argv):
    mode = argv[1]
    opts = {"--rcvbuf": None, "--sndbuf": None, "--local-port": None}
    reading = "--no-read" not in argv
    rest = [a for a in argv[2:] if a != "--no-read"]
    pos = []
    i = 0
    while i < len(rest):
        if rest[i] in opts:
            opts[rest[i]] = int(rest[i + 1])
            i += 2
        else:
            pos.append(rest[i])
            i += 1
    if mode == "ctl":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts["--rcvbuf"]:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, opts["--rcvbuf"])
        srv.bind(("0.0.0.0", int(pos[0])))
        srv.listen(1)
        print("listening", flush=True)
        conn, addr = srv.accept()
        srv.close()
        if opts["--sndbuf"]:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, opts["--sndbuf"])
        event = {"event": "accepted", "peer": addr[0], "peer_port": addr[1]}
    else:
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts["--rcvbuf"]:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, opts["--rcvbuf"])
        if opts["--sndbuf"]:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, opts["--sndbuf"])
        if opts["--local-port"]:
            conn.bind(("0.0.0.0", opts["--local-port"]))
        conn.settimeout(30)
        try:
            conn.connect((pos[0], int(pos[1])))
        except OSError as e:
            print(json.dumps({"event": "connect-failed", "error": errno.errorcode.get(e.errno, str(e))}),
                  flush=True)
            return
        conn.settimeout(None)
        event = {"event": "connected", "local_port": conn.getsockname()[1]}
    s = Scripted(conn, reading)
    print(json.dumps(s.status(**event)), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            answer = s.command(words)
        except OSError as e:
            answer = s.status(command_error=errno.errorcode.get(e.errno, str(e)))
        answer["cmd"] = words[0]
        print(json.dumps(answer), flush=True)
        if words[0] == "quit":
            break
    if not s.closed:
        s.stop_reader()
        s.conn.close()


def main():
    if sys.argv[1] in ("ctl", "ctl-connect"):
        scripted(sys.argv)
        return
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
