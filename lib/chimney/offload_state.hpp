// The state a host hands over with a connection (CONTRACT C-1), in the three
// parts of NDIS: const (never changes), cached (host-owned, changed by
// update), delegated (target-owned, returned on terminate). The link-layer
// next hop and path MTU travel with it, as NDIS's neighbour and path states.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "chimney/net_buffer.hpp"

namespace chimney {

// RFC 9293 §3.3.2.
enum class TcpState : uint8_t {
  closed,
  listen,
  syn_sent,
  syn_received,
  established,
  fin_wait_1,
  fin_wait_2,
  close_wait,
  closing,
  last_ack,
  time_wait,
};
const char* to_string(TcpState s);

enum class CongestionAlgorithm : uint8_t { newreno, cubic };
const char* to_string(CongestionAlgorithm a);

struct ConstState {
  uint32_t local_ip = 0;   // host byte order
  uint32_t remote_ip = 0;
  uint16_t local_port = 0;
  uint16_t remote_port = 0;
  uint16_t remote_mss = 536;   // the MSS option the peer sent (RFC 9293 §3.7.1)
  uint8_t snd_wscale = 0;      // the peer's shift: scales windows we receive (RFC 7323 §2.3)
  uint8_t rcv_wscale = 0;      // our shift: scales windows we send
  bool window_scaling = false;
  bool timestamps = false;     // RFC 7323 negotiated
  bool sack = false;           // RFC 2018 SACK-permitted on both SYNs
};

struct CachedState {
  uint32_t initial_rcv_wnd = 65535;  // bytes; also the receive buffer budget
  uint8_t ttl = 64;
  uint8_t tos = 0;
  bool nagle = true;
  bool keepalive = false;
  uint32_t keepalive_timeout_ms = 7'200'000;  // RFC 1122 §4.2.3.6: >= 2 hours
  uint32_t keepalive_interval_ms = 75'000;
  uint8_t keepalive_probes = 9;
  uint8_t max_retransmissions = 15;  // RTO expirations in a row before RETRIEVE
  uint8_t max_persist_probes = 0;    // unanswered zero-window probes (0: no limit)
  CongestionAlgorithm congestion = CongestionAlgorithm::cubic;
};

struct PathState {
  std::array<uint8_t, 6> local_mac{};
  std::array<uint8_t, 6> next_hop_mac{};
  uint16_t path_mtu = 1500;
};

struct DelegatedState {
  TcpState state = TcpState::established;
  uint32_t rcv_nxt = 0;
  uint32_t rcv_wnd = 0;
  uint32_t snd_una = 0;
  uint32_t snd_nxt = 0;
  uint32_t snd_max = 0;
  uint32_t snd_wnd = 0;       // bytes, already scaled
  uint32_t max_snd_wnd = 0;
  uint32_t snd_wl1 = 0;
  uint32_t snd_wl2 = 0;
  uint32_t cwnd = 0;          // bytes; 0: the target picks the RFC 5681 initial window
  uint32_t ssthresh = 0x7fffffff;
  uint32_t srtt_us = 0;       // 0: no sample yet
  uint32_t rttvar_us = 0;
  uint32_t ts_recent = 0;
  uint32_t ts_recent_age_ms = 0;  // how long ago ts_recent was taken
  uint32_t ts_time = 0;           // our timestamp clock (ms) at hand-over
  uint16_t total_rt = 0;          // RTO expirations in a row
  uint8_t dup_ack_count = 0;
  uint32_t retransmit_timer_ms = 0;  // 0: not running
  uint32_t keepalive_timer_ms = 0;
  // Send data not yet acknowledged, in order, starting at snd_una (C-3): its
  // requests continue on the target and complete there.
  NetBufferList* send_data = nullptr;
  // Bytes of inherited send data the host posts as SENDs after the offload,
  // behind send_data (the control protocol's OFFLOAD carries no buffers). In
  // FIN_WAIT_1, CLOSING and LAST_ACK the inherited FIN goes after them.
  uint32_t send_data_to_follow = 0;
  // Received and not yet delivered, starting at rcv_nxt minus its length.
  std::vector<uint8_t> receive_data;
};

struct OffloadState {
  ConstState constant;
  CachedState cached;
  DelegatedState delegated;
  PathState path;
};

}  // namespace chimney
