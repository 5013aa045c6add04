// Definitions shared by the engine's source files (not part of its interface).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <rte_tcp.h>

#include "tcp/engine.hpp"
#include "tcp/request.hpp"
#include "tcp/seq.hpp"

namespace chimney::tcp {

// The 4-tuple, host byte order, as the table's key: 12 bytes hashed, the
// record 8-aligned for rte_hash_crc's 8-byte loads.
struct alignas(8) Engine::Key {
  uint32_t remote_ip;
  uint32_t local_ip;
  uint16_t remote_port;
  uint16_t local_port;
};
inline constexpr uint32_t kKeyLength = 12;
static_assert(offsetof(Engine::Key, local_port) + sizeof(uint16_t) == kKeyLength);

// C-19: what is kept of a connection in TIME_WAIT. No timer node: entries
// expire in the order they were made (Engine::poll), through prev/next.
struct Engine::TimeWait {
  struct Tuple {        // Key's fields, 4-aligned (Key is 8-aligned: 4 bytes of padding)
    uint32_t remote_ip;
    uint32_t local_ip;
    uint16_t remote_port;
    uint16_t local_port;
  } key;
  uint16_t window;      // last advertised, unscaled field value
  bool timestamps;
  uint32_t snd_nxt;
  uint32_t rcv_nxt;
  uint32_t ts_recent;
  uint32_t ts_offset;
  uint32_t expires_ms;  // engine ms (low 32 bits) when 2·MSL ends
  uint32_t prev;        // slots, kNoTimeWait at the ends; `next` also links free records
  uint32_t next;
  uint8_t local_mac[6];
  uint8_t remote_mac[6];
};
static_assert(sizeof(Engine::TimeWait) == 56, "a TIME_WAIT record is 56 bytes");
static_assert(std::is_trivially_default_constructible_v<Engine::TimeWait>,
              "records are not touched until used (docs/PERFORMANCE.md, Memory)");

inline Engine::Key key_of(const Engine::TimeWait& tw) {
  return {tw.key.remote_ip, tw.key.local_ip, tw.key.remote_port, tw.key.local_port};
}

inline Engine::Key key_of(const Tcb& c) {
  return {c.remote_ip, c.local_ip, c.remote_port, c.local_port};
}

// Flags of a TCP header (rte_tcp.h names).
inline constexpr uint8_t kFin = RTE_TCP_FIN_FLAG;
inline constexpr uint8_t kSyn = RTE_TCP_SYN_FLAG;
inline constexpr uint8_t kRst = RTE_TCP_RST_FLAG;
inline constexpr uint8_t kPsh = RTE_TCP_PSH_FLAG;
inline constexpr uint8_t kAck = RTE_TCP_ACK_FLAG;

// States in which our FIN has been queued (RFC 9293 §3.6).
inline bool fin_state(TcpState s) {
  return s == TcpState::fin_wait_1 || s == TcpState::fin_wait_2 || s == TcpState::closing ||
         s == TcpState::last_ack || s == TcpState::time_wait;
}

// Bytes of the send queue's data, FIN excluded.
inline uint32_t data_end(const Tcb& c) { return c.snd.queued_end - (c.flags.fin_queued ? 1 : 0); }

inline uint32_t flight_size(const Tcb& c) { return c.snd.max - c.snd.una; }

// Option bytes SACK blocks may take on a data segment while out-of-order data
// waits (RFC 2018 §3: NOP, NOP, kind, length, then up to three blocks beside
// the timestamps); the payload gives way to them.
inline uint32_t sack_space(const Tcb& c) {
  if (!c.flags.sack || c.ooo == nullptr) return 0;
  return c.flags.timestamps ? 28 : 36;
}

// The congestion-control interface (VPP-style): growth on ACKs, reaction to
// loss detected by duplicate ACKs or SACK, and to a retransmission timeout.
struct CongestionOps {
  void (*init)(Tcb& c);
  void (*on_ack)(Tcb& c, uint32_t acked, uint64_t now_ms);
  void (*on_loss)(Tcb& c, uint64_t now_ms);
  void (*on_rto)(Tcb& c, uint64_t now_ms);
};
const CongestionOps& congestion_ops(CongestionAlgorithm a);

}  // namespace chimney::tcp
