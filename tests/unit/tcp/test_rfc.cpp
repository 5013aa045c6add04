// The engine against the RFCs it implements and the disconnect page of the
// seed (seeds/000_c41bb5a064d16aa2.txt), driven segment by segment through
// the scripted harness. Each test names the RFC section or contract rule it
// checks; the expected values are the RFC's, worked out in the comments.
//
// Defaults (harness.hpp default_state): ESTABLISHED, our snd.una = 1000, the
// peer's rcv.nxt = 5000, MSS 1460 less 12 bytes of timestamps = 1448, window
// scale 7 both ways, 64 KiB windows, ts_recent 100, initial RTO 1000 ms,
// delayed ACK 40 ms, NewReno unless a test says otherwise.
#include <algorithm>
#include <set>

#include "harness.hpp"

namespace chimney::test {

using HR = HostRecord;

namespace {
constexpr uint32_t kMss = 1448;
constexpr uint32_t kIss = 1000;   // our snd.una at offload
constexpr uint32_t kIrs = 5000;   // the peer's first unreceived byte
}  // namespace

class Rfc : public EngineTest {
 protected:
  std::vector<std::unique_ptr<Request>> reqs_;

  Request& send_data(const std::string& bytes) {
    reqs_.push_back(Request::with(bytes));
    EXPECT_EQ(engine->send(h, &reqs_.back()->nbl), Status::pending);
    return *reqs_.back();
  }
  Request& post_receive(uint32_t size, uint32_t flags = 0) {
    reqs_.push_back(Request::buffer(size, flags));
    EXPECT_EQ(engine->receive(h, &reqs_.back()->nbl), Status::pending);
    return *reqs_.back();
  }
  Request& close_graceful(const std::string& bytes = "") {
    reqs_.push_back(Request::with(bytes));
    EXPECT_EQ(engine->disconnect(h, &reqs_.back()->nbl, DisconnectKind::graceful), Status::pending);
    return *reqs_.back();
  }
  void offload_with(const std::function<void(OffloadState&)>& mutate) {
    OffloadState s = default_state(flow);
    mutate(s);
    h = offload(s);
  }
  DelegatedState delegated() {
    DelegatedState d;
    EXPECT_EQ(engine->query_delegated(h, &d), Status::success);
    return d;
  }
  TcpState state() { return delegated().state; }
  // A fresh engine with a changed configuration.
  void reconfigure(const std::function<void(tcp::EngineConfig&)>& change) {
    static int n = 0;
    engine.reset();
    wire.clear();
    host.records.clear();
    tcp::EngineConfig cfg = config("rfc" + std::to_string(n++));
    change(cfg);
    engine = std::make_unique<tcp::Engine>(cfg, host, wire);
    engine->poll(now_us);
  }
  // The peer ACKs with SACK blocks (and its timestamp), no data.
  void peer_sack(uint32_t ack, std::initializer_list<net::SackBlock> blocks) {
    net::TcpOptions o;
    o.has_timestamp = true;
    o.ts_val = ++peer_ts;
    o.ts_ecr = 1;
    for (const net::SackBlock& b : blocks) o.sack[o.sack_count++] = b;
    peer_opts(peer_seq, ack, ACK, o, "");
  }
  void peer_ts_val(uint32_t seq, uint32_t ack, uint8_t flags, uint32_t ts_val, const std::string& payload = "") {
    net::TcpOptions o;
    o.has_timestamp = true;
    o.ts_val = ts_val;
    o.ts_ecr = 1;
    peer_opts(seq, ack, flags, o, payload);
  }
  // `ms` of silence, then exactly one segment at the end of it.
  Seg next_after(uint64_t ms) {
    if (ms > 1) {
      advance(ms - 1);
      expect_silence();
    }
    advance(1);
    return next();
  }
  int events(EventKind k) const { return host.count_events(k); }
  int index_of_event(EventKind k) const {
    return host.index_of([k](const HR& r) { return r.kind == HR::event && r.event_kind == k; });
  }
  int index_of_kind(HR::Kind k) const {
    return host.index_of([k](const HR& r) { return r.kind == k; });
  }
};

// =================================================================== seed

// RFC 9293 §3.6 (simultaneous close, Figure 13) and the seed: our FIN and the
// peer's cross; both are ACKed; the disconnect completes SUCCESS only once
// our FIN is ACKed; CLOSING then TIME_WAIT (C-19).
TEST_F(Rfc, Seed_SimultaneousCloseThroughClosingToTimeWait) {
  offload_default();
  Request& d = close_graceful();
  Seg fin = next();
  EXPECT_TRUE(fin.has(FIN | ACK));
  EXPECT_EQ(fin.seq, kIss);
  EXPECT_EQ(fin.ack, kIrs);
  EXPECT_TRUE(fin.payload.empty());
  expect_silence();
  EXPECT_EQ(state(), TcpState::fin_wait_1);

  peer(kIrs, kIss, ACK | FIN);  // the peer's FIN, sent before ours arrived: ACKs only up to 1000
  Seg ack = next();
  EXPECT_TRUE(ack.has(ACK));
  EXPECT_FALSE(ack.has(FIN)) << "our FIN is not sent twice";
  EXPECT_EQ(ack.seq, kIss + 1);
  EXPECT_EQ(ack.ack, kIrs + 1) << "the peer's FIN is ACKed";
  expect_silence();
  EXPECT_EQ(state(), TcpState::closing);
  EXPECT_TRUE(host.of(HR::disconnect).empty()) << "seed: SUCCESS only once our FIN is ACKed";
  EXPECT_EQ(events(EventKind::disconnect), 1) << "C-16: the peer's FIN is indicated";

  peer(kIrs + 1, kIss + 1, ACK);  // the peer ACKs our FIN
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].nbl, &d.nbl);
  EXPECT_EQ(dc[0].status, Status::success);
  EXPECT_EQ(dc[0].bytes, 0u);
  EXPECT_EQ(tcb().state, TcpState::time_wait);
  EXPECT_TRUE(tcb().flags.closed) << "C-19: the full state is released in TIME_WAIT";
  EXPECT_EQ(engine->time_wait_entries(), 1u);
  expect_silence();  // nothing is owed: the peer's FIN was ACKed already
  EXPECT_EQ(events(EventKind::abort), 0);
}

// RFC 9293 §3.6: the peer closes first (ESTABLISHED -> CLOSE_WAIT), the host
// is told (C-16), its graceful disconnect sends our FIN (LAST_ACK), the
// disconnect completes SUCCESS when the FIN is ACKed (seed), the connection
// is CLOSED with no TIME_WAIT, and its record stays until terminate (C-20).
TEST_F(Rfc, Seed_PeerFinFirstCloseWaitLastAckClosed) {
  offload_default();
  peer(kIrs, kIss, ACK | FIN);
  Seg ack = next();
  EXPECT_EQ(ack.seq, kIss);
  EXPECT_EQ(ack.ack, kIrs + 1);
  EXPECT_FALSE(ack.has(FIN));
  EXPECT_EQ(state(), TcpState::close_wait);
  EXPECT_EQ(events(EventKind::disconnect), 1);

  Request& d = close_graceful("bye");
  Seg fin = next();
  EXPECT_TRUE(fin.has(FIN | ACK));
  EXPECT_EQ(fin.seq, kIss);
  EXPECT_EQ(fin.payload, "bye");
  EXPECT_EQ(fin.ack, kIrs + 1);
  EXPECT_EQ(state(), TcpState::last_ack);

  peer(kIrs + 1, kIss + 3, ACK);  // the data, not the FIN
  EXPECT_TRUE(host.of(HR::disconnect).empty());
  EXPECT_EQ(state(), TcpState::last_ack);

  peer(kIrs + 1, kIss + 4, ACK);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].status, Status::success);
  EXPECT_EQ(dc[0].bytes, 3u);
  EXPECT_EQ(d.advanced(), 3u);
  EXPECT_EQ(state(), TcpState::closed);
  EXPECT_EQ(engine->time_wait_entries(), 0u) << "LAST_ACK ends in CLOSED, not TIME_WAIT";
  expect_silence();
  EXPECT_EQ(events(EventKind::disconnect), 1);

  // C-20: still there until the host terminates; then released.
  ASSERT_NE(engine->find(h), nullptr);
  EXPECT_EQ(engine->terminate(h), Status::pending);
  engine->poll(now_us);
  auto term = host.of(HR::terminate);
  ASSERT_EQ(term.size(), 1u);
  EXPECT_EQ(term[0].status, Status::success);
  EXPECT_EQ(host.terminated.state, TcpState::closed);
  EXPECT_EQ(engine->find(h), nullptr);
}

// C-17, RFC 9293 §3.10.7.4 (second check) and RFC 5961 §3.2: an RST at
// rcv.nxt in any synchronized state aborts: ABORT, every pending request
// completes REQUEST_ABORTED, nothing is sent in reply (RFC 9293 §3.10.7.4:
// never a RST for a RST), and the record stays until terminate (C-20).
class RfcRst : public Rfc {
 protected:
  // Drives the connection to `target` leaving requests pending there; returns
  // the peer's rcv.nxt.
  uint32_t reach(TcpState target, std::vector<Request*>& pending) {
    offload_default();
    switch (target) {
      case TcpState::established:
        pending.push_back(&send_data("unacked"));
        pending.push_back(&post_receive(8));
        break;
      case TcpState::fin_wait_1:
        pending.push_back(&post_receive(8));
        pending.push_back(&close_graceful("last"));
        break;
      case TcpState::fin_wait_2: {
        close_graceful();
        drain();
        peer(kIrs, kIss + 1, ACK);
        EXPECT_EQ(host.of(HR::disconnect).size(), 1u);
        pending.push_back(&post_receive(8));
        break;
      }
      case TcpState::close_wait:
        peer(kIrs, kIss, ACK | FIN);
        pending.push_back(&send_data("reply"));
        break;
      case TcpState::closing:
        pending.push_back(&close_graceful());
        drain();
        peer(kIrs, kIss, ACK | FIN);
        break;
      case TcpState::last_ack:
        peer(kIrs, kIss, ACK | FIN);
        pending.push_back(&close_graceful("bye"));
        break;
      default: ADD_FAILURE() << "not an offloaded state";
    }
    drain();
    EXPECT_EQ(state(), target) << to_string(target);
    const bool fin_in = target == TcpState::close_wait || target == TcpState::closing || target == TcpState::last_ack;
    return kIrs + (fin_in ? 1 : 0);
  }

  void rst_aborts_in(TcpState target) {
    SCOPED_TRACE(to_string(target));
    std::vector<Request*> pending;
    const uint32_t rcv_nxt = reach(target, pending);
    const size_t before = host.records.size();
    peer(rcv_nxt, tcb().snd.nxt, RST | ACK);
    EXPECT_EQ(events(EventKind::abort), 1);
    for (Request* r : pending) EXPECT_EQ(r->nbl.status, Status::request_aborted);
    // Every pending request completed in this one step, each exactly once.
    size_t completions = 0;
    for (size_t i = before; i < host.records.size(); ++i)
      completions += host.records[i].kind == HR::send || host.records[i].kind == HR::receive ||
                     host.records[i].kind == HR::disconnect;
    EXPECT_EQ(completions, pending.size());
    expect_silence();
    EXPECT_EQ(state(), TcpState::closed);
    ASSERT_NE(engine->find(h), nullptr) << "C-20";
    // Later segments are not processed.
    peer(rcv_nxt, tcb().snd.nxt, ACK | PSH, "late");
    expect_silence();
    EXPECT_TRUE(host.indicated.empty());
    EXPECT_EQ(events(EventKind::abort), 1);
  }
};

TEST_F(RfcRst, C17_RstInEstablishedAborts) { rst_aborts_in(TcpState::established); }
TEST_F(RfcRst, C17_RstInFinWait1Aborts) { rst_aborts_in(TcpState::fin_wait_1); }
TEST_F(RfcRst, C17_RstInFinWait2Aborts) { rst_aborts_in(TcpState::fin_wait_2); }
TEST_F(RfcRst, C17_RstInCloseWaitAborts) { rst_aborts_in(TcpState::close_wait); }
TEST_F(RfcRst, C17_RstInClosingAborts) { rst_aborts_in(TcpState::closing); }
TEST_F(RfcRst, C17_RstInLastAckAborts) { rst_aborts_in(TcpState::last_ack); }

// C-1/C-4 with RFC 9293 §3.6: a connection offloaded in a closing state goes
// on from there: our FIN (sent before the hand-over, snd.max = snd.una + 1)
// is retransmitted by the RTO with its sequence number, and its ACK moves the
// state on; an RST at rcv.nxt aborts it (C-17). No disconnect request is
// pending on the target, so none completes.
class RfcOffloadedState : public Rfc {
 protected:
  void offload_in(TcpState st) {
    const bool our_fin = st == TcpState::fin_wait_1 || st == TcpState::closing || st == TcpState::last_ack;
    const bool fin_acked = st == TcpState::fin_wait_2;
    const bool peer_fin = st == TcpState::close_wait || st == TcpState::closing || st == TcpState::last_ack;
    offload_with([&](OffloadState& s) {
      s.delegated.state = st;
      if (our_fin) s.delegated.snd_nxt = s.delegated.snd_max = kIss + 1;
      if (fin_acked) s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = kIss + 1;
      if (peer_fin) s.delegated.rcv_nxt = kIrs + 1;
    });
  }
};

TEST_F(RfcOffloadedState, Rfc9293_OffloadedInFinWait1RetransmitsFinThenFinWait2) {
  offload_in(TcpState::fin_wait_1);
  expect_silence();  // the FIN was sent by the host
  Seg fin = next_after(1000);
  EXPECT_TRUE(fin.has(FIN | ACK));
  EXPECT_EQ(fin.seq, kIss);
  peer(kIrs, kIss + 1, ACK);
  EXPECT_EQ(state(), TcpState::fin_wait_2);
  peer(kIrs, kIss + 1, ACK | FIN);
  EXPECT_EQ(next().ack, kIrs + 1);
  EXPECT_EQ(tcb().state, TcpState::time_wait);
  EXPECT_TRUE(host.of(HR::disconnect).empty());
}

TEST_F(RfcOffloadedState, Rfc9293_OffloadedInClosingGoesToTimeWaitOnTheFinAck) {
  offload_in(TcpState::closing);
  Seg fin = next_after(1000);
  EXPECT_TRUE(fin.has(FIN));
  EXPECT_EQ(fin.seq, kIss);
  EXPECT_EQ(fin.ack, kIrs + 1);
  peer(kIrs + 1, kIss + 1, ACK);
  EXPECT_EQ(tcb().state, TcpState::time_wait);
  EXPECT_EQ(engine->time_wait_entries(), 1u);
  expect_silence();
}

TEST_F(RfcOffloadedState, Rfc9293_OffloadedInLastAckClosesOnTheFinAck) {
  offload_in(TcpState::last_ack);
  Seg fin = next_after(1000);
  EXPECT_TRUE(fin.has(FIN));
  EXPECT_EQ(fin.seq, kIss);
  peer(kIrs + 1, kIss + 1, ACK);
  EXPECT_EQ(state(), TcpState::closed);
  EXPECT_EQ(engine->time_wait_entries(), 0u);
  expect_silence();
}

TEST_F(RfcOffloadedState, C17_RstAbortsInEveryOffloadedState) {
  for (TcpState st : {TcpState::established, TcpState::fin_wait_1, TcpState::fin_wait_2, TcpState::close_wait,
                      TcpState::closing, TcpState::last_ack}) {
    SCOPED_TRACE(to_string(st));
    flow.remote_port = static_cast<uint16_t>(43000 + static_cast<int>(st));
    const int aborts = events(EventKind::abort);
    offload_in(st);
    drain();
    const bool peer_fin = st == TcpState::close_wait || st == TcpState::closing || st == TcpState::last_ack;
    peer(kIrs + (peer_fin ? 1 : 0), tcb().snd.nxt, RST);
    EXPECT_EQ(events(EventKind::abort), aborts + 1);
    EXPECT_EQ(state(), TcpState::closed);
    expect_silence();
  }
}

// RFC 9293 §3.10.7.4 (first check): a retransmitted FIN lies below rcv.nxt;
// it is ACKed again, its data is not delivered twice, and the host hears of
// the FIN once (C-16).
TEST_F(Rfc, Rfc9293_RetransmittedPeerFinIsAckedAgainAndDeliveredOnce) {
  offload_default();
  peer(kIrs, kIss, ACK | FIN | PSH, "tail");
  Seg a1 = next();
  EXPECT_EQ(a1.ack, kIrs + 5);
  EXPECT_EQ(host.indicated, "tail");
  EXPECT_EQ(events(EventKind::disconnect), 1);
  for (int i = 0; i < 2; ++i) {
    peer(kIrs, kIss, ACK | FIN | PSH, "tail");  // our ACK was lost, say
    Seg again = next();
    EXPECT_TRUE(again.has(ACK));
    EXPECT_EQ(again.seq, kIss);
    EXPECT_EQ(again.ack, kIrs + 5);
    expect_silence();
  }
  peer(kIrs + 4, kIss, ACK | FIN);  // the bare FIN retransmitted
  EXPECT_EQ(next().ack, kIrs + 5);
  EXPECT_EQ(host.indicated, "tail");
  EXPECT_EQ(events(EventKind::disconnect), 1);
  EXPECT_EQ(state(), TcpState::close_wait);
}

// RFC 9293 §3.10.7.4 (seventh, eighth): text and FIN in one segment: the text
// is delivered, then the FIN is indicated (C-16), and the FIN is ACKed at
// once, not delayed.
TEST_F(Rfc, Rfc9293_FinCarryingDataDeliversThenIndicates) {
  offload_default();
  Request& r = post_receive(16);
  peer(kIrs, kIss, ACK | FIN, "data");
  Seg ack = next();
  EXPECT_EQ(ack.ack, kIrs + 5) << "4 bytes and the FIN";
  auto recs = host.of(HR::receive);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].status, Status::success);
  EXPECT_EQ(r.filled(), "data") << "the FIN completes a partly filled push-mode receive";
  ASSERT_EQ(events(EventKind::disconnect), 1);
  EXPECT_LT(index_of_kind(HR::receive), index_of_event(EventKind::disconnect));
  EXPECT_EQ(state(), TcpState::close_wait);
}

// RFC 9293 §3.10.7.4 (eighth): a FIN is processed only in sequence. Out-of-
// order data is held; the lost FIN (or a FIN beyond a hole) is not
// indicated before the data before it; its retransmission closes.
TEST_F(Rfc, Rfc9293_LostPeerFinRetransmittedAfterOutOfOrderData) {
  offload_default();
  // "aaaa" at 5000 is lost; "bbbb" at 5004 arrives with the FIN.
  peer(kIrs + 4, kIss, ACK | FIN, "bbbb");
  Seg a1 = next();
  EXPECT_EQ(a1.ack, kIrs);
  ASSERT_EQ(a1.opts.sack_count, 1u);
  EXPECT_EQ(a1.opts.sack[0].left, kIrs + 4);
  EXPECT_EQ(a1.opts.sack[0].right, kIrs + 8);
  EXPECT_EQ(events(EventKind::disconnect), 0) << "not before the hole is filled";
  EXPECT_EQ(state(), TcpState::established);
  EXPECT_TRUE(host.indicated.empty());

  peer(kIrs, kIss, ACK, "aaaa");  // the retransmission fills the hole
  Seg a2 = next();
  EXPECT_EQ(host.indicated, "aaaabbbb");
  // The FIN may or may not have been kept with the out-of-order data; if it
  // was, it is ACKed and indicated now, after the data.
  ASSERT_TRUE(a2.ack == kIrs + 8 || a2.ack == kIrs + 9) << a2.ack;
  EXPECT_EQ(events(EventKind::disconnect), a2.ack == kIrs + 9 ? 1 : 0);
  EXPECT_EQ(a2.opts.sack_count, 0u);

  peer(kIrs + 4, kIss, ACK | FIN, "bbbb");  // the peer retransmits its FIN segment
  Seg a3 = next();
  EXPECT_EQ(a3.ack, kIrs + 9);
  EXPECT_EQ(host.indicated, "aaaabbbb") << "not delivered twice";
  EXPECT_EQ(events(EventKind::disconnect), 1);
  EXPECT_EQ(state(), TcpState::close_wait);
}

// RFC 9293 §3.10.7.4 (eighth): the FIN of a segment beyond a hole is not
// forgotten: when the retransmission fills the hole, the data and the FIN
// are taken together (one ACK for both, DISCONNECT after the data, C-16),
// without waiting for the peer to retransmit its FIN.
TEST_F(Rfc, Rfc9293_OutOfOrderFinIsTakenWhenTheHoleFills) {
  offload_default();
  peer(kIrs + 4, kIss, ACK | FIN, "bbbb");
  EXPECT_EQ(next().ack, kIrs);
  EXPECT_EQ(state(), TcpState::established);
  peer(kIrs, kIss, ACK, "aaaa");
  Seg a = next();
  EXPECT_EQ(a.ack, kIrs + 9) << "the data and the FIN";
  EXPECT_EQ(host.indicated, "aaaabbbb");
  EXPECT_EQ(events(EventKind::disconnect), 1);
  EXPECT_EQ(state(), TcpState::close_wait);
  peer(kIrs + 4, kIss, ACK | FIN, "bbbb");  // a late retransmission changes nothing
  EXPECT_EQ(next().ack, kIrs + 9);
  EXPECT_EQ(host.indicated, "aaaabbbb");
  EXPECT_EQ(events(EventKind::disconnect), 1);
}

// Same with a bare FIN beyond the hole, after out-of-order data.
TEST_F(Rfc, Rfc9293_OutOfOrderBareFinIsTakenWhenTheHoleFills) {
  offload_default();
  peer(kIrs + 4, kIss, ACK, "bbbb");
  peer(kIrs + 8, kIss, ACK | FIN);
  drain();
  EXPECT_EQ(events(EventKind::disconnect), 0);
  peer(kIrs, kIss, ACK, "aaaa");
  EXPECT_EQ(next().ack, kIrs + 9);
  EXPECT_EQ(events(EventKind::disconnect), 1);
  EXPECT_EQ(state(), TcpState::close_wait);
}

// Same with the FIN segment itself lost, and data out of order before it.
TEST_F(Rfc, Rfc9293_LostPeerFinAloneIsProcessedWhenRetransmitted) {
  offload_default();
  peer(kIrs + 4, kIss, ACK, "bbbb");  // out of order
  EXPECT_EQ(next().ack, kIrs);
  // The FIN at 5008 is lost.
  peer(kIrs, kIss, ACK, "aaaa");
  Seg a = next();
  EXPECT_EQ(a.ack, kIrs + 8) << "RFC 5681 §4.2: ACK at once when the hole fills";
  EXPECT_EQ(host.indicated, "aaaabbbb");
  EXPECT_EQ(events(EventKind::disconnect), 0);
  EXPECT_EQ(state(), TcpState::established);
  peer(kIrs + 8, kIss, ACK | FIN);
  EXPECT_EQ(next().ack, kIrs + 9);
  EXPECT_EQ(events(EventKind::disconnect), 1);
  EXPECT_EQ(state(), TcpState::close_wait);
}

// RFC 9293 §3.6, RFC 6298 §5: in CLOSING our FIN is still unACKed; the RTO
// retransmits it (it also ACKs the peer's FIN); its ACK ends CLOSING.
TEST_F(Rfc, Seed_ClosingRetransmitsOurFinUntilAcked) {
  offload_default();
  Request& d = close_graceful("x");
  EXPECT_TRUE(next().has(FIN));
  peer(kIrs, kIss, ACK | FIN);
  EXPECT_EQ(next().ack, kIrs + 1);
  ASSERT_EQ(state(), TcpState::closing);
  Seg again = next_after(1000);
  EXPECT_TRUE(again.has(FIN | ACK));
  EXPECT_EQ(again.seq, kIss);
  EXPECT_EQ(again.payload, "x");
  EXPECT_EQ(again.ack, kIrs + 1);
  EXPECT_EQ(d.nbl.status, Status::pending);
  peer(kIrs + 1, kIss + 2, ACK);
  EXPECT_EQ(d.nbl.status, Status::success);
  EXPECT_EQ(d.nbl.bytes_transferred, 1u);
  EXPECT_EQ(tcb().state, TcpState::time_wait);
}

// RFC 6298 §5 and the seed: our FIN is lost; the retransmission timer sends
// it again with the same sequence number; the disconnect completes SUCCESS
// only when it is ACKed.
TEST_F(Rfc, Seed_OurLostFinIsRetransmittedByRtoWithTheSameSeq) {
  offload_default();
  Request& d = close_graceful();
  Seg f1 = next();
  ASSERT_TRUE(f1.has(FIN));
  EXPECT_EQ(f1.seq, kIss);
  Seg f2 = next_after(1000);  // RFC 6298 (2.1): RTO 1 s before any sample
  EXPECT_TRUE(f2.has(FIN | ACK));
  EXPECT_EQ(f2.seq, kIss);
  EXPECT_TRUE(f2.payload.empty());
  EXPECT_TRUE(host.of(HR::disconnect).empty());
  EXPECT_EQ(state(), TcpState::fin_wait_1);
  peer(kIrs, kIss + 1, ACK);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].nbl, &d.nbl);
  EXPECT_EQ(dc[0].status, Status::success);
  EXPECT_EQ(state(), TcpState::fin_wait_2);
  advance(5000);
  expect_silence();  // nothing left to retransmit
}

// The seed and C-11/C-12: final data and the FIN ride together; the send
// before it completes when its bytes are ACKed, the disconnect only when the
// FIN is, with bytes_transferred = its own data bytes.
TEST_F(Rfc, Seed_FinalDataAndFinAckedSeparately) {
  offload_default();
  Request& s = send_data("abc");
  Request& d = close_graceful("defg");
  std::vector<Seg> segs = drain();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].payload, "abcdefg");
  EXPECT_TRUE(segs[0].has(FIN | ACK | PSH));
  peer(kIrs, kIss + 3, ACK);
  ASSERT_EQ(host.of(HR::send).size(), 1u);
  EXPECT_EQ(s.nbl.status, Status::success);
  EXPECT_TRUE(host.of(HR::disconnect).empty());
  peer(kIrs, kIss + 7, ACK);  // the disconnect's data, not its FIN
  EXPECT_TRUE(host.of(HR::disconnect).empty());
  EXPECT_EQ(state(), TcpState::fin_wait_1);
  peer(kIrs, kIss + 8, ACK);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].status, Status::success);
  EXPECT_EQ(dc[0].bytes, 4u);
  EXPECT_EQ(d.advanced(), 4u);
  EXPECT_EQ(host.of(HR::send).size(), 1u) << "C-14: the send is not returned again";
  EXPECT_EQ(state(), TcpState::fin_wait_2);
}

// ============================================================== RFC 7323

// RFC 7323 §5.3 R1: a segment whose TSval is older than TS.Recent is not
// acceptable: ACKed and dropped, its data not delivered, TS.Recent kept.
TEST_F(Rfc, Rfc7323_PawsDropsAndAcksAnOldTimestampSegment) {
  offload_default();
  peer_ts_val(kIrs, kIss, ACK | PSH, 500, "new");
  EXPECT_EQ(host.indicated, "new");
  advance(40);
  drain();
  peer_ts_val(kIrs + 3, kIss, ACK | PSH, 400, "old");  // in window, but TSval 400 < 500
  Seg a = next();
  EXPECT_TRUE(a.has(ACK));
  EXPECT_EQ(a.ack, kIrs + 3) << "the data was dropped";
  EXPECT_EQ(a.opts.ts_ecr, 500u) << "TS.Recent unchanged";
  EXPECT_EQ(host.indicated, "new");
  EXPECT_EQ(engine->stats().drop_paws, 1u);
  EXPECT_EQ(delegated().ts_recent, 500u);
}

// RFC 7323 §4.3 (2): a retransmission of the segment our (lost) ACK
// covered ends at Last.ACK.sent: its TSval becomes TS.Recent, so the
// duplicate ACK lets the sender time one round trip, not its backoff (as
// Linux). A duplicate that ends earlier, or carries an ACK of data never
// sent (RFC 5961 §5.2), leaves TS.Recent alone.
TEST_F(Rfc, Rfc7323_RetransmissionOfTheLastSegmentRefreshesTsRecent) {
  offload_default();
  peer_ts_val(kIrs, kIss, ACK | PSH, 300, "abcd");
  EXPECT_EQ(next_after(40).opts.ts_ecr, 300u);
  peer_ts_val(kIrs + 4, kIss, ACK | PSH, 310, "efgh");
  EXPECT_EQ(next_after(40).opts.ts_ecr, 310u);  // Last.ACK.sent = kIrs + 8
  peer_ts_val(kIrs, kIss, ACK, 900, "abcd");     // an older segment again
  Seg old = next();
  EXPECT_EQ(old.ack, kIrs + 8);
  EXPECT_EQ(old.opts.ts_ecr, 310u) << "it does not reach Last.ACK.sent";
  peer_ts_val(kIrs + 4, kIss + 5000, ACK, 950, "efgh");  // ACKs data never sent
  Seg forged = next();
  EXPECT_EQ(forged.opts.ts_ecr, 310u) << "an unacceptable ACK";
  peer_ts_val(kIrs + 4, kIss, ACK, 1000, "efgh");  // the sender's retransmission
  Seg dup = next();
  EXPECT_EQ(dup.ack, kIrs + 8);
  EXPECT_EQ(dup.opts.ts_ecr, 1000u);
  EXPECT_EQ(host.indicated, "abcdefgh") << "each byte delivered once";
}

// The same for the peer's SYN-ACK, retransmitted because our ACK of it was
// lost: its segment ends at Last.ACK.sent (IRS + 1), its ACK is ours, so the
// ACK that answers it echoes its TSval, and the listener's handshake RTT is
// one round trip, not its SYN-ACK backoff. Not for a bare SYN.
TEST_F(Rfc, Rfc7323_RetransmittedSynAckRefreshesTsRecent) {
  offload_default();  // ESTABLISHED at RCV.NXT = kIrs: the SYN-ACK was IRS = kIrs - 1
  peer_ts_val(kIrs - 1, kIss, SYN | ACK, 400, "");
  Seg a = next();
  EXPECT_EQ(a.ack, kIrs);
  EXPECT_FALSE(a.has(SYN));
  EXPECT_EQ(a.opts.ts_ecr, 400u) << "the retransmitted SYN-ACK's TSval";
  peer_ts_val(kIrs - 1, 0, SYN, 500, "");  // a bare SYN: answered, TS.Recent stays
  Seg b = next();
  EXPECT_EQ(b.opts.ts_ecr, 400u);
  EXPECT_EQ(tcb().state, TcpState::established);
}

// RFC 7323 §5.3 R1: "... and if the RST bit is not set": RST is exempt.
TEST_F(Rfc, Rfc7323_PawsExemptsRst) {
  offload_default();
  peer_ts_val(kIrs, kIss, ACK, 500);
  peer_ts_val(kIrs, kIss, RST, 7);  // old TSval, at rcv.nxt
  EXPECT_EQ(events(EventKind::abort), 1);
  EXPECT_EQ(engine->stats().drop_paws, 0u);
  expect_silence();
}

// RFC 7323 §3.2, §4.3: every segment we send carries TSopt; TSecr is
// TS.Recent, which takes SEG.TSval only when SEG.SEQ <= Last.ACK.sent: with a
// delayed ACK covering two segments the earlier TSval is echoed (§4.2 case
// A), an out-of-order segment does not update it, and the segment that
// fills the hole does (§4.2 case C).
TEST_F(Rfc, Rfc7323_TsEcrEchoesTsRecentPerLastAckSent) {
  offload_default();
  peer_ts_val(kIrs, kIss, ACK, 300, "a");
  Seg a = next_after(40);  // delayed
  EXPECT_TRUE(a.opts.has_timestamp);
  EXPECT_EQ(a.opts.ts_ecr, 300u);
  EXPECT_EQ(a.ack, kIrs + 1);

  // Two segments, one ACK for both: it echoes the first one's TSval.
  peer_ts_val(kIrs + 1, kIss, ACK, 310, "b");
  expect_silence();
  peer_ts_val(kIrs + 2, kIss, ACK, 320, "c");
  Seg bc = next();
  EXPECT_EQ(bc.ack, kIrs + 3);
  EXPECT_EQ(bc.opts.ts_ecr, 310u) << "RFC 7323 §4.3 (2): SEG.SEQ 5002 > Last.ACK.sent 5001";

  // One more in order (ACKed by the timer), then one out of order: TS.Recent
  // stays with the segment that last advanced RCV.NXT (§4.2 case C).
  peer_ts_val(kIrs + 3, kIss, ACK, 325, "d");
  EXPECT_EQ(next_after(40).opts.ts_ecr, 325u);
  peer_ts_val(kIrs + 10, kIss, ACK, 330, "x");
  Seg ooo = next();
  EXPECT_EQ(ooo.ack, kIrs + 4);
  EXPECT_EQ(ooo.opts.ts_ecr, 325u) << "not the out-of-order segment's";
  // The hole is filled: that segment's TSval.
  peer_ts_val(kIrs + 4, kIss, ACK, 340, "123456");
  Seg fill = next();
  EXPECT_EQ(fill.ack, kIrs + 11);
  EXPECT_EQ(fill.opts.ts_ecr, 340u);
  // Our TSval is our clock (ms) and never goes back.
  EXPECT_GE(fill.opts.ts_val, a.opts.ts_val);
}

// RFC 7323 §2.2, §2.3: windows we receive are shifted left by the peer's
// scale (snd_wscale), windows we send are shifted right by ours
// (rcv_wscale); nothing is sent beyond the peer's window (RFC 9293 §3.8.6).
TEST_F(Rfc, Rfc7323_WindowScaleOnWindowsSentAndReceived) {
  offload_with([](OffloadState& s) {
    s.constant.snd_wscale = 2;
    s.constant.rcv_wscale = 5;
    s.delegated.snd_wnd = 0;
    s.delegated.max_snd_wnd = 0;
  });
  host.accept = [](uint32_t) { return 0u; };
  send_data(std::string(10000, 'w'));
  expect_silence();  // zero window
  // The peer offers 724 << 2 = 2896 bytes: two segments exactly.
  peer(kIrs, kIss, ACK, "", 724);
  std::vector<Seg> segs = drain();
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[0].seq, kIss);
  EXPECT_EQ(segs[0].payload.size(), kMss);
  EXPECT_EQ(segs[1].seq, kIss + kMss);
  EXPECT_EQ(segs[1].payload.size(), kMss);
  // Our window: 65536 >> 5 = 2048.
  EXPECT_EQ(segs[0].window, 2048u);
  EXPECT_EQ(delegated().snd_wnd, 2896u);
  // 1000 bytes buffered, not consumed: the field says what is free, rounded
  // up to a whole unit of 32 so that the right edge stays where it was (RFC
  // 9293 §3.8.6.2.2; rounded down it would move 24 bytes left).
  peer(kIrs, kIss, ACK | PSH, std::string(1000, 'r'), 724);
  Seg a = next_after(40);
  EXPECT_EQ(a.ack, kIrs + 1000);
  EXPECT_LT(uint32_t{a.window} << 5, 65536u - 1000 + 32);
  EXPECT_GE(uint32_t{a.window} << 5, 65536u - 1000);
  EXPECT_GE(a.ack + (uint32_t{a.window} << 5), kIrs + 65536u) << "the right edge did not move left";
}

// ============================================================== RFC 5961

// RFC 5961 §4.2: a SYN in a synchronized state, in window or not, gets a
// challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT>; nothing else changes.
TEST_F(Rfc, Rfc5961_SynInEstablishedGetsChallengeAck) {
  offload_default();
  for (uint32_t seq : {kIrs, kIrs + 100}) {
    peer(seq, 0, SYN);
    Seg c = next();
    EXPECT_TRUE(c.has(ACK));
    EXPECT_FALSE(c.has(RST));
    EXPECT_FALSE(c.has(SYN));
    EXPECT_EQ(c.seq, kIss);
    EXPECT_EQ(c.ack, kIrs);
    expect_silence();
  }
  peer(kIrs, kIss, SYN | ACK, "syndata");
  Seg c = next();
  EXPECT_EQ(c.ack, kIrs) << "text on a SYN is not taken";
  EXPECT_EQ(state(), TcpState::established);
  EXPECT_TRUE(host.indicated.empty());
  EXPECT_TRUE(host.of(HR::event).empty());
  EXPECT_EQ(engine->stats().syn_in_challenged, 3u);
}

// RFC 5961 §5.2 / RFC 9293 §3.10.7.4 (fifth): SEG.ACK > SND.NXT: send an ACK,
// drop the segment; its data is not delivered, and no send completes.
TEST_F(Rfc, Rfc5961_AckOfUnsentDataIsAnsweredAndDropped) {
  offload_default();
  Request& s = send_data(std::string(100, 's'));
  drain();
  peer(kIrs, kIss + 200, ACK | PSH, "data");
  Seg a = next();
  EXPECT_TRUE(a.has(ACK));
  EXPECT_EQ(a.seq, kIss + 100);
  EXPECT_EQ(a.ack, kIrs) << "the text was not accepted";
  expect_silence();
  EXPECT_TRUE(host.indicated.empty());
  EXPECT_TRUE(host.of(HR::send).empty());
  EXPECT_EQ(s.nbl.status, Status::pending);
  EXPECT_EQ(delegated().snd_una, kIss);
  // The real ACK still works.
  peer(kIrs, kIss + 100, ACK | PSH, "data");
  EXPECT_EQ(s.nbl.status, Status::success);
  EXPECT_EQ(host.indicated, "data");
}

// RFC 5961 §5.2: acceptable ACKs lie in [SND.UNA - MAX.SND.WND, SND.NXT];
// older ones are dropped (and ACKed); an old ACK inside the range is fine.
TEST_F(Rfc, Rfc5961_VeryOldAckIsDropped) {
  offload_with([](OffloadState& s) {
    s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = 1'000'000;
    s.delegated.snd_wl2 = 1'000'000;
    s.delegated.snd_wnd = s.delegated.max_snd_wnd = 65536;
  });
  peer(kIrs, 1'000'000 - 65536 - 10, ACK | PSH, "forged");
  Seg a = next();
  EXPECT_EQ(a.ack, kIrs);
  EXPECT_EQ(a.seq, 1'000'000u);
  EXPECT_TRUE(host.indicated.empty());
  EXPECT_EQ(engine->stats().drop_old_ack, 1u);
  peer(kIrs, 1'000'000 - 65536 + 10, ACK | PSH, "fine");
  EXPECT_EQ(host.indicated, "fine");
}

// RFC 9293 §3.10.7.4 (fifth, ESTABLISHED): "If SND.UNA =< SEG.ACK =<
// SND.NXT, the send window should be updated": an old ACK (acceptable under
// RFC 5961 §5.2, so its text is taken) does not set the window, however new
// its sequence number.
TEST_F(Rfc, Rfc9293_OldAckDoesNotUpdateTheSendWindow) {
  offload_default();
  send_data(std::string(100, 'a'));
  drain();
  peer(kIrs, kIss + 100, ACK | PSH, "abc");  // snd.una = 1100, wl1 = 5000
  peer(kIrs + 3, kIss + 50, ACK | PSH, "d", 0);  // newer text, an old ACK and a zero window
  EXPECT_EQ(host.indicated, "abcd") << "an acceptable old ACK does not stop the text";
  EXPECT_EQ(delegated().snd_wnd, 65536u) << "the window of an old ACK is not taken";
  send_data("zz");
  std::vector<Seg> segs = drain();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().payload, "zz");
  EXPECT_EQ(segs.back().seq, kIss + 100);
}

// RFC 9293 §3.10.7.4: a segment that begins in the window but runs past its
// right edge is trimmed: the part inside is taken (and ACKed at once), the
// part beyond is not.
TEST_F(Rfc, Rfc9293_SegmentPastTheRightEdgeIsTrimmed) {
  offload_with([](OffloadState& s) {
    s.constant.window_scaling = false;
    s.constant.snd_wscale = s.constant.rcv_wscale = 0;
    s.cached.initial_rcv_wnd = 1000;
    s.delegated.snd_wnd = 65535;
  });
  host.accept = [](uint32_t) { return 0u; };  // keep it all buffered: the window stays shut
  peer(kIrs, kIss, ACK | PSH, std::string(1000, 'i') + std::string(400, 'o'), 65535);
  Seg a = next();
  EXPECT_EQ(a.ack, kIrs + 1000);
  EXPECT_EQ(a.window, 0u);
  EXPECT_EQ(tcb().rx_buffered.bytes, 1000u);
  Request& r = post_receive(2000, kReceiveNoPush);
  EXPECT_EQ(r.nbl.status, Status::pending) << "no-push: 1000 of 2000 bytes, not complete";
  EXPECT_EQ(std::string(r.data.begin(), r.data.begin() + 1000), std::string(1000, 'i'));
  EXPECT_EQ(r.data[1000], 0) << "nothing of the part beyond the window";
}

// RFC 2018 §2: no SACK option unless SACK-permitted was exchanged.
TEST_F(Rfc, Rfc2018_NoSackBlocksWithoutSackPermitted) {
  offload_with([](OffloadState& s) { s.constant.sack = false; });
  peer(kIrs + 100, kIss, ACK, "later");
  Seg a = next();
  EXPECT_EQ(a.ack, kIrs) << "RFC 5681 §4.2: a duplicate ACK at once";
  EXPECT_EQ(a.opts.sack_count, 0u);
  EXPECT_TRUE(a.opts.has_timestamp);
}

// RFC 5961 §7: challenge ACKs are rate limited (a per-second budget).
TEST_F(Rfc, Rfc5961_ChallengeAcksAreRateLimited) {
  reconfigure([](tcp::EngineConfig& c) { c.challenge_acks_per_second = 2; });
  offload_default();
  for (int i = 0; i < 5; ++i) peer(kIrs + 10 + i, kIss, RST);  // in window, not at rcv.nxt
  std::vector<Seg> acks = drain();
  EXPECT_EQ(acks.size(), 2u);
  for (const Seg& s : acks) EXPECT_EQ(s.ack, kIrs);
  EXPECT_EQ(engine->stats().challenge_acks_limited, 3u);
  advance(1000);
  peer(kIrs, 0, SYN);
  EXPECT_EQ(drain().size(), 1u) << "a new second, a new budget";
  EXPECT_EQ(events(EventKind::abort), 0);
}

// ============================================================== RFC 9293

// RFC 9293 §3.10.7.4 (first check): a segment outside the receive window is
// answered <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> and dropped.
TEST_F(Rfc, Rfc9293_OutOfWindowDataIsAckedWithRcvNxtAndNotDelivered) {
  offload_default();
  for (uint32_t seq : {kIrs + 65536 + 10, kIrs + 65536, kIrs - 2000}) {
    peer(seq, kIss, ACK | PSH, "nope");
    Seg a = next();
    EXPECT_EQ(a.seq, kIss);
    EXPECT_EQ(a.ack, kIrs);
    EXPECT_EQ(a.opts.sack_count, 0u) << "nothing was queued";
    expect_silence();
  }
  EXPECT_TRUE(host.indicated.empty());
  EXPECT_EQ(tcb().rcv.ooo_count, 0u);
  EXPECT_EQ(engine->stats().drop_out_of_window, 3u);
}

// RFC 5961 §5 / the reassembly budget: beyond the per-connection budget
// (here 256, more than an 8-bit count can hold) segments are dropped and
// counted; the engine's other nodes stay for other connections.
TEST_F(Rfc, ReassemblyBudgetPerConnectionHoldsAbove255) {
  reconfigure([](tcp::EngineConfig& c) {
    c.ooo_segments = 1024;
    c.ooo_segments_per_connection = 256;
  });
  offload_default();
  for (uint32_t i = 0; i < 300; ++i) peer(kIrs + 2 + 2 * i, kIss, ACK, "x");  // a gap before each
  drain();
  EXPECT_EQ(tcb().rcv.ooo_count, 256u);
  EXPECT_EQ(tcb().rcv.ooo_bytes, 256u);
  EXPECT_EQ(engine->stats().drop_ooo_budget, 300u - 256u);
  EXPECT_TRUE(host.indicated.empty());
}

// The default budget holds a 4 MiB window of full segments beyond a hole.
TEST(EngineConfigDefaults, ReassemblyBudgetCoversAFourMiBWindow) {
  const tcp::EngineConfig c;
  EXPECT_GE(c.ooo_segments_per_connection, (4u << 20) / 1448u);
  EXPECT_LE(c.ooo_segments_per_connection, 65535u);
  EXPECT_LE(c.ooo_segments_per_connection, c.ooo_segments);
}

// RFC 9293 §3.10.7.4: an old duplicate is ACKed, not delivered again; a
// segment overlapping old and new data delivers only the new part.
TEST_F(Rfc, Rfc9293_DuplicateOldSegmentIsAckedNotRedelivered) {
  offload_default();
  peer(kIrs, kIss, ACK | PSH, "hello");
  advance(40);
  drain();
  peer(kIrs, kIss, ACK | PSH, "hello");
  Seg a = next();
  EXPECT_EQ(a.ack, kIrs + 5) << "at once";
  EXPECT_EQ(host.indicated, "hello");
  peer(kIrs, kIss, ACK | PSH, "helloworld");
  EXPECT_EQ(host.indicated, "helloworld");
  Seg b = next_after(40);
  EXPECT_EQ(b.ack, kIrs + 10);
}

// RFC 5681 §4.2, RFC 2018 §4: an out-of-order segment is ACKed at once with
// SACK blocks, the first holding the segment that triggered the ACK and the
// rest the most recently reported; when the hole fills, all is delivered in
// order and ACKed at once.
TEST_F(Rfc, Rfc2018_OutOfOrderAckedAtOnceWithSackFirstBlockMostRecent) {
  offload_default();
  const std::string A(100, 'A'), B(100, 'B'), C(100, 'C'), D(100, 'D');
  peer(kIrs + 100, kIss, ACK, B);
  Seg s1 = next();
  EXPECT_EQ(s1.ack, kIrs);
  ASSERT_EQ(s1.opts.sack_count, 1u);
  EXPECT_EQ(s1.opts.sack[0].left, kIrs + 100);
  EXPECT_EQ(s1.opts.sack[0].right, kIrs + 200);

  peer(kIrs + 300, kIss, ACK, D);
  Seg s2 = next();
  EXPECT_EQ(s2.ack, kIrs);
  ASSERT_EQ(s2.opts.sack_count, 2u);
  EXPECT_EQ(s2.opts.sack[0].left, kIrs + 300) << "the latest arrival first";
  EXPECT_EQ(s2.opts.sack[0].right, kIrs + 400);
  EXPECT_EQ(s2.opts.sack[1].left, kIrs + 100);

  peer(kIrs + 200, kIss, ACK, C);  // joins B and D
  Seg s3 = next();
  ASSERT_EQ(s3.opts.sack_count, 1u);
  EXPECT_EQ(s3.opts.sack[0].left, kIrs + 100);
  EXPECT_EQ(s3.opts.sack[0].right, kIrs + 400);
  EXPECT_TRUE(host.indicated.empty()) << "nothing in order yet";

  peer(kIrs, kIss, ACK, A);
  Seg s4 = next();  // RFC 5681 §4.2: at once when the hole fills
  EXPECT_EQ(s4.ack, kIrs + 400);
  EXPECT_EQ(s4.opts.sack_count, 0u);
  EXPECT_EQ(host.indicated, A + B + C + D);
  expect_silence();
}

// RFC 2018 §4: "The SACK option SHOULD be filled out by repeating the most
// recently reported SACK blocks"; with timestamps three blocks fit (§3).
TEST_F(Rfc, Rfc2018_LaterBlocksRepeatTheMostRecentlyReported) {
  offload_default();
  for (uint32_t off : {100u, 300u, 500u, 700u}) {
    peer(kIrs + off, kIss, ACK, std::string(100, 'x'));
    drain();
  }
  peer(kIrs + 900, kIss, ACK, std::string(100, 'y'));
  Seg s = next();
  ASSERT_EQ(s.opts.sack_count, 3u) << "40 bytes of options: timestamps and 3 blocks";
  EXPECT_EQ(s.opts.sack[0].left, kIrs + 900);
  EXPECT_EQ(s.opts.sack[1].left, kIrs + 700);
  EXPECT_EQ(s.opts.sack[2].left, kIrs + 500);
}

// RFC 1122 §4.2.3.2, RFC 5681 §4.2: one segment is ACKed by the delayed-ACK
// timer (40 ms here, < 500 ms); the second full-sized segment is ACKed at once.
TEST_F(Rfc, Rfc5681_DelayedAckForOneSegmentImmediateForTwo) {
  offload_default();
  peer(kIrs, kIss, ACK, "x");
  Seg a = next_after(40);
  EXPECT_EQ(a.ack, kIrs + 1);
  EXPECT_EQ(engine->stats().delayed_acks, 1u);
  expect_silence();

  peer_seq = kIrs + 1;
  peer(peer_seq, kIss, ACK, std::string(kMss, 'f'));
  expect_silence();
  peer(peer_seq + kMss, kIss, ACK, std::string(kMss, 'g'));
  Seg b = next();
  EXPECT_EQ(b.ack, peer_seq + 2 * kMss);
  expect_silence();
  advance(100);
  expect_silence();  // no second ACK from the timer
}

// RFC 5681 §3.2 (fast retransmit on the third duplicate ACK) and RFC 6582
// §3.2 (NewReno): ssthresh = FlightSize/2, cwnd = ssthresh + 3*SMSS; a
// partial ACK retransmits the next hole at once and deflates the window
// (cwnd - acked + SMSS); the full ACK ends recovery with
// cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS).
TEST_F(Rfc, Rfc6582_FastRetransmitAndPartialAckWithoutSack) {
  offload_with([](OffloadState& s) {
    s.constant.sack = false;
    s.delegated.cwnd = 10 * kMss;
  });
  Request& r = send_data(std::string(10 * kMss, 'n'));
  std::vector<Seg> segs = drain();
  ASSERT_EQ(segs.size(), 10u);
  // Segments 0 and 3 are lost; the peer ACKs the others with duplicates.
  peer(kIrs, kIss, ACK);
  peer(kIrs, kIss, ACK);
  expect_silence();  // two duplicates: no new data to send, no retransmission
  peer(kIrs, kIss, ACK);
  Seg rx = next();
  EXPECT_EQ(rx.seq, kIss);
  EXPECT_EQ(rx.payload.size(), kMss);
  expect_silence();
  DelegatedState d = delegated();
  EXPECT_EQ(d.ssthresh, 10 * kMss / 2);
  EXPECT_EQ(d.cwnd, 10 * kMss / 2 + 3 * kMss);
  // Partial ACK: segments 0..2 arrived, 3 is the next hole.
  peer(kIrs, kIss + 3 * kMss, ACK);
  Seg rx2 = next();
  EXPECT_EQ(rx2.seq, kIss + 3 * kMss);
  EXPECT_EQ(rx2.payload.size(), kMss);
  expect_silence();
  EXPECT_EQ(delegated().cwnd, 10 * kMss / 2 + 3 * kMss - 3 * kMss + kMss);
  // Full ACK.
  peer(kIrs, kIss + 10 * kMss, ACK);
  EXPECT_EQ(r.nbl.status, Status::success);
  EXPECT_EQ(delegated().cwnd, 2 * kMss) << "min(ssthresh, max(0, SMSS) + SMSS)";
  EXPECT_EQ(engine->stats().fast_retransmits, 1u);
  EXPECT_EQ(engine->stats().retransmits, 2u);
}

// RFC 6675 §5: with SACK, loss recovery retransmits only what the scoreboard
// shows missing (segments 0 and 3 here), never SACKed data.
TEST_F(Rfc, Rfc6675_SackRecoveryRetransmitsOnlyTheHoles) {
  offload_with([](OffloadState& s) { s.delegated.cwnd = 10 * kMss; });
  Request& r = send_data(std::string(10 * kMss, 'k'));
  ASSERT_EQ(drain().size(), 10u);
  auto at = [](uint32_t i) { return kIss + i * kMss; };
  std::vector<Seg> out;
  // The peer receives 1, 2, 4, 5, ... 9 and SACKs them as they come.
  peer_sack(kIss, {{at(1), at(2)}});
  peer_sack(kIss, {{at(1), at(3)}});
  for (uint32_t i = 4; i < 10; ++i) {
    peer_sack(kIss, {{at(4), at(i + 1)}, {at(1), at(3)}});
    for (Seg& s : drain()) out.push_back(s);
  }
  std::multiset<uint32_t> seqs;
  for (const Seg& s : out) {
    seqs.insert(s.seq);
    EXPECT_EQ(s.payload.size(), kMss);
  }
  EXPECT_EQ(seqs, (std::multiset<uint32_t>{at(0), at(3)})) << "each hole once, nothing SACKed";
  EXPECT_EQ(engine->stats().sack_recoveries, 1u);
  peer_sack(kIss + 10 * kMss, {});
  EXPECT_EQ(r.nbl.status, Status::success);
  expect_silence();
}

// RFC 6298 (2.1), (5.5): before any RTT sample the RTO is 1 s; each
// expiration retransmits the oldest unACKed segment and doubles the RTO.
// RFC 5681 §3.1: after a timeout cwnd is one segment (the loss window).
TEST_F(Rfc, Rfc6298_InitialRtoAndExponentialBackoff) {
  offload_default();
  send_data("x");
  Seg s0 = next();
  EXPECT_EQ(s0.seq, kIss);
  uint64_t interval = 1000;
  for (int i = 0; i < 4; ++i, interval *= 2) {
    SCOPED_TRACE(interval);
    Seg s = next_after(interval);
    EXPECT_EQ(s.seq, kIss);
    EXPECT_EQ(s.payload, "x");
    expect_silence();
  }
  EXPECT_EQ(delegated().cwnd, kMss);
  EXPECT_EQ(engine->stats().rto_expirations, 4u);
}

// RFC 6298 (2.2)-(2.3): RTO = SRTT + max(G, 4*RTTVAR), from the delegated
// state; a new sample updates SRTT and RTTVAR with alpha 1/8, beta 1/4.
TEST_F(Rfc, Rfc6298_RtoFromSrttAndRttvar) {
  offload_with([](OffloadState& s) {
    s.delegated.srtt_us = 800'000;
    s.delegated.rttvar_us = 200'000;
    s.constant.sack = false;        // no tail loss probe (RFC 8985 needs SACK): the RTO alone
    s.constant.timestamps = false;  // samples only from timed segments
  });
  send_data("a");
  next();
  Seg again = next_after(1600);  // 800 + 4 * 200 ms
  EXPECT_EQ(again.seq, kIss);
  peer(kIrs, kIss + 1, ACK);
  // A fresh segment, ACKed after 400 ms: a valid sample.
  send_data("b");
  next();
  advance(400);
  peer(kIrs, kIss + 2, ACK);
  DelegatedState d = delegated();
  // RTTVAR = 3/4 * 200 + 1/4 * |800 - 400| = 250; SRTT = 7/8 * 800 + 1/8 * 400 = 750.
  EXPECT_EQ(d.rttvar_us, 250'000u);
  EXPECT_EQ(d.srtt_us, 750'000u);
  send_data("c");
  next();
  Seg c = next_after(1750);  // 750 + 4 * 250
  EXPECT_EQ(c.seq, kIss + 2);
  EXPECT_EQ(c.payload, "c");
}

// RFC 6298 §3 (Karn): no RTT sample from a retransmitted segment; the
// backed-off RTO stays until a valid sample (§5, after rule 5.7). (Without
// timestamps: with them every ACK of new data is a sample, RFC 7323 §4.1.)
TEST_F(Rfc, Rfc6298_KarnRetransmittedSegmentIsNotTimed) {
  offload_with([](OffloadState& s) {
    s.constant.timestamps = false;
    s.constant.sack = false;
  });
  send_data("x");
  next();
  next_after(1000);  // retransmitted; RTO now 2 s
  advance(300);
  peer(kIrs, kIss + 1, ACK);
  EXPECT_EQ(delegated().srtt_us, 0u) << "ambiguous: not a sample";
  send_data("y");
  next();
  Seg y = next_after(2000);  // the backed-off RTO is kept
  EXPECT_EQ(y.seq, kIss + 1);
  advance(250);
  peer(kIrs, kIss + 2, ACK);
  EXPECT_EQ(delegated().srtt_us, 0u) << "y was retransmitted too";
  send_data("z");
  next();
  advance(50);
  peer(kIrs, kIss + 3, ACK);
  // RFC 6298 (2.2): the first sample R sets SRTT = R, RTTVAR = R/2.
  EXPECT_EQ(delegated().srtt_us, 50'000u);
  EXPECT_EQ(delegated().rttvar_us, 25'000u);
}

// RFC 7323 §4.1: with timestamps the ACK of a retransmitted segment is timed
// by the TSval it echoes, so the backed-off RTO ends with that ACK.
TEST_F(Rfc, Rfc7323_EchoedTimestampTimesTheAckOfARetransmission) {
  offload_with([](OffloadState& s) { s.constant.sack = false; });
  send_data("x");
  next();
  Seg rx = next_after(1000);  // the RTO: retransmitted, the RTO doubles to 2 s
  ASSERT_TRUE(rx.opts.has_timestamp);
  advance(30);
  net::TcpOptions o;
  o.has_timestamp = true;
  o.ts_val = ++peer_ts;
  o.ts_ecr = rx.opts.ts_val;  // echoes the retransmission's TSval: 30 ms ago
  peer_opts(kIrs, kIss + 1, ACK, o, "");
  EXPECT_EQ(delegated().srtt_us, 30'000u);
  EXPECT_EQ(delegated().rttvar_us, 15'000u);
  send_data("y");
  next();
  Seg y = next_after(200);  // RTO = max(200 ms, 30 + 4 * 15): the backoff is over
  EXPECT_EQ(y.seq, kIss + 1);
}

// RFC 8985 §7: a lost tail is probed for after PTO = 2·SRTT, well before the
// RTO: the last segment goes again, and the ACK it brings ends the episode
// with a loss response (no D-SACK says the original arrived).
TEST_F(Rfc, Rfc8985_TailLossProbeRetransmitsTheLastSegmentAfterTwoSrtt) {
  offload_with([](OffloadState& s) {
    s.delegated.srtt_us = 20'000;
    s.delegated.rttvar_us = 60'000;  // RTO = 20 + 240 ms
  });
  const uint32_t cwnd_before = delegated().cwnd;
  send_data(std::string(3 * kMss, 't'));
  std::vector<Seg> out = drain();
  ASSERT_EQ(out.size(), 3u);
  peer(kIrs, kIss + 2 * kMss, ACK);  // the last segment (or its ACK) is lost
  expect_silence();
  // PTO = 2·SRTT + the delayed-ACK allowance (one segment in flight): about
  // 2 * 17.5 + 40 ms after the ACK (the ACK's own sample lowered SRTT).
  unsigned waited = 0;
  while (wire.frames.empty() && waited < 300) {
    advance(1);
    ++waited;
  }
  EXPECT_GE(waited, 40u);
  EXPECT_LE(waited, 100u) << "long before the RTO (> 200 ms)";
  Seg probe = next();
  EXPECT_EQ(probe.seq, kIss + 2 * kMss);
  EXPECT_EQ(probe.payload.size(), kMss);
  EXPECT_EQ(engine->stats().loss_probes, 1u);
  EXPECT_EQ(engine->stats().rto_expirations, 0u);
  peer(kIrs, kIss + 3 * kMss, ACK);
  EXPECT_EQ(engine->stats().loss_probe_recoveries, 1u);
  EXPECT_LT(delegated().cwnd, cwnd_before + 3 * kMss) << "reduced as for a loss";
  advance(1000);
  EXPECT_EQ(engine->stats().rto_expirations, 0u);
  drain();
}

// RFC 8985 §6.3: one segment SACKed above a hole is too few duplicates for
// RFC 6675, but once the reordering window (SRTT/4, at least 2 ms) has
// passed the hole is lost and retransmitted, without waiting for the RTO.
TEST_F(Rfc, Rfc8985_HoleBelowSackedDataIsLostAfterTheReorderingWindow) {
  offload_with([](OffloadState& s) {
    s.delegated.srtt_us = 8'000;
    s.delegated.rttvar_us = 50'000;
  });
  send_data(std::string(3 * kMss, 'h'));
  ASSERT_EQ(drain().size(), 3u);
  net::TcpOptions o;
  o.sack_count = 1;
  o.sack[0] = {kIss + 2 * kMss, kIss + 3 * kMss};  // the third arrived, the second not
  peer_opts(kIrs, kIss + kMss, ACK, o, "");
  drain();  // whatever the ACK of new data lets out
  advance(1);
  expect_silence();
  Seg rx = next_after(1);  // SRTT/4 = 2 ms
  EXPECT_EQ(rx.seq, kIss + kMss);
  EXPECT_EQ(engine->stats().reorder_timeouts, 1u);
  EXPECT_EQ(engine->stats().rto_expirations, 0u);
}

// RFC 8985 §7.3: when new data waits and the peer's window takes it, the
// probe is new data (cwnd aside), and its ACK needs no loss response.
TEST_F(Rfc, Rfc8985_TailLossProbeSendsNewDataWhenTheWindowAllows) {
  offload_with([](OffloadState& s) {
    s.delegated.srtt_us = 20'000;
    s.delegated.rttvar_us = 60'000;
    s.delegated.cwnd = 2 * kMss;  // two segments out, the third waits for the window
  });
  send_data(std::string(3 * kMss, 'n'));
  ASSERT_EQ(drain().size(), 2u);
  Seg probe = next_after(40);
  EXPECT_EQ(probe.seq, kIss + 2 * kMss) << "the third segment, new";
  peer(kIrs, kIss + 3 * kMss, ACK);
  EXPECT_EQ(engine->stats().loss_probes, 1u);
  EXPECT_EQ(engine->stats().loss_probe_recoveries, 0u);
  EXPECT_EQ(engine->stats().retransmits, 0u);
}

// RFC 9293 §3.8.6.1, RFC 1122 §4.2.2.17: nothing is sent into a zero window;
// the window is probed after an RTO, the probe interval doubles, and data
// resumes as soon as the window opens.
TEST_F(Rfc, Rfc9293_ZeroWindowPersistProbesBackOffAndDataResumes) {
  offload_default();
  peer(kIrs, kIss, ACK, "", 0);
  send_data(std::string(100, 'z'));
  expect_silence();
  uint64_t interval = 1000;
  for (int i = 0; i < 3; ++i, interval *= 2) {
    SCOPED_TRACE(interval);
    Seg probe = next_after(interval);
    EXPECT_TRUE(probe.has(ACK));
    // A probe below snd.una (or one byte of new data) elicits the window.
    EXPECT_TRUE((probe.seq == kIss - 1 && probe.payload.empty()) || (probe.seq == kIss && probe.payload.size() == 1));
    EXPECT_EQ(probe.ack, kIrs);
    expect_silence();
    peer(kIrs, kIss, ACK, "", 0);  // the answer: still closed
    expect_silence();
  }
  EXPECT_EQ(engine->stats().window_probes, 3u);
  peer(kIrs, kIss, ACK, "", 512);  // the window opens
  Seg data = next();
  EXPECT_EQ(data.seq, kIss);
  EXPECT_EQ(data.payload, std::string(100, 'z'));
}

// RFC 9293 §3.8.6.2.1 (sender SWS avoidance): with nothing in flight and a
// usable window below Fs * max window (1024 < 65536 / 2) and below the data
// queued, the sender waits; but the data is PUSHed (C-8: every request ends
// with PSH), so after the override timeout (0.1 to 1 s) it sends what fits:
// otherwise a lost window update would stall the connection for good.
TEST_F(Rfc, Rfc9293_SenderSwsWaitsThenOverrideTimeoutSends) {
  offload_default();
  peer(kIrs, kIss, ACK, "", 8);  // 8 << 7 = 1024 bytes
  send_data(std::string(5000, 's'));
  expect_silence();
  Seg small = next_after(1000);
  EXPECT_EQ(small.seq, kIss);
  EXPECT_EQ(small.payload.size(), 1024u) << "what the window allows, no more";
  expect_silence();
  // ACKed, the window still 1024: the same again within the override
  // timeout (now min(RTO, 1 s)), never beyond the window.
  peer(kIrs, kIss + 1024, ACK, "", 8);
  expect_silence();
  std::vector<Seg> again;
  for (int ms = 0; ms < 1000 && again.empty(); ++ms) {
    advance(1);
    again = drain();
  }
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].seq, kIss + 1024);
  EXPECT_EQ(again[0].payload.size(), 1024u);
  // The window opens: the rest goes at once.
  peer(kIrs, kIss + 2048, ACK, "", 512);
  std::string rest;
  for (const Seg& s : drain()) rest += s.payload;
  EXPECT_EQ(rest.size(), 5000u - 2048);
}

// C-18: the cached persist limit raises RETRIEVE(TimeoutExpiration).
TEST_F(Rfc, C18_PersistProbeLimitRaisesRetrieve) {
  offload_with([](OffloadState& s) { s.cached.max_persist_probes = 2; });
  peer(kIrs, kIss, ACK, "", 0);
  send_data("waiting");
  expect_silence();
  EXPECT_EQ(next_after(1000).seq, kIss - 1);
  EXPECT_EQ(next_after(2000).seq, kIss - 1);
  EXPECT_EQ(events(EventKind::retrieve), 0);
  advance(4000);
  expect_silence();  // no third probe
  const int at = index_of_event(EventKind::retrieve);
  ASSERT_GE(at, 0);
  EXPECT_EQ(host.records[at].reason, RetrieveReason::timeout_expiration);
}

// RFC 1122 §4.2.2.17 (C-18): the connection stays open while the peer
// answers the probes; the cached limit counts unanswered probes only.
TEST_F(Rfc, Rfc1122_AnsweredPersistProbesDoNotCountTowardsTheLimit) {
  offload_with([](OffloadState& s) { s.cached.max_persist_probes = 2; });
  peer(kIrs, kIss, ACK, "", 0);
  send_data("waiting");
  expect_silence();
  uint64_t interval = 1000;
  for (int i = 0; i < 3; ++i, interval *= 2) {
    SCOPED_TRACE(i);
    EXPECT_EQ(next_after(interval).seq, kIss - 1);
    peer(kIrs, kIss, ACK, "", 0);  // answered: still closed
    expect_silence();
  }
  EXPECT_EQ(events(EventKind::retrieve), 0);
  // The peer falls silent: two probes go unanswered, then RETRIEVE.
  EXPECT_EQ(next_after(interval).seq, kIss - 1);
  EXPECT_EQ(next_after(interval * 2).seq, kIss - 1);
  EXPECT_EQ(events(EventKind::retrieve), 0);
  advance(interval * 4 + 10);
  expect_silence();
  EXPECT_EQ(events(EventKind::retrieve), 1);
}

// RFC 9293 §3.8.6: the peer shrinks its window to zero with data in flight
// and keeps it closed, answering everything. That is no reason to time the
// connection out (MUST-34: max_retransmissions is 2 here, and 20 s pass);
// the window is probed instead (MUST-35), backing off. When it opens the
// data goes again from SND.UNA and the send completes.
TEST_F(Rfc, Rfc9293_WindowShrunkToZeroIsProbedNotTimedOut) {
  offload_with([](OffloadState& s) { s.cached.max_retransmissions = 2; });
  const std::string data(3 * kMss, 'k');
  Request& r = send_data(data);
  ASSERT_EQ(drain().size(), 3u);
  const uint32_t una = kIss + kMss;
  peer(kIrs, una, ACK, "", 0);  // the right edge moves left of SND.MAX
  std::vector<uint64_t> probes;
  for (int ms = 0; ms < 20000; ++ms) {
    advance(1);
    for (const Seg& s : drain()) {
      if (s.seq == una - 1 && s.payload.empty()) probes.push_back(now_us / 1000);
      peer(kIrs, una, ACK, "", 0);  // still closed
    }
  }
  EXPECT_EQ(events(EventKind::retrieve), 0) << "given up while the peer answers";
  ASSERT_GE(probes.size(), 4u);
  for (size_t i = 2; i < probes.size(); ++i)
    EXPECT_GE(probes[i] - probes[i - 1], 2 * (probes[i - 1] - probes[i - 2]) - 1) << "probe " << i;
  peer(kIrs, una, ACK, "", 512);  // the window opens
  std::string resent;
  for (int i = 0; i < 10 && resent.size() < data.size() - kMss; ++i) {
    for (const Seg& s : drain()) {
      EXPECT_EQ(s.seq, una + resent.size());
      resent += s.payload;
    }
    peer(kIrs, una + static_cast<uint32_t>(resent.size()), ACK, "", 512);
  }
  EXPECT_EQ(resent, data.substr(kMss));
  EXPECT_EQ(r.nbl.status, Status::success);
  EXPECT_EQ(r.nbl.bytes_transferred, data.size());
}

// RFC 9293 §3.8.6.2.2 (receiver SWS avoidance): with the buffer full (the
// host accepts nothing) the window is zero; freeing less than
// min(RCV.BUFF/2, Eff.snd.MSS) does not move the right edge, even in the ACK
// to a probe; freeing more sends a window update at once.
TEST_F(Rfc, Rfc9293_ReceiverSwsZeroWindowAndUpdateOnlyWhenUseful) {
  offload_with([](OffloadState& s) {
    s.constant.window_scaling = false;
    s.constant.snd_wscale = s.constant.rcv_wscale = 0;
    s.cached.initial_rcv_wnd = 8192;
    s.delegated.snd_wnd = 65535;
  });
  host.accept = [](uint32_t) { return 0u; };
  std::vector<Seg> acks;
  for (uint32_t i = 0; i < 8; ++i) {
    peer(kIrs + i * 1024, kIss, ACK, std::string(1024, char('0' + i)), 65535);
    for (Seg& s : drain()) acks.push_back(s);
  }
  ASSERT_FALSE(acks.empty());
  EXPECT_EQ(acks.back().ack, kIrs + 8192);
  EXPECT_EQ(acks.back().window, 0u) << "buffer full, nothing consumed";
  for (size_t i = 1; i < acks.size(); ++i)
    EXPECT_EQ(acks[i].ack + acks[i].window, acks[0].ack + acks[0].window) << "the right edge never moves back";
  // More data is not taken.
  peer(kIrs + 8192, kIss, ACK, "z", 65535);
  Seg z = next();
  EXPECT_EQ(z.ack, kIrs + 8192);
  EXPECT_EQ(z.window, 0u);

  // The host takes 100 bytes: too little to open the window.
  post_receive(100);
  expect_silence();
  peer(kIrs + 8191, kIss, ACK, "", 65535);  // a zero-window probe (old sequence number)
  Seg p = next();
  EXPECT_EQ(p.ack, kIrs + 8192);
  EXPECT_EQ(p.window, 0u) << "SWS: no 100-byte window";
  // It takes 2000 more: 2100 free >= min(4096, 1448): a window update now.
  post_receive(2000);
  Seg u = next();
  EXPECT_EQ(u.ack, kIrs + 8192);
  EXPECT_EQ(u.window, 2100u);
  expect_silence();
}

// RFC 9293 §3.7.4, RFC 1122 §4.2.3.4 (Nagle): with cached nagle, a second
// small segment waits while one is unACKed; without it, it goes at once.
TEST_F(Rfc, Rfc9293_NagleHoldsSmallSegmentUntilAck) {
  offload_with([](OffloadState& s) { s.cached.nagle = true; });
  send_data("a");
  Seg a = next();
  EXPECT_EQ(a.payload, "a");
  send_data("b");
  send_data("c");
  expect_silence();
  peer(kIrs, kIss + 1, ACK);
  Seg bc = next();
  EXPECT_EQ(bc.seq, kIss + 1);
  EXPECT_EQ(bc.payload, "bc") << "what waited goes as one segment";
  expect_silence();
  // A full-sized segment is never held.
  send_data(std::string(kMss, 'F'));
  Seg full = next();
  EXPECT_EQ(full.payload.size(), kMss);
}

// RFC 9293 §3.7.4 with RFC 6298 §5.4: Nagle holds new small data, never the
// retransmission of a small segment that is itself what is outstanding (a
// lost last segment of a stream, with Nagle on, stalled until the
// retransmission limit).
TEST_F(Rfc, Rfc9293_NagleNeverHoldsTheRetransmissionOfASmallSegment) {
  offload_with([](OffloadState& s) {
    s.cached.nagle = true;
    s.constant.sack = false;  // no tail loss probe: the RTO retransmits
  });
  send_data(std::string(kMss + 100, 't'));
  drain();
  peer(kIrs, kIss + kMss, ACK);  // the first segment arrived
  std::vector<Seg> tail = drain();
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail.back().seq, kIss + kMss);
  EXPECT_EQ(tail.back().payload.size(), 100u);
  // The tail is lost: the RTO must resend it although it is small and unACKed.
  advance(1500);
  std::vector<Seg> again = drain();
  ASSERT_FALSE(again.empty()) << "the RTO sent nothing";
  EXPECT_EQ(again[0].seq, kIss + kMss);
  EXPECT_EQ(again[0].payload.size(), 100u);
  EXPECT_GE(engine->stats().rto_expirations, 1u);
}

TEST_F(Rfc, Rfc9293_NagleOffSendsSmallSegmentsAtOnce) {
  offload_with([](OffloadState& s) { s.cached.nagle = false; });
  send_data("a");
  EXPECT_EQ(next().payload, "a");
  send_data("b");
  Seg b = next();
  EXPECT_EQ(b.payload, "b");
  EXPECT_EQ(b.seq, kIss + 1);
}

// RFC 1122 §4.2.3.6: after the idle timeout, probes <SEQ=SND.NXT-1> with no
// data every interval; after the probe count unanswered, C-18 RETRIEVE
// (TimeoutExpiration).
TEST_F(Rfc, Rfc1122_KeepaliveProbesThenRetrieve) {
  offload_with([](OffloadState& s) {
    s.cached.keepalive = true;
    s.cached.keepalive_timeout_ms = 1000;
    s.cached.keepalive_interval_ms = 200;
    s.cached.keepalive_probes = 3;
  });
  for (uint64_t wait : {1000, 200, 200}) {
    Seg probe = next_after(wait);
    EXPECT_TRUE(probe.has(ACK));
    EXPECT_EQ(probe.seq, kIss - 1);
    EXPECT_EQ(probe.ack, kIrs);
    EXPECT_TRUE(probe.payload.empty());
  }
  EXPECT_EQ(events(EventKind::retrieve), 0);
  advance(200);
  expect_silence();
  const int at = index_of_event(EventKind::retrieve);
  ASSERT_GE(at, 0);
  EXPECT_EQ(host.records[at].reason, RetrieveReason::timeout_expiration);
}

// RFC 1122 §4.2.3.6: an answer to a probe means the peer is alive: no
// RETRIEVE, and the next probe waits for a full idle timeout again.
TEST_F(Rfc, Rfc1122_KeepaliveAnswerResetsIt) {
  offload_with([](OffloadState& s) {
    s.cached.keepalive = true;
    s.cached.keepalive_timeout_ms = 1000;
    s.cached.keepalive_interval_ms = 200;
    s.cached.keepalive_probes = 2;
  });
  next_after(1000);
  advance(50);
  peer(kIrs, kIss, ACK);  // the answer
  expect_silence();
  Seg again = next_after(1000);
  EXPECT_EQ(again.seq, kIss - 1);
  EXPECT_EQ(events(EventKind::retrieve), 0);
}

// C-1: update_cached applies at once: keepalive on and off, Nagle, TTL.
TEST_F(Rfc, C1_UpdateCachedTogglesKeepaliveNagleAndTtl) {
  OffloadState s = default_state(flow);
  h = offload(s);
  advance(3000);
  expect_silence();  // keepalive off
  CachedState c = s.cached;
  c.keepalive = true;
  c.keepalive_timeout_ms = 500;
  c.keepalive_interval_ms = 100;
  c.keepalive_probes = 5;
  ASSERT_EQ(engine->update_cached(h, c), Status::success);
  EXPECT_EQ(next_after(500).seq, kIss - 1);
  c.keepalive = false;
  ASSERT_EQ(engine->update_cached(h, c), Status::success);
  advance(2000);
  expect_silence();
  EXPECT_EQ(events(EventKind::retrieve), 0);

  c.nagle = true;
  ASSERT_EQ(engine->update_cached(h, c), Status::success);
  send_data("1");
  EXPECT_EQ(next().payload, "1");
  send_data("2");
  expect_silence();  // Nagle now on
  c.nagle = false;
  ASSERT_EQ(engine->update_cached(h, c), Status::success);
  send_data("3");
  EXPECT_EQ(next().payload, "23");  // off again: what waited goes
  c.ttl = 9;
  ASSERT_EQ(engine->update_cached(h, c), Status::success);
  peer(kIrs, kIss + 3, ACK | PSH, "q");
  wire.clear();
  send_data("4");
  engine->poll(now_us);
  ASSERT_FALSE(wire.frames.empty());
  rte_mbuf* m = wire.frames.front();
  EXPECT_EQ(rte_pktmbuf_mtod_offset(m, rte_ipv4_hdr*, m->l2_len)->time_to_live, 9);
  wire.clear();
}

// RFC 5681 §3.2 eq. 4 vs RFC 9438 §4.6: after a loss NewReno sets ssthresh to
// half the flight, CUBIC to 0.7 times the window (flight == cwnd here), per
// connection, and update_cached switches it (C-1).
class RfcCongestion : public Rfc {
 protected:
  // Ten segments in flight on a fresh connection, three duplicate ACKs;
  // returns ssthresh after the reaction.
  uint32_t loss_reaction(uint16_t port, CongestionAlgorithm offloaded, CongestionAlgorithm run) {
    flow.remote_port = port;
    OffloadState s = default_state(flow);
    s.constant.sack = false;
    s.cached.congestion = offloaded;
    s.delegated.cwnd = 10 * kMss;
    h = offload(s);
    if (run != offloaded) {
      CachedState c = s.cached;
      c.congestion = run;
      EXPECT_EQ(engine->update_cached(h, c), Status::success);
      EXPECT_EQ(delegated().cwnd, 10 * kMss) << "switching keeps the window";
    }
    send_data(std::string(10 * kMss, 'c'));
    EXPECT_EQ(drain().size(), 10u);
    for (int i = 0; i < 3; ++i) peer(kIrs, kIss, ACK);
    Seg rx = next();
    EXPECT_EQ(rx.seq, kIss);
    return delegated().ssthresh;
  }
};

TEST_F(RfcCongestion, Rfc9438_CubicReducesBy0_7NewRenoHalves) {
  EXPECT_EQ(loss_reaction(41001, CongestionAlgorithm::newreno, CongestionAlgorithm::newreno), 10 * kMss / 2);
  EXPECT_EQ(loss_reaction(41002, CongestionAlgorithm::cubic, CongestionAlgorithm::cubic),
            static_cast<uint32_t>(10 * kMss * 0.7));
  EXPECT_EQ(loss_reaction(41003, CongestionAlgorithm::newreno, CongestionAlgorithm::cubic),
            static_cast<uint32_t>(10 * kMss * 0.7));
  EXPECT_EQ(loss_reaction(41004, CongestionAlgorithm::cubic, CongestionAlgorithm::newreno), 10 * kMss / 2);
}

// RFC 5681 §3.1: on an RTO both set ssthresh as on a loss and cwnd to one
// segment (RFC 9438 §4.8 for CUBIC).
TEST_F(RfcCongestion, Rfc5681_RtoLossWindowIsOneSegmentForBoth) {
  for (CongestionAlgorithm a : {CongestionAlgorithm::newreno, CongestionAlgorithm::cubic}) {
    SCOPED_TRACE(to_string(a));
    flow.remote_port = a == CongestionAlgorithm::newreno ? 42001 : 42002;
    OffloadState s = default_state(flow);
    s.cached.congestion = a;
    s.delegated.cwnd = 10 * kMss;
    h = offload(s);
    send_data(std::string(10 * kMss, 'r'));
    EXPECT_EQ(drain().size(), 10u);
    Seg rx = next_after(1000);
    EXPECT_EQ(rx.seq, kIss);
    EXPECT_EQ(delegated().cwnd, kMss);
    EXPECT_EQ(delegated().ssthresh,
              a == CongestionAlgorithm::newreno ? 10 * kMss / 2 : static_cast<uint32_t>(10 * kMss * 0.7));
    expect_silence();  // one segment, not more
  }
}

// ============================================================ bad input

// C-20 and the API (target.hpp): requests on a released handle fail at once
// with INVALID_STATE and stay the host's; a handle is never reused.
TEST_F(Rfc, C20_RequestsOnAReleasedHandleAreInvalidState) {
  offload_default();
  const ConnectionHandle old = h;
  engine->terminate(h);
  engine->poll(now_us);
  ASSERT_EQ(host.of(HR::terminate).size(), 1u);
  const size_t records = host.records.size();
  auto s = Request::with("x");
  auto r = Request::buffer(4);
  auto d = Request::buffer(0);
  EXPECT_EQ(engine->send(old, &s->nbl), Status::invalid_state);
  EXPECT_EQ(engine->receive(old, &r->nbl), Status::invalid_state);
  EXPECT_EQ(engine->disconnect(old, &d->nbl, DisconnectKind::graceful), Status::invalid_state);
  EXPECT_EQ(engine->disconnect(old, &d->nbl, DisconnectKind::abortive), Status::invalid_state);
  EXPECT_EQ(engine->terminate(old), Status::invalid_state);
  EXPECT_EQ(engine->update_cached(old, CachedState{}), Status::invalid_state);
  DelegatedState ds;
  EXPECT_EQ(engine->query_delegated(old, &ds), Status::invalid_state);
  EXPECT_EQ(s->nbl.status, Status::pending) << "untouched";
  EXPECT_EQ(s->advanced(), 0u);
  EXPECT_EQ(host.records.size(), records) << "no callback for a refused request";
  expect_silence();
  // The slot is reused by a new offload; the old handle stays invalid.
  offload_default();
  EXPECT_NE(h.value, old.value);
  EXPECT_EQ(engine->send(old, &s->nbl), Status::invalid_state);
  EXPECT_EQ(engine->send(ConnectionHandle{}, &s->nbl), Status::invalid_state);
  EXPECT_EQ(engine->send(h, nullptr), Status::invalid_state);
}

// RFC 7323 §2.3 / RFC 9293 §3.8.6.2.2: the window field is RCV.WND shifted
// right; rounded down it would put the right edge (SEG.ACK + SEG.WND << 7)
// left of the one offered before as soon as RCV.NXT moves by other than
// whole 128-byte units. Rounded up, the edge on the wire never moves left.
TEST_F(Rfc, Rfc7323_ScaledWindowRoundsUpSoTheRightEdgeNeverMovesLeft) {
  offload_default();
  uint32_t seq = kIrs, last_edge = 0;
  for (uint32_t len : {100u, 37u, 1000u, 1u, 300u, 129u}) {
    peer(seq, kIss, ACK | PSH, std::string(len, 'd'));
    seq += len;
    advance(50);  // the delayed ACK
    for (const Seg& a : drain()) {
      ASSERT_TRUE(a.has(ACK));
      const uint32_t edge = a.ack + (uint32_t{a.window} << 7);
      if (last_edge != 0) {
        EXPECT_GE(static_cast<int32_t>(edge - last_edge), 0) << "edge " << edge << " < " << last_edge;
      }
      last_edge = edge;
    }
  }
  EXPECT_EQ(host.indicated.size(), seq - kIrs);
  // What the peer was told it may send is taken, up to the edge's last byte
  // (held out of order here, and reported in the SACK block).
  peer(last_edge - 10, kIss, ACK, std::string(10, 'e'));
  Seg a = next();
  ASSERT_EQ(a.opts.sack_count, 1u);
  EXPECT_EQ(a.opts.sack[0].left, last_edge - 10);
  EXPECT_EQ(a.opts.sack[0].right, last_edge) << "not trimmed: the window the peer was given is ours";
}

class RfcTimeWait : public Rfc {
 protected:
  // Our graceful close, the peer's FIN: TIME_WAIT with rcv.nxt = 5001 and
  // TS.Recent the peer's last timestamp.
  void enter_time_wait() {
    offload_default();
    close_graceful();
    EXPECT_TRUE(next().has(FIN));
    peer(kIrs, kIss + 1, ACK | FIN);
    EXPECT_EQ(next().ack, kIrs + 1);
    ASSERT_EQ(engine->time_wait_entries(), 1u);
    ts_recent = peer_ts;
  }
  uint32_t ts_recent = 0;
};

// RFC 6191 §2 (RFC 9293 §3.10.7.4 TIME-WAIT): a SYN whose timestamp is newer
// than the old incarnation's starts a new connection: it goes to the slow
// path (the listener) and the entry goes.
TEST_F(RfcTimeWait, Rfc6191_SynWithNewerTimestampGoesToTheSlowPath) {
  enter_time_wait();
  peer_ts_val(kIrs - 100000, 0, SYN, ts_recent + 1);  // a sequence number lower than the old one: the timestamp decides
  EXPECT_EQ(unmatched_count, 1);
  expect_silence();
  EXPECT_EQ(engine->time_wait_entries(), 0u);
}

// RFC 6191 §2: a SYN with an older timestamp is an old duplicate: the entry
// stays, and the SYN gets an ACK (RFC 5961 §4 in a synchronized state).
TEST_F(RfcTimeWait, Rfc6191_SynWithOlderTimestampIsAnsweredWithAnAckAndTimeWaitStays) {
  enter_time_wait();
  peer_ts_val(kIrs + 100000, 0, SYN, ts_recent - 1);
  EXPECT_EQ(unmatched_count, 0);
  Seg a = next();
  EXPECT_TRUE(a.has(ACK) && !a.has(SYN) && !a.has(RST));
  EXPECT_EQ(a.ack, kIrs + 1);
  EXPECT_EQ(engine->time_wait_entries(), 1u);
}

// RFC 6191 §2: without a timestamp on the SYN the sequence number decides: it
// must be greater than the last one seen (the FIN, at RCV.NXT - 1).
TEST_F(RfcTimeWait, Rfc6191_SynWithoutTimestampNeedsAGreaterSequenceNumber) {
  enter_time_wait();
  peer(kIrs, 0, SYN, "", 512, /*with_ts=*/false);  // the FIN's own number: not greater
  EXPECT_EQ(unmatched_count, 0);
  EXPECT_TRUE(next().has(ACK));
  EXPECT_EQ(engine->time_wait_entries(), 1u);
  peer(kIrs + 1, 0, SYN, "", 512, /*with_ts=*/false);
  EXPECT_EQ(unmatched_count, 1);
  EXPECT_EQ(engine->time_wait_entries(), 0u);
}

// Our own new connection on a 4-tuple in TIME_WAIT (the slow path CONNECTs
// from the same local port): the peer's SYN-ACK goes to the slow path's
// handshake, and the offload that follows replaces the entry (it was refused).
TEST_F(RfcTimeWait, Rfc9293_SynAckOfANewIncarnationReachesTheSlowPathAndItsOffloadReplacesTheEntry) {
  enter_time_wait();
  peer_ts_val(90000, 777777, SYN | ACK, peer_ts + 1);
  EXPECT_EQ(unmatched_count, 1);
  expect_silence();
  EXPECT_EQ(engine->time_wait_entries(), 1u) << "until the new connection is offloaded";
  OffloadState s = default_state(flow);
  s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = 777777;
  s.delegated.rcv_nxt = 90001;
  h = offload(s);
  EXPECT_EQ(engine->time_wait_entries(), 0u);
  peer_ts_val(90001, 777777, ACK | PSH, peer_ts + 2, "new");
  EXPECT_EQ(unmatched_count, 1) << "the new connection's segment reaches the engine";
  EXPECT_EQ(host.indicated, "new");
}

// A full TIME_WAIT table (chimneyd sizes it below max_connections): the
// oldest entry, the one nearest the end of its 2·MSL, makes room for the
// connection closing now, and that is counted (engine.cpp enter_time_wait,
// RFC 9293 §3.6, RFC 6191). A retransmitted FIN restarts an entry's 2·MSL
// (§3.10.7.4), which makes it the newest.
TEST_F(RfcTimeWait, FullTableTheOldestEntryMakesRoomAndTheEvictionIsCounted) {
  reconfigure([](tcp::EngineConfig& c) { c.time_wait_entries = 2; });
  auto close_on = [&](uint16_t port) {
    flow.remote_port = port;
    offload_default();
    close_graceful();
    EXPECT_TRUE(next().has(FIN));
    peer(kIrs, kIss + 1, ACK | FIN);
    EXPECT_EQ(next().ack, kIrs + 1);
    EXPECT_EQ(tcb().state, TcpState::time_wait);
    advance(1);
  };
  auto fin_again = [&](uint16_t port) {
    flow.remote_port = port;
    peer(kIrs, kIss + 1, ACK | FIN);
  };
  close_on(40000);
  close_on(40001);
  EXPECT_EQ(engine->time_wait_entries(), 2u);
  EXPECT_EQ(engine->stats().time_wait_evictions, 0u);
  fin_again(40000);  // ACKed from the entry; 40000 is now the newest, 40001 the oldest
  EXPECT_EQ(next().ack, kIrs + 1);
  advance(1);

  close_on(40002);  // the table is full: 40001's entry makes room
  EXPECT_EQ(engine->time_wait_entries(), 2u);
  EXPECT_EQ(engine->stats().time_wait_evictions, 1u);
  EXPECT_EQ(engine->stats().time_wait_overflows, 0u);
  fin_again(40001);
  EXPECT_EQ(unmatched_count, 1) << "40001 has no entry now: its segments are the slow path's";
  expect_silence();
  for (uint16_t port : {40000, 40002}) {
    fin_again(port);
    EXPECT_EQ(next().ack, kIrs + 1) << port << " is still in TIME_WAIT";
  }
  EXPECT_EQ(unmatched_count, 1);

  // Both were restarted just now: 2·MSL (60 s) from here they end, not before.
  advance(59'999);
  EXPECT_EQ(engine->time_wait_entries(), 2u);
  advance(1);
  EXPECT_EQ(engine->time_wait_entries(), 0u);
  EXPECT_EQ(engine->stats().time_wait_evictions, 1u);
  fin_again(40002);
  EXPECT_EQ(unmatched_count, 2);
}

// No room at all (a table of 0 entries): the connection goes without
// TIME_WAIT, as Linux's do on "time wait bucket table overflow", and that is
// counted.
TEST_F(RfcTimeWait, NoEntryToBeHadTheConnectionGoesWithoutTimeWaitAndTheOverflowIsCounted) {
  reconfigure([](tcp::EngineConfig& c) { c.time_wait_entries = 0; });
  offload_default();
  close_graceful();
  EXPECT_TRUE(next().has(FIN));
  peer(kIrs, kIss + 1, ACK | FIN);
  EXPECT_EQ(next().ack, kIrs + 1) << "the peer's FIN is still ACKed";
  EXPECT_TRUE(tcb().flags.closed);
  EXPECT_EQ(engine->time_wait_entries(), 0u);
  EXPECT_EQ(engine->stats().time_wait_overflows, 1u);
  EXPECT_EQ(engine->stats().time_wait_evictions, 0u);
  peer(kIrs, kIss + 1, ACK | FIN);
  EXPECT_EQ(unmatched_count, 1);
}

}  // namespace chimney::test
