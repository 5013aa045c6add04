// TCP option list parsing and writing.
#include "net/tcp_options.hpp"

#include <rte_byteorder.h>

#include <cstring>

namespace chimney::net {

namespace {

// Option kinds and lengths (IANA "TCP Option Kind Numbers").
constexpr uint8_t kEol = 0;
constexpr uint8_t kNop = 1;
constexpr uint8_t kMss = 2;        // RFC 9293 §3.2
constexpr uint8_t kWscale = 3;     // RFC 7323 §2.2
constexpr uint8_t kSackPerm = 4;   // RFC 2018 §2
constexpr uint8_t kSack = 5;       // RFC 2018 §3
constexpr uint8_t kTimestamp = 8;  // RFC 7323 §3.2

constexpr uint8_t kMssLen = 4;
constexpr uint8_t kWscaleLen = 3;
constexpr uint8_t kSackPermLen = 2;
constexpr uint8_t kTimestampLen = 10;
constexpr uint8_t kSackBlockLen = 8;
constexpr size_t kMaxSackBlocks = 4;

uint16_t load16(const uint8_t* p) {
  rte_be16_t v;
  std::memcpy(&v, p, sizeof v);
  return rte_be_to_cpu_16(v);
}

uint32_t load32(const uint8_t* p) {
  rte_be32_t v;
  std::memcpy(&v, p, sizeof v);
  return rte_be_to_cpu_32(v);
}

uint8_t* store16(uint8_t* p, uint16_t host) {
  const rte_be16_t v = rte_cpu_to_be_16(host);
  std::memcpy(p, &v, sizeof v);
  return p + sizeof v;
}

uint8_t* store32(uint8_t* p, uint32_t host) {
  const rte_be32_t v = rte_cpu_to_be_32(host);
  std::memcpy(p, &v, sizeof v);
  return p + sizeof v;
}

}  // namespace

bool parse_tcp_options(const uint8_t* p, size_t len, TcpOptions& out) {
  out = TcpOptions{};
  size_t i = 0;
  while (i < len) {
    const uint8_t kind = p[i];
    // RFC 9293 §3.1: End of Option List ends the list; what follows is padding.
    if (kind == kEol) break;
    // RFC 9293 §3.1: No-Operation is a single byte.
    if (kind == kNop) {
      ++i;
      continue;
    }
    // Every other option is kind, length (counting both), data
    // (RFC 9293 §3.1, "case 2"); RFC 9293 §3.7.1.2 wants a malformed length
    // to be handled without crashing: we reject the segment.
    if (i + 1 >= len) return false;
    const uint8_t olen = p[i + 1];
    if (olen < 2 || olen > len - i) return false;
    const uint8_t* data = p + i + 2;
    switch (kind) {
      case kMss:  // RFC 9293 §3.2
        if (olen != kMssLen) return false;
        out.has_mss = true;
        out.mss = load16(data);
        break;
      case kWscale:  // RFC 7323 §2.2
        if (olen != kWscaleLen) return false;
        out.has_wscale = true;
        out.wscale = data[0];
        break;
      case kSackPerm:  // RFC 2018 §2
        if (olen != kSackPermLen) return false;
        out.sack_permitted = true;
        break;
      case kSack: {  // RFC 2018 §3: 2 + 8n bytes
        const size_t body = olen - 2u;
        const size_t n = body / kSackBlockLen;
        if (body % kSackBlockLen != 0 || n == 0 || n > kMaxSackBlocks) return false;
        out.sack_count = static_cast<uint8_t>(n);
        for (size_t b = 0; b < n; ++b) {
          out.sack[b].left = load32(data + b * kSackBlockLen);
          out.sack[b].right = load32(data + b * kSackBlockLen + 4);
        }
        break;
      }
      case kTimestamp:  // RFC 7323 §3.2
        if (olen != kTimestampLen) return false;
        out.has_timestamp = true;
        out.ts_val = load32(data);
        out.ts_ecr = load32(data + 4);
        break;
      default:  // RFC 9293 §3.1: unknown options are skipped by their length.
        break;
    }
    i += olen;
  }
  return true;
}

size_t write_tcp_options(uint8_t* out, const TcpOptions& opts) {
  // Word-aligned layouts as Linux writes them (tcp_options_write()).
  uint8_t* p = out;
  if (opts.has_mss) {
    *p++ = kMss;
    *p++ = kMssLen;
    p = store16(p, opts.mss);
  }
  if (opts.has_timestamp) {
    if (opts.sack_permitted) {
      // SACK-permitted shares the timestamp's word: 04 02 08 0a.
      *p++ = kSackPerm;
      *p++ = kSackPermLen;
    } else {
      *p++ = kNop;
      *p++ = kNop;
    }
    *p++ = kTimestamp;
    *p++ = kTimestampLen;
    p = store32(p, opts.ts_val);
    p = store32(p, opts.ts_ecr);
  } else if (opts.sack_permitted) {
    *p++ = kNop;
    *p++ = kNop;
    *p++ = kSackPerm;
    *p++ = kSackPermLen;
  }
  if (opts.has_wscale) {
    *p++ = kNop;
    *p++ = kWscale;
    *p++ = kWscaleLen;
    *p++ = opts.wscale;
  }
  // SACK blocks take what room is left (RFC 2018 §3: with timestamps, at
  // most three fit).
  const size_t used = static_cast<size_t>(p - out);
  const size_t room = kMaxTcpOptionBytes - used;
  size_t n = opts.sack_count < kMaxSackBlocks ? opts.sack_count : kMaxSackBlocks;
  if (room >= 4 + kSackBlockLen) {
    const size_t fit = (room - 4) / kSackBlockLen;
    if (n > fit) n = fit;
  } else {
    n = 0;
  }
  if (n > 0) {
    *p++ = kNop;
    *p++ = kNop;
    *p++ = kSack;
    *p++ = static_cast<uint8_t>(2 + n * kSackBlockLen);
    for (size_t b = 0; b < n; ++b) {
      p = store32(p, opts.sack[b].left);
      p = store32(p, opts.sack[b].right);
    }
  }
  return static_cast<size_t>(p - out);
}

}  // namespace chimney::net
