// Requests as NDIS shapes them (CONTRACT.md): a NetBufferList carries a
// status, the info slot bytes_transferred, and a chain of NetBuffers; lists
// are linked into chains. The host owns them; the target holds them from the
// request until its completion and uses their reserved areas for its own
// bookkeeping, so no request costs the target an allocation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "chimney/status.hpp"

namespace chimney {

struct NetBuffer {
  NetBuffer* next = nullptr;
  uint8_t* data = nullptr;   // the data start
  uint32_t data_length = 0;  // bytes from the data start

  // NdisAdvanceNetBufferDataStart: the target moves the start past the bytes
  // it transferred (CONTRACT C-6, C-12).
  void advance_data_start(uint32_t n) {
    data += n;
    data_length -= n;
  }

  // The target's (NDIS: MiniportReserved). Send payload is referenced
  // zero-copy from mbufs; this holds the reference count of that memory.
  alignas(8) unsigned char target_reserved[32] = {};
};

// Receive requests complete on a full buffer, PSH or the push timer unless
// they carry this flag; then only when full (CONTRACT C-9).
inline constexpr uint32_t kReceiveNoPush = 1u << 0;

struct NetBufferList {
  NetBufferList* next = nullptr;  // the next request of the chain
  NetBuffer* first = nullptr;
  Status status = Status::pending;
  uint64_t bytes_transferred = 0;  // NET_BUFFER_LIST_INFO(TcpOffloadBytesTransferred)
  void* host_context = nullptr;    // the host's, untouched by the target
  uint32_t flags = 0;              // kReceiveNoPush on a receive request (C-9)

  uint64_t data_length() const {
    uint64_t n = 0;
    for (const NetBuffer* b = first; b != nullptr; b = b->next) n += b->data_length;
    return n;
  }

  alignas(8) unsigned char target_reserved[48] = {};
};

}  // namespace chimney
