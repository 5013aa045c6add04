// The slow path's handshake records (handshake.cpp); shared with
// slowpath.cpp only so that SlowPath's members are complete types there.
#pragma once

#include "dataplane/slowpath.hpp"
#include "net/tcp_options.hpp"

namespace chimney::dataplane {

struct SlowPath::Listener {
  uint16_t port = 0;
  uint16_t backlog = 0;
  uint16_t half_open = 0;
  CachedState cached;
  AcceptFn accept;
};

struct SlowPath::Handshake {
  enum class Phase : uint8_t { syn_sent, syn_received, offloading } phase = Phase::syn_sent;
  size_t port = 0;
  net::Ipv4Addr remote_ip;
  uint16_t remote_port = 0;
  uint16_t local_port = 0;
  uint32_t iss = 0;
  uint32_t irs = 0;
  uint8_t tries = 0;
  uint8_t parked = 0;        // offloading: segments passed to the engine (hand_over)
  uint64_t next_retry = 0;   // TSC
  uint64_t expires = 0;      // TSC, offloading: when the entry goes
  uint32_t ts_base = 0;      // our timestamp clock = ts_base + ms
  net::TcpOptions peer;      // what the peer's SYN (or SYN-ACK) offered
  uint16_t peer_window = 0;  // from the SYN: never scaled (RFC 7323 §2.2)
  rte_ether_addr peer_mac{};
  CachedState cached;
  ConnectDone done;          // active open
  Listener* listener = nullptr;  // passive open
};

}  // namespace chimney::dataplane
