#include <deque>
#include <memory>
#include <new>

#include <rte_cycles.h>
#include <rte_ether.h>
#include <rte_ip.h>

#include "dataplane/dataplane.hpp"
#include "dataplane/offload_ops.hpp"
#include "dataplane/steer.hpp"

namespace chimney::dataplane {

using net::DropReason;
using net::FrameKind;

CounterTotals Dataplane::port_totals(size_t port) const {
  CounterTotals t;
  for (size_t s = 0; s < slots(); ++s) t.add(counters[s * ports.size() + port]);
  return t;
}

CounterTotals Dataplane::slot_totals(size_t slot) const {
  CounterTotals t;
  for (size_t p = 0; p < ports.size(); ++p) t.add(counters[slot * ports.size() + p]);
  return t;
}

net::Classified accept_frame(const Port& port, rte_mbuf* m) {
  net::Classified c = net::classify_frame(m);
  if (c.kind == FrameKind::drop) return c;
  const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
  const bool to_us = rte_is_same_ether_addr(&eth->dst_addr, &port.mac);
  if (c.kind == FrameKind::arp) {
    if (!to_us && !rte_is_broadcast_ether_addr(&eth->dst_addr))
      return {FrameKind::drop, DropReason::eth_not_for_us};
    return c;
  }
  if (!to_us) return {FrameKind::drop, DropReason::eth_not_for_us};
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  if (rte_be_to_cpu_32(ip->dst_addr) != port.config.address.addr.value)
    return {FrameKind::drop, DropReason::ip_not_for_us};
  return c;
}

void IdleBackoff::update(unsigned work) {
  if (work != 0) {
    idle_ = 0;
    return;
  }
  if (sleep_us_ == 0) return;
  if (++idle_ >= kSpinsBeforeSleep) rte_delay_us_sleep(sleep_us_);
}

tcp::EngineConfig engine_config(const Dataplane& dp, size_t worker, size_t port) {
  tcp::EngineConfig cfg;
  cfg.name = "w" + std::to_string(worker) + "p" + std::to_string(port);
  cfg.socket_id = static_cast<int>(rte_socket_id());
  cfg.max_connections = dp.cfg.max_connections;
  cfg.time_wait_entries = dp.cfg.time_wait_entries != 0 ? dp.cfg.time_wait_entries
                                                        : tcp::default_time_wait_entries(dp.cfg.max_connections);
  cfg.msl_ms = dp.cfg.msl_ms;
  cfg.ooo_segments = dp.cfg.ooo_segments;
  cfg.ooo_segments_per_connection = dp.cfg.ooo_segments_per_connection;
  cfg.tx_caps = dp.ports[port].tx_caps;
  cfg.header_pool = dp.ports[port].pool;
  cfg.attach_pool = dp.attach_pools[port];
  // vhost-user maps only the EAL's memory, not the hosts' regions.
  cfg.copy_payload = dp.ports[port].config.kind == PortKind::virtio_user;
  cfg.max_rcv_window = 16u << 20;  // what one TERMINATE_COMPLETE can carry back
  return cfg;
}

void* alloc_op_record(Dataplane& dp) {
  void* r = nullptr;
  return rte_mempool_get(dp.op_pool, &r) == 0 ? r : nullptr;
}

void free_op_record(Dataplane& dp, void* record) { rte_mempool_put(dp.op_pool, record); }

RxStep receive_burst(const Port& port, uint16_t queue, uint16_t burst, tcp::Engine& engine, uint64_t now_us,
                     Counters& c, net::Impairment* impair, rte_mbuf** rx, rte_mbuf** tcp, rte_mbuf** slow,
                     Steering* steer) {
  RxStep step;
  uint16_t n = rte_eth_rx_burst(port.id, queue, rx, burst);
  if (impair != nullptr) n = impair->pass(rx, n, now_us, rx, burst);
  if (n == 0) return step;
  step.received = n;
  uint64_t bytes = 0;
  uint16_t n_tcp = 0;
  uint16_t n_slow = 0;
  for (uint16_t i = 0; i < n; ++i) {
    rte_mbuf* m = rx[i];
    bytes += rte_pktmbuf_pkt_len(m);
    const net::Classified k = accept_frame(port, m);
    if (k.kind == FrameKind::drop) {
      c.drop(k.reason);
      rte_pktmbuf_free(m);
    } else if (k.kind == FrameKind::tcp) {
      if (steer == nullptr || steer->keep(port, m)) tcp[n_tcp++] = m;  // else its owner's
    } else {
      slow[n_slow++] = m;  // ARP and ICMP belong to the slow path
    }
  }
  c.rx_packets.add(n);
  c.rx_bytes.add(bytes);
  if (steer != nullptr) steer->flush(c);
  // Offloaded connections' segments stay here; the rest (handshakes,
  // closed ports) go to the slow path.
  if (n_tcp != 0) n_slow = static_cast<uint16_t>(n_slow + engine.input(tcp, n_tcp, now_us, slow + n_slow));
  step.to_slowpath = n_slow;
  return step;
}

void queue_to_slowpath(rte_ring* ring, rte_mbuf** frames, unsigned n, Counters& c) {
  const unsigned queued = rte_ring_sp_enqueue_burst(ring, reinterpret_cast<void**>(frames), n, nullptr);
  c.to_slowpath.add(queued);
  for (unsigned i = queued; i < n; ++i) {
    c.drop(DropReason::slowpath_ring_full);
    rte_pktmbuf_free(frames[i]);
  }
}

unsigned take_from_slowpath(const Dataplane& dp, rte_ring* ring, std::vector<TxQueue>& tx, rte_mbuf** scratch,
                            unsigned max) {
  const unsigned n = rte_ring_sc_dequeue_burst(ring, reinterpret_cast<void**>(scratch), max, nullptr);
  for (unsigned i = 0; i < n; ++i) tx[dp.port_index[scratch[i]->port]].push(scratch[i]);
  return n;
}

void hand_over_input(tcp::Engine& engine, rte_mbuf* m, uint64_t now_us, Counters& c) {
  rte_mbuf* unmatched = nullptr;
  if (engine.input(&m, 1, now_us, &unmatched) == 0) {
    c.handshake_parked_delivered.add();
    return;
  }
  c.handshake_parked_dropped.add();
  rte_pktmbuf_free(unmatched);
}

namespace {

// The host as a worker sees it: every callback becomes an OffloadNote for
// the main lcore. Data with no posted receive is never taken here (the host
// is in another process): it stays buffered (C-10) and RECEIVE_READY says so.
class NoteHost : public HostCallbacks {
 public:
  NoteHost(Dataplane& dp, rte_ring* ring, uint16_t port) : dp_(dp), ring_(ring), port_(port) {}

  void offload_complete(ConnectionHandle h, void* ctx, Status s) override {
    OffloadNote* n = note(OffloadNote::Kind::offload, h, ctx);
    n->status = s;
    post(n);
  }
  void send_complete(ConnectionHandle h, void* ctx, NetBufferList* chain) override {
    OffloadNote* n = note(OffloadNote::Kind::send, h, ctx);
    n->nbl = chain;
    post(n);
  }
  void receive_complete(ConnectionHandle h, void* ctx, NetBufferList* chain) override {
    OffloadNote* n = note(OffloadNote::Kind::receive, h, ctx);
    n->nbl = chain;
    post(n);
  }
  IndicateResult receive_indicate(ConnectionHandle h, void* ctx, const uint8_t*, uint32_t length, bool) override {
    OffloadNote* n = note(OffloadNote::Kind::receive_ready, h, ctx);
    n->value = length;
    post(n);
    return {0};
  }
  void disconnect_complete(ConnectionHandle h, void* ctx, NetBufferList* nbl) override {
    OffloadNote* n = note(OffloadNote::Kind::disconnect, h, ctx);
    n->nbl = nbl;
    post(n);
  }
  void terminate_complete(ConnectionHandle h, void* ctx, Status s, DelegatedState& state) override {
    OffloadNote* n = note(OffloadNote::Kind::terminate, h, ctx);
    n->status = s;
    n->state = new DelegatedState(std::move(state));  // a terminate is rare: the control path's
    post(n);
  }
  void event(ConnectionHandle h, void* ctx, EventKind k, RetrieveReason r, uint32_t value) override {
    OffloadNote* n = note(OffloadNote::Kind::event, h, ctx);
    n->event = k;
    n->reason = r;
    n->value = value;
    post(n);
  }

  // Notes that found the ring full wait here (never dropped: every request
  // completes exactly once).
  void retry() {
    while (!backlog_.empty() && rte_ring_sp_enqueue(ring_, backlog_.front()) == 0) backlog_.pop_front();
  }

 private:
  OffloadNote* note(OffloadNote::Kind k, ConnectionHandle h, void* ctx) {
    void* r = alloc_op_record(dp_);
    const bool heap = r == nullptr;
    if (heap) r = ::operator new(sizeof(OffloadNote));  // pool exhausted: never lose a completion
    auto* n = new (r) OffloadNote{};
    n->heap = heap;
    n->kind = k;
    n->handle = h;
    n->host_context = ctx;
    n->port = port_;
    return n;
  }
  void post(OffloadNote* n) {
    if (!backlog_.empty() || rte_ring_sp_enqueue(ring_, n) != 0) backlog_.push_back(n);
  }
  Dataplane& dp_;
  rte_ring* ring_;
  uint16_t port_;
  std::deque<OffloadNote*> backlog_;
};

void apply(tcp::Engine& e, NoteHost& host, const OffloadOp& op) {
  Status st = Status::pending;
  switch (op.kind) {
    case OffloadOp::Kind::offload: {
      ConnectionHandle h;
      e.initiate_offload(*op.state, op.host_context, &h);
      return;  // completes through offload_complete on the next poll
    }
    case OffloadOp::Kind::send: st = e.send(op.handle, op.nbl); break;
    case OffloadOp::Kind::receive: st = e.receive(op.handle, op.nbl); break;
    case OffloadOp::Kind::disconnect: st = e.disconnect(op.handle, op.nbl, op.disconnect_kind); break;
    case OffloadOp::Kind::terminate: st = e.terminate(op.handle); break;
    case OffloadOp::Kind::input: return;  // worker_main: hand_over_input
  }
  if (st == Status::pending) return;
  // Refused at once (a handle already released): complete it here.
  for (NetBufferList* n = op.nbl; n != nullptr; n = n->next) n->status = st;
  switch (op.kind) {
    case OffloadOp::Kind::send: host.send_complete(op.handle, op.host_context, op.nbl); break;
    case OffloadOp::Kind::receive: host.receive_complete(op.handle, op.host_context, op.nbl); break;
    case OffloadOp::Kind::disconnect: host.disconnect_complete(op.handle, op.host_context, op.nbl); break;
    default: {
      DelegatedState none;
      host.terminate_complete(op.handle, op.host_context, st, none);
    }
  }
}

}  // namespace

int worker_main(void* arg) {
  auto& ctx = *static_cast<WorkerContext*>(arg);
  Dataplane& dp = *ctx.dp;
  const uint16_t queue = static_cast<uint16_t>(ctx.slot - 1);
  const uint16_t burst = dp.cfg.burst;
  rte_ring* ring = dp.to_slowpath[queue];
  rte_ring* from_slow = dp.from_slowpath[queue];

  std::vector<TxQueue> tx(dp.ports.size());
  for (size_t p = 0; p < dp.ports.size(); ++p) tx[p].bind(dp.ports[p].id, queue, &dp.at(ctx.slot, p));
  // Faults on purpose (--impair-rx/--impair-tx): a seeded stage per worker,
  // port and direction, so a run replays from the seed it logged.
  using net::Impairment;
  std::vector<std::unique_ptr<Impairment>> rx_impair(dp.ports.size());
  std::vector<std::unique_ptr<Impairment>> tx_impair(dp.ports.size());
  for (size_t p = 0; p < dp.ports.size(); ++p) {
    const uint64_t stage = (uint64_t{queue} << 32) | (p << 1);
    if (dp.cfg.impair_rx.active())
      rx_impair[p] = std::make_unique<Impairment>(dp.cfg.impair_rx, Impairment::stage_seed(dp.cfg.impair_seed, stage),
                                                  Impairment::Direction::rx, dp.ports[p].pool,
                                                  &dp.at(ctx.slot, p).impair_rx);
    if (dp.cfg.impair_tx.active()) {
      tx_impair[p] = std::make_unique<Impairment>(dp.cfg.impair_tx,
                                                  Impairment::stage_seed(dp.cfg.impair_seed, stage | 1),
                                                  Impairment::Direction::tx, dp.ports[p].pool,
                                                  &dp.at(ctx.slot, p).impair_tx);
      tx[p].impair(tx_impair[p].get());
    }
  }
  // One engine per port: its own connections, timers and TIME_WAIT entries.
  std::vector<std::unique_ptr<PortSink>> sinks;
  std::vector<std::unique_ptr<NoteHost>> hosts;
  std::vector<std::unique_ptr<tcp::Engine>> engines;
  for (size_t p = 0; p < dp.ports.size(); ++p) {
    sinks.push_back(std::make_unique<PortSink>(tx[p]));
    hosts.push_back(std::make_unique<NoteHost>(dp, dp.notes[queue], static_cast<uint16_t>(p)));
    engines.push_back(std::make_unique<tcp::Engine>(engine_config(dp, queue, p), *hosts[p], *sinks[p]));
  }
  // Several workers: frames of another worker's connections go to it.
  std::unique_ptr<Steering> steer;
  if (dp.placement.workers() > 1) {
    std::vector<tcp::Engine*> raw;
    for (auto& e : engines) raw.push_back(e.get());
    steer = std::make_unique<Steering>(dp, queue, std::move(raw));
  }

  std::array<rte_mbuf*, 256> rx{};
  std::array<rte_mbuf*, 256> tcp{};
  std::array<rte_mbuf*, 256> slow{};
  std::array<void*, 64> ops{};
  std::vector<bool> offloaded(dp.ports.size());  // an offload applied since the engine's last poll
  IdleBackoff idle(dp.cfg.idle_sleep_us);
  const uint64_t cycles_per_us = rte_get_tsc_hz() / 1'000'000 == 0 ? 1 : rte_get_tsc_hz() / 1'000'000;
  uint64_t next_publish_us = 0;

  while (!dp.stop.load(std::memory_order_relaxed)) {
    unsigned work = 0;
    const uint64_t now_us = rte_get_tsc_cycles() / cycles_per_us;
    // Requests from the main lcore.
    const unsigned n_ops = rte_ring_sc_dequeue_burst(dp.ops[queue], ops.data(), ops.size(), nullptr);
    if (n_ops != 0) {
      for (unsigned i = 0; i < n_ops; ++i) {
        auto* op = static_cast<OffloadOp*>(ops[i]);
        tcp::Engine& e = *engines[op->port];
        if (op->kind == OffloadOp::Kind::input) {
          // A segment the slow path kept during the handover, behind its
          // connection's offload: the offload completes to the host first
          // (the engine's poll), then the engine takes the segment.
          if (offloaded[op->port]) e.poll(now_us);
          offloaded[op->port] = false;
          hand_over_input(e, op->frame, now_us, dp.at(ctx.slot, op->port));
        } else {
          apply(e, *hosts[op->port], *op);
          if (op->kind == OffloadOp::Kind::offload) offloaded[op->port] = true;
        }
        free_op_record(dp, op);
      }
      // New connections' completions go out before anything they receive
      // (the host hears of a connection before its data).
      for (size_t p = 0; p < dp.ports.size(); ++p) {
        if (offloaded[p]) engines[p]->poll(now_us);
        offloaded[p] = false;
      }
    }
    work += n_ops;
    if (steer) work += steer->receive(now_us, ring);  // what other workers received for us
    for (size_t p = 0; p < dp.ports.size(); ++p) {
      Counters& c = dp.at(ctx.slot, p);
      const RxStep step = receive_burst(dp.ports[p], queue, burst, *engines[p], now_us, c, rx_impair[p].get(),
                                        rx.data(), tcp.data(), slow.data(), steer.get());
      work += step.received;
      engines[p]->poll(now_us);
      if (step.to_slowpath != 0) queue_to_slowpath(ring, slow.data(), step.to_slowpath, c);
      hosts[p]->retry();
    }
    // Frames the slow path built go out on this worker's TX queues.
    work += take_from_slowpath(dp, from_slow, tx, slow.data(), burst);
    for (auto& q : tx) q.flush();
    if (now_us >= next_publish_us) {  // engine counters for telemetry
      next_publish_us = now_us + 10'000;
      for (size_t p = 0; p < dp.ports.size(); ++p) {
        const uint64_t* v = engines[p]->stats().values();
        auto& out = dp.at(ctx.slot, p).engine;
        for (size_t i = 0; i < out.size(); ++i) out[i].set(v[i]);
      }
    }
    idle.update(work);
  }
  engines.clear();  // buffers the engines hold go back before the pools do
  for (auto& q : tx) q.flush();
  for (auto& q : tx) q.impair(nullptr);
  rx_impair.clear();  // frames still delayed are freed
  tx_impair.clear();
  return 0;
}

}  // namespace chimney::dataplane
