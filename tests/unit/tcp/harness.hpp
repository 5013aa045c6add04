// A scripted-segment harness for the engine, in the spirit of packetdrill:
// the test plays the peer, feeds crafted segments into one engine, and reads
// back the segments the engine emitted and the completions and events it
// raised, in order. Time is the test's.
#pragma once

#include <gtest/gtest.h>

#include <rte_ip.h>
#include <rte_tcp.h>

#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chimney/target.hpp"
#include "net/build.hpp"
#include "net/packet.hpp"
#include "net/tcp_options.hpp"
#include "tcp/engine.hpp"
#include "test_util.hpp"

namespace chimney::test {

inline constexpr uint8_t FIN = RTE_TCP_FIN_FLAG, SYN = RTE_TCP_SYN_FLAG, RST = RTE_TCP_RST_FLAG,
                         PSH = RTE_TCP_PSH_FLAG, ACK = RTE_TCP_ACK_FLAG;

inline rte_mempool* header_pool() {
  static rte_mempool* p = rte_pktmbuf_pool_create("tcp_hdr_pool", 32767, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  return p;
}
inline rte_mempool* attach_pool() {
  static rte_mempool* p = rte_pktmbuf_pool_create("tcp_att_pool", 32767, 256, 0, 0, 0);
  return p;
}

// A segment as seen on the wire.
struct Seg {
  uint32_t src_ip = 0, dst_ip = 0;
  uint16_t src_port = 0, dst_port = 0;
  uint32_t seq = 0, ack = 0;
  uint8_t flags = 0;
  uint16_t window = 0;
  uint16_t ip_id = 0;
  bool df = false;
  net::TcpOptions opts;
  std::string payload;
  bool has(uint8_t f) const { return (flags & f) == f; }
};

// Parses a frame the engine emitted; fails the test if it is malformed (bad
// checksums included): classify_frame is the receiver's own check.
inline Seg parse_emitted(rte_mbuf* m) {
  Seg s;
  net::Classified k = net::classify_frame(m);
  EXPECT_EQ(k.kind, net::FrameKind::tcp) << "emitted frame does not classify as TCP: "
                                         << (k.kind == net::FrameKind::drop ? net::to_string(k.reason) : "");
  if (k.kind != net::FrameKind::tcp) return s;
  std::vector<uint8_t> bytes = bytes_of(m);
  const auto* ip = reinterpret_cast<const rte_ipv4_hdr*>(bytes.data() + m->l2_len);
  const auto* th = reinterpret_cast<const rte_tcp_hdr*>(bytes.data() + m->l2_len + m->l3_len);
  s.src_ip = rte_be_to_cpu_32(ip->src_addr);
  s.dst_ip = rte_be_to_cpu_32(ip->dst_addr);
  s.ip_id = rte_be_to_cpu_16(ip->packet_id);
  s.df = rte_be_to_cpu_16(ip->fragment_offset) & RTE_IPV4_HDR_DF_FLAG;
  s.src_port = rte_be_to_cpu_16(th->src_port);
  s.dst_port = rte_be_to_cpu_16(th->dst_port);
  s.seq = rte_be_to_cpu_32(th->sent_seq);
  s.ack = rte_be_to_cpu_32(th->recv_ack);
  s.flags = th->tcp_flags;
  s.window = rte_be_to_cpu_16(th->rx_win);
  net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), m->l4_len - sizeof(rte_tcp_hdr), s.opts);
  const size_t off = m->l2_len + m->l3_len + m->l4_len;
  s.payload.assign(reinterpret_cast<const char*>(bytes.data() + off), bytes.size() - off);
  return s;
}

struct Flow {
  uint32_t local_ip = 0xC6120002;   // 198.18.0.2, the target
  uint32_t remote_ip = 0xC6120001;  // 198.18.0.1, the peer
  uint16_t local_port = 5000;
  uint16_t remote_port = 40000;
  std::array<uint8_t, 6> local_mac{0x02, 0, 0, 0, 0, 0x02};
  std::array<uint8_t, 6> remote_mac{0x02, 0, 0, 0, 0, 0x01};
};

// A frame from the peer to the target, classified as the worker would.
inline rte_mbuf* peer_frame(const Flow& f, uint32_t seq, uint32_t ack, uint8_t flags, uint16_t window,
                            const net::TcpOptions& opts, const std::string& payload) {
  rte_mbuf* m = rte_pktmbuf_alloc(pool());
  uint8_t optbuf[net::kMaxTcpOptionBytes];
  const size_t optlen = net::write_tcp_options(optbuf, opts);
  const size_t l4 = sizeof(rte_tcp_hdr) + optlen;
  const size_t total = sizeof(rte_ether_hdr) + sizeof(rte_ipv4_hdr) + l4 + payload.size();
  auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, static_cast<uint16_t>(total)));
  if (p == nullptr) {
    ADD_FAILURE() << "frame too large for one mbuf";
    return m;
  }
  std::memset(p, 0, total);
  auto* eth = reinterpret_cast<rte_ether_hdr*>(p);
  std::memcpy(eth->dst_addr.addr_bytes, f.local_mac.data(), 6);
  std::memcpy(eth->src_addr.addr_bytes, f.remote_mac.data(), 6);
  eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
  auto* ip = reinterpret_cast<rte_ipv4_hdr*>(eth + 1);
  ip->version_ihl = RTE_IPV4_VHL_DEF;
  ip->total_length = rte_cpu_to_be_16(static_cast<uint16_t>(sizeof(rte_ipv4_hdr) + l4 + payload.size()));
  ip->time_to_live = 64;
  ip->next_proto_id = IPPROTO_TCP;
  ip->src_addr = rte_cpu_to_be_32(f.remote_ip);
  ip->dst_addr = rte_cpu_to_be_32(f.local_ip);
  auto* th = reinterpret_cast<rte_tcp_hdr*>(ip + 1);
  th->src_port = rte_cpu_to_be_16(f.remote_port);
  th->dst_port = rte_cpu_to_be_16(f.local_port);
  th->sent_seq = rte_cpu_to_be_32(seq);
  th->recv_ack = rte_cpu_to_be_32(ack);
  th->data_off = static_cast<uint8_t>((l4 / 4) << 4);
  th->tcp_flags = flags;
  th->rx_win = rte_cpu_to_be_16(window);
  std::memcpy(th + 1, optbuf, optlen);
  std::memcpy(reinterpret_cast<uint8_t*>(th) + l4, payload.data(), payload.size());
  m->l2_len = sizeof(rte_ether_hdr);
  m->l3_len = sizeof(rte_ipv4_hdr);
  m->l4_len = static_cast<uint16_t>(l4);
  net::finalize_tx_checksums(m, net::TxChecksumCaps{});
  m->ol_flags = 0;
  net::Classified k = net::classify_frame(m);
  EXPECT_EQ(k.kind, net::FrameKind::tcp);
  return m;
}

// A host request the test owns: one NetBufferList with one NetBuffer.
struct Request {
  NetBufferList nbl;
  NetBuffer nb;
  std::vector<uint8_t> data;
  uint8_t* original = nullptr;

  static std::unique_ptr<Request> with(const std::string& bytes, uint32_t flags = 0) {
    auto r = std::make_unique<Request>();
    r->data.assign(bytes.begin(), bytes.end());
    r->nb.data = r->data.data();
    r->nb.data_length = static_cast<uint32_t>(r->data.size());
    r->nbl.first = &r->nb;
    r->nbl.flags = flags;
    r->original = r->data.data();
    return r;
  }
  static std::unique_ptr<Request> buffer(uint32_t size, uint32_t flags = 0) {
    return with(std::string(size, '\0'), flags);
  }
  uint32_t advanced() const { return static_cast<uint32_t>(nb.data - original); }
  std::string filled() const { return std::string(data.begin(), data.begin() + nbl.bytes_transferred); }
};

// Everything the engine told the host, in order.
struct HostRecord {
  enum Kind { offload, send, receive, disconnect, terminate, event, indicate };
  HostRecord(Kind k, Status s = Status::pending, uint64_t b = 0, NetBufferList* n = nullptr)
      : kind(k), status(s), bytes(b), nbl(n) {}
  Kind kind;
  Status status = Status::pending;
  uint64_t bytes = 0;
  NetBufferList* nbl = nullptr;
  int batch = 0;  // requests completed by one callback share a batch number
  EventKind event_kind = EventKind::disconnect;
  RetrieveReason reason = RetrieveReason::none;
  uint32_t value = 0;
  std::string data;
};

class RecordingHost : public HostCallbacks {
 public:
  std::vector<HostRecord> records;
  std::string indicated;  // bytes the host accepted by indication
  std::function<uint32_t(uint32_t offered)> accept = [](uint32_t offered) { return offered; };
  DelegatedState terminated;

  void offload_complete(ConnectionHandle, void*, Status s) override {
    records.emplace_back(HostRecord::offload, s);
  }
  void send_complete(ConnectionHandle, void*, NetBufferList* chain) override { chain_records(HostRecord::send, chain); }
  void receive_complete(ConnectionHandle, void*, NetBufferList* chain) override {
    chain_records(HostRecord::receive, chain);
  }
  IndicateResult receive_indicate(ConnectionHandle, void*, const uint8_t* data, uint32_t len, bool) override {
    const uint32_t n = accept(len);
    indicated.append(reinterpret_cast<const char*>(data), n);
    HostRecord r{HostRecord::indicate};
    r.bytes = n;
    r.value = len;
    records.push_back(r);
    return {n};
  }
  void disconnect_complete(ConnectionHandle, void*, NetBufferList* nbl) override {
    EXPECT_EQ(nbl->next, nullptr) << "C-14: a disconnect completion carries one request";
    HostRecord r{HostRecord::disconnect, nbl->status, nbl->bytes_transferred, nbl};
    records.push_back(r);
  }
  void terminate_complete(ConnectionHandle, void*, Status s, DelegatedState& d) override {
    records.emplace_back(HostRecord::terminate, s);
    terminated = std::move(d);
  }
  void event(ConnectionHandle, void*, EventKind k, RetrieveReason reason, uint32_t value) override {
    HostRecord r{HostRecord::event};
    r.event_kind = k;
    r.reason = reason;
    r.value = value;
    records.push_back(r);
  }

  std::vector<HostRecord> of(HostRecord::Kind k) const {
    std::vector<HostRecord> out;
    for (const auto& r : records)
      if (r.kind == k) out.push_back(r);
    return out;
  }
  int count_events(EventKind k) const {
    int n = 0;
    for (const auto& r : records) n += r.kind == HostRecord::event && r.event_kind == k;
    return n;
  }
  // Index of the first record matching, or -1.
  int index_of(std::function<bool(const HostRecord&)> pred) const {
    for (size_t i = 0; i < records.size(); ++i)
      if (pred(records[i])) return static_cast<int>(i);
    return -1;
  }

 private:
  int batch_ = 0;
  void chain_records(HostRecord::Kind k, NetBufferList* chain) {
    ++batch_;
    for (NetBufferList* n = chain; n != nullptr; n = n->next) {
      HostRecord r{k, n->status, n->bytes_transferred, n};
      r.batch = batch_;
      records.push_back(r);
    }
  }
};

class CaptureWire : public tcp::TxSink {
 public:
  std::deque<rte_mbuf*> frames;
  void transmit(rte_mbuf** pkts, uint16_t n) override {
    for (uint16_t i = 0; i < n; ++i) frames.push_back(pkts[i]);
  }
  ~CaptureWire() override { clear(); }
  void clear() {
    for (rte_mbuf* m : frames) rte_pktmbuf_free(m);
    frames.clear();
  }
};

// Default state: ESTABLISHED, our ISS region at 1000, the peer's at 5000,
// MSS 1460, window scaling 7 both ways, timestamps and SACK.
inline OffloadState default_state(const Flow& f = Flow{}) {
  OffloadState s;
  s.constant.local_ip = f.local_ip;
  s.constant.remote_ip = f.remote_ip;
  s.constant.local_port = f.local_port;
  s.constant.remote_port = f.remote_port;
  s.constant.remote_mss = 1460;
  s.constant.window_scaling = true;
  s.constant.snd_wscale = 7;
  s.constant.rcv_wscale = 7;
  s.constant.timestamps = true;
  s.constant.sack = true;
  s.cached.initial_rcv_wnd = 65536;
  s.cached.congestion = CongestionAlgorithm::newreno;
  s.cached.nagle = false;
  s.delegated.state = TcpState::established;
  s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = 1000;
  s.delegated.snd_wl1 = 5000;
  s.delegated.snd_wl2 = 1000;
  s.delegated.snd_wnd = 512 << 7;  // 64 KiB
  s.delegated.rcv_nxt = 5000;
  s.delegated.ts_recent = 100;
  s.path.local_mac = f.local_mac;
  s.path.next_hop_mac = f.remote_mac;
  s.path.path_mtu = 1500;
  return s;
}

class EngineTest : public ::testing::Test {
 public:
  static tcp::EngineConfig config(const std::string& name) {
    tcp::EngineConfig cfg;
    cfg.name = name;
    cfg.max_connections = 64;
    cfg.time_wait_entries = 64;
    cfg.header_pool = header_pool();
    cfg.attach_pool = attach_pool();
    return cfg;
  }

 protected:
  Flow flow;
  RecordingHost host;
  CaptureWire wire;
  std::unique_ptr<tcp::Engine> engine;
  ConnectionHandle h;
  uint64_t now_us = 1'000'000;
  uint32_t peer_ts = 200;
  uint32_t peer_seq = 5000;  // the peer's snd.nxt, kept by tests that send data

  void SetUp() override {
    static int n = 0;
    engine = std::make_unique<tcp::Engine>(config("e" + std::to_string(n++)), host, wire);
    engine->poll(now_us);
  }
  void TearDown() override {
    engine.reset();
    wire.clear();
  }

  // Offloads `s` and checks the completion.
  ConnectionHandle offload(const OffloadState& s, Status expect = Status::success) {
    ConnectionHandle out;
    const size_t before = host.records.size();
    engine->initiate_offload(s, nullptr, &out);
    engine->poll(now_us);
    EXPECT_GT(host.records.size(), before);
    if (host.records.size() > before) {
      EXPECT_EQ(host.records[before].kind, HostRecord::offload);
      EXPECT_EQ(host.records[before].status, expect) << to_string(host.records[before].status);
    }
    return out;
  }
  void offload_default() { h = offload(default_state(flow)); }

  // The peer sends a segment; timestamps ride on it when negotiated.
  void peer(uint32_t seq, uint32_t ack, uint8_t flags, const std::string& payload = "", uint16_t window = 512,
            bool with_ts = true) {
    net::TcpOptions o;
    if (with_ts) {
      o.has_timestamp = true;
      o.ts_val = ++peer_ts;
      o.ts_ecr = 1;
    }
    peer_opts(seq, ack, flags, o, payload, window);
  }
  void peer_opts(uint32_t seq, uint32_t ack, uint8_t flags, const net::TcpOptions& o, const std::string& payload,
                 uint16_t window = 512) {
    rte_mbuf* m = peer_frame(flow, seq, ack, flags, window, o, payload);
    rte_mbuf* unmatched[1];
    const uint16_t n = engine->input(&m, 1, now_us, unmatched);
    for (uint16_t i = 0; i < n; ++i) {
      unmatched_count++;
      rte_pktmbuf_free(unmatched[i]);
    }
  }
  // Lets time pass (and timers run), `ms` milliseconds in 1 ms steps.
  void advance(uint64_t ms) {
    for (uint64_t i = 0; i < ms; ++i) {
      now_us += 1000;
      engine->poll(now_us);
    }
  }
  // The next segment the engine emitted.
  Seg next() {
    engine->poll(now_us);
    if (wire.frames.empty()) {
      ADD_FAILURE() << "expected a segment, the engine sent none";
      return Seg{};
    }
    rte_mbuf* m = wire.frames.front();
    wire.frames.pop_front();
    Seg s = parse_emitted(m);
    rte_pktmbuf_free(m);
    return s;
  }
  std::vector<Seg> drain() {
    engine->poll(now_us);
    std::vector<Seg> out;
    while (!wire.frames.empty()) out.push_back(next());
    return out;
  }
  void expect_silence() {
    engine->poll(now_us);
    EXPECT_TRUE(wire.frames.empty()) << wire.frames.size() << " unexpected segment(s)";
    wire.clear();
  }
  const tcp::Tcb& tcb() { return *engine->find(h); }

  int unmatched_count = 0;
};

}  // namespace chimney::test
