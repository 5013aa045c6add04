// Helpers shared by unit suites: a mempool and frames built from byte arrays.
#pragma once

#include <gtest/gtest.h>

#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace chimney::test {

// One pool for the whole test binary.
inline rte_mempool* pool() {
  static rte_mempool* p = rte_pktmbuf_pool_create("unit_pool", 1023, 0, 0,
                                                  RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  return p;
}

// A single-segment mbuf holding `bytes`.
inline rte_mbuf* mbuf_from(const std::vector<uint8_t>& bytes) {
  rte_mbuf* m = rte_pktmbuf_alloc(pool());
  if (m == nullptr) return nullptr;
  char* dst = rte_pktmbuf_append(m, static_cast<uint16_t>(bytes.size()));
  if (dst == nullptr) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  std::memcpy(dst, bytes.data(), bytes.size());
  return m;
}

inline std::vector<uint8_t> bytes_of(const rte_mbuf* m) {
  std::vector<uint8_t> out(rte_pktmbuf_pkt_len(m));
  const void* p = rte_pktmbuf_read(m, 0, static_cast<uint32_t>(out.size()), out.data());
  if (p != out.data()) std::memcpy(out.data(), p, out.size());
  return out;
}

}  // namespace chimney::test
