#include "dataplane/neighbour.hpp"

#include <stdexcept>

#include <rte_hash.h>
#include <rte_hash_crc.h>

namespace chimney::dataplane {

NeighbourTable::NeighbourTable(const Params& params) : params_(params) {
  rte_hash_parameters hp{};
  hp.name = params_.name.c_str();
  hp.entries = params_.entries;
  hp.key_len = sizeof(uint32_t);
  hp.hash_func = rte_hash_crc;
  hp.socket_id = params_.socket_id;
  hash_ = rte_hash_create(&hp);
  if (hash_ == nullptr) throw std::runtime_error("cannot create the neighbour table " + params_.name);
  // rte_hash may hold a few more keys than asked; size the entries by what it reports.
  entries_ = std::make_unique<Entry[]>(rte_hash_max_key_id(hash_) + 1);
}

NeighbourTable::~NeighbourTable() {
  if (hash_ != nullptr) {
    for (int32_t i = 0; i <= rte_hash_max_key_id(hash_); ++i)
      for (uint8_t p = 0; p < entries_[i].n_pending; ++p) rte_pktmbuf_free(entries_[i].pending[p]);
    rte_hash_free(hash_);
  }
}

NeighbourTable::Entry* NeighbourTable::find(net::Ipv4Addr ip) const {
  int32_t pos = rte_hash_lookup(hash_, &ip.value);
  return pos < 0 ? nullptr : &entries_[pos];
}

NeighbourTable::Entry* NeighbourTable::insert(net::Ipv4Addr ip) {
  if (used_ >= params_.entries) return nullptr;  // the configured capacity, not the hash's slack
  int32_t pos = rte_hash_add_key(hash_, &ip.value);
  if (pos < 0) return nullptr;
  Entry& e = entries_[pos];
  e = Entry{};
  e.ip = ip;
  ++used_;
  return &e;
}

void NeighbourTable::erase(Entry& e) {
  rte_hash_del_key(hash_, &e.ip.value);
  e = Entry{};
  --used_;
}

void NeighbourTable::probe(Entry& e, uint64_t now, Sink& sink) {
  e.last_probe = now;
  ++e.probes;
  sink.send_request(e.ip);
}

bool NeighbourTable::learn(net::Ipv4Addr ip, const rte_ether_addr& mac, uint64_t now, bool create,
                           Sink& sink) {
  Entry* e = find(ip);
  if (e == nullptr) {
    if (!create) return true;
    e = insert(ip);
    if (e == nullptr) return false;
  }
  e->mac = mac;
  e->state = State::reachable;
  e->confirmed = now;
  e->probes = 0;
  for (uint8_t p = 0; p < e->n_pending; ++p) sink.transmit(e->pending[p], mac);
  e->n_pending = 0;
  return true;
}

NeighbourTable::Resolve NeighbourTable::resolve(net::Ipv4Addr ip, uint64_t now, rte_mbuf* m,
                                                rte_ether_addr& mac, Sink& sink) {
  Entry* e = find(ip);
  if (e == nullptr) {
    e = insert(ip);
    if (e == nullptr) return Resolve::refused;
    e->state = State::incomplete;
    probe(*e, now, sink);
  }
  if (e->state == State::reachable) {
    // Past its reachable time the answer is still used while it is being
    // confirmed again (RFC 1122 §2.3.2.1: no flood of requests, one per retry).
    if (now - e->confirmed > params_.reachable_ticks && e->probes == 0) probe(*e, now, sink);
    mac = e->mac;
    return Resolve::ready;
  }
  if (m == nullptr) return Resolve::queued;
  if (e->n_pending == kMaxPending) return Resolve::refused;
  e->pending[e->n_pending++] = m;
  return Resolve::queued;
}

void NeighbourTable::tick(uint64_t now, Sink& sink) {
  const int32_t last = rte_hash_max_key_id(hash_);
  for (int32_t i = 0; i <= last; ++i) {
    Entry& e = entries_[i];
    if (e.state == State::free || e.probes == 0) continue;
    if (now - e.last_probe < params_.retry_ticks) continue;
    if (e.probes >= params_.max_probes) {
      // No answer: the address is unreachable; what waited for it is dropped.
      for (uint8_t p = 0; p < e.n_pending; ++p) sink.drop_unresolved(e.pending[p]);
      e.n_pending = 0;
      erase(e);
      continue;
    }
    probe(e, now, sink);
  }
}

std::optional<rte_ether_addr> NeighbourTable::lookup(net::Ipv4Addr ip) const {
  const Entry* e = find(ip);
  if (e == nullptr || e->state != State::reachable) return std::nullopt;
  return e->mac;
}

}  // namespace chimney::dataplane
