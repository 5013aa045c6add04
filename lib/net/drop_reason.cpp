#include "net/drop_reason.hpp"

namespace chimney::net {

namespace {

constexpr const char* kNames[] = {
#define CHIMNEY_X(name) #name,
    CHIMNEY_DROP_REASONS(CHIMNEY_X)
#undef CHIMNEY_X
};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == kDropReasonCount);

}  // namespace

const char* to_string(DropReason reason) {
  const auto i = static_cast<size_t>(reason);
  return i < kDropReasonCount ? kNames[i] : "unknown";
}

}  // namespace chimney::net
