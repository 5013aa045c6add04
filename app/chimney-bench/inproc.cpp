// In-process engine figures: two tcp::Engine instances back to back in one
// thread (as tests/unit/tcp/test_wire.cpp, without impairment). Engine A is
// chimney's side, engine B plays the peer. A frame one engine transmits is
// copied once into a fresh mbuf of the receive pool (what a NIC's DMA would
// do; the sender's mbuf is freed, releasing its zero-copy reference),
// classified as chimneyd's worker does (checksums in software, as on memif)
// and handed to the other engine in bursts of up to 32.
//
// Both engines and the wire run on one core, so every rate here is "per
// core for both ends of the connection" -- the Linux reference pins its
// client and server to the same single core to match.
#include <rte_cycles.h>
#include <rte_ip.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_tcp.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench.hpp"
#include "net/packet.hpp"
#include "tcp/engine.hpp"
#include "tcp/engine_internal.hpp"

namespace chimney::bench {

namespace {

using tcp::Engine;

// ---------------------------------------------------------------- clock ----
uint64_t g_hz = 0;
uint64_t g_cycles_per_us = 1;
uint64_t g_tsc0 = 0;
// CPU time of this thread: below the window's wall time when the shared
// machine preempted the bench (its figures are then low).
double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
uint64_t now_us() { return (rte_rdtsc() - g_tsc0) / g_cycles_per_us + 1'000'000; }
double tsc_seconds(uint64_t cycles) { return static_cast<double>(cycles) / static_cast<double>(g_hz); }

// --------------------------------------------------------------- memory ----
rte_mempool* g_rx_pool = nullptr;     // the "NIC": received frames
rte_mempool* g_hdr_pool[2] = {};      // per engine: header mbufs
rte_mempool* g_att_pool[2] = {};      // per engine: zero-copy payload mbufs

void make_pools(bool smoke) {
  if (g_rx_pool != nullptr) return;
  const unsigned n = smoke ? 65535 : 262143;
  g_rx_pool = rte_pktmbuf_pool_create("bench_rx", n, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY);
  for (int i = 0; i < 2; ++i) {
    const std::string h = "bench_hdr" + std::to_string(i), a = "bench_att" + std::to_string(i);
    g_hdr_pool[i] = rte_pktmbuf_pool_create(h.c_str(), n, 256, 0, RTE_PKTMBUF_HEADROOM + 256, SOCKET_ID_ANY);
    g_att_pool[i] = rte_pktmbuf_pool_create(a.c_str(), n, 256, 0, 0, SOCKET_ID_ANY);
  }
  if (g_rx_pool == nullptr || g_hdr_pool[0] == nullptr || g_hdr_pool[1] == nullptr || g_att_pool[0] == nullptr ||
      g_att_pool[1] == nullptr)
    throw std::runtime_error("cannot create the bench's mempools (EAL memory too small?)");
}

uint64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * 4096;
}

uint64_t rte_heap_allocated() {
  uint64_t total = 0;
  for (unsigned s = 0; s < RTE_MAX_NUMA_NODES; ++s) {
    rte_malloc_socket_stats st{};
    if (rte_malloc_get_socket_stats(static_cast<int>(s), &st) == 0) total += st.heap_allocsz_bytes;
  }
  return total;
}

int g_engine_serial = 0;
tcp::EngineConfig engine_config(int side, uint32_t max_connections) {
  tcp::EngineConfig cfg;
  cfg.name = "b" + std::to_string(g_engine_serial++) + (side == 0 ? "a" : "b");
  cfg.socket_id = static_cast<int>(rte_socket_id());
  cfg.max_connections = max_connections;
  cfg.time_wait_entries = tcp::default_time_wait_entries(max_connections);  // chimneyd's default
  cfg.header_pool = g_hdr_pool[side];
  cfg.attach_pool = g_att_pool[side];
  return cfg;
}

// ------------------------------------------------------------ addresses ----
// Connection `t` (a tuple index): A is 198.18.0.2:5000, B is
// 198.19.(t / 50000 + 1 as the low 16 bits):(10000 + t % 50000).
constexpr uint32_t kLocalIp = 0xC6120002;   // 198.18.0.2
constexpr uint16_t kLocalPort = 5000;
constexpr uint32_t kRemoteBase = 0xC6130001;  // 198.19.0.1
constexpr uint32_t kPortsPerIp = 50'000;
constexpr uint16_t kPortBase = 10'000;
constexpr std::array<uint8_t, 6> kMacA{0x02, 0, 0, 0, 0, 0x0a}, kMacB{0x02, 0, 0, 0, 0, 0x0b};

uint32_t remote_ip(uint32_t t) { return kRemoteBase + t / kPortsPerIp; }
uint16_t remote_port(uint32_t t) { return static_cast<uint16_t>(kPortBase + t % kPortsPerIp); }

struct Tune {
  uint32_t rcv_wnd = 64 * 1024;
  bool keepalive = false;
  CongestionAlgorithm cc = CongestionAlgorithm::cubic;
};

// The state of tuple t as side 0 (A) or side 1 (B) holds it; A's ISS 1000,
// B's 900000.
OffloadState state_for(int side, uint32_t t, const Tune& tune) {
  OffloadState s;
  const uint32_t a_iss = 1000 + t, b_iss = 900000 + t;
  const bool a = side == 0;
  s.constant.local_ip = a ? kLocalIp : remote_ip(t);
  s.constant.remote_ip = a ? remote_ip(t) : kLocalIp;
  s.constant.local_port = a ? kLocalPort : remote_port(t);
  s.constant.remote_port = a ? remote_port(t) : kLocalPort;
  s.constant.remote_mss = 1460;
  s.constant.window_scaling = true;
  s.constant.snd_wscale = 7;
  s.constant.rcv_wscale = 7;
  s.constant.timestamps = true;
  s.constant.sack = true;
  s.cached.initial_rcv_wnd = tune.rcv_wnd;
  s.cached.nagle = false;  // as TCP_NODELAY on the Linux side
  s.cached.congestion = tune.cc;
  s.cached.keepalive = tune.keepalive;  // idle connections sit in the timer wheel
  const uint32_t iss = a ? a_iss : b_iss, irs = a ? b_iss : a_iss;
  s.delegated.state = TcpState::established;
  s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = iss;
  s.delegated.snd_wl1 = irs;
  s.delegated.snd_wl2 = iss;
  s.delegated.snd_wnd = tune.rcv_wnd;
  s.delegated.rcv_nxt = irs;
  s.path.local_mac = a ? kMacA : kMacB;
  s.path.next_hop_mac = a ? kMacB : kMacA;
  s.path.path_mtu = 1500;
  return s;
}

// ----------------------------------------------------------------- wire ----
// Engine time: cycles spent inside input() and poll() of each engine.
struct Meter {
  uint64_t cycles[2] = {0, 0};
};

class Link : public tcp::TxSink {
 public:
  explicit Link(int to_side) : to_(to_side) {}
  ~Link() override {
    for (rte_mbuf* m : q_) rte_pktmbuf_free(m);
  }
  void transmit(rte_mbuf** pkts, uint16_t n) override { q_.insert(q_.end(), pkts, pkts + n); }

  // Hands what is queued to `to`. `stamp(batch, n, tsc)` sees each burst just
  // before the engine does.
  template <typename Stamp>
  void deliver(Engine& to, uint64_t now, Meter& meter, Stamp&& stamp) {
    if (q_.empty()) return;
    work_.swap(q_);
    size_t i = 0;
    while (i < work_.size()) {
      rte_mbuf* batch[32];
      uint16_t n = 0;
      while (n < 32 && i < work_.size()) {
        rte_mbuf* src = work_[i++];
        rte_mbuf* c = rte_pktmbuf_copy(src, g_rx_pool, 0, UINT32_MAX);
        rte_pktmbuf_free(src);
        if (c == nullptr) {
          ++copy_failures;
          continue;
        }
        c->ol_flags = 0;
        if (net::classify_frame(c).kind != net::FrameKind::tcp) {
          ++malformed;
          rte_pktmbuf_free(c);
          continue;
        }
        ++frames;
        batch[n++] = c;
      }
      if (n == 0) continue;
      stamp(batch, n, rte_rdtsc());
      rte_mbuf* unmatched_pkts[32];
      const uint64_t t0 = rte_rdtsc();
      const uint16_t u = to.input(batch, n, now, unmatched_pkts);
      meter.cycles[to_] += rte_rdtsc() - t0;
      for (uint16_t k = 0; k < u; ++k) rte_pktmbuf_free(unmatched_pkts[k]);
      unmatched += u;
    }
    work_.clear();
  }
  void deliver(Engine& to, uint64_t now, Meter& meter) {
    deliver(to, now, meter, [](rte_mbuf**, uint16_t, uint64_t) {});
  }
  bool empty() const { return q_.empty(); }

  uint64_t frames = 0, unmatched = 0, copy_failures = 0, malformed = 0;

 private:
  int to_;
  std::vector<rte_mbuf*> q_, work_;
};

void timed_poll(Engine& e, int side, uint64_t now, Meter& m) {
  const uint64_t t0 = rte_rdtsc();
  e.poll(now);
  m.cycles[side] += rte_rdtsc() - t0;
}

// A host that only counts (idle connections).
class CountingHost : public HostCallbacks {
 public:
  uint64_t offloaded = 0, refused = 0, other = 0;
  void offload_complete(ConnectionHandle, void*, Status s) override { ++(s == Status::success ? offloaded : refused); }
  void send_complete(ConnectionHandle, void*, NetBufferList*) override { ++other; }
  void receive_complete(ConnectionHandle, void*, NetBufferList*) override { ++other; }
  IndicateResult receive_indicate(ConnectionHandle, void*, const uint8_t*, uint32_t len, bool) override { return {len}; }
  void disconnect_complete(ConnectionHandle, void*, NetBufferList*) override { ++other; }
  void terminate_complete(ConnectionHandle, void*, Status, DelegatedState&) override { ++other; }
  void event(ConnectionHandle, void*, EventKind k, RetrieveReason, uint32_t) override {
    if (k != EventKind::send_backlog_change) ++other;
  }
};

// Offloads tuples [first, first+n) on `e` as idle connections (keepalive
// armed: each sits in the timer wheel), completing them with polls.
void offload_idle(Engine& e, int side, uint32_t first, uint32_t n) {
  Tune tune;
  tune.keepalive = true;
  ConnectionHandle h;
  for (uint32_t i = 0; i < n; ++i) {
    e.initiate_offload(state_for(side, first + i, tune), nullptr, &h);
    if ((i & 4095) == 4095) e.poll(now_us());
  }
  e.poll(now_us());
}

// ----------------------------------------------------------------- bulk ----
const uint8_t* payload() {
  static std::vector<uint8_t> p = [] {
    std::vector<uint8_t> v(1u << 20);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint8_t>(i * 131 + 7);
    return v;
  }();
  return p.data();
}

class BulkHost : public HostCallbacks {
 public:
  static constexpr uint32_t kRequest = 256 * 1024;
  static constexpr int kOutstanding = 16;
  static constexpr int kReceives = 8;

  Engine* engine = nullptr;
  ConnectionHandle h;
  bool sending = false;
  uint64_t sent_acked = 0, received = 0, errors = 0;

  void start() {
    for (int i = 0; i < kReceives; ++i) post_receive(i);
    pump();
  }
  void pump() {
    for (int i = 0; i < kOutstanding && sending; ++i) {
      Send& s = sends_[i];
      if (s.busy) continue;
      s.busy = true;
      s.nb = NetBuffer{};
      s.nb.data = const_cast<uint8_t*>(payload()) + (i * 4096);
      s.nb.data_length = kRequest;
      s.nbl = NetBufferList{};
      s.nbl.first = &s.nb;
      if (engine->send(h, &s.nbl) != Status::pending) ++errors;
    }
  }
  void offload_complete(ConnectionHandle, void*, Status s) override { errors += s != Status::success; }
  void send_complete(ConnectionHandle, void*, NetBufferList* chain) override {
    for (NetBufferList* n = chain; n != nullptr;) {
      NetBufferList* next = n->next;
      Send* s = reinterpret_cast<Send*>(reinterpret_cast<uint8_t*>(n) - offsetof(Send, nbl));
      if (n->status != Status::success) ++errors;
      sent_acked += n->bytes_transferred;
      s->busy = false;
      n = next;
    }
    pump();
  }
  void receive_complete(ConnectionHandle, void*, NetBufferList* chain) override {
    for (NetBufferList* n = chain; n != nullptr;) {
      NetBufferList* next = n->next;
      Recv* r = reinterpret_cast<Recv*>(reinterpret_cast<uint8_t*>(n) - offsetof(Recv, nbl));
      if (n->status == Status::success) {
        received += n->bytes_transferred;
        post_receive(static_cast<int>(r - recvs_));
      }
      n = next;
    }
  }
  IndicateResult receive_indicate(ConnectionHandle, void*, const uint8_t*, uint32_t len, bool) override {
    received += len;
    return {len};
  }
  void disconnect_complete(ConnectionHandle, void*, NetBufferList*) override {}
  void terminate_complete(ConnectionHandle, void*, Status, DelegatedState&) override {}
  void event(ConnectionHandle, void*, EventKind k, RetrieveReason, uint32_t) override {
    if (k == EventKind::abort || k == EventKind::retrieve) ++errors;
  }

 private:
  struct Send {
    NetBufferList nbl;
    NetBuffer nb;
    bool busy = false;
  };
  struct Recv {
    NetBufferList nbl;
    NetBuffer nb;
    std::vector<uint8_t> buf;
  };
  void post_receive(int i) {
    Recv& r = recvs_[i];
    r.buf.resize(kRequest);
    r.nb = NetBuffer{};
    r.nb.data = r.buf.data();
    r.nb.data_length = kRequest;
    r.nbl = NetBufferList{};
    r.nbl.first = &r.nb;
    engine->receive(h, &r.nbl);
  }
  Send sends_[kOutstanding];
  Recv recvs_[kReceives];
};

struct BulkResult {
  double gbps = 0;           // goodput, both directions summed
  double segments_per_s = 0; // segments received by both engines
  double cycles_per_segment = 0;
  double engine_share = 0;   // engine cycles / wall cycles
  double cpu_share = 0;      // thread CPU time / wall time
  bool ok = false;
};

// One bulk connection (tuple 0) A->B (and B->A when both_ways), with `idle`
// more idle connections open on each engine, on engines sized `table`.
BulkResult run_bulk(const Options& o, bool both_ways, uint32_t idle, uint32_t table) {
  // The hosts outlive the links: frames still queued at the end reference
  // their NetBuffers (the zero-copy reference counts live there).
  BulkHost ha, hb;
  Link ab(1), ba(0);
  Engine a(engine_config(0, table), ha, ab), b(engine_config(1, table), hb, ba);
  ha.engine = &a;
  hb.engine = &b;
  // The idle ones first (their offload completions reach the bulk hosts,
  // which count only failures), then the measured connection.
  {
    Tune t;
    t.keepalive = true;
    ConnectionHandle h;
    for (uint32_t i = 1; i <= idle; ++i) {
      b.initiate_offload(state_for(1, i, t), nullptr, &h);
      a.initiate_offload(state_for(0, i, t), nullptr, &h);
      if ((i & 4095) == 0) {
        a.poll(now_us());
        b.poll(now_us());
      }
    }
  }
  Tune tune;
  tune.rcv_wnd = 4u << 20;
  b.initiate_offload(state_for(1, 0, tune), nullptr, &hb.h);
  a.initiate_offload(state_for(0, 0, tune), nullptr, &ha.h);
  a.poll(now_us());
  b.poll(now_us());
  if (ha.errors + hb.errors != 0 || a.connections() != idle + 1 || b.connections() != idle + 1) return {};
  ha.sending = true;
  hb.sending = both_ways;
  ha.start();
  hb.start();
  Meter meter;
  const uint64_t warm_end = rte_rdtsc() + static_cast<uint64_t>(o.warmup * g_hz);
  const uint64_t span = static_cast<uint64_t>(o.seconds * g_hz);
  uint64_t t_start = 0, t_end = 0;
  uint64_t bytes0 = 0, segs0 = 0, cyc0 = 0;
  double cpu0 = 0, cpu1 = 0;
  for (;;) {
    const uint64_t now = now_us();
    // As chimneyd's worker: what arrived first, then timers and output.
    ab.deliver(b, now, meter);
    ba.deliver(a, now, meter);
    timed_poll(a, 0, now, meter);
    timed_poll(b, 1, now, meter);
    const uint64_t tsc = rte_rdtsc();
    if (t_start == 0 && tsc >= warm_end) {
      t_start = tsc;
      bytes0 = ha.received + hb.received;
      cpu0 = thread_cpu_seconds();
      segs0 = a.stats().segments_in + b.stats().segments_in;
      cyc0 = meter.cycles[0] + meter.cycles[1];
    } else if (t_start != 0 && tsc - t_start >= span) {
      t_end = tsc;
      cpu1 = thread_cpu_seconds();
      break;
    }
    if (ha.errors + hb.errors != 0) break;
  }
  BulkResult r;
  if (t_end == 0) return r;
  const double secs = tsc_seconds(t_end - t_start);
  const uint64_t bytes = ha.received + hb.received - bytes0;
  const uint64_t segs = a.stats().segments_in + b.stats().segments_in - segs0;
  const uint64_t cyc = meter.cycles[0] + meter.cycles[1] - cyc0;
  r.gbps = bytes * 8 / secs / 1e9;
  r.segments_per_s = segs / secs;
  r.cycles_per_segment = segs != 0 ? static_cast<double>(cyc) / static_cast<double>(segs) : 0;
  r.engine_share = static_cast<double>(cyc) / static_cast<double>(t_end - t_start);
  r.cpu_share = (cpu1 - cpu0) / secs;
  r.ok = bytes > 0 && ha.errors + hb.errors == 0 && ab.malformed + ba.malformed + ab.copy_failures + ba.copy_failures == 0;
  if (!r.ok)
    std::fprintf(stderr, "bulk: bytes %llu errors %llu/%llu malformed %llu copy failures %llu\n",
                 (unsigned long long)bytes, (unsigned long long)ha.errors, (unsigned long long)hb.errors,
                 (unsigned long long)(ab.malformed + ba.malformed),
                 (unsigned long long)(ab.copy_failures + ba.copy_failures));
  return r;
}

// -------------------------------------------------- request / response ----
// One host per engine for request/response and churn. Reactions are queued
// and run after the engine call returns (the host is another party).
enum class Act : uint8_t { offloaded, message, repost, send_next, peer_fin, disc_done, terminated };

struct Conn {
  static constexpr int kSlots = 2;
  ConnectionHandle h{};
  uint32_t tuple = 0;
  NetBufferList snbl[kSlots];
  NetBuffer snb[kSlots];
  bool sbusy[kSlots] = {false, false};
  uint32_t backlog = 0;  // messages waiting for a free send slot
  NetBufferList rnbl;
  NetBuffer rnb;
  uint8_t* rbuf = nullptr;
  bool receive_posted = false;
  NetBufferList dnbl;
  NetBuffer dnb;
  uint32_t rx_accum = 0;
  bool live = false, peer_fin = false, disc_done = false, terminating = false;
  bool fin_armed = false;
  uint32_t fin_seq = 0;
  uint64_t fin_ack_tsc = 0;
};

class RpcHost : public HostCallbacks {
 public:
  RpcHost(bool client, uint32_t msg) : client_(client), msg_(msg) {}
  Engine* engine = nullptr;
  std::vector<std::pair<Conn*, Act>> acts;
  uint64_t messages = 0, errors = 0;
  std::vector<double>* latency_us = nullptr;  // disconnect completions (client side)
  std::string first_error;

  uint32_t msg() const { return msg_; }
  bool client() const { return client_; }
  void error(const std::string& what) {
    ++errors;
    if (first_error.empty()) first_error = what;
  }

  void offload_complete(ConnectionHandle, void* ctx, Status s) override {
    if (s != Status::success) return error(std::string("offload ") + to_string(s));
    acts.emplace_back(static_cast<Conn*>(ctx), Act::offloaded);
  }
  void send_complete(ConnectionHandle, void* ctx, NetBufferList* chain) override {
    Conn* c = static_cast<Conn*>(ctx);
    for (NetBufferList* n = chain; n != nullptr; n = n->next) {
      if (n->status != Status::success) error(std::string("send ") + to_string(n->status));
      c->sbusy[n - c->snbl] = false;
    }
    if (c->backlog != 0) acts.emplace_back(c, Act::send_next);
  }
  void receive_complete(ConnectionHandle, void* ctx, NetBufferList* chain) override {
    Conn* c = static_cast<Conn*>(ctx);
    c->receive_posted = false;
    for (NetBufferList* n = chain; n != nullptr; n = n->next) {
      if (n->status == Status::success) {
        got(c, static_cast<uint32_t>(n->bytes_transferred));
      } else if (n->status != Status::invalid_state) {
        error(std::string("receive ") + to_string(n->status));
      }
      if (n->status == Status::success) acts.emplace_back(c, Act::repost);
    }
  }
  IndicateResult receive_indicate(ConnectionHandle, void* ctx, const uint8_t*, uint32_t len, bool) override {
    got(static_cast<Conn*>(ctx), len);
    return {len};
  }
  void disconnect_complete(ConnectionHandle, void* ctx, NetBufferList* nbl) override {
    Conn* c = static_cast<Conn*>(ctx);
    if (nbl->status != Status::success) return error(std::string("disconnect ") + to_string(nbl->status));
    if (latency_us != nullptr && c->fin_ack_tsc != 0)
      latency_us->push_back(static_cast<double>(rte_rdtsc() - c->fin_ack_tsc) * 1e6 / static_cast<double>(g_hz));
    acts.emplace_back(c, Act::disc_done);
  }
  void terminate_complete(ConnectionHandle, void* ctx, Status s, DelegatedState&) override {
    if (s != Status::success) error(std::string("terminate ") + to_string(s));
    acts.emplace_back(static_cast<Conn*>(ctx), Act::terminated);
  }
  void event(ConnectionHandle, void* ctx, EventKind k, RetrieveReason r, uint32_t) override {
    if (k == EventKind::disconnect) acts.emplace_back(static_cast<Conn*>(ctx), Act::peer_fin);
    else if (k == EventKind::abort) error("abort");
    else if (k == EventKind::retrieve) error(std::string("retrieve ") + to_string(r));
  }

  // Host requests.
  void post_receive(Conn& c) {
    if (c.receive_posted || c.peer_fin) return;
    c.rnb = NetBuffer{};
    c.rnb.data = c.rbuf;
    c.rnb.data_length = msg_;
    c.rnbl = NetBufferList{};
    c.rnbl.first = &c.rnb;
    c.receive_posted = true;
    if (engine->receive(c.h, &c.rnbl) != Status::pending) error("receive refused");
  }
  void send_message(Conn& c) {
    ++c.backlog;
    flush_backlog(c);
  }
  void flush_backlog(Conn& c) {
    for (int k = 0; k < Conn::kSlots && c.backlog != 0; ++k) {
      if (c.sbusy[k]) continue;
      c.sbusy[k] = true;
      --c.backlog;
      c.snb[k] = NetBuffer{};
      c.snb[k].data = const_cast<uint8_t*>(payload());
      c.snb[k].data_length = msg_;
      c.snbl[k] = NetBufferList{};
      c.snbl[k].first = &c.snb[k];
      if (engine->send(c.h, &c.snbl[k]) != Status::pending) error("send refused");
    }
  }
  void disconnect(Conn& c) {
    c.dnb = NetBuffer{};
    c.dnbl = NetBufferList{};
    c.dnbl.first = &c.dnb;
    if (engine->disconnect(c.h, &c.dnbl, DisconnectKind::graceful) != Status::pending) error("disconnect refused");
    if (const tcp::Tcb* t = engine->find(c.h)) {
      c.fin_seq = t->snd.queued_end - 1;
      c.fin_armed = true;
    }
  }

 private:
  void got(Conn* c, uint32_t bytes) {
    c->rx_accum += bytes;
    while (c->rx_accum >= msg_) {
      c->rx_accum -= msg_;
      ++messages;
      acts.emplace_back(c, Act::message);
    }
  }
  bool client_;
  uint32_t msg_;
};

struct RpcResult {
  double segments_per_s = 0;  // segments received by both engines
  double per_s = 0;  // transactions (rr) or connection cycles (churn) per second
  double engine_share = 0;
  double cpu_share = 0;
  bool ok = false;
  std::string why;
  std::string events;  // engine counters of note (A | B)
};

// Request/response (churn=false) over `conns` connections, or churn with
// `conns` cycling in parallel.
class RpcRun {
 public:
  RpcRun(const Options& o, uint32_t conns, uint32_t msg, bool churn, uint32_t table, std::vector<double>* latency)
      : o_(o), n_(conns), churn_(churn), ca_(conns), cb_(conns), bufs_(static_cast<size_t>(conns) * 2 * msg),
        by_tuple_(churn ? kTuples : 0, UINT32_MAX), ab_(1), ba_(0), ha_(true, msg), hb_(false, msg),
        a_(engine_config(0, table), ha_, ab_), b_(engine_config(1, table), hb_, ba_) {
    ha_.engine = &a_;
    hb_.engine = &b_;
    ha_.latency_us = latency;
    for (uint32_t i = 0; i < n_; ++i) {
      ca_[i].rbuf = bufs_.data() + static_cast<size_t>(i) * 2 * msg;
      cb_[i].rbuf = ca_[i].rbuf + msg;
    }
  }

  RpcResult run() {
    for (uint32_t i = 0; i < n_; ++i) open(i);
    Meter meter;
    const uint64_t warm_end = rte_rdtsc() + static_cast<uint64_t>(o_.warmup * g_hz);
    const uint64_t span = static_cast<uint64_t>(o_.seconds * g_hz);
    const uint64_t give_up = rte_rdtsc() + static_cast<uint64_t>((o_.warmup + o_.seconds + 30) * g_hz);
    uint64_t t_start = 0, t_end = 0, count0 = 0, cyc0 = 0, segs0 = 0;
    double cpu0 = 0, cpu1 = 0;
    size_t lat0 = 0;
    RpcResult r;
    auto stamp = [this](rte_mbuf** batch, uint16_t n, uint64_t tsc) {
      if (!churn_) return;
      for (uint16_t k = 0; k < n; ++k) {
        const rte_mbuf* m = batch[k];
        const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
        const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
        if (!(th->tcp_flags & RTE_TCP_ACK_FLAG)) continue;
        const uint32_t t = (rte_be_to_cpu_32(ip->src_addr) - kRemoteBase) * kPortsPerIp +
                           (rte_be_to_cpu_16(th->src_port) - kPortBase);
        if (t >= kTuples || by_tuple_[t] == UINT32_MAX) continue;
        Conn& c = ca_[by_tuple_[t]];
        if (c.tuple != t || !c.fin_armed || c.fin_ack_tsc != 0) continue;
        if (tcp::seq_geq(rte_be_to_cpu_32(th->recv_ack), c.fin_seq + 1)) c.fin_ack_tsc = tsc;
      }
    };
    for (;;) {
      const uint64_t now = now_us();
      // As chimneyd's worker: what arrived first, then timers and output.
      ab_.deliver(b_, now, meter);
      ba_.deliver(a_, now, meter, stamp);
      react();
      timed_poll(a_, 0, now, meter);
      timed_poll(b_, 1, now, meter);
      react();
      const uint64_t tsc = rte_rdtsc();
      if (t_start == 0 && tsc >= warm_end) {
        t_start = tsc;
        count0 = count();
        cpu0 = thread_cpu_seconds();
        cyc0 = meter.cycles[0] + meter.cycles[1];
        segs0 = a_.stats().segments_in + b_.stats().segments_in;
        lat0 = ha_.latency_us != nullptr ? ha_.latency_us->size() : 0;
      } else if (t_start != 0 && tsc - t_start >= span) {
        t_end = tsc;
        cpu1 = thread_cpu_seconds();
        break;
      }
      if (ha_.errors + hb_.errors != 0) break;
      if (tsc > give_up) break;
    }
    stopping_ = true;
    if (ha_.errors + hb_.errors != 0) {
      r.why = !ha_.first_error.empty() ? "A: " + ha_.first_error : "B: " + hb_.first_error;
      return r;
    }
    if (t_end == 0) {
      r.why = "no measured window";
      return r;
    }
    const double secs = tsc_seconds(t_end - t_start);
    const uint64_t done = count() - count0;
    r.per_s = done / secs;
    r.cpu_share = (cpu1 - cpu0) / secs;
    r.segments_per_s = (a_.stats().segments_in + b_.stats().segments_in - segs0) / secs;
    r.engine_share = static_cast<double>(meter.cycles[0] + meter.cycles[1] - cyc0) / static_cast<double>(t_end - t_start);
    r.ok = done > 0 && ab_.malformed + ba_.malformed + ab_.copy_failures + ba_.copy_failures == 0;
    if (!r.ok)
      r.why = "done " + std::to_string(done) + " malformed " + std::to_string(ab_.malformed + ba_.malformed) +
              " copy failures " + std::to_string(ab_.copy_failures + ba_.copy_failures);
    // What the engines did besides the workload (a stall shows here).
    r.events = "cpu share " + std::to_string(r.cpu_share).substr(0, 4) + "; ";
    for (const Engine* e : {&a_, &b_}) {
      const tcp::EngineStats& st = e->stats();
      r.events += "retransmits " + std::to_string(st.retransmits) + " rto " + std::to_string(st.rto_expirations) +
                  " loss_probes " + std::to_string(st.loss_probes) + " no_mbuf " + std::to_string(st.no_mbuf) +
                  (e == &a_ ? " | " : "");
    }
    if (churn_ && ha_.latency_us != nullptr && lat0 != 0) {
      // keep only the window's samples
      ha_.latency_us->erase(ha_.latency_us->begin(), ha_.latency_us->begin() + static_cast<long>(lat0));
    }
    return r;
  }

 private:
  static constexpr uint32_t kTuples = 1'000'000;

  uint64_t count() const { return churn_ ? cycles_ : ha_.messages; }

  void open(uint32_t i) {
    Conn& a = ca_[i];
    Conn& b = cb_[i];
    const uint32_t t = churn_ ? next_tuple_++ % kTuples : i;
    uint8_t* ra = a.rbuf;
    uint8_t* rb = b.rbuf;
    a.~Conn();
    new (&a) Conn{};
    b.~Conn();
    new (&b) Conn{};
    a.rbuf = ra;
    b.rbuf = rb;
    a.tuple = b.tuple = t;
    a.live = b.live = true;
    if (churn_) by_tuple_[t] = i;
    Tune tune;
    b_.initiate_offload(state_for(1, t, tune), &b, &b.h);  // the peer first: it takes A's first segment
    a_.initiate_offload(state_for(0, t, tune), &a, &a.h);
  }

  void react() {
    for (int pass = 0; pass < 4 && (!ha_.acts.empty() || !hb_.acts.empty()); ++pass) {
      react(ha_, ca_);
      react(hb_, cb_);
    }
  }
  void react(RpcHost& host, std::vector<Conn>& conns) {
    std::vector<std::pair<Conn*, Act>> acts;
    acts.swap(host.acts);
    for (auto [c, act] : acts) {
      switch (act) {
        case Act::offloaded:
          host.post_receive(*c);
          if (host.client()) host.send_message(*c);
          break;
        case Act::repost: host.post_receive(*c); break;
        case Act::send_next: host.flush_backlog(*c); break;
        case Act::message:
          if (!host.client()) {
            host.send_message(*c);  // the echo
          } else if (!churn_) {
            if (!stopping_) host.send_message(*c);
          } else {
            host.disconnect(*c);
          }
          break;
        case Act::peer_fin:
          c->peer_fin = true;
          if (!host.client()) host.disconnect(*c);  // CLOSE_WAIT -> LAST_ACK
          else if (c->disc_done) terminate(host, *c);
          break;
        case Act::disc_done:
          c->disc_done = true;
          if (!host.client() || c->peer_fin) terminate(host, *c);
          break;
        case Act::terminated: {
          c->live = false;
          const uint32_t i = static_cast<uint32_t>(c - conns.data());
          if (churn_ && !ca_[i].live && !cb_[i].live) {
            ++cycles_;
            if (!stopping_) open(i);
          }
          break;
        }
      }
    }
    (void)conns;
  }
  void terminate(RpcHost& host, Conn& c) {
    if (c.terminating) return;
    c.terminating = true;
    if (host.engine->terminate(c.h) != Status::pending) host.error("terminate refused");
  }

  const Options& o_;
  uint32_t n_;
  bool churn_;
  bool stopping_ = false;
  uint64_t cycles_ = 0;
  uint32_t next_tuple_ = 0;
  // The connections' requests outlive the links and engines: frames still
  // queued at the end reference their NetBuffers.
  std::vector<Conn> ca_, cb_;
  std::vector<uint8_t> bufs_;
  std::vector<uint32_t> by_tuple_;
  Link ab_, ba_;
  RpcHost ha_, hb_;
  Engine a_, b_;
};

// -------------------------------------------------------- idle / memory ----
struct IdleResult {
  double rss_per_conn = 0;      // process RSS growth / N (engine sized N, N offloaded)
  double rte_per_slot = 0;      // rte_malloc growth at engine creation / N
  double heap_per_slot = 0;     // the engine's std::vector/array bookkeeping / N
  double offload_seconds = 0;
  bool ok = false;
};

IdleResult run_idle(uint32_t n) {
  IdleResult r;
  CountingHost host;
  Link sink(1);
  const uint64_t rss0 = rss_bytes();
  const uint64_t rte0 = rte_heap_allocated();
  auto e = std::make_unique<Engine>(engine_config(0, n), host, sink);
  const uint64_t rte1 = rte_heap_allocated();
  const uint64_t t0 = rte_rdtsc();
  offload_idle(*e, 0, 0, n);
  const uint64_t t1 = rte_rdtsc();
  const uint64_t rss1 = rss_bytes();
  r.offload_seconds = tsc_seconds(t1 - t0);
  r.rss_per_conn = static_cast<double>(rss1 - rss0) / n;
  r.rte_per_slot = static_cast<double>(rte1 - rte0) / n;
  // generation_ (uint16_t) and free_slots_ (uint32_t) per slot, and the
  // TIME_WAIT records (their free list runs through them), of which there
  // are fewer than slots.
  r.heap_per_slot = sizeof(uint16_t) + sizeof(uint32_t) +
                    sizeof(Engine::TimeWait) * static_cast<double>(tcp::default_time_wait_entries(n)) / n;
  r.ok = host.offloaded == n && host.refused == 0 && e->connections() == n;
  if (!r.ok)
    std::fprintf(stderr, "idle: %llu offloaded, %llu refused of %u\n", (unsigned long long)host.offloaded,
                 (unsigned long long)host.refused, n);
  return r;
}

// ------------------------------------------------------ handoff limit ----
// Only handing frames across: allocate a frame, copy it into the receive
// pool as the wire does, free both. Packets per second on this core.
double run_handoff(const Options& o, uint16_t frame_len) {
  const uint64_t span = static_cast<uint64_t>((o.smoke ? 0.1 : o.seconds) * g_hz);
  uint64_t packets = 0;
  const uint64_t t0 = rte_rdtsc();
  uint64_t t = t0;
  while (t - t0 < span) {
    rte_mbuf* src[32];
    if (rte_pktmbuf_alloc_bulk(g_rx_pool, src, 32) != 0) return 0;
    for (auto* m : src) rte_pktmbuf_append(m, frame_len);
    for (auto* m : src) {
      rte_mbuf* c = rte_pktmbuf_copy(m, g_rx_pool, 0, UINT32_MAX);
      rte_pktmbuf_free(m);
      if (c == nullptr) return 0;
      rte_pktmbuf_free(c);
    }
    packets += 32;
    t = rte_rdtsc();
  }
  return packets / tsc_seconds(t - t0);
}

bool wanted(const std::vector<std::string>& only, const std::string& w) {
  return only.empty() || std::find(only.begin(), only.end(), w) != only.end();
}

std::string fmt(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

}  // namespace

void run_inproc(const Options& o, const std::vector<std::string>& only, Figures& f, std::vector<double>& latency) {
  g_hz = rte_get_tsc_hz();
  g_cycles_per_us = g_hz / 1'000'000 == 0 ? 1 : g_hz / 1'000'000;
  g_tsc0 = rte_rdtsc();
  make_pools(o.smoke);
  const uint32_t table = o.connections;
  f.set("tsc_hz", static_cast<double>(g_hz));
  auto progress = [](const std::string& what) {
    std::fprintf(stderr, "[inproc] %s (load %s)\n", what.c_str(), load_average().c_str());
  };

  // (d) first: the memory figures are deltas of the process's RSS, so no
  // engine may have been freed before (its pages would be reused).
  if (wanted(only, "idle")) {
    progress("idle: offloading " + std::to_string(o.connections) + " connections");
    IdleResult r = run_idle(o.connections);
    f.set("idle_bytes_per_conn", r.rss_per_conn, r.ok, "RSS growth / N");
    f.set("idle_rte_bytes_per_slot", r.rte_per_slot, r.ok, "rte_malloc: TCBs and both hash tables");
    f.set("idle_heap_bytes_per_slot", r.heap_per_slot, r.ok, "generation, free list, TIME_WAIT entries");
    f.set("idle_tcb_bytes", sizeof(tcp::Tcb), true);
    f.set("idle_offload_seconds", r.offload_seconds, r.ok);
    f.set("idle_offloads_per_s", r.offload_seconds > 0 ? o.connections / r.offload_seconds : 0, r.ok);
  }

  if (wanted(only, "bulk")) {
    progress("bulk one way");
    BulkResult r1 = run_bulk(o, false, 0, table);
    f.set("bulk_1way_gbps", r1.gbps, r1.ok, "cpu share " + std::to_string(r1.cpu_share).substr(0, 4));
    f.set("bulk_1way_segments_per_s", r1.segments_per_s, r1.ok);
    progress("bulk both ways");
    BulkResult r2 = run_bulk(o, true, 0, table);
    f.set("bulk_2way_gbps", r2.gbps, r2.ok, "cpu share " + std::to_string(r2.cpu_share).substr(0, 4));
  }

  if (wanted(only, "rr")) {
    for (uint32_t msg : {64u, 1024u})
      for (uint32_t n : o.rr_connections) {
        if (n > table) continue;
        progress("rr " + std::to_string(msg) + " B, " + std::to_string(n) + " connections");
        RpcRun run(o, n, msg, false, table, nullptr);
        RpcResult r = run.run();
        const std::string key = "rr_" + std::to_string(msg) + "_" + std::to_string(n);
        f.set(key, r.per_s, r.ok, r.why.empty() ? r.events : r.why);
        f.set(key + "_segments_per_s", r.segments_per_s, r.ok, r.events);
        if (!r.ok) std::fprintf(stderr, "%s failed: %s\n", key.c_str(), r.why.c_str());
      }
  }

  if (wanted(only, "churn")) {
    progress("churn, " + std::to_string(o.churn_parallel) + " in parallel");
    std::vector<double> lat;
    RpcRun run(o, o.churn_parallel, 64, true, table, &lat);
    RpcResult r = run.run();
    f.set("churn_per_s", r.per_s, r.ok, r.why.empty() ? r.events : r.why);
    if (!r.ok) std::fprintf(stderr, "churn failed: %s\n", r.why.c_str());
    latency = lat;
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double p) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, static_cast<size_t>(p * lat.size()))]; };
    const bool ok = !lat.empty();
    f.set("disc_latency_p50_us", pct(0.50), ok);
    f.set("disc_latency_p90_us", pct(0.90), ok);
    f.set("disc_latency_p99_us", pct(0.99), ok);
    f.set("disc_latency_p999_us", pct(0.999), ok);
    f.set("disc_latency_samples", static_cast<double>(lat.size()), ok);
  }

  if (wanted(only, "cost")) {
    for (uint32_t n : o.cost_connections) {
      if (n > table) continue;
      progress("cost per segment, " + std::to_string(n) + " connections open");
      BulkResult r = run_bulk(o, false, n - 1, table);
      f.set("cost_cycles_" + std::to_string(n), r.cycles_per_segment, r.ok,
            "cpu share " + std::to_string(r.cpu_share).substr(0, 4));
      f.set("cost_segments_per_s_" + std::to_string(n), r.segments_per_s, r.ok);
      f.set("cost_gbps_" + std::to_string(n), r.gbps, r.ok);
    }
  }

  if (wanted(only, "handoff")) {
    progress("handoff limit");
    for (uint16_t len : {uint16_t{64}, uint16_t{1514}}) {
      const double pps = run_handoff(o, len);
      f.set("handoff_pps_" + std::to_string(len), pps, pps > 0);
    }
  }
  (void)fmt;
}

}  // namespace chimney::bench
