// Validation and classification of received frames.
//
// Lengths are checked against the packet length (all segments), then the
// headers that are read must lie in the first segment. Nothing here allocates.

#include "net/packet.hpp"

#include <rte_arp.h>
#include <rte_byteorder.h>
#include <rte_ether.h>
#include <rte_icmp.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_tcp.h>

#include "net/tcp_options.hpp"

namespace chimney::net {

namespace {

constexpr uint32_t kEthLen = sizeof(rte_ether_hdr);
constexpr uint32_t kArpLen = sizeof(rte_arp_hdr);
constexpr uint32_t kIpMinLen = sizeof(rte_ipv4_hdr);
constexpr uint32_t kTcpMinLen = sizeof(rte_tcp_hdr);
constexpr uint32_t kIcmpLen = sizeof(rte_icmp_hdr);

Classified drop(DropReason r) { return {FrameKind::drop, r}; }

// Cuts the packet down to `len` bytes (0 < len <= pkt_len), freeing the
// segments that only held cut-off bytes. (rte_pktmbuf_trim() only trims the
// last segment and leaves it in the chain when it empties.)
void trim_to(rte_mbuf* m, uint32_t len) {
  if (rte_pktmbuf_pkt_len(m) == len) return;
  uint32_t kept = 0;
  uint16_t segs = 1;
  rte_mbuf* seg = m;
  while (kept + rte_pktmbuf_data_len(seg) < len && seg->next != nullptr) {
    kept += rte_pktmbuf_data_len(seg);
    seg = seg->next;
    ++segs;
  }
  seg->data_len = static_cast<uint16_t>(len - kept);
  if (seg->next != nullptr) {
    rte_pktmbuf_free(seg->next);
    seg->next = nullptr;
  }
  m->nb_segs = segs;
  m->pkt_len = len;
}

// RFC 826: only Ethernet/IPv4 requests and replies.
Classified classify_arp(rte_mbuf* m) {
  if (rte_pktmbuf_pkt_len(m) < kEthLen + kArpLen) return drop(DropReason::arp_truncated);
  if (rte_pktmbuf_data_len(m) < kEthLen + kArpLen) return drop(DropReason::headers_not_contiguous);
  const auto* arp = rte_pktmbuf_mtod_offset(m, const rte_arp_hdr*, kEthLen);
  if (arp->arp_hardware != RTE_BE16(RTE_ARP_HRD_ETHER) ||
      arp->arp_protocol != RTE_BE16(RTE_ETHER_TYPE_IPV4) || arp->arp_hlen != RTE_ETHER_ADDR_LEN ||
      arp->arp_plen != sizeof(uint32_t))
    return drop(DropReason::arp_unsupported);
  if (arp->arp_opcode != RTE_BE16(RTE_ARP_OP_REQUEST) &&
      arp->arp_opcode != RTE_BE16(RTE_ARP_OP_REPLY))
    return drop(DropReason::arp_unsupported);
  m->l2_len = kEthLen;
  m->l3_len = kArpLen;
  m->l4_len = 0;
  return {FrameKind::arp, DropReason::count};
}

// RFC 1122 §3.2.1.3 / RFC 1812 §5.3.7: a source must name one host.
bool bad_source(uint32_t src) {
  return src == 0 ||                            // "this host" {0,0}
         src == 0xFFFFFFFFu ||                  // limited broadcast
         (src & 0xF0000000u) == 0xE0000000u ||  // 224/4 multicast (RFC 1112)
         (src & 0xFF000000u) == 0x7F000000u;    // 127/8 loopback
}

// RFC 792: echo request only; the checksum covers the whole ICMP message.
Classified classify_icmp(rte_mbuf* m, uint32_t l4_off, uint32_t l4_avail) {
  if (l4_avail < kIcmpLen) return drop(DropReason::icmp_truncated);
  if (rte_pktmbuf_data_len(m) < l4_off + kIcmpLen) return drop(DropReason::headers_not_contiguous);
  uint16_t sum = 0;
  if (!raw_cksum_mbuf(m, l4_off, l4_avail, sum) || sum != 0xFFFF)
    return drop(DropReason::icmp_bad_checksum);
  const auto* icmp = rte_pktmbuf_mtod_offset(m, const rte_icmp_hdr*, l4_off);
  if (icmp->icmp_type != RTE_IP_ICMP_ECHO_REQUEST || icmp->icmp_code != 0)
    return drop(DropReason::icmp_unsupported);
  m->l4_len = kIcmpLen;
  return {FrameKind::icmp, DropReason::count};
}

// RFC 9293 §3.1 header format, §3.10.7.1 checksum test.
Classified classify_tcp(rte_mbuf* m, const rte_ipv4_hdr* ip, uint32_t l4_off, uint32_t l4_avail) {
  if (l4_avail < kTcpMinLen) return drop(DropReason::tcp_truncated);
  if (rte_pktmbuf_data_len(m) < l4_off + kTcpMinLen)
    return drop(DropReason::headers_not_contiguous);
  const auto* tcp = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, l4_off);
  const uint32_t doff = static_cast<uint32_t>(tcp->data_off >> 4) * 4u;
  if (doff < kTcpMinLen || doff > l4_avail) return drop(DropReason::tcp_bad_data_offset);
  if (rte_pktmbuf_data_len(m) < l4_off + doff) return drop(DropReason::headers_not_contiguous);

  switch (m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK) {
    case RTE_MBUF_F_RX_L4_CKSUM_GOOD:
    case RTE_MBUF_F_RX_L4_CKSUM_NONE:  // data not checksummed, integrity verified
      break;
    case RTE_MBUF_F_RX_L4_CKSUM_BAD:
      return drop(DropReason::tcp_bad_checksum);
    default: {  // unknown: verify in software, over every segment
      // The sum over pseudo-header and segment, checksum included, is 0xFFFF.
      // (Not rte_ipv4_udptcp_cksum_mbuf_verify(): see raw_cksum_mbuf().)
      uint16_t sum = 0;
      if (!raw_cksum_mbuf(m, l4_off, l4_avail, sum)) return drop(DropReason::tcp_bad_checksum);
      uint32_t total = uint32_t{sum} + rte_ipv4_phdr_cksum(ip, 0);
      total = (total & 0xFFFF) + (total >> 16);
      if (total != 0xFFFF) return drop(DropReason::tcp_bad_checksum);
      break;
    }
  }

  TcpOptions opts;
  if (!parse_tcp_options(reinterpret_cast<const uint8_t*>(tcp + 1), doff - kTcpMinLen, opts))
    return drop(DropReason::tcp_bad_option);
  m->l4_len = static_cast<uint16_t>(doff);
  return {FrameKind::tcp, DropReason::count};
}

// RFC 791 §3.1 (with RFC 1122 §3.2.1 checks).
Classified classify_ipv4(rte_mbuf* m) {
  const uint32_t avail = rte_pktmbuf_pkt_len(m) - kEthLen;
  if (avail < kIpMinLen) return drop(DropReason::ip_truncated);
  if (rte_pktmbuf_data_len(m) < kEthLen + kIpMinLen)
    return drop(DropReason::headers_not_contiguous);
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, kEthLen);

  // RFC 1122 §3.2.1.1: silently discard a version other than 4.
  if ((ip->version_ihl >> 4) != IPVERSION) return drop(DropReason::ip_bad_version);
  const uint32_t ihl = rte_ipv4_hdr_len(ip);
  if (ihl < kIpMinLen || ihl > avail) return drop(DropReason::ip_bad_ihl);
  // RFC 791 §3.1 options: not accepted here (nothing needs them).
  if (ihl != kIpMinLen) return drop(DropReason::ip_options);

  // RFC 791 §3.1 Total Length: header and data; Ethernet padding may follow.
  const uint32_t total = rte_be_to_cpu_16(ip->total_length);
  if (total < ihl || total > avail) return drop(DropReason::ip_bad_total_length);

  // RFC 1122 §3.2.1.2: silently discard on a bad header checksum.
  switch (m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK) {
    case RTE_MBUF_F_RX_IP_CKSUM_GOOD:
    case RTE_MBUF_F_RX_IP_CKSUM_NONE:  // field not filled, integrity verified
      break;
    case RTE_MBUF_F_RX_IP_CKSUM_BAD:
      return drop(DropReason::ip_bad_checksum);
    default:  // unknown: the sum over the header, checksum included, is 0xFFFF
      if (rte_raw_cksum(ip, ihl) != 0xFFFF) return drop(DropReason::ip_bad_checksum);
      break;
  }

  // RFC 791 §3.2 fragmentation: reassembly is not offered.
  if ((ip->fragment_offset & RTE_BE16(RTE_IPV4_HDR_MF_FLAG | RTE_IPV4_HDR_OFFSET_MASK)) != 0)
    return drop(DropReason::ip_fragment);

  if (bad_source(rte_be_to_cpu_32(ip->src_addr))) return drop(DropReason::ip_bad_source);

  // Drop the Ethernet padding so that pkt_len == l2 + total length.
  trim_to(m, kEthLen + total);
  m->l2_len = kEthLen;
  m->l3_len = static_cast<uint16_t>(ihl);
  m->l4_len = 0;

  const uint32_t l4_off = kEthLen + ihl;
  const uint32_t l4_avail = total - ihl;
  switch (ip->next_proto_id) {
    case IPPROTO_TCP:
      return classify_tcp(m, ip, l4_off, l4_avail);
    case IPPROTO_ICMP:
      return classify_icmp(m, l4_off, l4_avail);
    default:
      return drop(DropReason::ip_unsupported_proto);
  }
}

}  // namespace

Classified classify_frame(rte_mbuf* m) {
  if (rte_pktmbuf_pkt_len(m) < kEthLen) return drop(DropReason::eth_truncated);
  if (rte_pktmbuf_data_len(m) < kEthLen) return drop(DropReason::headers_not_contiguous);
  const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
  switch (eth->ether_type) {
    case RTE_BE16(RTE_ETHER_TYPE_IPV4):
      return classify_ipv4(m);
    case RTE_BE16(RTE_ETHER_TYPE_ARP):
      return classify_arp(m);
    default:  // VLAN tags, IPv6 and the rest are not handled
      return drop(DropReason::eth_unsupported_type);
  }
}

bool raw_cksum_mbuf(const rte_mbuf* m, uint32_t off, uint32_t len, uint16_t& sum) {
  if (static_cast<uint64_t>(off) + len <= rte_pktmbuf_data_len(m)) {  // one segment
    sum = rte_raw_cksum(rte_pktmbuf_mtod_offset(m, const uint8_t*, off), len);
    return true;
  }
  if (static_cast<uint64_t>(off) + len > rte_pktmbuf_pkt_len(m)) return false;
  if (len == 0) {
    sum = 0;
    return true;
  }
  const rte_mbuf* seg = m;
  while (off >= rte_pktmbuf_data_len(seg)) {
    off -= rte_pktmbuf_data_len(seg);
    seg = seg->next;
  }
  uint32_t acc = 0;
  uint32_t done = 0;
  while (done < len) {
    const uint32_t avail = rte_pktmbuf_data_len(seg) - off;
    const uint32_t n = avail < len - done ? avail : len - done;
    // Fold each piece to 16 bits before any byte swap: a piece that starts at
    // an odd offset of the sum adds its bytes in swapped lanes (RFC 1071 §2(B)).
    uint16_t part = __rte_raw_cksum_reduce(
        __rte_raw_cksum(rte_pktmbuf_mtod_offset(seg, const uint8_t*, off), n, 0));
    if ((done & 1) != 0) part = rte_bswap16(part);
    acc += part;
    done += n;
    off = 0;
    seg = seg->next;
  }
  sum = __rte_raw_cksum_reduce(acc);
  return true;
}

uint16_t tcp_payload_len(const rte_mbuf* m) {
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  const uint32_t total = rte_be_to_cpu_16(ip->total_length);
  const uint32_t headers = static_cast<uint32_t>(m->l3_len) + m->l4_len;
  return total > headers ? static_cast<uint16_t>(total - headers) : 0;
}

}  // namespace chimney::net
