// Where a connection lives: the one placement function the control plane
// (which worker an offload goes to), the slow path (which worker transmits
// a handshake's frames) and the workers (which worker a received frame
// belongs to) share, and that a port with hardware RSS is programmed with.
//
// owner(4-tuple) = reta[toeplitz(4-tuple) % kRetaSize], reta[i] = i % workers,
// where toeplitz is the Toeplitz hash a NIC computes for IPv4/TCP
// (RTE_ETH_RSS_NONFRAG_IPV4_TCP: source address, destination address, source
// port, destination port) with the symmetric key below; both directions of
// a connection give one hash, hence one worker.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include <rte_byteorder.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_tcp.h>
#include <rte_thash.h>

namespace chimney::dataplane {

// A symmetric Toeplitz key (0x6d5a repeated; Woo and Park, "Scalable TCP
// Session Monitoring with Symmetric Receive-side Scaling"): with a key of
// period 16 bits, swapping the addresses and the ports changes no input bit's
// key window, so both directions of a flow hash alike.
inline constexpr size_t kRssKeySize = 40;
alignas(4) inline constexpr uint8_t kSymmetricRssKey[kRssKeySize] = {
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a};

namespace rss_detail {
// The key as rte_softrss_be wants it (rte_convert_rss_key: each 32-bit word
// read big-endian), made at compile time.
struct ConvertedKey {
  alignas(4) uint32_t words[kRssKeySize / 4];
};
constexpr ConvertedKey convert(const uint8_t (&key)[kRssKeySize]) {
  ConvertedKey k{};
  for (size_t i = 0; i < kRssKeySize / 4; ++i)
    k.words[i] = (uint32_t{key[4 * i]} << 24) | (uint32_t{key[4 * i + 1]} << 16) |
                 (uint32_t{key[4 * i + 2]} << 8) | uint32_t{key[4 * i + 3]};
  return k;
}
inline constexpr ConvertedKey kConvertedKey = convert(kSymmetricRssKey);
}  // namespace rss_detail

// The Toeplitz hash of an IPv4/TCP 4-tuple (host byte order) with `key`
// (kRssKeySize bytes), as DPDK's rte_softrss computes it.
inline uint32_t toeplitz_ipv4_tcp(const uint8_t* key, uint32_t src_ip, uint32_t dst_ip, uint16_t src_port,
                                  uint16_t dst_port) {
  uint32_t tuple[RTE_THASH_V4_L4_LEN] = {src_ip, dst_ip, (uint32_t{src_port} << 16) | dst_port};
  return rte_softrss(tuple, RTE_THASH_V4_L4_LEN, key);
}

// The same with kSymmetricRssKey, through rte_softrss_be and the key
// converted once.
inline uint32_t rss_hash(uint32_t src_ip, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port) {
  uint32_t tuple[RTE_THASH_V4_L4_LEN] = {src_ip, dst_ip, (uint32_t{src_port} << 16) | dst_port};
  return rte_softrss_be(tuple, RTE_THASH_V4_L4_LEN,
                        reinterpret_cast<const uint8_t*>(rss_detail::kConvertedKey.words));
}

// The redirection table: which worker owns a hash. Fixed at start-up.
//
// Per frame it does not run rte_softrss_be's loop over the tuple's set bits
// (170-340 cycles here): with a key of period 16 every input bit i and bit
// i + 16 of any word meet the same key window, so the hash is a linear
// function of the 16-bit XOR of the tuple's six 16-bit halves, looked up in
// two 256-entry tables that the constructor fills with rte_softrss_be. The
// unit tests check it against rte_softrss over all 65536 folds and random
// tuples.
class Placement {
 public:
  // Hardware indexes its RETA with the hash's low bits; 128 is the size of
  // the commonest RETAs, and a RETA of a multiple of 128 entries repeats
  // this one.
  static constexpr unsigned kRetaSize = 128;

  explicit Placement(unsigned workers = 1);
  unsigned workers() const { return workers_; }
  const std::array<uint16_t, kRetaSize>& reta() const { return reta_; }

  unsigned owner_of_hash(uint32_t hash) const { return reta_[hash % kRetaSize]; }
  // rss_hash(), by the folded tables.
  uint32_t hash(uint32_t src_ip, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port) const {
    const uint32_t w = src_ip ^ dst_ip ^ ((uint32_t{src_port} << 16) | dst_port);
    const uint32_t x = (w ^ (w >> 16)) & 0xffff;
    return fold_lo_[x & 0xff] ^ fold_hi_[x >> 8];
  }
  // The owner of a connection, named from either end (host byte order).
  unsigned owner(uint32_t local_ip, uint32_t remote_ip, uint16_t local_port, uint16_t remote_port) const {
    if (workers_ == 1) return 0;
    return owner_of_hash(hash(local_ip, remote_ip, local_port, remote_port));
  }
  // The owner of a classified IPv4/TCP frame (net::classify_frame left
  // l2_len and l3_len; the headers are in the first segment). With
  // `hw_hash`, a hash the device left in the mbuf (RTE_MBUF_F_RX_RSS_HASH)
  // is taken as it is: the port was verified to hash IPv4/TCP with our key.
  unsigned owner_of_frame(const rte_mbuf* m, bool hw_hash) const {
    if (hw_hash && (m->ol_flags & RTE_MBUF_F_RX_RSS_HASH) != 0) return owner_of_hash(m->hash.rss);
    const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
    const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
    return owner_of_hash(hash(rte_be_to_cpu_32(ip->src_addr), rte_be_to_cpu_32(ip->dst_addr),
                              rte_be_to_cpu_16(th->src_port), rte_be_to_cpu_16(th->dst_port)));
  }

 private:
  unsigned workers_;
  std::array<uint16_t, kRetaSize> reta_{};
  std::array<uint32_t, 256> fold_lo_{};  // hash of fold values 0x00..0xff
  std::array<uint32_t, 256> fold_hi_{};  // hash of fold values 0x0000, 0x0100 .. 0xff00
};

// What open_port found out about a port's RSS (Port::rss).
struct RssState {
  bool configured = false;   // mq_mode RSS was asked for (several queues, the device reports RSS)
  bool reta_programmed = false;  // the device's RETA holds Placement's table
  bool hash_ours = false;    // the device hashes IPv4/TCP with kSymmetricRssKey: its mbuf hash is usable
  uint16_t reta_size = 0;    // the device's RETA size (0: none reported)
  const char* note = "single queue";  // for the start-up log line
};

// Programs `port_id`'s RETA with `placement` (hardware RSS sends each flow
// to its owner's queue) and checks whether the device's hash is ours.
// Devices without RETA or hash configuration (net_tap, net_memif) end with
// nothing programmed: software steering places their frames.
RssState program_rss(uint16_t port_id, const Placement& placement, bool configured);

}  // namespace chimney::dataplane
