// What the engine keeps in the reserved areas of the host's requests, so a
// request costs no allocation: the sequence range of a send, the fill
// position of a receive, the zero-copy reference count of a NetBuffer.
#pragma once

#include <cstdint>
#include <new>

#include <rte_mbuf.h>

#include "chimney/net_buffer.hpp"

namespace chimney::tcp {

// `abort`: an abortive disconnect queued behind the sends it must follow
// (C-13) while their memory is still referenced by mbufs.
enum class RequestKind : uint8_t { send, disconnect, abort };

struct SendMeta {
  uint32_t seq_start;  // sequence number of the first byte
  uint32_t length;     // data bytes (a disconnect's FIN comes after them)
  RequestKind kind;
};

struct ReceiveMeta {
  NetBuffer* cur;      // where the next byte goes
  uint32_t cur_off;
  uint32_t filled;
  uint32_t capacity;
};

// Send payload is referenced by mbufs (rte_pktmbuf_attach_extbuf); the engine
// holds one reference from send until completion, so the request is done
// when that is the only one left (DESIGN.md buffers).
struct BufferMeta {
  rte_mbuf_ext_shared_info shinfo;
};

static_assert(sizeof(SendMeta) <= sizeof(NetBufferList::target_reserved));
static_assert(sizeof(ReceiveMeta) <= sizeof(NetBufferList::target_reserved));
static_assert(sizeof(BufferMeta) <= sizeof(NetBuffer::target_reserved));

template <typename T>
T& meta(NetBufferList* n) {
  return *std::launder(reinterpret_cast<T*>(n->target_reserved));
}
template <typename T>
const T& meta(const NetBufferList* n) {
  return *std::launder(reinterpret_cast<const T*>(n->target_reserved));
}
inline BufferMeta& meta(NetBuffer* b) {
  return *std::launder(reinterpret_cast<BufferMeta*>(b->target_reserved));
}
inline const BufferMeta& meta(const NetBuffer* b) {
  return *std::launder(reinterpret_cast<const BufferMeta*>(b->target_reserved));
}

}  // namespace chimney::tcp
