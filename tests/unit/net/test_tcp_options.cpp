// TCP options. Reference option lists are the bytes scapy 2.5.0 writes after
// the 20-byte TCP header: bytes(TCP(options=[...]))[20:].
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "net/tcp_options.hpp"

namespace chimney::net {
namespace {

// TCP(options=[('MSS', 1460), ('SAckOK', b''), ('Timestamp', (12345, 0)),
//              ('NOP', None), ('WScale', 7)]) -- the Linux SYN layout
const std::vector<uint8_t> kLinuxSyn = {
    0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x00,
    0x30, 0x39, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
};

// TCP(options=[('NOP', None), ('NOP', None), ('Timestamp', (100, 200)),
//              ('NOP', None), ('NOP', None), ('SAck', (5000, 6000, 7000, 8000))])
const std::vector<uint8_t> kTsTwoSack = {
    0x01, 0x01, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0xc8, 0x01, 0x01, 0x05, 0x12,
    0x00, 0x00, 0x13, 0x88, 0x00, 0x00, 0x17, 0x70, 0x00, 0x00, 0x1b, 0x58, 0x00, 0x00, 0x1f, 0x40,
};

// TCP(options=[('NOP', None), ('NOP', None),
//              ('Timestamp', (0xdeadbeef, 0x01020304)), ('NOP', None),
//              ('NOP', None), ('SAck', (1, 2, 3, 4, 5, 6))])
const std::vector<uint8_t> kTsThreeSack = {
    0x01, 0x01, 0x08, 0x0a, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x01, 0x01,
    0x05, 0x1a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03,
    0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x06,
};

bool parse(const std::vector<uint8_t>& bytes, TcpOptions& out) {
  return parse_tcp_options(bytes.data(), bytes.size(), out);
}

std::vector<uint8_t> write(const TcpOptions& opts) {
  std::array<uint8_t, kMaxTcpOptionBytes> buf{};
  const size_t n = write_tcp_options(buf.data(), opts);
  EXPECT_LE(n, kMaxTcpOptionBytes);
  EXPECT_EQ(n % 4, 0u);
  return {buf.begin(), buf.begin() + static_cast<long>(n)};
}

TEST(TcpOptionsParse, LinuxSyn) {
  TcpOptions o;
  ASSERT_TRUE(parse(kLinuxSyn, o));
  EXPECT_TRUE(o.has_mss);
  EXPECT_EQ(o.mss, 1460);
  EXPECT_TRUE(o.sack_permitted);
  EXPECT_TRUE(o.has_timestamp);
  EXPECT_EQ(o.ts_val, 12345u);
  EXPECT_EQ(o.ts_ecr, 0u);
  EXPECT_TRUE(o.has_wscale);
  EXPECT_EQ(o.wscale, 7);
  EXPECT_EQ(o.sack_count, 0);
}

TEST(TcpOptionsParse, SackBlocks) {
  TcpOptions o;
  ASSERT_TRUE(parse(kTsTwoSack, o));
  EXPECT_FALSE(o.has_mss);
  EXPECT_FALSE(o.has_wscale);
  EXPECT_FALSE(o.sack_permitted);
  EXPECT_TRUE(o.has_timestamp);
  EXPECT_EQ(o.ts_val, 100u);
  EXPECT_EQ(o.ts_ecr, 200u);
  ASSERT_EQ(o.sack_count, 2);
  EXPECT_EQ(o.sack[0].left, 5000u);
  EXPECT_EQ(o.sack[0].right, 6000u);
  EXPECT_EQ(o.sack[1].left, 7000u);
  EXPECT_EQ(o.sack[1].right, 8000u);

  ASSERT_TRUE(parse(kTsThreeSack, o));
  EXPECT_EQ(o.ts_val, 0xdeadbeefu);
  EXPECT_EQ(o.ts_ecr, 0x01020304u);
  ASSERT_EQ(o.sack_count, 3);
  EXPECT_EQ(o.sack[2].left, 5u);
  EXPECT_EQ(o.sack[2].right, 6u);
}

TEST(TcpOptionsParse, FourSackBlocks) {
  std::vector<uint8_t> b = {0x05, 34};
  for (uint8_t i = 1; i <= 8; ++i) b.insert(b.end(), {0, 0, 0, i});
  TcpOptions o;
  ASSERT_TRUE(parse(b, o));
  ASSERT_EQ(o.sack_count, 4);
  EXPECT_EQ(o.sack[3].left, 7u);
  EXPECT_EQ(o.sack[3].right, 8u);
}

TEST(TcpOptionsParse, EmptyEolNopAndUnknown) {
  TcpOptions o;
  o.has_mss = true;  // parse starts from nothing
  EXPECT_TRUE(parse({}, o));
  EXPECT_FALSE(o.has_mss);

  // EOL ends the list: what follows (even garbage) is not read.
  EXPECT_TRUE(parse({0x02, 0x04, 0x05, 0xb4, 0x00, 0x02, 0x00, 0xff}, o));
  EXPECT_TRUE(o.has_mss);
  EXPECT_EQ(o.mss, 1460);

  EXPECT_TRUE(parse({0x01, 0x01, 0x01, 0x01}, o));
  EXPECT_FALSE(o.has_mss);

  // Unknown kinds (30 = MPTCP, 34 = TFO, 254 = experimental) are skipped.
  EXPECT_TRUE(parse({30, 4, 0xaa, 0xbb, 34, 2, 254, 3, 0x00, 0x03, 0x03, 0x05}, o));
  EXPECT_TRUE(o.has_wscale);
  EXPECT_EQ(o.wscale, 5);
}

TEST(TcpOptionsParse, Malformed) {
  TcpOptions o;
  EXPECT_FALSE(parse({30, 0, 0, 0}, o));                            // length zero
  EXPECT_FALSE(parse({30, 1, 0, 0}, o));                            // length one
  EXPECT_FALSE(parse({30, 5, 0, 0}, o));                            // runs past the end
  EXPECT_FALSE(parse({0x02, 0x04, 0x05}, o));                       // MSS cut short
  EXPECT_FALSE(parse({0x01, 0x01, 0x01, 0x08}, o));                 // kind without length
  EXPECT_FALSE(parse({0x02, 0x03, 0x05, 0x01}, o));                 // MSS length 3
  EXPECT_FALSE(parse({0x02, 0x06, 0x05, 0xb4, 0, 0}, o));           // MSS length 6
  EXPECT_FALSE(parse({0x03, 0x04, 0x07, 0x00}, o));                 // WS length 4
  EXPECT_FALSE(parse({0x03, 0x02, 0x01, 0x01}, o));                 // WS length 2
  EXPECT_FALSE(parse({0x04, 0x03, 0x00, 0x01}, o));                 // SACK-perm length 3
  EXPECT_FALSE(parse({0x08, 0x08, 0, 0, 0, 0, 0, 0}, o));           // TS length 8
  EXPECT_FALSE(parse({0x05, 0x02, 0x01, 0x01}, o));                 // SACK without blocks
  EXPECT_FALSE(parse({0x05, 0x09, 0, 0, 0, 1, 0, 0, 0, 0x01}, o));  // SACK 2+7
  std::vector<uint8_t> five(42, 0);                                 // SACK with five blocks
  five[0] = 0x05;
  five[1] = 42;
  EXPECT_FALSE(parse(five, o));
}

TEST(TcpOptionsWrite, LinuxSynLayout) {
  TcpOptions o;
  o.has_mss = true;
  o.mss = 1460;
  o.sack_permitted = true;
  o.has_timestamp = true;
  o.ts_val = 12345;
  o.has_wscale = true;
  o.wscale = 7;
  EXPECT_EQ(write(o), kLinuxSyn);
}

TEST(TcpOptionsWrite, TimestampAndSackLayouts) {
  TcpOptions o;
  o.has_timestamp = true;
  o.ts_val = 100;
  o.ts_ecr = 200;
  o.sack_count = 2;
  o.sack[0] = {5000, 6000};
  o.sack[1] = {7000, 8000};
  EXPECT_EQ(write(o), kTsTwoSack);

  // Four blocks asked for, three fit beside the timestamps.
  o.ts_val = 0xdeadbeef;
  o.ts_ecr = 0x01020304;
  o.sack_count = 4;
  o.sack[0] = {1, 2};
  o.sack[1] = {3, 4};
  o.sack[2] = {5, 6};
  o.sack[3] = {7, 8};
  EXPECT_EQ(write(o), kTsThreeSack);
}

TEST(TcpOptionsWrite, SingleOptions) {
  TcpOptions o;
  EXPECT_EQ(write(o), std::vector<uint8_t>{});
  o.sack_permitted = true;
  EXPECT_EQ(write(o), (std::vector<uint8_t>{0x01, 0x01, 0x04, 0x02}));
  o = {};
  o.has_wscale = true;
  o.wscale = 14;
  EXPECT_EQ(write(o), (std::vector<uint8_t>{0x01, 0x03, 0x03, 0x0e}));
  o = {};
  o.has_mss = true;
  o.mss = 0x1234;
  EXPECT_EQ(write(o), (std::vector<uint8_t>{0x02, 0x04, 0x12, 0x34}));
  o = {};
  o.has_timestamp = true;
  o.ts_val = 0x01020304;
  o.ts_ecr = 0x05060708;
  EXPECT_EQ(write(o), (std::vector<uint8_t>{0x01, 0x01, 0x08, 0x0a, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(TcpOptionsWrite, SackBlocksTakeWhatRoomIsLeft) {
  TcpOptions o;
  o.sack_count = 4;
  for (uint32_t i = 0; i < 4; ++i) o.sack[i] = {10 * i, 10 * i + 5};
  EXPECT_EQ(write(o).size(), 36u);  // NOP NOP SACK(4 blocks)

  o.has_mss = true;
  o.mss = 1460;
  o.has_wscale = true;
  o.has_timestamp = true;
  o.sack_permitted = true;  // 20 bytes before the blocks: two fit
  const auto bytes = write(o);
  EXPECT_EQ(bytes.size(), 40u);  // 20 + NOP NOP SACK(2 blocks)
  TcpOptions back;
  ASSERT_TRUE(parse(bytes, back));
  EXPECT_EQ(back.sack_count, 2);
  EXPECT_EQ(back.sack[1].left, 10u);
  EXPECT_EQ(back.sack[1].right, 15u);
}

TEST(TcpOptionsWrite, RoundTripEveryCombination) {
  for (unsigned mask = 0; mask < 16; ++mask) {
    for (uint8_t blocks = 0; blocks <= 4; ++blocks) {
      TcpOptions o;
      o.has_mss = (mask & 1) != 0;
      o.mss = 536;
      o.sack_permitted = (mask & 2) != 0;
      o.has_timestamp = (mask & 4) != 0;
      o.ts_val = 0x11223344;
      o.ts_ecr = 0x55667788;
      o.has_wscale = (mask & 8) != 0;
      o.wscale = 9;
      o.sack_count = blocks;
      for (uint32_t i = 0; i < 4; ++i) o.sack[i] = {0xfffffff0u + i, 0x10u + i};
      const auto bytes = write(o);
      TcpOptions back;
      ASSERT_TRUE(parse(bytes, back)) << mask << " " << int{blocks};
      EXPECT_EQ(back.has_mss, o.has_mss);
      if (o.has_mss) {
        EXPECT_EQ(back.mss, o.mss);
      }
      EXPECT_EQ(back.sack_permitted, o.sack_permitted);
      EXPECT_EQ(back.has_timestamp, o.has_timestamp);
      if (o.has_timestamp) {
        EXPECT_EQ(back.ts_val, o.ts_val);
        EXPECT_EQ(back.ts_ecr, o.ts_ecr);
      }
      EXPECT_EQ(back.has_wscale, o.has_wscale);
      if (o.has_wscale) {
        EXPECT_EQ(back.wscale, o.wscale);
      }
      // As many blocks as fit in what the other options leave.
      const size_t used = (o.has_mss ? 4u : 0u) +
                          (o.has_timestamp ? 12u : (o.sack_permitted ? 4u : 0u)) +
                          (o.has_wscale ? 4u : 0u);
      const size_t fit = (kMaxTcpOptionBytes - used - 4) / 8;
      EXPECT_EQ(back.sack_count, std::min<size_t>(blocks, fit));
      for (size_t i = 0; i < back.sack_count; ++i) {
        EXPECT_EQ(back.sack[i].left, o.sack[i].left);
        EXPECT_EQ(back.sack[i].right, o.sack[i].right);
      }
    }
  }
}

}  // namespace
}  // namespace chimney::net
