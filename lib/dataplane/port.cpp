#include "dataplane/port.hpp"

#include <algorithm>
#include <stdexcept>
#include <string_view>
#include <utility>

#include <rte_cycles.h>
#include <rte_ethdev.h>

#include "dataplane/rss.hpp"
#include "net/addr.hpp"

namespace chimney::dataplane {

namespace {

[[noreturn]] void fail(const std::string& device, const std::string& what, int rc) {
  throw std::runtime_error("port " + device + ": " + what + ": " + rte_strerror(-rc));
}

}  // namespace

Port open_port(size_t index, const std::string& device, const PortConfig& pc, const Config& cfg,
               unsigned workers) {
  Port port;
  port.index = index;
  port.device = device;
  port.config = pc;
  if (rte_eth_dev_get_port_by_name(device.c_str(), &port.id) != 0)
    throw std::runtime_error("port " + device + " (" + pc.str() +
                             "): no such device; the driver did not probe it (see the EAL lines above)");

  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(port.id, &info); rc != 0) fail(device, "device info", rc);
  const uint16_t rxq = static_cast<uint16_t>(workers);
  const uint16_t txq = static_cast<uint16_t>(workers);
  if (info.max_rx_queues < rxq || info.max_tx_queues < txq)
    throw std::runtime_error("port " + device + ": needs " + std::to_string(rxq) + " RX and " +
                             std::to_string(txq) + " TX queues, the device has " +
                             std::to_string(info.max_rx_queues) + " and " +
                             std::to_string(info.max_tx_queues));

  rte_eth_conf conf{};
  // Checksum offloads when the port has them; software otherwise (net/build).
  const uint64_t rx_ck = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM | RTE_ETH_RX_OFFLOAD_TCP_CKSUM;
  if ((info.rx_offload_capa & rx_ck) == rx_ck) {
    conf.rxmode.offloads |= rx_ck;
    port.rx_checksum = true;
  }
  if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) {
    conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_IPV4_CKSUM;
    port.tx_caps.ipv4 = true;
  }
  // net_tap (DPDK 22.11) sums an offloaded TCP checksum segment by segment
  // and gets it wrong when a segment other than the last has an odd length:
  // a retransmission of 1113 + 335 bytes of two sends left with a bad
  // checksum (DPDK's rte_raw_cksum_mbuf has the same fault; net/build.cpp's
  // raw_cksum_mbuf does not). Its "offload" is software in the PMD anyway,
  // so chimney sums TCP itself there.
  const bool tcp_cksum_broken = std::string_view(info.driver_name) == "net_tap";
  if ((info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_TCP_CKSUM) && !tcp_cksum_broken) {
    conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_TCP_CKSUM;
    port.tx_caps.tcp = true;
  }
  if ((info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_TCP_TSO) && port.tx_caps.tcp) {
    conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_TCP_TSO;
    port.tso = true;
  }
  if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS)
    conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
  if (rxq > 1 && info.flow_type_rss_offloads != 0) {
    conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
    conf.rx_adv_conf.rss_conf.rss_hf = (RTE_ETH_RSS_IPV4 | RTE_ETH_RSS_NONFRAG_IPV4_TCP) &
                                       info.flow_type_rss_offloads;
    if (info.rx_offload_capa & RTE_ETH_RX_OFFLOAD_RSS_HASH) conf.rxmode.offloads |= RTE_ETH_RX_OFFLOAD_RSS_HASH;
    // Our key where the device takes one of its size (rss.hpp: symmetric,
    // and the one the workers and the control plane hash with).
    if (info.hash_key_size == kRssKeySize) {
      conf.rx_adv_conf.rss_conf.rss_key = const_cast<uint8_t*>(kSymmetricRssKey);
      conf.rx_adv_conf.rss_conf.rss_key_len = kRssKeySize;
    }
  }

  if (int rc = rte_eth_dev_configure(port.id, rxq, txq, &conf); rc != 0) fail(device, "configure", rc);
  uint16_t rx_desc = cfg.rx_desc;
  uint16_t tx_desc = cfg.tx_desc;
  if (int rc = rte_eth_dev_adjust_nb_rx_tx_desc(port.id, &rx_desc, &tx_desc); rc != 0)
    fail(device, "descriptor counts", rc);

  const int socket = rte_eth_dev_socket_id(port.id) < 0 ? 0 : rte_eth_dev_socket_id(port.id);
  const std::string pool_name = "mbuf_p" + std::to_string(index);
  const unsigned cache = cfg.mbufs >= 4096 ? 256 : 32;
  port.pool = rte_pktmbuf_pool_create(pool_name.c_str(), cfg.mbufs, cache, 0,
                                      RTE_MBUF_DEFAULT_BUF_SIZE, socket);
  if (port.pool == nullptr)
    throw std::runtime_error("port " + device + ": cannot create a pool of " +
                             std::to_string(cfg.mbufs) + " mbufs: " + rte_strerror(rte_errno) +
                             " (lower --mbufs or raise --memory-mb)");

  for (uint16_t q = 0; q < rxq; ++q) {
    rte_eth_rxconf rxconf = info.default_rxconf;
    rxconf.offloads = conf.rxmode.offloads;
    if (int rc = rte_eth_rx_queue_setup(port.id, q, rx_desc, socket, &rxconf, port.pool); rc != 0)
      fail(device, "RX queue " + std::to_string(q), rc);
  }
  for (uint16_t q = 0; q < txq; ++q) {
    rte_eth_txconf txconf = info.default_txconf;
    txconf.offloads = conf.txmode.offloads;
    if (int rc = rte_eth_tx_queue_setup(port.id, q, tx_desc, socket, &txconf); rc != 0)
      fail(device, "TX queue " + std::to_string(q), rc);
  }

  if (pc.mac) {
    rte_ether_addr mac = *pc.mac;
    if (int rc = rte_eth_dev_default_mac_addr_set(port.id, &mac); rc != 0) fail(device, "set mac", rc);
  }
  if (int rc = rte_eth_dev_set_mtu(port.id, pc.mtu); rc != 0) {
    // Some devices (memif) cannot change their MTU: fine when it is already ours.
    uint16_t mtu = 0;
    if (rc != -ENOTSUP || rte_eth_dev_get_mtu(port.id, &mtu) != 0 || mtu != pc.mtu)
      fail(device, "set mtu " + std::to_string(pc.mtu), rc);
  }
  if (int rc = rte_eth_macaddr_get(port.id, &port.mac); rc != 0) fail(device, "read mac", rc);

  if (int rc = rte_eth_dev_start(port.id); rc != 0) fail(device, "start", rc);
  port.started = true;
  // Hardware RSS sends each connection to its owner's queue where the
  // device lets us program its RETA; software steering covers the rest.
  port.rss = program_rss(port.id, Placement(workers), conf.rxmode.mq_mode == RTE_ETH_MQ_RX_RSS);
  // Only frames for our MAC and broadcast; the device may not support changing it.
  rte_eth_promiscuous_disable(port.id);
  return port;
}

void close_port(Port& port) {
  if (port.started) {
    rte_eth_dev_stop(port.id);
    port.started = false;
  }
  rte_eth_dev_close(port.id);
}

TxQueue& TxQueue::operator=(TxQueue&& o) noexcept {
  if (this != &o) {
    discard();
    pkts_ = o.pkts_;
    n_ = std::exchange(o.n_, 0);
    refused_ = std::exchange(o.refused_, 0);
    refused_since_ = o.refused_since_;
    port_id_ = o.port_id_;
    queue_id_ = o.queue_id_;
    counters_ = o.counters_;
    impair_ = o.impair_;
  }
  return *this;
}

uint16_t TxQueue::flush() {
  if (impair_ != nullptr) {  // only the frames that have not passed it yet
    const uint64_t now_us = rte_get_tsc_cycles() / (rte_get_tsc_hz() / 1'000'000);
    n_ = static_cast<uint16_t>(refused_ + impair_->pass(pkts_.data() + refused_, n_ - refused_, now_us,
                                                         pkts_.data() + refused_, kCapacity - refused_));
  }
  if (n_ == 0) return 0;
  const uint16_t sent = rte_eth_tx_burst(port_id_, queue_id_, pkts_.data(), n_);
  uint64_t bytes = 0;
  for (uint16_t i = 0; i < sent; ++i) bytes += rte_pktmbuf_pkt_len(pkts_[i]);
  counters_->tx_packets.add(sent);
  counters_->tx_bytes.add(bytes);
  if (sent == n_) {
    n_ = refused_ = 0;
    return 0;
  }
  // What the queue refused goes first on the next flush, in order. When it
  // took nothing of what waited for kRefusedForUs, it is not just behind (a
  // link down, a peer gone): those frames go.
  const uint64_t now = rte_get_tsc_cycles();
  if (sent != 0 || refused_ == 0) refused_since_ = now;
  std::copy(pkts_.begin() + sent, pkts_.begin() + n_, pkts_.begin());
  n_ = refused_ = static_cast<uint16_t>(n_ - sent);
  if (now - refused_since_ > rte_get_tsc_hz() / 1'000'000 * kRefusedForUs) discard();
  return n_;
}

void TxQueue::drop(rte_mbuf* m) {
  rte_pktmbuf_free(m);
  counters_->drop(net::DropReason::tx_full);
}

void TxQueue::discard() {
  for (uint16_t i = 0; i < n_; ++i) drop(pkts_[i]);
  n_ = refused_ = 0;
}

}  // namespace chimney::dataplane
