#include "dataplane/rss.hpp"

#include <cstring>
#include <vector>

#include <rte_ethdev.h>

namespace chimney::dataplane {

Placement::Placement(unsigned workers) : workers_(workers == 0 ? 1 : workers) {
  for (unsigned i = 0; i < kRetaSize; ++i) reta_[i] = static_cast<uint16_t>(i % workers_);
  // The hash of a tuple whose halves fold to x is the hash of the tuple
  // {x, 0, 0}; it is linear in x, so a table per byte of x.
  for (uint32_t b = 0; b < 256; ++b) {
    fold_lo_[b] = rss_hash(b, 0, 0, 0);
    fold_hi_[b] = rss_hash(b << 8, 0, 0, 0);
  }
}

RssState program_rss(uint16_t port_id, const Placement& placement, bool configured) {
  RssState st;
  st.configured = configured;
  if (!configured) {
    if (placement.workers() > 1) st.note = "the device reports no RSS: software steering";
    return st;
  }
  rte_eth_dev_info info{};
  if (rte_eth_dev_info_get(port_id, &info) != 0) {
    st.note = "no device info";
    return st;
  }
  st.reta_size = info.reta_size;
  // The device's table, entry j = our entry j % kRetaSize: the same owner
  // for every hash when the device's size is a multiple of ours, or (a
  // smaller table) when our table repeats with the device's period.
  const unsigned size = info.reta_size;
  const auto& reta = placement.reta();
  bool fits = size != 0 && size % RTE_ETH_RETA_GROUP_SIZE == 0;
  if (fits && size < Placement::kRetaSize) {
    for (unsigned j = 0; j < Placement::kRetaSize; ++j) fits &= reta[j] == reta[j % size];
  } else if (fits) {
    fits = size % Placement::kRetaSize == 0;
  }
  if (fits) {
    std::vector<rte_eth_rss_reta_entry64> conf(size / RTE_ETH_RETA_GROUP_SIZE);
    for (unsigned j = 0; j < size; ++j) {
      conf[j / RTE_ETH_RETA_GROUP_SIZE].mask = ~uint64_t{0};
      conf[j / RTE_ETH_RETA_GROUP_SIZE].reta[j % RTE_ETH_RETA_GROUP_SIZE] = reta[j % Placement::kRetaSize];
    }
    st.reta_programmed = rte_eth_dev_rss_reta_update(port_id, conf.data(), static_cast<uint16_t>(size)) == 0;
  }
  // The mbuf hash is used only when the device says it hashes IPv4/TCP
  // 4-tuples with our key; otherwise every frame is hashed in software.
  alignas(4) uint8_t key[kRssKeySize] = {};
  rte_eth_rss_conf conf{};
  conf.rss_key = key;
  conf.rss_key_len = sizeof(key);
  if (rte_eth_dev_rss_hash_conf_get(port_id, &conf) == 0 && conf.rss_key_len == kRssKeySize &&
      std::memcmp(key, kSymmetricRssKey, kRssKeySize) == 0 && (conf.rss_hf & RTE_ETH_RSS_NONFRAG_IPV4_TCP) != 0)
    st.hash_ours = true;
  if (st.reta_programmed && st.hash_ours) st.note = "hardware RSS (RETA and key programmed)";
  else if (st.reta_programmed) st.note = "hardware RETA programmed, hash not verified: software hash";
  else if (size == 0) st.note = "no hardware RETA: software steering";
  else st.note = "hardware RETA not programmable: software steering";
  return st;
}

}  // namespace chimney::dataplane
