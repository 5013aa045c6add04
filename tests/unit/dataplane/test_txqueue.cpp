// The TX staging queue (lib/dataplane/port.hpp): what a full device queue
// refuses stays staged, in order, for the next flush; only what is pushed
// onto a whole refused staging area is dropped. The device is an ethdev over
// rte_rings (net_ring) whose TX ring the test fills and empties.
#include <gtest/gtest.h>

#include <rte_cycles.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#include <cstdint>
#include <string>

#include "dataplane/counters.hpp"
#include "dataplane/port.hpp"

namespace chimney::dataplane {
namespace {

constexpr unsigned kRing = 32;

class TxQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int n = 0;
    const std::string name = "txq" + std::to_string(n++);
    pool = rte_pktmbuf_pool_create((name + "p").c_str(), 2047, 0, 0, 256, SOCKET_ID_ANY);
    ASSERT_NE(pool, nullptr);
    rx = rte_ring_create((name + "rx").c_str(), kRing, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ | RING_F_EXACT_SZ);
    tx = rte_ring_create((name + "tx").c_str(), kRing, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ | RING_F_EXACT_SZ);
    ASSERT_NE(rx, nullptr);
    ASSERT_NE(tx, nullptr);
    const int id = rte_eth_from_rings(name.c_str(), &rx, 1, &tx, 1, SOCKET_ID_ANY);
    ASSERT_GE(id, 0);
    port = static_cast<uint16_t>(id);
    rte_eth_conf conf{};
    ASSERT_EQ(rte_eth_dev_configure(port, 1, 1, &conf), 0);
    ASSERT_EQ(rte_eth_rx_queue_setup(port, 0, kRing, SOCKET_ID_ANY, nullptr, pool), 0);
    ASSERT_EQ(rte_eth_tx_queue_setup(port, 0, kRing, SOCKET_ID_ANY, nullptr), 0);
    ASSERT_EQ(rte_eth_dev_start(port), 0);
    q.bind(port, 0, &counters);
  }
  void TearDown() override {
    q.discard();
    rte_mbuf* m = nullptr;
    while (rte_ring_dequeue(tx, reinterpret_cast<void**>(&m)) == 0) rte_pktmbuf_free(m);
    rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
    rte_ring_free(rx);
    rte_ring_free(tx);
    rte_mempool_free(pool);
  }
  rte_mbuf* frame(uint32_t n) {
    rte_mbuf* m = rte_pktmbuf_alloc(pool);
    *rte_pktmbuf_mtod(m, uint32_t*) = n;
    m->data_len = m->pkt_len = 60;
    return m;
  }
  // Takes what the "device" sent; checks they are numbered on from `next`.
  unsigned take(uint32_t& next) {
    unsigned got = 0;
    rte_mbuf* m = nullptr;
    while (rte_ring_dequeue(tx, reinterpret_cast<void**>(&m)) == 0) {
      EXPECT_EQ(*rte_pktmbuf_mtod(m, uint32_t*), next) << "frames leave in the order they were pushed";
      ++next;
      ++got;
      rte_pktmbuf_free(m);
    }
    return got;
  }
  uint64_t tx_full() const { return counters.drops[static_cast<size_t>(net::DropReason::tx_full)].get(); }

  rte_mempool* pool = nullptr;
  rte_ring* rx = nullptr;
  rte_ring* tx = nullptr;
  uint16_t port = 0;
  Counters counters;
  TxQueue q;
};

TEST_F(TxQueueTest, WhatTheDeviceRefusesGoesOnTheNextFlushInOrder) {
  for (uint32_t i = 0; i < 100; ++i) q.push(frame(i));
  EXPECT_EQ(q.flush(), 100 - kRing) << "the ring takes 32, the rest stay staged";
  uint32_t next = 0;
  EXPECT_EQ(take(next), kRing);
  for (uint32_t i = 100; i < 110; ++i) q.push(frame(i));  // behind the refused ones
  while (q.flush() != 0) take(next);
  take(next);
  EXPECT_EQ(next, 110u);
  EXPECT_EQ(counters.tx_packets.get(), 110u);
  EXPECT_EQ(counters.tx_bytes.get(), 110u * 60);
  EXPECT_EQ(tx_full(), 0u) << "nothing lost";
}

TEST_F(TxQueueTest, APushOntoAWholeRefusedStagingAreaIsDroppedAndCounted) {
  const uint32_t total = TxQueue::kCapacity + kRing + 5;
  for (uint32_t i = 0; i < total; ++i) q.push(frame(i));
  // The ring took kRing on the flush the full staging area forced; the
  // staging area filled again, refused whole, and the last 5 were dropped.
  EXPECT_EQ(tx_full(), 5u);
  uint32_t next = 0;
  while (q.flush() != 0) take(next);
  take(next);
  EXPECT_EQ(next, total - 5) << "the frames kept are the first ones, in order";
}

TEST_F(TxQueueTest, WhatTheQueueRefusesForAMillisecondIsDropped) {
  // A link that is down takes nothing: the frames must not hold their
  // memory (a send's, through attached buffers) for ever.
  const unsigned before = rte_mempool_avail_count(pool);
  for (uint32_t i = 0; i < 40; ++i) q.push(frame(i));
  EXPECT_EQ(q.flush(), 40 - kRing);
  EXPECT_EQ(q.flush(), 40 - kRing) << "the ring is still full: kept for now";
  rte_delay_us_block(2 * TxQueue::kRefusedForUs);
  EXPECT_EQ(q.flush(), 0u) << "refused for longer than kRefusedForUs: dropped";
  EXPECT_EQ(tx_full(), 40u - kRing);
  uint32_t next = 0;
  EXPECT_EQ(take(next), kRing);
  EXPECT_EQ(rte_mempool_avail_count(pool), before);
}

TEST_F(TxQueueTest, AQueueThatTakesSomeIsNotGivenUpOn) {
  for (uint32_t i = 0; i < 100; ++i) q.push(frame(i));
  uint32_t next = 0;
  while (q.flush() != 0) {
    rte_delay_us_block(TxQueue::kRefusedForUs / 2);
    take(next);  // the consumer is slow, but it takes
  }
  take(next);
  EXPECT_EQ(next, 100u);
  EXPECT_EQ(tx_full(), 0u);
}

TEST_F(TxQueueTest, DiscardFreesWhatIsStaged) {
  const unsigned before = rte_mempool_avail_count(pool);
  for (uint32_t i = 0; i < 40; ++i) q.push(frame(i));
  EXPECT_EQ(q.flush(), 40 - kRing);
  q.discard();
  EXPECT_EQ(tx_full(), 40u - kRing);
  uint32_t next = 0;
  take(next);
  EXPECT_EQ(rte_mempool_avail_count(pool), before) << "every frame back in the pool";
  EXPECT_EQ(q.flush(), 0u);
}

}  // namespace
}  // namespace chimney::dataplane
