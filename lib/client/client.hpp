// A host process's side of chimneyd's control socket (docs/CONTROL_PROTOCOL.md),
// in C++: the counterpart of clients/python/chimney/client.py. See docs/CLIENT.md.
//
//   auto c = chimney::client::Client::connect_unix("/run/chimney/chimney.sock");
//   uint32_t h = c.connect("198.18.0.1", 80);
//   auto r = c.send(h, bytes);
//   auto done = c.wait(r, std::chrono::seconds(5));   // Completion: status, bytes_transferred
//   c.terminate(h);
//
// One session per Client: a Unix stream socket (non-blocking, driven with
// poll(2) by the calling thread: there is no thread of its own), one memfd
// region shared with the target (sealed against shrinking, registered with
// SCM_RIGHTS; payload never travels in messages) and a first-fit allocator
// over it.
//
// Synchronous by default: calls that have a reply (HELLO, REGISTER_MEMORY,
// CONNECT, OFFLOAD, TERMINATE, STATS, LISTEN, RELEASE_LISTEN) send it and read
// until it comes, dispatching whatever else arrives meanwhile. SEND, RECEIVE
// and DISCONNECT return a Request at once; poll() and wait() read messages and
// complete them. A request is completed exactly once: by its completion, by
// ERROR (refused before it reached the engine), by TERMINATE (handed back), or
// when the session ends.
//
// Errors: a call the target refuses throws Error with the ERROR's code and
// text; a failed CONNECT/OFFLOAD/TERMINATE throws Error with the completion's
// status; a call without a reply in time throws TimeoutError; the end of the
// session throws Error (code none). Not thread-safe: one thread per Client.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "chimney/offload_state.hpp"
#include "chimney/status.hpp"
#include "control/protocol.hpp"

namespace chimney::client {

using Clock = std::chrono::steady_clock;
using Timeout = std::chrono::milliseconds;
// Waits with this timeout never give up.
inline constexpr Timeout kForever = Timeout::max();

inline constexpr std::string_view kDefaultSocket = "/run/chimney/chimney.sock";

// What went wrong. code(): the ERROR's code (an NDIS status or a 0xE000xxxx
// protocol error), or the failed completion's status; nullopt for problems
// of this side (socket, session ended, timeouts, region full). what():
// "<name of the code>: <text>" or the text alone.
class Error : public std::runtime_error {
 public:
  Error(std::optional<uint32_t> code, const std::string& text);
  std::optional<uint32_t> code() const { return code_; }
  const std::string& text() const { return text_; }
  // The NDIS status when the code is one (not a protocol error).
  std::optional<Status> status() const;

 private:
  std::optional<uint32_t> code_;
  std::string text_;
};

// A synchronous call got no reply within its timeout.
class TimeoutError : public Error {
 public:
  explicit TimeoutError(const std::string& text) : Error(std::nullopt, text) {}
};

// No free buffer of that size in the region (yet: buffers come back as their
// requests complete).
class RegionFull : public Error {
 public:
  RegionFull(uint64_t bytes, uint64_t region_size);
};

// "NDIS_STATUS_SUCCESS", ..., or "MALFORMED", "BAD_BUFFER", ... for protocol errors.
std::string code_name(uint32_t code);

// Dotted IPv4 to host byte order (as ConstState and CONNECT carry it); nullopt if it is not one.
std::optional<uint32_t> parse_ipv4(std::string_view dotted);
std::string format_ipv4(uint32_t host_order);

// A request in flight: its tag on the wire (never 0).
using Request = uint64_t;

enum class RequestKind : uint8_t { send, receive, disconnect };
const char* to_string(RequestKind k);  // "send", "receive", "disconnect"

// How a SEND, RECEIVE or DISCONNECT ended.
struct Completion {
  Request request = 0;
  RequestKind kind = RequestKind::send;
  uint32_t handle = 0;
  Status status = Status::success;
  uint64_t bytes_transferred = 0;
  // Receives: the bytes the target wrote, in the region. Valid until
  // release(request) (the buffer stays allocated until then; the client's
  // own receive() buffers only — receive_region() buffers are the caller's).
  std::span<const uint8_t> data;
  // A send handed back by TERMINATE (C-21): status UPLOAD_IN_PROGRESS and the
  // bytes acknowledged before it.
  bool returned = false;
  // Refused with ERROR before it reached the engine (status FAILURE then), or
  // failed because the session ended (code none).
  bool refused = false;
  std::optional<uint32_t> error_code;
  std::string error_text;

  bool ok() const { return !refused && status == Status::success; }
};

// An EVENT (C-16..C-18, RECEIVE_READY).
struct Event {
  uint32_t handle = 0;
  control::WireEvent kind = control::WireEvent::disconnect;
  uint8_t reason = 0;  // RETRIEVE: a chimney::RetrieveReason (0: none)
  uint32_t value = 0;  // SEND_BACKLOG_CHANGE: bytes; RECEIVE_READY: bytes waiting
};
const char* to_string(control::WireEvent k);  // "DISCONNECT", "ABORT", ...

// A connection accepted on a port this session listens on.
struct Accepted {
  uint32_t handle = 0;
  uint32_t remote_ip = 0;  // host byte order
  uint16_t remote_port = 0;
  uint16_t local_port = 0;
};

// What TERMINATE returns (C-21).
struct Terminated {
  Status status = Status::success;
  OffloadState state;  // the delegated part filled by the target
  // Sends handed back, in order: their requests complete with returned = true.
  std::vector<control::ReturnedSend> sends;
  // Their bytes not yet acknowledged, in order (what a new offload inherits):
  // read from the region for the client's own send() buffers and for
  // send_region() buffers alike.
  std::vector<uint8_t> unacked_send_data;
  std::vector<uint8_t> receive_data;  // undelivered
};

// A piece of the region the caller allocated (alloc()) to write send data
// into and pass to send_region() or receive_region().
struct Buffer {
  uint64_t offset = 0;
  uint64_t length = 0;  // usable bytes (at least what was asked for)
  std::span<uint8_t> bytes;
};

struct Options {
  uint64_t region_size = 64u << 20;  // the memfd region registered at start
  Timeout timeout = std::chrono::seconds(30);  // each synchronous call's reply
};

class Client {
 public:
  // Connects, says HELLO, creates and registers the region. Throws Error.
  static Client connect_unix(const std::string& path = std::string(kDefaultSocket), const Options& options = {});

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();  // closes the session (the target aborts its connections) and unmaps the region

  // ---- session
  uint64_t session() const;
  uint32_t server_version() const;
  uint32_t max_message() const;
  uint32_t region() const;  // the registered region's id
  uint64_t region_size() const;
  std::span<uint8_t> region_bytes();  // the whole mapping
  uint64_t region_available() const;  // free bytes (not necessarily contiguous)
  bool closed() const;
  void close();  // idempotent; outstanding requests complete refused

  // ---- synchronous calls (timeout nullopt: Options::timeout)
  // CONNECT: the target's slow path does the handshake; returns the handle.
  // ip: dotted or host byte order. Throws Error (code: the failing status,
  // e.g. REQUEST_ABORTED when refused, FAILURE when unanswered).
  uint32_t connect(std::string_view ip, uint16_t port, uint16_t local_port = 0, const CachedState& cached = {},
                   std::optional<Timeout> timeout = {});
  uint32_t connect(uint32_t ip, uint16_t port, uint16_t local_port = 0, const CachedState& cached = {},
                   std::optional<Timeout> timeout = {});
  // OFFLOAD an established connection (C-1). Inherited send data goes
  // afterwards with send()/send_region(), in order, before any other send;
  // state.delegated.send_data_to_follow says how many bytes (in FIN_WAIT_1,
  // CLOSING and LAST_ACK the inherited FIN goes after them).
  uint32_t offload(const OffloadState& state, std::span<const uint8_t> receive_data = {},
                   std::optional<Timeout> timeout = {});
  // Uploads the connection (C-21). Requests handed back complete (returned);
  // any other of the handle still outstanding completes refused.
  Terminated terminate(uint32_t handle, std::optional<Timeout> timeout = {});
  std::string stats(std::optional<Timeout> timeout = {});  // the STATS_REPLY JSON
  void listen(uint16_t port, uint16_t backlog = 16, const CachedState& cached = {},
              std::optional<Timeout> timeout = {});
  void release_listen(uint16_t port, std::optional<Timeout> timeout = {});

  // ---- requests (return at once; throw RegionFull, Error if the session is gone)
  // Copies `data` into a buffer of the region and SENDs it (completes when all
  // of it is ACKed, C-6); the buffer is freed on completion.
  Request send(uint32_t handle, std::span<const uint8_t> data);
  // Zero-copy: SENDs [offset, offset + length) of the region as it is. The
  // caller owns that memory (alloc()/free()) and must not touch it until the
  // request completes.
  Request send_region(uint32_t handle, uint64_t offset, uint32_t length);
  // Posts a RECEIVE of up to n bytes into a buffer of the region; push = false
  // completes only when full (C-9). The completion's data stays valid until
  // release(request).
  Request receive(uint32_t handle, uint32_t n, bool push = true);
  Request receive_region(uint32_t handle, uint64_t offset, uint32_t length, bool push = true);
  // Graceful (FIN after `data`, C-11) or abortive (RST, C-13).
  Request disconnect(uint32_t handle, bool graceful = true, std::span<const uint8_t> data = {});
  // Frees a completed receive's buffer (no-op for other requests or unknown ids).
  void release(Request request);

  // ---- the region for zero-copy callers
  std::optional<Buffer> alloc(uint64_t n);  // 64-byte aligned; nullopt when no room
  void free(const Buffer& b);

  // ---- reading messages
  // Reads and dispatches whatever arrives within `timeout` (0: only what is
  // there now); returns the number of messages dispatched (at least one
  // unless the timeout passed). Throws Error when the session ended.
  size_t poll(Timeout timeout = Timeout::zero());
  // Waits for the request to complete. nullopt when the timeout passed (it
  // stays outstanding: wait again). Throws Error when it was refused (the
  // ERROR's code and text) or the session ended first. A completion is
  // handed out once; waiting again for it throws Error (unknown request).
  std::optional<Completion> wait(Request request, Timeout timeout = kForever);
  // Completed but not yet taken by wait()/take(): true; outstanding: false.
  bool done(Request request) const;
  // The completion if it is there (without reading the socket), else nullopt.
  std::optional<Completion> take(Request request);
  size_t outstanding() const;  // requests not yet completed

  // With a handler set, completions go to it (from poll()/wait()/calls)
  // instead of being kept for wait()/take(); refused ones too (refused=true).
  void on_completion(std::function<void(const Completion&)> handler);

  // Events and accepted connections, in arrival order.
  std::optional<Event> next_event(Timeout timeout = Timeout::zero());
  std::optional<Accepted> accept(Timeout timeout = Timeout::zero());
  size_t pending_events() const;
  // ERRORs that named no outstanding tag (tag 0 or a call that timed out).
  const std::vector<control::Error>& unsolicited_errors() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chimney::client
