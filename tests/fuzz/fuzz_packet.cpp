// libFuzzer target for the engine's packet input path (lib/tcp) with live
// connections. Each input is a program run against a fresh tcp::Engine that
// holds four offloaded connections in different states:
//
//   conn 0  ESTABLISHED, SACK + timestamps + window scale, data in flight and
//           more queued (inherited send data), two receives posted
//   conn 1  ESTABLISHED, no options at all, Nagle, keepalive, persist limit
//   conn 2  ESTABLISHED with SACK only, then a graceful disconnect with final
//           data behind a send (FIN_WAIT_1)
//   conn 3  CLOSE_WAIT, timestamps only, undelivered inherited receive data
//
// The program's operations (format below, and make_corpus.py) are frames from
// the peer aimed at those connections (sequence and acknowledgment numbers
// relative to the live snd.una/snd.max/rcv.nxt or raw, any flags, window,
// options built or raw, payload, checksums valid or not, truncated or
// chained frames, bursts), host requests (send, receive, graceful and
// abortive disconnect, terminate, offload again what a terminate returned,
// cached-state updates), how the host takes indications, a "NIC" that holds
// transmitted frames (so zero-copy buffers stay referenced) and releases
// them, and clock advances that run the timers (delayed ACK, push, RTO,
// persist, keepalive, TIME_WAIT).
//
// Invariants checked (a violation prints why and traps):
//  - every frame the engine emits passes net::classify_frame, belongs to one
//    of the connections, has DF and an IP ID in 0x8000-0xFFFF (C-8), and
//    its payload is the host's send stream at that sequence number;
//  - an RST leaves only inside an abortive disconnect (C-13);
//  - every request completes exactly once, only through its own connection,
//    sends and receives FIFO (C-5, C-9), a disconnect alone (C-14), sends
//    SUCCESS only with every byte transferred and their data start advanced
//    by exactly bytes_transferred (C-6, C-12), at most one partial send in a
//    failed run and none after (C-7), SUCCESS only once no mbuf references
//    the send's memory (DESIGN.md buffers);
//  - every byte delivered to the host (receive completions, indications, the
//    data a terminate returns) is the peer's stream at its position;
//  - when a terminate completes every request of that connection was
//    completed (C-21) and nothing more arrives for that handle (C-20);
//  - at the end, after the NIC released everything and every connection was
//    terminated: every request completed, and no mbuf is left in use.
//
// Input format: byte 0 picks setup variants (bit 0 CUBIC, 1 MSS 536 on conn 0,
// 2 send scale 14 on conn 0 and payload copied instead of attached, 3 a 4 KiB
// receive window on conn 0, 4 Nagle off on conn 1 and no final data in conn
// 2's disconnect, 5 conn 1 behind a zero window, 6 keepalive on conn 3, 7
// sequence numbers near the wrap); then operations, each an opcode
// byte followed by its fields (little-endian); a field past the end reads 0
// and ends the program. See `run_op` for the fields of each opcode.
#include <rte_arp.h>
#include <rte_eal.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_tcp.h>

#include <array>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "chimney/target.hpp"
#include "net/build.hpp"
#include "net/packet.hpp"
#include "net/tcp_options.hpp"
#include "tcp/engine.hpp"
#include "tcp/request.hpp"

namespace {

using namespace chimney;

[[noreturn]] __attribute__((format(printf, 1, 2))) void violation(const char* fmt, ...) {
  std::fprintf(stderr, "fuzz_packet: invariant violated: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  __builtin_trap();
}
// CHIMNEY_FUZZ_TRACE=1 prints the program as it runs (replaying one input).
bool g_trace = false;
#define TRACE(...)                       \
  do {                                   \
    if (g_trace) std::fprintf(stderr, __VA_ARGS__); \
  } while (0)

#define CHECK(cond, ...)                  \
  do {                                    \
    if (!(cond)) violation(__VA_ARGS__);  \
  } while (0)

// The peer's byte stream and the host's: the byte at sequence number s.
inline uint8_t peer_byte(uint32_t s) { return static_cast<uint8_t>((s * 0x9E3779B1u) >> 24 ^ (s >> 11)); }
inline uint8_t host_byte(uint32_t s) { return static_cast<uint8_t>((s * 0x85EBCA6Bu) >> 24 ^ (s >> 13) ^ 0x5A); }

constexpr int kConns = 4;
constexpr size_t kMaxRequests = 192;   // per input; operations beyond are skipped
constexpr size_t kMaxBurst = 64;       // frames handed to input() at once
constexpr uint32_t kMaxPayload = 1900; // one mbuf of the frame pool
constexpr uint64_t kStartUs = 5'000'000;

rte_mempool* g_frames = nullptr;  // the peer's frames
rte_mempool* g_headers = nullptr; // the engine's header mbufs
rte_mempool* g_attach = nullptr;  // the engine's zero-copy payload mbufs

struct Conn;

enum class Kind : uint8_t { send, receive, disconnect };
enum class ReqState : uint8_t { idle, pending, done };

struct Req {
  NetBufferList nbl;
  std::array<NetBuffer, 3> nb;
  std::array<uint8_t*, 3> orig{};   // data start as posted
  std::array<uint32_t, 3> orig_len{};
  uint32_t nbs = 0;
  std::vector<uint8_t> buf;
  Kind kind = Kind::send;
  ReqState state = ReqState::idle;
  Conn* conn = nullptr;
  uint32_t handle = 0;      // the handle it was posted on
  uint64_t order = 0;       // post order, per connection and kind
  uint32_t length = 0;
  bool in_callback = false; // a send refused inside the call that posted it
  bool abortive = false;    // a disconnect's kind

  uint32_t advanced() const {
    uint64_t n = 0;
    for (uint32_t i = 0; i < nbs; ++i) n += static_cast<uint64_t>(nb[i].data - orig[i]);
    return static_cast<uint32_t>(n);
  }
};

Req* req_of(NetBufferList* n) { return reinterpret_cast<Req*>(reinterpret_cast<uint8_t*>(n) - offsetof(Req, nbl)); }

struct Conn {
  int index = 0;
  OffloadState state;           // as offloaded (const, cached, path)
  ConnectionHandle h;           // 0 when none
  bool offload_pending = false;
  bool live = false;            // offloaded and not yet terminate-completed
  bool terminating = false;
  // Last known sequence state (kept after the record goes).
  uint32_t una = 0, nxt = 0, max = 0, rcv_nxt = 0, ts_recent = 0, queued_end = 0;
  uint32_t peer_next = 0;       // seq after the peer's last frame
  // Receive stream check.
  uint32_t rx_start = 0;        // sequence number of the first byte owed to the host
  uint64_t delivered = 0;
  bool rx_tainted = false;      // a raw frame may have carried other bytes
  // FIFO checks (post order of requests queued on the current handle).
  uint64_t next_send_post = 0, next_send_done = 0;
  uint64_t next_recv_post = 0, next_recv_done = 0;
  bool send_failed = false;     // a queued send completed non-SUCCESS
  bool send_short_seen = false; // ... with fewer bytes than it had
  Req* upload_disc = nullptr;   // a graceful disconnect a terminate cut short
  // What the last terminate returned, for offloading again.
  bool have_returned = false;
  DelegatedState returned;
};

struct Target;
Target* g_t = nullptr;

// The NIC: frames are checked, then freed at once or held until released.
class Nic : public tcp::TxSink {
 public:
  bool hold = false;
  std::vector<rte_mbuf*> held;
  bool rst_allowed = false;  // inside an abortive disconnect
  uint64_t frames = 0;
  void transmit(rte_mbuf** pkts, uint16_t n) override;
  void release_all() {
    for (rte_mbuf* m : held) rte_pktmbuf_free(m);
    held.clear();
  }
};

class Host : public HostCallbacks {
 public:
  void offload_complete(ConnectionHandle h, void* ctx, Status s) override;
  void send_complete(ConnectionHandle h, void* ctx, NetBufferList* chain) override;
  void receive_complete(ConnectionHandle h, void* ctx, NetBufferList* chain) override;
  IndicateResult receive_indicate(ConnectionHandle h, void* ctx, const uint8_t* data, uint32_t len,
                                  bool push) override;
  void disconnect_complete(ConnectionHandle h, void* ctx, NetBufferList* nbl) override;
  void terminate_complete(ConnectionHandle h, void* ctx, Status s, DelegatedState& d) override;
  void event(ConnectionHandle h, void* ctx, EventKind k, RetrieveReason r, uint32_t value) override;
  uint8_t accept_mode = 0;  // indications: 0 all, 1 none, 2 half, 3 one byte
};

struct Target {
  std::array<Conn, kConns> conns;
  std::vector<std::unique_ptr<Req>> reqs;  // kept across inputs (buffers keep their capacity)
  size_t used = 0;
  Nic nic;
  Host host;
  std::unique_ptr<tcp::Engine> engine;
  uint64_t now_us = kStartUs;
  std::vector<rte_mbuf*> burst;
  std::vector<uint32_t> dead_handles;  // terminate completed: nothing more may arrive

  Req* new_req() {
    if (used == kMaxRequests) return nullptr;
    if (used == reqs.size()) reqs.push_back(std::make_unique<Req>());
    Req* r = reqs[used++].get();
    r->nbl = NetBufferList{};
    for (auto& b : r->nb) b = NetBuffer{};
    r->nbs = 0;
    r->state = ReqState::idle;
    r->conn = nullptr;
    r->handle = 0;
    r->length = 0;
    r->in_callback = false;
    r->abortive = false;
    return r;
  }
  Conn* conn_of_handle(ConnectionHandle h, void* ctx) {
    for (uint32_t d : dead_handles) CHECK(d != h.value, "C-20: a callback for handle %#x after its terminate completed", h.value);
    auto* c = static_cast<Conn*>(ctx);
    CHECK(c != nullptr && c >= &conns[0] && c <= &conns[kConns - 1], "callback with a host context that is not ours");
    CHECK(c->h == h, "callback for handle %#x on connection %d whose handle is %#x", h.value, c->index, c->h.value);
    return c;
  }
  void refresh(Conn& c) {
    const tcp::Tcb* t = c.h.value != 0 ? engine->find(c.h) : nullptr;
    if (t == nullptr) return;
    c.una = t->snd.una;
    c.nxt = t->snd.nxt;
    c.max = t->snd.max;
    c.rcv_nxt = t->rcv.nxt;
    c.ts_recent = t->rcv.ts_recent;
    c.queued_end = t->snd.queued_end;
  }
};

// Bytes of a (possibly chained) mbuf from `off`.
void read_mbuf(const rte_mbuf* m, uint32_t off, uint32_t len, uint8_t* out) {
  const void* p = rte_pktmbuf_read(m, off, len, out);
  CHECK(p != nullptr, "cannot read %u bytes at %u of an emitted frame", len, off);
  if (p != out) std::memcpy(out, p, len);
}

void Nic::transmit(rte_mbuf** pkts, uint16_t n) {
  Target& t = *g_t;
  for (uint16_t i = 0; i < n; ++i) {
    rte_mbuf* m = pkts[i];
    ++frames;
    const uint64_t saved_flags = m->ol_flags;
    m->ol_flags &= ~(RTE_MBUF_F_RX_IP_CKSUM_MASK | RTE_MBUF_F_RX_L4_CKSUM_MASK);
    const net::Classified k = net::classify_frame(m);
    CHECK(k.kind == net::FrameKind::tcp, "the engine emitted a frame that does not classify as TCP (%s)",
          k.kind == net::FrameKind::drop ? net::to_string(k.reason) : "not TCP");
    m->ol_flags = saved_flags;
    uint8_t hdr[sizeof(rte_ipv4_hdr) + sizeof(rte_tcp_hdr)];
    read_mbuf(m, m->l2_len, sizeof(hdr), hdr);
    const auto* ip = reinterpret_cast<const rte_ipv4_hdr*>(hdr);
    const auto* th = reinterpret_cast<const rte_tcp_hdr*>(hdr + sizeof(rte_ipv4_hdr));
    CHECK(rte_be_to_cpu_16(ip->fragment_offset) & RTE_IPV4_HDR_DF_FLAG, "C-8: DF not set");
    CHECK(rte_be_to_cpu_16(ip->packet_id) >= 0x8000, "C-8: IP ID %#x below 0x8000", rte_be_to_cpu_16(ip->packet_id));
    const uint32_t src = rte_be_to_cpu_32(ip->src_addr), dst = rte_be_to_cpu_32(ip->dst_addr);
    const uint16_t sport = rte_be_to_cpu_16(th->src_port), dport = rte_be_to_cpu_16(th->dst_port);
    const Conn* owner = nullptr;
    for (const Conn& c : t.conns)
      if (c.state.constant.local_ip == src && c.state.constant.remote_ip == dst && c.state.constant.local_port == sport &&
          c.state.constant.remote_port == dport)
        owner = &c;
    CHECK(owner != nullptr, "a frame of no connection: %08x:%u -> %08x:%u", src, sport, dst, dport);
    CHECK(!(th->tcp_flags & RTE_TCP_RST_FLAG) || rst_allowed, "C-13: conn %d sent a RST outside an abortive disconnect",
          owner->index);
    CHECK(!(th->tcp_flags & RTE_TCP_SYN_FLAG), "conn %d sent a SYN", owner->index);
    const uint32_t off = m->l2_len + m->l3_len + m->l4_len;
    const uint32_t len = rte_pktmbuf_pkt_len(m) - off;
    TRACE("    out conn %d seq %u ack %u flags %02x win %u len %u%s\n", owner->index, rte_be_to_cpu_32(th->sent_seq),
          rte_be_to_cpu_32(th->recv_ack), th->tcp_flags, rte_be_to_cpu_16(th->rx_win), len, hold ? " (held)" : "");
    if (len != 0) {
      static uint8_t payload[65536];
      read_mbuf(m, off, len, payload);
      const uint32_t seq = rte_be_to_cpu_32(th->sent_seq);
      for (uint32_t j = 0; j < len; ++j)
        CHECK(payload[j] == host_byte(seq + j), "conn %d sent byte %#x at seq %u, the host's stream has %#x there",
              owner->index, payload[j], seq + j, host_byte(seq + j));
    }
    if (hold) held.push_back(m);
    else rte_pktmbuf_free(m);
  }
}

// --- host callbacks --------------------------------------------------------

// A request of `kind` posted on handle `h` of `c` and not completed.
bool outstanding(const Conn& c, ConnectionHandle h, Kind kind) {
  for (size_t i = 0; i < g_t->used; ++i) {
    const Req& r = *g_t->reqs[i];
    if (r.conn == &c && r.handle == h.value && r.kind == kind && r.state == ReqState::pending) return true;
  }
  return false;
}

void check_send_done(Conn& c, Req& r) {
  CHECK(r.state == ReqState::pending, "a send completed twice or was never posted (conn %d)", c.index);
  CHECK(r.conn == &c, "a send of conn %d completed on conn %d", r.conn ? r.conn->index : -1, c.index);
  const NetBufferList& n = r.nbl;
  CHECK(n.bytes_transferred <= r.length, "send bytes_transferred %llu > length %u",
        static_cast<unsigned long long>(n.bytes_transferred), r.length);
  CHECK(r.advanced() == n.bytes_transferred, "C-6: data start advanced by %u, bytes_transferred %llu", r.advanced(),
        static_cast<unsigned long long>(n.bytes_transferred));
  r.state = ReqState::done;
  if (r.in_callback) {  // refused at once, never queued
    CHECK(n.status != Status::success && n.bytes_transferred == 0, "a refused send with %s and %llu bytes",
          to_string(n.status), static_cast<unsigned long long>(n.bytes_transferred));
    return;
  }
  CHECK(r.order == c.next_send_done, "C-5: conn %d completed send #%llu before #%llu", c.index,
        static_cast<unsigned long long>(r.order), static_cast<unsigned long long>(c.next_send_done));
  ++c.next_send_done;
  if (n.status == Status::success) {
    CHECK(!c.send_failed, "C-7: conn %d: a send completed SUCCESS after one failed", c.index);
    CHECK(n.bytes_transferred == r.length, "C-6: SUCCESS with %llu of %u bytes",
          static_cast<unsigned long long>(n.bytes_transferred), r.length);
    for (uint32_t i = 0; i < r.nbs; ++i)
      CHECK(rte_mbuf_ext_refcnt_read(&tcp::meta(&r.nb[i]).shinfo) == 1,
            "a send completed SUCCESS while an mbuf still references its memory (conn %d)", c.index);
  } else {
    CHECK(n.status == Status::request_aborted || n.status == Status::upload_in_progress ||
              n.status == Status::invalid_state,
          "send status %s", to_string(n.status));
    // C-7: at most one request partly sent; the ones after it unsent.
    CHECK(!c.send_short_seen || n.bytes_transferred == 0, "C-7: conn %d: %llu bytes of a send after one was cut short",
          c.index, static_cast<unsigned long long>(n.bytes_transferred));
    if (n.bytes_transferred != r.length) c.send_short_seen = true;
    c.send_failed = true;
  }
}

void Host::offload_complete(ConnectionHandle h, void* ctx, Status s) {
  auto* c = static_cast<Conn*>(ctx);
  CHECK(c != nullptr && c->offload_pending, "an offload completed twice or was never initiated");
  TRACE("    offload_complete conn %d %s handle %#x\n", c->index, to_string(s), h.value);
  c->offload_pending = false;
  if (s == Status::success) {
    CHECK(h == c->h && h.value != 0, "offload SUCCESS with handle %#x, initiate returned %#x", h.value, c->h.value);
    c->live = true;
  } else {
    CHECK(h.value == 0 && c->h.value == 0, "a refused offload carries a handle");
    // C-2: the host still owns what it passed; sends it handed over are its own again.
    for (NetBufferList* n = c->state.delegated.send_data; n != nullptr; n = n->next) {
      Req* r = req_of(n);
      CHECK(r->state == ReqState::pending, "inherited send not pending");
      r->state = ReqState::idle;  // the host's again
    }
  }
  c->state.delegated.send_data = nullptr;
}

void Host::send_complete(ConnectionHandle h, void* ctx, NetBufferList* chain) {
  Conn& c = *g_t->conn_of_handle(h, ctx);
  CHECK(chain != nullptr, "an empty send completion");
  for (NetBufferList* n = chain; n != nullptr; n = n->next)
    TRACE("    send_complete conn %d %s %llu/%u\n", c.index, to_string(n->status),
          static_cast<unsigned long long>(n->bytes_transferred), req_of(n)->length);
  for (NetBufferList* n = chain; n != nullptr;) {
    NetBufferList* next = n->next;
    Req& r = *req_of(n);
    CHECK(r.kind == Kind::send, "C-14: a disconnect or receive came back as a send");
    check_send_done(c, r);
    n = next;
  }
}

// Checks `len` bytes delivered to the host against the peer's stream.
void deliver(Conn& c, const uint8_t* p, uint32_t len) {
  if (!c.rx_tainted)
    for (uint32_t j = 0; j < len; ++j) {
      const uint32_t s = c.rx_start + static_cast<uint32_t>(c.delivered + j);
      CHECK(p[j] == peer_byte(s), "conn %d delivered byte %#x for seq %u, the peer sent %#x", c.index, p[j], s,
            peer_byte(s));
    }
  c.delivered += len;
}

void Host::receive_complete(ConnectionHandle h, void* ctx, NetBufferList* chain) {
  Conn& c = *g_t->conn_of_handle(h, ctx);
  CHECK(chain != nullptr, "an empty receive completion");
  for (NetBufferList* n = chain; n != nullptr; n = n->next)
    TRACE("    receive_complete conn %d %s %llu/%u\n", c.index, to_string(n->status),
          static_cast<unsigned long long>(n->bytes_transferred), req_of(n)->length);
  for (NetBufferList* n = chain; n != nullptr; n = n->next) {
    Req& r = *req_of(n);
    CHECK(r.kind == Kind::receive && r.conn == &c, "a foreign request came back as a receive");
    CHECK(r.state == ReqState::pending, "C-9: a receive completed twice (conn %d)", c.index);
    r.state = ReqState::done;
    CHECK(n->bytes_transferred <= r.length, "receive filled %llu of %u", static_cast<unsigned long long>(n->bytes_transferred),
          r.length);
    CHECK(r.advanced() == 0, "a receive's data start moved");
    if (n->status != Status::success)
      CHECK(n->status == Status::invalid_state || n->status == Status::request_aborted ||
                n->status == Status::upload_in_progress,
            "receive status %s", to_string(n->status));
    // A refused receive finds the queue empty, so FIFO holds for all of them.
    CHECK(r.order == c.next_recv_done, "C-9: conn %d completed receive #%llu before #%llu", c.index,
          static_cast<unsigned long long>(r.order), static_cast<unsigned long long>(c.next_recv_done));
    ++c.next_recv_done;
    uint32_t left = static_cast<uint32_t>(n->bytes_transferred);
    for (uint32_t i = 0; i < r.nbs && left != 0; ++i) {
      const uint32_t take = left < r.orig_len[i] ? left : r.orig_len[i];
      deliver(c, r.orig[i], take);
      left -= take;
    }
  }
}

IndicateResult Host::receive_indicate(ConnectionHandle h, void* ctx, const uint8_t* data, uint32_t len, bool) {
  Conn& c = *g_t->conn_of_handle(h, ctx);
  CHECK(len != 0, "an empty indication");
  TRACE("    indicate conn %d %u bytes\n", c.index, len);
  uint32_t take = len;
  switch (accept_mode & 3) {
    case 1: take = 0; break;
    case 2: take = len / 2; break;
    case 3: take = 1; break;
    default: break;
  }
  deliver(c, data, take);
  return {take};
}

void Host::disconnect_complete(ConnectionHandle h, void* ctx, NetBufferList* nbl) {
  Conn& c = *g_t->conn_of_handle(h, ctx);
  Req& r = *req_of(nbl);
  TRACE("    disconnect_complete conn %d %s %llu/%u\n", c.index, to_string(nbl->status),
        static_cast<unsigned long long>(nbl->bytes_transferred), r.length);
  CHECK(r.kind == Kind::disconnect && r.conn == &c, "C-14: a disconnect completion with another request");
  CHECK(nbl->next == nullptr, "C-14: a disconnect completion carries a chain");
  CHECK(r.state == ReqState::pending, "a disconnect completed twice (conn %d)", c.index);
  r.state = ReqState::done;
  CHECK(nbl->bytes_transferred <= r.length, "C-12: disconnect bytes_transferred beyond its data");
  CHECK(r.advanced() == nbl->bytes_transferred, "C-12: data start advanced by %u, bytes_transferred %llu", r.advanced(),
        static_cast<unsigned long long>(nbl->bytes_transferred));
  if (nbl->status == Status::success) {
    if (!r.abortive) {
      // C-12: FIN and all data sent and ACKed; C-11: the sends before it first.
      CHECK(nbl->bytes_transferred == r.length, "C-12: graceful SUCCESS with %llu of %u bytes",
            static_cast<unsigned long long>(nbl->bytes_transferred), r.length);
    }
    // C-13: an abortive disconnect completes after every send did.
    CHECK(!outstanding(c, h, Kind::send), "C-11/C-13: disconnect SUCCESS with a send of conn %d outstanding", c.index);
  }
  if (nbl->status == Status::upload_in_progress && !r.abortive) c.upload_disc = &r;
}

void Host::terminate_complete(ConnectionHandle h, void* ctx, Status s, DelegatedState& d) {
  Conn& c = *g_t->conn_of_handle(h, ctx);
  TRACE("    terminate_complete conn %d state %s una %u max %u rcv_nxt %u, %zu bytes undelivered\n", c.index,
        to_string(d.state), d.snd_una, d.snd_max, d.rcv_nxt, d.receive_data.size());
  CHECK(c.terminating, "terminate_complete without a terminate (conn %d)", c.index);
  CHECK(s == Status::success, "terminate status %s", to_string(s));
  // C-21: unfinished sends come back in order; they are complete now.
  for (NetBufferList* n = d.send_data; n != nullptr; n = n->next) {
    Req& r = *req_of(n);
    CHECK(r.kind == Kind::send, "terminate returned a non-send request");
    CHECK(n->status == Status::upload_in_progress, "a returned send with status %s", to_string(n->status));
    for (uint32_t i = 0; i < r.nbs; ++i)
      CHECK(rte_mbuf_ext_refcnt_read(&tcp::meta(&r.nb[i]).shinfo) == 1,
            "terminate returned a send an mbuf still references (conn %d)", c.index);
    check_send_done(c, r);
  }
  // C-21: every request of the connection is complete.
  for (size_t i = 0; i < g_t->used; ++i) {
    const Req& r = *g_t->reqs[i];
    CHECK(!(r.conn == &c && r.handle == h.value && r.state == ReqState::pending),
          "C-21: terminate completed with a %s request of conn %d outstanding",
          r.kind == Kind::send ? "send" : r.kind == Kind::receive ? "receive" : "disconnect", c.index);
  }
  // The data not delivered continues the stream; rcv_nxt is past it (and past a FIN).
  if (!d.receive_data.empty()) deliver(c, d.receive_data.data(), static_cast<uint32_t>(d.receive_data.size()));
  if (!c.rx_tainted) {
    const uint32_t gap = d.rcv_nxt - (c.rx_start + static_cast<uint32_t>(c.delivered));
    CHECK(gap <= 1, "C-21: conn %d returned rcv_nxt %u, the host has the stream up to %u", c.index, d.rcv_nxt,
          c.rx_start + static_cast<uint32_t>(c.delivered));
  }
  g_t->dead_handles.push_back(h.value);
  c.live = false;
  c.terminating = false;
  c.h = ConnectionHandle{};
  c.una = d.snd_una;
  c.nxt = d.snd_nxt;
  c.max = d.snd_max;
  c.rcv_nxt = d.rcv_nxt;
  c.returned = std::move(d);
  c.have_returned = true;
  // Requests handed back may go out again with a new offload.
  for (NetBufferList* n = c.returned.send_data; n != nullptr; n = n->next) req_of(n)->state = ReqState::idle;
}

void Host::event(ConnectionHandle h, void* ctx, EventKind k, RetrieveReason reason, uint32_t value) {
  Conn& c = *g_t->conn_of_handle(h, ctx);
  TRACE("    event conn %d %s %s %u\n", c.index, to_string(k), to_string(reason), value);
  CHECK(c.live, "an event for conn %d that is not live", c.index);
  if (k == EventKind::abort) {
    // C-17: everything outstanding completed REQUEST_ABORTED first.
    CHECK(!outstanding(c, h, Kind::send) && !outstanding(c, h, Kind::receive) && !outstanding(c, h, Kind::disconnect),
          "C-17: ABORT with requests of conn %d outstanding", c.index);
  }
  if (k == EventKind::disconnect && !c.rx_tainted) {
    // C-16: only after every byte before the FIN was consumed.
    const tcp::Tcb* tcb = g_t->engine->find(h);
    CHECK(tcb != nullptr && tcb->flags.fin_received, "DISCONNECT without the peer's FIN (conn %d)", c.index);
    CHECK(tcb->rcv.fin_seq == c.rx_start + static_cast<uint32_t>(c.delivered),
          "C-16: DISCONNECT with the FIN at %u and the host's stream at %u (conn %d)", tcb->rcv.fin_seq,
          c.rx_start + static_cast<uint32_t>(c.delivered), c.index);
  }
}

// --- the program -----------------------------------------------------------

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool done() const { return off_ >= n_; }
  uint8_t u8() { return off_ < n_ ? d_[off_++] : (off_++, 0); }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return u16() | (static_cast<uint32_t>(u16()) << 16); }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t off_ = 0;
};

// A request with `len` bytes in `nbs` NetBuffers; send data is the host's
// stream from `seq`.
void fill_req(Req& r, Kind kind, Conn& c, uint32_t len, uint32_t nbs, uint32_t seq) {
  r.kind = kind;
  r.conn = &c;
  r.length = len;
  if (r.buf.size() < len + 8u) r.buf.resize(len + 8u);
  if (kind != Kind::receive)
    for (uint32_t i = 0; i < len; ++i) r.buf[i] = host_byte(seq + i);
  if (nbs == 0 || nbs > 3) nbs = 1;
  if (len < nbs) nbs = 1;
  r.nbs = nbs;
  uint32_t off = 0;
  for (uint32_t i = 0; i < nbs; ++i) {
    const uint32_t piece = i + 1 == nbs ? len - off : len / nbs;
    r.nb[i] = NetBuffer{};
    r.nb[i].data = r.buf.data() + off;
    r.nb[i].data_length = piece;
    r.nb[i].next = i + 1 < nbs ? &r.nb[i + 1] : nullptr;
    r.orig[i] = r.nb[i].data;
    r.orig_len[i] = piece;
    off += piece;
  }
  r.nbl = NetBufferList{};
  r.nbl.first = &r.nb[0];
}

// Conn `i`'s offload state for this input.
OffloadState initial_state(int i, uint8_t setup) {
  OffloadState s;
  s.constant.local_ip = 0xC6120002;  // 198.18.0.2
  s.constant.remote_ip = 0xC6120001 + static_cast<uint32_t>(i);
  s.constant.local_port = static_cast<uint16_t>(5000 + i);
  s.constant.remote_port = static_cast<uint16_t>(40000 + i);
  s.path.local_mac = {0x02, 0, 0, 0, 0, 0x02};
  s.path.next_hop_mac = {0x02, 0, 0, 0, 0, static_cast<uint8_t>(0x10 + i)};
  s.path.path_mtu = 1500;
  s.cached.nagle = false;
  s.cached.max_retransmissions = 6;
  s.cached.congestion = (setup & 1) ? CongestionAlgorithm::cubic : CongestionAlgorithm::newreno;
  DelegatedState& d = s.delegated;
  d.state = TcpState::established;
  const uint32_t iss = 1000u + 0x40000000u * static_cast<uint32_t>(i) - ((setup & 0x80) ? 3000u : 0u);  // near a wrap
  const uint32_t irs = 0xFFFFF000u + 0x1000u * static_cast<uint32_t>(i);  // conn 0 wraps soon
  d.snd_una = d.snd_nxt = d.snd_max = iss;
  d.snd_wl1 = irs;
  d.snd_wl2 = iss;
  d.rcv_nxt = irs;
  d.ts_recent = 100;
  switch (i) {
    case 0:
      s.constant.remote_mss = (setup & 2) ? 536 : 1460;
      s.constant.window_scaling = true;
      s.constant.snd_wscale = (setup & 4) ? 14 : 7;
      s.constant.rcv_wscale = 7;
      s.constant.timestamps = true;
      s.constant.sack = true;
      s.cached.initial_rcv_wnd = (setup & 8) ? 4096 : 65536;
      d.snd_wnd = 64u << 10;
      d.snd_nxt = d.snd_max = iss + 2000;  // in flight
      d.retransmit_timer_ms = 300;
      d.srtt_us = 20000;
      d.rttvar_us = 5000;
      break;
    case 1:
      s.constant.remote_mss = 1460;
      s.cached.initial_rcv_wnd = 8192;
      s.cached.nagle = !(setup & 16);
      s.cached.keepalive = true;
      s.cached.keepalive_timeout_ms = 2000;
      s.cached.keepalive_interval_ms = 500;
      s.cached.keepalive_probes = 3;
      s.cached.max_persist_probes = 4;
      d.snd_wnd = (setup & 32) ? 0 : 16384;  // a zero window: persist
      break;
    case 2:
      s.constant.remote_mss = 1000;
      s.constant.window_scaling = true;
      s.constant.snd_wscale = 2;
      s.constant.rcv_wscale = 0;
      s.constant.sack = true;
      s.cached.initial_rcv_wnd = 30000;
      d.snd_wnd = 20000;
      break;
    default:
      s.constant.remote_mss = 1200;
      s.constant.timestamps = true;
      s.cached.initial_rcv_wnd = 16384;
      s.cached.keepalive = (setup & 64) != 0;
      s.cached.keepalive_timeout_ms = 3000;
      s.cached.keepalive_interval_ms = 1000;
      s.cached.keepalive_probes = 2;
      d.state = TcpState::close_wait;
      d.snd_wnd = 10000;
      break;
  }
  return s;
}

void poll(Target& t) { t.engine->poll(t.now_us); }

void flush_burst(Target& t) {
  if (t.burst.empty()) return;
  rte_mbuf* unmatched[kMaxBurst];
  const uint16_t n = t.engine->input(t.burst.data(), static_cast<uint16_t>(t.burst.size()), t.now_us, unmatched);
  CHECK(n <= t.burst.size(), "input returned %u unmatched of %zu", n, t.burst.size());
  for (uint16_t i = 0; i < n; ++i) {
    // The slow path's: a segment of no connection gets the CLOSED state's
    // RST (RFC 9293 §3.10.7.1), built in place; it must be well-formed.
    rte_mbuf* m = unmatched[i];
    const bool was_rst = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len)->tcp_flags & RTE_TCP_RST_FLAG;
    if (net::tcp_rst_for_unknown_in_place(m, 0x8002)) {
      CHECK(!was_rst, "the slow path answered a RST");
      m->ol_flags = 0;
      const net::Classified k = net::classify_frame(m);
      CHECK(k.kind == net::FrameKind::tcp, "the slow path's RST does not classify (%s)",
            k.kind == net::FrameKind::drop ? net::to_string(k.reason) : "not TCP");
      CHECK(rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len)->tcp_flags & RTE_TCP_RST_FLAG,
            "the slow path's answer is not a RST");
    } else {
      CHECK(was_rst, "the slow path refused to answer a segment that is not a RST");
    }
    rte_pktmbuf_free(m);
  }
  t.burst.clear();
}

void offload(Target& t, Conn& c, const OffloadState& s) {
  c.offload_pending = true;
  c.state = s;
  for (NetBufferList* n = s.delegated.send_data; n != nullptr; n = n->next) {
    // Handed over as they stand: what the new handle transfers counts from here.
    Req* r = req_of(n);
    r->state = ReqState::pending;
    r->in_callback = false;
    r->kind = Kind::send;
    r->length = static_cast<uint32_t>(n->data_length());
    for (uint32_t i = 0; i < r->nbs; ++i) {
      r->orig[i] = r->nb[i].data;
      r->orig_len[i] = r->nb[i].data_length;
    }
  }
  c.send_failed = c.send_short_seen = false;
  c.upload_disc = nullptr;
  c.next_send_post = c.next_send_done = c.next_recv_post = c.next_recv_done = 0;
  // Inherited sends are the first in the queue.
  for (NetBufferList* n = s.delegated.send_data; n != nullptr; n = n->next) req_of(n)->order = c.next_send_post++;
  ConnectionHandle h;
  t.engine->initiate_offload(s, &c, &h);
  c.h = h;
  for (NetBufferList* n = s.delegated.send_data; n != nullptr; n = n->next) req_of(n)->handle = h.value;
  poll(t);  // completes the offload
  CHECK(!c.offload_pending, "an offload did not complete on the next poll");
  t.refresh(c);
}

Req* post_send(Target& t, Conn& c, uint32_t len, uint32_t nbs) {
  Req* r = t.new_req();
  if (r == nullptr) return nullptr;
  t.refresh(c);
  fill_req(*r, Kind::send, c, len, nbs, c.queued_end);
  r->handle = c.h.value;
  r->state = ReqState::pending;
  r->order = c.next_send_post;
  r->in_callback = true;  // until the call returns: a refusal completes inside it
  const Status st = t.engine->send(c.h, &r->nbl);
  if (st != Status::pending) {
    CHECK(r->state == ReqState::pending, "a send failed at once and was completed too");
    r->state = ReqState::idle;  // still the host's
    return r;
  }
  if (r->state == ReqState::pending) {
    r->in_callback = false;
    ++c.next_send_post;
  }
  t.refresh(c);
  return r;
}

void setup(Target& t, uint8_t variant) {
  for (int i = 0; i < kConns; ++i) {
    Conn& c = t.conns[static_cast<size_t>(i)];
    c = Conn{};
    c.index = i;
    OffloadState s = initial_state(i, variant);
    c.rx_start = s.delegated.rcv_nxt;
    c.peer_next = s.delegated.rcv_nxt;
    if (i == 0) {
      // Inherited send data: 2000 bytes in flight and 3000 more, in two requests.
      Req* a = t.new_req();
      Req* b = t.new_req();
      fill_req(*a, Kind::send, c, 2500, 2, s.delegated.snd_una);
      fill_req(*b, Kind::send, c, 2500, 1, s.delegated.snd_una + 2500);
      a->nbl.next = &b->nbl;
      s.delegated.send_data = &a->nbl;
    }
    if (i == 3) {
      // Inherited, undelivered: 300 bytes before rcv_nxt, and the peer's FIN
      // (CLOSE_WAIT) after them.
      s.delegated.receive_data.resize(300);
      s.delegated.rcv_nxt += 1;
      c.rx_start = s.delegated.rcv_nxt - 1 - 300;
      for (uint32_t j = 0; j < 300; ++j) s.delegated.receive_data[j] = peer_byte(c.rx_start + j);
      c.peer_next = s.delegated.rcv_nxt;
    }
    offload(t, c, s);
    CHECK(c.live, "setup offload %d refused", i);
  }
  // Receives posted on conn 0; conn 2: a send then a graceful disconnect with data.
  for (int k = 0; k < 2; ++k) {
    Req* r = t.new_req();
    Conn& c = t.conns[0];
    fill_req(*r, Kind::receive, c, k == 0 ? 3000 : 1000, 2, 0);
    r->handle = c.h.value;
    r->state = ReqState::pending;
    r->order = c.next_recv_post++;
    CHECK(t.engine->receive(c.h, &r->nbl) == Status::pending, "setup receive refused");
  }
  Conn& c2 = t.conns[2];
  post_send(t, c2, 4000, 2);
  Req* d = t.new_req();
  fill_req(*d, Kind::disconnect, c2, (variant & 16) ? 0 : 700, 1, c2.queued_end);
  d->handle = c2.h.value;
  d->state = ReqState::pending;
  CHECK(t.engine->disconnect(c2.h, &d->nbl, DisconnectKind::graceful) == Status::pending, "setup disconnect refused");
  t.refresh(c2);
  poll(t);
}

// Whether the payload of classified TCP frame `m` (as the engine will take
// it: after the header the data offset says, up to the IP total length) is
// the peer's stream at the frame's sequence number.
bool carries_stream(const rte_mbuf* m) {
  const uint32_t seq = rte_be_to_cpu_32(rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len)->sent_seq);
  const uint32_t len = net::tcp_payload_len(m);
  static uint8_t payload[65536];
  const uint32_t off = m->l2_len + m->l3_len + m->l4_len;
  if (len == 0) return true;
  if (off + len > rte_pktmbuf_pkt_len(m)) return false;
  read_mbuf(m, off, len, payload);
  for (uint32_t i = 0; i < len; ++i)
    if (payload[i] != peer_byte(seq + i)) return false;
  return true;
}

// A frame from the peer; see the FRAME opcode.
void op_frame(Target& t, Reader& in, bool raw) {
  const uint8_t sel = in.u8();
  Conn& c = t.conns[sel & 3];
  t.refresh(c);
  rte_mbuf* m = rte_pktmbuf_alloc(g_frames);
  if (m == nullptr) violation("frame pool empty: a frame leaked");
  if (raw) {
    // Arbitrary bytes behind an Ethernet header (IPv4, ARP or another type),
    // checksums as the NIC says (bit 7: verified) or as they are.
    const uint8_t nsel = in.u8();
    const uint32_t n = in.u8() % 128u;
    if (nsel & 0x80) m->ol_flags = RTE_MBUF_F_RX_IP_CKSUM_GOOD | RTE_MBUF_F_RX_L4_CKSUM_GOOD;
    auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, static_cast<uint16_t>(14 + n)));
    auto* eth = reinterpret_cast<rte_ether_hdr*>(p);
    std::memcpy(eth->dst_addr.addr_bytes, c.state.path.local_mac.data(), 6);
    std::memcpy(eth->src_addr.addr_bytes, c.state.path.next_hop_mac.data(), 6);
    const uint16_t types[4] = {RTE_ETHER_TYPE_IPV4, RTE_ETHER_TYPE_ARP, RTE_ETHER_TYPE_IPV4, RTE_ETHER_TYPE_VLAN};
    eth->ether_type = rte_cpu_to_be_16(types[nsel & 3]);
    for (uint32_t i = 0; i < n; ++i) p[14 + i] = in.u8();
    net::Classified k = net::classify_frame(m);
    // The worker's address check (lib/dataplane/worker.cpp): IPv4 for our address only.
    if ((k.kind == net::FrameKind::tcp || k.kind == net::FrameKind::icmp) &&
        rte_be_to_cpu_32(rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len)->dst_addr) !=
            c.state.constant.local_ip)
      k.kind = net::FrameKind::drop;
    if (k.kind == net::FrameKind::arp) {
      // The slow path answers requests for our address only.
      const auto* arp = rte_pktmbuf_mtod_offset(m, const rte_arp_hdr*, m->l2_len);
      if (arp->arp_opcode != RTE_BE16(RTE_ARP_OP_REQUEST) ||
          rte_be_to_cpu_32(arp->arp_data.arp_tip) != c.state.constant.local_ip)
        k.kind = net::FrameKind::drop;
    }
    if (k.kind == net::FrameKind::arp || k.kind == net::FrameKind::icmp) {
      // The slow path answers in place; the answer must classify again.
      rte_ether_addr mac;
      std::memcpy(mac.addr_bytes, c.state.path.local_mac.data(), 6);
      if (k.kind == net::FrameKind::arp) net::arp_reply_in_place(m, mac, net::Ipv4Addr{c.state.constant.local_ip});
      else net::icmp_echo_reply_in_place(m, 0x8001);
      m->ol_flags = 0;
      const net::Classified again = net::classify_frame(m);
      CHECK(again.kind == k.kind, "the slow path's %s reply does not classify (%s)",
            k.kind == net::FrameKind::arp ? "ARP" : "ICMP",
            again.kind == net::FrameKind::drop ? net::to_string(again.reason) : "another kind");
    }
    if (k.kind != net::FrameKind::tcp) {
      rte_pktmbuf_free(m);
      return;
    }
    // Bytes that are not the peer's stream, for whatever connection it hits.
    if (!carries_stream(m))
      for (Conn& o : t.conns) o.rx_tainted = true;
    t.burst.push_back(m);
    if (t.burst.size() == kMaxBurst) flush_burst(t);
    return;
  }
  const uint8_t flags = in.u8();
  const uint8_t modes = in.u8();
  const uint32_t seq_field = in.u32();
  const uint32_t ack_field = in.u32();
  const uint16_t window = in.u16();
  const uint8_t optsel = in.u8();
  uint32_t payload_len = in.u16();
  const uint8_t mutate = in.u8();

  const auto rel = [](uint32_t base, uint32_t field) { return base + static_cast<uint32_t>(static_cast<int16_t>(field)); };
  uint32_t seq;
  switch (modes & 3) {
    case 0: seq = rel(c.rcv_nxt, seq_field); break;
    case 1: seq = c.peer_next + static_cast<uint32_t>(static_cast<int16_t>(seq_field)); break;
    case 2: seq = c.rcv_nxt + (seq_field & 0xFFFFF) * 8 - 0x400000; break;  // far, either side
    default: seq = seq_field; break;
  }
  uint32_t ack;
  switch ((modes >> 2) & 3) {
    case 0: ack = rel(c.una, ack_field); break;
    case 1: ack = rel(c.max, ack_field); break;
    case 2: ack = rel(c.nxt, ack_field); break;
    default: ack = ack_field; break;
  }
  uint8_t optbuf[40];
  size_t optlen = 0;
  if (optsel & 0x80) {  // raw option bytes
    optlen = in.u8() % 41u;
    for (size_t i = 0; i < optlen; ++i) optbuf[i] = in.u8();
    while (optlen % 4 != 0) optbuf[optlen++] = 0;  // EOL padding
  } else {
    net::TcpOptions o;
    if (optsel & 1) {
      o.has_timestamp = true;
      o.ts_val = c.ts_recent + static_cast<uint32_t>(static_cast<int16_t>(in.u16()));
      o.ts_ecr = in.u8();
    }
    if (optsel & 2) {
      const uint32_t nblocks = 1 + ((optsel >> 2) & 3);
      const uint32_t maxb = o.has_timestamp ? 3 : 4;
      for (uint32_t b = 0; b < nblocks && b < maxb; ++b) {
        const uint32_t left = rel(c.una, in.u16());
        const uint32_t len = in.u16();
        o.sack[b] = {left, left + len};
        o.sack_count = static_cast<uint8_t>(b + 1);
      }
    }
    if (optsel & 0x10) {
      o.has_mss = true;
      o.mss = in.u16();
    }
    if (optsel & 0x20) {
      o.has_wscale = true;
      o.wscale = in.u8();
    }
    if (optsel & 0x40) o.sack_permitted = true;
    uint8_t tmp[net::kMaxTcpOptionBytes + 16];
    optlen = net::write_tcp_options(tmp, o);
    if (optlen > 40) optlen = 0;  // did not fit: none
    std::memcpy(optbuf, tmp, optlen);
  }
  if (payload_len & 0x8000) payload_len = payload_len & 0x7FF;  // short more often
  if (payload_len > kMaxPayload) payload_len = payload_len % (kMaxPayload + 1);
  const bool split = (mutate & 0x10) && payload_len != 0;
  const uint32_t pad = (mutate & 0x20) ? (mutate & 7) + 1 : 0;
  const uint32_t l4 = sizeof(rte_tcp_hdr) + static_cast<uint32_t>(optlen);
  const uint32_t hdrs = sizeof(rte_ether_hdr) + sizeof(rte_ipv4_hdr) + l4;
  auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, static_cast<uint16_t>(hdrs + (split ? 0 : payload_len))));
  CHECK(p != nullptr, "frame does not fit");
  std::memset(p, 0, hdrs);
  auto* eth = reinterpret_cast<rte_ether_hdr*>(p);
  std::memcpy(eth->dst_addr.addr_bytes, c.state.path.local_mac.data(), 6);
  std::memcpy(eth->src_addr.addr_bytes, c.state.path.next_hop_mac.data(), 6);
  eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
  auto* ip = reinterpret_cast<rte_ipv4_hdr*>(eth + 1);
  ip->version_ihl = RTE_IPV4_VHL_DEF;
  ip->total_length = rte_cpu_to_be_16(static_cast<uint16_t>(sizeof(rte_ipv4_hdr) + l4 + payload_len));
  ip->time_to_live = 64;
  ip->next_proto_id = IPPROTO_TCP;
  ip->src_addr = rte_cpu_to_be_32(c.state.constant.remote_ip);
  ip->dst_addr = rte_cpu_to_be_32(c.state.constant.local_ip);
  auto* th = reinterpret_cast<rte_tcp_hdr*>(ip + 1);
  th->src_port = rte_cpu_to_be_16(c.state.constant.remote_port);
  th->dst_port = rte_cpu_to_be_16(c.state.constant.local_port);
  if (sel & 4) th->dst_port = rte_cpu_to_be_16(static_cast<uint16_t>(c.state.constant.local_port + 100));  // no one's
  th->sent_seq = rte_cpu_to_be_32(seq);
  th->recv_ack = rte_cpu_to_be_32(ack);
  th->data_off = static_cast<uint8_t>((l4 / 4) << 4);
  th->tcp_flags = flags;
  th->rx_win = rte_cpu_to_be_16(window);
  std::memcpy(th + 1, optbuf, optlen);
  uint8_t* pl = p + hdrs;
  rte_mbuf* tail = nullptr;
  if (split) {
    tail = rte_pktmbuf_alloc(g_frames);
    if (tail == nullptr) violation("frame pool empty: a frame leaked");
    pl = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(tail, static_cast<uint16_t>(payload_len)));
  }
  for (uint32_t i = 0; i < payload_len; ++i) pl[i] = peer_byte(seq + i);
  if (tail != nullptr) CHECK(rte_pktmbuf_chain(m, tail) == 0, "cannot chain");
  if (pad != 0) {
    rte_mbuf* last = rte_pktmbuf_lastseg(m);
    char* q = rte_pktmbuf_append(m, static_cast<uint16_t>(pad));
    if (q != nullptr) std::memset(q, 0xEE, pad);
    (void)last;
  }
  m->l2_len = sizeof(rte_ether_hdr);
  m->l3_len = sizeof(rte_ipv4_hdr);
  m->l4_len = static_cast<uint16_t>(l4);
  net::finalize_tx_checksums(m, net::TxChecksumCaps{});
  m->ol_flags = 0;
  m->l2_len = m->l3_len = m->l4_len = 0;  // classification's job
  switch (mutate & 7) {
    case 6: th->cksum = static_cast<uint16_t>(th->cksum ^ 0x0101); break;          // bad TCP checksum
    case 7: ip->hdr_checksum = static_cast<uint16_t>(ip->hdr_checksum ^ 0x4000); break;  // bad IP checksum
    case 5: m->ol_flags = RTE_MBUF_F_RX_IP_CKSUM_GOOD | RTE_MBUF_F_RX_L4_CKSUM_GOOD; break;  // NIC-verified
    default: break;
  }
  if (mutate & 0x40) {
    // Truncated: cut the frame (the IP total length still claims it all).
    const uint32_t keep = in.u8() % (hdrs + 1);
    if (keep < rte_pktmbuf_data_len(m)) {
      if (m->next != nullptr) {
        rte_pktmbuf_free(m->next);
        m->next = nullptr;
        m->nb_segs = 1;
      }
      m->data_len = static_cast<uint16_t>(keep);
      m->pkt_len = keep;
    }
  }
  if (mutate & 0x80) {
    // A stray field: the IP total length or the data offset off by a little.
    const uint8_t v = in.u8();
    if (v & 1) th->data_off = static_cast<uint8_t>(th->data_off + ((v >> 1) << 4));
    else ip->total_length = rte_cpu_to_be_16(static_cast<uint16_t>(rte_be_to_cpu_16(ip->total_length) + (v >> 1) - 64));
  }
  // The classification a worker does; what fails it never reaches the engine.
  const net::Classified k = net::classify_frame(m);
  if (k.kind != net::FrameKind::tcp) {
    rte_pktmbuf_free(m);
    return;
  }
  if (!(sel & 4) && !carries_stream(m)) {
    // A stray header field got past a "verified" checksum: the payload the
    // engine sees is not the peer's stream at its sequence number.
    c.rx_tainted = true;
  }
  TRACE("    in conn %d seq %u ack %u flags %02x win %u len %u (rcv_nxt %u una %u max %u)\n", c.index, seq, ack,
        flags, window, payload_len, c.rcv_nxt, c.una, c.max);
  if (!(sel & 4) && (payload_len != 0 || (flags & RTE_TCP_FIN_FLAG))) c.peer_next = seq + payload_len + ((flags & RTE_TCP_FIN_FLAG) ? 1 : 0);
  t.burst.push_back(m);
  if (!(sel & 0x80) || t.burst.size() == kMaxBurst) flush_burst(t);  // bit 7: keep for a burst
}

void op_send(Target& t, Reader& in) {
  const uint8_t sel = in.u8();
  const uint16_t len = in.u16();
  Conn& c = t.conns[sel & 3];
  const uint32_t nbs = 1 + ((sel >> 2) & 3);
  const uint32_t chain = 1 + ((sel >> 4) & 1);
  if (chain == 1) {
    post_send(t, c, (sel & 0x80) ? len : len % 8192u, nbs);
    return;
  }
  // A chain of two requests in one call (C-5: FIFO within a chain).
  Req* a = t.new_req();
  Req* b = t.new_req();
  if (a == nullptr || b == nullptr) return;
  t.refresh(c);
  const uint32_t la = len % 5000u, lb = (len >> 3) % 3000u;
  fill_req(*a, Kind::send, c, la, nbs, c.queued_end);
  fill_req(*b, Kind::send, c, lb, 1, c.queued_end + la);
  a->nbl.next = &b->nbl;
  for (Req* r : {a, b}) {
    r->handle = c.h.value;
    r->state = ReqState::pending;
    r->in_callback = true;
  }
  a->order = c.next_send_post;
  b->order = c.next_send_post + 1;
  const Status st = t.engine->send(c.h, &a->nbl);
  if (st != Status::pending) {
    a->state = b->state = ReqState::idle;
    return;
  }
  for (Req* r : {a, b})
    if (r->state == ReqState::pending) {
      r->in_callback = false;
      ++c.next_send_post;
    }
}

void op_receive(Target& t, Reader& in) {
  const uint8_t sel = in.u8();
  const uint16_t len = in.u16();
  Conn& c = t.conns[sel & 3];
  Req* r = t.new_req();
  if (r == nullptr) return;
  fill_req(*r, Kind::receive, c, (sel & 0x80) ? len : len % 4096u, 1 + ((sel >> 2) & 3), 0);
  if (sel & 0x10) r->nbl.flags = kReceiveNoPush;
  r->handle = c.h.value;
  r->state = ReqState::pending;
  r->order = c.next_recv_post++;
  const Status st = t.engine->receive(c.h, &r->nbl);
  if (st != Status::pending) {
    CHECK(r->state == ReqState::pending, "a receive failed at once and was completed too");
    r->state = ReqState::idle;  // still the host's
    --c.next_recv_post;
  }
}

void op_disconnect(Target& t, Reader& in, bool abortive) {
  const uint8_t sel = in.u8();
  const uint16_t len = abortive ? 0 : in.u16();
  Conn& c = t.conns[sel & 3];
  Req* r = t.new_req();
  if (r == nullptr) return;
  t.refresh(c);
  fill_req(*r, Kind::disconnect, c, len % 3000u, 1 + ((sel >> 2) & 1), c.queued_end);
  r->handle = c.h.value;
  r->state = ReqState::pending;
  r->abortive = abortive;
  t.nic.rst_allowed = abortive;
  const bool nic_idle = t.nic.held.empty();  // no frame references send memory
  const Status st = t.engine->disconnect(c.h, &r->nbl, abortive ? DisconnectKind::abortive : DisconnectKind::graceful);
  t.nic.rst_allowed = false;
  if (st != Status::pending) {
    CHECK(r->state == ReqState::pending, "a disconnect failed at once and was completed too");
    r->state = ReqState::idle;
    return;
  }
  // C-13 with DESIGN.md buffers: at once unless a frame at the NIC still
  // references send memory; then once it is released (the final checks).
  if (abortive && nic_idle)
    CHECK(r->state == ReqState::done, "C-13: an abortive disconnect did not complete at once with the NIC idle");
}

void op_terminate(Target& t, Conn& c) {
  if (c.h.value == 0) return;
  const bool was = c.terminating;
  c.terminating = true;
  const Status st = t.engine->terminate(c.h);
  if (st != Status::pending) {
    CHECK(was, "terminate of a live connection refused with %s", to_string(st));
    return;
  }
  CHECK(!was || !c.live, "a second terminate of conn %d accepted", c.index);
}

void op_reoffload(Target& t, Conn& c, uint8_t sel) {
  if (c.h.value != 0 || !c.have_returned || c.offload_pending) return;
  OffloadState s = c.state;
  s.delegated = c.returned;
  c.have_returned = false;
  // A graceful disconnect the terminate cut short: its data goes on as a send
  // before the FIN the state carries.
  const TcpState st = s.delegated.state;
  const bool our_fin = st == TcpState::fin_wait_1 || st == TcpState::fin_wait_2 || st == TcpState::closing ||
                       st == TcpState::last_ack;
  if (our_fin && c.upload_disc != nullptr && (sel & 0x20) == 0) {
    NetBufferList** tail = &s.delegated.send_data;
    while (*tail != nullptr) tail = &(*tail)->next;
    *tail = &c.upload_disc->nbl;
    c.upload_disc->nbl.next = nullptr;
  }
  if (sel & 0x10) s.cached.keepalive = !s.cached.keepalive;
  // The host hands the stream on from what it has delivered; the new handle starts clean.
  c.rx_start = s.delegated.rcv_nxt - static_cast<uint32_t>(s.delegated.receive_data.size());
  // (with a FIN already in rcv_nxt the data ends one earlier)
  if (s.delegated.state == TcpState::close_wait || s.delegated.state == TcpState::closing ||
      s.delegated.state == TcpState::last_ack || s.delegated.state == TcpState::time_wait)
    c.rx_start -= 1;
  c.delivered = 0;
  offload(t, c, s);
}

void op_advance(Target& t, Reader& in) {
  const uint8_t mode = in.u8();
  const uint16_t v = in.u16();
  uint64_t total_us;
  switch (mode & 3) {
    case 0: total_us = v; break;                          // microseconds
    case 1: total_us = uint64_t{v} * 1000; break;          // milliseconds
    case 2: total_us = uint64_t{v} * 16'000; break;        // up to ~17 minutes
    default: total_us = static_cast<uint64_t>(v % 16) * 1000 * 60; break;  // whole minutes (TIME_WAIT, keepalive)
  }
  // Polled in steps, as a worker loop would, at most 64 of them.
  const uint32_t steps = 1 + ((mode >> 2) & 63);
  const uint64_t step = total_us / steps;
  for (uint32_t i = 0; i < steps; ++i) {
    t.now_us += i + 1 == steps ? total_us - step * (steps - 1) : step;
    poll(t);
  }
}

void run_op(Target& t, Reader& in) {
  const uint8_t op = in.u8();
  if (g_trace) {
    static const char* const names[16] = {"frame", "frame", "frame", "frame", "frame", "raw frame", "send",
                                          "receive", "disconnect", "abort", "terminate", "advance", "nic",
                                          "accept", "offload again", "cached"};
    const tcp::Tcb* tcb = t.conns[0].h.value != 0 ? t.engine->find(t.conns[0].h) : nullptr;
    TRACE("t=%llu us: %s (conn 0 %s)\n", static_cast<unsigned long long>(t.now_us), names[op & 15],
          tcb != nullptr ? to_string(tcb->state) : "-");
  }
  // The burst goes in before anything that is not a frame.
  if ((op & 15) > 5) flush_burst(t);
  switch (op & 15) {
    case 0: case 1: case 2: case 3: case 4:
      op_frame(t, in, false);  // sel flags modes seq32 ack32 win16 optsel len16 mutate [opts] [trunc] [stray]
      break;
    case 5: op_frame(t, in, true); break;          // sel nsel n bytes[n]
    case 6: op_send(t, in); break;                 // sel len16
    case 7: op_receive(t, in); break;              // sel len16
    case 8: op_disconnect(t, in, false); break;    // sel len16
    case 9: op_disconnect(t, in, true); break;     // sel
    case 10: op_terminate(t, t.conns[in.u8() & 3]); break;  // sel
    case 11: op_advance(t, in); break;             // mode v16
    case 12: {                                     // NIC: bit0 hold, bit1 release all
      const uint8_t v = in.u8();
      if (v & 2) t.nic.release_all();
      t.nic.hold = v & 1;
      poll(t);
      break;
    }
    case 13: t.host.accept_mode = in.u8(); break;  // indications: 0 all, 1 none, 2 half, 3 one byte
    case 14: {                                     // sel: offload again what a terminate returned
      const uint8_t sel = in.u8();
      op_reoffload(t, t.conns[sel & 3], sel);
      break;
    }
    default: {                                     // sel v: update cached state / query
      const uint8_t sel = in.u8();
      const uint8_t v = in.u8();
      Conn& c = t.conns[sel & 3];
      if (c.h.value == 0) break;
      CachedState cs = c.state.cached;
      cs.nagle = v & 1;
      cs.keepalive = v & 2;
      cs.keepalive_timeout_ms = 100u * (v >> 4) + 1;
      cs.congestion = (v & 4) ? CongestionAlgorithm::cubic : CongestionAlgorithm::newreno;
      cs.max_retransmissions = static_cast<uint8_t>((v >> 3) & 7);
      if (sel & 0x10) cs.initial_rcv_wnd = 1u << (8 + (v & 15));
      t.engine->update_cached(c.h, cs);
      DelegatedState d;
      t.engine->query_delegated(c.h, &d);
      break;
    }
  }
}

void teardown(Target& t) {
  flush_burst(t);
  t.nic.hold = false;
  t.nic.release_all();
  poll(t);
  for (Conn& c : t.conns)
    if (c.h.value != 0) op_terminate(t, c);
  for (int i = 0; i < 4; ++i) {
    t.nic.release_all();
    poll(t);
  }
  for (Conn& c : t.conns) {
    CHECK(c.h.value == 0, "conn %d: terminate did not complete", c.index);
    CHECK(!c.offload_pending, "conn %d: offload never completed", c.index);
  }
  for (size_t i = 0; i < t.used; ++i) {
    const Req& r = *t.reqs[i];
    CHECK(r.state != ReqState::pending, "a %s request of conn %d never completed",
          r.kind == Kind::send ? "send" : r.kind == Kind::receive ? "receive" : "disconnect", r.conn ? r.conn->index : -1);
  }
  CHECK(t.engine->connections() == 0, "%u connections left after every terminate", t.engine->connections());
  // Nothing of the connections holds an mbuf now (TIME_WAIT entries hold none).
  CHECK(rte_mempool_in_use_count(g_headers) == 0, "%u header mbufs leaked", rte_mempool_in_use_count(g_headers));
  CHECK(rte_mempool_in_use_count(g_attach) == 0, "%u payload mbufs leaked", rte_mempool_in_use_count(g_attach));
  CHECK(rte_mempool_in_use_count(g_frames) == 0, "%u received mbufs leaked", rte_mempool_in_use_count(g_frames));
  if (g_trace) {
    const tcp::EngineStats& st = t.engine->stats();
#define CHIMNEY_X(name) \
  if (st.name != 0) std::fprintf(stderr, "  %s %llu\n", #name, static_cast<unsigned long long>(st.name));
    CHIMNEY_ENGINE_COUNTERS(CHIMNEY_X)
#undef CHIMNEY_X
  }
  t.engine.reset();
  CHECK(rte_mempool_in_use_count(g_headers) == 0 && rte_mempool_in_use_count(g_attach) == 0 &&
            rte_mempool_in_use_count(g_frames) == 0,
        "the engine's destructor left mbufs in use");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  // One EAL for the process: no hugepages, no devices, no shared config (so
  // parallel fuzzer processes do not meet), quiet.
  std::vector<std::string> eal = {(*argv)[0], "--no-huge", "-m", "256", "--no-pci", "--no-shconf", "-l", "0",
                                  "--log-level=*:error", "--no-telemetry"};
  std::vector<char*> eal_argv;
  for (auto& s : eal) eal_argv.push_back(s.data());
  if (rte_eal_init(static_cast<int>(eal_argv.size()), eal_argv.data()) < 0) {
    std::fprintf(stderr, "fuzz_packet: rte_eal_init failed\n");
    std::exit(1);
  }
  g_frames = rte_pktmbuf_pool_create("fz_frames", 1023, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  g_headers = rte_pktmbuf_pool_create("fz_headers", 4095, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  g_attach = rte_pktmbuf_pool_create("fz_attach", 4095, 0, 0, 0, 0);
  if (g_frames == nullptr || g_headers == nullptr || g_attach == nullptr) {
    std::fprintf(stderr, "fuzz_packet: cannot create mempools\n");
    std::exit(1);
  }
  static Target target;
  g_t = &target;
  g_trace = std::getenv("CHIMNEY_FUZZ_TRACE") != nullptr;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Target& t = *g_t;
  Reader in(data, size);
  const uint8_t variant = in.u8();
  tcp::EngineConfig cfg;
  cfg.name = "fz";
  cfg.max_connections = 8;
  cfg.time_wait_entries = 8;
  cfg.ooo_segments = 48;  // small budgets, so that running out is exercised
  cfg.ooo_segments_per_connection = 16;
  cfg.msl_ms = 5000;
  cfg.challenge_acks_per_second = 20;
  cfg.header_pool = g_headers;
  cfg.attach_pool = g_attach;
  cfg.copy_payload = (variant & 4) != 0;  // payload copied (virtio-user) instead of attached
  t.used = 0;
  t.now_us = kStartUs;
  t.nic.hold = false;
  t.nic.rst_allowed = false;
  t.host.accept_mode = 0;
  t.burst.clear();
  t.burst.reserve(kMaxBurst);
  t.dead_handles.clear();
  t.engine = std::make_unique<tcp::Engine>(cfg, t.host, t.nic);
  t.engine->poll(t.now_us);
  setup(t, variant);
  for (int ops = 0; ops < 4096 && !in.done(); ++ops) run_op(t, in);
  teardown(t);
  return 0;
}
