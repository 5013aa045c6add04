// Text forms of IPv4 and Ethernet addresses (configuration and logs).
#include "net/addr.hpp"

#include <arpa/inet.h>

#include <array>
#include <cctype>
#include <cstring>

namespace chimney::net {

namespace {

// "255.255.255.255" plus a terminating NUL.
constexpr size_t kMaxDottedQuad = 15;

}  // namespace

std::optional<Ipv4Addr> Ipv4Addr::parse(std::string_view text) {
  // inet_pton(AF_INET) accepts exactly four decimal parts of 0-255 without
  // leading zeros and nothing else (no "1.2.3", no junk); it needs a C string.
  if (text.empty() || text.size() > kMaxDottedQuad) return std::nullopt;
  if (text.find('\0') != std::string_view::npos) return std::nullopt;
  std::array<char, kMaxDottedQuad + 1> buf{};
  std::memcpy(buf.data(), text.data(), text.size());
  in_addr a{};
  if (inet_pton(AF_INET, buf.data(), &a) != 1) return std::nullopt;
  return from_be(a.s_addr);
}

std::string Ipv4Addr::str() const {
  in_addr a{};
  a.s_addr = be();
  std::array<char, INET_ADDRSTRLEN> buf{};
  inet_ntop(AF_INET, &a, buf.data(), buf.size());
  return std::string(buf.data());
}

std::optional<Ipv4Prefix> Ipv4Prefix::parse(std::string_view text) {
  const size_t slash = text.find('/');
  // A plain address is a host route (/32).
  auto addr = Ipv4Addr::parse(text.substr(0, slash));
  if (!addr) return std::nullopt;
  Ipv4Prefix p;
  p.addr = *addr;
  if (slash == std::string_view::npos) return p;
  std::string_view len = text.substr(slash + 1);
  if (len.empty() || len.size() > 2) return std::nullopt;
  unsigned value = 0;
  for (char c : len) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (len.size() == 2 && len[0] == '0') return std::nullopt;  // no "/08"
  if (value > 32) return std::nullopt;
  p.len = static_cast<uint8_t>(value);
  return p;
}

std::string Ipv4Prefix::str() const { return addr.str() + "/" + std::to_string(len); }

std::optional<rte_ether_addr> parse_mac(std::string_view text) {
  // Only the canonical "xx:xx:xx:xx:xx:xx" form; rte_ether_unformat_addr would
  // also take "xxxx:xxxx:xxxx", which a configuration should not mix in.
  constexpr size_t kLen = RTE_ETHER_ADDR_FMT_SIZE - 1;  // 17
  if (text.size() != kLen) return std::nullopt;
  for (size_t i = 0; i < kLen; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (i % 3 == 2) {
      if (c != ':') return std::nullopt;
    } else if (std::isxdigit(c) == 0) {
      return std::nullopt;
    }
  }
  std::array<char, RTE_ETHER_ADDR_FMT_SIZE> buf{};
  std::memcpy(buf.data(), text.data(), kLen);
  rte_ether_addr mac{};
  if (rte_ether_unformat_addr(buf.data(), &mac) != 0) return std::nullopt;
  return mac;
}

std::string mac_str(const rte_ether_addr& mac) {
  std::array<char, RTE_ETHER_ADDR_FMT_SIZE> buf{};
  rte_ether_format_addr(buf.data(), static_cast<uint16_t>(buf.size()), &mac);
  return std::string(buf.data());
}

}  // namespace chimney::net
