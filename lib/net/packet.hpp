// Validation and classification of received frames (RFC 791, RFC 826, RFC 792,
// RFC 9293 §3.1). Never reads past the data of the mbuf.
#pragma once

#include <cstdint>

#include <rte_mbuf.h>

#include "net/drop_reason.hpp"

namespace chimney::net {

enum class FrameKind : uint8_t { drop, arp, icmp, tcp };

struct Classified {
  FrameKind kind = FrameKind::drop;
  DropReason reason = DropReason::count;  // meaningful when kind == drop
};

// Checks the frame's structure and checksums and classifies it. On success the
// mbuf's l2_len, l3_len and (for TCP and ICMP) l4_len are set; every header up
// to the end of the TCP options lies in the first segment. Checksums are taken
// from the RX offload flags when the NIC verified them, and computed otherwise.
// Addressing (is this frame for us?) is the caller's business.
Classified classify_frame(rte_mbuf* m);

// Payload bytes of a classified TCP segment (IP total length minus headers).
uint16_t tcp_payload_len(const rte_mbuf* m);

// The one's-complement sum (RFC 1071), not complemented, of `len` bytes at
// offset `off` of a possibly multi-segment mbuf; false when the packet is
// shorter. DPDK 22.11's rte_raw_cksum_mbuf() (and the
// rte_ipv4_udptcp_cksum_mbuf*() built on it) loses carries after a segment of
// odd length, so the checksums here use this instead.
bool raw_cksum_mbuf(const rte_mbuf* m, uint32_t off, uint32_t len, uint16_t& sum);

}  // namespace chimney::net
