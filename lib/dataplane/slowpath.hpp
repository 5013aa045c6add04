// The slow path on the main lcore: ARP (RFC 826) with a neighbour table per
// port, ICMP echo (RFC 792), and the RST for segments of no connection
// (RFC 9293 §3.10.7.1). It transmits through a worker (the from_slowpath
// ring), which owns the port's TX queues.
#pragma once

#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "chimney/offload_state.hpp"

#include "dataplane/dataplane.hpp"
#include "dataplane/neighbour.hpp"
#include "net/build.hpp"

namespace chimney::dataplane {

class SlowPath {
 public:
  explicit SlowPath(Dataplane& dp);
  ~SlowPath();
  SlowPath(const SlowPath&) = delete;
  SlowPath& operator=(const SlowPath&) = delete;

  // Active open for a host without a stack (RFC 9293 §3.5): SYN with MSS,
  // window scale, SACK-permitted and timestamps; on the SYN-ACK the ACK goes
  // out and `done` gets the established state to offload. `done` gets a
  // status and no state when the peer refused (REQUEST_ABORTED, a RST) or
  // never answered (FAILURE, after 3 retransmissions) or the request was bad.
  using ConnectDone = std::function<void(Status, const OffloadState*)>;
  struct ConnectRequest {
    size_t port = 0;
    net::Ipv4Addr remote_ip;
    uint16_t remote_port = 0;
    uint16_t local_port = 0;  // 0: an ephemeral port
    // With local_port 0 and several workers: an ephemeral port whose
    // connection this worker owns (rss.hpp), if one is free; -1: any.
    int worker = -1;
    CachedState cached;
  };
  Status connect(const ConnectRequest& req, ConnectDone done);

  // Passive open (RFC 9293 §3.5) on `local_port` of every port's address:
  // SYN-ACKs for up to `backlog` half-open connections, SYN cookies (RFC 4987)
  // beyond; each completed handshake goes to `accept` as a state to offload.
  using AcceptFn = std::function<void(const OffloadState&)>;
  Status listen(uint16_t local_port, uint16_t backlog, const CachedState& cached, AcceptFn accept);
  void unlisten(uint16_t local_port);

  struct HandshakeCounters {
    uint64_t syn_sent = 0, synack_sent = 0, established_active = 0, established_passive = 0;
    uint64_t cookies_sent = 0, cookies_accepted = 0, cookies_rejected = 0, refused = 0, timeouts = 0;
    uint64_t challenge_acks = 0, challenge_acks_limited = 0;  // RFC 5961 §3.2 in SYN-RECEIVED, §7
    // Segments kept for the engine while it takes a connection over
    // (hand_over), and those dropped instead (over the bound, no ring room).
    uint64_t parked = 0, parked_dropped = 0;
  };
  // Segments a handshake entry passes to the engine at most while the
  // connection is handed over (the rest are dropped and counted).
  static constexpr uint8_t kParkedPerHandshake = 16;
  const HandshakeCounters& handshake_counters() const { return hs_counters_; }
  // The port whose prefix (or gateway) reaches `ip`; -1 when none does.
  int port_for(net::Ipv4Addr ip) const;

  // Handles what the workers queued; returns the number of frames taken.
  unsigned poll(uint64_t now);
  // Neighbour retries and ageing; call a few times a second.
  void tick(uint64_t now);

  // Sends an IPv4 frame (Ethernet header present, source MAC set) to its next
  // hop on `port`, resolving the link address first (RFC 1122 §2.3.2.2:
  // queued while the answer is awaited, dropped and counted if none comes).
  void send_ipv4(size_t port, rte_mbuf* m, uint64_t now);

  const NeighbourTable& neighbours(size_t port) const { return *links_[port]->table; }

 private:
  struct Link : NeighbourTable::Sink {
    SlowPath* sp = nullptr;
    size_t port = 0;
    std::unique_ptr<NeighbourTable> table;
    void send_request(net::Ipv4Addr target) override;
    void transmit(rte_mbuf* m, const rte_ether_addr& dst) override;
    void drop_unresolved(rte_mbuf* m) override;
  };

  struct Handshake;
  struct Listener;
  struct TupleHash {
    size_t operator()(uint64_t k) const { return std::hash<uint64_t>()(k); }
  };
  void handle(rte_mbuf* m, uint64_t now);
  void handle_arp(size_t port, rte_mbuf* m, uint64_t now);
  bool handle_handshake(size_t port, rte_mbuf* m, uint64_t now);
  bool handle_listener(size_t port, rte_mbuf* m, uint64_t now);
  void send_syn(Handshake& hs, uint64_t now);
  void send_synack(const Handshake& hs, uint32_t ts_val, uint64_t now);
  void challenge_ack(const Handshake& hs, uint64_t now);
  void hand_over(Handshake& hs, rte_mbuf* m);
  OffloadState established(const Handshake& hs, uint64_t now) const;
  uint32_t ts_clock(const Handshake& hs, uint64_t now) const;
  void choose_iss(Handshake& hs, uint64_t now) const;
  net::TcpFrameSpec frame_for(const Handshake& hs);
  uint32_t cookie(const Handshake& hs, uint32_t t) const;
  void rst_reply(size_t port, rte_mbuf* m, uint64_t now);
  void send_tcp(size_t port, const net::TcpFrameSpec& spec, uint64_t now);
  void handshake_tick(uint64_t now);
  void transmit(size_t port, rte_mbuf* m);
  Counters& counters(size_t port) { return dp_.at(0, port); }

  Dataplane& dp_;
  std::vector<std::unique_ptr<Link>> links_;
  uint16_t ip_id_ = 0;
  uint16_t next_ephemeral_ = 49152;
  // Handshakes in progress, by (remote ip, remote port, local port).
  std::unordered_map<uint64_t, std::unique_ptr<Handshake>, TupleHash> handshakes_;
  std::unordered_map<uint16_t, std::unique_ptr<Listener>> listeners_;
  uint32_t cookie_secret_ = 0;
  HandshakeCounters hs_counters_;
  // RFC 5961 §7: challenge ACKs of the slow path, a budget per second.
  uint64_t challenge_window_tsc_ = 0;
  uint32_t challenge_acks_in_window_ = 0;
};

}  // namespace chimney::dataplane
