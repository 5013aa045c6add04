// The impairment stage (net/impair.hpp): its spec syntax, that each fault does
// what it says, and that a seed replays the same faults.
#include <gtest/gtest.h>
#include <rte_mbuf.h>
#include <rte_ip.h>
#include <rte_tcp.h>

#include <cstdint>
#include <vector>

#include "net/build.hpp"
#include "net/impair.hpp"
#include "net/packet.hpp"
#include "test_util.hpp"

namespace chimney::net {
namespace {

using test::pool;

TEST(ImpairSpec, ParsesFractionsPercentagesAndDelay) {
  std::string error;
  auto s = ImpairSpec::parse("loss=5%,corrupt=0.01,duplicate=2%,reorder=10%,delay-us=250", error);
  ASSERT_TRUE(s) << error;
  EXPECT_DOUBLE_EQ(s->loss, 0.05);
  EXPECT_DOUBLE_EQ(s->corrupt, 0.01);
  EXPECT_DOUBLE_EQ(s->duplicate, 0.02);
  EXPECT_DOUBLE_EQ(s->reorder, 0.10);
  EXPECT_EQ(s->delay_us, 250u);
  EXPECT_TRUE(s->active());
  EXPECT_EQ(s->str(), "loss=5%,corrupt=1%,duplicate=2%,reorder=10%,delay-us=250");
  auto again = ImpairSpec::parse(s->str(), error);
  ASSERT_TRUE(again) << error;
  EXPECT_EQ(again->str(), s->str());
}

TEST(ImpairSpec, EmptyAndNoneAreInactive) {
  std::string error;
  for (const char* t : {"", "none"}) {
    auto s = ImpairSpec::parse(t, error);
    ASSERT_TRUE(s) << t;
    EXPECT_FALSE(s->active());
    EXPECT_EQ(s->str(), "none");
  }
}

TEST(ImpairSpec, RefusesBadItemsNamingThem) {
  for (const auto& [text, word] : std::vector<std::pair<const char*, const char*>>{
           {"loss=2", "loss"}, {"loss=-1%", "loss"}, {"loss=150%", "loss"}, {"loss=", "loss"},
           {"loss=5%%", "loss"}, {"jitter=5", "jitter"}, {"reorder", "reorder"},
           {"delay-us=abc", "delay-us"}, {"delay-us=-1", "delay-us"}, {"delay-us=20000000", "delay-us"}}) {
    std::string error;
    EXPECT_FALSE(ImpairSpec::parse(text, error)) << text;
    EXPECT_NE(error.find(word), std::string::npos) << text << ": " << error;
  }
}

// A valid TCP frame whose payload carries `id`, checksums in software.
rte_mbuf* frame(uint32_t id) {
  TcpFrameSpec spec;
  spec.src_ip = Ipv4Addr{0xC6120001};
  spec.dst_ip = Ipv4Addr{0xC6120002};
  spec.src_port = 1000;
  spec.dst_port = 2000;
  spec.seq = id;
  spec.flags = RTE_TCP_ACK_FLAG;
  uint8_t payload[100];
  for (size_t i = 0; i < sizeof payload; ++i) payload[i] = static_cast<uint8_t>(id + i);
  rte_mbuf* m = build_tcp_frame(pool(), spec, payload, sizeof payload);
  if (m != nullptr) finalize_tx_checksums(m, TxChecksumCaps{});
  return m;
}

uint32_t id_of(rte_mbuf* m) {
  const auto* tcp = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, sizeof(rte_ether_hdr) + sizeof(rte_ipv4_hdr));
  return rte_be_to_cpu_32(tcp->sent_seq);
}

// Runs `count` frames through a stage, one per call, `step_us` apart, and
// drains it; returns the frames that came out, in order (freed).
struct Outcome {
  std::vector<uint32_t> ids;
  unsigned bad_checksum = 0;
};
Outcome run_through(const ImpairSpec& spec, uint64_t seed, Impairment::Direction dir, unsigned count, ImpairStats& stats,
        uint64_t step_us = 1) {
  Outcome r;
  Impairment stage(spec, seed, dir, pool(), &stats);
  uint64_t now = 0;
  auto take = [&](rte_mbuf** out, uint16_t k) {
    for (uint16_t i = 0; i < k; ++i) {
      out[i]->ol_flags = 0;  // as received: checksums unknown
      if (classify_frame(out[i]).kind == FrameKind::drop) ++r.bad_checksum;
      else r.ids.push_back(id_of(out[i]));
      rte_pktmbuf_free(out[i]);
    }
  };
  for (unsigned i = 0; i < count; ++i, now += step_us) {
    rte_mbuf* in[1] = {frame(i)};
    EXPECT_NE(in[0], nullptr);
    rte_mbuf* out[8];
    take(out, stage.pass(in, 1, now, out, 8));
  }
  for (int spin = 0; stage.held() != 0 && spin < 100000; ++spin, now += step_us) {
    rte_mbuf* out[8];
    take(out, stage.pass(nullptr, 0, now, out, 8));
  }
  EXPECT_EQ(stage.held(), 0u);
  return r;
}

TEST(Impairment, LossDropsAboutTheShareAskedAndCountsIt) {
  ImpairSpec spec;
  spec.loss = 0.2;
  ImpairStats st;
  Outcome r = run_through(spec, 7, Impairment::Direction::rx, 5000, st);
  EXPECT_EQ(st.frames.get(), 5000u);
  EXPECT_EQ(r.ids.size() + st.lost.get(), 5000u);
  EXPECT_GT(st.lost.get(), 850u);  // 1000 expected; 5 sigma is about 140
  EXPECT_LT(st.lost.get(), 1150u);
  for (size_t i = 1; i < r.ids.size(); ++i) ASSERT_LT(r.ids[i - 1], r.ids[i]);  // order kept
}

TEST(Impairment, TheSameSeedReplaysTheSameFaults) {
  ImpairSpec spec;
  spec.loss = 0.1;
  spec.reorder = 0.1;
  spec.duplicate = 0.05;
  ImpairStats a, b, c;
  Outcome ra = run_through(spec, 42, Impairment::Direction::rx, 2000, a);
  Outcome rb = run_through(spec, 42, Impairment::Direction::rx, 2000, b);
  Outcome rc = run_through(spec, 43, Impairment::Direction::rx, 2000, c);
  EXPECT_EQ(ra.ids, rb.ids);
  EXPECT_NE(ra.ids, rc.ids);
  EXPECT_NE(Impairment::stage_seed(42, 0), Impairment::stage_seed(42, 1));
}

TEST(Impairment, DuplicatesFollowTheirFrame) {
  ImpairSpec spec;
  spec.duplicate = 0.5;
  ImpairStats st;
  Outcome r = run_through(spec, 3, Impairment::Direction::tx, 1000, st);
  EXPECT_GT(st.duplicated.get(), 400u);
  EXPECT_EQ(r.ids.size(), 1000u + st.duplicated.get());
  unsigned twins = 0;
  for (size_t i = 1; i < r.ids.size(); ++i) {
    ASSERT_LE(r.ids[i - 1], r.ids[i]);
    twins += r.ids[i - 1] == r.ids[i];
  }
  EXPECT_EQ(twins, st.duplicated.get());
}

TEST(Impairment, ReorderedFramesComeOutAfterTheNextOne) {
  ImpairSpec spec;
  spec.reorder = 0.1;
  ImpairStats st;
  Outcome r = run_through(spec, 11, Impairment::Direction::rx, 2000, st);
  ASSERT_EQ(r.ids.size(), 2000u);  // nothing lost
  unsigned inversions = 0;
  for (size_t i = 1; i < r.ids.size(); ++i) inversions += r.ids[i - 1] > r.ids[i];
  EXPECT_GT(st.reordered.get(), 120u);
  EXPECT_EQ(inversions, st.reordered.get());
}

TEST(Impairment, CorruptedFramesFailTheirChecksumInBothDirections) {
  for (auto dir : {Impairment::Direction::rx, Impairment::Direction::tx}) {
    ImpairSpec spec;
    spec.corrupt = 0.3;
    ImpairStats st;
    Outcome r = run_through(spec, 5, dir, 1000, st);
    EXPECT_GT(st.corrupted.get(), 200u);
    // One flipped bit is always caught by the IPv4 or TCP checksum (or makes
    // the headers malformed).
    EXPECT_EQ(r.bad_checksum, st.corrupted.get());
    EXPECT_EQ(r.ids.size() + r.bad_checksum, 1000u);
  }
}

TEST(Impairment, TransmitCorruptionLeavesTheSendersBufferAlone) {
  // A transmitted frame may point at the host's memory (zero-copy send): the
  // stage corrupts a copy.
  ImpairSpec spec;
  spec.corrupt = 1;
  ImpairStats st;
  Impairment stage(spec, 9, Impairment::Direction::tx, pool(), &st);
  rte_mbuf* m = frame(77);
  rte_mbuf_refcnt_update(m, 1);  // keep our own reference to see it afterwards
  const std::vector<uint8_t> before = test::bytes_of(m);
  rte_mbuf* out[2];
  rte_mbuf* in[1] = {m};
  ASSERT_EQ(stage.pass(in, 1, 0, out, 2), 1);
  EXPECT_NE(out[0], m);
  EXPECT_EQ(test::bytes_of(m), before);
  EXPECT_NE(test::bytes_of(out[0]), before);
  rte_pktmbuf_free(out[0]);
  rte_pktmbuf_free(m);
}

TEST(Impairment, DelayHoldsEveryFrameItsTime) {
  ImpairSpec spec;
  spec.delay_us = 500;
  ImpairStats st;
  Impairment stage(spec, 1, Impairment::Direction::rx, pool(), &st);
  rte_mbuf* in[2] = {frame(1), frame(2)};
  rte_mbuf* out[4];
  EXPECT_EQ(stage.pass(in, 2, 1000, out, 4), 0);
  EXPECT_EQ(stage.held(), 2u);
  EXPECT_EQ(stage.pass(nullptr, 0, 1499, out, 4), 0);
  ASSERT_EQ(stage.pass(nullptr, 0, 1500, out, 1), 1);  // `cap` is respected
  EXPECT_EQ(id_of(out[0]), 1u);
  rte_pktmbuf_free(out[0]);
  ASSERT_EQ(stage.pass(nullptr, 0, 1500, out, 4), 1);
  EXPECT_EQ(id_of(out[0]), 2u);
  rte_pktmbuf_free(out[0]);
  EXPECT_EQ(stage.held(), 0u);
}

TEST(Impairment, AFullDelayLineDropsAndCountsNeverBlocks) {
  ImpairSpec spec;
  spec.delay_us = 1000;
  ImpairStats st;
  const unsigned before = rte_mempool_in_use_count(pool());
  {
    Impairment stage(spec, 1, Impairment::Direction::rx, pool(), &st, 4);
    for (uint32_t i = 0; i < 6; ++i) {
      rte_mbuf* in[1] = {frame(i)};
      rte_mbuf* out[1];
      EXPECT_EQ(stage.pass(in, 1, 0, out, 1), 0);
    }
    EXPECT_EQ(stage.held(), 4u);
    EXPECT_EQ(st.overflow.get(), 2u);
  }  // frames still held are freed with the stage
  EXPECT_EQ(rte_mempool_in_use_count(pool()), before);
}

}  // namespace
}  // namespace chimney::net
