#include "dataplane/steer.hpp"

#include "dataplane/dataplane.hpp"
#include "tcp/engine.hpp"

namespace chimney::dataplane {

Steering::Steering(Dataplane& dp, unsigned self, std::vector<tcp::Engine*> engines)
    : dp_(dp), self_(self), slot_(size_t{self} + 1), placement_(dp.placement), engines_(std::move(engines)) {
  const unsigned workers = placement_.workers();
  to_.assign(workers, nullptr);
  out_.resize(workers);
  for (unsigned w = 0; w < workers; ++w) {
    if (w == self) continue;
    to_[w] = dp.steer_ring(self, w);
    from_.push_back(dp.steer_ring(w, self));
  }
}

void Steering::flush(Counters& c) {
  for (unsigned w = 0; w < out_.size(); ++w) {
    Staged& s = out_[w];
    if (s.n == 0) continue;
    const unsigned sent = rte_ring_sp_enqueue_burst(to_[w], reinterpret_cast<void**>(s.frames.data()), s.n, nullptr);
    c.steered_out.add(sent);
    for (unsigned i = sent; i < s.n; ++i) {
      c.drop(net::DropReason::steer_ring_full);
      rte_pktmbuf_free(s.frames[i]);
    }
    s.n = 0;
  }
}

void Steering::feed(size_t port, rte_mbuf** frames, uint16_t n, uint64_t now_us, rte_ring* to_slowpath) {
  Counters& c = dp_.at(slot_, port);
  c.steered_in.add(n);
  const uint16_t n_slow = engines_[port]->input(frames, n, now_us, slow_.data());
  if (n_slow == 0) return;
  const unsigned queued = rte_ring_sp_enqueue_burst(to_slowpath, reinterpret_cast<void**>(slow_.data()), n_slow,
                                                    nullptr);
  c.to_slowpath.add(queued);
  for (unsigned i = queued; i < n_slow; ++i) {
    c.drop(net::DropReason::slowpath_ring_full);
    rte_pktmbuf_free(slow_[i]);
  }
}

unsigned Steering::receive(uint64_t now_us, rte_ring* to_slowpath) {
  unsigned total = 0;
  for (rte_ring* ring : from_) {
    const unsigned n = rte_ring_sc_dequeue_burst(ring, reinterpret_cast<void**>(in_.data()), kMaxBurst, nullptr);
    if (n == 0) continue;
    total += n;
    if (engines_.size() == 1) {
      feed(0, in_.data(), static_cast<uint16_t>(n), now_us, to_slowpath);
      continue;
    }
    for (size_t p = 0; p < engines_.size(); ++p) {  // several ports: a burst per port
      uint16_t k = 0;
      for (unsigned i = 0; i < n; ++i)
        if (static_cast<size_t>(dp_.port_index[in_[i]->port]) == p) by_port_[k++] = in_[i];
      if (k != 0) feed(p, by_port_.data(), k, now_us, to_slowpath);
    }
  }
  return total;
}

}  // namespace chimney::dataplane
