// The offload contract, rule by rule (CONTRACT.md C-1 ... C-21), driven at
// the segment level through the scripted harness.
#include "harness.hpp"

namespace chimney::test {

using HR = HostRecord;

class Contract : public EngineTest {};

// ---------------------------------------------------------------- offload

TEST_F(Contract, C1_OffloadTakesConstCachedAndDelegatedState) {
  OffloadState s = default_state(flow);
  s.delegated.snd_wnd = 300 << 7;
  s.delegated.srtt_us = 5000;
  s.delegated.rttvar_us = 1000;
  h = offload(s);
  DelegatedState d;
  ASSERT_EQ(engine->query_delegated(h, &d), Status::success);
  EXPECT_EQ(d.state, TcpState::established);
  EXPECT_EQ(d.snd_una, 1000u);
  EXPECT_EQ(d.snd_nxt, 1000u);
  EXPECT_EQ(d.rcv_nxt, 5000u);
  EXPECT_EQ(d.snd_wnd, 300u << 7);
  EXPECT_EQ(d.srtt_us, 5000u);
  EXPECT_EQ(d.ts_recent, 100u);
  // Cached state applies: the TTL and TOS of what the target sends.
  CachedState cached = s.cached;
  cached.ttl = 17;
  EXPECT_EQ(engine->update_cached(h, cached), Status::success);
  auto r = Request::with("x");
  engine->send(h, &r->nbl);
  Seg seg = next();
  EXPECT_EQ(seg.payload, "x");
  EXPECT_EQ(seg.src_ip, flow.local_ip);
  EXPECT_EQ(seg.dst_port, flow.remote_port);
  EXPECT_EQ(seg.ack, 5000u);
  EXPECT_EQ(seg.window, 512u);  // 65536 >> 7
  EXPECT_TRUE(seg.opts.has_timestamp);
  EXPECT_EQ(seg.opts.ts_ecr, 100u);
}

TEST_F(Contract, C2_RefusedOffloadKeepsEverythingAndSendsNothing) {
  struct Case {
    const char* what;
    std::function<void(OffloadState&)> mutate;
    Status expect;
  } cases[] = {
      {"window scale 15", [](OffloadState& s) { s.constant.snd_wscale = 15; }, Status::invalid_state},
      {"MSS 0", [](OffloadState& s) { s.constant.remote_mss = 0; }, Status::invalid_state},
      {"snd_una > snd_nxt", [](OffloadState& s) { s.delegated.snd_una = 2000; }, Status::invalid_state},
      {"unknown state", [](OffloadState& s) { s.delegated.state = static_cast<TcpState>(42); }, Status::invalid_state},
      {"window too large", [](OffloadState& s) { s.cached.initial_rcv_wnd = 1u << 31; }, Status::offload_tcp_rcv_window},
      {"receive data beyond the window",
       [](OffloadState& s) {
         s.constant.rcv_wscale = 0;
         s.cached.initial_rcv_wnd = 4;
         s.delegated.receive_data = {1, 2, 3, 4, 5};
       },
       Status::offload_tcp_rcv_buffer},
      {"window smaller than one unit of our scale",
       [](OffloadState& s) { s.cached.initial_rcv_wnd = 100; },  // 100 >> 7 == 0
       Status::offload_tcp_rcv_window},
      {"send data missing",
       [](OffloadState& s) { s.delegated.snd_nxt = s.delegated.snd_max = 1100; },
       Status::offload_tcp_xmit_buffer},
  };
  for (auto& c : cases) {
    OffloadState s = default_state(flow);
    c.mutate(s);
    ConnectionHandle out = offload(s, c.expect);
    EXPECT_EQ(out.value, 0u) << c.what;
    expect_silence();
  }
  EXPECT_EQ(engine->connections(), 0u);
}

TEST_F(Contract, C2_FullTableRefusesWithOffloadTcpEntries) {
  for (uint16_t i = 0; i < 64; ++i) {
    Flow f = flow;
    f.remote_port = static_cast<uint16_t>(41000 + i);
    offload(default_state(f));
  }
  Flow f = flow;
  f.remote_port = 50000;
  offload(default_state(f), Status::offload_tcp_entries);
  EXPECT_EQ(engine->connections(), 64u);
  // The same 4-tuple twice is refused too.
  offload(default_state(Flow{flow.local_ip, flow.remote_ip, flow.local_port, 41000}), Status::invalid_state);
}

TEST_F(Contract, C3_InheritedSendDataStartsAtSndUna) {
  OffloadState s = default_state(flow);
  s.delegated.snd_una = 1000;
  s.delegated.snd_nxt = 1500;
  s.delegated.snd_max = 2000;
  auto inherited = Request::with(std::string(1000, 'a') + std::string(1000, 'b'));
  s.delegated.send_data = &inherited->nbl;
  h = offload(s);
  // [snd_nxt, snd_max) goes first, then the rest, in order.
  std::vector<Seg> segs = drain();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs[0].seq, 1500u);
  EXPECT_EQ(segs[0].payload.substr(0, 500), std::string(500, 'a'));
  EXPECT_EQ(segs[0].payload.substr(500, 10), std::string(10, 'b'));
  peer(5000, 3000, ACK);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 1u);
  EXPECT_EQ(sends[0].status, Status::success);
  EXPECT_EQ(sends[0].bytes, 2000u);
  EXPECT_EQ(inherited->advanced(), 2000u);
}

TEST_F(Contract, C3_InFinWait1TheInheritedFinFollowsTheSendsThatFollowTheOffload) {
  // Offloaded again in FIN_WAIT_1 with 1500 bytes and the FIN unACKed: 500
  // come with the offload, 1000 follow as SENDs (the control protocol's
  // OFFLOAD says how many). The FIN goes after the last of them, at 2500;
  // a SEND beyond them is refused (C-7), and the FIN's ACK ends in FIN_WAIT_2.
  OffloadState s = default_state(flow);
  s.delegated.state = TcpState::fin_wait_1;
  s.delegated.snd_una = s.delegated.snd_nxt = s.delegated.snd_max = 1000;
  auto first = Request::with(std::string(500, 'a'));
  s.delegated.send_data = &first->nbl;
  s.delegated.send_data_to_follow = 1000;
  h = offload(s);
  std::vector<Seg> segs = drain();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].seq, 1000u);
  EXPECT_EQ(segs[0].payload, std::string(500, 'a'));
  EXPECT_FALSE(segs[0].has(FIN)) << "not before the data that follows";
  auto rest = Request::with(std::string(1000, 'b'));
  ASSERT_EQ(engine->send(h, &rest->nbl), Status::pending);
  segs = drain();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().seq + segs.back().payload.size(), 2500u);
  EXPECT_TRUE(segs.back().has(FIN)) << "the FIN right after the last inherited byte";
  auto beyond = Request::with("x");
  engine->send(h, &beyond->nbl);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 1u);
  EXPECT_EQ(sends[0].status, Status::invalid_state) << "nothing after the FIN";
  peer(5000, 2501, ACK);
  EXPECT_EQ(tcb().state, TcpState::fin_wait_2);
  EXPECT_EQ(host.of(HR::send).size(), 3u) << "both inherited sends complete";
}

TEST_F(Contract, C3_InheritedReceiveDataIsDeliveredFirst) {
  OffloadState s = default_state(flow);
  s.delegated.receive_data = {'o', 'l', 'd'};
  h = offload(s);
  auto r = Request::buffer(6);
  engine->receive(h, &r->nbl);
  EXPECT_TRUE(host.of(HR::receive).empty()) << "3 of 6 bytes, no PSH yet";
  peer(5000, 1000, ACK | PSH, "new");
  ASSERT_EQ(host.of(HR::receive).size(), 1u);
  EXPECT_EQ(r->filled(), "oldnew");
}

TEST_F(Contract, C4_NeverOffloadedInClosedListenSynOrTimeWait) {
  for (TcpState st : {TcpState::closed, TcpState::listen, TcpState::syn_sent, TcpState::syn_received,
                      TcpState::time_wait}) {
    OffloadState s = default_state(flow);
    s.delegated.state = st;
    EXPECT_EQ(offload(s, Status::invalid_state).value, 0u) << to_string(st);
  }
  expect_silence();
}

// ------------------------------------------------------------------- send

TEST_F(Contract, C5_SendsGoOutFifoWithinAndAcrossChains) {
  offload_default();
  auto a = Request::with("AAAA");
  auto b = Request::with("BBBB");
  auto c = Request::with("CCCC");
  a->nbl.next = &b->nbl;
  engine->send(h, &a->nbl);
  engine->send(h, &c->nbl);
  std::string wire_bytes;
  for (const Seg& s : drain()) wire_bytes += s.payload;
  EXPECT_EQ(wire_bytes, "AAAABBBBCCCC");
}

TEST_F(Contract, C6_SendCompletesOnlyWhenAckedWithBytesAndDataStart) {
  offload_default();
  auto r = Request::with(std::string(3000, 'x'));
  engine->send(h, &r->nbl);
  std::vector<Seg> segs = drain();
  ASSERT_EQ(segs.size(), 3u);  // 1448 + 1448 + 104 (MSS less the timestamp option)
  EXPECT_EQ(segs[0].payload.size(), 1448u);
  EXPECT_TRUE(host.of(HR::send).empty()) << "sent is not done";
  peer(5000, 1000 + 1448, ACK);
  EXPECT_TRUE(host.of(HR::send).empty()) << "partly ACKed is not done";
  peer(5000, 1000 + 3000, ACK);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 1u);
  EXPECT_EQ(sends[0].status, Status::success);
  EXPECT_EQ(sends[0].bytes, 3000u);
  EXPECT_EQ(r->advanced(), 3000u);
  EXPECT_EQ(r->nb.data_length, 0u);
}

TEST_F(Contract, C6_CompletionsAreBatched) {
  offload_default();
  auto a = Request::with("aa");
  auto b = Request::with("bb");
  engine->send(h, &a->nbl);
  engine->send(h, &b->nbl);
  drain();
  peer(5000, 1004, ACK);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 2u);
  EXPECT_EQ(sends[0].batch, sends[1].batch) << "one callback for both";
  EXPECT_EQ(sends[0].nbl, &a->nbl);
  EXPECT_EQ(sends[1].nbl, &b->nbl);
}

TEST_F(Contract, C7_AfterAFailedRequestLaterOnesFailUnsentAtMostOnePartial) {
  offload_default();
  auto a = Request::with(std::string(2000, 'a'));
  auto b = Request::with(std::string(500, 'b'));
  auto c = Request::with(std::string(500, 'c'));
  a->nbl.next = &b->nbl;
  b->nbl.next = &c->nbl;
  engine->send(h, &a->nbl);
  drain();
  peer(5000, 1000 + 1448, ACK);
  peer(5000, 1000 + 1448, RST);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 3u);
  for (const auto& s : sends) EXPECT_EQ(s.status, Status::request_aborted);
  EXPECT_EQ(sends[0].bytes, 1448u);
  EXPECT_EQ(a->advanced(), 1448u);
  EXPECT_EQ(sends[1].bytes, 0u);
  EXPECT_EQ(sends[2].bytes, 0u);
  // And a send after the abort completes at once, unsent.
  auto d = Request::with("late");
  EXPECT_EQ(engine->send(h, &d->nbl), Status::pending);
  EXPECT_EQ(d->nbl.status, Status::request_aborted);
  expect_silence();
}

TEST_F(Contract, C8_PshAtRequestBoundariesDfAndIpIdRange) {
  offload_default();
  auto a = Request::with(std::string(100, 'a'));
  auto b = Request::with(std::string(3000, 'b'));
  a->nbl.next = &b->nbl;
  engine->send(h, &a->nbl);
  std::vector<Seg> segs = drain();
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_TRUE(segs[0].has(PSH)) << "request a ends inside the first segment";
  EXPECT_FALSE(segs[1].has(PSH));
  EXPECT_TRUE(segs[2].has(PSH)) << "request b ends the last segment";
  for (const Seg& s : segs) {
    EXPECT_TRUE(s.df);
    EXPECT_GE(s.ip_id, 0x8000);
  }
}

// ---------------------------------------------------------------- receive

TEST_F(Contract, C9_PostedReceivesFillFifoBeforeIndications) {
  offload_default();
  auto r1 = Request::buffer(10);
  auto r2 = Request::buffer(10);
  r1->nbl.next = &r2->nbl;
  engine->receive(h, &r1->nbl);
  peer(5000, 1000, ACK, "0123456789abcde");  // no PSH
  auto recs = host.of(HR::receive);
  ASSERT_EQ(recs.size(), 1u) << "the full one completes; the partial one waits";
  EXPECT_EQ(r1->filled(), "0123456789");
  EXPECT_TRUE(host.of(HR::indicate).empty()) << "posted receives take priority";
  // Push mode: the push timer completes the partial one.
  advance(250);
  recs = host.of(HR::receive);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(r2->filled(), "abcde");
}

TEST_F(Contract, C9_PshCompletesAPushModeReceiveNoPushWaitsForFull) {
  offload_default();
  auto push = Request::buffer(10);
  engine->receive(h, &push->nbl);
  peer(5000, 1000, ACK | PSH, "abc");
  ASSERT_EQ(host.of(HR::receive).size(), 1u);
  EXPECT_EQ(push->filled(), "abc");

  auto nopush = Request::buffer(6, kReceiveNoPush);
  engine->receive(h, &nopush->nbl);
  peer(5003, 1000, ACK | PSH, "def");
  advance(1000);
  EXPECT_EQ(host.of(HR::receive).size(), 1u) << "no-push: only when full";
  peer(5006, 1000, ACK | PSH, "ghi");
  ASSERT_EQ(host.of(HR::receive).size(), 2u);
  EXPECT_EQ(nopush->filled(), "defghi");
}

TEST_F(Contract, C9_ZeroByteReceiveCompletes) {
  offload_default();
  auto zero = Request::buffer(0);
  engine->receive(h, &zero->nbl);
  peer(5000, 1000, ACK | PSH, "x");
  auto recs = host.of(HR::receive);
  ASSERT_GE(recs.size(), 1u);
  EXPECT_EQ(recs[0].nbl, &zero->nbl);
  EXPECT_EQ(recs[0].status, Status::success);
  EXPECT_EQ(recs[0].bytes, 0u);
}

TEST_F(Contract, C10_IndicatedDataAcceptedInPartStaysBufferedAndShrinksTheWindow) {
  offload_default();
  host.accept = [](uint32_t offered) { return offered / 2; };
  peer(5000, 1000, ACK | PSH, "0123456789");
  EXPECT_EQ(host.indicated, "01234");
  // ACKed although not all delivered; the window is 5 bytes smaller.
  advance(50);
  std::vector<Seg> acks = drain();
  ASSERT_FALSE(acks.empty());
  EXPECT_EQ(acks.back().ack, 5010u);
  EXPECT_EQ(tcb().rx_buffered.bytes, 5u);
  // No more indications until a receive is posted; it gets the rest.
  peer(5010, 1000, ACK | PSH, "xyz");
  EXPECT_EQ(host.indicated, "01234");
  auto r = Request::buffer(8);
  engine->receive(h, &r->nbl);
  EXPECT_EQ(r->filled(), "56789xyz");
}

TEST_F(Contract, C10_NothingAcceptedMeansEverythingBuffered) {
  offload_default();
  host.accept = [](uint32_t) { return 0u; };
  peer(5000, 1000, ACK, "hello");
  EXPECT_EQ(tcb().rx_buffered.bytes, 5u);
  advance(50);
  std::vector<Seg> acks = drain();
  ASSERT_FALSE(acks.empty());
  EXPECT_EQ(acks.back().ack, 5005u) << "buffered data is ACKed (C-10)";
}

// ------------------------------------------------------------- disconnect

TEST_F(Contract, C11_GracefulFinRidesOnTheLastDataSegmentAndReceivingGoesOn) {
  offload_default();
  auto d = Request::with("bye");
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  Seg s = next();
  EXPECT_EQ(s.payload, "bye");
  EXPECT_TRUE(s.has(FIN | ACK));
  EXPECT_EQ(tcb().state, TcpState::fin_wait_1);
  peer(5000, 1003, ACK);  // data ACKed, FIN not yet
  EXPECT_TRUE(host.of(HR::disconnect).empty());
  peer(5000, 1004, ACK);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].status, Status::success);
  EXPECT_EQ(dc[0].bytes, 3u);
  EXPECT_EQ(d->advanced(), 3u);
  EXPECT_EQ(tcb().state, TcpState::fin_wait_2);
  // Only the send half is closed.
  peer(5000, 1004, ACK | PSH, "still here");
  EXPECT_EQ(host.indicated, "still here");
}

TEST_F(Contract, C11_OutstandingSendsCompleteFirstInOrder) {
  offload_default();
  auto a = Request::with("first");
  engine->send(h, &a->nbl);
  auto d = Request::with("last");
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  std::string bytes;
  for (const Seg& s : drain()) bytes += s.payload;
  EXPECT_EQ(bytes, "firstlast");
  peer(5000, 1000 + 9 + 1, ACK);
  const int send_at = host.index_of([](const HR& r) { return r.kind == HR::send; });
  const int disc_at = host.index_of([](const HR& r) { return r.kind == HR::disconnect; });
  ASSERT_GE(send_at, 0);
  ASSERT_GE(disc_at, 0);
  EXPECT_LT(send_at, disc_at);
}

TEST_F(Contract, C12_RstBeforeTheFinAckAbortsWithTheBytesAckedSoFar) {
  offload_default();
  auto d = Request::with(std::string(3000, 'z'));
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  drain();
  peer(5000, 1000 + 1448, ACK);
  peer(5000, 1000 + 1448, RST);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].status, Status::request_aborted);
  EXPECT_EQ(dc[0].bytes, 1448u);
  EXPECT_EQ(d->advanced(), 1448u);
  EXPECT_EQ(host.count_events(EventKind::abort), 1);
}

TEST_F(Contract, C12_TerminateDuringAPendingDisconnectCompletesUploadInProgress) {
  offload_default();
  auto d = Request::with("data");
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  drain();
  EXPECT_EQ(engine->terminate(h), Status::pending);
  engine->poll(now_us);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].status, Status::upload_in_progress);
  EXPECT_EQ(dc[0].bytes, 0u);
  const int disc_at = host.index_of([](const HR& r) { return r.kind == HR::disconnect; });
  const int term_at = host.index_of([](const HR& r) { return r.kind == HR::terminate; });
  EXPECT_LT(disc_at, term_at) << "the disconnect completes before the terminate";
}

TEST_F(Contract, C13_AbortiveCompletesEverySendAbortedBeforeItselfAndSendsRst) {
  offload_default();
  auto a = Request::with(std::string(2000, 'a'));
  auto b = Request::with(std::string(2000, 'b'));
  engine->send(h, &a->nbl);
  engine->send(h, &b->nbl);
  drain();
  auto d = Request::buffer(0);
  engine->disconnect(h, &d->nbl, DisconnectKind::abortive);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 2u);
  for (const auto& s : sends) EXPECT_EQ(s.status, Status::request_aborted);
  EXPECT_EQ(sends[0].batch, sends[1].batch) << "status written on each list of one chain";
  const int send_at = host.index_of([](const HR& r) { return r.kind == HR::send; });
  const int disc_at = host.index_of([](const HR& r) { return r.kind == HR::disconnect; });
  EXPECT_LT(send_at, disc_at);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].status, Status::success) << "the RST was sent";
  Seg rst = next();
  EXPECT_TRUE(rst.has(RST));
  EXPECT_EQ(rst.seq, tcb().snd.nxt);
  // Received segments are no longer processed or ACKed.
  peer(5000, 1000, ACK | PSH, "late data");
  expect_silence();
  EXPECT_TRUE(host.indicated.empty());
}

TEST_F(Contract, C13_PendingGracefulCompletesAbortedFirst) {
  offload_default();
  auto g = Request::with("g");
  engine->disconnect(h, &g->nbl, DisconnectKind::graceful);
  drain();
  auto a = Request::buffer(0);
  engine->disconnect(h, &a->nbl, DisconnectKind::abortive);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 2u);
  EXPECT_EQ(dc[0].nbl, &g->nbl);
  EXPECT_EQ(dc[0].status, Status::request_aborted);
  EXPECT_EQ(dc[1].nbl, &a->nbl);
  EXPECT_EQ(dc[1].status, Status::success);
}

// DESIGN.md buffers with C-13: an aborted send completes only once no mbuf
// references its memory; until the NIC let go of its frames nothing
// completes, and a send posted meanwhile completes after it (C-6 FIFO).
TEST_F(Contract, C13_AbortedSendsCompleteOnlyOnceTheNicReleasedTheirMemory) {
  offload_default();
  auto a = Request::with(std::string(2000, 'a'));
  engine->send(h, &a->nbl);
  engine->poll(now_us);
  ASSERT_FALSE(wire.frames.empty()) << "a's segments are still at the NIC";
  auto d = Request::buffer(0);
  engine->disconnect(h, &d->nbl, DisconnectKind::abortive);
  auto b = Request::with("b");
  engine->send(h, &b->nbl);
  engine->poll(now_us);
  EXPECT_TRUE(host.of(HR::send).empty()) << "completed while an mbuf still held a's memory";
  EXPECT_TRUE(host.of(HR::disconnect).empty());
  std::vector<Seg> segs = drain();  // the NIC sends them and frees the mbufs
  ASSERT_FALSE(segs.empty());
  EXPECT_TRUE(segs.back().has(RST)) << "the RST went out at once";
  engine->poll(now_us);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 2u);
  EXPECT_EQ(sends[0].nbl, &a->nbl);
  EXPECT_EQ(sends[1].nbl, &b->nbl);
  for (const auto& s : sends) EXPECT_EQ(s.status, Status::request_aborted);
  auto dc = host.of(HR::disconnect);
  ASSERT_EQ(dc.size(), 1u);
  EXPECT_EQ(dc[0].status, Status::success);
  EXPECT_LT(host.index_of([](const HR& r) { return r.kind == HR::send; }),
            host.index_of([](const HR& r) { return r.kind == HR::disconnect; }));
}

// The peer's RST (C-17) waits the same way; the ABORT event follows the
// completions.
TEST_F(Contract, C17_AbortEventFollowsSendsReleasedByTheNic) {
  offload_default();
  auto a = Request::with(std::string(3000, 'a'));
  engine->send(h, &a->nbl);
  engine->poll(now_us);
  ASSERT_FALSE(wire.frames.empty());
  peer(5000, 1000, RST);
  EXPECT_TRUE(host.of(HR::send).empty());
  EXPECT_EQ(host.count_events(EventKind::abort), 0);
  wire.clear();
  engine->poll(now_us);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 1u);
  EXPECT_EQ(sends[0].status, Status::request_aborted);
  EXPECT_EQ(host.count_events(EventKind::abort), 1);
}

TEST_F(Contract, C14_DisconnectCompletionReturnsOnlyItsOwnRequest) {
  offload_default();
  auto s = Request::with("s");
  engine->send(h, &s->nbl);
  auto d = Request::with("d");
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  drain();
  peer(5000, 1003, ACK);
  for (const auto& r : host.of(HR::disconnect)) EXPECT_EQ(r.nbl, &d->nbl);
  for (const auto& r : host.of(HR::send)) EXPECT_NE(r.nbl, &d->nbl);
  EXPECT_EQ(host.of(HR::send).size(), 1u);
  EXPECT_EQ(host.of(HR::disconnect).size(), 1u);
}

TEST_F(Contract, C15_DisconnectFailsOnlyWhenUploadingOrAborted) {
  offload_default();
  peer(5000, 1000, RST);
  auto d = Request::buffer(0);
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  EXPECT_EQ(d->nbl.status, Status::request_aborted);

  Flow f2 = flow;
  f2.remote_port = 40001;
  ConnectionHandle h2 = offload(default_state(f2));
  engine->terminate(h2);
  auto d2 = Request::buffer(0);
  engine->disconnect(h2, &d2->nbl, DisconnectKind::abortive);
  EXPECT_EQ(d2->nbl.status, Status::upload_in_progress);
}

// ----------------------------------------------------------------- events

TEST_F(Contract, C16_DisconnectIndicatedOnlyAfterEveryByteBeforeTheFinWasConsumed) {
  offload_default();
  host.accept = [](uint32_t) { return 0u; };
  peer(5000, 1000, ACK | FIN, "tail");
  EXPECT_EQ(host.count_events(EventKind::disconnect), 0) << "data before the FIN not consumed yet";
  EXPECT_EQ(tcb().state, TcpState::close_wait);
  auto r = Request::buffer(16);
  engine->receive(h, &r->nbl);
  EXPECT_EQ(r->filled(), "tail");
  EXPECT_EQ(host.count_events(EventKind::disconnect), 1);
  const int rcv_at = host.index_of([](const HR& x) { return x.kind == HR::receive; });
  const int ev_at = host.index_of([](const HR& x) { return x.kind == HR::event && x.event_kind == EventKind::disconnect; });
  EXPECT_LT(rcv_at, ev_at);
  // Later receive posts complete INVALID_STATE; sending goes on.
  auto late = Request::buffer(4);
  engine->receive(h, &late->nbl);
  EXPECT_EQ(late->nbl.status, Status::invalid_state);
  auto s = Request::with("reply");
  engine->send(h, &s->nbl);
  std::vector<Seg> segs = drain();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().payload, "reply");
  EXPECT_EQ(segs.back().ack, 5005u) << "the FIN is ACKed";
}

TEST_F(Contract, C17_AcceptableRstAbortsEverything) {
  offload_default();
  auto s = Request::with("s");
  engine->send(h, &s->nbl);
  auto r = Request::buffer(8);
  engine->receive(h, &r->nbl);
  auto d = Request::with("d");
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  drain();
  peer(5000, 1000, RST);
  EXPECT_EQ(host.count_events(EventKind::abort), 1);
  EXPECT_EQ(host.of(HR::send).at(0).status, Status::request_aborted);
  EXPECT_EQ(host.of(HR::receive).at(0).status, Status::request_aborted);
  EXPECT_EQ(host.of(HR::disconnect).at(0).status, Status::request_aborted);
  expect_silence();  // never a RST for a RST
}

TEST_F(Contract, C17_RstInWindowButNotAtRcvNxtGetsOneChallengeAck) {
  offload_default();
  peer(5100, 1000, RST);
  EXPECT_EQ(host.count_events(EventKind::abort), 0);
  Seg ack = next();
  EXPECT_TRUE(ack.has(ACK));
  EXPECT_FALSE(ack.has(RST));
  EXPECT_EQ(ack.ack, 5000u);
  EXPECT_EQ(ack.seq, 1000u);
  expect_silence();
  EXPECT_EQ(tcb().state, TcpState::established);
}

TEST_F(Contract, C17_RstOutOfWindowIsDropped) {
  offload_default();
  peer(5000 + 200000, 1000, RST);
  peer(4000, 1000, RST);
  expect_silence();
  EXPECT_EQ(host.count_events(EventKind::abort), 0);
  EXPECT_EQ(engine->stats().rst_in_ignored, 2u);
}

TEST_F(Contract, C18_RetrieveTimeoutExpirationAtTheRetransmissionLimit) {
  OffloadState s = default_state(flow);
  s.cached.max_retransmissions = 3;
  h = offload(s);
  auto r = Request::with("unanswered");
  engine->send(h, &r->nbl);
  drain();
  int retransmissions = 0;
  for (int i = 0; i < 60 && host.count_events(EventKind::retrieve) == 0; ++i) {
    advance(1000);
    retransmissions += static_cast<int>(drain().size());
  }
  EXPECT_EQ(retransmissions, 3) << "three retransmissions, then the limit";
  const int at = host.index_of([](const HR& x) { return x.kind == HR::event && x.event_kind == EventKind::retrieve; });
  ASSERT_GE(at, 0);
  EXPECT_EQ(host.records[at].reason, RetrieveReason::timeout_expiration);
  EXPECT_TRUE(host.of(HR::send).empty()) << "the send waits for the host's terminate";
  engine->terminate(h);
  engine->poll(now_us);
  ASSERT_NE(host.terminated.send_data, nullptr);
  EXPECT_EQ(host.terminated.send_data, &r->nbl);
}

TEST_F(Contract, C18_SendBacklogChangeIsIndicated) {
  offload_default();
  auto r = Request::with(std::string(1000, 'q'));
  engine->send(h, &r->nbl);
  drain();
  peer(5000, 2000, ACK);
  EXPECT_GE(host.count_events(EventKind::send_backlog_change), 1);
  const int at = host.index_of([](const HR& x) { return x.kind == HR::event && x.event_kind == EventKind::send_backlog_change; });
  EXPECT_GE(host.records[at].value, 65536u);
}

TEST_F(Contract, C19_TimeWaitReleasesTheStateAndAnswersForTwoMsl) {
  offload_default();
  auto d = Request::buffer(0);
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  Seg fin = next();
  EXPECT_TRUE(fin.has(FIN));
  peer(5000, 1001, ACK | FIN);  // ACKs our FIN and sends its own
  Seg ack = next();
  EXPECT_EQ(ack.ack, 5001u);
  EXPECT_EQ(tcb().state, TcpState::time_wait);
  EXPECT_TRUE(tcb().flags.closed) << "full state released";
  EXPECT_EQ(engine->time_wait_entries(), 1u);
  // A retransmitted FIN is ACKed from the compact entry.
  peer(5000, 1001, ACK | FIN);
  Seg again = next();
  EXPECT_EQ(again.ack, 5001u);
  EXPECT_EQ(again.seq, 1001u);
  EXPECT_EQ(unmatched_count, 0);
  advance(60'001);  // 2 * MSL (30 s)
  EXPECT_EQ(engine->time_wait_entries(), 0u);
  peer(5000, 1001, ACK | FIN);
  EXPECT_EQ(unmatched_count, 1) << "after 2·MSL the slow path answers";
}

TEST_F(Contract, C9_AReceivePostedAfterPushedDataCompletesAtOnce) {
  // RFC 9293 §3.9.1: data up to a PSH is delivered promptly. Data that
  // arrived with PSH before any receive was posted (the host took nothing
  // indicated) fills the receive posted later, which completes at once, not
  // on the push timer. Without PSH the partly filled receive waits for it.
  offload_default();
  host.accept = [](uint32_t) { return 0u; };
  peer(5000, 1000, ACK, "abc");          // no PSH
  peer(5003, 1000, ACK | PSH, "defgh");  // the push point
  drain();
  auto r = Request::buffer(100);
  ASSERT_EQ(engine->receive(h, &r->nbl), Status::pending);
  engine->poll(now_us);
  const auto got = host.of(HR::receive);
  ASSERT_EQ(got.size(), 1u) << "completed at once";
  EXPECT_EQ(got[0].status, Status::success);
  EXPECT_EQ(r->filled(), "abcdefgh");
  // Data without PSH: a receive posted afterwards is filled and waits.
  peer(5008, 1000, ACK, "ij");
  drain();
  auto r2 = Request::buffer(100);
  ASSERT_EQ(engine->receive(h, &r2->nbl), Status::pending);
  engine->poll(now_us);
  EXPECT_EQ(host.of(HR::receive).size(), 1u) << "no push point: the push timer decides";
  advance(250);
  ASSERT_EQ(host.of(HR::receive).size(), 2u);
  EXPECT_EQ(r2->filled(), "ij");
}

TEST_F(Contract, C9_C20_AReceivePostedAfterTheCloseTakesTheBufferedDataAtOnce) {
  // Data the host left buffered (C-10) outlives the close (C-20). A push-mode
  // receive posted in TIME_WAIT is filled with it and completes at once (the
  // FIN came after that data); no timer is armed for a connection that has
  // none any more. Such a node stayed linked in the wheel after the release,
  // and the next connection offloaded into the slot broke the wheel's list:
  // the worker looped in the wheel forever, or fired a timer for garbage
  // (found by chimney-bench remote against chimneyd).
  offload_default();
  host.accept = [](uint32_t) { return 0u; };  // the host takes nothing indicated
  peer(5000, 1000, ACK | PSH, "hello");
  auto d = Request::buffer(0);
  engine->disconnect(h, &d->nbl, DisconnectKind::graceful);
  drain();
  peer(5005, 1001, ACK | FIN);  // ACKs our FIN and sends its own
  ASSERT_EQ(tcb().state, TcpState::time_wait);
  ASSERT_TRUE(tcb().flags.closed);
  auto r = Request::buffer(100);
  ASSERT_EQ(engine->receive(h, &r->nbl), Status::pending);
  const auto got = host.of(HR::receive);
  ASSERT_EQ(got.size(), 1u) << "completes at once, no push timer";
  EXPECT_EQ(got[0].status, Status::success);
  EXPECT_EQ(r->filled(), "hello");
  ASSERT_FALSE(tcb().timer.linked()) << "no timer for a closed connection";
  EXPECT_EQ(host.count_events(EventKind::disconnect), 1) << "C-16: the FIN once the data was consumed";
  ASSERT_EQ(engine->terminate(h), Status::pending);
  engine->poll(now_us);
  ASSERT_EQ(host.of(HR::terminate).size(), 1u);
  // The slot serves the next connection; its timers run.
  flow.remote_port += 1;
  offload_default();
  auto s = Request::with("x");
  engine->send(h, &s->nbl);
  drain();
  advance(1500);  // an RTO: the unanswered segment goes again
  EXPECT_GE(engine->stats().rto_expirations, 1u);
  // The frames at the "NIC" reference `s`'s memory: free them while it lives.
  EXPECT_FALSE(drain().empty());
  ASSERT_EQ(engine->terminate(h), Status::pending);
  engine->poll(now_us);
}

TEST_F(Contract, C20_ResourcesStayValidUntilTerminateThenTheHandleIsReleased) {
  offload_default();
  peer(5000, 1000, RST);
  DelegatedState d;
  EXPECT_EQ(engine->query_delegated(h, &d), Status::success);
  EXPECT_EQ(d.state, TcpState::closed);
  EXPECT_EQ(engine->terminate(h), Status::pending);
  engine->poll(now_us);
  EXPECT_EQ(host.of(HR::terminate).size(), 1u);
  EXPECT_EQ(engine->query_delegated(h, &d), Status::invalid_state);
  auto r = Request::with("x");
  EXPECT_EQ(engine->send(h, &r->nbl), Status::invalid_state);
  EXPECT_EQ(engine->connections(), 0u);
}

TEST_F(Contract, C21_TerminateCompletesEverythingAndReturnsTheWholeState) {
  offload_default();
  auto s = Request::with(std::string(3000, 's'));
  engine->send(h, &s->nbl);
  drain();
  peer(5000, 1000 + 1448, ACK);
  host.accept = [](uint32_t) { return 0u; };
  peer(5000, 1000 + 1448, ACK, "undelivered");
  drain();
  // A delayed ACK is pending for this segment.
  peer(5011, 1000 + 1448, ACK, "more");
  EXPECT_EQ(engine->terminate(h), Status::pending);
  Seg ack = next();
  EXPECT_EQ(ack.ack, 5015u) << "the pending delayed ACK goes out";
  // Segments after the terminate began are not processed.
  peer(5015, 1000 + 3000, ACK | PSH, "ignored");
  engine->poll(now_us);
  auto term = host.of(HR::terminate);
  ASSERT_EQ(term.size(), 1u);
  const DelegatedState& d = host.terminated;
  EXPECT_EQ(d.snd_una, 1000u + 1448);
  EXPECT_EQ(d.rcv_nxt, 5015u);
  EXPECT_EQ(std::string(d.receive_data.begin(), d.receive_data.end()), "undeliveredmore");
  ASSERT_EQ(d.send_data, &s->nbl);
  EXPECT_EQ(s->advanced(), 1448u) << "returned from snd_una on";
  EXPECT_TRUE(host.of(HR::send).empty());
}

// ---------------------------------------------------------------- copied payload

// A device that reads only the EAL's own memory (virtio-user) gets copies of
// the payload, not mbufs attached to the host's buffer: the same bytes on the
// wire, and the send completes on the ACK (C-6) with nothing holding it.
class CopiedPayload : public EngineTest {
 protected:
  void SetUp() override {
    static int n = 0;
    tcp::EngineConfig cfg = config("copy" + std::to_string(n++));
    cfg.copy_payload = true;
    engine = std::make_unique<tcp::Engine>(cfg, host, wire);
    engine->poll(now_us);
  }
};

TEST_F(CopiedPayload, C6_SegmentsCarryCopiesAndTheSendCompletesOnTheAck) {
  OffloadState st = default_state(flow);
  st.constant.remote_mss = 8960;  // jumbo segments: a copy spans several mbufs
  st.path.path_mtu = 9000;
  h = offload(st);
  std::string data(16000, '\0');  // within the initial window of two segments
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + i / 251);
  auto r = Request::with(data);
  engine->send(h, &r->nbl);
  engine->poll(now_us);
  ASSERT_FALSE(wire.frames.empty());
  bool chained = false;
  for (rte_mbuf* m : wire.frames) {
    chained = chained || m->nb_segs > 1;
    for (rte_mbuf* seg = m; seg != nullptr; seg = seg->next)
      EXPECT_FALSE(RTE_MBUF_HAS_EXTBUF(seg)) << "payload attached, not copied";
  }
  EXPECT_TRUE(chained) << "no segment needed a second mbuf";
  std::string wire_bytes;
  for (const Seg& seg : drain()) wire_bytes += seg.payload;
  EXPECT_TRUE(wire_bytes == data) << wire_bytes.size() << " bytes on the wire, not the " << data.size()
                                  << " sent (or different ones)";
  peer(5000, 1000 + 16000, ACK);
  auto sends = host.of(HR::send);
  ASSERT_EQ(sends.size(), 1u);
  EXPECT_EQ(sends[0].status, Status::success);
  EXPECT_EQ(sends[0].bytes, 16000u);
}

}  // namespace chimney::test
