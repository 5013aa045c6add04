// The placement function (lib/dataplane/rss.hpp) and software steering
// between workers (lib/dataplane/steer.hpp).
#include <gtest/gtest.h>

#include <rte_ring.h>
#include <rte_thash.h>

#include <array>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "dataplane/dataplane.hpp"
#include "dataplane/rss.hpp"
#include "dataplane/steer.hpp"
#include "tcp/harness.hpp"

namespace chimney::dataplane {
namespace {

constexpr uint32_t ip4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return (uint32_t{a} << 24) | (uint32_t{b} << 16) | (uint32_t{c} << 8) | d;
}

// Microsoft's RSS verification suite ("Verifying the RSS Hash Calculation"),
// IPv4 with TCP, with its key: what a NIC computes for these frames. It pins
// the input order (source address, destination address, source port,
// destination port) and byte order the workers and the control plane use.
TEST(Rss, MatchesTheToeplitzVerificationSuite) {
  alignas(4) const uint8_t key[kRssKeySize] = {
      0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
      0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
      0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};
  struct Vector {
    uint32_t dst_ip;
    uint16_t dst_port;
    uint32_t src_ip;
    uint16_t src_port;
    uint32_t hash;
  };
  const Vector vectors[] = {
      {ip4(161, 142, 100, 80), 1766, ip4(66, 9, 149, 187), 2794, 0x51ccc178},
      {ip4(65, 69, 140, 83), 4739, ip4(199, 92, 111, 2), 14230, 0xc626b0ea},
      {ip4(12, 22, 207, 184), 38024, ip4(24, 19, 198, 95), 12898, 0x5c2b394a},
      {ip4(209, 142, 163, 6), 2217, ip4(38, 27, 205, 30), 48228, 0xafc7327f},
      {ip4(202, 188, 127, 2), 1303, ip4(153, 39, 163, 191), 44251, 0x10e828a2},
  };
  for (const Vector& v : vectors)
    EXPECT_EQ(toeplitz_ipv4_tcp(key, v.src_ip, v.dst_ip, v.src_port, v.dst_port), v.hash) << std::hex << v.hash;
}

// The workers' fast form (rte_softrss_be, key converted at compile time)
// agrees with DPDK's reference rte_softrss on the key the ports are
// programmed with, and with rte_softrss_be on a key rte_convert_rss_key made.
TEST(Rss, FastHashAgreesWithDpdk) {
  alignas(4) uint8_t converted[kRssKeySize];
  rte_convert_rss_key(reinterpret_cast<const uint32_t*>(kSymmetricRssKey), reinterpret_cast<uint32_t*>(converted),
                      kRssKeySize);
  std::mt19937_64 rng(6);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t r = rng();
    const uint32_t a = static_cast<uint32_t>(r), b = static_cast<uint32_t>(r >> 32);
    const uint16_t pa = static_cast<uint16_t>(rng()), pb = static_cast<uint16_t>(rng());
    const uint32_t ref = toeplitz_ipv4_tcp(kSymmetricRssKey, a, b, pa, pb);
    ASSERT_EQ(rss_hash(a, b, pa, pb), ref);
    uint32_t tuple[RTE_THASH_V4_L4_LEN] = {a, b, (uint32_t{pa} << 16) | pb};
    ASSERT_EQ(rte_softrss_be(tuple, RTE_THASH_V4_L4_LEN, converted), ref);
  }
}

// Placement's per-frame form (the tuple folded to 16 bits, two tables) is
// the same function: for every fold value, and for random tuples.
TEST(Rss, FoldedTablesAgreeWithDpdk) {
  const Placement pl(2);
  for (uint32_t x = 0; x < 65536; ++x) {
    ASSERT_EQ(pl.hash(x, 0, 0, 0), toeplitz_ipv4_tcp(kSymmetricRssKey, x, 0, 0, 0)) << x;
    // the same fold from other halves: the high half of the source port word
    ASSERT_EQ(pl.hash(0, 0, static_cast<uint16_t>(x), 0), toeplitz_ipv4_tcp(kSymmetricRssKey, 0, 0, static_cast<uint16_t>(x), 0));
  }
  std::mt19937_64 rng(9);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t a = static_cast<uint32_t>(rng()), b = static_cast<uint32_t>(rng());
    const uint16_t pa = static_cast<uint16_t>(rng()), pb = static_cast<uint16_t>(rng());
    ASSERT_EQ(pl.hash(a, b, pa, pb), toeplitz_ipv4_tcp(kSymmetricRssKey, a, b, pa, pb));
  }
}

// Both directions of a connection give one hash, hence one worker.
TEST(Rss, SymmetricKeyGivesBothDirectionsOneWorker) {
  std::mt19937_64 rng(7);
  for (unsigned workers = 1; workers <= 8; ++workers) {
    const Placement pl(workers);
    for (int i = 0; i < 20000; ++i) {
      const uint32_t a = static_cast<uint32_t>(rng()), b = static_cast<uint32_t>(rng());
      const uint16_t pa = static_cast<uint16_t>(rng()), pb = static_cast<uint16_t>(rng());
      ASSERT_EQ(rss_hash(a, b, pa, pb), rss_hash(b, a, pb, pa));
      const unsigned w = pl.owner(a, b, pa, pb);
      ASSERT_LT(w, workers);
      ASSERT_EQ(w, pl.owner(b, a, pb, pa));
    }
  }
}

TEST(Rss, RetaSpreadsEntriesRoundRobin) {
  for (unsigned workers = 1; workers <= 64; ++workers) {
    const Placement pl(workers);
    for (unsigned i = 0; i < Placement::kRetaSize; ++i) ASSERT_EQ(pl.reta()[i], i % workers);
    ASSERT_EQ(pl.owner_of_hash(0x12345680u), 0u);  // low 7 bits index the table
  }
  EXPECT_EQ(Placement(1).owner(1, 2, 3, 4), 0u);
}

// Shares of each worker over many connections: within 20 % of 1/workers
// (a few % in practice), for random tuples and for what chimney meets most:
// one peer, one service port, consecutive ephemeral ports.
TEST(Rss, SpreadsConnectionsEvenly) {
  std::mt19937_64 rng(8);
  const int n = 16384;
  for (unsigned workers : {2u, 3u, 4u, 8u}) {
    const Placement pl(workers);
    std::vector<int> random(workers), sequential(workers), sequential_remote(workers);
    for (int i = 0; i < n; ++i) {
      ++random[pl.owner(static_cast<uint32_t>(rng()), static_cast<uint32_t>(rng()), static_cast<uint16_t>(rng()),
                        static_cast<uint16_t>(rng()))];
      // our CONNECTs: ephemeral local ports from 49152
      ++sequential[pl.owner(ip4(198, 18, 0, 2), ip4(198, 18, 0, 1), static_cast<uint16_t>(49152 + i), 7000)];
      // a LISTEN: the peer's ephemeral ports (Linux starts at 32768)
      ++sequential_remote[pl.owner(ip4(198, 18, 0, 2), ip4(198, 18, 0, 1), 7000, static_cast<uint16_t>(32768 + i))];
    }
    const double fair = static_cast<double>(n) / workers;
    for (unsigned w = 0; w < workers; ++w) {
      EXPECT_NEAR(random[w], fair, 0.2 * fair) << workers << " workers, worker " << w;
      EXPECT_NEAR(sequential[w], fair, 0.2 * fair) << workers << " workers, worker " << w;
      EXPECT_NEAR(sequential_remote[w], fair, 0.2 * fair) << workers << " workers, worker " << w;
    }
  }
}

// Small runs too: 16 consecutive ephemeral ports reach both of 2 workers.
TEST(Rss, SixteenConsecutivePortsReachTwoWorkers) {
  const Placement pl(2);
  for (uint16_t base : {uint16_t{49152}, uint16_t{32768}, uint16_t{40000}, uint16_t{60000}}) {
    std::array<int, 2> seen{};
    for (uint16_t i = 0; i < 16; ++i) ++seen[pl.owner(ip4(198, 18, 0, 2), ip4(198, 18, 0, 1), base + i, 7000)];
    EXPECT_GE(seen[0], 4) << base;
    EXPECT_GE(seen[1], 4) << base;
  }
}

TEST(Rss, FrameOwnerFromHeadersOrFromTheDeviceHash) {
  test::Flow f;
  const Placement pl(4);
  for (uint16_t port = 5000; port < 5100; ++port) {
    f.local_port = port;
    rte_mbuf* m = test::peer_frame(f, 1, 1, test::ACK, 100, {}, "");
    const unsigned expect = pl.owner(f.local_ip, f.remote_ip, f.local_port, f.remote_port);
    EXPECT_EQ(pl.owner_of_frame(m, false), expect);
    EXPECT_EQ(pl.owner_of_frame(m, true), expect);  // no RX_RSS_HASH flag: computed
    // A device that hashed with our key left the same value; a trusted
    // device hash is taken as it is.
    m->ol_flags |= RTE_MBUF_F_RX_RSS_HASH;
    m->hash.rss = rss_hash(f.remote_ip, f.local_ip, f.remote_port, f.local_port);
    EXPECT_EQ(pl.owner_of_frame(m, true), expect);
    m->hash.rss = (expect + 1) % 4;
    EXPECT_EQ(pl.owner_of_frame(m, true), (expect + 1) % 4);
    EXPECT_EQ(pl.owner_of_frame(m, false), expect);  // an untrusted one is not
    rte_pktmbuf_free(m);
  }
}

// ---------------------------------------------------------------------------
// Steering: two workers, one port, worker 1's engine owning a connection.

class SteeringTest : public ::testing::Test {
 protected:
  Dataplane dp;
  rte_ring* to_slow = nullptr;
  test::RecordingHost host[2];
  test::CaptureWire wire[2];
  std::unique_ptr<tcp::Engine> engine[2];
  std::unique_ptr<Steering> steer[2];
  uint64_t now_us = 1'000'000;

  void make(unsigned ring_size = 1024) {
    static int n = 0;
    ++n;
    dp.placement = Placement(2);
    dp.worker_lcores = {1, 2};
    dp.ports.resize(1);
    dp.counters = std::make_unique<Counters[]>(dp.slots() * dp.ports.size());
    dp.steer.assign(4, nullptr);
    for (unsigned from = 0; from < 2; ++from) {
      const std::string name = "t_steer" + std::to_string(n) + "_" + std::to_string(from);
      dp.steer[from * 2 + (1 - from)] = rte_ring_create(name.c_str(), ring_size, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
      ASSERT_NE(dp.steer[from * 2 + (1 - from)], nullptr);
    }
    to_slow = rte_ring_create(("t_slow" + std::to_string(n)).c_str(), 1024, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
    ASSERT_NE(to_slow, nullptr);
    for (unsigned w = 0; w < 2; ++w) {
      engine[w] = std::make_unique<tcp::Engine>(
          test::EngineTest::config("steer" + std::to_string(n) + "w" + std::to_string(w)), host[w], wire[w]);
      engine[w]->poll(now_us);
      steer[w] = std::make_unique<Steering>(dp, w, std::vector<tcp::Engine*>{engine[w].get()});
    }
  }
  void TearDown() override {
    for (auto& s : steer) s.reset();
    for (auto& e : engine) e.reset();
    for (rte_ring* r : dp.steer) {
      void* m = nullptr;
      while (r != nullptr && rte_ring_dequeue(r, &m) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(m));
      rte_ring_free(r);
    }
    void* m = nullptr;
    while (to_slow != nullptr && rte_ring_dequeue(to_slow, &m) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(m));
    rte_ring_free(to_slow);
  }
  // A flow of the test's addresses that worker `w` owns.
  test::Flow flow_of(unsigned w, uint16_t from_port = 5000) {
    test::Flow f;
    for (f.local_port = from_port; dp.placement.owner(f.local_ip, f.remote_ip, f.local_port, f.remote_port) != w;)
      ++f.local_port;
    return f;
  }
  Counters& counters(unsigned worker) { return dp.at(worker + 1, 0); }
};

TEST_F(SteeringTest, SegmentOfAnotherWorkersConnectionReachesItsEngine) {
  make();
  const test::Flow f = flow_of(1);
  ConnectionHandle h;
  engine[1]->initiate_offload(test::default_state(f), nullptr, &h);
  engine[1]->poll(now_us);
  ASSERT_EQ(host[1].of(test::HostRecord::offload).size(), 1u);

  net::TcpOptions ts;
  ts.has_timestamp = true;
  ts.ts_val = 300;
  ts.ts_ecr = 1;
  rte_mbuf* data = test::peer_frame(f, 5000, 1000, test::ACK | test::PSH, 512, ts, "hello");
  EXPECT_TRUE(steer[1]->keep(dp.ports[0], data));  // its owner keeps it
  // Worker 0 received it: staged, then handed over in the flush.
  EXPECT_FALSE(steer[0]->keep(dp.ports[0], data));
  steer[0]->flush(counters(0));
  EXPECT_EQ(counters(0).steered_out.get(), 1u);
  EXPECT_EQ(steer[0]->receive(now_us, to_slow), 0u);  // nothing for worker 0
  EXPECT_EQ(steer[1]->receive(now_us, to_slow), 1u);
  EXPECT_EQ(counters(1).steered_in.get(), 1u);
  EXPECT_EQ(host[1].indicated, "hello");  // worker 1's engine took the data
  EXPECT_EQ(rte_ring_count(to_slow), 0u);
  EXPECT_TRUE(host[0].records.empty());

  // A segment of no connection (a SYN) reaches the slow path through its
  // owner like any unmatched segment.
  test::Flow g = flow_of(1, static_cast<uint16_t>(f.local_port + 1));
  rte_mbuf* syn = test::peer_frame(g, 9000, 0, test::SYN, 512, {}, "");
  EXPECT_FALSE(steer[0]->keep(dp.ports[0], syn));
  steer[0]->flush(counters(0));
  EXPECT_EQ(steer[1]->receive(now_us, to_slow), 1u);
  EXPECT_EQ(rte_ring_count(to_slow), 1u);
  EXPECT_EQ(counters(1).to_slowpath.get(), 1u);
}

TEST_F(SteeringTest, OwnFramesStayAndBurstsGoOncePerOwner) {
  make();
  std::vector<rte_mbuf*> mine, theirs;
  test::Flow f;
  for (f.local_port = 6000; f.local_port < 6064; ++f.local_port) {
    rte_mbuf* m = test::peer_frame(f, 1, 1, test::ACK, 100, {}, "");
    if (steer[0]->keep(dp.ports[0], m)) mine.push_back(m);
    else theirs.push_back(m);
  }
  EXPECT_FALSE(mine.empty());
  EXPECT_FALSE(theirs.empty());
  steer[0]->flush(counters(0));
  EXPECT_EQ(counters(0).steered_out.get(), theirs.size());
  ASSERT_EQ(rte_ring_count(dp.steer_ring(0, 1)), theirs.size());
  // In order, as received.
  for (rte_mbuf* expect : theirs) {
    void* got = nullptr;
    ASSERT_EQ(rte_ring_sc_dequeue(dp.steer_ring(0, 1), &got), 0);
    EXPECT_EQ(got, expect);
    rte_pktmbuf_free(expect);
  }
  for (rte_mbuf* m : mine) {
    EXPECT_EQ(dp.placement.owner_of_frame(m, false), 0u);
    rte_pktmbuf_free(m);
  }
}

TEST_F(SteeringTest, FullRingDropsAreCountedAndFreed) {
  make(4);  // holds 3
  const unsigned before = rte_mempool_avail_count(test::pool());
  const test::Flow f = flow_of(1);
  for (int i = 0; i < 5; ++i) {
    rte_mbuf* m = test::peer_frame(f, 1, 1, test::ACK, 100, {}, "");
    ASSERT_FALSE(steer[0]->keep(dp.ports[0], m));
  }
  steer[0]->flush(counters(0));
  EXPECT_EQ(counters(0).steered_out.get(), 3u);
  EXPECT_EQ(counters(0).drops[static_cast<size_t>(net::DropReason::steer_ring_full)].get(), 2u);
  EXPECT_EQ(rte_mempool_avail_count(test::pool()), before - 3);  // the 2 dropped are back
}

}  // namespace
}  // namespace chimney::dataplane
