// chimney-bench peer: the remote end of a real chimneyd over memif (or TAP).
//
// One tcp::Engine on a memif port (net_memif0, server role by default; or
// net_tap0 on a kernel TAP interface with --device tap), run
// by a poll loop made of chimneyd's own pieces: the worker's receive step
// (dataplane::receive_burst: RX burst, classify_frame and the address
// checks, TCP segments to Engine::input, the rest to the slow path), the
// engine's poll, and chimneyd's slow path (dataplane::SlowPath: ARP with its
// neighbour table, the listeners' handshakes with SYN cookies, the RST for
// closed ports), whose frames leave through the same TX queue. A completed
// handshake is offloaded into the engine, as chimneyd offloads its own.
//
// The host side lives here too: each listening port runs a service.
//   sink    takes everything (indicated data, consumed at once), counts and
//           hashes it; on the other side's FIN it closes gracefully
//   source  sends `bytes` of the test stream (tests/integration/peer.py:
//           byte i is P[i % 65537], P = SHAKE-256("chimney test stream")),
//           zero-copy from one static copy, `window` requests of `chunk`
//           bytes outstanding, then FIN (bytes=0: until the other side's FIN)
//   echo    posts `window` receives of `chunk` bytes and sends each one back
//           as it completes (request/response; data indicated while none is
//           posted goes into a free one's buffer); FIN after the other side's
// When a connection is released (terminate complete), one JSON line reports
// it: bytes and sha256 each way, how it ended, the graceful disconnect's
// status and bytes_transferred.
//
// The loop allocates nothing, takes no lock and makes no system call per
// packet: connection records, their request slots and buffers are made once
// per record and reused; reports are written per connection.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_lcore.h>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "bench.hpp"
#include "dataplane/dataplane.hpp"
#include "dataplane/offload_ops.hpp"
#include "dataplane/runtime.hpp"
#include "dataplane/slowpath.hpp"
#include "net/addr.hpp"
#include "tcp/engine.hpp"

namespace chimney::bench {

namespace dpl = chimney::dataplane;

const char* to_string(PeerService::Kind k) {
  switch (k) {
    case PeerService::Kind::sink: return "sink";
    case PeerService::Kind::source: return "source";
    case PeerService::Kind::echo: return "echo";
  }
  return "?";
}

namespace {

// The test stream of tests/integration/peer.py, twice over, so that any
// slice of up to kPeriod bytes starting anywhere in the period is contiguous.
constexpr uint32_t kPeriod = 65537;
const uint8_t* test_stream() {
  static const std::vector<uint8_t> doubled = [] {
    std::vector<uint8_t> d(2 * size_t{kPeriod});
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    const char seed[] = "chimney test stream";
    if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_shake256(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx, seed, sizeof seed - 1) != 1 || EVP_DigestFinalXOF(ctx, d.data(), kPeriod) != 1)
      throw std::runtime_error("SHAKE-256 failed (OpenSSL)");
    EVP_MD_CTX_free(ctx);
    std::memcpy(d.data() + kPeriod, d.data(), kPeriod);
    return d;
  }();
  return doubled.data();
}

// SHA-256 (OpenSSL), one context per connection record, reused.
class Sha256 {
 public:
  Sha256() = default;
  ~Sha256() {
    if (ctx_ != nullptr) EVP_MD_CTX_free(ctx_);
  }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void reset() {
    static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (ctx_ == nullptr) ctx_ = EVP_MD_CTX_new();
    if (md == nullptr || ctx_ == nullptr || EVP_DigestInit_ex(ctx_, md, nullptr) != 1)
      throw std::runtime_error("SHA-256 unavailable (OpenSSL)");
  }
  void update(const uint8_t* p, size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
      out += digits[md[i] >> 4];
      out += digits[md[i] & 15];
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_ = nullptr;
};

bool parse_number(const std::string& text, uint64_t& out) {
  const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && p == text.data() + text.size();
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

std::optional<PeerService> parse_peer_service(const std::string& spec, std::string& error) {
  PeerService s;
  const auto eq = spec.find('=');
  uint64_t v = 0;
  if (eq == std::string::npos || !parse_number(spec.substr(0, eq), v) || v == 0 || v > 65535) {
    error = "'" + spec + "': expected PORT=KIND[,key=value...] with PORT 1-65535";
    return std::nullopt;
  }
  s.port = static_cast<uint16_t>(v);
  std::stringstream ss(spec.substr(eq + 1));
  std::string item;
  bool first = true;
  while (std::getline(ss, item, ',')) {
    if (first) {
      first = false;
      if (item == "sink") s.kind = PeerService::Kind::sink;
      else if (item == "source") s.kind = PeerService::Kind::source;
      else if (item == "echo") s.kind = PeerService::Kind::echo;
      else {
        error = "'" + spec + "': kind '" + item + "' is not sink, source or echo";
        return std::nullopt;
      }
      continue;
    }
    const auto e = item.find('=');
    const std::string key = item.substr(0, e);
    if (e == std::string::npos || !parse_number(item.substr(e + 1), v)) {
      error = "'" + spec + "': '" + item + "' is not key=number";
      return std::nullopt;
    }
    if (key == "bytes") s.bytes = v;
    else if (key == "chunk" && v >= 1 && v <= kPeriod - 1) s.chunk = static_cast<uint32_t>(v);
    else if (key == "window" && v >= 1 && v <= 64) s.window = static_cast<uint32_t>(v);
    else if (key == "hash" && v <= 1) s.hash = v == 1;
    else {
      error = "'" + spec + "': '" + item + "' (keys: bytes, chunk 1-65536, window 1-64, hash 0|1)";
      return std::nullopt;
    }
  }
  if (first) {
    error = "'" + spec + "': no kind";
    return std::nullopt;
  }
  return s;
}

std::vector<PeerService> default_peer_services() {
  std::string e;
  return {*parse_peer_service("7001=sink", e), *parse_peer_service("7002=source,bytes=4194304", e),
          *parse_peer_service("7003=echo", e)};
}

std::string peer_vdev(const PeerOptions& o) {
  if (o.device == "tap") return "net_tap0,iface=" + o.tap_iface + ",mac=" + o.mac;
  std::string v = "net_memif0,role=" + o.role + ",id=0,mac=" + o.mac;
  if (!o.socket.empty()) v += ",socket=" + o.socket;
  if (!o.memif_devargs.empty()) v += "," + o.memif_devargs;
  return v;
}

// ------------------------------------------------------------ the peer ----
struct PeerEndpoint::Impl : public HostCallbacks {
  // One request of a connection: a source's send, an echo's receive-then-send.
  struct Slot {
    enum class State : uint8_t { idle, receiving, filled, sending };
    NetBufferList nbl;
    NetBuffer nb;
    uint8_t* buf = nullptr;
    uint32_t filled = 0;
    State state = State::idle;
  };
  struct Conn {
    const PeerService* svc = nullptr;
    ConnectionHandle h{};
    uint32_t remote_ip = 0;
    uint16_t remote_port = 0;
    bool live = false, offloaded = false, peer_fin = false, aborted = false, retrieve = false, failed = false;
    bool disc_posted = false, disc_done = false, terminating = false, dirty = false;
    Status disc_status = Status::pending;
    uint64_t disc_bytes = 0;
    uint64_t received = 0, sent_acked = 0, sent_posted = 0;
    uint32_t sends_out = 0, recvs_out = 0;
    uint32_t window = 0, chunk = 0;
    uint32_t cur_send = 0, cur_post = 0;  // slot cursors (requests complete FIFO, so slots cycle in order)
    std::unique_ptr<Slot[]> slots;
    uint32_t slots_size = 0;
    std::unique_ptr<uint8_t[]> buffer;    // echo: window x chunk
    size_t buffer_size = 0;
    NetBufferList disc_nbl;
    NetBuffer disc_nb;
    Sha256 rx_sha, tx_sha;
  };

  PeerOptions opts;
  FILE* report = nullptr;
  dpl::Dataplane dp;
  std::unique_ptr<dpl::SlowPath> slow;
  std::vector<dpl::TxQueue> tx;
  std::unique_ptr<dpl::PortSink> sink;
  std::unique_ptr<tcp::Engine> engine;
  std::vector<Conn> conns;
  std::vector<uint32_t> free_conns;
  std::vector<uint32_t> dirty;
  uint64_t closed = 0, failed = 0, refused = 0, accepted = 0;
  std::array<rte_mbuf*, 256> rx{}, tcp_frames{}, slow_frames{};
  bool built = false;
  // stamp_fin_acks(): per remote port, the TSC of the TX flush that carried
  // the ACK of that connection's FIN; fins_in holds the remote ports whose
  // FIN arrived in this loop pass (reserved once: no allocation per packet).
  std::atomic<uint64_t>* fin_ack_stamps = nullptr;
  std::vector<uint16_t> fins_in;

  explicit Impl(const PeerOptions& o, FILE* out) : opts(o), report(out) {
    auto prefix = net::Ipv4Prefix::parse(o.address);
    const auto test_net = *net::Ipv4Prefix::parse("198.18.0.0/15");
    if (!prefix || prefix->len < 15 || !test_net.contains(prefix->addr))
      throw std::runtime_error("peer address " + o.address + ": must be an address/prefix inside 198.18.0.0/15");
    if (o.services.empty()) throw std::runtime_error("peer: no service");
    test_stream();
    dpl::PortConfig pc;
    if (o.device == "tap") {
      pc.kind = dpl::PortKind::tap;
      pc.iface = o.tap_iface;
    } else {
      pc.kind = dpl::PortKind::memif;
      pc.path = o.socket;
      pc.role = o.role;
    }
    pc.address = *prefix;
    dp.cfg.ports = {pc};
    dp.cfg.mbufs = o.mbufs;
    dp.cfg.max_connections = o.max_connections;
    dp.cfg.idle_sleep_us = o.idle_sleep_us;
    dp.worker_lcores = {rte_lcore_id()};  // one lcore is the worker and the slow path's main lcore
    try {
      dpl::build_dataplane(dp);
    } catch (...) {
      dpl::teardown_dataplane(dp);
      throw;
    }
    built = true;
    tx.resize(1);
    tx[0].bind(dp.ports[0].id, 0, &dp.at(1, 0));
    sink = std::make_unique<dpl::PortSink>(tx[0]);
    engine = std::make_unique<tcp::Engine>(dpl::engine_config(dp, 0, 0), *this, *sink);
    slow = std::make_unique<dpl::SlowPath>(dp);
    conns = std::vector<Conn>(o.max_connections);
    free_conns.reserve(o.max_connections);
    for (uint32_t i = o.max_connections; i-- > 0;) free_conns.push_back(i);
    dirty.reserve(o.max_connections);
    fins_in.reserve(o.max_connections);
    CachedState cached;
    cached.initial_rcv_wnd = o.rcv_window;
    cached.nagle = false;  // request/response: answer at once
    for (const PeerService& s : opts.services) {
      if (slow->listen(s.port, 1024, cached, [this](const OffloadState& st) { accept(st); }) != Status::success)
        throw std::runtime_error("peer: cannot listen on port " + std::to_string(s.port) + " (given twice?)");
    }
  }

  ~Impl() override {
    engine.reset();  // mbufs it holds go back before the pools do
    slow.reset();
    for (auto& q : tx) q.flush();
    if (built) dpl::teardown_dataplane(dp);
  }

  const PeerService* service(uint16_t port) const {
    for (const PeerService& s : opts.services)
      if (s.port == port) return &s;
    return nullptr;
  }

  void mark(Conn& c) {
    if (c.dirty) return;
    c.dirty = true;
    dirty.push_back(static_cast<uint32_t>(&c - conns.data()));
  }

  // A completed handshake (SlowPath listener): into the engine.
  void accept(const OffloadState& st) {
    const PeerService* svc = service(st.constant.local_port);
    if (svc == nullptr || free_conns.empty()) {
      ++refused;  // the other side's segments now meet the RST of a closed port
      return;
    }
    ++accepted;
    Conn& c = conns[free_conns.back()];
    free_conns.pop_back();
    c.svc = svc;
    c.remote_ip = st.constant.remote_ip;
    c.remote_port = st.constant.remote_port;
    c.live = true;
    c.offloaded = c.peer_fin = c.aborted = c.retrieve = c.failed = false;
    c.disc_posted = c.disc_done = c.terminating = false;
    c.disc_status = Status::pending;
    c.disc_bytes = c.received = c.sent_acked = c.sent_posted = 0;
    c.sends_out = c.recvs_out = c.cur_send = c.cur_post = 0;
    const bool source = svc->kind == PeerService::Kind::source;
    c.window = svc->window != 0 ? svc->window : source ? 16 : 4;
    c.chunk = svc->chunk != 0 ? svc->chunk : source ? 65536 : 16384;
    if (c.slots_size < c.window) {
      c.slots = std::make_unique<Slot[]>(c.window);
      c.slots_size = c.window;
    }
    if (svc->kind == PeerService::Kind::echo && c.buffer_size < size_t{c.window} * c.chunk) {
      c.buffer_size = size_t{c.window} * c.chunk;
      c.buffer = std::make_unique<uint8_t[]>(c.buffer_size);
    }
    for (uint32_t i = 0; i < c.window; ++i) {
      c.slots[i].state = Slot::State::idle;
      c.slots[i].buf = svc->kind == PeerService::Kind::echo ? c.buffer.get() + size_t{i} * c.chunk : nullptr;
    }
    if (svc->hash) {
      c.rx_sha.reset();
      c.tx_sha.reset();
    }
    engine->initiate_offload(st, &c, &c.h);
  }

  // ---- host callbacks (they only record and mark; react() acts)
  void offload_complete(ConnectionHandle, void* ctx, Status s) override {
    Conn& c = *static_cast<Conn*>(ctx);
    if (s != Status::success) {
      ++refused;
      release(c, "refused");
      return;
    }
    c.offloaded = true;
    mark(c);
  }
  void send_complete(ConnectionHandle, void* ctx, NetBufferList* chain) override {
    Conn& c = *static_cast<Conn*>(ctx);
    for (NetBufferList* n = chain; n != nullptr;) {
      NetBufferList* next = n->next;
      auto* slot = static_cast<Slot*>(n->host_context);
      c.sent_acked += n->bytes_transferred;
      if (n->status != Status::success) c.failed = true;
      slot->state = Slot::State::idle;
      --c.sends_out;
      n = next;
    }
    mark(c);
  }
  void receive_complete(ConnectionHandle, void* ctx, NetBufferList* chain) override {
    Conn& c = *static_cast<Conn*>(ctx);
    for (NetBufferList* n = chain; n != nullptr;) {
      NetBufferList* next = n->next;
      auto* slot = static_cast<Slot*>(n->host_context);
      --c.recvs_out;
      if (n->status == Status::success) {
        const auto len = static_cast<uint32_t>(n->bytes_transferred);
        c.received += len;
        if (c.svc->hash) c.rx_sha.update(slot->buf, len);
        slot->filled = len;
        slot->state = Slot::State::filled;
      } else {
        // INVALID_STATE after the other side's FIN (C-16), aborted, uploaded
        slot->filled = 0;
        slot->state = Slot::State::idle;
      }
      n = next;
    }
    mark(c);
  }
  IndicateResult receive_indicate(ConnectionHandle, void* ctx, const uint8_t* data, uint32_t len, bool) override {
    Conn& c = *static_cast<Conn*>(ctx);
    if (c.svc->kind == PeerService::Kind::echo) {
      // Data that finds no receive posted: the segments right behind the
      // handshake, which the slow path hands to the engine before the
      // offload has completed and the receives are posted. Taken into the
      // next free slot as a posted receive would have been (a receive posted
      // later over buffered data completes only at the push timer, C-9:
      // 200 ms). With receives outstanding, or no free slot, it stays
      // buffered (C-10) until one is posted.
      if (c.recvs_out != 0 || c.peer_fin) return {0};
      Slot& s = c.slots[c.cur_post];
      if (s.state != Slot::State::idle) return {0};
      const uint32_t n = std::min(len, c.chunk);
      std::memcpy(s.buf, data, n);
      c.received += n;
      if (c.svc->hash) c.rx_sha.update(s.buf, n);
      s.filled = n;
      s.state = Slot::State::filled;
      c.cur_post = (c.cur_post + 1) % c.window;
      mark(c);
      return {n};
    }
    c.received += len;
    if (c.svc->hash) c.rx_sha.update(data, len);
    return {len};
  }
  void disconnect_complete(ConnectionHandle, void* ctx, NetBufferList* nbl) override {
    Conn& c = *static_cast<Conn*>(ctx);
    c.disc_done = true;
    c.disc_status = nbl->status;
    c.disc_bytes = nbl->bytes_transferred;
    mark(c);
  }
  void terminate_complete(ConnectionHandle, void* ctx, Status, DelegatedState&) override {
    Conn& c = *static_cast<Conn*>(ctx);
    release(c, c.aborted ? "abort" : c.retrieve ? "retrieve" : c.failed ? "failed" : "closed");
  }
  void event(ConnectionHandle, void* ctx, EventKind k, RetrieveReason, uint32_t) override {
    Conn& c = *static_cast<Conn*>(ctx);
    switch (k) {
      case EventKind::disconnect:
        c.peer_fin = true;
        // The FIN is in order (C-16): its ACK leaves in this pass's flush.
        if (fin_ack_stamps != nullptr && fins_in.size() < fins_in.capacity()) fins_in.push_back(c.remote_port);
        break;
      case EventKind::abort: c.aborted = true; break;
      case EventKind::retrieve: c.retrieve = true; break;
      case EventKind::send_backlog_change: return;
    }
    mark(c);
  }

  // ---- acting on what the callbacks recorded
  unsigned react() {
    const size_t n = dirty.size();
    for (size_t i = 0; i < dirty.size(); ++i) {
      Conn& c = conns[dirty[i]];
      c.dirty = false;
      step(c);
    }
    dirty.clear();
    return static_cast<unsigned>(n);
  }

  void step(Conn& c) {
    if (!c.live || !c.offloaded || c.terminating) return;
    if (c.aborted || c.retrieve || c.failed) {
      terminate(c);
      return;
    }
    switch (c.svc->kind) {
      case PeerService::Kind::sink: break;
      case PeerService::Kind::source: pump_source(c); break;
      case PeerService::Kind::echo: pump_echo(c); break;
    }
    if (c.failed) {
      terminate(c);
      return;
    }
    if (!c.disc_posted && ready_to_close(c)) disconnect(c);
    if (c.disc_done && (c.peer_fin || c.disc_status != Status::success)) terminate(c);
  }

  bool ready_to_close(const Conn& c) const {
    switch (c.svc->kind) {
      case PeerService::Kind::sink: return c.peer_fin;
      case PeerService::Kind::source:
        return c.sends_out == 0 && (c.svc->bytes != 0 ? c.sent_posted == c.svc->bytes : c.peer_fin);
      case PeerService::Kind::echo:
        return c.peer_fin && c.sends_out == 0 && c.slots[c.cur_send].state != Slot::State::filled;
    }
    return false;
  }

  void post_send(Conn& c, Slot& s, uint8_t* data, uint32_t len) {
    s.nb = NetBuffer{};
    s.nb.data = data;
    s.nb.data_length = len;
    s.nbl = NetBufferList{};
    s.nbl.first = &s.nb;
    s.nbl.host_context = &s;
    s.state = Slot::State::sending;
    ++c.sends_out;
    if (engine->send(c.h, &s.nbl) != Status::pending) {
      s.state = Slot::State::idle;
      --c.sends_out;
      c.failed = true;
    }
  }

  void pump_source(Conn& c) {
    const uint64_t total = c.svc->bytes;
    while (!c.failed && (total != 0 ? c.sent_posted < total : !c.peer_fin)) {
      Slot& s = c.slots[c.cur_send];
      if (s.state != Slot::State::idle) break;
      uint32_t len = c.chunk;
      if (total != 0 && total - c.sent_posted < len) len = static_cast<uint32_t>(total - c.sent_posted);
      auto* data = const_cast<uint8_t*>(test_stream()) + c.sent_posted % kPeriod;
      if (c.svc->hash) c.tx_sha.update(data, len);
      c.sent_posted += len;
      c.cur_send = (c.cur_send + 1) % c.window;
      post_send(c, s, data, len);
    }
  }

  void pump_echo(Conn& c) {
    // What came in goes back, in order.
    for (;;) {
      Slot& s = c.slots[c.cur_send];
      if (s.state != Slot::State::filled) break;
      c.cur_send = (c.cur_send + 1) % c.window;
      if (s.filled == 0) {
        s.state = Slot::State::idle;
        continue;
      }
      if (c.svc->hash) c.tx_sha.update(s.buf, s.filled);
      c.sent_posted += s.filled;
      post_send(c, s, s.buf, s.filled);
      if (c.failed) return;
    }
    // Free slots take receives again (none after the other side's FIN).
    while (!c.peer_fin) {
      Slot& s = c.slots[c.cur_post];
      if (s.state != Slot::State::idle) break;
      c.cur_post = (c.cur_post + 1) % c.window;
      s.nb = NetBuffer{};
      s.nb.data = s.buf;
      s.nb.data_length = c.chunk;
      s.nbl = NetBufferList{};
      s.nbl.first = &s.nb;
      s.nbl.host_context = &s;
      s.state = Slot::State::receiving;
      ++c.recvs_out;
      if (engine->receive(c.h, &s.nbl) != Status::pending) {
        s.state = Slot::State::idle;
        --c.recvs_out;
        c.failed = true;
        return;
      }
    }
  }

  void disconnect(Conn& c) {
    c.disc_posted = true;
    c.disc_nb = NetBuffer{};
    c.disc_nbl = NetBufferList{};
    c.disc_nbl.first = &c.disc_nb;
    if (engine->disconnect(c.h, &c.disc_nbl, DisconnectKind::graceful) != Status::pending) {
      c.disc_done = true;
      c.disc_status = Status::invalid_state;
    }
  }

  void terminate(Conn& c) {
    c.terminating = true;
    if (engine->terminate(c.h) != Status::pending) release(c, "released");
  }

  // The connection is gone from the engine: report it, free the record.
  void release(Conn& c, const char* end) {
    if (!c.live) return;
    c.live = false;
    if (std::strcmp(end, "closed") == 0) ++closed;
    else ++failed;
    if (report != nullptr) {
      const bool h = c.svc->hash;
      std::fprintf(report,
                   "{\"event\": \"closed\", \"service\": \"%s\", \"local_port\": %u, \"remote\": \"%s:%u\", "
                   "\"received\": %llu, \"received_sha256\": \"%s\", \"sent\": %llu, \"sent_posted\": %llu, "
                   "\"sent_sha256\": \"%s\", \"peer_fin\": %s, \"disconnect\": \"%s\", \"disconnect_bytes\": %llu, "
                   "\"end\": \"%s\"}\n",
                   to_string(c.svc->kind), c.svc->port, net::Ipv4Addr{c.remote_ip}.str().c_str(), c.remote_port,
                   static_cast<unsigned long long>(c.received), h ? c.rx_sha.hex().c_str() : "",
                   static_cast<unsigned long long>(c.sent_acked), static_cast<unsigned long long>(c.sent_posted),
                   h ? c.tx_sha.hex().c_str() : "", c.peer_fin ? "true" : "false",
                   c.disc_posted ? chimney::to_string(c.disc_status) : "", static_cast<unsigned long long>(c.disc_bytes),
                   end);
      std::fflush(report);
    }
    free_conns.push_back(static_cast<uint32_t>(&c - conns.data()));
  }

  // Segments the slow path kept for the engine while it handed a
  // connection over (SlowPath::hand_over: the data or FIN on the ACK that
  // completed a handshake, what came behind it), on the ops ring as in
  // chimneyd; accept() has put the connection in the engine already.
  unsigned take_handed_over(uint64_t now_us, dpl::Counters& wc) {
    std::array<void*, 32> ops{};
    const unsigned n = rte_ring_sc_dequeue_burst(dp.ops[0], ops.data(), ops.size(), nullptr);
    for (unsigned i = 0; i < n; ++i) {
      auto* op = static_cast<dpl::OffloadOp*>(ops[i]);
      if (op->kind == dpl::OffloadOp::Kind::input) dpl::hand_over_input(*engine, op->frame, now_us, wc);
      dpl::free_op_record(dp, op);
    }
    return n;
  }

  // Hands the frames in slow_frames to the slow path, one at a time. Here
  // both run in this thread, so once a handshake completes, what the slow
  // path kept of its last ACK goes to the engine at once, and so does the
  // rest of the burst (the data right behind that ACK).
  void to_slow_path(uint16_t n, uint64_t tsc, uint64_t now_us, dpl::Counters& wc) {
    rte_mbuf** frames = slow_frames.data();
    uint16_t i = 0;
    while (i < n) {
      const uint64_t before = accepted;
      dpl::queue_to_slowpath(dp.to_slowpath[0], frames + i, 1, wc);
      ++i;
      slow->poll(tsc);
      take_handed_over(now_us, wc);
      if (accepted == before || i == n) continue;
      uint16_t keep = i, n_tcp = 0;
      for (uint16_t j = i; j < n; ++j) (is_tcp(frames[j]) ? tcp_frames[n_tcp++] : frames[keep++]) = frames[j];
      if (n_tcp != 0) keep = static_cast<uint16_t>(keep + engine->input(tcp_frames.data(), n_tcp, now_us, frames + keep));
      n = keep;
    }
  }
  static bool is_tcp(const rte_mbuf* m) {
    const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
    if (eth->ether_type != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4)) return false;
    return rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len)->next_proto_id == IPPROTO_TCP;
  }

  void run(const std::atomic<bool>& stop) {
    const uint64_t hz = rte_get_tsc_hz();
    const uint64_t cycles_per_us = hz / 1'000'000 == 0 ? 1 : hz / 1'000'000;
    const uint16_t burst = dp.cfg.burst;
    const dpl::Port& port = dp.ports[0];
    dpl::Counters& wc = dp.at(1, 0);  // the "worker" slot; the slow path counts in slot 0
    dpl::IdleBackoff idle(opts.idle_sleep_us);
    uint64_t next_tick = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const uint64_t tsc = rte_get_tsc_cycles();
      const uint64_t now_us = tsc / cycles_per_us;
      // chimneyd's worker step: RX, classify, engine input, engine poll.
      const dpl::RxStep step = dpl::receive_burst(port, 0, burst, *engine, now_us, wc, nullptr, rx.data(),
                                                  tcp_frames.data(), slow_frames.data());
      unsigned work = step.received + react();
      engine->poll(now_us);
      work += react();
      // chimneyd's main lcore: the slow path (ARP, handshakes, RST).
      if (step.to_slowpath != 0) to_slow_path(step.to_slowpath, tsc, now_us, wc);
      work += slow->poll(tsc);
      work += take_handed_over(now_us, wc);
      if (tsc >= next_tick) {
        slow->tick(tsc);
        next_tick = tsc + hz / 10;
      }
      work += dpl::take_from_slowpath(dp, dp.from_slowpath[0], tx, slow_frames.data(), burst);
      if (!fins_in.empty()) {
        // Taken before the burst that sends the ACKs of these FINs (the
        // engine ACKs a FIN at once, and nothing sent it yet: a TX queue
        // bursts on its own only with 256 frames staged).
        const uint64_t t = rte_get_tsc_cycles();
        for (const uint16_t p : fins_in) fin_ack_stamps[p].store(t, std::memory_order_release);
        fins_in.clear();
      }
      for (auto& q : tx) q.flush();
      idle.update(work);
    }
  }
};

PeerEndpoint::PeerEndpoint(const PeerOptions& o, FILE* report) : impl_(std::make_unique<Impl>(o, report)) {}
PeerEndpoint::~PeerEndpoint() = default;
void PeerEndpoint::run(const std::atomic<bool>& stop) { impl_->run(stop); }
void PeerEndpoint::stamp_fin_acks(std::atomic<uint64_t>* by_remote_port) { impl_->fin_ack_stamps = by_remote_port; }
uint64_t PeerEndpoint::connections_closed() const { return impl_->closed; }
uint64_t PeerEndpoint::connections_failed() const { return impl_->failed; }

std::string PeerEndpoint::ready_json() const {
  const Impl& p = *impl_;
  std::string services;
  for (const PeerService& s : p.opts.services) {
    if (!services.empty()) services += ", ";
    services += "{\"port\": " + std::to_string(s.port) + ", \"kind\": \"" + to_string(s.kind) +
                "\", \"bytes\": " + std::to_string(s.bytes) + ", \"hash\": " + (s.hash ? "true" : "false") + "}";
  }
  return "{\"event\": \"ready\", \"address\": \"" + p.dp.ports[0].config.address.str() + "\", \"mac\": \"" +
         net::mac_str(p.dp.ports[0].mac) + "\", \"socket\": \"" + json_escape(p.opts.socket) + "\", \"role\": \"" +
         p.opts.role + "\", \"pid\": " + std::to_string(getpid()) + ", \"services\": [" + services + "]}";
}

std::string PeerEndpoint::open_connections_json() const {
  const Impl& p = *impl_;
  std::string out = "[";
  for (const Impl::Conn& c : p.conns) {
    if (!c.live) continue;
    std::string slots;
    for (uint32_t i = 0; i < c.window && c.slots; ++i)
      slots += "0123"[static_cast<int>(c.slots[i].state)];  // idle, receiving, filled, sending
    out += std::string(out.size() > 1 ? ", " : "") + "{\"service\": \"" + to_string(c.svc->kind) +
           "\", \"remote_port\": " + std::to_string(c.remote_port) + ", \"offloaded\": " +
           (c.offloaded ? "true" : "false") + ", \"peer_fin\": " + (c.peer_fin ? "true" : "false") +
           ", \"received\": " + std::to_string(c.received) + ", \"sent_posted\": " + std::to_string(c.sent_posted) +
           ", \"sent\": " + std::to_string(c.sent_acked) + ", \"sends_out\": " + std::to_string(c.sends_out) +
           ", \"recvs_out\": " + std::to_string(c.recvs_out) + ", \"slots\": \"" + slots + "\", \"cursors\": [" +
           std::to_string(c.cur_send) + ", " + std::to_string(c.cur_post) + "]}";
  }
  return out + "]";
}

std::string PeerEndpoint::exit_json() const {
  const Impl& p = *impl_;
  const dpl::CounterTotals t = p.dp.port_totals(0);
  std::string drops;
  for (size_t i = 0; i < t.drops.size(); ++i)
    if (t.drops[i] != 0)
      drops += std::string(drops.empty() ? "" : ", ") + "\"" + net::to_string(static_cast<net::DropReason>(i)) +
               "\": " + std::to_string(t.drops[i]);
  std::string eng;
  const uint64_t* v = p.engine->stats().values();
  for (size_t i = 0; i < tcp::EngineStats::kCount; ++i)
    eng += std::string(i == 0 ? "" : ", ") + "\"" + tcp::EngineStats::kNames[i] + "\": " + std::to_string(v[i]);
  const auto& hs = p.slow->handshake_counters();
  return "{\"event\": \"exit\", \"rx_packets\": " + std::to_string(t.rx_packets) +
         ", \"tx_packets\": " + std::to_string(t.tx_packets) + ", \"arp_requests\": " + std::to_string(t.arp_requests) +
         ", \"arp_replies\": " + std::to_string(t.arp_replies) + ", \"rst_sent\": " + std::to_string(t.rst_sent) +
         ", \"established_passive\": " + std::to_string(hs.established_passive) +
         ", \"handshake_parked\": " + std::to_string(t.handshake_parked) +
         ", \"handshake_parked_dropped\": " + std::to_string(t.handshake_parked_dropped) +
         ", \"accepted\": " + std::to_string(p.accepted) + ", \"closed\": " + std::to_string(p.closed) +
         ", \"failed\": " + std::to_string(p.failed) + ", \"refused\": " + std::to_string(p.refused) +
         ", \"open\": " + std::to_string(p.engine->connections()) + ", \"drops\": {" + drops + "}, \"engine\": {" +
         eng + "}}";
}

// ------------------------------------------------------ the command ----
namespace {
std::atomic<bool> g_peer_stop{false};
void on_peer_signal(int) { g_peer_stop.store(true); }
}  // namespace

int run_peer_command(const PeerOptions& o) {
  struct sigaction sa{};
  sa.sa_handler = on_peer_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  try {
    PeerEndpoint peer(o, stdout);
    std::printf("%s\n", peer.ready_json().c_str());
    std::fflush(stdout);
    peer.run(g_peer_stop);
    std::printf("%s\n", peer.exit_json().c_str());
    std::fflush(stdout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "peer: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace chimney::bench
