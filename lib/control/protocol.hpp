// The control protocol's messages and their codec (docs/CONTROL_PROTOCOL.md).
// Decoding never reads past the bytes given and says what is wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "chimney/offload_state.hpp"
#include "chimney/status.hpp"

namespace chimney::control {

inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHeaderSize = 16;
// 16 MiB of undelivered receive data (the largest window chimneyd accepts)
// fits a TERMINATE_COMPLETE.
inline constexpr size_t kMaxMessage = (16u << 20) + 65536;

enum class MsgType : uint16_t {
  hello = 1,
  register_memory = 2,
  unregister_memory = 3,
  connect = 4,
  listen = 5,
  offload = 6,
  send = 7,
  receive = 8,
  disconnect = 9,
  terminate = 10,
  stats = 11,
  release_listen = 12,
  attach = 13,

  hello_reply = 101,
  registered = 102,
  offload_complete = 103,
  send_complete = 104,
  receive_complete = 105,
  disconnect_complete = 106,
  terminate_complete = 107,
  stats_reply = 108,
  ok = 109,
  event = 110,
  accept = 111,
  attached = 112,
  error = 199,
};

// Protocol error codes (ERROR.code), beside the NDIS statuses.
enum class ProtocolError : uint32_t {
  malformed = 0xE0000001,
  unsupported_version = 0xE0000002,
  bad_buffer = 0xE0000003,
  unknown_handle = 0xE0000004,
  limit = 0xE0000005,
  not_allowed = 0xE0000006,
};

enum class WireEvent : uint8_t { disconnect = 0, abort = 1, retrieve = 2, send_backlog_change = 3, receive_ready = 4 };

struct Header {
  uint32_t length = 0;
  uint16_t version = kVersion;
  MsgType type = MsgType::hello;
  uint64_t tag = 0;
};

// A buffer in a registered region.
struct BufferRef {
  uint32_t region = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// ---- host -> target
struct Hello { uint32_t client_version = kVersion; };
struct RegisterMemory { uint64_t size = 0; };
struct UnregisterMemory { uint32_t region = 0; };
struct Connect { uint32_t remote_ip = 0; uint16_t remote_port = 0; uint16_t local_port = 0; CachedState cached; };
struct Listen { uint16_t port = 0; uint16_t backlog = 0; CachedState cached; };
// state.delegated.send_data is not on the wire: send_data_to_follow says how
// many bytes of inherited send data follow as SENDs (C-3).
struct Offload { OffloadState state; std::vector<uint8_t> receive_data; };
struct Send { uint32_t handle = 0; BufferRef buf; };
struct Receive { uint32_t handle = 0; BufferRef buf; uint32_t flags = 0; };
struct Disconnect { uint32_t handle = 0; uint32_t kind = 0; BufferRef buf; };
struct Terminate { uint32_t handle = 0; };
struct Stats {};
struct ReleaseListen { uint16_t port = 0; };
struct Attach { uint64_t session = 0; };  // take over a detached session of the same uid

// ---- target -> host
struct HelloReply { uint32_t server_version = kVersion; uint32_t max_message = kMaxMessage; uint64_t session = 0; };
struct Registered { uint32_t region = 0; };
struct OffloadComplete { Status status = Status::success; uint32_t handle = 0; };
struct Completion { uint32_t handle = 0; Status status = Status::success; uint64_t bytes_transferred = 0; };  // 104, 105, 106
struct ReturnedSend { uint64_t tag = 0; uint64_t bytes_transferred = 0; };
struct TerminateComplete {
  uint32_t handle = 0;
  Status status = Status::success;
  OffloadState state;  // the delegated part filled
  std::vector<ReturnedSend> sends;
  std::vector<uint8_t> receive_data;
};
struct StatsReply { std::string json; };
struct Ok {};
struct Event { uint32_t handle = 0; WireEvent kind = WireEvent::disconnect; uint8_t reason = 0; uint32_t value = 0; };
struct Accept { uint16_t local_port = 0; uint16_t remote_port = 0; uint32_t remote_ip = 0; uint32_t handle = 0; };
struct Error { uint32_t code = 0; std::string text; };
struct Attached { uint32_t connections = 0; uint32_t regions = 0; };

using Body = std::variant<Hello, RegisterMemory, UnregisterMemory, Connect, Listen, Offload, Send, Receive, Disconnect,
                          Terminate, Stats, ReleaseListen, HelloReply, Registered, OffloadComplete, Completion,
                          TerminateComplete, StatsReply, Ok, Event, Accept, Error, Attach, Attached>;

struct Message {
  MsgType type = MsgType::hello;  // for Completion: send/receive/disconnect_complete
  uint64_t tag = 0;
  Body body;
};

// Appends the encoded message (header included) to `out`. Returns false when
// it would exceed kMaxMessage.
bool encode(const Message& m, std::vector<uint8_t>& out);

// How many bytes the message at the start of `in` has, once its header is
// complete: nullopt while fewer than kHeaderSize bytes are there; an error
// text (in `error`) for a length outside [kHeaderSize, kMaxMessage] or an
// unsupported version.
std::optional<size_t> message_length(std::span<const uint8_t> in, std::string& error);

// Decodes exactly one whole message. On failure returns nullopt with `error`
// naming the problem (unknown type, short or long body, bad field value).
std::optional<Message> decode(std::span<const uint8_t> in, std::string& error);

const char* to_string(MsgType t);

}  // namespace chimney::control
