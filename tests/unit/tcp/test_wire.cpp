// Two engines over an in-memory wire that loses, reorders and duplicates
// segments: a bulk transfer each way on one connection, every byte checked,
// every request completed exactly once, and a graceful close on both sides
// with exact byte counts.
#include <chrono>
#include <cstdlib>
#include <random>

#include "harness.hpp"
#include "net/impair.hpp"

namespace chimney::test {

namespace {

// The stream: byte i is pattern[i % kPeriod]. The period is prime-ish and
// not a multiple of any segment size, so a misplaced segment cannot match.
constexpr uint32_t kPeriod = (1u << 20) + 7;

// The wire's own mbufs: a window's worth of frames in flight each way.
rte_mempool* wire_pool() {
  static rte_mempool* p = rte_pktmbuf_pool_create("wire_pool", 32767, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  return p;
}
const std::vector<uint8_t>& pattern() {
  static std::vector<uint8_t> p = [] {
    std::vector<uint8_t> v(kPeriod + (1u << 20));
    std::mt19937 rng(12345);
    for (uint32_t i = 0; i < kPeriod; ++i) v[i] = static_cast<uint8_t>(rng());
    for (size_t i = kPeriod; i < v.size(); ++i) v[i] = v[i - kPeriod];  // any window reads the stream
    return v;
  }();
  return p;
}

using net::ImpairSpec;

// One direction of the wire: frames are copied into fresh mbufs (as a NIC
// and a cable would), the sender's are freed (releasing its zero-copy refs),
// then pass chimneyd's own impairment stage (net/impair.hpp).
class Link : public tcp::TxSink {
 public:
  Link(const ImpairSpec& imp, uint64_t seed)
      : stage_(imp, seed, net::Impairment::Direction::tx, wire_pool(), &stats) {}
  std::deque<rte_mbuf*> in_flight;
  bool trace = false;
  const char* name = "";
  net::ImpairStats stats;

  void transmit(rte_mbuf** pkts, uint16_t n) override {
    for (uint16_t i = 0; i < n; ++i) {
      rte_mbuf* copy = rte_pktmbuf_copy(pkts[i], wire_pool(), 0, UINT32_MAX);
      rte_pktmbuf_free(pkts[i]);
      if (copy == nullptr) {
        ADD_FAILURE() << "wire pool empty";
        continue;
      }
      take(&copy, 1);
    }
  }
  // Hands everything in flight to `to`, classified as a worker would.
  void deliver(tcp::Engine& to, uint64_t now_us) {
    if (in_flight.empty()) take(nullptr, 0);  // a frame held back for reordering: nothing came after it
    while (!in_flight.empty()) {
      rte_mbuf* batch[32];
      uint16_t n = 0;
      while (n < 32 && !in_flight.empty()) {
        rte_mbuf* m = in_flight.front();
        in_flight.pop_front();
        m->ol_flags = 0;
        net::Classified k = net::classify_frame(m);
        if (k.kind != net::FrameKind::tcp) {
          ADD_FAILURE() << "malformed frame on the wire: " << net::to_string(k.reason);
          rte_pktmbuf_free(m);
          continue;
        }
        if (trace) {
          Seg sg = parse_emitted(m);
          std::printf("    %s t=%llu seq %u ack %u len %zu flags %02x win %u\n", name, (unsigned long long)now_us, sg.seq, sg.ack,
                      sg.payload.size(), sg.flags, sg.window);
          m->ol_flags = 0;
          net::classify_frame(m);
        }
        batch[n++] = m;
      }
      rte_mbuf* unmatched[32];
      const uint16_t u = to.input(batch, n, now_us, unmatched);
      for (uint16_t i = 0; i < u; ++i) rte_pktmbuf_free(unmatched[i]);
      unmatched_ += u;
    }
  }
  uint64_t unmatched() const { return unmatched_; }
  ~Link() override {
    for (rte_mbuf* m : in_flight) rte_pktmbuf_free(m);
  }

 private:
  void take(rte_mbuf** frames, uint16_t n) {
    rte_mbuf* out[4];  // a frame and its duplicate, and one held back
    const uint16_t k = stage_.pass(frames, n, 0, out, 4);
    for (uint16_t i = 0; i < k; ++i) in_flight.push_back(out[i]);
  }
  net::Impairment stage_;  // no delay: everything due at once
  uint64_t unmatched_ = 0;
};

// A host that streams `total` bytes out and checks every byte coming in.
class StreamHost : public HostCallbacks {
 public:
  static constexpr uint32_t kRequest = 256 * 1024;
  static constexpr int kOutstanding = 16;
  static constexpr int kReceives = 8;

  StreamHost(uint64_t total_out, uint64_t total_in) : total_out_(total_out), total_in_(total_in) {}
  tcp::Engine* engine = nullptr;
  ConnectionHandle h;
  uint64_t queued_out = 0, completed_out = 0, received = 0;
  uint64_t sends_posted = 0, sends_completed = 0, receives_posted = 0, receives_completed = 0;
  int disconnect_completions = 0, disconnect_events = 0, aborts = 0, retrieves = 0;
  Status disconnect_status = Status::pending;
  uint64_t disconnect_bytes = 0;
  bool data_error = false;
  std::string error;

  void start() {
    for (int i = 0; i < kReceives; ++i) post_receive(i);
    pump();
  }
  void pump() {
    while (in_use_ < kOutstanding && queued_out < total_out_) {
      int slot = 0;
      while (sends_[slot].in_use) ++slot;
      Send& s = sends_[slot];
      const uint32_t off = static_cast<uint32_t>(queued_out % kPeriod);
      uint64_t len = total_out_ - queued_out;
      if (len > kRequest) len = kRequest;
      s = Send{};
      s.in_use = true;
      s.nb.data = const_cast<uint8_t*>(pattern().data()) + off;
      s.nb.data_length = static_cast<uint32_t>(len);
      s.nbl.first = &s.nb;
      s.length = static_cast<uint32_t>(len);
      queued_out += len;
      ++in_use_;
      ++sends_posted;
      ASSERT_EQ(engine->send(h, &s.nbl), Status::pending);
    }
  }
  bool done_sending() const { return completed_out == total_out_; }
  bool done_receiving() const { return received == total_in_; }
  void disconnect() {
    disc_nb_.data = nullptr;
    disc_nb_.data_length = 0;
    disc_.first = &disc_nb_;
    ASSERT_EQ(engine->disconnect(h, &disc_, DisconnectKind::graceful), Status::pending);
  }

  void offload_complete(ConnectionHandle, void*, Status s) override {
    if (s != Status::success) fail("offload " + std::string(to_string(s)));
  }
  void send_complete(ConnectionHandle, void*, NetBufferList* chain) override {
    for (NetBufferList* n = chain; n != nullptr;) {
      NetBufferList* next = n->next;
      Send* s = reinterpret_cast<Send*>(reinterpret_cast<uint8_t*>(n) - offsetof(Send, nbl));
      if (!s->in_use) fail("a send completed twice");
      if (n->status != Status::success) fail(std::string("send status ") + to_string(n->status));
      if (n->bytes_transferred != s->length) fail("send bytes_transferred mismatch");
      if (s->nb.data_length != 0) fail("data start not advanced by the acked bytes");
      completed_out += s->length;
      s->in_use = false;
      --in_use_;
      ++sends_completed;
      n = next;
    }
    pump();
  }
  void receive_complete(ConnectionHandle, void*, NetBufferList* chain) override {
    for (NetBufferList* n = chain; n != nullptr;) {
      NetBufferList* next = n->next;
      Recv* r = reinterpret_cast<Recv*>(reinterpret_cast<uint8_t*>(n) - offsetof(Recv, nbl));
      ++receives_completed;
      if (n->status == Status::success) {
        check(r->buf.data(), static_cast<uint32_t>(n->bytes_transferred));
        post_receive(static_cast<int>(r - recvs_));
      } else if (n->status != Status::invalid_state) {
        fail(std::string("receive status ") + to_string(n->status));
      }
      n = next;
    }
  }
  IndicateResult receive_indicate(ConnectionHandle, void*, const uint8_t* data, uint32_t len, bool) override {
    check(data, len);
    return {len};
  }
  void disconnect_complete(ConnectionHandle, void*, NetBufferList* nbl) override {
    ++disconnect_completions;
    disconnect_status = nbl->status;
    disconnect_bytes = nbl->bytes_transferred;
  }
  void terminate_complete(ConnectionHandle, void*, Status, DelegatedState&) override {}
  void event(ConnectionHandle, void*, EventKind k, RetrieveReason, uint32_t) override {
    if (k == EventKind::disconnect) ++disconnect_events;
    if (k == EventKind::abort) ++aborts;
    if (k == EventKind::retrieve) ++retrieves;
  }

 private:
  struct Send {
    NetBufferList nbl;
    NetBuffer nb;
    uint32_t length = 0;
    bool in_use = false;
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
    ++receives_posted;
    engine->receive(h, &r.nbl);
  }
  void check(const uint8_t* data, uint32_t len) {
    const uint32_t off = static_cast<uint32_t>(received % kPeriod);
    if (received + len > total_in_) fail("more data than was sent");
    else if (std::memcmp(data, pattern().data() + off, len) != 0) {
      if (!data_error) fail("data mismatch at stream offset " + std::to_string(received));
      data_error = true;
    }
    received += len;
  }
  void fail(const std::string& what) {
    if (error.empty()) error = what;
  }
  uint64_t total_out_, total_in_;
  Send sends_[kOutstanding];
  int in_use_ = 0;
  Recv recvs_[kReceives];
  NetBufferList disc_;
  NetBuffer disc_nb_;
};

OffloadState side(const Flow& f, uint32_t iss, uint32_t irs, CongestionAlgorithm cc) {
  OffloadState s = default_state(f);
  s.cached.initial_rcv_wnd = 4u << 20;
  s.cached.congestion = cc;
  s.cached.max_retransmissions = 30;
  s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = iss;
  s.delegated.snd_wl1 = irs;
  s.delegated.snd_wl2 = iss;
  s.delegated.snd_wnd = 4u << 20;
  s.delegated.rcv_nxt = irs;
  s.delegated.ts_recent = 0;
  return s;
}

uint64_t env_bytes(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtoull(v, nullptr, 10) : def;
}

struct Result {
  double seconds;
  uint64_t sim_ms;
};

Result run_transfer(uint64_t bytes, const ImpairSpec& imp, CongestionAlgorithm cc, uint64_t seed) {
  Flow fa;  // A is the "target" side of the default flow
  Flow fb;
  std::swap(fb.local_ip, fb.remote_ip);
  std::swap(fb.local_port, fb.remote_port);
  std::swap(fb.local_mac, fb.remote_mac);
  Link a_to_b(imp, seed), b_to_a(imp, seed + 1);
  StreamHost ha(bytes, bytes), hb(bytes, bytes);
  static int n = 0;
  ++n;
  tcp::EngineConfig ca = EngineTest::config("wa" + std::to_string(n));
  tcp::EngineConfig cb = EngineTest::config("wb" + std::to_string(n));
  ca.ooo_segments = cb.ooo_segments = 8192;
  tcp::Engine a(ca, ha, a_to_b), b(cb, hb, b_to_a);
  ha.engine = &a;
  hb.engine = &b;
  uint64_t now_us = 1'000'000;
  a.poll(now_us);
  b.poll(now_us);
  a.initiate_offload(side(fa, 1000, 900000, cc), nullptr, &ha.h);
  b.initiate_offload(side(fb, 900000, 1000, cc), nullptr, &hb.h);
  a.poll(now_us);
  b.poll(now_us);
  EXPECT_TRUE(ha.error.empty()) << ha.error;
  ha.start();
  hb.start();
  if (std::getenv("CHIMNEY_WIRE_TRACE") != nullptr) {
    a_to_b.trace = b_to_a.trace = true;
    a_to_b.name = "A>B";
    b_to_a.name = "B>A";
  }
  const auto t0 = std::chrono::steady_clock::now();
  bool disconnecting = false;
  // 50 us steps: a wire with 100 us of round-trip time.
  const uint64_t limit_us = now_us + 24ull * 3600 * 1'000'000;
  while (now_us < limit_us) {
    now_us += 50;
    a_to_b.deliver(b, now_us);
    b_to_a.deliver(a, now_us);
    a.poll(now_us);
    b.poll(now_us);
    if (!ha.error.empty() || !hb.error.empty()) break;
    if (!disconnecting && ha.done_sending() && hb.done_sending()) {
      ha.disconnect();
      hb.disconnect();
      disconnecting = true;
    }
    if (ha.disconnect_completions == 1 && hb.disconnect_completions == 1 && ha.disconnect_events == 1 &&
        hb.disconnect_events == 1)
      break;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (std::getenv("CHIMNEY_WIRE_DEBUG") != nullptr) {
    for (tcp::Engine* e : {&a, &b}) {
      const tcp::Tcb* t = e->find(e == &a ? ha.h : hb.h);
      if (t == nullptr) continue;
      std::printf("  state %s una %u nxt %u max %u queued_end %u wnd %u cwnd %u ssthresh %u | rcv nxt %u adv %u buffered %u ooo %u/%u | rto %u total_rt %u recovery %d sacked %u\n",
                  to_string(t->state), t->snd.una, t->snd.nxt, t->snd.max, t->snd.queued_end, t->snd.wnd, t->snd.cwnd,
                  t->snd.ssthresh, t->rcv.nxt, t->rcv.adv, t->rx_buffered.bytes, t->rcv.ooo_bytes, t->rcv.ooo_count,
                  t->rtt.rto_ms, t->total_rt, int(t->flags.in_recovery), t->sacked.count);
    }
  }
  for (StreamHost* hst : {&ha, &hb}) {
    EXPECT_TRUE(hst->error.empty()) << hst->error;
    EXPECT_FALSE(hst->data_error);
    EXPECT_EQ(hst->completed_out, bytes);
    EXPECT_EQ(hst->received, bytes) << "every byte arrived";
    EXPECT_EQ(hst->sends_completed, hst->sends_posted) << "every send completed exactly once";
    EXPECT_EQ(hst->disconnect_completions, 1);
    EXPECT_EQ(hst->disconnect_status, Status::success);
    EXPECT_EQ(hst->disconnect_bytes, 0u);
    EXPECT_EQ(hst->disconnect_events, 1);
    EXPECT_EQ(hst->aborts, 0);
    EXPECT_EQ(hst->retrieves, 0);
  }
  EXPECT_EQ(a_to_b.unmatched() + b_to_a.unmatched(), 0u);
  if (imp.loss > 0) {
    EXPECT_GT(a_to_b.stats.lost.get(), 0u);
    EXPECT_GT(a.stats().retransmits, 0u);
  }
  std::printf("  %llu bytes each way, loss %.0f%% reorder %.0f%% dup %.0f%%, %s: %.2f s real, %.2f s simulated; "
              "A: %llu segments out, %llu retransmits (%llu fast, %llu RTO); lost %llu, reordered %llu, duplicated %llu\n",
              static_cast<unsigned long long>(bytes), imp.loss * 100, imp.reorder * 100, imp.duplicate * 100,
              to_string(cc), secs, (now_us - 1'000'000) / 1e6,
              static_cast<unsigned long long>(a.stats().segments_out),
              static_cast<unsigned long long>(a.stats().retransmits),
              static_cast<unsigned long long>(a.stats().fast_retransmits),
              static_cast<unsigned long long>(a.stats().rto_expirations),
              static_cast<unsigned long long>(a_to_b.stats.lost.get()),
              static_cast<unsigned long long>(a_to_b.stats.reordered.get()),
              static_cast<unsigned long long>(a_to_b.stats.duplicated.get()));
  return {secs, (now_us - 1'000'000) / 1000};
}

}  // namespace

// The figure: 1 GiB each way (CHIMNEY_WIRE_BYTES overrides).
TEST(Wire, BulkBothWaysWithLossReorderingDuplication) {
  const uint64_t bytes = env_bytes("CHIMNEY_WIRE_BYTES", 1ull << 30);
  run_transfer(bytes, ImpairSpec{.loss = 0.05, .duplicate = 0.01, .reorder = 0.05}, CongestionAlgorithm::cubic, 7);
}

TEST(Wire, NewRenoWithLossReorderingDuplication) {
  run_transfer(env_bytes("CHIMNEY_WIRE_BYTES_SMALL", 64ull << 20), ImpairSpec{.loss = 0.05, .duplicate = 0.01, .reorder = 0.05},
               CongestionAlgorithm::newreno, 11);
}

TEST(Wire, CleanWire) {
  run_transfer(env_bytes("CHIMNEY_WIRE_BYTES_SMALL", 64ull << 20), ImpairSpec{}, CongestionAlgorithm::cubic, 3);
}

}  // namespace chimney::test
