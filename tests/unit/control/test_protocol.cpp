// The control protocol codec (lib/control/protocol.hpp, docs/CONTROL_PROTOCOL.md):
// golden bytes written by hand from the spec (golden.hex, shared with the
// Python codec's tests), round trips of every message type, every truncation
// rejected, and each field the spec bounds checked with its name in the error.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "control/protocol.hpp"

namespace chimney::control {
namespace {

using Bytes = std::vector<uint8_t>;

// ---- describing messages: a text of every field, so messages compare as
// strings and a mismatch prints what differs.

std::string hex(std::span<const uint8_t> b) {
  std::string s;
  char buf[4];
  for (uint8_t x : b) {
    std::snprintf(buf, sizeof buf, "%02x", x);
    s += buf;
  }
  return s;
}

std::string describe(const CachedState& c) {
  std::ostringstream o;
  o << "{wnd=" << c.initial_rcv_wnd << " ttl=" << +c.ttl << " tos=" << +c.tos << " nagle=" << c.nagle
    << " ka=" << c.keepalive << " ka_to=" << c.keepalive_timeout_ms << " ka_iv=" << c.keepalive_interval_ms
    << " ka_n=" << +c.keepalive_probes << " rexmt=" << +c.max_retransmissions << " persist=" << +c.max_persist_probes
    << " cc=" << +static_cast<uint8_t>(c.congestion) << "}";
  return o.str();
}

std::string describe(const OffloadState& s) {
  std::ostringstream o;
  const auto& k = s.constant;
  o << "const{" << k.local_ip << ":" << k.local_port << " " << k.remote_ip << ":" << k.remote_port
    << " mss=" << k.remote_mss << " ws=" << +k.snd_wscale << "/" << +k.rcv_wscale << " flags=" << k.window_scaling
    << k.timestamps << k.sack << "} cached" << describe(s.cached);
  const auto& d = s.delegated;
  o << " deleg{" << +static_cast<uint8_t>(d.state) << " dup=" << +d.dup_ack_count << " rt=" << d.total_rt;
  for (uint32_t v : {d.rcv_nxt, d.rcv_wnd, d.snd_una, d.snd_nxt, d.snd_max, d.snd_wnd, d.max_snd_wnd, d.snd_wl1,
                     d.snd_wl2, d.cwnd, d.ssthresh, d.srtt_us, d.rttvar_us, d.ts_recent, d.ts_recent_age_ms, d.ts_time,
                     d.retransmit_timer_ms, d.keepalive_timer_ms})
    o << " " << v;
  o << "} path{" << hex(s.path.local_mac) << " " << hex(s.path.next_hop_mac) << " " << s.path.path_mtu << "}";
  return o.str();
}

std::string describe(const BufferRef& b) {
  return "buf{" + std::to_string(b.region) + "," + std::to_string(b.offset) + "," + std::to_string(b.length) + "}";
}

std::string describe(const Message& m) {
  std::ostringstream o;
  o << to_string(m.type) << " tag=" << m.tag << " ";
  std::visit(
      [&](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, Hello>) o << "hello " << b.client_version;
        else if constexpr (std::is_same_v<T, RegisterMemory>) o << "register " << b.size;
        else if constexpr (std::is_same_v<T, UnregisterMemory>) o << "unregister " << b.region;
        else if constexpr (std::is_same_v<T, Connect>)
          o << "connect " << b.remote_ip << ":" << b.remote_port << " lp=" << b.local_port << describe(b.cached);
        else if constexpr (std::is_same_v<T, Listen>)
          o << "listen " << b.port << " backlog=" << b.backlog << describe(b.cached);
        else if constexpr (std::is_same_v<T, Offload>)
          o << "offload " << describe(b.state) << " to_follow=" << b.state.delegated.send_data_to_follow
            << " data=" << hex(b.receive_data);
        else if constexpr (std::is_same_v<T, Send>) o << "send " << b.handle << describe(b.buf);
        else if constexpr (std::is_same_v<T, Receive>) o << "receive " << b.handle << describe(b.buf) << " f=" << b.flags;
        else if constexpr (std::is_same_v<T, Disconnect>)
          o << "disconnect " << b.handle << " kind=" << b.kind << describe(b.buf);
        else if constexpr (std::is_same_v<T, Terminate>) o << "terminate " << b.handle;
        else if constexpr (std::is_same_v<T, Stats>) o << "stats";
        else if constexpr (std::is_same_v<T, ReleaseListen>) o << "release_listen " << b.port;
        else if constexpr (std::is_same_v<T, HelloReply>)
          o << "hello_reply " << b.server_version << " " << b.max_message << " " << b.session;
        else if constexpr (std::is_same_v<T, Registered>) o << "registered " << b.region;
        else if constexpr (std::is_same_v<T, OffloadComplete>)
          o << "offload_complete " << to_string(b.status) << " " << b.handle;
        else if constexpr (std::is_same_v<T, Completion>)
          o << "completion " << b.handle << " " << to_string(b.status) << " " << b.bytes_transferred;
        else if constexpr (std::is_same_v<T, TerminateComplete>) {
          o << "terminate_complete " << b.handle << " " << to_string(b.status) << " " << describe(b.state) << " sends";
          for (const auto& s : b.sends) o << " " << s.tag << "/" << s.bytes_transferred;
          o << " data=" << hex(b.receive_data);
        } else if constexpr (std::is_same_v<T, StatsReply>) o << "stats_reply " << b.json;
        else if constexpr (std::is_same_v<T, Ok>) o << "ok";
        else if constexpr (std::is_same_v<T, Event>)
          o << "event " << b.handle << " " << +static_cast<uint8_t>(b.kind) << " " << +b.reason << " " << b.value;
        else if constexpr (std::is_same_v<T, Accept>)
          o << "accept " << b.local_port << " " << b.remote_port << " " << b.remote_ip << " " << b.handle;
        else if constexpr (std::is_same_v<T, Attach>) o << "attach " << b.session;
        else if constexpr (std::is_same_v<T, Attached>) o << "attached " << b.connections << " " << b.regions;
        else o << "error " << b.code << " " << b.text;
      },
      m.body);
  return o.str();
}

Bytes encoded(const Message& m) {
  Bytes out;
  EXPECT_TRUE(encode(m, out)) << describe(m);
  return out;
}

std::string decode_error(std::span<const uint8_t> in) {
  std::string error;
  auto m = decode(in, error);
  EXPECT_FALSE(m) << "decoded: " << describe(*m);
  EXPECT_FALSE(error.empty());
  return error;
}

void put_u32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// The same bytes with the header's length set to their size.
Bytes with_length_fixed(Bytes b) {
  put_u32(b, 0, static_cast<uint32_t>(b.size()));
  return b;
}

// ---- the messages of golden.hex, built in code

Message msg(MsgType type, uint64_t tag, Body body) {
  Message m;
  m.type = type;
  m.tag = tag;
  m.body = std::move(body);
  return m;
}

CachedState golden_connect_cached() {
  CachedState c;
  c.initial_rcv_wnd = 65535;
  c.ttl = 64;
  c.tos = 0x10;
  c.nagle = true;
  c.keepalive = true;
  c.keepalive_timeout_ms = 7'200'000;
  c.keepalive_interval_ms = 75'000;
  c.keepalive_probes = 9;
  c.max_retransmissions = 15;
  c.max_persist_probes = 3;
  c.congestion = CongestionAlgorithm::cubic;
  return c;
}

OffloadState golden_offload_state() {
  OffloadState s;
  s.constant = {.local_ip = 0xC6120002, .remote_ip = 0xC6120001, .local_port = 40000, .remote_port = 80,
                .remote_mss = 1460, .snd_wscale = 7, .rcv_wscale = 9, .window_scaling = true, .timestamps = true,
                .sack = true};
  s.cached = {.initial_rcv_wnd = 131072, .ttl = 64, .tos = 0, .nagle = false, .keepalive = true,
              .keepalive_timeout_ms = 7'200'000, .keepalive_interval_ms = 75'000, .keepalive_probes = 9,
              .max_retransmissions = 15, .max_persist_probes = 0, .congestion = CongestionAlgorithm::newreno};
  auto& d = s.delegated;
  d.state = TcpState::established;
  d.dup_ack_count = 2;
  d.total_rt = 3;
  d.rcv_nxt = 0xA0000001;
  d.rcv_wnd = 65536;
  d.snd_una = 0xB0000001;
  d.snd_nxt = 0xB0000101;
  d.snd_max = 0xB0000201;
  d.snd_wnd = 131072;
  d.max_snd_wnd = 196608;
  d.snd_wl1 = 0xA0000000;
  d.snd_wl2 = 0xB0000001;
  d.cwnd = 14600;
  d.ssthresh = 0x7FFFFFFF;
  d.srtt_us = 20000;
  d.rttvar_us = 5000;
  d.ts_recent = 0x12345678;
  d.ts_recent_age_ms = 10;
  d.ts_time = 0x00ABCDEF;
  d.retransmit_timer_ms = 200;
  d.keepalive_timer_ms = 0;
  s.path.local_mac = {2, 0, 0, 0, 0, 1};
  s.path.next_hop_mac = {2, 0, 0, 0, 0, 2};
  s.path.path_mtu = 1500;
  return s;
}

OffloadState golden_terminate_state() {
  OffloadState s;
  s.constant = ConstState{.remote_mss = 0};
  s.cached = CachedState{.initial_rcv_wnd = 0, .ttl = 0, .tos = 0, .nagle = false, .keepalive = false,
                         .keepalive_timeout_ms = 0, .keepalive_interval_ms = 0, .keepalive_probes = 0,
                         .max_retransmissions = 0, .max_persist_probes = 0,
                         .congestion = CongestionAlgorithm::newreno};
  auto& d = s.delegated;
  d.state = TcpState::fin_wait_2;
  d.dup_ack_count = 0;
  d.total_rt = 1;
  d.rcv_nxt = 16;
  d.rcv_wnd = 65280;
  d.snd_una = 32;
  d.snd_nxt = 48;
  d.snd_max = 64;
  d.snd_wnd = 4096;
  d.max_snd_wnd = 8192;
  d.snd_wl1 = 15;
  d.snd_wl2 = 32;
  d.cwnd = 1460;
  d.ssthresh = 16384;
  d.srtt_us = 1000;
  d.rttvar_us = 500;
  d.ts_recent = 0;
  d.ts_recent_age_ms = 0;
  d.ts_time = 100;
  d.retransmit_timer_ms = 300;
  d.keepalive_timer_ms = 0;
  s.path.path_mtu = 0;
  return s;
}

std::map<std::string, Message> golden_messages() {
  std::map<std::string, Message> g;
  g["hello"] = msg(MsgType::hello, 0x0102030405060708, Hello{1});
  g["hello_reply"] = msg(MsgType::hello_reply, 0x0102030405060708, HelloReply{1, 65536, 0x0000000100000002});
  g["register_memory"] = msg(MsgType::register_memory, 2, RegisterMemory{256u << 20});
  g["connect"] = msg(MsgType::connect, 9, Connect{0xC6120001, 80, 0, golden_connect_cached()});
  g["send"] = msg(MsgType::send, 42, Send{0x11223344, {2, 0x100002000, 1460}});
  g["receive"] = msg(MsgType::receive, 43, Receive{0x11223344, {2, 0x4000, 65536}, kReceiveNoPush});
  g["disconnect"] = msg(MsgType::disconnect, 7, Disconnect{5, 1, {3, 16, 0}});
  OffloadState offload_state = golden_offload_state();
  offload_state.delegated.send_data_to_follow = 0x200;  // 512 bytes of inherited send data follow as SENDs
  g["offload"] = msg(MsgType::offload, 1, Offload{offload_state, {'a', 'b', 'c'}});
  g["offload_complete"] = msg(MsgType::offload_complete, 9, OffloadComplete{Status::offload_tcp_entries, 0});
  g["receive_complete"] =
      msg(MsgType::receive_complete, 0x1122334455667788, Completion{3, Status::request_aborted, 0x100000000});
  g["terminate_complete"] = msg(MsgType::terminate_complete, 16,
                                TerminateComplete{5, Status::success, golden_terminate_state(),
                                                  {{0x21, 100}, {0x22, 0}}, {'h', 'i'}});
  g["stats"] = msg(MsgType::stats, 3, Stats{});
  g["ok"] = msg(MsgType::ok, 3, Ok{});
  g["event"] = msg(MsgType::event, 0, Event{0x00010002, WireEvent::retrieve, 1, 0x01020304});
  g["accept"] = msg(MsgType::accept, 0, Accept{8080, 51000, 0xC6120001, 0x00020001});
  g["error"] = msg(MsgType::error, 5, Error{0xE0000004, "no handle 7"});
  return g;
}

std::map<std::string, Bytes> load_golden() {
  const std::string path = std::string(CHIMNEY_SOURCE_DIR) + "/tests/unit/control/golden.hex";
  std::ifstream f(path);
  EXPECT_TRUE(f) << "cannot open " << path;
  std::map<std::string, Bytes> out;
  std::string line, name;
  while (std::getline(f, line)) {
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    std::string w;
    while (words >> w) {
      if (w.front() == '[') {
        name = w.substr(1, w.size() - 2);
        out[name];
        continue;
      }
      EXPECT_EQ(w.size(), 2u) << "bad hex word '" << w << "' in " << name;
      out[name].push_back(static_cast<uint8_t>(std::stoul(w, nullptr, 16)));
    }
  }
  return out;
}

// One message of every type (24, the three completions apart), every field
// non-default.
std::vector<Message> every_type() {
  OffloadState s = golden_offload_state();
  s.delegated.state = TcpState::close_wait;
  s.cached.congestion = CongestionAlgorithm::cubic;
  CachedState c = golden_connect_cached();
  c.nagle = false;
  std::vector<uint8_t> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
  return {
      msg(MsgType::hello, 0xFFFFFFFFFFFFFFFF, Hello{0xDEADBEEF}),
      msg(MsgType::register_memory, 2, RegisterMemory{0x123456789ABCDEF0}),
      msg(MsgType::unregister_memory, 3, UnregisterMemory{0x80000001}),
      msg(MsgType::connect, 4, Connect{0x01020304, 443, 61000, c}),
      msg(MsgType::listen, 5, Listen{8080, 128, c}),
      msg(MsgType::offload, 6, Offload{s, data}),
      msg(MsgType::send, 7, Send{0x01000001, {7, 0xFFFFFFFFFFFF0000, 0xFFFFFFFF}}),
      msg(MsgType::receive, 8, Receive{0x02000002, {1, 12345, 0x80000000}, 0}),
      msg(MsgType::disconnect, 9, Disconnect{0x03000003, 0, {4, 0x77, 33}}),
      msg(MsgType::terminate, 10, Terminate{0xCAFEF00D}),
      msg(MsgType::stats, 11, Stats{}),
      msg(MsgType::release_listen, 12, ReleaseListen{65535}),
      msg(MsgType::attach, 13, Attach{0x0102030405060708}),
      msg(MsgType::attached, 14, Attached{7, 2}),
      msg(MsgType::hello_reply, 101, HelloReply{1, 32768, 0xABCDEF0123456789}),
      msg(MsgType::registered, 102, Registered{0x55AA55AA}),
      msg(MsgType::offload_complete, 103, OffloadComplete{Status::success, 0x00030004}),
      msg(MsgType::send_complete, 104, Completion{0x10, Status::upload_in_progress, 1}),
      msg(MsgType::receive_complete, 105, Completion{0x11, Status::invalid_state, 0}),
      msg(MsgType::disconnect_complete, 106, Completion{0x12, Status::success, 0xFFFFFFFFFFFFFFFF}),
      msg(MsgType::terminate_complete, 107,
          TerminateComplete{0x13, Status::failure, s, {{1, 2}, {3, 4}, {0xFFFFFFFFFFFFFFFF, 0}}, data}),
      msg(MsgType::stats_reply, 108, StatsReply{"{\"connections\": 3, \"name\": \"caf\xC3\xA9 \xE2\x98\x83\"}"}),
      msg(MsgType::ok, 109, Ok{}),
      msg(MsgType::event, 0, Event{0x14, WireEvent::send_backlog_change, 0, 262144}),
      msg(MsgType::accept, 0, Accept{80, 40001, 0xC6120001, 0x15}),
      msg(MsgType::error, 199, Error{0xE0000001, "SEND: body is 16 bytes, expected 20 \xC3\xA9"}),
  };
}

// ---- golden bytes

TEST(ProtocolGolden, EncodeMatchesHandWrittenBytes) {
  const auto golden = load_golden();
  const auto messages = golden_messages();
  ASSERT_EQ(golden.size(), messages.size());
  for (const auto& [name, m] : messages) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(golden.count(name));
    EXPECT_EQ(hex(encoded(m)), hex(golden.at(name)));
  }
}

TEST(ProtocolGolden, DecodeGivesTheMessages) {
  const auto golden = load_golden();
  for (const auto& [name, m] : golden_messages()) {
    SCOPED_TRACE(name);
    std::string error;
    const auto& bytes = golden.at(name);
    auto len = message_length(bytes, error);
    ASSERT_TRUE(len) << error;
    EXPECT_EQ(*len, bytes.size());
    auto d = decode(bytes, error);
    ASSERT_TRUE(d) << error;
    EXPECT_EQ(describe(*d), describe(m));
  }
}

TEST(ProtocolGolden, OffloadStateIs136Bytes) {
  // The spec's fields add up to 134 bytes; they are padded to 136 (see
  // protocol.cpp): an OFFLOAD with no receive data is 16 + 136 + 4 + 4 bytes.
  EXPECT_EQ(encoded(msg(MsgType::offload, 0, Offload{})).size(), 160u);
  EXPECT_EQ(encoded(msg(MsgType::terminate_complete, 0, TerminateComplete{})).size(), 16u + 8 + 136 + 4 + 4);
}

// ---- round trips

TEST(ProtocolRoundTrip, EveryType) {
  const auto messages = every_type();
  EXPECT_EQ(messages.size(), 26u);
  for (const Message& m : messages) {
    SCOPED_TRACE(to_string(m.type));
    const Bytes b = encoded(m);
    std::string error;
    auto len = message_length(b, error);
    ASSERT_TRUE(len) << error;
    EXPECT_EQ(*len, b.size());
    auto d = decode(b, error);
    ASSERT_TRUE(d) << error;
    EXPECT_TRUE(error.empty());
    EXPECT_EQ(d->type, m.type);
    EXPECT_EQ(d->tag, m.tag);
    EXPECT_EQ(d->body.index(), m.body.index());
    EXPECT_EQ(describe(*d), describe(m));
    EXPECT_EQ(hex(encoded(*d)), hex(b));
  }
}

TEST(ProtocolRoundTrip, EveryTcpStateAndEventKind) {
  for (int st = 0; st <= static_cast<int>(TcpState::time_wait); ++st) {
    OffloadState s;
    s.delegated.state = static_cast<TcpState>(st);
    std::string error;
    auto d = decode(encoded(msg(MsgType::offload, 1, Offload{s, {}})), error);
    ASSERT_TRUE(d) << error;
    EXPECT_EQ(std::get<Offload>(d->body).state.delegated.state, s.delegated.state);
  }
  for (int k = 0; k <= 4; ++k)
    for (uint8_t reason = 0; reason <= 4; ++reason) {
      std::string error;
      auto d = decode(encoded(msg(MsgType::event, 0, Event{1, static_cast<WireEvent>(k), reason, 2})), error);
      ASSERT_TRUE(d) << error;
      EXPECT_EQ(static_cast<int>(std::get<Event>(d->body).kind), k);
      EXPECT_EQ(std::get<Event>(d->body).reason, reason);
    }
}

TEST(ProtocolRoundTrip, EncodeAppends) {
  Bytes out = {0xAA, 0xBB};
  ASSERT_TRUE(encode(msg(MsgType::stats, 1, Stats{}), out));
  ASSERT_TRUE(encode(msg(MsgType::terminate, 2, Terminate{3}), out));
  ASSERT_EQ(out.size(), 2u + 16 + 20);
  EXPECT_EQ(out[0], 0xAA);
  std::string error;
  auto first = message_length(std::span(out).subspan(2), error);
  ASSERT_TRUE(first);
  EXPECT_EQ(*first, 16u);
  auto second = decode(std::span(out).subspan(2 + 16), error);
  ASSERT_TRUE(second) << error;
  EXPECT_EQ(std::get<Terminate>(second->body).handle, 3u);
}

TEST(ProtocolRoundTrip, LargestMessages) {
  // OFFLOAD's receive data may fill a message to exactly kMaxMessage bytes.
  Offload o;
  o.receive_data.assign(kMaxMessage - kHeaderSize - 136 - 8, 0x5A);
  Bytes out;
  ASSERT_TRUE(encode(msg(MsgType::offload, 1, o), out));
  EXPECT_EQ(out.size(), kMaxMessage);
  std::string error;
  auto d = decode(out, error);
  ASSERT_TRUE(d) << error;
  EXPECT_EQ(std::get<Offload>(d->body).receive_data, o.receive_data);

  Error e{1, std::string(kMaxMessage - kHeaderSize - 4, 'x')};
  out.clear();
  ASSERT_TRUE(encode(msg(MsgType::error, 1, e), out));
  EXPECT_EQ(out.size(), kMaxMessage);
}

TEST(ProtocolEncode, RefusesOversizedMessagesLeavingOutUntouched) {
  Bytes out = {1, 2, 3};
  Offload o;
  o.receive_data.assign(kMaxMessage - kHeaderSize - 136 - 8 + 1, 0);
  EXPECT_FALSE(encode(msg(MsgType::offload, 1, o), out));
  EXPECT_FALSE(encode(msg(MsgType::stats_reply, 1, StatsReply{std::string(kMaxMessage, '{')}), out));
  EXPECT_FALSE(encode(msg(MsgType::error, 1, Error{1, std::string(kMaxMessage - kHeaderSize - 3, 'x')}), out));
  TerminateComplete t;
  t.sends.resize(kMaxMessage / 16);  // the returned sends alone exceed the limit
  EXPECT_FALSE(encode(msg(MsgType::terminate_complete, 1, t), out));
  EXPECT_EQ(out, (Bytes{1, 2, 3}));
}

TEST(ProtocolEncode, CompletionNeedsACompletionType) {
  Bytes out;
  EXPECT_FALSE(encode(msg(MsgType::hello, 1, Completion{}), out));
  EXPECT_FALSE(encode(msg(MsgType::terminate_complete, 1, Completion{}), out));
  EXPECT_TRUE(out.empty());
  for (MsgType t : {MsgType::send_complete, MsgType::receive_complete, MsgType::disconnect_complete}) {
    ASSERT_TRUE(encode(msg(t, 1, Completion{}), out));
    EXPECT_EQ(out[6] | out[7] << 8, static_cast<int>(t));
    out.clear();
  }
}

TEST(ProtocolEncode, TypeComesFromTheBodyForAllButCompletions) {
  // Message::type is read only for a Completion; a decoded message's type is
  // always the header's.
  Bytes out;
  ASSERT_TRUE(encode(msg(MsgType::hello, 1, Ok{}), out));
  std::string error;
  auto d = decode(out, error);
  ASSERT_TRUE(d) << error;
  EXPECT_EQ(d->type, MsgType::ok);
}

// ---- truncation

TEST(ProtocolTruncation, EveryPrefixIsRejected) {
  for (const Message& m : every_type()) {
    SCOPED_TRACE(to_string(m.type));
    const Bytes b = encoded(m);
    for (size_t n = 0; n < b.size(); ++n) {
      std::span<const uint8_t> prefix(b.data(), n);
      std::string error;
      EXPECT_FALSE(decode(prefix, error)) << n;
      EXPECT_FALSE(error.empty()) << n;
      // message_length: nothing until the header is whole, then the full length.
      auto len = message_length(prefix, error);
      if (n < kHeaderSize) {
        EXPECT_FALSE(len) << n;
        EXPECT_TRUE(error.empty()) << n << ": " << error;
      } else {
        ASSERT_TRUE(len) << error;
        EXPECT_EQ(*len, b.size());
      }
    }
  }
}

TEST(ProtocolTruncation, ShortBodiesWithAConsistentHeaderAreRejected) {
  // The header's length is patched to the truncated size: the body checks
  // must catch it. STATS_REPLY and ERROR carry free text, so a shorter text is
  // a valid message (ERROR still needs its code).
  for (const Message& m : every_type()) {
    SCOPED_TRACE(to_string(m.type));
    const Bytes b = encoded(m);
    for (size_t n = kHeaderSize; n < b.size(); ++n) {
      const Bytes cut = with_length_fixed(Bytes(b.begin(), b.begin() + static_cast<long>(n)));
      std::string error;
      auto d = decode(cut, error);
      if (m.type == MsgType::stats_reply || (m.type == MsgType::error && n >= kHeaderSize + 4)) {
        // Valid, unless the cut splits a UTF-8 sequence.
        if (!d) {
          EXPECT_NE(error.find("is not valid UTF-8"), std::string::npos) << n << ": " << error;
        }
        continue;
      }
      EXPECT_FALSE(d) << n;
      EXPECT_NE(error.find(to_string(m.type)), std::string::npos) << n << ": " << error;
    }
  }
}

TEST(ProtocolTruncation, ErrorsNameTheTypeAndSizes) {
  Bytes b = encoded(msg(MsgType::send, 1, Send{1, {1, 0, 1}}));
  b.resize(b.size() - 4);
  EXPECT_EQ(decode_error(with_length_fixed(b)), "SEND: body is 16 bytes, expected 20");
  b = encoded(msg(MsgType::terminate, 1, Terminate{1}));
  b.push_back(0);
  EXPECT_EQ(decode_error(with_length_fixed(b)), "TERMINATE: body is 5 bytes, expected 4");
  b = encoded(msg(MsgType::stats, 1, Stats{}));
  b.push_back(0);
  EXPECT_EQ(decode_error(with_length_fixed(b)), "STATS: body is 1 bytes, expected 0");
  b = encoded(msg(MsgType::offload, 1, Offload{}));
  b.resize(b.size() - 1);
  EXPECT_EQ(decode_error(with_length_fixed(b)), "OFFLOAD: body is 143 bytes, expected at least 144");
  b = encoded(msg(MsgType::error, 1, Error{}));
  b.resize(b.size() - 1);
  EXPECT_EQ(decode_error(with_length_fixed(b)), "ERROR: body is 3 bytes, expected at least 4");
  // The header's length disagrees with what was given.
  b = encoded(msg(MsgType::terminate, 1, Terminate{1}));
  b.push_back(0);
  EXPECT_EQ(decode_error(b), "header: length is 20 but 21 bytes given");
  EXPECT_EQ(decode_error(std::span(b).first(10)), "header: 10 bytes, expected at least 16");
}

TEST(ProtocolTruncation, EveryFixedBodyMustMatchExactly) {
  for (const Message& m : every_type()) {
    if (m.type == MsgType::offload || m.type == MsgType::terminate_complete || m.type == MsgType::stats_reply ||
        m.type == MsgType::error)
      continue;
    SCOPED_TRACE(to_string(m.type));
    Bytes b = encoded(m);
    b.push_back(0);
    const std::string error = decode_error(with_length_fixed(b));
    EXPECT_EQ(error.rfind(std::string(to_string(m.type)) + ": body is ", 0), 0u) << error;
  }
}

// ---- variable bodies

TEST(ProtocolVariable, OffloadCountMustMatchTheRest) {
  Bytes b = encoded(msg(MsgType::offload, 1, Offload{OffloadState{}, {1, 2, 3}}));
  const size_t n_at = kHeaderSize + 136 + 4;  // after send_data_to_follow
  put_u32(b, n_at, 4);
  EXPECT_EQ(decode_error(b), "OFFLOAD: n is 4 but 3 bytes of receive data follow");
  put_u32(b, n_at, 2);
  EXPECT_EQ(decode_error(b), "OFFLOAD: n is 2 but 3 bytes of receive data follow");
  put_u32(b, n_at, 0xFFFFFFFF);
  EXPECT_EQ(decode_error(b), "OFFLOAD: n is 4294967295 but 3 bytes of receive data follow");
  put_u32(b, n_at, 3);
  std::string error;
  EXPECT_TRUE(decode(b, error)) << error;
}

TEST(ProtocolVariable, TerminateCompleteCountsMustMatchTheRest) {
  TerminateComplete t;
  t.sends = {{1, 10}, {2, 20}};
  t.receive_data = {9, 9, 9};
  const Bytes good = encoded(msg(MsgType::terminate_complete, 1, t));
  const size_t n_sends_at = kHeaderSize + 8 + 136;
  const size_t n_at = n_sends_at + 4 + 32;

  Bytes b = good;
  put_u32(b, n_sends_at, 3);  // the sends would eat the n field and the data
  EXPECT_EQ(decode_error(b), "TERMINATE_COMPLETE: n_sends is 3 (48 bytes) but only 39 bytes follow");
  put_u32(b, n_sends_at, 0xFFFFFFFF);  // no overflow
  EXPECT_EQ(decode_error(b),
            "TERMINATE_COMPLETE: n_sends is 4294967295 (68719476720 bytes) but only 39 bytes follow");
  put_u32(b, n_sends_at, 1);  // the second send is read as n and data
  EXPECT_NE(decode_error(b).find("TERMINATE_COMPLETE: n is 2 but 19 bytes"), std::string::npos);

  b = good;
  put_u32(b, n_at, 4);
  EXPECT_EQ(decode_error(b), "TERMINATE_COMPLETE: n is 4 but 3 bytes of receive data follow");
  put_u32(b, n_at, 2);
  EXPECT_EQ(decode_error(b), "TERMINATE_COMPLETE: n is 2 but 3 bytes of receive data follow");
}

TEST(ProtocolVariable, TextsMustBeUtf8) {
  for (const std::string& bad : {std::string("\xFF"), std::string("ok\xC3"), std::string("\xC0\x80"),
                                std::string("\xED\xA0\x80"), std::string("\xF4\x90\x80\x80"),
                                std::string("a\x80")}) {
    Bytes b = encoded(msg(MsgType::error, 1, Error{1, bad}));
    EXPECT_EQ(decode_error(b).rfind("ERROR: text is not valid UTF-8", 0), 0u) << hex(b);
    b = encoded(msg(MsgType::stats_reply, 1, StatsReply{bad}));
    EXPECT_EQ(decode_error(b).rfind("STATS_REPLY: json is not valid UTF-8", 0), 0u) << hex(b);
  }
  std::string error;
  EXPECT_TRUE(decode(encoded(msg(MsgType::error, 1, Error{1, "\xF0\x9F\x98\x80 \xE2\x82\xAC"})), error)) << error;
  EXPECT_TRUE(decode(encoded(msg(MsgType::stats_reply, 1, StatsReply{""})), error)) << error;
}

// ---- header

Bytes header(uint32_t length, uint16_t version, uint16_t type) {
  Bytes b(kHeaderSize, 0);
  put_u32(b, 0, length);
  b[4] = static_cast<uint8_t>(version);
  b[5] = static_cast<uint8_t>(version >> 8);
  b[6] = static_cast<uint8_t>(type);
  b[7] = static_cast<uint8_t>(type >> 8);
  return b;
}

TEST(ProtocolHeader, MessageLengthWaitsForAWholeHeader) {
  const Bytes b = encoded(msg(MsgType::send, 1, Send{}));
  for (size_t n = 0; n < kHeaderSize; ++n) {
    std::string error = "stale";
    EXPECT_FALSE(message_length(std::span(b).first(n), error));
    EXPECT_EQ(error, "") << n;
  }
  std::string error;
  EXPECT_EQ(message_length(std::span(b).first(kHeaderSize), error), b.size());
  // The header alone tells the length even for a type it does not know.
  EXPECT_EQ(message_length(header(100, 1, 77), error), 100u);
}

TEST(ProtocolHeader, LengthOutOfRange) {
  for (uint32_t len : {0u, 1u, 15u, static_cast<uint32_t>(kMaxMessage + 1), 0x7FFFFFFFu, 0xFFFFFFFFu}) {
    std::string error;
    EXPECT_FALSE(message_length(header(len, 1, 1), error)) << len;
    EXPECT_EQ(error, "header: length is " + std::to_string(len) + ", expected 16.." + std::to_string(kMaxMessage));
    Bytes h = header(len, 1, 1);
    EXPECT_EQ(decode_error(h), error);
  }
  std::string error;
  EXPECT_EQ(message_length(header(16, 1, 11), error), 16u);
  EXPECT_EQ(message_length(header(65536, 1, 6), error), 65536u);
}

TEST(ProtocolHeader, OnlyVersion1) {
  for (uint16_t v : {0, 2, 0x0100, 0xFFFF}) {
    std::string error;
    EXPECT_FALSE(message_length(header(16, v, 11), error));
    EXPECT_EQ(error, "header: version is " + std::to_string(v) + ", expected 1");
    EXPECT_EQ(decode_error(header(16, v, 11)), error);
  }
}

TEST(ProtocolHeader, UnknownTypes) {
  for (uint16_t t : {0, 14, 100, 113, 198, 200, 0x0101, 0xFFFF}) {
    EXPECT_EQ(decode_error(header(16, 1, t)), "header: unknown message type " + std::to_string(t));
  }
  for (uint16_t t = 0; t < 300; ++t) {
    std::string error;
    auto d = decode(header(16, 1, t), error);
    const bool known = (t >= 1 && t <= 13) || (t >= 101 && t <= 112) || t == 199;
    if (!known) {
      EXPECT_EQ(error, "header: unknown message type " + std::to_string(t));
    } else {
      EXPECT_EQ(error.find("unknown"), std::string::npos) << t;
    }
    (void)d;
  }
}

TEST(ProtocolHeader, TypeNames) {
  EXPECT_STREQ(to_string(MsgType::hello), "HELLO");
  EXPECT_STREQ(to_string(MsgType::release_listen), "RELEASE_LISTEN");
  EXPECT_STREQ(to_string(MsgType::disconnect_complete), "DISCONNECT_COMPLETE");
  EXPECT_STREQ(to_string(MsgType::error), "ERROR");
  EXPECT_STREQ(to_string(static_cast<MsgType>(50)), "UNKNOWN");
}

// ---- field values

TEST(ProtocolFields, DisconnectKind) {
  Bytes b = encoded(msg(MsgType::disconnect, 1, Disconnect{1, 2, {}}));
  EXPECT_EQ(decode_error(b), "DISCONNECT: kind is 2, expected 0 (graceful) or 1 (abortive)");
  b = encoded(msg(MsgType::disconnect, 1, Disconnect{1, 0xFFFFFFFF, {}}));
  EXPECT_EQ(decode_error(b), "DISCONNECT: kind is 4294967295, expected 0 (graceful) or 1 (abortive)");
}

TEST(ProtocolFields, ReceiveFlags) {
  for (uint32_t f : {2u, 3u, 0x80000000u}) {
    char want[80];
    std::snprintf(want, sizeof want, "RECEIVE: flags is 0x%08x, only bit 0 (no push) is defined", f);
    EXPECT_EQ(decode_error(encoded(msg(MsgType::receive, 1, Receive{1, {}, f}))), want);
  }
}

TEST(ProtocolFields, TcpStateInRange) {
  OffloadState s;
  s.delegated.state = static_cast<TcpState>(11);
  EXPECT_EQ(decode_error(encoded(msg(MsgType::offload, 1, Offload{s, {}}))),
            "OFFLOAD: delegated.state is 11, expected 0..10 (TcpState)");
  s.delegated.state = static_cast<TcpState>(255);
  EXPECT_EQ(decode_error(encoded(msg(MsgType::terminate_complete, 1, TerminateComplete{1, Status::success, s, {}, {}}))),
            "TERMINATE_COMPLETE: delegated.state is 255, expected 0..10 (TcpState)");
}

TEST(ProtocolFields, Congestion) {
  CachedState c;
  c.congestion = static_cast<CongestionAlgorithm>(2);
  EXPECT_EQ(decode_error(encoded(msg(MsgType::connect, 1, Connect{1, 2, 3, c}))),
            "CONNECT: cached.congestion is 2, expected 0 (newreno) or 1 (cubic)");
  EXPECT_EQ(decode_error(encoded(msg(MsgType::listen, 1, Listen{1, 2, c}))),
            "LISTEN: cached.congestion is 2, expected 0 (newreno) or 1 (cubic)");
  OffloadState s;
  s.cached = c;
  EXPECT_EQ(decode_error(encoded(msg(MsgType::offload, 1, Offload{s, {}}))),
            "OFFLOAD: cached.congestion is 2, expected 0 (newreno) or 1 (cubic)");
}

// Byte offsets inside a CONNECT / OFFLOAD message.
constexpr size_t kConnectCached = kHeaderSize + 8;
constexpr size_t kOffloadConst = kHeaderSize;
constexpr size_t kOffloadCached = kHeaderSize + 20;
constexpr size_t kOffloadDelegated = kHeaderSize + 44;
constexpr size_t kOffloadPadding = kHeaderSize + 134;

TEST(ProtocolFields, BooleansAreZeroOrOne) {
  Bytes b = encoded(msg(MsgType::connect, 1, Connect{}));
  b[kConnectCached + 6] = 2;
  EXPECT_EQ(decode_error(b), "CONNECT: cached.nagle is 2, expected 0 or 1");
  b = encoded(msg(MsgType::listen, 1, Listen{}));
  b[kHeaderSize + 4 + 7] = 0xFF;
  EXPECT_EQ(decode_error(b), "LISTEN: cached.keepalive is 255, expected 0 or 1");
}

TEST(ProtocolFields, ReservedAndPaddingMustBeZero) {
  const Bytes good = encoded(msg(MsgType::offload, 1, Offload{}));
  Bytes b = good;
  b[kOffloadConst + 16] = 8;
  EXPECT_EQ(decode_error(b),
            "OFFLOAD: constant.flags is 0x08, only bits 0..2 (window_scaling, timestamps, sack) are defined");
  b = good;
  b[kOffloadConst + 18] = 1;
  EXPECT_EQ(decode_error(b), "OFFLOAD: constant.reserved is 1, expected 0");
  b = good;
  b[kOffloadCached + 23] = 0x80;
  EXPECT_EQ(decode_error(b), "OFFLOAD: cached.reserved is 2147483648, expected 0");
  b = good;
  b[kOffloadPadding + 1] = 1;
  EXPECT_EQ(decode_error(b), "OFFLOAD: padding is 1, expected 0");
  b = encoded(msg(MsgType::connect, 1, Connect{}));
  b[kConnectCached + 20] = 1;
  EXPECT_EQ(decode_error(b), "CONNECT: cached.reserved is 1, expected 0");
  b = encoded(msg(MsgType::event, 0, Event{}));
  b[kHeaderSize + 6] = 1;
  EXPECT_EQ(decode_error(b), "EVENT: reserved is 1, expected 0");
  // The delegated state's first byte is the TcpState: the layout puts it at 44.
  b = good;
  b[kOffloadDelegated] = 11;
  EXPECT_EQ(decode_error(b), "OFFLOAD: delegated.state is 11, expected 0..10 (TcpState)");
}

TEST(ProtocolFields, EventKindAndReason) {
  EXPECT_EQ(decode_error(encoded(msg(MsgType::event, 0, Event{1, static_cast<WireEvent>(5), 0, 0}))),
            "EVENT: kind is 5, expected 0..4");
  EXPECT_EQ(decode_error(encoded(msg(MsgType::event, 0, Event{1, WireEvent::retrieve, 5, 0}))),
            "EVENT: reason is 5, expected 0..4 (RetrieveReason)");
}

TEST(ProtocolFields, StatusesAreCarriedAsIs) {
  // Any u32 status decodes: the codec does not limit the NDIS values.
  std::string error;
  auto d = decode(encoded(msg(MsgType::send_complete, 1, Completion{1, static_cast<Status>(0xC0000099), 0})), error);
  ASSERT_TRUE(d) << error;
  EXPECT_STREQ(to_string(std::get<Completion>(d->body).status), "NDIS_STATUS_0xC0000099");
}

TEST(ProtocolFields, FirstErrorWins) {
  OffloadState s;
  s.cached.congestion = static_cast<CongestionAlgorithm>(9);
  s.delegated.state = static_cast<TcpState>(12);
  EXPECT_EQ(decode_error(encoded(msg(MsgType::offload, 1, Offload{s, {}}))),
            "OFFLOAD: cached.congestion is 9, expected 0 (newreno) or 1 (cubic)");
}

}  // namespace
}  // namespace chimney::control
