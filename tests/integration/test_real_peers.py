"""Real programs as chimney's peers, in the target's namespace (on each device
of devices.py): netcat-openbsd as a server and as a client, curl against an
HTTP/1.1 server that the Python host runs on a chimney LISTEN, and iperf3 -c
against an iperf3 server (its control protocol, as iperf 3.12 speaks it)
that the Python host runs on a chimney LISTEN. What the programs themselves
report (exit status, bytes, files) is the judge.
"""

import hashlib
import json
import struct
import subprocess
import threading
import time

import pytest

from conftest import send_stream
from devices import DEVICES, SUCCESS, ChimneyStream, InThread, skip_backlog_events, target_on

from chimney.client import ChimneyError

import peer as stream_peer

MiB = 1 << 20
ACCEPT_S = 90  # a peer started with `ip netns exec` may be slow to start on a loaded machine
NC = "/usr/bin/nc"  # netcat-openbsd
CURL = "/usr/bin/curl"
IPERF3 = "/usr/bin/iperf3"


@pytest.fixture(params=DEVICES)
def target(request, chimneyd, tmp_path):
    """A chimneyd of this test's own on each device (devices.py)."""
    with target_on(request.param, chimneyd, tmp_path) as t:
        yield t


def sha(n, offset=0):
    return hashlib.sha256(stream_peer.stream(n, offset)).hexdigest()


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def write_stream_file(path, n):
    with open(path, "wb") as f:
        for c in stream_peer.chunks(n, MiB):
            f.write(c)


def finish(conn, what="connection"):
    """Graceful close after the peer's FIN (C-16), then terminate (C-21)."""
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == SUCCESS, (what, d)
    conn.terminate()


# ---------------------------------------------------------------- netcat


def test_nc_server_receives_a_stream_from_a_chimney_connect(target, tmp_path):
    """`nc -l` writes what it receives to a file and exits when it reads EOF,
    which only our graceful disconnect (FIN) gives it (C-11/C-12); its FIN
    afterwards comes as DISCONNECT (C-16)."""
    t = target.target
    out = tmp_path / "nc-received.bin"
    total = 16 * MiB + 4321
    with open(out, "wb") as f:
        nc = target.popen([NC, "-l", target.peer_ip, "7001"], stdout=f, stderr=subprocess.PIPE)
        conn = None
        deadline = time.monotonic() + ACCEPT_S
        while conn is None:  # nc listens a moment after it starts
            try:
                conn = t.connect(target.peer_ip, 7001)
            except ChimneyError as e:  # refused (RST) until nc listens
                if e.status != "NDIS_STATUS_REQUEST_ABORTED" or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        send_stream(conn, total)
        time.sleep(0.2)
        assert nc.poll() is None, "nc exited before our FIN"
        d = conn.disconnect(graceful=True).wait(30)
        assert d.status == SUCCESS, d
        assert nc.wait(15) == 0, nc.stderr.read()
    assert out.stat().st_size == total
    assert sha_file(out) == sha(total)
    # nc closed its side after the EOF: our DISCONNECT event.
    assert skip_backlog_events(t).kind == "DISCONNECT"
    conn.terminate()


def test_nc_client_sends_a_file_to_a_chimney_listener(target, tmp_path):
    """`nc -N` sends the file, shuts down its sending half at the file's end
    (half-close, C-16: we keep sending in CLOSE_WAIT), prints what it
    receives, and exits once we close (C-11/C-12)."""
    t = target.target
    t.listen(7200)
    up, down = 8 * MiB + 99, 1 * MiB + 7
    src = tmp_path / "to-chimney.bin"
    write_stream_file(src, up)
    got = tmp_path / "from-chimney.bin"
    with open(src, "rb") as fin, open(got, "wb") as fout:
        nc = target.popen([NC, "-N", target.target_ip, "7200"], stdin=fin, stdout=fout,
                          stderr=subprocess.PIPE)
        conn = t.accept(ACCEPT_S)
        s = ChimneyStream(conn, chunk=MiB, window=4)
        data = s.read_to_eof(60)
        assert len(data) == up and hashlib.sha256(data).hexdigest() == sha(up)
        send_stream(conn, down)
        d = conn.disconnect(graceful=True).wait(30)
        assert d.status == SUCCESS, d
        assert nc.wait(15) == 0, nc.stderr.read()
    assert got.stat().st_size == down and sha_file(got) == sha(down)
    conn.terminate()
    t.release_listen(7200)


# ---------------------------------------------------------------- curl and HTTP/1.1


def read_http_request(s):
    """(method, target, headers dict with lower-case names, body) from a ChimneyStream."""
    head = s.read_until(b"\r\n\r\n").decode("latin-1")
    lines = head.split("\r\n")
    method, path, version = lines[0].split(" ")
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


def serve_http(conn, s, status, body, content_type="application/octet-stream"):
    """One response with Connection: close, then a graceful close (C-11)."""
    head = (f"HTTP/1.1 {status}\r\nServer: chimney-test\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    c = conn.send(head).wait(30)
    assert c.status == SUCCESS and c.bytes_transferred == len(head), c
    for off in range(0, len(body), MiB):
        piece = body[off:off + MiB]
        c = conn.send(piece).wait(30)
        assert c.status == SUCCESS and c.bytes_transferred == len(piece), c
    d = conn.disconnect(graceful=True).wait(30)
    assert d.status == SUCCESS, d
    # curl closes once it has the whole response: the rest of the posted
    # receives complete INVALID_STATE after its FIN.
    assert s.read_to_eof(30) == b""


def test_curl_gets_a_response_served_through_a_chimney_listener(target, tmp_path):
    """curl GETs a 4 MiB body from an HTTP/1.1 server the host runs on a
    chimney LISTEN: C-6 for the response, C-11/C-12 for the close, C-16 for
    curl's FIN."""
    t = target.target
    t.listen(8080)
    size = 4 * MiB + 3
    out = tmp_path / "curl.bin"
    curl = target.popen([CURL, "-sS", "--http1.1", "--max-time", "60", "-o", str(out),
                         "-w", "%{http_code} %{size_download} %{num_connects}",
                         f"http://{target.target_ip}:8080/stream/{size}"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn = t.accept(ACCEPT_S)
    s = ChimneyStream(conn)
    method, path, headers = read_http_request(s)
    assert (method, path) == ("GET", f"/stream/{size}")
    assert headers["host"] == f"{target.target_ip}:8080"
    assert headers["user-agent"].startswith("curl/")
    serve_http(conn, s, "200 OK", stream_peer.stream(size))
    report, err = curl.communicate(timeout=60)
    assert curl.returncode == 0, err
    assert report == f"200 {size} 1"
    assert sha_file(out) == sha(size)
    conn.terminate()
    t.release_listen(8080)


def test_curl_posts_a_body_and_gets_its_hash(target, tmp_path):
    """curl uploads 3 MiB (with Expect: 100-continue, which the host answers);
    the host reads exactly Content-Length bytes (C-9) and answers their sha256."""
    t = target.target
    t.listen(8080)
    size = 3 * MiB + 17
    src = tmp_path / "upload.bin"
    write_stream_file(src, size)
    curl = target.popen([CURL, "-sS", "--http1.1", "--max-time", "60", "--data-binary", f"@{src}",
                         "-H", "Content-Type: application/octet-stream",
                         f"http://{target.target_ip}:8080/sha256"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn = t.accept(ACCEPT_S)
    s = ChimneyStream(conn, chunk=MiB)
    method, path, headers = read_http_request(s)
    assert (method, path) == ("POST", "/sha256")
    assert int(headers["content-length"]) == size
    if headers.get("expect", "").lower() == "100-continue":
        c = conn.send(b"HTTP/1.1 100 Continue\r\n\r\n").wait(30)
        assert c.status == SUCCESS, c
    body = s.read_exact(size, timeout=60)
    serve_http(conn, s, "200 OK", hashlib.sha256(body).hexdigest().encode(), "text/plain")
    out, err = curl.communicate(timeout=60)
    assert curl.returncode == 0, err
    assert out == sha(size)
    conn.terminate()
    t.release_listen(8080)


# ---------------------------------------------------------------- iperf3
#
# The server side of iperf3's control protocol (iperf 3.12, src/iperf_api.c,
# iperf_server_api.c, iperf_client_api.c): the client connects the control
# connection and sends its 37-byte cookie (36 characters and a NUL); every
# state is one signed byte; JSON goes as a 4-byte big-endian length then the
# text. Server: PARAM_EXCHANGE, read the parameters; CREATE_STREAMS, accept
# one data connection per stream (each starts with the cookie); TEST_START,
# TEST_RUNNING; the client sends data, then TEST_END; server: EXCHANGE_RESULTS,
# read the client's results, send its own; DISPLAY_RESULTS; the client
# answers IPERF_DONE and closes everything.

TEST_START, TEST_RUNNING, TEST_END = 1, 2, 4
PARAM_EXCHANGE, CREATE_STREAMS, EXCHANGE_RESULTS, DISPLAY_RESULTS, IPERF_DONE = 9, 10, 13, 14, 16
COOKIE_SIZE = 37
DIGITS = b"0123456789"  # --repeating-payload fills the buffer with these


def send_state(conn, state):
    c = conn.send(struct.pack("b", state)).wait(30)
    assert c.status == SUCCESS, (state, c)


def read_state(s, timeout=60):
    return struct.unpack("b", s.read_exact(1, timeout))[0]


def send_json(conn, obj):
    text = json.dumps(obj, separators=(",", ":")).encode()
    c = conn.send(struct.pack("!I", len(text)) + text).wait(30)
    assert c.status == SUCCESS, c


def read_json(s, timeout=30):
    (n,) = struct.unpack("!I", s.read_exact(4, timeout))
    assert 0 < n < 1 << 20, n
    return json.loads(s.read_exact(n, timeout))


class DataCounter:
    """Counts (and checks) a data connection's bytes on a thread until EOF."""

    def __init__(self, s):
        self.s = s
        self.cond = threading.Condition()
        self.bytes = 0
        self.bad = 0
        self.started = time.monotonic()
        self.worker = InThread(self._run)

    def _add(self, data):
        with self.cond:
            self.bytes += len(data)
            self.bad += len(data.translate(None, DIGITS))
            self.cond.notify_all()

    def _run(self):
        if self.s.buf:
            self._add(bytes(self.s.buf))
            self.s.buf.clear()
        while self.s.fill(60):
            self._add(bytes(self.s.buf))
            self.s.buf.clear()
        return self.bytes

    def wait_for(self, n, timeout=60):
        with self.cond:
            ok = self.cond.wait_for(lambda: self.bytes >= n or self.worker.error, timeout)
            assert ok and self.bytes == n, f"data connection: {self.bytes} bytes, iperf3 sent {n}"


def iperf3_server(t, timeout=ACCEPT_S):
    """Runs one iperf3 test (TCP, one stream, client sending) on accepted
    chimney connections; returns what it saw."""
    ctrl = t.accept(timeout)
    cs = ChimneyStream(ctrl, chunk=4096, window=2)
    cookie = cs.read_exact(COOKIE_SIZE, timeout)
    assert cookie[-1] == 0 and cookie[:-1].isalnum(), cookie
    send_state(ctrl, PARAM_EXCHANGE)
    params = read_json(cs)
    assert params.get("tcp") is True and params.get("parallel", 1) == 1, params
    assert not params.get("reverse") and not params.get("bidirectional"), params
    send_state(ctrl, CREATE_STREAMS)
    data = t.accept(timeout)
    ds = ChimneyStream(data, chunk=MiB, window=8)
    assert ds.read_exact(COOKIE_SIZE, timeout) == cookie, "the data connection's cookie"
    counter = DataCounter(ds)
    send_state(ctrl, TEST_START)
    send_state(ctrl, TEST_RUNNING)
    assert read_state(cs, 120) == TEST_END
    elapsed = time.monotonic() - counter.started
    send_state(ctrl, EXCHANGE_RESULTS)
    client_results = read_json(cs)
    (stream,) = client_results["streams"]
    sent = stream["bytes"]
    counter.wait_for(sent)  # everything iperf3 wrote, no more, no less
    send_json(ctrl, {
        "cpu_util_total": 0.0, "cpu_util_user": 0.0, "cpu_util_system": 0.0,
        "sender_has_retransmits": -1, "congestion_used": "cubic",
        "streams": [{"id": stream["id"], "bytes": counter.bytes, "retransmits": -1, "jitter": 0,
                     "errors": 0, "packets": 0, "start_time": 0, "end_time": elapsed}],
    })
    send_state(ctrl, DISPLAY_RESULTS)
    assert read_state(cs) == IPERF_DONE
    # iperf3 closes the data connection, then the control one: EOF on both.
    assert counter.worker.result(60) == sent, "bytes after iperf3's count"
    assert cs.read_to_eof(30) == b""
    finish(data, "iperf3 data")
    finish(ctrl, "iperf3 control")
    return {"params": params, "client_results": client_results, "bytes": counter.bytes,
            "bad": counter.bad}


def test_iperf3_client_to_an_iperf3_server_on_a_chimney_listener(target):
    """iperf3 -c against the iperf 3.12 server protocol the host runs on a
    chimney LISTEN: every byte iperf3 wrote is received (C-9), its closes
    end the posted receives with INVALID_STATE (C-16), and both connections
    close gracefully (C-11/C-12)."""
    t = target.target
    t.listen(5201)
    total = 32 * MiB
    client = target.popen([IPERF3, "-c", target.target_ip, "-p", "5201", "-n", str(total), "-J",
                           "--repeating-payload", "--connect-timeout", "30000"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = InThread(iperf3_server, t)
    out, err = client.communicate(timeout=120)
    seen = server.result(30)
    assert client.returncode == 0, (out[-2000:], err)
    report = json.loads(out)
    assert "error" not in report, report["error"]
    assert seen["params"]["num"] == total
    assert seen["bad"] == 0, "bytes outside the repeating payload's digits"
    sent = report["end"]["sum_sent"]["bytes"]
    assert sent >= total and seen["bytes"] == sent  # iperf3's own count = the host's
    assert report["end"]["sum_received"]["bytes"] == seen["bytes"]
    assert report["start"]["test_start"]["num_streams"] == 1
    t.release_listen(5201)
