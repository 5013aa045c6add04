// Congestion control behind a small interface (engine_internal.hpp):
// NewReno (RFC 5681, RFC 6582 for recovery) and CUBIC (RFC 9438), chosen per
// connection by the cached state. CUBIC is the default: it is what the Linux
// peers we meet run, and it fills long fat paths that Reno's linear growth
// takes minutes to fill; NewReno stays for conservative or research use.
#include <cmath>

#include "tcp/engine_internal.hpp"

namespace chimney::tcp {

namespace {

// RFC 5681 §3.1 (eq. 1): IW = min(4*SMSS, max(2*SMSS, 4380)); RFC 6928's 10
// segments is what Linux uses; we follow RFC 5681.
uint32_t initial_window(const Tcb& c) {
  const uint32_t mss = c.snd.mss;
  uint32_t iw = 4380 > 2 * mss ? 4380 : 2 * mss;
  return iw < 4 * mss ? iw : 4 * mss;
}

// RFC 5681 §3.1 (eq. 4): ssthresh = max(FlightSize / 2, 2*SMSS).
uint32_t half_flight(const Tcb& c) {
  const uint32_t half = flight_size(c) / 2;
  return half > 2u * c.snd.mss ? half : 2u * c.snd.mss;
}

// Slow start with appropriate byte counting (RFC 3465, L = 2*SMSS) and
// congestion avoidance of about one SMSS per RTT (RFC 5681 §3.1 eq. 3).
void reno_grow(Tcb& c, uint32_t acked) {
  if (c.snd.cwnd < c.snd.ssthresh) {
    const uint32_t limit = 2u * c.snd.mss;
    c.snd.cwnd += acked < limit ? acked : limit;
  } else {
    uint32_t inc = static_cast<uint32_t>(uint64_t{c.snd.mss} * c.snd.mss / (c.snd.cwnd ? c.snd.cwnd : 1));
    c.snd.cwnd += inc == 0 ? 1 : inc;
  }
}

void newreno_init(Tcb& c) {
  c.snd.cwnd = initial_window(c);
  c.snd.ssthresh = 0x7fffffff;
}
void newreno_on_ack(Tcb& c, uint32_t acked, uint64_t) { reno_grow(c, acked); }
void newreno_on_loss(Tcb& c, uint64_t) {
  c.snd.ssthresh = half_flight(c);
  c.snd.cwnd = c.snd.ssthresh;
}
void newreno_on_rto(Tcb& c, uint64_t) {
  c.snd.ssthresh = half_flight(c);
  c.snd.cwnd = c.snd.mss;  // loss window
}

// CUBIC (RFC 9438): windows in segments for the cubic function, C = 0.4,
// beta = 0.7, with fast convergence (§4.7) and the Reno-friendly region (§4.3).
constexpr double kC = 0.4;
constexpr double kBeta = 0.7;

void cubic_init(Tcb& c) {
  newreno_init(c);
  c.cubic_w_max = 0;
  c.cubic_k_ms = 0;
  c.cubic_epoch_ms = 0;
  c.cubic_w_est = 0;
  c.cubic_cwnd_epoch = 0;
}

void cubic_on_ack(Tcb& c, uint32_t acked, uint64_t now_ms) {
  if (c.snd.cwnd < c.snd.ssthresh) {
    reno_grow(c, acked);  // §4.10: slow start as Reno
    return;
  }
  const double mss = c.snd.mss;
  if (c.cubic_epoch_ms == 0) {
    // §4.2: a new congestion-avoidance epoch.
    c.cubic_epoch_ms = now_ms == 0 ? 1 : now_ms;
    c.cubic_cwnd_epoch = c.snd.cwnd;
    c.cubic_w_est = c.snd.cwnd;
    if (c.cubic_w_max <= c.snd.cwnd) {
      c.cubic_k_ms = 0;
      c.cubic_w_max = c.snd.cwnd;
    } else {
      const double k = std::cbrt((c.cubic_w_max - c.snd.cwnd) / mss / kC);  // eq. 2, seconds
      c.cubic_k_ms = static_cast<uint32_t>(k * 1000.0);
    }
  }
  // eq. 1 at t + RTT (the target one RTT ahead, §4.4).
  const double rtt_s = (c.rtt.srtt_us != 0 ? c.rtt.srtt_us : 100'000) / 1e6;
  const double t = (now_ms - c.cubic_epoch_ms) / 1000.0 + rtt_s;
  const double dt = t - c.cubic_k_ms / 1000.0;
  const double w_cubic = kC * dt * dt * dt + c.cubic_w_max / mss;  // segments
  // §4.3 eq. 4: the Reno-friendly estimate, alpha = 3(1-beta)/(1+beta).
  const double alpha = 3.0 * (1.0 - kBeta) / (1.0 + kBeta);
  c.cubic_w_est += static_cast<uint32_t>(alpha * acked * mss / c.snd.cwnd);
  const double cwnd_seg = c.snd.cwnd / mss;
  if (w_cubic < c.cubic_w_est / mss) {
    c.snd.cwnd = c.cubic_w_est > c.snd.cwnd ? c.cubic_w_est : c.snd.cwnd;  // Reno-friendly region
    return;
  }
  // §4.4/§4.5: grow by (target - cwnd)/cwnd per ACKed segment, capped at 1.5x per RTT.
  double target = w_cubic;
  if (target > 1.5 * cwnd_seg) target = 1.5 * cwnd_seg;
  if (target > cwnd_seg) {
    const double inc = (target - cwnd_seg) / cwnd_seg * (acked / mss) * mss;
    c.snd.cwnd += static_cast<uint32_t>(inc < 1.0 ? 1.0 : inc);
  }
}

void cubic_on_loss(Tcb& c, uint64_t) {
  // §4.6, §4.7: remember W_max (reduced further when losses come before it
  // was reached again), multiply the window by beta.
  const uint32_t cwnd = c.snd.cwnd;
  if (c.cubic_w_max != 0 && cwnd < c.cubic_w_max)
    c.cubic_w_max = static_cast<uint32_t>(cwnd * (1.0 + kBeta) / 2.0);
  else
    c.cubic_w_max = cwnd;
  uint32_t ss = static_cast<uint32_t>(cwnd * kBeta);
  if (ss < 2u * c.snd.mss) ss = 2u * c.snd.mss;
  c.snd.ssthresh = ss;
  c.snd.cwnd = ss;
  c.cubic_epoch_ms = 0;
}

void cubic_on_rto(Tcb& c, uint64_t now_ms) {
  cubic_on_loss(c, now_ms);  // §4.8: as a loss, then the loss window
  c.snd.cwnd = c.snd.mss;
}

constexpr CongestionOps kNewReno{newreno_init, newreno_on_ack, newreno_on_loss, newreno_on_rto};
constexpr CongestionOps kCubic{cubic_init, cubic_on_ack, cubic_on_loss, cubic_on_rto};

}  // namespace

const CongestionOps& congestion_ops(CongestionAlgorithm a) {
  return a == CongestionAlgorithm::newreno ? kNewReno : kCubic;
}

}  // namespace chimney::tcp
