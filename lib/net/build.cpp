// Frames the slow path sends, and transmit checksums.

#include "net/build.hpp"

#include <rte_arp.h>
#include <rte_byteorder.h>
#include <rte_ether.h>
#include <rte_icmp.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_tcp.h>

#include <cstring>

#include "net/packet.hpp"

namespace chimney::net {

namespace {

constexpr uint16_t kEthLen = sizeof(rte_ether_hdr);
constexpr uint16_t kArpLen = sizeof(rte_arp_hdr);
constexpr uint16_t kIpLen = sizeof(rte_ipv4_hdr);
constexpr uint16_t kTcpLen = sizeof(rte_tcp_hdr);
constexpr uint16_t kIcmpLen = sizeof(rte_icmp_hdr);
constexpr uint8_t kTtl = 64;

constexpr uint64_t kTxChecksumFlags =
    RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM | RTE_MBUF_F_TX_L4_MASK;

// Keeps the first `len` bytes, all of which lie in the first segment.
void keep_first(rte_mbuf* m, uint16_t len) {
  if (m->next != nullptr) {
    rte_pktmbuf_free(m->next);
    m->next = nullptr;
    m->nb_segs = 1;
  }
  m->data_len = len;
  m->pkt_len = len;
}

void swap_macs(rte_ether_hdr* eth) {
  const rte_ether_addr dst = eth->dst_addr;
  eth->dst_addr = eth->src_addr;
  eth->src_addr = dst;
}

void swap_addrs(rte_ipv4_hdr* ip) {
  const rte_be32_t dst = ip->dst_addr;
  ip->dst_addr = ip->src_addr;
  ip->src_addr = dst;
}

void set_lens(rte_mbuf* m, uint16_t l2, uint16_t l3, uint16_t l4) {
  m->l2_len = l2;
  m->l3_len = l3;
  m->l4_len = l4;
}

void fill_arp(rte_ether_hdr* eth, const rte_ether_addr& eth_dst, const rte_ether_addr& our_mac,
              uint16_t opcode, rte_be32_t our_ip, const rte_ether_addr& target_mac,
              rte_be32_t target_ip) {
  eth->dst_addr = eth_dst;
  eth->src_addr = our_mac;
  eth->ether_type = RTE_BE16(RTE_ETHER_TYPE_ARP);
  auto* arp = reinterpret_cast<rte_arp_hdr*>(eth + 1);
  arp->arp_hardware = RTE_BE16(RTE_ARP_HRD_ETHER);
  arp->arp_protocol = RTE_BE16(RTE_ETHER_TYPE_IPV4);
  arp->arp_hlen = RTE_ETHER_ADDR_LEN;
  arp->arp_plen = sizeof(uint32_t);
  arp->arp_opcode = rte_cpu_to_be_16(opcode);
  arp->arp_data.arp_sha = our_mac;
  arp->arp_data.arp_sip = our_ip;
  arp->arp_data.arp_tha = target_mac;
  arp->arp_data.arp_tip = target_ip;
}

}  // namespace

void finalize_tx_checksums(rte_mbuf* m, const TxChecksumCaps& caps) {
  m->ol_flags &= ~kTxChecksumFlags;
  const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
  if (eth->ether_type != RTE_BE16(RTE_ETHER_TYPE_IPV4)) return;  // ARP: no checksum

  auto* ip = rte_pktmbuf_mtod_offset(m, rte_ipv4_hdr*, m->l2_len);
  const uint16_t l4_off = static_cast<uint16_t>(m->l2_len + m->l3_len);

  // RFC 791 §3.1 header checksum.
  ip->hdr_checksum = 0;
  if (caps.ipv4) {
    m->ol_flags |= RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM;
  } else {
    ip->hdr_checksum = rte_ipv4_cksum(ip);
  }

  switch (ip->next_proto_id) {
    case IPPROTO_TCP: {  // RFC 9293 §3.1: pseudo-header + segment
      auto* tcp = rte_pktmbuf_mtod_offset(m, rte_tcp_hdr*, l4_off);
      tcp->cksum = 0;
      if (caps.tcp) {
        // The port sums the segment; it wants the pseudo-header sum in place.
        m->ol_flags |= RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_TCP_CKSUM;
        tcp->cksum = rte_ipv4_phdr_cksum(ip, m->ol_flags);
      } else {
        // Like rte_ipv4_udptcp_cksum_mbuf(), which is wrong for odd-length
        // segments in DPDK 22.11 (see raw_cksum_mbuf()).
        const uint32_t len = rte_be_to_cpu_16(ip->total_length) - rte_ipv4_hdr_len(ip);
        uint16_t sum = 0;
        if (raw_cksum_mbuf(m, l4_off, len, sum)) {
          uint32_t total = uint32_t{sum} + rte_ipv4_phdr_cksum(ip, 0);
          total = (total & 0xFFFF) + (total >> 16);
          tcp->cksum = static_cast<uint16_t>(~total);
        }
      }
      break;
    }
    case IPPROTO_ICMP: {  // RFC 792: over the ICMP message, always in software
      auto* icmp = rte_pktmbuf_mtod_offset(m, rte_icmp_hdr*, l4_off);
      icmp->icmp_cksum = 0;
      const uint32_t len = rte_be_to_cpu_16(ip->total_length) - rte_ipv4_hdr_len(ip);
      uint16_t sum = 0;
      if (raw_cksum_mbuf(m, l4_off, len, sum)) icmp->icmp_cksum = static_cast<uint16_t>(~sum);
      break;
    }
    default:
      break;
  }
}

void arp_reply_in_place(rte_mbuf* m, const rte_ether_addr& our_mac, Ipv4Addr our_ip) {
  auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
  const auto* arp = reinterpret_cast<const rte_arp_hdr*>(eth + 1);
  // RFC 826 "Packet Reception": swap the sender fields into the target
  // fields, put ours in the sender fields, set the opcode to reply and send
  // the packet to the (new) target hardware address.
  const rte_ether_addr peer_mac = arp->arp_data.arp_sha;
  const rte_be32_t peer_ip = arp->arp_data.arp_sip;
  fill_arp(eth, peer_mac, our_mac, RTE_ARP_OP_REPLY, our_ip.be(), peer_mac, peer_ip);
  keep_first(m, kEthLen + kArpLen);  // the port pads to the minimum frame
  m->ol_flags &= ~kTxChecksumFlags;
  set_lens(m, kEthLen, kArpLen, 0);
}

rte_mbuf* build_arp_request(rte_mempool* pool, const rte_ether_addr& our_mac, Ipv4Addr our_ip,
                            Ipv4Addr target) {
  rte_mbuf* m = rte_pktmbuf_alloc(pool);
  if (m == nullptr) return nullptr;
  auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, kEthLen + kArpLen));
  if (eth == nullptr) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  rte_ether_addr broadcast;
  std::memset(&broadcast, 0xFF, sizeof broadcast);
  const rte_ether_addr unknown{};
  // RFC 826 "Packet Generation": target hardware address unknown (zero).
  fill_arp(eth, broadcast, our_mac, RTE_ARP_OP_REQUEST, our_ip.be(), unknown, target.be());
  set_lens(m, kEthLen, kArpLen, 0);
  return m;
}

void icmp_echo_reply_in_place(rte_mbuf* m, uint16_t ip_id) {
  auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
  auto* ip = rte_pktmbuf_mtod_offset(m, rte_ipv4_hdr*, m->l2_len);
  auto* icmp = rte_pktmbuf_mtod_offset(m, rte_icmp_hdr*, m->l2_len + m->l3_len);
  swap_macs(eth);
  // RFC 792 "Echo or Echo Reply": addresses reversed, type 0; identifier,
  // sequence number and data are returned unchanged.
  swap_addrs(ip);
  ip->time_to_live = kTtl;
  ip->packet_id = rte_cpu_to_be_16(ip_id);
  ip->fragment_offset = 0;
  icmp->icmp_type = RTE_IP_ICMP_ECHO_REPLY;
  icmp->icmp_code = 0;
  set_lens(m, m->l2_len, m->l3_len, kIcmpLen);
  finalize_tx_checksums(m, TxChecksumCaps{});
}

bool tcp_rst_for_unknown_in_place(rte_mbuf* m, uint16_t ip_id) {
  auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
  auto* ip = rte_pktmbuf_mtod_offset(m, rte_ipv4_hdr*, m->l2_len);
  auto* tcp = rte_pktmbuf_mtod_offset(m, rte_tcp_hdr*, m->l2_len + m->l3_len);
  const uint8_t flags = tcp->tcp_flags;
  // RFC 9293 §3.10.7.1: "An incoming segment containing a RST is discarded."
  if ((flags & RTE_TCP_RST_FLAG) != 0) return false;

  const uint32_t seg_seq = rte_be_to_cpu_32(tcp->sent_seq);
  const uint32_t seg_ack = rte_be_to_cpu_32(tcp->recv_ack);
  if ((flags & RTE_TCP_ACK_FLAG) != 0) {
    // "If the ACK bit is on, <SEQ=SEG.ACK><CTL=RST>"
    tcp->sent_seq = rte_cpu_to_be_32(seg_ack);
    tcp->recv_ack = 0;
    tcp->tcp_flags = RTE_TCP_RST_FLAG;
  } else {
    // "If the ACK bit is off, sequence number zero is used,
    //  <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>" (SEG.LEN counts SYN and FIN).
    uint32_t seg_len = tcp_payload_len(m);
    if ((flags & RTE_TCP_SYN_FLAG) != 0) ++seg_len;
    if ((flags & RTE_TCP_FIN_FLAG) != 0) ++seg_len;
    tcp->sent_seq = 0;
    tcp->recv_ack = rte_cpu_to_be_32(seg_seq + seg_len);
    tcp->tcp_flags = RTE_TCP_RST_FLAG | RTE_TCP_ACK_FLAG;
  }
  const rte_be16_t src_port = tcp->src_port;
  tcp->src_port = tcp->dst_port;
  tcp->dst_port = src_port;
  tcp->data_off = (kTcpLen / 4) << 4;  // no options
  tcp->rx_win = 0;
  tcp->tcp_urp = 0;

  swap_macs(eth);
  swap_addrs(ip);
  ip->version_ihl = RTE_IPV4_VHL_DEF;
  ip->type_of_service = 0;
  ip->total_length = RTE_BE16(kIpLen + kTcpLen);
  ip->packet_id = rte_cpu_to_be_16(ip_id);
  ip->fragment_offset = RTE_BE16(RTE_IPV4_HDR_DF_FLAG);
  ip->time_to_live = kTtl;
  ip->next_proto_id = IPPROTO_TCP;

  keep_first(m, kEthLen + kIpLen + kTcpLen);  // payload and options are gone
  set_lens(m, kEthLen, kIpLen, kTcpLen);
  finalize_tx_checksums(m, TxChecksumCaps{});
  return true;
}

rte_mbuf* build_tcp_frame(rte_mempool* pool, const TcpFrameSpec& spec, const uint8_t* payload,
                          uint16_t payload_len) {
  rte_mbuf* m = rte_pktmbuf_alloc(pool);
  if (m == nullptr) return nullptr;
  uint8_t opt[kMaxTcpOptionBytes];
  const size_t optlen = write_tcp_options(opt, spec.opts);
  const uint16_t l4 = static_cast<uint16_t>(sizeof(rte_tcp_hdr) + optlen);
  const uint16_t total = static_cast<uint16_t>(sizeof(rte_ether_hdr) + sizeof(rte_ipv4_hdr) + l4 + payload_len);
  auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, total));
  if (p == nullptr) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  auto* eth = reinterpret_cast<rte_ether_hdr*>(p);
  eth->dst_addr = spec.dst_mac;
  eth->src_addr = spec.src_mac;
  eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
  auto* ip = reinterpret_cast<rte_ipv4_hdr*>(eth + 1);
  ip->version_ihl = RTE_IPV4_VHL_DEF;
  ip->type_of_service = spec.tos;
  ip->total_length = rte_cpu_to_be_16(static_cast<uint16_t>(sizeof(rte_ipv4_hdr) + l4 + payload_len));
  ip->packet_id = rte_cpu_to_be_16(spec.ip_id);
  ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
  ip->time_to_live = spec.ttl;
  ip->next_proto_id = IPPROTO_TCP;
  ip->hdr_checksum = 0;
  ip->src_addr = spec.src_ip.be();
  ip->dst_addr = spec.dst_ip.be();
  auto* th = reinterpret_cast<rte_tcp_hdr*>(ip + 1);
  th->src_port = rte_cpu_to_be_16(spec.src_port);
  th->dst_port = rte_cpu_to_be_16(spec.dst_port);
  th->sent_seq = rte_cpu_to_be_32(spec.seq);
  th->recv_ack = rte_cpu_to_be_32(spec.ack);
  th->data_off = static_cast<uint8_t>((l4 / 4) << 4);
  th->tcp_flags = spec.flags;
  th->rx_win = rte_cpu_to_be_16(spec.window);
  th->cksum = 0;
  th->tcp_urp = 0;
  std::memcpy(th + 1, opt, optlen);
  if (payload_len != 0) std::memcpy(reinterpret_cast<uint8_t*>(th) + l4, payload, payload_len);
  set_lens(m, sizeof(rte_ether_hdr), sizeof(rte_ipv4_hdr), l4);
  return m;
}

}  // namespace chimney::net
