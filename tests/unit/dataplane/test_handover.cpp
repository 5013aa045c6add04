// The handover of a connection from the slow path to the engine
// (SlowPath::hand_over, hand_over_input): segments that reach the slow path
// between the end of a handshake and the TCB's installation are kept and go
// to the owner worker's ops ring behind the offload, and the engine takes
// them. A slow path over a port without a device: frames go in through the
// to_slowpath ring and come out of the from_slowpath and ops rings.
#include <gtest/gtest.h>

#include <rte_cycles.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_ring.h>
#include <rte_tcp.h>

#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "dataplane/dataplane.hpp"
#include "dataplane/offload_ops.hpp"
#include "dataplane/slowpath.hpp"
#include "net/build.hpp"
#include "net/packet.hpp"
#include "tcp/engine.hpp"

namespace chimney::dataplane {
namespace {

const rte_ether_addr kOurMac{{0x02, 0x00, 0xc6, 0x12, 0x00, 0x01}};
const rte_ether_addr kPeerMac{{0x02, 0x00, 0xc6, 0x12, 0x00, 0x02}};
const net::Ipv4Addr kOurIp = *net::Ipv4Addr::parse("198.18.0.1");
const net::Ipv4Addr kPeerIp = *net::Ipv4Addr::parse("198.18.0.2");
constexpr uint16_t kListenPort = 7000;
constexpr uint16_t kPeerPort = 40000;
constexpr uint32_t kPeerIss = 0x10000000;

struct Host : HostCallbacks {
  std::vector<uint8_t> indicated;
  int offloads = 0;
  void offload_complete(ConnectionHandle, void*, Status s) override { offloads += s == Status::success; }
  void send_complete(ConnectionHandle, void*, NetBufferList*) override {}
  void receive_complete(ConnectionHandle, void*, NetBufferList*) override {}
  IndicateResult receive_indicate(ConnectionHandle, void*, const uint8_t* d, uint32_t n, bool) override {
    indicated.insert(indicated.end(), d, d + n);
    return {n};
  }
  void disconnect_complete(ConnectionHandle, void*, NetBufferList*) override {}
  void terminate_complete(ConnectionHandle, void*, Status, DelegatedState&) override {}
  void event(ConnectionHandle, void*, EventKind, RetrieveReason, uint32_t) override {}
};

struct Drop : tcp::TxSink {
  void transmit(rte_mbuf** pkts, uint16_t n) override { rte_pktmbuf_free_bulk(pkts, n); }
};

// A Dataplane of one port (no device) and one worker, and its slow path.
class Handover : public ::testing::Test {
 protected:
  void SetUp() override {
    static int n = 0;
    sfx_ = std::to_string(++n);
    Port port;
    port.config.address = *net::Ipv4Prefix::parse("198.18.0.1/24");
    port.mac = kOurMac;
    port.pool = rte_pktmbuf_pool_create(("ho_pool" + sfx_).c_str(), 511, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                        SOCKET_ID_ANY);
    ASSERT_NE(port.pool, nullptr);
    dp_.ports.push_back(port);
    dp_.port_index[0] = 0;
    dp_.worker_lcores = {1};
    dp_.placement = Placement(1);
    for (auto* v : {&dp_.to_slowpath, &dp_.from_slowpath, &dp_.ops, &dp_.notes})
      v->push_back(rte_ring_create(("ho_r" + sfx_ + "_" + std::to_string(rings_++)).c_str(), 1024, SOCKET_ID_ANY,
                                   RING_F_SP_ENQ | RING_F_SC_DEQ));
    dp_.op_pool = rte_mempool_create(("ho_ops" + sfx_).c_str(), 255, sizeof(OffloadOp), 0, 0, nullptr, nullptr,
                                     nullptr, nullptr, SOCKET_ID_ANY, 0);
    ASSERT_NE(dp_.op_pool, nullptr);
    dp_.counters = std::make_unique<Counters[]>(dp_.slots());
    slow_.emplace(dp_);
    // The slow path learns the peer's MAC from its ARP request.
    rte_mbuf* arp = net::build_arp_request(pool(), kPeerMac, kPeerIp, kOurIp);
    arp->port = 0;
    ASSERT_NE(net::classify_frame(arp).kind, net::FrameKind::drop);
    feed(arp);
    drain_tx();
  }

  void TearDown() override {
    engine_.reset();
    slow_.reset();
    drain_tx();
    void* rec = nullptr;
    while (rte_ring_dequeue(dp_.ops[0], &rec) == 0) {
      auto* op = static_cast<OffloadOp*>(rec);
      if (op->kind == OffloadOp::Kind::input) rte_pktmbuf_free(op->frame);
      rte_mempool_put(dp_.op_pool, rec);
    }
    for (auto* v : {&dp_.to_slowpath, &dp_.from_slowpath, &dp_.ops, &dp_.notes}) rte_ring_free((*v)[0]);
    rte_mempool_free(dp_.op_pool);
    rte_mempool_free(pool());
  }

  rte_mempool* pool() { return dp_.ports[0].pool; }
  Counters& main_counters() { return dp_.at(0, 0); }
  Counters& worker_counters() { return dp_.at(1, 0); }

  // A segment from the peer, classified as a worker leaves it.
  rte_mbuf* segment(uint32_t seq, uint32_t ack, uint8_t flags, uint32_t payload_len = 0, bool ts = true) {
    net::TcpFrameSpec spec;
    spec.src_mac = kPeerMac;
    spec.dst_mac = kOurMac;
    spec.src_ip = kPeerIp;
    spec.dst_ip = kOurIp;
    spec.src_port = kPeerPort;
    spec.dst_port = kListenPort;
    spec.seq = seq;
    spec.ack = ack;
    spec.flags = flags;
    spec.window = 65535;
    if (flags & RTE_TCP_SYN_FLAG) {
      spec.opts.has_mss = true;
      spec.opts.mss = 1460;
      spec.opts.has_wscale = true;
      spec.opts.wscale = 7;
    }
    if (ts) {
      spec.opts.has_timestamp = true;
      spec.opts.ts_val = 1000 + ts_++;
      spec.opts.ts_ecr = peer_ts_ecr_;
    }
    std::vector<uint8_t> payload(payload_len);
    for (uint32_t i = 0; i < payload_len; ++i) payload[i] = static_cast<uint8_t>(sent_++ * 7 + 1);
    rte_mbuf* m = net::build_tcp_frame(pool(), spec, payload.data(), static_cast<uint16_t>(payload_len));
    EXPECT_NE(m, nullptr);
    net::finalize_tx_checksums(m, net::TxChecksumCaps{});
    m->port = 0;
    EXPECT_EQ(net::classify_frame(m).kind, net::FrameKind::tcp);
    return m;
  }

  void feed(rte_mbuf* m) {
    ASSERT_EQ(rte_ring_sp_enqueue(dp_.to_slowpath[0], m), 0);
    slow_->poll(rte_get_tsc_cycles());
  }

  // What the slow path sent: its TCP segments (and our TSval, kept for the peer's TSecr).
  struct Sent {
    uint32_t seq, ack;
    uint8_t flags;
  };
  std::vector<Sent> drain_tx() {
    std::vector<Sent> out;
    void* p = nullptr;
    while (rte_ring_dequeue(dp_.from_slowpath[0], &p) == 0) {
      auto* m = static_cast<rte_mbuf*>(p);
      const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
      if (eth->ether_type == rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4)) {
        const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, sizeof(rte_ether_hdr) + sizeof(rte_ipv4_hdr));
        out.push_back({rte_be_to_cpu_32(th->sent_seq), rte_be_to_cpu_32(th->recv_ack), th->tcp_flags});
        net::TcpOptions o;
        net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), ((th->data_off >> 4) * 4) - 20, o);
        if (o.has_timestamp) peer_ts_ecr_ = o.ts_val;
      }
      rte_pktmbuf_free(m);
    }
    return out;
  }

  // The ops ring as a worker would dequeue it.
  std::vector<OffloadOp*> take_ops() {
    std::vector<OffloadOp*> out;
    void* p = nullptr;
    while (rte_ring_dequeue(dp_.ops[0], &p) == 0) out.push_back(static_cast<OffloadOp*>(p));
    return out;
  }

  // listen(), with an accept that posts the offload the way the control
  // server does (Server::start_offload): on the owner's ops ring, at once.
  void listen(uint16_t backlog = 4) {
    accepted_.reserve(4);  // the offload ops point into it
    ASSERT_EQ(slow_->listen(kListenPort, backlog, CachedState{}, [this](const OffloadState& st) {
      accepted_.push_back(st);
      void* rec = alloc_op_record(dp_);
      ASSERT_NE(rec, nullptr);
      auto* op = new (rec) OffloadOp{};
      op->kind = OffloadOp::Kind::offload;
      op->state = &accepted_.back();
      ASSERT_EQ(rte_ring_sp_enqueue(dp_.ops[0], op), 0);
    }), Status::success);
  }

  // The SYN and our SYN-ACK; returns our ISS.
  uint32_t syn() {
    feed(segment(kPeerIss, 0, RTE_TCP_SYN_FLAG));
    const auto out = drain_tx();
    EXPECT_EQ(out.size(), 1u);
    EXPECT_EQ(out.at(0).flags, RTE_TCP_SYN_FLAG | RTE_TCP_ACK_FLAG);
    return out.at(0).seq;
  }

  // The worker's side: the engine, and what it does with the ops.
  void run_worker(const std::vector<OffloadOp*>& ops) {
    if (!engine_) {
      tcp::EngineConfig cfg;
      cfg.name = "ho_e" + sfx_;
      cfg.max_connections = 8;
      cfg.time_wait_entries = 8;
      cfg.ooo_segments = 64;
      cfg.header_pool = pool();
      cfg.attach_pool = pool();
      engine_ = std::make_unique<tcp::Engine>(cfg, host_, wire_);
    }
    const uint64_t now_us = rte_get_tsc_cycles() / (rte_get_tsc_hz() / 1'000'000);
    for (OffloadOp* op : ops) {
      if (op->kind == OffloadOp::Kind::offload) {
        ConnectionHandle h;
        engine_->initiate_offload(*op->state, nullptr, &h);
      } else {
        engine_->poll(now_us);
        hand_over_input(*engine_, op->frame, now_us, worker_counters());
      }
      rte_mempool_put(dp_.op_pool, op);
    }
    engine_->poll(now_us);
  }

  Dataplane dp_;
  std::optional<SlowPath> slow_;
  std::vector<OffloadState> accepted_;
  Host host_;
  Drop wire_;
  std::unique_ptr<tcp::Engine> engine_;
  std::string sfx_;
  int rings_ = 0;
  uint32_t ts_ = 0;
  uint32_t peer_ts_ecr_ = 0;
  uint32_t sent_ = 0;
};

// RFC 9293 §3.10.7.4 in SYN-RECEIVED: the final ACK carries data. It
// completes the handshake, and the segment goes on the ops ring behind the
// offload; the engine, with the connection installed, takes the data.
TEST_F(Handover, DataOnTheFinalAckCompletesTheHandshakeAndReachesTheEngine) {
  listen();
  const uint32_t iss = syn();
  feed(segment(kPeerIss + 1, iss + 1, RTE_TCP_ACK_FLAG | RTE_TCP_PSH_FLAG, 100));
  ASSERT_EQ(accepted_.size(), 1u);
  EXPECT_EQ(accepted_[0].delegated.rcv_nxt, kPeerIss + 1);  // the data is not in the state: the engine takes it
  auto ops = take_ops();
  ASSERT_EQ(ops.size(), 2u);
  EXPECT_EQ(ops[0]->kind, OffloadOp::Kind::offload);
  EXPECT_EQ(ops[1]->kind, OffloadOp::Kind::input);
  EXPECT_EQ(slow_->handshake_counters().parked, 1u);
  EXPECT_EQ(main_counters().handshake_parked.get(), 1u);
  run_worker(ops);
  EXPECT_EQ(host_.offloads, 1);
  EXPECT_EQ(host_.indicated.size(), 100u);
  EXPECT_EQ(worker_counters().handshake_parked_delivered.get(), 1u);
  EXPECT_EQ(worker_counters().handshake_parked_dropped.get(), 0u);
}

// A pure final ACK has nothing for the engine: nothing is kept.
TEST_F(Handover, APureFinalAckIsNotKept) {
  listen();
  const uint32_t iss = syn();
  feed(segment(kPeerIss + 1, iss + 1, RTE_TCP_ACK_FLAG));
  ASSERT_EQ(accepted_.size(), 1u);
  auto ops = take_ops();
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0]->kind, OffloadOp::Kind::offload);
  EXPECT_EQ(slow_->handshake_counters().parked, 0u);
  run_worker(ops);
}

// Segments that raced the installation (offloading phase) follow the
// offload in arrival order, up to the bound; beyond it they are dropped
// and counted.
TEST_F(Handover, LateSegmentsFollowTheOffloadInOrderUpToTheBound) {
  listen();
  const uint32_t iss = syn();
  feed(segment(kPeerIss + 1, iss + 1, RTE_TCP_ACK_FLAG));
  const unsigned extra = 4;
  uint32_t seq = kPeerIss + 1;
  for (unsigned i = 0; i < SlowPath::kParkedPerHandshake + extra; ++i) {
    feed(segment(seq, iss + 1, RTE_TCP_ACK_FLAG, 10));
    seq += 10;
  }
  EXPECT_EQ(slow_->handshake_counters().parked, SlowPath::kParkedPerHandshake);
  EXPECT_EQ(slow_->handshake_counters().parked_dropped, extra);
  EXPECT_EQ(main_counters().handshake_parked_dropped.get(), extra);
  auto ops = take_ops();
  ASSERT_EQ(ops.size(), 1u + SlowPath::kParkedPerHandshake);
  EXPECT_EQ(ops[0]->kind, OffloadOp::Kind::offload);
  for (size_t i = 1; i < ops.size(); ++i) {
    ASSERT_EQ(ops[i]->kind, OffloadOp::Kind::input);
    const auto* th = rte_pktmbuf_mtod_offset(ops[i]->frame, const rte_tcp_hdr*, ops[i]->frame->l2_len + ops[i]->frame->l3_len);
    EXPECT_EQ(rte_be_to_cpu_32(th->sent_seq), kPeerIss + 1 + 10 * (i - 1));  // arrival order
  }
  run_worker(ops);
  EXPECT_EQ(host_.indicated.size(), 10u * SlowPath::kParkedPerHandshake);
  EXPECT_EQ(worker_counters().handshake_parked_delivered.get(), SlowPath::kParkedPerHandshake);
}

// The offload never came (or failed): the engine has no connection for
// what was kept; the worker frees it and counts it.
TEST_F(Handover, WithoutTheConnectionTheEngineDropsWhatWasKept) {
  ASSERT_EQ(slow_->listen(kListenPort, 4, CachedState{}, [](const OffloadState&) {}), Status::success);
  const uint32_t iss = syn();
  const unsigned free_before = rte_mempool_avail_count(pool());
  feed(segment(kPeerIss + 1, iss + 1, RTE_TCP_ACK_FLAG | RTE_TCP_FIN_FLAG, 50));
  auto ops = take_ops();
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0]->kind, OffloadOp::Kind::input);
  run_worker(ops);
  EXPECT_EQ(worker_counters().handshake_parked_dropped.get(), 1u);
  EXPECT_EQ(worker_counters().handshake_parked_delivered.get(), 0u);
  EXPECT_EQ(rte_mempool_avail_count(pool()), free_before);  // the frame went back
}

// A SYN in the offloading phase is no segment of the connection: dropped as before.
TEST_F(Handover, ASynWhileHandingOverIsNotKept) {
  listen();
  const uint32_t iss = syn();
  feed(segment(kPeerIss + 1, iss + 1, RTE_TCP_ACK_FLAG));
  feed(segment(kPeerIss, 0, RTE_TCP_SYN_FLAG));
  EXPECT_EQ(slow_->handshake_counters().parked, 0u);
  EXPECT_EQ(take_ops().size(), 1u);
}

}  // namespace
}  // namespace chimney::dataplane
