// Frames the slow path sends: ARP (RFC 826), ICMP echo reply (RFC 792), and the
// RST for a segment that belongs to no connection (RFC 9293 §3.10.7.1).
#pragma once

#include <cstdint>

#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "net/addr.hpp"
#include "net/tcp_options.hpp"

namespace chimney::net {

// What the port computes for us on transmit.
struct TxChecksumCaps {
  bool ipv4 = false;  // RTE_ETH_TX_OFFLOAD_IPV4_CKSUM
  bool tcp = false;   // RTE_ETH_TX_OFFLOAD_TCP_CKSUM
};

// Fills the IPv4 header checksum and the TCP or ICMP checksum of a frame whose
// l2_len/l3_len are set: requests the port's offload where it has one,
// computes in software otherwise.
void finalize_tx_checksums(rte_mbuf* m, const TxChecksumCaps& caps);

// An IPv4 identification from 0x8000-0xFFFF (CONTRACT C-8); `counter` is the
// caller's running counter.
inline uint16_t next_ip_id(uint16_t& counter) {
  counter = static_cast<uint16_t>(counter + 1);
  return static_cast<uint16_t>(0x8000 | counter);
}

// Turns a classified ARP request for `our_ip` into the reply, in place.
void arp_reply_in_place(rte_mbuf* m, const rte_ether_addr& our_mac, Ipv4Addr our_ip);

// A broadcast ARP request for `target`; nullptr when the pool is empty.
rte_mbuf* build_arp_request(rte_mempool* pool, const rte_ether_addr& our_mac,
                            Ipv4Addr our_ip, Ipv4Addr target);

// Turns a classified ICMP echo request into the echo reply, in place
// (addresses swapped, type 0, checksum updated).
void icmp_echo_reply_in_place(rte_mbuf* m, uint16_t ip_id);

// Turns a classified TCP segment that matches no connection into the RST the
// CLOSED state sends (RFC 9293 §3.10.7.1), in place: if the segment had ACK,
// <SEQ=SEG.ACK><CTL=RST>; otherwise <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>,
// where SEG.LEN counts SYN and FIN. Payload and options are trimmed.
// Returns false (and leaves the mbuf alone) when the segment itself is a RST:
// a RST is never answered.
bool tcp_rst_for_unknown_in_place(rte_mbuf* m, uint16_t ip_id);

// A TCP segment's headers, for build_tcp_frame.
struct TcpFrameSpec {
  rte_ether_addr src_mac{};
  rte_ether_addr dst_mac{};
  Ipv4Addr src_ip;
  Ipv4Addr dst_ip;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint8_t flags = 0;       // RTE_TCP_*_FLAG
  uint16_t window = 0;     // the field value
  uint8_t ttl = 64;
  uint8_t tos = 0;
  uint16_t ip_id = 0;
  TcpOptions opts;         // written with write_tcp_options
};

// A frame with Ethernet, IPv4 (DF set) and TCP headers and `payload_len`
// bytes of `payload` (may be nullptr when payload_len is 0), lengths set,
// l2/l3/l4_len set; checksums are left to finalize_tx_checksums. nullptr when
// the pool is empty or the frame does not fit one mbuf.
rte_mbuf* build_tcp_frame(rte_mempool* pool, const TcpFrameSpec& spec, const uint8_t* payload = nullptr,
                          uint16_t payload_len = 0);

}  // namespace chimney::net
