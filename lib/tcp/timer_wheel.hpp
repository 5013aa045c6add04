// A per-lcore hashed timing wheel (Varghese & Lauck): O(1) arm and cancel,
// one slot visited per tick, nodes intrusive in their owner. Deadlines in
// engine milliseconds; a node due beyond one turn of the wheel waits for its
// turn in its slot.
#pragma once

#include <array>
#include <cstdint>

namespace chimney::tcp {

struct TimerNode {
  TimerNode* prev = nullptr;
  TimerNode* next = nullptr;
  uint64_t due_ms = 0;
  bool linked() const { return prev != nullptr; }
};

class TimerWheel {
 public:
  static constexpr uint32_t kSlots = 1024;  // 1 ms a slot: one turn is ~1 s

  explicit TimerWheel(uint64_t now_ms = 0) : now_ms_(now_ms) {
    for (auto& s : slots_) s.prev = s.next = &s;
  }

  // (Re)arms `n` for `due_ms` (never earlier than the next tick).
  void arm(TimerNode& n, uint64_t due_ms) {
    cancel(n);
    n.due_ms = due_ms <= now_ms_ ? now_ms_ + 1 : due_ms;
    TimerNode& head = slots_[n.due_ms % kSlots];
    n.next = &head;
    n.prev = head.prev;
    head.prev->next = &n;
    head.prev = &n;
    ++armed_;
  }

  void cancel(TimerNode& n) {
    if (!n.linked()) return;
    n.prev->next = n.next;
    n.next->prev = n.prev;
    n.prev = n.next = nullptr;
    --armed_;
  }

  // Advances to `now_ms`, calling `fire(node)` for each node that fell due
  // (unlinked before the call, so the callback may re-arm it).
  template <typename Fire>
  void advance(uint64_t now_ms, Fire&& fire) {
    while (now_ms_ < now_ms) {
      ++now_ms_;
      if (armed_ == 0) {
        now_ms_ = now_ms;
        break;
      }
      TimerNode& head = slots_[now_ms_ % kSlots];
      TimerNode* n = head.next;
      while (n != &head) {
        TimerNode* next = n->next;
        if (n->due_ms <= now_ms_) {
          cancel(*n);
          fire(*n);
        }
        n = next;
      }
    }
  }

  uint64_t now_ms() const { return now_ms_; }
  uint32_t armed() const { return armed_; }

 private:
  std::array<TimerNode, kSlots> slots_;
  uint64_t now_ms_;
  uint32_t armed_ = 0;
};

}  // namespace chimney::tcp
