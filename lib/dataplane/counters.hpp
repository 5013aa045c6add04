// Counters of one lcore on one port: written only by that lcore, read by the
// telemetry thread and the SIGUSR1 dump (net::Counter). Per-port figures are
// sums over lcores, per-lcore figures sums over ports.
#pragma once

#include <array>
#include <cstdint>

#include <rte_common.h>

#include "net/counter.hpp"
#include "net/drop_reason.hpp"
#include "net/impair.hpp"
#include "tcp/stats.hpp"

namespace chimney::dataplane {

using net::Counter;

struct alignas(RTE_CACHE_LINE_SIZE) Counters {
  Counter rx_packets;
  Counter rx_bytes;
  Counter tx_packets;
  Counter tx_bytes;
  Counter to_slowpath;  // frames a worker handed to the slow path
  // Software steering (steer.hpp): TCP frames this worker received that
  // another worker owns, handed to it; and frames it took from others.
  Counter steered_out;
  Counter steered_in;
  // slow path (main lcore) replies and requests
  Counter arp_replies;
  Counter arp_requests;
  Counter icmp_echo_replies;
  Counter rst_sent;
  // The handover of a connection whose handshake the slow path made
  // (SlowPath::hand_over): segments that reached the slow path before the
  // engine had the connection, kept and passed to the owner worker (main
  // lcore); taken by its engine (worker); dropped: over the bound per
  // handshake or no ring room (main lcore), or no connection in the engine
  // when they got there, the offload failed or never came (worker).
  Counter handshake_parked;
  Counter handshake_parked_delivered;
  Counter handshake_parked_dropped;
  std::array<Counter, net::kDropReasonCount> drops;
  // The impairment stage (--impair-rx / --impair-tx), when there is one.
  net::ImpairStats impair_rx;
  net::ImpairStats impair_tx;
  // A copy of the worker's engine counters (tcp::EngineStats), published
  // every few milliseconds, for telemetry.
  std::array<Counter, tcp::EngineStats::kCount> engine;

  void drop(net::DropReason r) { drops[static_cast<size_t>(r)].add(); }
};

}  // namespace chimney::dataplane

namespace chimney::dataplane {

// A plain copy of counters, summed over lcores or ports.
struct CounterTotals {
  uint64_t rx_packets = 0;
  uint64_t rx_bytes = 0;
  uint64_t tx_packets = 0;
  uint64_t tx_bytes = 0;
  uint64_t to_slowpath = 0;
  uint64_t steered_out = 0;
  uint64_t steered_in = 0;
  uint64_t arp_replies = 0;
  uint64_t arp_requests = 0;
  uint64_t icmp_echo_replies = 0;
  uint64_t rst_sent = 0;
  uint64_t handshake_parked = 0;
  uint64_t handshake_parked_delivered = 0;
  uint64_t handshake_parked_dropped = 0;
  std::array<uint64_t, net::kDropReasonCount> drops{};
  struct Impair {
    uint64_t frames = 0, lost = 0, corrupted = 0, duplicated = 0, reordered = 0, overflow = 0;
    void add(const net::ImpairStats& s) {
      frames += s.frames.get();
      lost += s.lost.get();
      corrupted += s.corrupted.get();
      duplicated += s.duplicated.get();
      reordered += s.reordered.get();
      overflow += s.overflow.get();
    }
  };
  Impair impair_rx;
  Impair impair_tx;

  void add(const Counters& c) {
    rx_packets += c.rx_packets.get();
    rx_bytes += c.rx_bytes.get();
    tx_packets += c.tx_packets.get();
    tx_bytes += c.tx_bytes.get();
    to_slowpath += c.to_slowpath.get();
    steered_out += c.steered_out.get();
    steered_in += c.steered_in.get();
    arp_replies += c.arp_replies.get();
    arp_requests += c.arp_requests.get();
    icmp_echo_replies += c.icmp_echo_replies.get();
    rst_sent += c.rst_sent.get();
    handshake_parked += c.handshake_parked.get();
    handshake_parked_delivered += c.handshake_parked_delivered.get();
    handshake_parked_dropped += c.handshake_parked_dropped.get();
    for (size_t i = 0; i < drops.size(); ++i) drops[i] += c.drops[i].get();
    impair_rx.add(c.impair_rx);
    impair_tx.add(c.impair_tx);
  }
  uint64_t dropped() const {
    uint64_t n = 0;
    for (uint64_t d : drops) n += d;
    return n;
  }
};

}  // namespace chimney::dataplane
