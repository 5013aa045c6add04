// What travels between the main lcore (control server, slow path) and a
// worker's engines: requests one way, completions and events the other, each
// a fixed record from one mempool through single-producer/single-consumer
// rings (DESIGN.md: requests reach a worker and completions leave it through
// rings; nothing is shared otherwise).
#pragma once

#include <cstdint>

#include "chimney/target.hpp"

struct rte_mbuf;

namespace chimney::dataplane {

struct OffloadOp {
  // input: a segment of a connection the slow path has just handed over,
  // which reached the slow path before the engine had the connection
  // (SlowPath::hand_over): on the ring behind the connection's offload, so
  // the engine takes it after it has installed the TCB.
  enum class Kind : uint8_t { offload, send, receive, disconnect, terminate, input };
  Kind kind;
  DisconnectKind disconnect_kind;
  uint16_t port;             // the engine: one per (worker, port)
  ConnectionHandle handle;   // the engine's handle (all but offload)
  void* host_context;        // offload: the main side's record for the connection
  NetBufferList* nbl;        // send (a chain), receive (a chain), disconnect
  OffloadState* state;       // offload: owned by the main side until its note returns
  rte_mbuf* frame;           // input: the classified segment (the worker owns it from here)
};

struct OffloadNote {
  enum class Kind : uint8_t { offload, send, receive, disconnect, terminate, event, receive_ready };
  Kind kind;
  EventKind event;
  RetrieveReason reason;
  uint16_t port;
  Status status;
  uint32_t value;            // event value; receive_ready: bytes waiting
  ConnectionHandle handle;
  void* host_context;
  NetBufferList* nbl;        // completed chain or request
  DelegatedState* state;     // terminate: heap-allocated by the worker, freed by main
  bool heap;                 // allocated outside the pool (it was empty)
};

}  // namespace chimney::dataplane
