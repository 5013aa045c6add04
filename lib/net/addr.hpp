// IPv4 and Ethernet addresses as the configuration and the slow path see them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <rte_byteorder.h>
#include <rte_ether.h>

namespace chimney::net {

// An IPv4 address in host byte order.
struct Ipv4Addr {
  uint32_t value = 0;

  static std::optional<Ipv4Addr> parse(std::string_view text);
  static Ipv4Addr from_be(rte_be32_t be) { return {rte_be_to_cpu_32(be)}; }
  rte_be32_t be() const { return rte_cpu_to_be_32(value); }
  std::string str() const;
  friend bool operator==(Ipv4Addr, Ipv4Addr) = default;
};

// address/prefix-length, as in "198.18.0.2/24".
struct Ipv4Prefix {
  Ipv4Addr addr;
  uint8_t len = 32;

  static std::optional<Ipv4Prefix> parse(std::string_view text);
  uint32_t mask() const { return len == 0 ? 0 : ~uint32_t{0} << (32 - len); }
  bool contains(Ipv4Addr a) const { return ((a.value ^ addr.value) & mask()) == 0; }
  std::string str() const;
};

std::optional<rte_ether_addr> parse_mac(std::string_view text);
std::string mac_str(const rte_ether_addr& mac);

}  // namespace chimney::net
