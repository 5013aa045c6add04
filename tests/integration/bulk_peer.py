#!/usr/bin/env python3
"""Linux side of the fault tests: many connections, data both ways at once.

  bulk_peer.py PORT NCONN NBYTES                 listens, accepts NCONN
  bulk_peer.py --connect IP PORT NCONN NBYTES     connects NCONN times

Listens on PORT (prints 'listening') and accepts NCONN connections, or makes
NCONN connections to IP:PORT (prints 'connected'), and, on each at the same
time, sends NBYTES of the test stream (peer.stream) and then its
FIN, while it reads what the other side sends until EOF. When every
connection has ended it prints one JSON line: a list, per connection in
accept order, of {peer_port, bytes_in, sha256_in, bytes_out, end} where end
is 'eof' or the error (ECONNRESET...). One thread, non-blocking sockets.

A connection is closed only once the kernel reports it CLOSED (TCP_INFO):
every byte and both FINs ACKed. Closing earlier would orphan a socket with
data still unACKed, and Linux gives an orphan up silently after
tcp_orphan_retries (modelled as about 100 s of 200 ms backoffs): at 20% loss
a peer whose RTO had grown to tens of seconds (an RTT sample taken from a
retransmitted SYN-ACK) vanished that way with part of its data never
delivered, leaving chimney's side waiting in FIN_WAIT_2.
"""
import errno
import hashlib
import json
import selectors
import socket
import struct
import sys

from peer import PERIOD, _DOUBLE

VIEW = memoryview(_DOUBLE)
CHUNK = 1 << 18
TCP_CLOSE = 7  # include/net/tcp_states.h


class Conn:
    def __init__(self, sock, addr, nbytes):
        self.sock = sock
        self.port = addr[1]
        self.to_send = nbytes
        self.sent = 0
        self.h = hashlib.sha256()
        self.received = 0
        self.end = None
        self.eof = False
        self.shut = False

    def acked(self):
        """True once the socket is CLOSED (TCP_INFO tcpi_state == TCP_CLOSE):
        both FINs and all data ACKed, or the connection failed (SO_ERROR)."""
        state = struct.unpack("B", self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]
        if state != TCP_CLOSE:
            return False
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.end = "eof" if err == 0 else errno.errorcode.get(err, str(err))
        return True

    def result(self):
        return {"peer_port": self.port, "bytes_in": self.received, "sha256_in": self.h.hexdigest(),
                "bytes_out": self.sent, "end": self.end}


def serve(conns):
    """Moves every connection's data both ways at once until all ended;
    prints the JSON result line."""
    sel = selectors.DefaultSelector()
    for c in conns:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    live = len(conns)
    draining = []  # read to EOF and shut down: waiting for the last ACKs
    while live:
        for c in [c for c in draining if c.acked()]:
            draining.remove(c)
            c.sock.close()
            live -= 1
        for key, mask in sel.select(timeout=0.05 if draining else 1.0):
            c = key.data
            try:
                if mask & selectors.EVENT_WRITE and c.sent < c.to_send:
                    off = c.sent % PERIOD
                    n = min(CHUNK, c.to_send - c.sent, 2 * PERIOD - off)
                    c.sent += c.sock.send(VIEW[off:off + n])
                if c.sent == c.to_send and not c.shut:
                    c.sock.shutdown(socket.SHUT_WR)  # our FIN after the last byte
                    c.shut = True
                if mask & selectors.EVENT_READ and not c.eof:
                    data = c.sock.recv(1 << 20)
                    if data:
                        c.h.update(data)
                        c.received += len(data)
                    else:
                        c.eof = True  # their FIN: we may still be sending
                if c.eof and c.shut:
                    sel.unregister(c.sock)
                    draining.append(c)
                    continue
                sel.modify(c.sock, (0 if c.eof else selectors.EVENT_READ)
                           | (0 if c.shut else selectors.EVENT_WRITE), c)
            except BlockingIOError:
                continue
            except OSError as e:
                c.end = errno.errorcode.get(e.errno, str(e))
            if c.end is not None:
                sel.unregister(c.sock)
                c.sock.close()
                live -= 1
    print(json.dumps([c.result() for c in conns]), flush=True)


def main():
    if sys.argv[1] == "--connect":
        ip, port, nconn, nbytes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        conns = []
        for _ in range(nconn):
            s = socket.create_connection((ip, port), timeout=30)
            conns.append(Conn(s, s.getsockname(), nbytes))  # peer_port: our own port
        print("connected", flush=True)
        serve(conns)
        return
    port, nconn, nbytes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(nconn)
    print("listening", flush=True)
    conns = []
    while len(conns) < nconn:
        s, addr = srv.accept()
        conns.append(Conn(s, addr, nbytes))
    srv.close()
    serve(conns)


if __name__ == "__main__":
    main()
