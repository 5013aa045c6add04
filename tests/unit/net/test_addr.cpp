// Address parsing and printing.
#include <gtest/gtest.h>
#include <rte_ether.h>

#include <string>
#include <string_view>

#include "net/addr.hpp"

namespace chimney::net {
namespace {

using namespace std::string_view_literals;

TEST(Ipv4Addr, ParseGood) {
  auto a = Ipv4Addr::parse("198.18.0.2");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->value, 0xC6120002u);
  EXPECT_EQ(a->be(), rte_cpu_to_be_32(0xC6120002u));
  EXPECT_EQ(a->str(), "198.18.0.2");
  EXPECT_EQ(Ipv4Addr::parse("0.0.0.0")->value, 0u);
  EXPECT_EQ(Ipv4Addr::parse("255.255.255.255")->value, 0xFFFFFFFFu);
  EXPECT_EQ(Ipv4Addr::parse("203.0.113.1")->str(), "203.0.113.1");
  // A view into a longer buffer: only the view is parsed.
  const std::string_view longer = "1.2.3.45";
  EXPECT_EQ(Ipv4Addr::parse(longer.substr(0, 7))->str(), "1.2.3.4");
}

TEST(Ipv4Addr, FromBe) {
  EXPECT_EQ(Ipv4Addr::from_be(rte_cpu_to_be_32(0x01020304u)).str(), "1.2.3.4");
  EXPECT_EQ(Ipv4Addr{0xC6120001u}, *Ipv4Addr::parse("198.18.0.1"));
}

TEST(Ipv4Addr, ParseBad) {
  for (std::string_view bad :
       {""sv,           "1.2.3"sv,     "1.2.3.4.5"sv,  "256.0.0.1"sv,  "1.2.3.256"sv,
        " 1.2.3.4"sv,   "1.2.3.4 "sv,  "x1.2.3.4"sv,   "1.2.3.4x"sv,   "1..3.4"sv,
        "1.2.3."sv,     ".1.2.3"sv,    "01.2.3.4"sv,   "1.2.3.-4"sv,   "0x1.2.3.4"sv,
        "1.2.3.4/24"sv, "1.2.3.4\0"sv, "1.2.3.4\0x"sv, "1234.1.1.1"sv, "1.2.3.4.5.6.7.8.9"sv,
        "a.b.c.d"sv}) {
    EXPECT_FALSE(Ipv4Addr::parse(bad)) << '"' << bad << '"';
  }
}

TEST(Ipv4Prefix, ParseGood) {
  auto p = Ipv4Prefix::parse("198.18.0.2/24");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->addr.str(), "198.18.0.2");
  EXPECT_EQ(p->len, 24);
  EXPECT_EQ(p->mask(), 0xFFFFFF00u);
  EXPECT_TRUE(p->contains(*Ipv4Addr::parse("198.18.0.77")));
  EXPECT_FALSE(p->contains(*Ipv4Addr::parse("198.18.1.2")));
  EXPECT_EQ(p->str(), "198.18.0.2/24");

  auto host = Ipv4Prefix::parse("198.18.0.1");  // plain address: /32
  ASSERT_TRUE(host);
  EXPECT_EQ(host->len, 32);
  EXPECT_EQ(host->str(), "198.18.0.1/32");
  EXPECT_TRUE(host->contains(host->addr));
  EXPECT_FALSE(host->contains(*Ipv4Addr::parse("198.18.0.2")));

  auto all = Ipv4Prefix::parse("0.0.0.0/0");
  ASSERT_TRUE(all);
  EXPECT_EQ(all->len, 0);
  EXPECT_EQ(all->mask(), 0u);
  EXPECT_TRUE(all->contains(*Ipv4Addr::parse("203.0.113.9")));

  EXPECT_EQ(Ipv4Prefix::parse("198.18.0.0/15")->str(), "198.18.0.0/15");
  EXPECT_EQ(Ipv4Prefix::parse("203.0.113.3/32")->len, 32);
  EXPECT_EQ(Ipv4Prefix::parse("203.0.113.3/8")->len, 8);
}

TEST(Ipv4Prefix, ParseBad) {
  for (std::string_view bad :
       {""sv, "/24"sv, "1.2.3.4/"sv, "1.2.3.4/33"sv, "1.2.3.4/-1"sv, "1.2.3.4/+8"sv, "1.2.3.4/ 8"sv,
        "1.2.3.4/8 "sv, "1.2.3.4/8x"sv, "1.2.3.4/100"sv, "1.2.3/8"sv, "1.2.3.4//8"sv,
        "1.2.3.4/8/8"sv, "1.2.3.4/08"sv, "256.1.1.1/8"sv}) {
    EXPECT_FALSE(Ipv4Prefix::parse(bad)) << '"' << bad << '"';
  }
}

TEST(Mac, ParseGood) {
  auto m = parse_mac("02:00:00:00:00:01");
  ASSERT_TRUE(m);
  const rte_ether_addr expected = {{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}};
  EXPECT_TRUE(rte_is_same_ether_addr(&*m, &expected));

  auto upper = parse_mac("AA:bb:CC:dd:EE:ff");
  ASSERT_TRUE(upper);
  const rte_ether_addr expected2 = {{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}};
  EXPECT_TRUE(rte_is_same_ether_addr(&*upper, &expected2));
}

TEST(Mac, Str) {
  const rte_ether_addr mac = {{0x02, 0x00, 0x5e, 0x0a, 0xbc, 0xff}};
  EXPECT_EQ(mac_str(mac), "02:00:5E:0A:BC:FF");  // rte_ether_format_addr's form
  auto back = parse_mac(mac_str(mac));
  ASSERT_TRUE(back);
  EXPECT_TRUE(rte_is_same_ether_addr(&*back, &mac));
}

TEST(Mac, ParseBad) {
  for (std::string_view bad :
       {""sv, "02:00:00:00:00"sv, "02:00:00:00:00:01:"sv, "02:00:00:00:00:01:02"sv,
        "0200:0000:0001"sv, "0200.0000.0001"sv, "02-00-00-00-00-01"sv, "g2:00:00:00:00:01"sv,
        " 2:00:00:00:00:01"sv, "2:0:0:0:0:1"sv, "02:00:00:00:00:1"sv, "02:00:00:00:00:001"sv,
        "02:00:00:00:00:0x"sv, "02:00:00:00:00:01 "sv, "02:00:00:00:00:\0001"sv,
        "02::00:00:00:00:01"sv}) {
    EXPECT_FALSE(parse_mac(bad)) << '"' << bad << '"';
  }
}

}  // namespace
}  // namespace chimney::net
