// The three traffic patterns of tests/pktgen, replayed in-process against one
// tcp::Engine the way chimneyd's worker takes frames: net::classify_frame
// first (checksums in software, as on memif), then Engine::input in bursts of
// 32, then Engine::poll; what input() does not match is what the worker hands
// to the slow path (counted here, then freed).
//
//  1. in-window data: the connection offload_known.py offloads (198.18.0.2:5001
//     <-> 198.18.0.1:40000, rcv.nxt 0xF0000000, snd.nxt 0x01000000, rcv_wscale
//     9, 16 MiB window, no timestamps, no SACK), fed 1460-byte ACK segments in
//     order from rcv.nxt on (the sequence space wraps after 256 MiB), with
//     eight 8 MiB no-push receives kept posted. Every delivered byte is
//     compared with what was sent; at the end the connection is terminated
//     and the partly filled receives and the buffered data are checked too.
//  2. SYN flood: 64-byte SYNs at port 7000 (a listener lives in the slow path,
//     not in the engine) from 198.19.0.1-198.19.255.254, source ports stepping
//     by 7919, ISNs by 104729 (synflood.lua): the engine must match none.
//  3. garbage: the 18 frames of garbage_pcap.py, each dropped by classify_frame
//     with its DropReason.
//
// Frames are built into fresh mbufs per segment (pktgen's part); the rates
// count only the worker's part: cycles in classify_frame, input() and poll().
#include <rte_cycles.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_tcp.h>

#include <time.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench.hpp"
#include "net/build.hpp"
#include "net/drop_reason.hpp"
#include "net/packet.hpp"
#include "tcp/engine.hpp"

namespace chimney::bench {

namespace {

using net::DropReason;
using tcp::Engine;

// offload_known.py's defaults (tests/pktgen/README.md)
constexpr uint32_t kChimneyIp = 0xC6120002;  // 198.18.0.2
constexpr uint32_t kPeerIp = 0xC6120001;     // 198.18.0.1
constexpr uint16_t kChimneyPort = 5001, kPeerPort = 40000, kListenPort = 7000;
constexpr uint32_t kRcvNxt = 0xF0000000, kSndNxt = 0x01000000;
constexpr uint32_t kRcvWindow = 16u << 20;
constexpr uint8_t kRcvWscale = 9;
constexpr uint16_t kPayload = 1460;
constexpr uint32_t kSynSrcMin = 0xC6130001, kSynSrcMax = 0xC613FFFE;  // 198.19.0.1-198.19.255.254
constexpr std::array<uint8_t, 6> kChimneyMac{2, 0, 0, 0, 0, 2}, kPeerMac{2, 0, 0, 0, 0, 1};
constexpr uint16_t kBurst = 32;

uint64_t g_hz = 1;
double secs(uint64_t cycles) { return static_cast<double>(cycles) / static_cast<double>(g_hz); }
double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
uint64_t g_tsc0 = 0;
uint64_t now_us() { return (rte_rdtsc() - g_tsc0) * 1'000'000 / g_hz + 1'000'000; }

rte_mempool* g_rx = nullptr;   // the frames "pktgen" sends
rte_mempool* g_hdr = nullptr;  // the engine's ACKs
rte_mempool* g_att = nullptr;

void make_pools() {
  if (g_rx != nullptr) return;
  g_rx = rte_pktmbuf_pool_create("pat_rx", 16383, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY);
  g_hdr = rte_pktmbuf_pool_create("pat_hdr", 8191, 256, 0, RTE_PKTMBUF_HEADROOM + 256, SOCKET_ID_ANY);
  g_att = rte_pktmbuf_pool_create("pat_att", 1023, 0, 0, 0, SOCKET_ID_ANY);
  if (g_rx == nullptr || g_hdr == nullptr || g_att == nullptr)
    throw std::runtime_error("patterns: cannot create mempools");
}

// The stream's bytes: byte i of the stream is g_stream[i % kPeriod].
constexpr uint32_t kPeriod = 65521;  // prime: a shift by whole segments shows
constexpr uint32_t kChunk = 65536;
const std::vector<uint8_t>& stream() {
  static std::vector<uint8_t> s = [] {
    std::vector<uint8_t> v(kPeriod + kChunk);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint8_t>(((i % kPeriod) * 2654435761u) >> 13);
    return v;
  }();
  return s;
}
bool stream_matches(const uint8_t* p, uint64_t offset, uint64_t len) {
  const uint8_t* s = stream().data();
  for (uint64_t k = 0; k < len;) {
    const uint64_t c = len - k < kChunk ? len - k : kChunk;
    if (std::memcmp(p + k, s + (offset + k) % kPeriod, c) != 0) return false;
    k += c;
  }
  return true;
}

// The worker's TX queue: the engine's ACKs, counted and freed.
class CountingSink : public tcp::TxSink {
 public:
  void transmit(rte_mbuf** pkts, uint16_t n) override {
    sent += n;
    rte_pktmbuf_free_bulk(pkts, n);
  }
  uint64_t sent = 0;
};

// The host of offload_known.py: eight 8 MiB no-push receives kept posted.
// Completions are queued (a worker posts them to the main lcore) and checked
// and reposted by drain(), outside the worker's timed part.
class ReplayHost : public HostCallbacks {
 public:
  static constexpr int kReceives = 8;
  static constexpr uint32_t kReceiveSize = 8u << 20;

  Engine* engine = nullptr;
  ConnectionHandle h;
  bool offloaded = false, terminated = false, repost = true;
  uint64_t delivered = 0, bad_bytes = 0, indications = 0, errors = 0, completions = 0;
  std::string first_error;
  DelegatedState final_state;

  ReplayHost() : bufs_(static_cast<size_t>(kReceives) * kReceiveSize) {}

  void post(int i) {
    Recv& r = recvs_[i];
    r.nb = NetBuffer{};
    r.nb.data = bufs_.data() + static_cast<size_t>(i) * kReceiveSize;
    r.nb.data_length = kReceiveSize;
    r.nbl = NetBufferList{};
    r.nbl.first = &r.nb;
    r.nbl.flags = kReceiveNoPush;
    r.nbl.host_context = reinterpret_cast<void*>(static_cast<uintptr_t>(i));
    if (engine->receive(h, &r.nbl) != Status::pending) error("receive refused");
  }
  void drain() {
    for (auto [i, bytes] : done_) {
      const uint8_t* base = bufs_.data() + static_cast<size_t>(i) * kReceiveSize;
      if (!stream_matches(base, delivered, bytes)) {
        ++bad_bytes;
        error("delivered bytes differ from the stream at offset " + std::to_string(delivered));
      }
      delivered += bytes;
      if (repost && !terminated) post(i);
    }
    done_.clear();
  }
  void error(const std::string& why) {
    if (errors++ == 0) first_error = why;
  }

  void offload_complete(ConnectionHandle, void*, Status s) override {
    if (s == Status::success) offloaded = true;
    else error("offload refused");
  }
  void send_complete(ConnectionHandle, void*, NetBufferList*) override { error("send completed"); }
  void receive_complete(ConnectionHandle, void*, NetBufferList* chain) override {
    for (NetBufferList* n = chain; n != nullptr; n = n->next) {
      ++completions;
      const int i = static_cast<int>(reinterpret_cast<uintptr_t>(n->host_context));
      done_.emplace_back(i, n->bytes_transferred);
      if (n->status != Status::success && repost) error("receive completed with an error");
    }
  }
  IndicateResult receive_indicate(ConnectionHandle, void*, const uint8_t*, uint32_t, bool) override {
    ++indications;  // data with no receive posted: stays buffered, as in chimneyd
    return {0};
  }
  void disconnect_complete(ConnectionHandle, void*, NetBufferList*) override { error("disconnect completed"); }
  void terminate_complete(ConnectionHandle, void*, Status s, DelegatedState& st) override {
    terminated = true;
    if (s != Status::success) error("terminate failed");
    final_state = std::move(st);
  }
  void event(ConnectionHandle, void*, EventKind k, RetrieveReason, uint32_t) override {
    if (k == EventKind::abort || k == EventKind::retrieve || k == EventKind::disconnect) error("connection event");
  }

 private:
  struct Recv {
    NetBufferList nbl;
    NetBuffer nb;
  };
  std::vector<uint8_t> bufs_;
  Recv recvs_[kReceives];
  std::vector<std::pair<int, uint64_t>> done_;
};

OffloadState known_state() {
  OffloadState s;
  s.constant.local_ip = kChimneyIp;
  s.constant.remote_ip = kPeerIp;
  s.constant.local_port = kChimneyPort;
  s.constant.remote_port = kPeerPort;
  s.constant.remote_mss = 1460;
  s.constant.window_scaling = true;
  s.constant.snd_wscale = 0;
  s.constant.rcv_wscale = kRcvWscale;
  s.constant.timestamps = false;
  s.constant.sack = false;
  s.cached.initial_rcv_wnd = kRcvWindow;
  s.delegated.state = TcpState::established;
  s.delegated.rcv_nxt = kRcvNxt;
  s.delegated.rcv_wnd = kRcvWindow;
  s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = kSndNxt;
  s.delegated.snd_wnd = s.delegated.max_snd_wnd = 8192;
  s.delegated.snd_wl1 = kRcvNxt;
  s.delegated.snd_wl2 = kSndNxt;
  s.delegated.cwnd = 10 * 1460;
  s.path.local_mac = kChimneyMac;
  s.path.next_hop_mac = kPeerMac;
  s.path.path_mtu = 1500;
  return s;
}

net::TcpFrameSpec peer_spec() {
  net::TcpFrameSpec sp;
  std::memcpy(sp.src_mac.addr_bytes, kPeerMac.data(), 6);
  std::memcpy(sp.dst_mac.addr_bytes, kChimneyMac.data(), 6);
  sp.src_ip = net::Ipv4Addr{kPeerIp};
  sp.dst_ip = net::Ipv4Addr{kChimneyIp};
  sp.src_port = kPeerPort;
  sp.dst_port = kChimneyPort;
  sp.window = 8192;  // pktgen's
  return sp;
}

// A frame as it comes off the wire: checksums filled in, no offload flags
// (classify_frame then verifies them in software, as on memif), padded to
// the Ethernet minimum.
rte_mbuf* wire_frame(const net::TcpFrameSpec& sp, const uint8_t* payload, uint16_t len) {
  rte_mbuf* m = net::build_tcp_frame(g_rx, sp, payload, len);
  if (m == nullptr) return nullptr;
  if (rte_pktmbuf_pkt_len(m) < 60) {
    const uint16_t pad = static_cast<uint16_t>(60 - rte_pktmbuf_pkt_len(m));
    auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, pad));
    if (p != nullptr) std::memset(p, 0, pad);
  }
  net::finalize_tx_checksums(m, net::TxChecksumCaps{});
  m->ol_flags = 0;
  return m;
}

// The worker's part for one burst: classify, input, poll. Returns the frames
// the engine did not match (freed here: the slow path's); counts drops.
struct WorkerPart {
  uint64_t cycles = 0, frames = 0, not_tcp = 0, to_slowpath = 0;
  std::map<DropReason, uint64_t> drops;

  void run(Engine& e, rte_mbuf** pkts, uint16_t n) {
    const uint64_t t0 = rte_rdtsc();
    rte_mbuf* tcp[kBurst];
    rte_mbuf* slow[kBurst];
    uint16_t n_tcp = 0;
    for (uint16_t i = 0; i < n; ++i) {
      const net::Classified k = net::classify_frame(pkts[i]);
      if (k.kind == net::FrameKind::tcp) {
        tcp[n_tcp++] = pkts[i];
      } else {
        if (k.kind == net::FrameKind::drop) ++drops[k.reason];
        ++not_tcp;
        rte_pktmbuf_free(pkts[i]);
      }
    }
    const uint64_t now = now_us();
    const uint16_t u = n_tcp != 0 ? e.input(tcp, n_tcp, now, slow) : 0;
    e.poll(now);
    cycles += rte_rdtsc() - t0;
    frames += n;
    to_slowpath += u;
    rte_pktmbuf_free_bulk(slow, u);
  }
};

std::string share_note(double cpu, double wall) {
  char b[48];
  std::snprintf(b, sizeof b, "cpu share %.2f", wall > 0 ? cpu / wall : 0.0);
  return b;
}

// ---------------------------------------------------------- garbage ----
// garbage_pcap.py's Maker, byte for byte.
using Bytes = std::vector<uint8_t>;
void put16(Bytes& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}
void put32(Bytes& b, uint32_t v) {
  put16(b, static_cast<uint16_t>(v >> 16));
  put16(b, static_cast<uint16_t>(v));
}
uint16_t csum(const Bytes& d) {
  uint32_t s = 0;
  for (size_t i = 0; i + 1 < d.size(); i += 2) s += static_cast<uint32_t>(d[i] << 8 | d[i + 1]);
  if (d.size() % 2) s += static_cast<uint32_t>(d.back() << 8);
  while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
  return static_cast<uint16_t>(~s & 0xFFFF);
}

struct TcpArgs {
  Bytes payload = Bytes(18, 'x');
  Bytes options;
  uint8_t flags = 0x10;
  int doff = -1;
  bool bad_sum = false;
};
Bytes tcp_seg(const TcpArgs& a) {
  Bytes seg;
  put16(seg, kPeerPort);
  put16(seg, kChimneyPort);
  put32(seg, kRcvNxt);
  put32(seg, kSndNxt);
  const int doff = a.doff < 0 ? static_cast<int>(20 + a.options.size()) / 4 : a.doff;
  seg.push_back(static_cast<uint8_t>(doff << 4));
  seg.push_back(a.flags);
  put16(seg, 8192);
  put16(seg, 0);
  put16(seg, 0);
  seg.insert(seg.end(), a.options.begin(), a.options.end());
  seg.insert(seg.end(), a.payload.begin(), a.payload.end());
  Bytes pseudo;
  put32(pseudo, kPeerIp);
  put32(pseudo, kChimneyIp);
  put16(pseudo, 6);
  put16(pseudo, static_cast<uint16_t>(seg.size()));
  pseudo.insert(pseudo.end(), seg.begin(), seg.end());
  uint16_t s = csum(pseudo);
  if (a.bad_sum) s ^= 0x5A5A;
  seg[16] = static_cast<uint8_t>(s >> 8);
  seg[17] = static_cast<uint8_t>(s);
  return seg;
}

struct IpArgs {
  uint8_t proto = 6, version = 4, ihl = 5;
  Bytes options;
  int total = -1;
  uint16_t frag = 0x4000;
  bool bad_sum = false;
};
Bytes ip_pkt(const Bytes& l4, const IpArgs& a) {
  const int total = a.total < 0 ? static_cast<int>(20 + a.options.size() + l4.size()) : a.total;
  Bytes h;
  h.push_back(static_cast<uint8_t>(a.version << 4 | a.ihl));
  h.push_back(0);
  put16(h, static_cast<uint16_t>(total));
  put16(h, 0x1234);
  put16(h, a.frag);
  h.push_back(64);
  h.push_back(a.proto);
  put16(h, 0);
  put32(h, kPeerIp);
  put32(h, kChimneyIp);
  h.insert(h.end(), a.options.begin(), a.options.end());
  uint16_t s = csum(h);
  if (a.bad_sum) s ^= 0x5A5A;
  h[10] = static_cast<uint8_t>(s >> 8);
  h[11] = static_cast<uint8_t>(s);
  h.insert(h.end(), l4.begin(), l4.end());
  return h;
}

Bytes eth_frame(const Bytes& l3, uint16_t ethertype = 0x0800) {
  // Sized first and filled by index (g++ 12 warns falsely on inserting a
  // std::array's bytes into a vector).
  Bytes f(std::max<size_t>(60, 14 + l3.size()), 0);
  for (size_t i = 0; i < 6; ++i) {
    f[i] = kChimneyMac[i];
    f[6 + i] = kPeerMac[i];
  }
  f[12] = static_cast<uint8_t>(ethertype >> 8);
  f[13] = static_cast<uint8_t>(ethertype);
  if (!l3.empty()) std::memcpy(f.data() + 14, l3.data(), l3.size());
  return f;
}

// garbage_pcap.py's frames(): (expected drop, frame); each fails one check.
std::vector<std::pair<DropReason, Bytes>> garbage_frames() {
  const Bytes t = tcp_seg({});
  auto ip = [](const Bytes& l4, IpArgs a = {}) { return ip_pkt(l4, a); };
  auto tcpo = [](Bytes opts) {
    TcpArgs a;
    a.options = std::move(opts);
    return tcp_seg(a);
  };
  std::vector<std::pair<DropReason, Bytes>> v;
  v.emplace_back(DropReason::eth_unsupported_type, eth_frame(ip(t), 0x86DD));
  { IpArgs a; a.version = 6; v.emplace_back(DropReason::ip_bad_version, eth_frame(ip(t, a))); }
  { IpArgs a; a.ihl = 4; v.emplace_back(DropReason::ip_bad_ihl, eth_frame(ip(t, a))); }
  { IpArgs a; a.ihl = 6; a.options = {1, 1, 1, 0}; v.emplace_back(DropReason::ip_options, eth_frame(ip(t, a))); }
  { IpArgs a; a.total = 16; v.emplace_back(DropReason::ip_bad_total_length, eth_frame(ip(t, a))); }
  { IpArgs a; a.total = static_cast<int>(20 + t.size() + 200); v.emplace_back(DropReason::ip_bad_total_length, eth_frame(ip(t, a))); }
  { IpArgs a; a.bad_sum = true; v.emplace_back(DropReason::ip_bad_checksum, eth_frame(ip(t, a))); }
  { IpArgs a; a.frag = 0x2000; v.emplace_back(DropReason::ip_fragment, eth_frame(ip(t, a))); }  // MF
  { IpArgs a; a.frag = 0x0010; v.emplace_back(DropReason::ip_fragment, eth_frame(ip(t, a))); }  // offset 128
  { IpArgs a; a.proto = 17; v.emplace_back(DropReason::ip_unsupported_proto, eth_frame(ip(t, a))); }
  v.emplace_back(DropReason::tcp_truncated, eth_frame(ip(Bytes(t.begin(), t.begin() + 12))));
  { TcpArgs a; a.doff = 4; v.emplace_back(DropReason::tcp_bad_data_offset, eth_frame(ip(tcp_seg(a)))); }
  { TcpArgs a; a.payload.clear(); a.doff = 15; v.emplace_back(DropReason::tcp_bad_data_offset, eth_frame(ip(tcp_seg(a)))); }
  { TcpArgs a; a.bad_sum = true; v.emplace_back(DropReason::tcp_bad_checksum, eth_frame(ip(tcp_seg(a)))); }
  v.emplace_back(DropReason::tcp_bad_option, eth_frame(ip(tcpo({0x02, 0x00, 0x01, 0x01}))));  // length 0
  v.emplace_back(DropReason::tcp_bad_option, eth_frame(ip(tcpo({0x08, 0x28, 0x00, 0x00}))));  // longer than the header
  v.emplace_back(DropReason::tcp_bad_option, eth_frame(ip(tcpo({0x01, 0x01, 0x01, 0x03}))));  // kind without length
  v.emplace_back(DropReason::tcp_bad_option, eth_frame(ip(tcpo({0x02, 0x03, 0x05, 0xb4}))));  // MSS of length 3
  return v;
}

}  // namespace

std::vector<std::string> garbage_drop_reasons() {
  std::vector<std::string> r;
  for (const auto& [reason, frame] : garbage_frames()) {
    const std::string s = net::to_string(reason);
    if (r.empty() || r.back() != s) r.push_back(s);
  }
  return r;
}

void run_patterns(const Options& o, Figures& f) {
  g_hz = rte_get_tsc_hz();
  g_tsc0 = rte_rdtsc();
  make_pools();
  auto progress = [](const std::string& what) {
    std::fprintf(stderr, "[patterns] %s (load %s)\n", what.c_str(), load_average().c_str());
  };
  const uint64_t warm = static_cast<uint64_t>(o.warmup * static_cast<double>(g_hz));
  const uint64_t span = static_cast<uint64_t>(o.seconds * static_cast<double>(g_hz));

  ReplayHost host;
  CountingSink sink;
  tcp::EngineConfig cfg;
  cfg.name = "pat";
  cfg.socket_id = static_cast<int>(rte_socket_id());
  cfg.max_connections = 1024;
  cfg.time_wait_entries = 1024;
  cfg.max_rcv_window = 16u << 20;  // as chimneyd's worker
  cfg.header_pool = g_hdr;
  cfg.attach_pool = g_att;
  Engine e(cfg, host, sink);
  host.engine = &e;
  e.initiate_offload(known_state(), nullptr, &host.h);
  e.poll(now_us());
  if (!host.offloaded) {
    f.fail("pat_inwindow_segments_per_s", "offload of the known connection failed: " + host.first_error);
    return;
  }
  for (int i = 0; i < ReplayHost::kReceives; ++i) host.post(i);

  // ------------------------------------------------ 1. in-window data ----
  progress("1. in-window data segments, 1460 B, at 198.18.0.2:5001");
  const uint8_t* src = stream().data();
  uint64_t sent_bytes = 0, sent_segments = 0;
  uint32_t seq = kRcvNxt;
  bool gen_failed = false;
  {
    WorkerPart w;
    net::TcpFrameSpec sp = peer_spec();
    sp.ack = kSndNxt;
    sp.flags = RTE_TCP_ACK_FLAG;
    uint64_t t_start = 0, t_end = 0, cyc0 = 0, seg0 = 0, bytes0 = 0;
    double cpu0 = 0, cpu1 = 0;
    const uint64_t t_begin = rte_rdtsc();
    for (;;) {
      rte_mbuf* burst[kBurst];
      uint16_t n = 0;
      for (; n < kBurst; ++n) {
        sp.seq = seq;
        sp.ip_id = static_cast<uint16_t>(sent_segments + n);
        rte_mbuf* m = wire_frame(sp, src + sent_bytes % kPeriod, kPayload);
        if (m == nullptr) {
          gen_failed = true;
          break;
        }
        burst[n] = m;
        seq += kPayload;
        sent_bytes += kPayload;
      }
      sent_segments += n;
      w.run(e, burst, n);
      host.drain();
      if (gen_failed || host.errors != 0) break;
      const uint64_t tsc = rte_rdtsc();
      if (t_start == 0 && tsc - t_begin >= warm) {
        t_start = tsc;
        cyc0 = w.cycles;
        seg0 = e.stats().segments_in;
        bytes0 = host.delivered;
        cpu0 = thread_cpu_seconds();
      } else if (t_start != 0 && tsc - t_start >= span) {
        t_end = tsc;
        cpu1 = thread_cpu_seconds();
        break;
      }
    }
    const tcp::EngineStats& st = e.stats();
    const uint64_t segs = st.segments_in - seg0;
    const double wall = t_end > t_start ? secs(t_end - t_start) : 0;
    const double worker = secs(w.cycles - cyc0);
    std::string why;
    if (gen_failed) why = "frame generation: mempool empty";
    else if (host.errors) why = host.first_error;
    else if (t_end == 0) why = "no measured window";
    else if (w.not_tcp != 0 || w.to_slowpath != 0)
      why = std::to_string(w.not_tcp) + " not classified as TCP, " + std::to_string(w.to_slowpath) + " unmatched";
    else if (st.segments_in != sent_segments || st.bytes_in != sent_bytes)
      why = "engine took " + std::to_string(st.segments_in) + " segments, " + std::to_string(st.bytes_in) +
            " bytes of " + std::to_string(sent_segments) + ", " + std::to_string(sent_bytes);
    const bool ok = why.empty() && segs > 0 && worker > 0;
    const std::string note = share_note(cpu1 - cpu0, wall) + "; acks " + std::to_string(sink.sent) + why;
    f.set("pat_inwindow_segments_per_s", ok ? segs / worker : 0, ok, ok ? note : why);
    f.set("pat_inwindow_gbps", ok ? (host.delivered - bytes0) * 8 / wall / 1e9 : 0, ok, note);
    f.set("pat_inwindow_wall_segments_per_s", ok ? segs / wall : 0, ok, "frame building included; " + note);
    f.set("pat_inwindow_cycles_per_segment", ok ? static_cast<double>(w.cycles - cyc0) / segs : 0, ok);
    if (!ok) std::fprintf(stderr, "patterns: in-window: %s\n", why.c_str());
  }

  // ------------------------------------------------------ 2. SYN flood ----
  progress("2. SYN flood at port 7000 from 198.19.0.0/16");
  {
    const uint64_t segs_before = e.stats().segments_in, rst_before = e.stats().rst_out;
    WorkerPart w;
    net::TcpFrameSpec sp = peer_spec();
    sp.dst_port = kListenPort;
    sp.flags = RTE_TCP_SYN_FLAG;
    uint64_t k = 0;
    const uint64_t t0 = rte_rdtsc();
    const double cpu0 = thread_cpu_seconds();
    uint64_t t1 = t0;
    while (t1 - t0 < span) {
      rte_mbuf* burst[kBurst];
      uint16_t n = 0;
      for (; n < kBurst; ++n, ++k) {
        sp.src_ip = net::Ipv4Addr{static_cast<uint32_t>(kSynSrcMin + k % (kSynSrcMax - kSynSrcMin + 1))};
        sp.src_port = static_cast<uint16_t>(1024 + (k * 7919) % (65536 - 1024));
        sp.seq = static_cast<uint32_t>(1000 + k * 104729);
        sp.ip_id = static_cast<uint16_t>(k);
        rte_mbuf* m = wire_frame(sp, nullptr, 0);
        if (m == nullptr) {
          gen_failed = true;
          break;
        }
        burst[n] = m;
      }
      w.run(e, burst, n);
      if (gen_failed) break;
      t1 = rte_rdtsc();
    }
    const double cpu1 = thread_cpu_seconds();
    std::string why;
    if (gen_failed) why = "frame generation: mempool empty";
    else if (w.to_slowpath != w.frames)
      why = std::to_string(w.frames - w.to_slowpath) + " of " + std::to_string(w.frames) +
            " SYNs did not go to the slow path";
    else if (e.stats().segments_in != segs_before || e.stats().rst_out != rst_before)
      why = "the engine took or answered SYNs";
    else if (w.frames == 0) why = "no SYN sent";
    const bool ok = why.empty();
    const double worker = secs(w.cycles);
    f.set("pat_syn_per_s", ok && worker > 0 ? w.frames / worker : 0, ok,
          ok ? share_note(cpu1 - cpu0, secs(t1 - t0)) : why);
    f.set("pat_syn_to_slowpath", static_cast<double>(w.to_slowpath), ok, why);
    f.set("pat_syn_wall_per_s", ok ? w.frames / secs(t1 - t0) : 0, ok, "frame building included");
    if (!ok) std::fprintf(stderr, "patterns: SYN flood: %s\n", why.c_str());
  }

  // -------------------------------------------------------- 3. garbage ----
  progress("3. garbage frames (garbage_pcap.py's 18)");
  {
    const auto frames = garbage_frames();
    const uint64_t segs_before = e.stats().segments_in;
    std::map<DropReason, uint64_t> expected;
    uint64_t mismatches = 0, loops = 0;
    std::string first_mismatch;
    WorkerPart w;
    const uint64_t t0 = rte_rdtsc();
    const double cpu0 = thread_cpu_seconds();
    uint64_t t1 = t0;
    while (t1 - t0 < span && !gen_failed) {
      rte_mbuf* burst[kBurst];
      for (size_t i = 0; i < frames.size(); ++i) {
        rte_mbuf* m = rte_pktmbuf_alloc(g_rx);
        if (m == nullptr) {
          gen_failed = true;
          break;
        }
        const Bytes& b = frames[i].second;
        std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(b.size())), b.data(), b.size());
        burst[i] = m;
      }
      if (gen_failed) break;
      // One frame at a time: each frame's verdict is checked.
      for (size_t i = 0; i < frames.size(); ++i) {
        const auto before = w.drops[frames[i].first];
        w.run(e, &burst[i], 1);
        ++expected[frames[i].first];
        if (w.drops[frames[i].first] != before + 1) {
          if (mismatches++ == 0)
            first_mismatch = "frame " + std::to_string(i) + " (expected " + net::to_string(frames[i].first) + ")";
        }
      }
      ++loops;
      t1 = rte_rdtsc();
    }
    const double cpu1 = thread_cpu_seconds();
    std::string why;
    if (gen_failed) why = "frame generation: mempool empty";
    else if (mismatches != 0) why = std::to_string(mismatches) + " frames not dropped as expected, first " + first_mismatch;
    else if (w.drops != expected) why = "drop counts differ from the expected ones";
    else if (w.to_slowpath != 0 || e.stats().segments_in != segs_before)
      why = "garbage reached the engine or the slow path";
    else if (loops == 0) why = "no frame sent";
    const bool ok = why.empty();
    const double worker = secs(w.cycles);
    f.set("pat_garbage_per_s", ok && worker > 0 ? w.frames / worker : 0, ok,
          ok ? share_note(cpu1 - cpu0, secs(t1 - t0)) : why);
    f.set("pat_garbage_mismatches", static_cast<double>(mismatches), ok, why);
    std::string counts;
    for (const auto& [reason, n] : w.drops) {
      const bool right = expected.count(reason) && expected[reason] == n;
      f.set(std::string("pat_garbage_drop_") + net::to_string(reason), static_cast<double>(n), right,
            "expected " + std::to_string(expected.count(reason) ? expected[reason] : 0));
      counts += std::string(counts.empty() ? "" : " ") + net::to_string(reason) + "=" + std::to_string(n);
    }
    std::printf("patterns: garbage: %llu loops of %zu frames, drops %s\n", static_cast<unsigned long long>(loops),
                frames.size(), counts.c_str());
    if (!ok) std::fprintf(stderr, "patterns: garbage: %s\n", why.c_str());
  }

  // ------------------------- the connection after all three: every byte ----
  {
    host.repost = false;
    DelegatedState d;
    e.query_delegated(host.h, &d);
    std::string why;
    if (d.rcv_nxt != static_cast<uint32_t>(kRcvNxt + sent_bytes))
      why = "rcv.nxt " + std::to_string(d.rcv_nxt) + " after " + std::to_string(sent_bytes) + " bytes";
    if (e.terminate(host.h) != Status::pending) why = "terminate refused";
    for (int i = 0; i < 1000 && !host.terminated; ++i) e.poll(now_us());
    host.drain();
    const uint64_t buffered = host.final_state.receive_data.size();
    if (!host.terminated && why.empty()) why = "terminate did not complete";
    if (buffered != 0 && !stream_matches(host.final_state.receive_data.data(), host.delivered, buffered))
      why = "buffered bytes differ from the stream";
    const uint64_t total = host.delivered + buffered;
    if (why.empty() && host.errors != 0) why = host.first_error;
    if (why.empty() && total != sent_bytes)
      why = "delivered " + std::to_string(total) + " of " + std::to_string(sent_bytes) + " bytes";
    const bool ok = why.empty() && total > 0;
    f.set("pat_inwindow_bytes_checked", static_cast<double>(total), ok,
          ok ? std::to_string(host.completions) + " receive completions, " + std::to_string(buffered) +
                   " bytes buffered at terminate, " + std::to_string(host.indications) + " indications"
             : why);
    std::printf("patterns: in-window: %llu segments, %llu bytes sent; %llu delivered and checked (%llu buffered at "
                "terminate); the engine sent %llu ACKs%s%s\n",
                static_cast<unsigned long long>(sent_segments), static_cast<unsigned long long>(sent_bytes),
                static_cast<unsigned long long>(total), static_cast<unsigned long long>(buffered),
                static_cast<unsigned long long>(sink.sent), ok ? "" : ": ", why.c_str());
  }
}

}  // namespace chimney::bench
