// TCP options: MSS (RFC 9293 §3.7.1), window scale and timestamps (RFC 7323),
// SACK-permitted and SACK blocks (RFC 2018).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace chimney::net {

struct SackBlock {
  uint32_t left = 0;   // first sequence number of the block
  uint32_t right = 0;  // sequence number just past the block
};

struct TcpOptions {
  bool has_mss = false;
  bool has_wscale = false;
  bool sack_permitted = false;
  bool has_timestamp = false;
  uint16_t mss = 0;
  uint8_t wscale = 0;
  uint32_t ts_val = 0;
  uint32_t ts_ecr = 0;
  uint8_t sack_count = 0;
  std::array<SackBlock, 4> sack{};
};

// Parses the option bytes between the fixed TCP header and the data.
// Unknown options are skipped by their length. Returns false on a malformed
// list: an option length below 2, a length running past the end, or a known
// option with the wrong length.
bool parse_tcp_options(const uint8_t* p, size_t len, TcpOptions& out);

// Writes the options present in `opts` (MSS, SACK-permitted, timestamps,
// window scale, SACK blocks — in that order) padded with NOPs to a multiple of
// four bytes. `out` must hold kMaxTcpOptionBytes. Returns the bytes written.
inline constexpr size_t kMaxTcpOptionBytes = 40;
size_t write_tcp_options(uint8_t* out, const TcpOptions& opts);

}  // namespace chimney::net
