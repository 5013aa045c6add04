#!/usr/bin/env python3
"""A Linux TCP client for the integration tests, run inside the namespace:

  linux_client.py IP PORT NBYTES [COUNT]

COUNT connections (default 1) at once; each sends NBYTES of the test stream
(peer.stream), shuts down its sending half, reads to EOF, and reports one JSON
line per connection: bytes and sha256 received, and how it ended.
"""
import hashlib
import json
import socket
import sys
import threading

import peer


def one(ip, port, nbytes, results, i):
    r = {"i": i}
    try:
        s = socket.create_connection((ip, port), timeout=30)
        r["local_port"] = s.getsockname()[1]
        for c in peer.chunks(nbytes):
            s.sendall(c)
        s.shutdown(socket.SHUT_WR)
        h = hashlib.sha256()
        n = 0
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            h.update(d)
            n += len(d)
        s.close()
        r.update(end="eof", bytes=n, sha256=h.hexdigest())
    except OSError as e:
        r.update(end="error", error=str(e))
    results[i] = r


def main():
    ip, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    results = [None] * count
    threads = [threading.Thread(target=one, args=(ip, port, nbytes, results, i)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
