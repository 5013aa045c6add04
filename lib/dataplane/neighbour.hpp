// The slow path's ARP table (RFC 826, with the resolution and probing
// behaviour of RFC 1122 §2.3.2): an rte_hash from IPv4 address to a fixed
// array of entries; packets waiting for resolution are queued per entry.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <rte_ether.h>
#include <rte_mbuf.h>

#include "net/addr.hpp"

struct rte_hash;

namespace chimney::dataplane {

class NeighbourTable {
 public:
  static constexpr uint8_t kMaxPending = 4;  // RFC 1122 §2.3.2.2: queue at least one

  struct Params {
    std::string name;           // unique among rte_hash tables
    uint32_t entries = 1024;
    uint64_t reachable_ticks;   // an answer is trusted this long
    uint64_t retry_ticks;       // between requests for one address
    uint8_t max_probes = 3;     // requests before giving up
    int socket_id = 0;
  };

  // What the table asks of its owner.
  struct Sink {
    virtual ~Sink() = default;
    virtual void send_request(net::Ipv4Addr target) = 0;
    virtual void transmit(rte_mbuf* m, const rte_ether_addr& dst) = 0;
    virtual void drop_unresolved(rte_mbuf* m) = 0;
  };

  enum class Resolve : uint8_t {
    ready,    // `mac` is filled in; the caller sends the packet itself
    queued,   // the table holds the packet until the answer (or gives up)
    refused,  // table or pending queue full: the caller drops the packet
  };

  // Throws std::runtime_error when the hash cannot be created.
  explicit NeighbourTable(const Params& params);
  ~NeighbourTable();
  NeighbourTable(const NeighbourTable&) = delete;
  NeighbourTable& operator=(const NeighbourTable&) = delete;

  // RFC 826 "merge": an existing entry takes the sender's address (and its
  // queued packets leave); a new entry is made only when `create` (the frame
  // was addressed to us). Returns false when a new entry was refused (full).
  bool learn(net::Ipv4Addr ip, const rte_ether_addr& mac, uint64_t now, bool create, Sink& sink);

  // Finds the link address for `ip`. `m` may be nullptr (resolve only).
  Resolve resolve(net::Ipv4Addr ip, uint64_t now, rte_mbuf* m, rte_ether_addr& mac, Sink& sink);

  // Retries requests, ages answers, gives up on silent addresses.
  void tick(uint64_t now, Sink& sink);

  std::optional<rte_ether_addr> lookup(net::Ipv4Addr ip) const;
  uint32_t size() const { return used_; }

 private:
  enum class State : uint8_t { free, incomplete, reachable };
  struct Entry {
    net::Ipv4Addr ip;
    rte_ether_addr mac{};
    State state = State::free;
    uint8_t probes = 0;       // requests sent since the last answer
    uint8_t n_pending = 0;
    uint64_t confirmed = 0;   // when the last answer came
    uint64_t last_probe = 0;
    std::array<rte_mbuf*, kMaxPending> pending{};
  };

  Entry* find(net::Ipv4Addr ip) const;
  Entry* insert(net::Ipv4Addr ip);
  void erase(Entry& e);
  void probe(Entry& e, uint64_t now, Sink& sink);

  Params params_;
  rte_hash* hash_ = nullptr;
  std::unique_ptr<Entry[]> entries_;
  uint32_t used_ = 0;
};

}  // namespace chimney::dataplane
