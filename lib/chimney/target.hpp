// The offload API (CONTRACT.md): what a host calls on the target, and the
// callbacks through which the target completes every request exactly once.
#pragma once

#include <cstdint>

#include "chimney/net_buffer.hpp"
#include "chimney/offload_state.hpp"
#include "chimney/status.hpp"

namespace chimney {

// A connection as the host names it. Handles are never reused while the host
// may still hold them (a generation in the high bits).
struct ConnectionHandle {
  uint32_t value = 0;
  friend bool operator==(ConnectionHandle, ConnectionHandle) = default;
};

enum class EventKind : uint8_t { disconnect, abort, retrieve, send_backlog_change };
const char* to_string(EventKind k);

// C-18 reasons for RETRIEVE.
enum class RetrieveReason : uint8_t { none, timeout_expiration, upload_requested, invalid_state, time_wait };
const char* to_string(RetrieveReason r);

enum class DisconnectKind : uint8_t { graceful, abortive };

// What the host did with indicated data (C-10).
struct IndicateResult {
  uint32_t accepted = 0;  // bytes consumed; fewer than offered leaves the rest buffered
};

class HostCallbacks {
 public:
  virtual ~HostCallbacks() = default;
  virtual void offload_complete(ConnectionHandle h, void* host_context, Status status) = 0;
  // A chain of completed sends (C-6, C-7); statuses are on each list.
  virtual void send_complete(ConnectionHandle h, void* host_context, NetBufferList* chain) = 0;
  virtual void receive_complete(ConnectionHandle h, void* host_context, NetBufferList* chain) = 0;
  // Data with no posted receive (C-10). `push`: the peer set PSH.
  virtual IndicateResult receive_indicate(ConnectionHandle h, void* host_context,
                                          const uint8_t* data, uint32_t length, bool push) = 0;
  // Only the request passed to that disconnect (C-14).
  virtual void disconnect_complete(ConnectionHandle h, void* host_context, NetBufferList* nbl) = 0;
  // C-21: the delegated state, with unfinished sends and undelivered data.
  virtual void terminate_complete(ConnectionHandle h, void* host_context, Status status,
                                  DelegatedState& state) = 0;
  // DISCONNECT, ABORT, RETRIEVE(reason), SEND_BACKLOG_CHANGE(bytes in `value`).
  virtual void event(ConnectionHandle h, void* host_context, EventKind kind, RetrieveReason reason,
                     uint32_t value) = 0;
};

class OffloadTarget {
 public:
  virtual ~OffloadTarget() = default;
  // Completes through offload_complete; on refusal nothing was sent (C-2).
  virtual void initiate_offload(const OffloadState& state, void* host_context,
                                ConnectionHandle* handle) = 0;
  // These return PENDING, or fail at once (with the request untouched and
  // still the host's) when the handle is unknown or released.
  virtual Status send(ConnectionHandle h, NetBufferList* chain) = 0;
  virtual Status receive(ConnectionHandle h, NetBufferList* chain) = 0;
  virtual Status disconnect(ConnectionHandle h, NetBufferList* nbl, DisconnectKind kind) = 0;
  virtual Status terminate(ConnectionHandle h) = 0;
  virtual Status update_cached(ConnectionHandle h, const CachedState& cached) = 0;
  virtual Status query_delegated(ConnectionHandle h, DelegatedState* out) = 0;
};

}  // namespace chimney
