// libFuzzer target for the control protocol codec (lib/control/protocol.cpp).
// Arbitrary bytes go through message_length as a stream of messages (the way
// the server frames its input) and through decode as one message. Whatever
// decodes must re-encode to exactly the bytes it came from (the decoder
// accepts only canonical encodings: reserved fields and padding zero, booleans
// 0 or 1, counts that match), and that encoding must decode again.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "control/protocol.hpp"

namespace {

using namespace chimney::control;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_protocol: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check_one(std::span<const uint8_t> in) {
  std::string error = "stale";
  const std::optional<Message> m = decode(in, error);
  if (!m) {
    if (error.empty()) fail("decode failed without an error text", "");
    return;
  }
  if (!error.empty()) fail("decode succeeded with an error text", error);
  if (in.size() < kHeaderSize || in.size() > kMaxMessage) fail("decoded a message of impossible size", "");

  std::vector<uint8_t> out;
  if (!encode(*m, out)) fail("a decoded message does not encode", to_string(m->type));
  if (out.size() != in.size() || !std::equal(out.begin(), out.end(), in.begin()))
    fail("encode(decode(x)) != x", to_string(m->type));

  const std::optional<Message> again = decode(out, error);
  if (!again) fail("encode(decode(x)) does not decode", error);
  if (again->type != m->type || again->tag != m->tag || again->body.index() != m->body.index())
    fail("decode(encode(decode(x))) differs", to_string(m->type));
  std::vector<uint8_t> out2;
  if (!encode(*again, out2) || out2 != out) fail("second encoding differs", to_string(m->type));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> in(data, size);

  // As a stream: frame message after message while the headers allow.
  size_t off = 0;
  while (off <= size) {
    const std::span<const uint8_t> rest = in.subspan(off);
    std::string error = "stale";
    const std::optional<size_t> len = message_length(rest, error);
    if (!len) {
      if (error.empty() && rest.size() >= kHeaderSize) fail("no length and no error for a whole header", "");
      if (!error.empty() && rest.size() < kHeaderSize) fail("an error for a partial header", error);
      break;
    }
    if (!error.empty()) fail("a length with an error text", error);
    if (*len < kHeaderSize || *len > kMaxMessage) fail("length out of range", std::to_string(*len));
    if (*len > rest.size()) break;
    check_one(rest.first(*len));
    off += *len;
  }

  // As one message, whatever its header says.
  check_one(in);
  return 0;
}
