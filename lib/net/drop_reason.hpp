// Why a received frame was dropped. Counted per lcore, printed by name.
#pragma once

#include <cstddef>
#include <cstdint>

namespace chimney::net {

#define CHIMNEY_DROP_REASONS(X)                                              \
  X(eth_truncated)         /* frame shorter than an Ethernet header */       \
  X(eth_not_for_us)        /* not our MAC (broadcast is taken for ARP only) */ \
  X(eth_unsupported_type)  /* EtherType other than IPv4 or ARP */            \
  X(headers_not_contiguous) /* L2-L4 headers split across mbuf segments */   \
  X(arp_truncated)                                                           \
  X(arp_unsupported)       /* not Ethernet/IPv4, or an unknown opcode */     \
  X(arp_not_for_us)        /* target protocol address is not ours */         \
  X(ip_truncated)          /* shorter than the 20-byte IPv4 header */        \
  X(ip_bad_version)                                                          \
  X(ip_bad_ihl)            /* IHL < 5 or beyond the frame */                 \
  X(ip_bad_total_length)   /* total length < IHL*4 or beyond the frame */    \
  X(ip_bad_checksum)                                                         \
  X(ip_options)            /* IPv4 options are not accepted */               \
  X(ip_fragment)           /* MF set or fragment offset non-zero */          \
  X(ip_not_for_us)         /* destination address is not ours */            \
  X(ip_bad_source)         /* broadcast, multicast, zero or loopback source */\
  X(ip_unsupported_proto)  /* neither TCP nor ICMP */                        \
  X(icmp_truncated)                                                          \
  X(icmp_bad_checksum)                                                       \
  X(icmp_unsupported)      /* ICMP type other than echo request */           \
  X(tcp_truncated)         /* shorter than the 20-byte TCP header */         \
  X(tcp_bad_data_offset)   /* data offset < 5 or beyond the segment */       \
  X(tcp_bad_checksum)                                                        \
  X(tcp_bad_option)        /* zero, truncated or overlong option length */   \
  X(tcp_rst_no_connection) /* RST for no connection: never answered */       \
  X(slowpath_ring_full)    /* worker could not hand the frame to the slow path */\
  X(steer_ring_full)       /* worker could not hand the frame to its owner worker */\
  X(neighbour_unresolved)  /* no ARP answer in time, or the pending queue was full */\
  X(tx_full)               /* the TX queue refused the packet */            \
  X(no_mbuf)               /* the mempool was empty */

enum class DropReason : uint8_t {
#define CHIMNEY_X(name) name,
  CHIMNEY_DROP_REASONS(CHIMNEY_X)
#undef CHIMNEY_X
  count
};

inline constexpr size_t kDropReasonCount = static_cast<size_t>(DropReason::count);

const char* to_string(DropReason reason);

}  // namespace chimney::net
