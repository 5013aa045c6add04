#include "net/impair.hpp"

#include <charconv>
#include <cstdio>
#include <initializer_list>

#include <rte_ether.h>

#include "net/build.hpp"

namespace chimney::net {

namespace {

bool parse_probability(std::string_view v, double& out) {
  bool percent = !v.empty() && v.back() == '%';
  if (percent) v.remove_suffix(1);
  if (v.empty()) return false;
  // std::from_chars for double is in libstdc++ 11 and later.
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size()) return false;
  if (percent) out /= 100;
  return out >= 0 && out <= 1;
}

// Concatenation by append: g++ 12 at -O3 warns falsely (-Wrestrict) about
// "literal" + std::string.
std::string cat(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (std::string_view p : parts) s.append(p);
  return s;
}

std::string percent(double p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g%%", p * 100);
  return buf;
}

}  // namespace

std::string ImpairSpec::str() const {
  std::string s;
  auto item = [&s](const char* name, const std::string& v) {
    if (!s.empty()) s += ',';
    s += name;
    s += '=';
    s += v;
  };
  if (loss > 0) item("loss", percent(loss));
  if (corrupt > 0) item("corrupt", percent(corrupt));
  if (duplicate > 0) item("duplicate", percent(duplicate));
  if (reorder > 0) item("reorder", percent(reorder));
  if (delay_us > 0) item("delay-us", std::to_string(delay_us));
  return s.empty() ? "none" : s;
}

std::optional<ImpairSpec> ImpairSpec::parse(std::string_view text, std::string& error) {
  ImpairSpec spec;
  if (text.empty() || text == "none") return spec;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      error = cat({"'", item, "' is not name=value"});
      return std::nullopt;
    }
    const std::string_view name = item.substr(0, eq);
    const std::string_view value = item.substr(eq + 1);
    double* p = name == "loss"        ? &spec.loss
                : name == "corrupt"   ? &spec.corrupt
                : name == "duplicate" ? &spec.duplicate
                : name == "reorder"   ? &spec.reorder
                                      : nullptr;
    if (p != nullptr) {
      if (!parse_probability(value, *p)) {
        error = cat({name, "='", value, "' is not a probability (0-1 or 0%-100%)"});
        return std::nullopt;
      }
    } else if (name == "delay-us") {
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), spec.delay_us);
      if (ec != std::errc() || end != value.data() + value.size() || value.empty() || spec.delay_us > 10'000'000) {
        error = cat({"delay-us='", value, "' is not a number of microseconds (0-10000000)"});
        return std::nullopt;
      }
    } else {
      error = cat({"unknown impairment '", name, "' (loss, corrupt, duplicate, reorder, delay-us)"});
      return std::nullopt;
    }
  }
  return spec;
}

uint64_t Impairment::stage_seed(uint64_t run_seed, uint64_t index) {
  // splitmix64 of the pair: neighbouring stages get unrelated streams.
  uint64_t z = run_seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Impairment::Impairment(const ImpairSpec& spec, uint64_t seed, Direction dir, rte_mempool* pool,
                       ImpairStats* stats, uint32_t line_frames)
    : spec_(spec), dir_(dir), pool_(pool), stats_(stats), rng_(seed), line_(line_frames) {}

Impairment::~Impairment() {
  for (size_t i = 0; i < count_; ++i) rte_pktmbuf_free(line_[(head_ + i) % line_.size()].m);
  if (reorder_held_ != nullptr) rte_pktmbuf_free(reorder_held_);
}

rte_mbuf* Impairment::corrupt(rte_mbuf* m) {
  if (dir_ == Direction::tx) {
    rte_mbuf* c = rte_pktmbuf_copy(m, pool_, 0, UINT32_MAX);
    if (c == nullptr) return m;  // no mbuf for the copy: this one goes out intact
    rte_pktmbuf_free(m);
    m = c;
    finalize_tx_checksums(m, TxChecksumCaps{});  // the checksums the port would have written
  } else {
    m->ol_flags &= ~(RTE_MBUF_F_RX_IP_CKSUM_MASK | RTE_MBUF_F_RX_L4_CKSUM_MASK);
  }
  if (m->data_len <= RTE_ETHER_HDR_LEN) return m;
  const uint32_t span = m->data_len - RTE_ETHER_HDR_LEN;
  const uint64_t r = rng_();
  auto* byte = rte_pktmbuf_mtod_offset(m, uint8_t*, RTE_ETHER_HDR_LEN + r % span);
  *byte ^= static_cast<uint8_t>(1u << ((r >> 32) % 8));  // one bit: a checksum always catches it
  stats_->corrupted.add();
  return m;
}

void Impairment::enqueue(rte_mbuf* m, uint64_t due_us) {
  if (count_ == line_.size()) {
    stats_->overflow.add();
    rte_pktmbuf_free(m);
    return;
  }
  line_[(head_ + count_) % line_.size()] = {m, due_us};
  ++count_;
}

uint16_t Impairment::pass(rte_mbuf** in, uint16_t n, uint64_t now_us, rte_mbuf** out, uint16_t cap) {
  const uint64_t due = now_us + spec_.delay_us;
  if (n == 0 && reorder_held_ != nullptr) {  // nothing came after it: it goes now
    enqueue(reorder_held_, due);
    reorder_held_ = nullptr;
  }
  stats_->frames.add(n);
  for (uint16_t i = 0; i < n; ++i) {
    rte_mbuf* m = in[i];
    if (chance(spec_.loss)) {
      stats_->lost.add();
      rte_pktmbuf_free(m);
      continue;
    }
    if (chance(spec_.corrupt)) m = corrupt(m);
    rte_mbuf* dup = nullptr;
    if (chance(spec_.duplicate)) {
      dup = rte_pktmbuf_copy(m, pool_, 0, UINT32_MAX);
      if (dup != nullptr) stats_->duplicated.add();
    }
    if (reorder_held_ == nullptr && chance(spec_.reorder)) {
      stats_->reordered.add();
      reorder_held_ = m;  // goes after the next frame
    } else {
      enqueue(m, due);
      if (reorder_held_ != nullptr) {  // the frame held back goes after this one
        enqueue(reorder_held_, due);
        reorder_held_ = nullptr;
      }
    }
    if (dup != nullptr) enqueue(dup, due);
  }
  uint16_t k = 0;
  while (k < cap && count_ != 0 && line_[head_].due_us <= now_us) {
    out[k++] = line_[head_].m;
    head_ = (head_ + 1) % line_.size();
    --count_;
  }
  return k;
}

}  // namespace chimney::net
