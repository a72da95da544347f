#!/usr/bin/env node
// A smartroute mesh peer in Node.js, written from docs/PROTOCOL.md (protocol version 3).
//
//   node peer.js --cluster chat --seed tcp://127.0.0.1:7001 --subscribe node:inbox
//               [--host 127.0.0.1] [--port 0] [--name node-peer] [--secret S]
//
// It prints one JSON object per line on stdout (events: ready, peer_up, peer_down,
// subscriber_up, subscriber_down, message, sent, reply, stats) and reads commands, one JSON
// object per line, on stdin:
//   {"cmd": "send", "mode": "EQ", "target": "py:sink", "body": "hi", "count": 3, "id": 1}
//   {"cmd": "request", "target": "svc:echo", "body": "ping", "id": 2}
//   {"cmd": "subscribe", "name": "node:more", "meta": {}}     {"cmd": "stats"}
//   (test hooks: "silent": true on subscribe sends no DELTA; --test-drop-deltas drops received ones)
//   {"cmd": "close"} (BYE to every peer, then exit; so does end of stdin or SIGTERM)
// Every local subscriber answers a request with {"echo": <body>, "subscriber": <its name>}.

import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { Dealer, Router } from "zeromq";
import { curveClusterKeys, curveNodeKeys } from "./curve.js";
import {
  CONTROL_KINDS, KIND, KIND_NAME, MAX_BATCH_BYTES, MAX_NAME_LENGTH, MAX_PEERS, MODE,
  MODE_NAME, PROTOCOL_VERSION, STATUS, STATUS_NAME, big, decodeBatch, decodeBody, encodeBatch,
  encodeBody, encodeRecord, fromJSON, isEndpoint, parseRecord, toJSON, typeName,
} from "./wire.js";

// ---- timings (section 16; seconds in the spec, milliseconds here) ------------------------
const TICK_MS = 50;
const HEARTBEAT_MS = 200; // under heartbeat_interval_s (0.25 s), so that a late tick still keeps it
const DEAD_AFTER_MS = 20000;
const UNREACHABLE_AFTER_MS = 250;
const CONNECT_TIMEOUT_MS = 5000;
const HELLO_RETRY_MS = 1000;
const PEER_EXCHANGE_MS = 2000;
const SNAPSHOT_RETRY_MS = 1000;
const REFUSAL_MEMORY_MS = 10000;
const SEED_RETRY_MS = 1000;
const RESEND_INTERVAL_MS = 100;
const CLOSE_LINGER_MS = 500;
const REQUEST_TIMEOUT_MS = 5000;
const SEND_WINDOW_BATCHES = 64;
const SEND_WINDOW_BYTES = 8388608;
const ACK_EVERY_BATCHES = SEND_WINDOW_BATCHES / 4;

// ---- command line ---------------------------------------------------------------------------
function parseArgs(argv) {
  const opts = { cluster: "smartroute", seeds: [], subscribe: [], host: "127.0.0.1", port: 0,
    name: `node-peer:${process.pid}`, secret: null, dropDeltas: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === "--cluster") opts.cluster = value;
    else if (flag === "--seed") opts.seeds.push(value);
    else if (flag === "--subscribe") opts.subscribe.push(value);
    else if (flag === "--host") opts.host = value;
    else if (flag === "--port") opts.port = Number(value);
    else if (flag === "--name") opts.name = value;
    else if (flag === "--secret") opts.secret = value;
    else if (flag === "--test-drop-deltas") { opts.dropDeltas = true; continue; } // a test hook: every DELTA is "lost"
    else throw new Error(`unknown option ${flag}`);
    i++;
  }
  return opts;
}
const opts = parseArgs(process.argv.slice(2));

const out = (event) => process.stdout.write(toJSON(event) + "\n");
const log = (...args) => process.stderr.write(args.join(" ") + "\n");
const hex = (b) => Buffer.from(b).toString("hex");
const now = () => Number(process.hrtime.bigint() / 1000000n); // monotonic ms
const nowUs = () => process.hrtime.bigint() / 1000n; // monotonic µs, for HEARTBEAT time_us

// ---- who we are (sections 2.4, 4.1, 14) -------------------------------------------------------
let curve = null; // with a secret: {server: cluster keys, own: our keys}
let nodeId;
if (opts.secret !== null) {
  const own = curveNodeKeys(); // the node id is derived from our public key
  curve = { server: curveClusterKeys(opts.secret, opts.cluster), own };
  nodeId = own.nodeId;
} else {
  // Random, and never a first byte of 0: ZeroMQ reserves routing ids that start with one.
  do nodeId = randomBytes(16); while (nodeId[0] === 0);
}
const me = {
  nodeId, hex: hex(nodeId), cluster: opts.cluster, name: opts.name,
  incarnation: BigInt(Date.now()) * 1000n, // µs since the epoch: grows at every start
  endpoint: null, // set once bound; always concrete (we cannot resolve wildcards, README)
};

// Our table (section 9.1): version +1 per change, sub_ids from 1, never reused.
const table = { version: 0, nextSubId: 1, entries: [] }; // entries: {subId, name, meta}
const entriesWire = () => table.entries.map((e) => [e.subId, e.name, e.meta]);

let linkCounter = 0; // link numbers count from 1 and are never reused
let msgSeq = 0n; // MSG seq: our message counter, from 1
let nextStream = randomBytes(4).readUInt32BE(0); // stream ids: a random start, counting up
let nextRequestId = randomBytes(8).readBigUInt64BE(0) >> 2n; // a random 62-bit start
const peers = new Map(); // node id hex -> Peer
const dials = new Map(); // endpoint -> pending dial {link, since, lastHello}
const receivers = new Map(); // sender node id hex -> {incarnation, stream, taken, acked, lastResendAsk}
const refused = new Map(); // endpoint -> ms until which we do not dial it
const misdirectedFrom = new Set(); // senders whose misdirected batch we logged (once each)
const selfEndpoints = new Set(); // endpoints that turned out to be ourselves
const requests = new Map(); // request id (BigInt) -> {cmdId, nodes: Set<hex>, timer}
const anyCursor = new Map(); // round-robin position per ANY target
let closing = false;

// ---- links (section 2.3): one DEALER per peer, send-only ---------------------------------------
class Link {
  constructor(endpoint) {
    this.endpoint = endpoint;
    this.number = ++linkCounter;
    const routingId = Buffer.alloc(20);
    me.nodeId.copy(routingId, 0);
    routingId.writeUInt32BE(this.number, 16);
    const options = {
      heartbeatInterval: 250, heartbeatTimeout: 1000, heartbeatTimeToLive: 1000,
      sendHighWaterMark: 1000, reconnectInterval: 10, reconnectMaxInterval: 1000, linger: 0,
      ipv6: endpoint.startsWith("tcp://["),
    };
    if (curve !== null) {
      Object.assign(options, { curveServerKey: curve.server.publicZ85,
        curvePublicKey: curve.own.publicZ85, curveSecretKey: curve.own.secretZ85 });
    }
    this.sock = new Dealer(options);
    // zeromq.js types routingId as a string; its native setter also takes a Buffer, which
    // is what a 20-byte binary routing id needs (ZMQ_ROUTING_ID = 5).
    this.sock.setStringOption(5, routingId);
    this.up = false; // handshake done and not disconnected since
    this.everUp = false;
    this.downSince = now();
    this.refusedAfterUp = false; // a redial found nobody listening (section 11)
    this.onUp = null; // called when the connection comes back up
    this.queue = [];
    this.sending = false;
    this.closed = false;
    this.sock.events.on("handshake", () => {
      const wasDown = this.everUp && !this.up;
      this.up = true; this.everUp = true; this.downSince = null; this.refusedAfterUp = false;
      if (wasDown && this.onUp) this.onUp();
    });
    this.sock.events.on("disconnect", () => {
      if (this.up) { this.up = false; this.downSince = now(); }
    });
    this.sock.events.on("close", () => { if (!this.up && this.everUp) this.refusedAfterUp = true; });
    this.sock.connect(endpoint);
  }

  // zeromq.js allows one send in flight per socket: queue, and pump in order.
  send(bytes) {
    if (this.closed) return;
    this.queue.push(bytes);
    if (!this.sending) this.pump();
  }
  async pump() {
    this.sending = true;
    while (this.queue.length && !this.closed) {
      try { await this.sock.send(this.queue.shift()); } catch (e) { if (!this.closed) log("send:", e.message); }
    }
    this.sending = false;
  }
  close(lingerMs = 0) {
    if (this.closed) return;
    const finish = () => {
      this.closed = true;
      try { this.sock.linger = lingerMs; this.sock.close(); } catch { /* already closed */ }
    };
    // Let queued frames (a BYE, a REFUSE) reach libzmq first; linger then lets them leave.
    if (this.queue.length || this.sending) {
      const started = now();
      const wait = () => ((!this.queue.length && !this.sending) || now() - started > lingerMs
        ? finish() : setTimeout(wait, 5));
      wait();
    } else finish();
  }
}

// ---- sending records ---------------------------------------------------------------------
function helloFields(reply, via, echo) {
  return { protocol: PROTOCOL_VERSION, cluster: me.cluster, node_id: me.nodeId,
    incarnation: me.incarnation, endpoint: me.endpoint, name: me.name, reply, via, echo,
    version: table.version, entries: entriesWire() };
}
// Control records (HELLO, REFUSE, BYE) and records for a dial not answered yet travel in an
// unsequenced batch of their own (section 5).
function sendUnsequenced(link, records) {
  link.send(encodeBatch(records.map(([kind, fields]) => encodeRecord(kind, fields))));
}

class Peer {
  constructor(hello, endpoint, link) {
    this.nodeId = hello.node_id;
    this.hex = hex(hello.node_id);
    this.incarnation = big(hello.incarnation);
    this.endpoint = endpoint;
    this.name = hello.name;
    this.link = link;
    this.aliases = new Set();
    this.leaving = false;
    this.added = now();
    this.lastHeard = now();
    this.lastHeartbeat = 0;
    this.lastPeers = now();
    this.lastHelloAnswer = 0;
    this.lastSnapshotSent = 0;
    this.snapshotAsked = 0; // when we last sent SNAPSHOT_REQUEST while waiting; 0: not waiting
    this.echo = null; // {timeUs, at}: the last HEARTBEAT time_us we got, and when
    this.heartbeatGaps = []; // ms between its HEARTBEATs (stats)
    // Our stream to this peer (section 10): a new one per peer incarnation.
    this.stream = nextStream = (nextStream + 1) >>> 0 || 1;
    this.sent = 0; // number of the last sequenced batch
    this.kept = []; // [{seq, bytes, size}] not yet acknowledged
    this.keptBytes = 0;
    this.pending = []; // encoded records waiting to go sequenced
    this.replica = { version: -1n, entries: new Map() }; // sub_id (string) -> {name, meta}
    // After a broken connection everything kept is sent again, and our last ACK of its
    // stream is due again: it may have been lost with the connection (section 10.6).
    link.onUp = () => {
      this.resendKept();
      const recv = receivers.get(this.hex);
      if (recv && recv.stream !== null) recv.acked = -1n;
    };
  }
  queue(kind, fields) { this.pending.push(encodeRecord(kind, fields)); schedule(); }
  resendKept() { for (const b of this.kept) this.link.send(b.bytes); }
  windowFull() {
    return this.kept.length >= SEND_WINDOW_BATCHES || this.keptBytes >= SEND_WINDOW_BYTES;
  }
}

// Flush at the end of a loop turn: for each peer, the due ACK, then the pending records in
// sequenced batches of at most MAX_BATCH_BYTES (the ACK rides in the first one), each kept
// until acknowledged.
let flushScheduled = false;
function schedule() {
  if (!flushScheduled) { flushScheduled = true; setImmediate(flush); }
}
function flush() {
  flushScheduled = false;
  for (const peer of peers.values()) flushPeer(peer, false);
}
function flushPeer(peer, timerTurn) {
  const recv = receivers.get(peer.hex);
  const ackDue = recv && recv.stream !== null && recv.acked !== recv.taken;
  const extra = [];
  if (ackDue && (peer.pending.length || timerTurn || recv.taken - recv.acked >= ACK_EVERY_BATCHES)) {
    extra.push(encodeRecord(KIND.ACK, { stream: recv.stream, seq: recv.taken, resend: false }));
    recv.acked = recv.taken;
  }
  if (timerTurn && now() - peer.lastHeartbeat >= HEARTBEAT_MS) {
    extra.push(heartbeatRecord(peer));
    peer.lastHeartbeat = now();
  }
  if (!peer.pending.length) {
    // A batch of only HEARTBEATs and ACKs travels unsequenced.
    if (extra.length) peer.link.send(encodeBatch(extra));
    return;
  }
  while (peer.pending.length && !peer.windowFull()) {
    const records = extra.splice(0);
    let size = records.reduce((n, r) => n + r.length, 0);
    while (peer.pending.length && (records.length === 0 || size + peer.pending[0].length <= MAX_BATCH_BYTES)) {
      const r = peer.pending.shift();
      records.push(r);
      size += r.length;
    }
    const seq = ++peer.sent;
    // Bound to the peer's incarnation (section 10.3): a successor on its endpoint drops it.
    const bytes = encodeBatch([encodeRecord(KIND.SEQ, { stream: peer.stream, seq, incarnation: peer.incarnation }), ...records]);
    peer.kept.push({ seq, bytes, size: bytes.length });
    peer.keptBytes += bytes.length;
    peer.link.send(bytes);
  }
  if (extra.length) peer.link.send(encodeBatch(extra)); // window full: the ACK still goes
}

function heartbeatRecord(peer) {
  const t = nowUs();
  const echo = peer.echo;
  return encodeRecord(KIND.HEARTBEAT, {
    incarnation: me.incarnation, version: table.version, stream: peer.stream, sent: peer.sent,
    time_us: t, echo_us: echo ? echo.timeUs : 0, held_us: echo ? t - echo.at : 0,
  });
}

// ---- dialling (section 7.1) ----------------------------------------------------------------
function knownEndpoint(endpoint) {
  for (const p of peers.values()) if (p.endpoint === endpoint || p.aliases.has(endpoint)) return true;
  return false;
}
function dial(endpoint) {
  if (closing || !isEndpoint(endpoint) || endpoint === me.endpoint || selfEndpoints.has(endpoint)) return;
  if (dials.has(endpoint) || knownEndpoint(endpoint)) return;
  if ((refused.get(endpoint) ?? 0) > now()) return;
  if (dials.size + peers.size >= 2 * MAX_PEERS) return;
  const link = new Link(endpoint);
  const dialState = { link, since: now(), lastHello: now() };
  dials.set(endpoint, dialState);
  sendUnsequenced(link, [[KIND.HELLO, helloFields(false, endpoint, "")]]);
}
function closeDial(endpoint, lingerMs = 0) {
  const d = dials.get(endpoint);
  if (d) { dials.delete(endpoint); d.link.close(lingerMs); }
}

// ---- receiving (section 6) -------------------------------------------------------------------
const stats = { malformed_frames: 0, malformed_records: 0, unknown_sender_records: 0,
  duplicate_batches: 0, gap_batches: 0, stale_batches: 0, misdirected_batches: 0, refused_peers: 0, undeliverable_messages: 0,
  malformed_bodies: 0, received_messages: 0, snapshot_requests_received: 0, snapshots_received: 0 };

const received = {}; // valid records received, by kind name
function onFrame(frames) {
  if (frames.length !== 2) { stats.malformed_frames++; return; }
  const [rid, frame] = frames;
  if (rid.length < 16) { stats.malformed_frames++; return; }
  const senderId = rid.subarray(0, 16);
  const senderHex = hex(senderId);
  let batch;
  try { batch = decodeBatch(frame); } catch { stats.malformed_frames++; return; }
  let records = batch;
  const first = batch[0];
  if (Array.isArray(first) && first[0] === KIND.SEQ) {
    const seq = parseRecord(first);
    if (seq === null) { stats.malformed_records += batch.length; return; }
    const peer = peers.get(senderHex);
    if (big(seq.incarnation) !== me.incarnation) {
      // Meant for a process that had our endpoint before us (section 10.3): not ours to take
      // nor to acknowledge; its sender counts it lost.
      stats.misdirected_batches++;
      if (!misdirectedFrom.has(senderHex) && misdirectedFrom.size < 1024) {
        misdirectedFrom.add(senderHex);
        log("dropped a batch from", senderHex.slice(0, 8), "meant for incarnation", String(seq.incarnation));
      }
      if (peer) peer.lastHeard = now();
      return;
    }
    if (peer === undefined) {
      // Not a peer (yet): dropped unacknowledged, its sender resends it later.
      stats.unknown_sender_records += batch.length; // every record, the SEQ included
      return;
    }
    peer.lastHeard = now(); // even a duplicate or a gap proves its loop alive
    if (!judge(peer, big(seq.stream), big(seq.seq))) { schedule(); return; }
    records = batch.slice(1);
  } else {
    const peer = peers.get(senderHex);
    if (peer) peer.lastHeard = now();
  }
  for (const raw of records) {
    const rec = parseRecord(raw);
    if (rec === null) { stats.malformed_records++; continue; }
    const name = KIND_NAME[rec.kind];
    received[name] = (received[name] ?? 0) + 1;
    try { handle(senderId, senderHex, rec); } catch (e) { log("error handling", KIND_NAME[rec.kind], e.stack); }
  }
  schedule();
}

// Section 10.1: stream ids count up modulo 2^32 (serial-number arithmetic).
const newer = (stream, than) => { const d = (stream - than) & 0xFFFFFFFFn; return d > 0n && d < 0x80000000n; };

// The state of a sender's stream to us, anew for each of its incarnations (section 10.3).
function receiverOf(peer) {
  let r = receivers.get(peer.hex);
  if (r === undefined || r.incarnation !== peer.incarnation) {
    r = { incarnation: peer.incarnation, stream: null, taken: 0n, acked: 0n, lastResendAsk: r ? r.lastResendAsk : 0 };
    receivers.set(peer.hex, r);
  }
  return r;
}

// Section 10.3: take the next batch of the stream; drop duplicates, gaps and stale batches.
function judge(peer, stream, seq) {
  const r = receiverOf(peer);
  if (r.stream !== stream) {
    if (r.stream !== null && !newer(stream, r.stream)) { stats.stale_batches++; return false; } // a replaced stream
    if (seq === 1n || r.stream === null) { r.stream = stream; r.taken = 0n; r.acked = 0n; }
    else { // a stream we do not follow: a gap, asked from its start
      stats.gap_batches++;
      askResend(peer, r, stream, 0n);
      return false;
    }
  }
  if (seq === r.taken + 1n) { r.taken = seq; return true; }
  if (seq <= r.taken) { stats.duplicate_batches++; r.acked = -1n; return false; } // ACK due again
  stats.gap_batches++;
  askResend(peer, r, stream, r.taken);
  return false;
}
function askResend(peer, r, stream, from) {
  if (now() - r.lastResendAsk < RESEND_INTERVAL_MS) return;
  r.lastResendAsk = now();
  peer.link.send(encodeBatch([encodeRecord(KIND.ACK, { stream, seq: from, resend: true })]));
}

function handle(senderId, senderHex, rec) {
  if (rec.kind === KIND.HELLO) return onHello(senderId, senderHex, rec);
  if (rec.kind === KIND.REFUSE) return onRefuse(senderHex, rec);
  const peer = peers.get(senderHex);
  if (peer === undefined) { stats.unknown_sender_records++; return; } // a stranger
  switch (rec.kind) {
    case KIND.BYE: return forget(peer, "bye");
    case KIND.PEERS:
      for (const [id, endpoint] of rec.peers) {
        const idHex = hex(id);
        learned.set(idHex, endpoint); // resolved by the sender: our fallback for wildcards
        if (learned.size > 4 * MAX_PEERS) learned.delete(learned.keys().next().value);
        if (idHex !== me.hex && !peers.has(idHex)) dial(endpoint);
      }
      return;
    case KIND.DELTA: return opts.dropDeltas ? undefined : onDelta(peer, rec);
    case KIND.SNAPSHOT_REQUEST:
      stats.snapshot_requests_received++;
      if (now() - peer.lastSnapshotSent >= SNAPSHOT_RETRY_MS / 4) {
        peer.lastSnapshotSent = now();
        peer.queue(KIND.SNAPSHOT, { incarnation: me.incarnation, version: table.version, entries: entriesWire() });
      }
      return;
    case KIND.SNAPSHOT:
      stats.snapshots_received++;
      if (big(rec.incarnation) === peer.incarnation) replaceReplica(peer, rec.version, rec.entries);
      return;
    case KIND.HEARTBEAT: return onHeartbeat(peer, rec);
    case KIND.ACK: return onAck(peer, rec);
    case KIND.MSG: return onMsg(peer, rec);
    case KIND.REPLY: return onReply(peer, rec);
    case KIND.LEAVING: peer.leaving = true; return;
    case KIND.SEQ: return; // a SEQ that is not first is ignored
  }
}

// ---- handshake (section 7.3) -------------------------------------------------------------------
function onHello(senderId, senderHex, h) {
  if (hex(h.node_id) !== senderHex) { stats.malformed_records++; return; } // posing as another
  if (senderHex === me.hex) { // we dialled ourselves
    if (dials.has(h.via)) { closeDial(h.via); selfEndpoints.add(h.via); }
    return;
  }
  const endpoint = resolveEndpoint(h);
  if (endpoint === null) { log("cannot resolve the wildcard endpoint", h.endpoint); return; }
  if (big(h.protocol) !== BigInt(PROTOCOL_VERSION) || h.cluster !== me.cluster) {
    const reason = big(h.protocol) !== BigInt(PROTOCOL_VERSION)
      ? `protocol version ${h.protocol} is not ours (${PROTOCOL_VERSION})`
      : `cluster '${h.cluster}' is not ours ('${me.cluster}')`;
    return refuse(h, endpoint, reason);
  }
  const inc = big(h.incarnation);
  const existing = peers.get(senderHex);
  if (existing && inc < existing.incarnation) return; // stale
  if (existing && inc === existing.incarnation) {
    replaceReplica(existing, h.version, h.entries);
    if (h.reply && h.echo && dials.has(h.echo) && dials.get(h.echo).link !== existing.link) {
      closeDial(h.echo); // we reached it by two endpoints: remember the other as an alias
      existing.aliases.add(h.echo);
    }
    if (!h.reply && now() - existing.lastHelloAnswer >= SNAPSHOT_RETRY_MS / 4) {
      existing.lastHelloAnswer = now();
      sendUnsequenced(existing.link, [[KIND.HELLO, helloFields(true, existing.link.endpoint, h.via)]]);
    }
    return;
  }
  // A new peer: it replaces an older incarnation, and anyone else at that endpoint.
  if (existing) forget(existing, "replaced");
  for (const p of [...peers.values()]) if (p.endpoint === endpoint) forget(p, "replaced");
  if (peers.size >= MAX_PEERS) return;
  let link = null;
  for (const e of [h.echo, endpoint]) {
    if (e && dials.has(e)) { link = dials.get(e).link; dials.delete(e); break; }
  }
  if (link === null) link = new Link(endpoint);
  const peer = new Peer(h, endpoint, link);
  if (h.echo && h.echo !== endpoint) peer.aliases.add(h.echo);
  peers.set(senderHex, peer);
  receivers.delete(senderHex); // a new incarnation starts a new stream
  out({ event: "peer_up", node_id: senderHex, endpoint, name: h.name });
  replaceReplica(peer, h.version, h.entries);
  if (!h.reply) {
    peer.lastHelloAnswer = now();
    sendUnsequenced(link, [[KIND.HELLO, helloFields(true, link.endpoint, h.via)]]);
  }
  sendPeers(peer);
}

// Section 2.1: a wildcard host is the address the connection came from. zeromq.js does not
// expose libzmq's Peer-Address property, so this peer resolves a wildcard from what it knows
// otherwise (section 18): the host of our dial the HELLO's echo names, else the host a
// PEERS record gave for that node id.
const WILDCARDS = new Set(["*", "0.0.0.0", "::", "[::]"]);
const learned = new Map(); // node id hex -> endpoint, from PEERS
const hostOf = (endpoint) => endpoint.slice(6, endpoint.lastIndexOf(":"));
function resolveEndpoint(h) {
  const port = h.endpoint.slice(h.endpoint.lastIndexOf(":") + 1);
  if (!WILDCARDS.has(hostOf(h.endpoint))) return h.endpoint;
  if (h.echo && dials.has(h.echo)) return `tcp://${hostOf(h.echo)}:${port}`;
  const known = learned.get(hex(h.node_id));
  return known === undefined ? null : `tcp://${hostOf(known)}:${port}`;
}

let refusalsThisSecond = { second: 0, count: 0 };
function refuse(h, endpoint, reason) {
  stats.refused_peers++;
  log("refused", endpoint, reason);
  if (h.reply || (refused.get(endpoint) ?? 0) > now()) return;
  const second = Math.floor(now() / 1000);
  if (refusalsThisSecond.second !== second) refusalsThisSecond = { second, count: 0 };
  if (++refusalsThisSecond.count > 10) return;
  refused.set(endpoint, now() + REFUSAL_MEMORY_MS);
  const link = new Link(endpoint);
  sendUnsequenced(link, [[KIND.REFUSE, { reason, echo: h.via }]]);
  link.close(CLOSE_LINGER_MS);
}
function onRefuse(senderHex, r) {
  stats.refused_peers++;
  log("refused by", senderHex, r.reason);
  closeDial(r.echo);
  refused.set(r.echo, now() + REFUSAL_MEMORY_MS);
  const peer = peers.get(senderHex);
  if (peer) forget(peer, "refused");
}

function sendPeers(peer) {
  peer.lastPeers = now();
  const list = [...peers.values()].filter((p) => p !== peer).slice(0, MAX_PEERS)
    .map((p) => [p.nodeId, p.endpoint]);
  if (list.length) peer.queue(KIND.PEERS, { peers: list });
}

function forget(peer, reason) {
  if (peers.get(peer.hex) !== peer) return;
  peers.delete(peer.hex);
  receivers.delete(peer.hex);
  const lost = peer.kept.length;
  peer.link.close(reason === "bye" ? 0 : CLOSE_LINGER_MS);
  for (const [subId, e] of peer.replica.entries) {
    out({ event: "subscriber_down", node_id: peer.hex, sub_id: BigInt(subId), name: e.name });
  }
  out({ event: "peer_down", node_id: peer.hex, reason, unacknowledged_batches: lost });
  for (const [rid, req] of requests) {
    if (req.nodes.delete(peer.hex) && req.nodes.size === 0) finishRequest(rid, { status: "PeerLost" });
  }
}

// ---- table replication (section 9) -------------------------------------------------------------
function replaceReplica(peer, version, entries) {
  const v = big(version);
  if (v < peer.replica.version) return; // stale
  peer.snapshotAsked = 0;
  const next = new Map(entries.map(([id, name, meta]) => [String(id), { name, meta }]));
  for (const [id, e] of peer.replica.entries) {
    const n = next.get(id);
    if (!n || n.name !== e.name) out({ event: "subscriber_down", node_id: peer.hex, sub_id: BigInt(id), name: e.name });
  }
  for (const [id, e] of next) {
    const o = peer.replica.entries.get(id);
    if (!o || o.name !== e.name) out({ event: "subscriber_up", node_id: peer.hex, sub_id: BigInt(id), name: e.name, meta: e.meta });
  }
  peer.replica = { version: v, entries: next };
}
function onDelta(peer, d) {
  const v = big(d.version);
  if (big(d.incarnation) !== peer.incarnation) return askSnapshot(peer);
  if (v <= peer.replica.version) return; // a duplicate
  if (v !== peer.replica.version + 1n) return askSnapshot(peer); // a gap
  const id = String(d.sub_id);
  const old = peer.replica.entries.get(id);
  if (d.name === null) {
    if (old) { peer.replica.entries.delete(id); out({ event: "subscriber_down", node_id: peer.hex, sub_id: BigInt(id), name: old.name }); }
  } else {
    if (old) out({ event: "subscriber_down", node_id: peer.hex, sub_id: BigInt(id), name: old.name });
    peer.replica.entries.set(id, { name: d.name, meta: d.meta });
    out({ event: "subscriber_up", node_id: peer.hex, sub_id: BigInt(id), name: d.name, meta: d.meta });
  }
  peer.replica.version = v;
}
function askSnapshot(peer) {
  if (peer.snapshotAsked && now() - peer.snapshotAsked < SNAPSHOT_RETRY_MS) return;
  peer.snapshotAsked = now();
  peer.queue(KIND.SNAPSHOT_REQUEST, {});
}

// Sections 4.7, 9.4, 10.5: the digest and the lost tail.
function onHeartbeat(peer, hb) {
  if (big(hb.incarnation) !== peer.incarnation) return;
  const at = nowUs();
  if (peer.echo) peer.heartbeatGaps.push(Number(at - peer.echo.at) / 1000);
  if (peer.heartbeatGaps.length > 100) peer.heartbeatGaps.shift(); // the last 100
  peer.echo = { timeUs: big(hb.time_us), at };
  const stream = big(hb.stream), sent = big(hb.sent);
  if (stream !== 0n && sent !== 0n) {
    const r = receiverOf(peer);
    if (r.stream === null || newer(stream, r.stream)) { r.stream = stream; r.taken = 0n; r.acked = 0n; }
    if (r.stream === stream && sent > r.taken) { askResend(peer, r, stream, r.taken); return; } // the DELTAs are among them
  }
  if (peer.replica.version < big(hb.version)) askSnapshot(peer);
}

// Section 10.4.
function onAck(peer, ack) {
  if (big(ack.stream) !== BigInt(peer.stream)) return;
  const upTo = big(ack.seq);
  while (peer.kept.length && BigInt(peer.kept[0].seq) <= upTo) peer.keptBytes -= peer.kept.shift().size;
  if (ack.resend) peer.resendKept(); // go-back-N, the same bytes, ahead of new batches
  if (peer.pending.length) schedule(); // the window may have room again
}

// ---- messages (section 12) ---------------------------------------------------------------------
const asNames = (target) => (target === null ? [] : Array.isArray(target) ? target : [target]);

// Which of a set of subscribers (our own, or a replica's) a mode reaches (section 12.2).
// REGEX is left out (README): no linear-time matcher here, so it reaches nobody.
function matches(entries, mode, target) {
  const names = asNames(target);
  switch (mode) {
    case MODE.EQ: case MODE.ANY: {
      const seen = new Set(), outList = [];
      for (const n of names) {
        if (seen.has(n)) continue;
        seen.add(n);
        for (const e of entries) if (e.name === n) outList.push(e);
      }
      return outList;
    }
    case MODE.NOT_EQ: { const set = new Set(names); return entries.filter((e) => !set.has(e.name)); }
    case MODE.ALL: return entries.slice();
    default: return [];
  }
}

function onMsg(peer, m) {
  stats.received_messages++;
  const mode = Number(m.mode);
  let targets;
  if (mode === MODE.ANY) {
    // The sender chose our subscriber sub_id; if it is gone, the first of the first name.
    const chosen = m.sub_id === null ? undefined : table.entries.find((e) => BigInt(e.subId) === big(m.sub_id));
    targets = chosen ? [chosen] : matches(table.entries, MODE.EQ, m.target).slice(0, 1);
  } else targets = matches(table.entries, mode, m.target);
  const isRequest = m.request_id !== null;
  if (!targets.length) {
    stats.undeliverable_messages++;
    if (isRequest) peer.queue(KIND.REPLY, { request_id: m.request_id, status: STATUS.NO_SUBSCRIBER, type: "", body: Buffer.alloc(0) });
    return;
  }
  let body;
  try { body = decodeBody(m.body); } catch (e) {
    stats.malformed_bodies++;
    if (isRequest) {
      const text = `RemoteProtocolError: ${e.message}`;
      peer.queue(KIND.REPLY, { request_id: m.request_id, status: STATUS.ERROR, type: "RemoteProtocolError", body: Buffer.from(text) });
    }
    return;
  }
  for (const sub of targets) {
    out({ event: "message", subscriber: sub.name, sub_id: sub.subId, id: `${peer.hex}-${m.seq}`,
      from: peer.hex, sender: m.sender, mode: MODE_NAME[mode], target: m.target, type: m.type,
      body, request: isRequest });
    if (isRequest) {
      // Every subscriber here answers: the requester takes the first OK.
      const value = { echo: body, subscriber: sub.name };
      peer.queue(KIND.REPLY, { request_id: m.request_id, status: STATUS.OK, type: typeName(value), body: encodeBody(value) });
    }
  }
}

function onReply(peer, r) {
  const rid = big(r.request_id);
  const req = requests.get(rid);
  if (req === undefined) return; // not waited for (any more): ignored
  const status = Number(r.status);
  if (status === STATUS.NO_SUBSCRIBER) {
    if (req.nodes.delete(peer.hex) && req.nodes.size === 0) finishRequest(rid, { status: "NO_SUBSCRIBER" });
    return;
  }
  let body;
  try { body = status === STATUS.OK ? decodeBody(r.body) : Buffer.from(r.body).toString("utf8"); } catch {
    body = null;
  }
  finishRequest(rid, { status: STATUS_NAME[status], type: r.type, body, from: peer.hex });
}
function finishRequest(rid, result) {
  const req = requests.get(rid);
  if (!req) return;
  requests.delete(rid);
  clearTimeout(req.timer);
  out({ event: "reply", id: req.cmdId, ...result });
}

// Section 12.1: plan over our view of the table, at most one MSG per remote node.
function sendTo(body, modeName, target, sender, requestCmdId) {
  const mode = MODE[modeName];
  if (mode === undefined || mode === MODE.REGEX) throw new Error(`mode ${modeName} is not supported here`);
  if (mode === MODE.ALL) target = null;
  for (const n of asNames(target)) if ([...n].length > MAX_NAME_LENGTH || n.length === 0) throw new Error("bad target name");
  const type = typeName(body);
  const encoded = encodeBody(body);
  const requestId = requestCmdId === undefined ? null : nextRequestId++;
  const seq = ++msgSeq;
  const plan = []; // [peer, sub_id or null]
  let matched = 0, local = [];
  if (mode === MODE.ANY) {
    const candidates = matches(table.entries, MODE.EQ, target).map((e) => [null, e]);
    for (const p of peers.values()) {
      if (p.leaving) continue;
      for (const e of matches([...p.replica.entries].map(([id, x]) => ({ subId: id, ...x })), MODE.EQ, target)) candidates.push([p, e]);
    }
    if (candidates.length) {
      const key = toJSON(target);
      const i = (anyCursor.get(key) ?? 0) % candidates.length;
      anyCursor.set(key, i + 1);
      const [p, e] = candidates[i];
      matched = 1;
      if (p === null) local = [e]; else plan.push([p, BigInt(e.subId)]);
    }
  } else {
    local = matches(table.entries, mode, target);
    matched = local.length;
    for (const p of peers.values()) {
      const n = matches([...p.replica.entries.values()], mode, target).length;
      if (n) { matched += n; plan.push([p, null]); }
    }
  }
  for (const [p, subId] of plan) {
    p.queue(KIND.MSG, { seq, sender, mode, target, type, body: encoded, sub_id: subId, request_id: requestId });
  }
  for (const sub of local) {
    out({ event: "message", subscriber: sub.name, sub_id: sub.subId, id: `${me.hex}-${seq}`, from: me.hex,
      sender, mode: modeName, target, type, body, request: requestId !== null, local: true });
  }
  if (requestId !== null) {
    if (local.length) {
      out({ event: "reply", id: requestCmdId, status: "OK", type: "dict", body: { echo: body, subscriber: local[0].name }, from: me.hex });
    } else if (!plan.length) {
      out({ event: "reply", id: requestCmdId, status: "NO_SUBSCRIBER" });
    } else {
      const timer = setTimeout(() => finishRequest(requestId, { status: "RequestTimeout" }), REQUEST_TIMEOUT_MS);
      requests.set(requestId, { cmdId: requestCmdId, nodes: new Set(plan.map(([p]) => p.hex)), timer });
    }
  }
  return { matched, nodes: plan.length };
}

// ---- our own subscribers (section 9.1) ------------------------------------------------------------
// `silent` (a test hook) changes the table without sending the DELTA, as if it were lost:
// peers learn the change from the digest in our HEARTBEATs (section 9.4).
function subscribe(name, meta = {}, silent = false) {
  if (typeof name !== "string" || !name.length || [...name].length > MAX_NAME_LENGTH) throw new Error("bad name");
  const entry = { subId: table.nextSubId++, name, meta };
  table.entries.push(entry);
  table.version++;
  if (silent) return entry;
  const delta = { incarnation: me.incarnation, version: table.version, sub_id: entry.subId, name, meta };
  for (const p of peers.values()) p.queue(KIND.DELTA, delta);
  // A dial not answered yet gets the DELTA unsequenced: it has no stream for us yet.
  for (const d of dials.values()) sendUnsequenced(d.link, [[KIND.DELTA, delta]]);
  return entry;
}

// ---- the timer (sections 7.1, 8, 11) ----------------------------------------------------------------
let lastTick = now();
let lastSeedHint = 0;
function tick() {
  const t = now();
  const late = t - lastTick > TICK_MS + HEARTBEAT_MS; // our loop was blocked: not their fault
  lastTick = t;
  for (const [endpoint, d] of dials) {
    if (t - d.since >= CONNECT_TIMEOUT_MS) { closeDial(endpoint); continue; }
    if (t - d.lastHello >= HELLO_RETRY_MS) {
      d.lastHello = t;
      sendUnsequenced(d.link, [[KIND.HELLO, helloFields(false, endpoint, "")]]);
    }
  }
  for (const peer of [...peers.values()]) {
    const link = peer.link;
    if (!late) {
      let dead = false;
      if (link.everUp && !link.up && link.refusedAfterUp) dead = true;
      else if (link.everUp && !link.up && t - link.downSince >= UNREACHABLE_AFTER_MS) dead = true;
      else if (!link.everUp && t - peer.added >= CONNECT_TIMEOUT_MS) dead = true;
      else if (t - peer.lastHeard >= DEAD_AFTER_MS) dead = true;
      if (dead) { forget(peer, "timeout"); continue; }
    }
    if (t - peer.lastPeers >= PEER_EXCHANGE_MS) sendPeers(peer);
    flushPeer(peer, true);
  }
  if (t - lastSeedHint >= SEED_RETRY_MS) { lastSeedHint = t; for (const s of opts.seeds) dial(s); }
  for (const [e, until] of refused) if (until <= t) refused.delete(e);
}

// ---- stdin commands ---------------------------------------------------------------------------
function onCommand(line) {
  if (!line.trim()) return;
  let cmd;
  try { cmd = JSON.parse(line); } catch { out({ event: "error", error: "not JSON", line }); return; }
  try {
    if (cmd.cmd === "send") {
      const count = cmd.count ?? 1;
      let matched = 0;
      for (let i = 0; i < count; i++) {
        const body = cmd.numbered ? { n: i, body: fromJSON(cmd.body ?? null) } : fromJSON(cmd.body ?? null);
        matched += sendTo(body, cmd.mode ?? "EQ", cmd.target ?? null, cmd.sender ?? null).matched;
      }
      out({ event: "sent", id: cmd.id, count, matched });
    } else if (cmd.cmd === "request") {
      sendTo(fromJSON(cmd.body ?? null), cmd.mode ?? "ANY", cmd.target ?? null, cmd.sender ?? null, cmd.id ?? null);
    } else if (cmd.cmd === "subscribe") {
      const e = subscribe(cmd.name, cmd.meta ?? {}, cmd.silent === true);
      out({ event: "subscribed", id: cmd.id, name: e.name, sub_id: e.subId });
    } else if (cmd.cmd === "stats") {
      out({ event: "stats", id: cmd.id, ...stats, received, peers: peers.size,
        unacknowledged: Object.fromEntries([...peers.values()].map((p) => [p.hex, p.kept.length])),
        heartbeat_gaps_ms: Object.fromEntries([...peers.values()].map((p) => [p.hex, p.heartbeatGaps])) });
    } else if (cmd.cmd === "close") {
      shutdown();
    } else out({ event: "error", id: cmd.id, error: `unknown command ${cmd.cmd}` });
  } catch (e) {
    out({ event: "error", id: cmd.id, error: e.message });
  }
}

// Section 11: due ACKs, then BYE on every link (pending dials included), then close with linger.
let inbox;
async function shutdown() {
  if (closing) return;
  closing = true;
  for (const peer of peers.values()) flushPeer(peer, true);
  const links = [...[...peers.values()].map((p) => p.link), ...[...dials.values()].map((d) => d.link)];
  for (const link of links) { sendUnsequenced(link, [[KIND.BYE, {}]]); link.close(CLOSE_LINGER_MS); }
  out({ event: "closed" });
  setTimeout(() => { try { inbox.close(); } catch { /* closed */ } process.exit(0); }, CLOSE_LINGER_MS + 100);
}

// ---- main ------------------------------------------------------------------------------------
async function main() {
  const routerOptions = { handover: true, maxMessageSize: 16777216, receiveHighWaterMark: 1000, linger: 0 };
  if (curve !== null) {
    // Our inbox is a CURVE server with the cluster keypair. zeromq.js has no ZAP handler:
    // libzmq then admits every client that completes the handshake (that is, knows the
    // cluster key), but this peer cannot learn a connection's User-Id (README).
    Object.assign(routerOptions, { curveServer: true, curvePublicKey: curve.server.publicZ85,
      curveSecretKey: curve.server.secretZ85, zapDomain: "smartroute" });
  }
  inbox = new Router(routerOptions);
  await inbox.bind(`tcp://${opts.host}:${opts.port || "*"}`);
  me.endpoint = inbox.lastEndpoint;
  for (const spec of opts.subscribe) {
    const eq = spec.indexOf("=");
    subscribe(eq < 0 ? spec : spec.slice(0, eq), eq < 0 ? {} : JSON.parse(spec.slice(eq + 1)));
  }
  out({ event: "ready", node_id: me.hex, endpoint: me.endpoint, incarnation: me.incarnation,
    pid: process.pid, curve: curve !== null });
  setInterval(tick, TICK_MS);
  tick();
  createInterface({ input: process.stdin }).on("line", onCommand).on("close", shutdown);
  process.on("SIGTERM", shutdown);
  for (;;) {
    let frames;
    try { frames = await inbox.receive(); } catch (e) { if (closing) return; throw e; }
    onFrame(frames);
  }
}

main().catch((e) => { log(e.stack); process.exit(1); });
