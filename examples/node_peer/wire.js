// The smartroute wire format (docs/PROTOCOL.md sections 3-5 and 13), written from the spec:
// records, their validation, batches, and message bodies. No sockets here.

import { Decoder, Encoder, ExtensionCodec } from "@msgpack/msgpack";

export const PROTOCOL_VERSION = 3;

export const KIND = {
  HELLO: 1, REFUSE: 2, PEERS: 3, DELTA: 4, SNAPSHOT_REQUEST: 5, SNAPSHOT: 6, HEARTBEAT: 7,
  BYE: 8, MSG: 9, REPLY: 10, SEQ: 11, ACK: 12, LEAVING: 13,
};
export const KIND_NAME = Object.fromEntries(Object.entries(KIND).map(([k, v]) => [v, k]));
export const MODE = { EQ: 0, NOT_EQ: 1, ALL: 2, REGEX: 3, ANY: 4 };
export const MODE_NAME = Object.fromEntries(Object.entries(MODE).map(([k, v]) => [v, k]));
export const STATUS = { OK: 0, ERROR: 1, NO_SUBSCRIBER: 2 };
export const STATUS_NAME = Object.fromEntries(Object.entries(STATUS).map(([k, v]) => [v, k]));
// HELLO, REFUSE and BYE never travel in a sequenced batch (section 5).
export const CONTROL_KINDS = new Set([KIND.HELLO, KIND.REFUSE, KIND.BYE]);

// Limits (section 16; the reference's defaults).
export const MAX_FRAME_BYTES = 16777216;
export const MAX_BATCH_BYTES = 262144;
export const NAME_MAX = 1024; // what a receiver allows on the wire (section 3)
export const MAX_NAME_LENGTH = 256; // what a sender should stay within
export const MAX_META_BYTES = 4096;
export const MAX_TABLE_ENTRIES = 1000000;
export const MAX_TARGET_NAMES = 10000;
export const MAX_PEERS = 512;
export const MAX_MAP_ITEMS = 4096;
const MAX_ARRAY_ITEMS = 1000000;
const UINT32_MAX = 0xffffffffn;
const UINT64_MAX = (1n << 64n) - 1n;

// ---- integers -------------------------------------------------------------------------
// Integers use the whole unsigned 64-bit range (incarnations ~2^51, request ids ~2^62), so
// they are decoded with useBigInt64: an int64/uint64 on the wire becomes a BigInt, any
// shorter form a Number. Everything that compares them goes through big().
export function big(v) {
  return typeof v === "bigint" ? v : BigInt(v);
}

// Before encoding: small BigInts become Numbers (so the encoder picks the shortest form, as
// the golden vectors show), and integral Numbers >= 2^32 become BigInts (with useBigInt64
// @msgpack/msgpack would otherwise write such a Number as a float64).
function shortest(v) {
  if (typeof v === "bigint") {
    return v >= -0x80000000n && v <= UINT32_MAX ? Number(v) : v;
  }
  if (typeof v === "number") {
    return Number.isInteger(v) && (v > 0xffffffff || v < -0x80000000) ? BigInt(v) : v;
  }
  if (Array.isArray(v)) return v.map(shortest);
  if (v !== null && typeof v === "object" && !(v instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, shortest(x)]));
  }
  return v;
}

// ---- msgpack decoders with the limits of section 3 -------------------------------------
// Map keys must be str or bin. @msgpack/msgpack decodes maps to JS objects, whose keys are
// strings: a number key is refused here (the frame is malformed), a bin key is kept as the
// text "bin:<hex>" (this peer only displays meta, it never sends a peer's meta back).
function mapKey(key) {
  if (typeof key === "string") return key;
  if (key instanceof Uint8Array) return "bin:" + Buffer.from(key).toString("hex");
  throw new TypeError("map key is neither str nor bin");
}

const batchDecoder = new Decoder({
  useBigInt64: true,
  maxStrLength: MAX_FRAME_BYTES,
  maxBinLength: MAX_FRAME_BYTES,
  maxArrayLength: MAX_ARRAY_ITEMS,
  maxMapLength: MAX_MAP_ITEMS,
  maxExtLength: 0, // no extension types in records
  mapKeyConverter: mapKey,
});
const recordEncoder = new Encoder({ useBigInt64: true });

/** Decode one batch frame; throws on anything that is not one valid msgpack array. */
export function decodeBatch(frame) {
  if (frame.length > MAX_FRAME_BYTES) throw new RangeError("frame over max_frame_bytes");
  // Decoder.decode refuses trailing bytes ("Extra N of M byte(s) found").
  const batch = batchDecoder.decode(frame);
  if (!Array.isArray(batch)) throw new TypeError("batch is not an array");
  return batch;
}

// ---- field types (section 3) ------------------------------------------------------------
const cpLength = (s) => (s.length <= 1 ? s.length : [...s].length); // code points, not UTF-16 units
const isInt = (v) => (typeof v === "number" && Number.isInteger(v)) || typeof v === "bigint";
const T = {
  uint: (v) => isInt(v) && big(v) >= 0n && big(v) <= UINT64_MAX,
  int: isInt,
  bool: (v) => typeof v === "boolean",
  nil: (v) => v === null,
  str: (n) => (v) => typeof v === "string" && cpLength(v) <= n,
  name: (v) => typeof v === "string" && v.length > 0 && cpLength(v) <= NAME_MAX,
  bin: (v) => v instanceof Uint8Array,
  nodeId: (v) => v instanceof Uint8Array && v.length === 16 && v[0] !== 0,
  endpoint: isEndpoint,
  meta: (v) =>
    v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array) &&
    (Object.keys(v).length === 0 || recordEncoder.encode(shortest(v)).length <= MAX_META_BYTES),
  array: (t, n) => (v) => Array.isArray(v) && v.length <= n && v.every(t),
  or: (...ts) => (v) => ts.some((t) => t(v)),
  stream: (v) => T.uint(v) && big(v) <= UINT32_MAX,
};
T.entry = (v) => Array.isArray(v) && v.length === 3 && T.uint(v[0]) && T.name(v[1]) && T.meta(v[2]);
T.entries = T.array(T.entry, MAX_TABLE_ENTRIES);

/** `tcp://HOST:PORT`, at most 300 characters, split at the last ':' (section 3). */
export function isEndpoint(v) {
  if (typeof v !== "string" || cpLength(v) > 300 || !v.startsWith("tcp://")) return false;
  const rest = v.slice(6);
  const colon = rest.lastIndexOf(":");
  if (colon <= 0) return false;
  const port = rest.slice(colon + 1);
  return /^[0-9]+$/.test(port) && Number(port) >= 1 && Number(port) <= 65535;
}

// Every record kind: its field names and checks, in wire order (section 4).
export const SCHEMA = {
  [KIND.HELLO]: [
    ["protocol", T.int], ["cluster", T.str(1024)], ["node_id", T.nodeId],
    ["incarnation", T.uint], ["endpoint", T.endpoint], ["name", T.str(1024)],
    ["reply", T.bool], ["via", T.str(1024)], ["echo", T.str(1024)], ["version", T.uint],
    ["entries", T.entries],
  ],
  [KIND.REFUSE]: [["reason", T.str(1024)], ["echo", T.str(1024)]],
  [KIND.PEERS]: [
    ["peers", T.array((p) => Array.isArray(p) && p.length === 2 && T.nodeId(p[0]) &&
      T.endpoint(p[1]), MAX_PEERS)],
  ],
  [KIND.DELTA]: [
    ["incarnation", T.uint], ["version", T.uint], ["sub_id", T.uint],
    ["name", T.or(T.name, T.nil)], ["meta", T.or(T.meta, T.nil)],
  ],
  [KIND.SNAPSHOT_REQUEST]: [],
  [KIND.SNAPSHOT]: [["incarnation", T.uint], ["version", T.uint], ["entries", T.entries]],
  [KIND.HEARTBEAT]: [
    ["incarnation", T.uint], ["version", T.uint], ["stream", T.uint], ["sent", T.uint],
    ["time_us", T.uint], ["echo_us", T.uint], ["held_us", T.uint],
  ],
  [KIND.BYE]: [],
  [KIND.MSG]: [
    ["seq", T.uint], ["sender", T.or(T.str(1024), T.nil)],
    ["mode", (v) => isInt(v) && big(v) >= 0n && big(v) <= 4n],
    ["target", T.or(T.name, T.array(T.name, MAX_TARGET_NAMES), T.nil)],
    ["type", T.str(1024)], ["body", T.bin], ["sub_id", T.or(T.uint, T.nil)],
    ["request_id", T.or(T.uint, T.nil)],
  ],
  [KIND.REPLY]: [
    ["request_id", T.uint], ["status", (v) => isInt(v) && big(v) >= 0n && big(v) <= 2n],
    ["type", T.str(1024)], ["body", T.bin],
  ],
  // A sender never uses stream 0, but a receiver does not refuse it (only seq 0).
  [KIND.SEQ]: [["stream", T.stream], ["seq", (v) => T.uint(v) && big(v) >= 1n], ["incarnation", T.uint]],
  [KIND.ACK]: [["stream", T.stream], ["seq", T.uint], ["resend", T.bool]],
  [KIND.LEAVING]: [],
};

/**
 * Validate one decoded record (arity and every field). Returns `{kind, ...fields}` with
 * small integers as Numbers and big ones as BigInts, or null when it is malformed.
 */
export function parseRecord(rec) {
  if (!Array.isArray(rec) || rec.length === 0) return null;
  const kind = rec[0];
  if (typeof kind !== "number" || !Number.isInteger(kind)) return null; // not a bool/float
  const schema = SCHEMA[kind];
  if (schema === undefined || rec.length !== schema.length + 1) return null;
  const out = { kind };
  for (let i = 0; i < schema.length; i++) {
    const [field, check] = schema[i];
    if (!check(rec[i + 1])) return null;
    out[field] = rec[i + 1];
  }
  // A DELTA's meta is nil exactly when its name is (a removal).
  if (kind === KIND.DELTA && (out.name === null) !== (out.meta === null)) return null;
  return out;
}

// ---- encoding records and batches -------------------------------------------------------
/** Encode one record from its kind and fields (in schema order). */
export function encodeRecord(kind, fields) {
  if (kind === KIND.SEQ) return seqBytes(fields.stream, fields.seq, fields.incarnation);
  if (kind === KIND.ACK) return ackBytes(fields.stream, fields.seq, fields.resend);
  const rec = [kind, ...SCHEMA[kind].map(([name]) => fields[name])];
  return recordEncoder.encode(shortest(rec));
}

// SEQ and ACK in the fixed width the spec recommends: uint32 stream, uint64 numbers.
function seqBytes(stream, seq, incarnation) {
  const b = Buffer.alloc(25);
  b[0] = 0x94; b[1] = 0x0b; b[2] = 0xce; b.writeUInt32BE(Number(stream), 3);
  b[7] = 0xcf; b.writeBigUInt64BE(big(seq), 8);
  b[16] = 0xcf; b.writeBigUInt64BE(big(incarnation), 17);
  return b;
}
function ackBytes(stream, seq, resend) {
  const b = Buffer.alloc(17);
  b[0] = 0x94; b[1] = 0x0c; b[2] = 0xce; b.writeUInt32BE(Number(stream), 3);
  b[7] = 0xcf; b.writeBigUInt64BE(big(seq), 8); b[16] = resend ? 0xc3 : 0xc2;
  return b;
}

/** A batch: a msgpack array header, then the already encoded records one after the other. */
export function encodeBatch(recordBytes) {
  const n = recordBytes.length;
  let head;
  if (n < 16) head = Buffer.from([0x90 | n]);
  else if (n < 0x10000) { head = Buffer.alloc(3); head[0] = 0xdc; head.writeUInt16BE(n, 1); }
  else { head = Buffer.alloc(5); head[0] = 0xdd; head.writeUInt32BE(n, 1); }
  return Buffer.concat([head, ...recordBytes]);
}

// ---- message bodies (section 13) --------------------------------------------------------
// A registered record (a Python @message dataclass) is extension type 1 whose payload is
// [name, {field: value}]. This peer shows one as {"$type": name, ...fields} and sends one
// from the same shape.
const bodyCodec = new ExtensionCodec();
bodyCodec.register({
  type: 1,
  encode: (v) => (v !== null && typeof v === "object" && typeof v.$type === "string"
    ? bodyEncoder().encode(recordPayload(v)) : null),
  decode: (data) => {
    const payload = bodyDecoder().decode(data);
    if (!Array.isArray(payload) || payload.length !== 2 || typeof payload[0] !== "string" ||
        payload[1] === null || typeof payload[1] !== "object" || Array.isArray(payload[1]) ||
        payload[1] instanceof Uint8Array) {
      throw new TypeError("a record payload is not [str, map]");
    }
    return { $type: payload[0], ...payload[1] };
  },
});
function recordPayload(v) {
  const { $type, ...fields } = v;
  return [$type, shortest(fields)];
}
let _bodyEncoder, _bodyDecoder;
const bodyEncoder = () => (_bodyEncoder ??= new Encoder({ useBigInt64: true, extensionCodec: bodyCodec }));
const bodyDecoder = () => (_bodyDecoder ??= new Decoder({
  useBigInt64: true, extensionCodec: bodyCodec, mapKeyConverter: mapKey,
  maxArrayLength: MAX_ARRAY_ITEMS, maxMapLength: MAX_MAP_ITEMS,
}));

/** Decode a body (throws when it is malformed). Nesting depth is not checked (README). */
export function decodeBody(bytes) {
  return bodyDecoder().decode(bytes);
}
export function encodeBody(value) {
  return bodyEncoder().encode(shortest(value));
}
/** The type name a Python node would give the value (section 13). */
export function typeName(v) {
  if (typeof v === "string") return "str";
  if (v instanceof Uint8Array) return "bytes";
  if (typeof v === "bigint" || (typeof v === "number" && Number.isInteger(v))) return "int";
  if (typeof v === "number") return "float";
  if (typeof v === "boolean") return "bool";
  if (v === null || v === undefined) return "NoneType";
  if (Array.isArray(v)) return "list";
  if (typeof v.$type === "string") return v.$type;
  return "dict";
}

// ---- JSON (the peer's stdin/stdout) ------------------------------------------------------
/** JSON text of a value: BigInts exact (a Number when safe, else a decimal string), bins as {"$bin": hex}. */
export function toJSON(value) {
  return JSON.stringify(value, (_k, v) => {
    if (typeof v === "bigint") return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
    if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString("hex") };
    if (v && v.type === "Buffer" && Array.isArray(v.data)) return { $bin: Buffer.from(v.data).toString("hex") };
    return v;
  });
}
/** The inverse for bodies given on stdin: {"$bin": hex} becomes bytes. */
export function fromJSON(value) {
  if (Array.isArray(value)) return value.map(fromJSON);
  if (value !== null && typeof value === "object") {
    if (typeof value.$bin === "string" && Object.keys(value).length === 1) return Buffer.from(value.$bin, "hex");
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromJSON(v)]));
  }
  return value;
}
