// The control protocol codec (docs/CONTROL_PROTOCOL.md, version 1).
//
// Every integer is written and read byte by byte, little-endian, through
// Writer and Reader below: no struct is ever cast onto the wire. Decoding
// checks the header, then the body length exactly (fixed bodies must match;
// OFFLOAD's n and TERMINATE_COMPLETE's n_sends and n must account for every
// remaining byte), then each field the spec gives a range. Error texts name
// the message type and the field: "SEND: body is 16 bytes, expected 20".
//
// OffloadState on the wire is 136 bytes: the fields the spec lists add up to
// 134 (ConstState 20, CachedState 24, DelegatedState 76, PathState 14), so
// "zero padding to 128 bytes" cannot hold; it is padded with two zero bytes to
// the next multiple of 8 instead (see kOffloadStateSize).
#include "control/protocol.hpp"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace chimney::control {

namespace {

// ---- layout sizes (bytes)
constexpr size_t kConstStateSize = 20;
constexpr size_t kCachedStateSize = 24;
constexpr size_t kDelegatedStateSize = 76;
constexpr size_t kPathStateSize = 14;
constexpr size_t kOffloadStateFields = kConstStateSize + kCachedStateSize + kDelegatedStateSize + kPathStateSize;
constexpr size_t kOffloadStateSize = 136;
static_assert(kOffloadStateFields == 134 && kOffloadStateSize >= kOffloadStateFields);
constexpr size_t kMaxBody = kMaxMessage - kHeaderSize;

constexpr uint8_t kFlagWindowScaling = 1;
constexpr uint8_t kFlagTimestamps = 2;
constexpr uint8_t kFlagSack = 4;
constexpr uint8_t kLastTcpState = static_cast<uint8_t>(TcpState::time_wait);
constexpr uint8_t kLastWireEvent = static_cast<uint8_t>(WireEvent::receive_ready);
constexpr uint8_t kLastRetrieveReason = 4;  // chimney::RetrieveReason::time_wait

// ---- writing

class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : out_(out) {}

  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) {
    for (int i = 0; i < 2; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void bytes(const uint8_t* p, size_t n) { out_.insert(out_.end(), p, p + n); }
  void zeros(size_t n) { out_.insert(out_.end(), n, uint8_t{0}); }

 private:
  std::vector<uint8_t>& out_;
};

void put_buffer(Writer& w, const BufferRef& b) {
  w.u32(b.region);
  w.u64(b.offset);
  w.u32(b.length);
}

void put_cached(Writer& w, const CachedState& c) {
  w.u32(c.initial_rcv_wnd);
  w.u8(c.ttl);
  w.u8(c.tos);
  w.boolean(c.nagle);
  w.boolean(c.keepalive);
  w.u32(c.keepalive_timeout_ms);
  w.u32(c.keepalive_interval_ms);
  w.u8(c.keepalive_probes);
  w.u8(c.max_retransmissions);
  w.u8(c.max_persist_probes);
  w.u8(static_cast<uint8_t>(c.congestion));
  w.u32(0);  // reserved
}

void put_offload_state(Writer& w, const OffloadState& s) {
  const ConstState& k = s.constant;
  w.u32(k.local_ip);
  w.u32(k.remote_ip);
  w.u16(k.local_port);
  w.u16(k.remote_port);
  w.u16(k.remote_mss);
  w.u8(k.snd_wscale);
  w.u8(k.rcv_wscale);
  w.u8(static_cast<uint8_t>((k.window_scaling ? kFlagWindowScaling : 0) | (k.timestamps ? kFlagTimestamps : 0) |
                            (k.sack ? kFlagSack : 0)));
  w.zeros(3);  // reserved

  put_cached(w, s.cached);

  const DelegatedState& d = s.delegated;
  w.u8(static_cast<uint8_t>(d.state));
  w.u8(d.dup_ack_count);
  w.u16(d.total_rt);
  for (uint32_t v : {d.rcv_nxt, d.rcv_wnd, d.snd_una, d.snd_nxt, d.snd_max, d.snd_wnd, d.max_snd_wnd, d.snd_wl1,
                     d.snd_wl2, d.cwnd, d.ssthresh, d.srtt_us, d.rttvar_us, d.ts_recent, d.ts_recent_age_ms, d.ts_time,
                     d.retransmit_timer_ms, d.keepalive_timer_ms})
    w.u32(v);

  w.bytes(s.path.local_mac.data(), s.path.local_mac.size());
  w.bytes(s.path.next_hop_mac.data(), s.path.next_hop_mac.size());
  w.u16(s.path.path_mtu);
  w.zeros(kOffloadStateSize - kOffloadStateFields);
}

MsgType type_of(const Body& body, MsgType completion_type) {
  return std::visit(
      [&](const auto& b) -> MsgType {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, Hello>) return MsgType::hello;
        else if constexpr (std::is_same_v<T, RegisterMemory>) return MsgType::register_memory;
        else if constexpr (std::is_same_v<T, UnregisterMemory>) return MsgType::unregister_memory;
        else if constexpr (std::is_same_v<T, Connect>) return MsgType::connect;
        else if constexpr (std::is_same_v<T, Listen>) return MsgType::listen;
        else if constexpr (std::is_same_v<T, Offload>) return MsgType::offload;
        else if constexpr (std::is_same_v<T, Send>) return MsgType::send;
        else if constexpr (std::is_same_v<T, Receive>) return MsgType::receive;
        else if constexpr (std::is_same_v<T, Disconnect>) return MsgType::disconnect;
        else if constexpr (std::is_same_v<T, Terminate>) return MsgType::terminate;
        else if constexpr (std::is_same_v<T, Stats>) return MsgType::stats;
        else if constexpr (std::is_same_v<T, ReleaseListen>) return MsgType::release_listen;
        else if constexpr (std::is_same_v<T, Attach>) return MsgType::attach;
        else if constexpr (std::is_same_v<T, Attached>) return MsgType::attached;
        else if constexpr (std::is_same_v<T, HelloReply>) return MsgType::hello_reply;
        else if constexpr (std::is_same_v<T, Registered>) return MsgType::registered;
        else if constexpr (std::is_same_v<T, OffloadComplete>) return MsgType::offload_complete;
        else if constexpr (std::is_same_v<T, Completion>) return completion_type;
        else if constexpr (std::is_same_v<T, TerminateComplete>) return MsgType::terminate_complete;
        else if constexpr (std::is_same_v<T, StatsReply>) return MsgType::stats_reply;
        else if constexpr (std::is_same_v<T, Ok>) return MsgType::ok;
        else if constexpr (std::is_same_v<T, Event>) return MsgType::event;
        else if constexpr (std::is_same_v<T, Accept>) return MsgType::accept;
        else {
          static_assert(std::is_same_v<T, Error>);
          return MsgType::error;
        }
      },
      body);
}

void put_body(Writer& w, const Body& body) {
  std::visit(
      [&](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, Hello>) {
          w.u32(b.client_version);
        } else if constexpr (std::is_same_v<T, RegisterMemory>) {
          w.u64(b.size);
        } else if constexpr (std::is_same_v<T, UnregisterMemory>) {
          w.u32(b.region);
        } else if constexpr (std::is_same_v<T, Connect>) {
          w.u32(b.remote_ip);
          w.u16(b.remote_port);
          w.u16(b.local_port);
          put_cached(w, b.cached);
        } else if constexpr (std::is_same_v<T, Listen>) {
          w.u16(b.port);
          w.u16(b.backlog);
          put_cached(w, b.cached);
        } else if constexpr (std::is_same_v<T, Offload>) {
          put_offload_state(w, b.state);
          w.u32(b.state.delegated.send_data_to_follow);
          w.u32(static_cast<uint32_t>(b.receive_data.size()));
          w.bytes(b.receive_data.data(), b.receive_data.size());
        } else if constexpr (std::is_same_v<T, Send>) {
          w.u32(b.handle);
          put_buffer(w, b.buf);
        } else if constexpr (std::is_same_v<T, Receive>) {
          w.u32(b.handle);
          put_buffer(w, b.buf);
          w.u32(b.flags);
        } else if constexpr (std::is_same_v<T, Disconnect>) {
          w.u32(b.handle);
          w.u32(b.kind);
          put_buffer(w, b.buf);
        } else if constexpr (std::is_same_v<T, Terminate>) {
          w.u32(b.handle);
        } else if constexpr (std::is_same_v<T, Stats> || std::is_same_v<T, Ok>) {
          // empty
        } else if constexpr (std::is_same_v<T, ReleaseListen>) {
          w.u16(b.port);
        } else if constexpr (std::is_same_v<T, Attach>) {
          w.u64(b.session);
        } else if constexpr (std::is_same_v<T, Attached>) {
          w.u32(b.connections);
          w.u32(b.regions);
        } else if constexpr (std::is_same_v<T, HelloReply>) {
          w.u32(b.server_version);
          w.u32(b.max_message);
          w.u64(b.session);
        } else if constexpr (std::is_same_v<T, Registered>) {
          w.u32(b.region);
        } else if constexpr (std::is_same_v<T, OffloadComplete>) {
          w.u32(static_cast<uint32_t>(b.status));
          w.u32(b.handle);
        } else if constexpr (std::is_same_v<T, Completion>) {
          w.u32(b.handle);
          w.u32(static_cast<uint32_t>(b.status));
          w.u64(b.bytes_transferred);
        } else if constexpr (std::is_same_v<T, TerminateComplete>) {
          w.u32(b.handle);
          w.u32(static_cast<uint32_t>(b.status));
          put_offload_state(w, b.state);
          w.u32(static_cast<uint32_t>(b.sends.size()));
          for (const ReturnedSend& s : b.sends) {
            w.u64(s.tag);
            w.u64(s.bytes_transferred);
          }
          w.u32(static_cast<uint32_t>(b.receive_data.size()));
          w.bytes(b.receive_data.data(), b.receive_data.size());
        } else if constexpr (std::is_same_v<T, StatsReply>) {
          w.bytes(reinterpret_cast<const uint8_t*>(b.json.data()), b.json.size());
        } else if constexpr (std::is_same_v<T, Event>) {
          w.u32(b.handle);
          w.u8(static_cast<uint8_t>(b.kind));
          w.u8(b.reason);
          w.u16(0);  // reserved
          w.u32(b.value);
        } else if constexpr (std::is_same_v<T, Accept>) {
          w.u16(b.local_port);
          w.u16(b.remote_port);
          w.u32(b.remote_ip);
          w.u32(b.handle);
        } else {
          static_assert(std::is_same_v<T, Error>);
          w.u32(b.code);
          w.bytes(reinterpret_cast<const uint8_t*>(b.text.data()), b.text.size());
        }
      },
      body);
}

// The encoded body size, computed without encoding (so an oversized message
// is refused before anything is appended).
size_t body_size(const Body& body) {
  return std::visit(
      [](const auto& b) -> size_t {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, Offload>) return kOffloadStateSize + 8 + b.receive_data.size();
        else if constexpr (std::is_same_v<T, TerminateComplete>)
          return 8 + kOffloadStateSize + 4 + 16 * b.sends.size() + 4 + b.receive_data.size();
        else if constexpr (std::is_same_v<T, StatsReply>) return b.json.size();
        else if constexpr (std::is_same_v<T, Error>) return 4 + b.text.size();
        else return 0;  // fixed: the writer's count is exact, checked by the caller
      },
      body);
}

// ---- reading

// Reads little-endian integers from a span the caller has already checked is
// long enough; a read past the end still never touches memory outside the
// span (it yields zeros and marks the reader failed).
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in) : in_(in) {}

  uint8_t u8() { return static_cast<uint8_t>(take(1)); }
  uint16_t u16() { return static_cast<uint16_t>(take(2)); }
  uint32_t u32() { return static_cast<uint32_t>(take(4)); }
  uint64_t u64() { return take(8); }
  void bytes(uint8_t* dst, size_t n) {
    if (n > remaining()) {
      failed_ = true;
      std::memset(dst, 0, n);
      pos_ = in_.size();
      return;
    }
    if (n != 0) std::memcpy(dst, in_.data() + pos_, n);
    pos_ += n;
  }
  std::span<const uint8_t> rest() const { return in_.subspan(pos_); }
  size_t remaining() const { return in_.size() - pos_; }
  size_t position() const { return pos_; }
  bool failed() const { return failed_; }

 private:
  uint64_t take(size_t n) {
    if (n > remaining()) {
      failed_ = true;
      pos_ = in_.size();
      return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(in_[pos_ + i]) << (8 * i);
    pos_ += n;
    return v;
  }

  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  bool failed_ = false;
};

// Collects the first error of a decode; `prefix` is the message type's name.
class Check {
 public:
  Check(const char* prefix, std::string& error) : prefix_(prefix), error_(error) {}

  bool ok() const { return ok_; }

  __attribute__((format(printf, 2, 3))) void fail(const char* fmt, ...) {
    if (!ok_) return;
    ok_ = false;
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    error_ = std::string(prefix_) + ": " + buf;
  }

  // Fixed-size bodies.
  bool body_is(size_t have, size_t want) {
    if (have != want) fail("body is %zu bytes, expected %zu", have, want);
    return ok_;
  }
  // Variable bodies: at least `want` bytes.
  bool body_at_least(size_t have, size_t want) {
    if (have < want) fail("body is %zu bytes, expected at least %zu", have, want);
    return ok_;
  }

  bool boolean(const char* field, uint8_t v) {
    if (v > 1) fail("%s is %u, expected 0 or 1", field, static_cast<unsigned>(v));
    return v == 1;
  }
  void zero(const char* field, uint64_t v) {
    if (v != 0) fail("%s is %llu, expected 0", field, static_cast<unsigned long long>(v));
  }

 private:
  const char* prefix_;
  std::string& error_;
  bool ok_ = true;
};

CachedState get_cached(Reader& r, Check& c, const char* field) {
  // `field`: "cached" (CONNECT, LISTEN) or "cached" inside an OffloadState.
  std::string f(field);
  CachedState s;
  s.initial_rcv_wnd = r.u32();
  s.ttl = r.u8();
  s.tos = r.u8();
  s.nagle = c.boolean((f + ".nagle").c_str(), r.u8());
  s.keepalive = c.boolean((f + ".keepalive").c_str(), r.u8());
  s.keepalive_timeout_ms = r.u32();
  s.keepalive_interval_ms = r.u32();
  s.keepalive_probes = r.u8();
  s.max_retransmissions = r.u8();
  s.max_persist_probes = r.u8();
  const uint8_t congestion = r.u8();
  if (congestion > static_cast<uint8_t>(CongestionAlgorithm::cubic))
    c.fail("%s.congestion is %u, expected 0 (newreno) or 1 (cubic)", field, static_cast<unsigned>(congestion));
  s.congestion = static_cast<CongestionAlgorithm>(congestion);
  c.zero((f + ".reserved").c_str(), r.u32());
  return s;
}

OffloadState get_offload_state(Reader& r, Check& c) {
  OffloadState s;
  ConstState& k = s.constant;
  k.local_ip = r.u32();
  k.remote_ip = r.u32();
  k.local_port = r.u16();
  k.remote_port = r.u16();
  k.remote_mss = r.u16();
  k.snd_wscale = r.u8();
  k.rcv_wscale = r.u8();
  const uint8_t flags = r.u8();
  if ((flags & ~(kFlagWindowScaling | kFlagTimestamps | kFlagSack)) != 0)
    c.fail("constant.flags is 0x%02x, only bits 0..2 (window_scaling, timestamps, sack) are defined",
           static_cast<unsigned>(flags));
  k.window_scaling = (flags & kFlagWindowScaling) != 0;
  k.timestamps = (flags & kFlagTimestamps) != 0;
  k.sack = (flags & kFlagSack) != 0;
  uint8_t reserved[3];
  r.bytes(reserved, sizeof reserved);
  for (uint8_t b : reserved) c.zero("constant.reserved", b);

  s.cached = get_cached(r, c, "cached");

  DelegatedState& d = s.delegated;
  const uint8_t state = r.u8();
  if (state > kLastTcpState)
    c.fail("delegated.state is %u, expected 0..%u (TcpState)", static_cast<unsigned>(state),
           static_cast<unsigned>(kLastTcpState));
  d.state = static_cast<TcpState>(state);
  d.dup_ack_count = r.u8();
  d.total_rt = r.u16();
  for (uint32_t* v : {&d.rcv_nxt, &d.rcv_wnd, &d.snd_una, &d.snd_nxt, &d.snd_max, &d.snd_wnd, &d.max_snd_wnd,
                      &d.snd_wl1, &d.snd_wl2, &d.cwnd, &d.ssthresh, &d.srtt_us, &d.rttvar_us, &d.ts_recent,
                      &d.ts_recent_age_ms, &d.ts_time, &d.retransmit_timer_ms, &d.keepalive_timer_ms})
    *v = r.u32();

  r.bytes(s.path.local_mac.data(), s.path.local_mac.size());
  r.bytes(s.path.next_hop_mac.data(), s.path.next_hop_mac.size());
  s.path.path_mtu = r.u16();
  uint8_t padding[kOffloadStateSize - kOffloadStateFields];
  r.bytes(padding, sizeof padding);
  for (uint8_t b : padding) c.zero("padding", b);
  return s;
}

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF):
// what Python's bytes.decode('utf-8') accepts.
bool valid_utf8(std::span<const uint8_t> s, size_t& bad_at) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t b = s[i];
    size_t n = 0;
    uint32_t cp = 0;
    uint32_t min = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 1, cp = b & 0x1F, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2, cp = b & 0x0F, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3, cp = b & 0x07, min = 0x10000;
    } else {
      bad_at = i;
      return false;
    }
    if (n > s.size() - i - 1) {
      bad_at = i;
      return false;
    }
    for (size_t k = 1; k <= n; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) {
        bad_at = i;
        return false;
      }
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      bad_at = i;
      return false;
    }
    i += n + 1;
  }
  return true;
}

std::string get_text(std::span<const uint8_t> bytes, Check& c, const char* field) {
  size_t bad_at = 0;
  if (!valid_utf8(bytes, bad_at)) {
    c.fail("%s is not valid UTF-8 (at byte %zu)", field, bad_at);
    return {};
  }
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

bool known_type(uint16_t t) {
  return (t >= 1 && t <= 13) || (t >= 101 && t <= 112) || t == 199;
}

// Decodes the body of a message of type `type`; the header is already checked.
std::optional<Body> decode_body(MsgType type, std::span<const uint8_t> body, std::string& error) {
  Check c(to_string(type), error);
  Reader r(body);
  const size_t n = body.size();
  std::optional<Body> out;

  switch (type) {
    case MsgType::hello:
      if (c.body_is(n, 4)) out = Hello{r.u32()};
      break;
    case MsgType::register_memory:
      if (c.body_is(n, 8)) out = RegisterMemory{r.u64()};
      break;
    case MsgType::unregister_memory:
      if (c.body_is(n, 4)) out = UnregisterMemory{r.u32()};
      break;
    case MsgType::connect:
      if (c.body_is(n, 8 + kCachedStateSize)) {
        Connect m;
        m.remote_ip = r.u32();
        m.remote_port = r.u16();
        m.local_port = r.u16();
        m.cached = get_cached(r, c, "cached");
        out = m;
      }
      break;
    case MsgType::listen:
      if (c.body_is(n, 4 + kCachedStateSize)) {
        Listen m;
        m.port = r.u16();
        m.backlog = r.u16();
        m.cached = get_cached(r, c, "cached");
        out = m;
      }
      break;
    case MsgType::offload:
      if (c.body_at_least(n, kOffloadStateSize + 8)) {
        Offload m;
        m.state = get_offload_state(r, c);
        m.state.delegated.send_data_to_follow = r.u32();
        const uint32_t len = r.u32();
        if (len != r.remaining()) {
          c.fail("n is %u but %zu bytes of receive data follow", len, r.remaining());
        } else {
          const auto rest = r.rest();
          m.receive_data.assign(rest.begin(), rest.end());
          out = std::move(m);
        }
      }
      break;
    case MsgType::send:
      if (c.body_is(n, 20)) {
        Send m;
        m.handle = r.u32();
        m.buf.region = r.u32();
        m.buf.offset = r.u64();
        m.buf.length = r.u32();
        out = m;
      }
      break;
    case MsgType::receive:
      if (c.body_is(n, 24)) {
        Receive m;
        m.handle = r.u32();
        m.buf.region = r.u32();
        m.buf.offset = r.u64();
        m.buf.length = r.u32();
        m.flags = r.u32();
        if ((m.flags & ~kReceiveNoPush) != 0)
          c.fail("flags is 0x%08x, only bit 0 (no push) is defined", m.flags);
        out = m;
      }
      break;
    case MsgType::disconnect:
      if (c.body_is(n, 24)) {
        Disconnect m;
        m.handle = r.u32();
        m.kind = r.u32();
        m.buf.region = r.u32();
        m.buf.offset = r.u64();
        m.buf.length = r.u32();
        if (m.kind > 1) c.fail("kind is %u, expected 0 (graceful) or 1 (abortive)", m.kind);
        out = m;
      }
      break;
    case MsgType::terminate:
      if (c.body_is(n, 4)) out = Terminate{r.u32()};
      break;
    case MsgType::stats:
      if (c.body_is(n, 0)) out = Stats{};
      break;
    case MsgType::release_listen:
      if (c.body_is(n, 2)) out = ReleaseListen{r.u16()};
      break;
    case MsgType::attach:
      if (c.body_is(n, 8)) out = Attach{r.u64()};
      break;
    case MsgType::attached:
      if (c.body_is(n, 8)) {
        const uint32_t conns = r.u32();
        out = Attached{conns, r.u32()};
      }
      break;

    case MsgType::hello_reply:
      if (c.body_is(n, 16)) {
        HelloReply m;
        m.server_version = r.u32();
        m.max_message = r.u32();
        m.session = r.u64();
        out = m;
      }
      break;
    case MsgType::registered:
      if (c.body_is(n, 4)) out = Registered{r.u32()};
      break;
    case MsgType::offload_complete:
      if (c.body_is(n, 8)) {
        OffloadComplete m;
        m.status = static_cast<Status>(r.u32());
        m.handle = r.u32();
        out = m;
      }
      break;
    case MsgType::send_complete:
    case MsgType::receive_complete:
    case MsgType::disconnect_complete:
      if (c.body_is(n, 16)) {
        Completion m;
        m.handle = r.u32();
        m.status = static_cast<Status>(r.u32());
        m.bytes_transferred = r.u64();
        out = m;
      }
      break;
    case MsgType::terminate_complete:
      if (c.body_at_least(n, 8 + kOffloadStateSize + 4 + 4)) {
        TerminateComplete m;
        m.handle = r.u32();
        m.status = static_cast<Status>(r.u32());
        m.state = get_offload_state(r, c);
        const uint32_t n_sends = r.u32();
        // The smallest body with n_sends returned sends: every one 16 bytes,
        // then the u32 n.
        const uint64_t sends_bytes = uint64_t{16} * n_sends;
        if (sends_bytes + 4 > r.remaining()) {
          c.fail("n_sends is %u (%llu bytes) but only %zu bytes follow", n_sends,
                 static_cast<unsigned long long>(sends_bytes), r.remaining());
          break;
        }
        m.sends.reserve(n_sends);
        for (uint32_t i = 0; i < n_sends; ++i) {
          ReturnedSend s;
          s.tag = r.u64();
          s.bytes_transferred = r.u64();
          m.sends.push_back(s);
        }
        const uint32_t len = r.u32();
        if (len != r.remaining()) {
          c.fail("n is %u but %zu bytes of receive data follow", len, r.remaining());
          break;
        }
        const auto rest = r.rest();
        m.receive_data.assign(rest.begin(), rest.end());
        out = std::move(m);
      }
      break;
    case MsgType::stats_reply:
      out = StatsReply{get_text(body, c, "json")};
      break;
    case MsgType::ok:
      if (c.body_is(n, 0)) out = Ok{};
      break;
    case MsgType::event:
      if (c.body_is(n, 12)) {
        Event m;
        m.handle = r.u32();
        const uint8_t kind = r.u8();
        m.reason = r.u8();
        c.zero("reserved", r.u16());
        m.value = r.u32();
        if (kind > kLastWireEvent)
          c.fail("kind is %u, expected 0..%u", static_cast<unsigned>(kind), static_cast<unsigned>(kLastWireEvent));
        if (m.reason > kLastRetrieveReason)
          c.fail("reason is %u, expected 0..%u (RetrieveReason)", static_cast<unsigned>(m.reason),
                 static_cast<unsigned>(kLastRetrieveReason));
        m.kind = static_cast<WireEvent>(kind);
        out = m;
      }
      break;
    case MsgType::accept:
      if (c.body_is(n, 12)) {
        Accept m;
        m.local_port = r.u16();
        m.remote_port = r.u16();
        m.remote_ip = r.u32();
        m.handle = r.u32();
        out = m;
      }
      break;
    case MsgType::error:
      if (c.body_at_least(n, 4)) {
        Error m;
        m.code = r.u32();
        m.text = get_text(r.rest(), c, "text");
        out = std::move(m);
      }
      break;
  }
  // A defensive net: the length checks above make every read in bounds.
  if (c.ok() && r.failed()) c.fail("body ends early");
  if (!c.ok()) return std::nullopt;
  return out;
}

}  // namespace

const char* to_string(MsgType t) {
  switch (t) {
    case MsgType::hello: return "HELLO";
    case MsgType::register_memory: return "REGISTER_MEMORY";
    case MsgType::unregister_memory: return "UNREGISTER_MEMORY";
    case MsgType::connect: return "CONNECT";
    case MsgType::listen: return "LISTEN";
    case MsgType::offload: return "OFFLOAD";
    case MsgType::send: return "SEND";
    case MsgType::receive: return "RECEIVE";
    case MsgType::disconnect: return "DISCONNECT";
    case MsgType::terminate: return "TERMINATE";
    case MsgType::stats: return "STATS";
    case MsgType::release_listen: return "RELEASE_LISTEN";
    case MsgType::attach: return "ATTACH";
    case MsgType::attached: return "ATTACHED";
    case MsgType::hello_reply: return "HELLO_REPLY";
    case MsgType::registered: return "REGISTERED";
    case MsgType::offload_complete: return "OFFLOAD_COMPLETE";
    case MsgType::send_complete: return "SEND_COMPLETE";
    case MsgType::receive_complete: return "RECEIVE_COMPLETE";
    case MsgType::disconnect_complete: return "DISCONNECT_COMPLETE";
    case MsgType::terminate_complete: return "TERMINATE_COMPLETE";
    case MsgType::stats_reply: return "STATS_REPLY";
    case MsgType::ok: return "OK";
    case MsgType::event: return "EVENT";
    case MsgType::accept: return "ACCEPT";
    case MsgType::error: return "ERROR";
  }
  return "UNKNOWN";
}

bool encode(const Message& m, std::vector<uint8_t>& out) {
  const MsgType type = type_of(m.body, m.type);
  if (std::holds_alternative<Completion>(m.body) && type != MsgType::send_complete &&
      type != MsgType::receive_complete && type != MsgType::disconnect_complete)
    return false;  // a Completion needs its type chosen
  // Variable parts first: refuse before writing anything.
  if (body_size(m.body) > kMaxBody) return false;

  const size_t start = out.size();
  Writer w(out);
  w.u32(0);  // length, patched below
  w.u16(kVersion);
  w.u16(static_cast<uint16_t>(type));
  w.u64(m.tag);
  put_body(w, m.body);
  const size_t length = out.size() - start;
  if (length > kMaxMessage) {
    out.resize(start);
    return false;
  }
  for (int i = 0; i < 4; ++i) out[start + i] = static_cast<uint8_t>(length >> (8 * i));
  return true;
}

std::optional<size_t> message_length(std::span<const uint8_t> in, std::string& error) {
  error.clear();
  if (in.size() < kHeaderSize) return std::nullopt;
  Reader r(in.first(kHeaderSize));
  const uint32_t length = r.u32();
  const uint16_t version = r.u16();
  if (length < kHeaderSize || length > kMaxMessage) {
    error = "header: length is " + std::to_string(length) + ", expected " + std::to_string(kHeaderSize) + ".." +
            std::to_string(kMaxMessage);
    return std::nullopt;
  }
  if (version != kVersion) {
    error = "header: version is " + std::to_string(version) + ", expected " + std::to_string(kVersion);
    return std::nullopt;
  }
  return length;
}

std::optional<Message> decode(std::span<const uint8_t> in, std::string& error) {
  error.clear();
  if (in.size() < kHeaderSize) {
    error = "header: " + std::to_string(in.size()) + " bytes, expected at least " + std::to_string(kHeaderSize);
    return std::nullopt;
  }
  const std::optional<size_t> length = message_length(in, error);
  if (!length) return std::nullopt;
  if (*length != in.size()) {
    error = "header: length is " + std::to_string(*length) + " but " + std::to_string(in.size()) + " bytes given";
    return std::nullopt;
  }
  Reader r(in);
  r.u32();  // length
  r.u16();  // version
  const uint16_t type = r.u16();
  const uint64_t tag = r.u64();
  if (!known_type(type)) {
    error = "header: unknown message type " + std::to_string(type);
    return std::nullopt;
  }
  Message m;
  m.type = static_cast<MsgType>(type);
  m.tag = tag;
  std::optional<Body> body = decode_body(m.type, in.subspan(kHeaderSize), error);
  if (!body) return std::nullopt;
  m.body = std::move(*body);
  return m;
}

}  // namespace chimney::control
