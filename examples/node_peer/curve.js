// CURVE keys and node ids from a cluster secret (docs/PROTOCOL.md section 14), with Node's
// built-in crypto (scrypt, X25519) and a small BLAKE2b: Node's crypto has no BLAKE2b with a
// personalization string.

import { createPrivateKey, createPublicKey, generateKeyPairSync, scryptSync } from "node:crypto";

// ---- Z85 (ZeroMQ RFC 32): how libzmq's options take 32-byte keys, as 40 characters --------
const Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
export function z85Encode(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 4) {
    let value = ((bytes[i] << 24) >>> 0) + (bytes[i + 1] << 16) + (bytes[i + 2] << 8) + bytes[i + 3];
    const chunk = [];
    for (let j = 0; j < 5; j++) { chunk.unshift(Z85[value % 85]); value = Math.floor(value / 85); }
    out += chunk.join("");
  }
  return out;
}
export function z85Decode(text) {
  const out = Buffer.alloc((text.length / 5) * 4);
  for (let i = 0; i < text.length; i += 5) {
    let value = 0;
    for (let j = 0; j < 5; j++) value = value * 85 + Z85.indexOf(text[i + j]);
    out.writeUInt32BE(value, (i / 5) * 4);
  }
  return out;
}

// ---- X25519 with raw 32-byte keys ----------------------------------------------------------
const PKCS8_X25519 = Buffer.from("302e020100300506032b656e04220420", "hex");
function x25519Public(secret) {
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_X25519, secret]), format: "der", type: "pkcs8" });
  return createPublicKey(key).export({ format: "der", type: "spki" }).subarray(-32);
}

/** The cluster keypair: the scrypt of the secret is the Curve25519 secret key. */
export function curveClusterKeys(secret, cluster) {
  const seed = scryptSync(Buffer.from(secret, "utf8"), Buffer.from("smartroute/curve/" + cluster, "utf8"),
    32, { N: 16384, r: 8, p: 1 });
  return { secretZ85: z85Encode(seed), publicZ85: z85Encode(x25519Public(seed)) };
}

/** A random keypair for this node whose node id does not start with a zero byte. */
export function curveNodeKeys() {
  for (;;) {
    const { publicKey, privateKey } = generateKeyPairSync("x25519");
    const pub = publicKey.export({ format: "der", type: "spki" }).subarray(-32);
    const sec = privateKey.export({ format: "der", type: "pkcs8" }).subarray(-32);
    const nodeId = nodeIdOfPublicKey(pub);
    if (nodeId[0] !== 0) return { nodeId, publicZ85: z85Encode(pub), secretZ85: z85Encode(sec) };
  }
}

/** blake2b(public key, digest_size=16, person=b"smartroute-id" zero-padded to 16). */
export function nodeIdOfPublicKey(pub) {
  const person = Buffer.alloc(16);
  person.write("smartroute-id", "latin1");
  return blake2b(pub, 16, person);
}

// ---- BLAKE2b (RFC 7693), unkeyed, one salt of zeros and a personalization ---------------------
const M64 = (1n << 64n) - 1n;
const IV = [
  0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n,
  0x510e527fade682d1n, 0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n,
];
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4], [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13], [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11], [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5], [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];
const rotr = (x, n) => ((x >> n) | (x << (64n - n))) & M64;

function blake2b(data, outLen, person) {
  const param = Buffer.alloc(64);
  param[0] = outLen; param[2] = 1; param[3] = 1; // digest length, no key, fanout 1, depth 1
  person.copy(param, 48); // the salt (bytes 32..47) stays zero
  const h = IV.map((iv, i) => iv ^ param.readBigUInt64LE(i * 8));
  const blocks = Math.max(1, Math.ceil(data.length / 128));
  for (let b = 0; b < blocks; b++) {
    const block = Buffer.alloc(128);
    Buffer.from(data).copy(block, 0, b * 128, Math.min(data.length, (b + 1) * 128));
    const last = b === blocks - 1;
    compress(h, block, BigInt(last ? data.length : (b + 1) * 128), last);
  }
  const out = Buffer.alloc(64);
  h.forEach((w, i) => out.writeBigUInt64LE(w, i * 8));
  return out.subarray(0, outLen);
}

function compress(h, block, counter, last) {
  const m = Array.from({ length: 16 }, (_, i) => block.readBigUInt64LE(i * 8));
  const v = [...h, ...IV];
  v[12] ^= counter & M64;
  v[13] ^= counter >> 64n;
  if (last) v[14] ^= M64;
  const g = (a, b, c, d, x, y) => {
    v[a] = (v[a] + v[b] + x) & M64; v[d] = rotr(v[d] ^ v[a], 32n);
    v[c] = (v[c] + v[d]) & M64; v[b] = rotr(v[b] ^ v[c], 24n);
    v[a] = (v[a] + v[b] + y) & M64; v[d] = rotr(v[d] ^ v[a], 16n);
    v[c] = (v[c] + v[d]) & M64; v[b] = rotr(v[b] ^ v[c], 63n);
  };
  for (let r = 0; r < 12; r++) {
    const s = SIGMA[r % 10];
    g(0, 4, 8, 12, m[s[0]], m[s[1]]); g(1, 5, 9, 13, m[s[2]], m[s[3]]);
    g(2, 6, 10, 14, m[s[4]], m[s[5]]); g(3, 7, 11, 15, m[s[6]], m[s[7]]);
    g(0, 5, 10, 15, m[s[8]], m[s[9]]); g(1, 6, 11, 12, m[s[10]], m[s[11]]);
    g(2, 7, 8, 13, m[s[12]], m[s[13]]); g(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (let i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}
