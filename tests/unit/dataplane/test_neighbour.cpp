// The ARP table: RFC 826 merge, resolution with queued packets, retries and
// giving up (RFC 1122 §2.3.2), ageing, and a full table that refuses.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dataplane/neighbour.hpp"
#include "test_util.hpp"

using chimney::dataplane::NeighbourTable;
using chimney::net::Ipv4Addr;

namespace {

struct RecordingSink : NeighbourTable::Sink {
  std::vector<Ipv4Addr> requests;
  std::vector<std::pair<rte_mbuf*, rte_ether_addr>> sent;
  std::vector<rte_mbuf*> dropped;
  void send_request(Ipv4Addr t) override { requests.push_back(t); }
  void transmit(rte_mbuf* m, const rte_ether_addr& dst) override { sent.emplace_back(m, dst); }
  void drop_unresolved(rte_mbuf* m) override { dropped.push_back(m); }
  ~RecordingSink() override {
    for (auto& [m, mac] : sent) rte_pktmbuf_free(m);
    for (auto* m : dropped) rte_pktmbuf_free(m);
  }
};

constexpr uint64_t kSecond = 1000;

NeighbourTable::Params params(const std::string& name, uint32_t entries = 64) {
  NeighbourTable::Params p;
  p.name = name;
  p.entries = entries;
  p.reachable_ticks = 60 * kSecond;
  p.retry_ticks = kSecond;
  p.max_probes = 3;
  return p;
}

Ipv4Addr ip(const char* s) { return *Ipv4Addr::parse(s); }
rte_ether_addr mac(uint8_t last) { return rte_ether_addr{{0x02, 0, 0, 0, 0, last}}; }
rte_mbuf* packet() { return rte_pktmbuf_alloc(chimney::test::pool()); }

}  // namespace

TEST(Neighbour, LearnsOnlyWhenAddressedToUsButMergesKnownEntries) {
  NeighbourTable t(params("n_merge"));
  RecordingSink sink;
  EXPECT_TRUE(t.learn(ip("198.18.0.1"), mac(1), 0, /*create=*/false, sink));
  EXPECT_FALSE(t.lookup(ip("198.18.0.1")).has_value());
  EXPECT_TRUE(t.learn(ip("198.18.0.1"), mac(1), 0, /*create=*/true, sink));
  ASSERT_TRUE(t.lookup(ip("198.18.0.1")).has_value());
  // RFC 826: a known sender is updated even by a frame not for us.
  EXPECT_TRUE(t.learn(ip("198.18.0.1"), mac(9), 5, /*create=*/false, sink));
  EXPECT_EQ(t.lookup(ip("198.18.0.1"))->addr_bytes[5], 9);
  EXPECT_EQ(t.size(), 1u);
}

TEST(Neighbour, ResolutionQueuesUntilTheAnswerThenSends) {
  NeighbourTable t(params("n_resolve"));
  RecordingSink sink;
  rte_ether_addr out{};
  rte_mbuf* a = packet();
  rte_mbuf* b = packet();
  EXPECT_EQ(t.resolve(ip("198.18.0.9"), 0, a, out, sink), NeighbourTable::Resolve::queued);
  EXPECT_EQ(t.resolve(ip("198.18.0.9"), 1, b, out, sink), NeighbourTable::Resolve::queued);
  ASSERT_EQ(sink.requests.size(), 1u) << "one request per address, not per packet";
  EXPECT_EQ(sink.requests[0], ip("198.18.0.9"));
  EXPECT_TRUE(sink.sent.empty());

  t.learn(ip("198.18.0.9"), mac(9), 2, /*create=*/false, sink);  // the reply merges
  ASSERT_EQ(sink.sent.size(), 2u);
  EXPECT_EQ(sink.sent[0].first, a);  // in order
  EXPECT_EQ(sink.sent[1].first, b);
  EXPECT_EQ(sink.sent[0].second.addr_bytes[5], 9);

  rte_mbuf* c = packet();
  EXPECT_EQ(t.resolve(ip("198.18.0.9"), 3, c, out, sink), NeighbourTable::Resolve::ready);
  EXPECT_EQ(out.addr_bytes[5], 9);
  rte_pktmbuf_free(c);  // ready: the caller keeps it
}

TEST(Neighbour, PendingQueueIsBounded) {
  NeighbourTable t(params("n_bound"));
  RecordingSink sink;
  rte_ether_addr out{};
  for (unsigned i = 0; i < NeighbourTable::kMaxPending; ++i)
    EXPECT_EQ(t.resolve(ip("198.18.0.5"), 0, packet(), out, sink), NeighbourTable::Resolve::queued);
  rte_mbuf* extra = packet();
  EXPECT_EQ(t.resolve(ip("198.18.0.5"), 0, extra, out, sink), NeighbourTable::Resolve::refused);
  rte_pktmbuf_free(extra);
}

TEST(Neighbour, RetriesOncePerIntervalThenGivesUpAndDropsQueued) {
  NeighbourTable t(params("n_giveup"));
  RecordingSink sink;
  rte_ether_addr out{};
  rte_mbuf* m = packet();
  t.resolve(ip("198.18.0.7"), 0, m, out, sink);
  EXPECT_EQ(sink.requests.size(), 1u);
  t.tick(kSecond / 2, sink);  // too soon
  EXPECT_EQ(sink.requests.size(), 1u);
  t.tick(kSecond, sink);
  EXPECT_EQ(sink.requests.size(), 2u);
  t.tick(2 * kSecond, sink);
  EXPECT_EQ(sink.requests.size(), 3u);
  EXPECT_TRUE(sink.dropped.empty());
  t.tick(3 * kSecond, sink);  // three requests unanswered
  EXPECT_EQ(sink.requests.size(), 3u);
  ASSERT_EQ(sink.dropped.size(), 1u);
  EXPECT_EQ(sink.dropped[0], m);
  EXPECT_EQ(t.size(), 0u);
}

TEST(Neighbour, StaleEntryIsStillUsedWhileReconfirmed) {
  NeighbourTable t(params("n_stale"));
  RecordingSink sink;
  rte_ether_addr out{};
  t.learn(ip("198.18.0.3"), mac(3), 0, true, sink);
  EXPECT_EQ(t.resolve(ip("198.18.0.3"), 10 * kSecond, nullptr, out, sink),
            NeighbourTable::Resolve::ready);
  EXPECT_TRUE(sink.requests.empty());
  EXPECT_EQ(t.resolve(ip("198.18.0.3"), 61 * kSecond, nullptr, out, sink),
            NeighbourTable::Resolve::ready);
  EXPECT_EQ(sink.requests.size(), 1u) << "an aged entry is confirmed again";
  EXPECT_EQ(t.resolve(ip("198.18.0.3"), 61 * kSecond + 1, nullptr, out, sink),
            NeighbourTable::Resolve::ready);
  EXPECT_EQ(sink.requests.size(), 1u) << "one request per retry interval";
  t.learn(ip("198.18.0.3"), mac(3), 62 * kSecond, false, sink);  // answered
  t.tick(70 * kSecond, sink);
  EXPECT_EQ(sink.requests.size(), 1u);
  EXPECT_TRUE(t.lookup(ip("198.18.0.3")).has_value());
  // Unanswered re-confirmation removes the entry.
  t.resolve(ip("198.18.0.3"), 200 * kSecond, nullptr, out, sink);
  for (uint64_t s = 201; s <= 204; ++s) t.tick(s * kSecond, sink);
  EXPECT_FALSE(t.lookup(ip("198.18.0.3")).has_value());
}

TEST(Neighbour, FullTableRefusesWithoutCrashing) {
  NeighbourTable t(params("n_full", 8));
  RecordingSink sink;
  for (uint8_t i = 1; i <= 8; ++i) {
    std::string a = "198.18.0." + std::to_string(i);
    EXPECT_TRUE(t.learn(*Ipv4Addr::parse(a), mac(i), 0, true, sink)) << a;
  }
  EXPECT_EQ(t.size(), 8u);
  EXPECT_FALSE(t.learn(ip("198.18.0.100"), mac(100), 0, true, sink));
  rte_ether_addr out{};
  rte_mbuf* m = packet();
  EXPECT_EQ(t.resolve(ip("198.18.0.101"), 0, m, out, sink), NeighbourTable::Resolve::refused);
  rte_pktmbuf_free(m);
  EXPECT_TRUE(t.lookup(ip("198.18.0.8")).has_value());
}
