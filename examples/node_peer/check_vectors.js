// Check wire.js against the golden vectors (tests/protocol_vectors.json), both ways:
// decode(hex) gives the fields, encode(fields) gives the hex. Prints one JSON line and exits
// 1 on any mismatch.  Usage: node check_vectors.js [path/to/protocol_vectors.json]

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import {
  KIND, decodeBatch, decodeBody, encodeBatch, encodeBody, encodeRecord, parseRecord, toJSON,
  typeName,
} from "./wire.js";
import { curveClusterKeys, nodeIdOfPublicKey, z85Decode } from "./curve.js";

const path = process.argv[2] ??
  fileURLToPath(new URL("../../tests/protocol_vectors.json", import.meta.url));
const vectors = JSON.parse(readFileSync(path, "utf8"));

// The file's JSON conventions: {"$bin": hex} is bytes, {"$int": "decimal"} a big integer,
// {"$record": name, "fields": {...}} a registered body (this peer's {"$type": name, ...}).
function fromVector(v) {
  if (Array.isArray(v)) return v.map(fromVector);
  if (v !== null && typeof v === "object") {
    if ("$bin" in v) return Buffer.from(v.$bin, "hex");
    if ("$int" in v) return BigInt(v.$int);
    if ("$record" in v) return { $type: v.$record, ...fromVector(v.fields) };
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromVector(x)]));
  }
  return v;
}
const same = (a, b) => toJSON(a) === toJSON(b);
const failures = [];
let checked = 0;

function checkRecord(name, kindName, fieldsJson, hex) {
  const kind = KIND[kindName];
  const fields = fromVector(fieldsJson);
  const encoded = Buffer.from(encodeRecord(kind, fields)).toString("hex");
  if (hex !== undefined && encoded !== hex) failures.push(`${name}: encoded ${encoded} != ${hex}`);
  const bytes = Buffer.from(hex ?? encoded, "hex");
  const parsed = parseRecord(decodeBatch(Buffer.concat([Buffer.from([0x91]), bytes]))[0]);
  if (parsed === null) { failures.push(`${name}: decoded as malformed`); return; }
  const { kind: _k, ...got } = parsed;
  if (!same(got, fields)) failures.push(`${name}: decoded ${toJSON(got)} != ${toJSON(fields)}`);
  checked++;
}

for (const r of vectors.records) checkRecord(r.name, r.kind, r.fields, r.hex);
for (const b of vectors.batches) {
  const parts = b.records.map((r) => encodeRecord(KIND[r.kind], fromVector(r.fields)));
  const hex = encodeBatch(parts).toString("hex");
  if (hex !== b.hex) failures.push(`batch ${b.name}: encoded ${hex} != ${b.hex}`);
  const batch = decodeBatch(Buffer.from(b.hex, "hex"));
  if (batch.length !== b.records.length) failures.push(`batch ${b.name}: ${batch.length} records`);
  checked++;
}
for (const body of vectors.bodies) {
  const value = fromVector(body.value);
  const hex = Buffer.from(encodeBody(value)).toString("hex");
  if (hex !== body.hex) failures.push(`body ${body.name}: encoded ${hex} != ${body.hex}`);
  if (!same(decodeBody(Buffer.from(body.hex, "hex")), value)) failures.push(`body ${body.name}: decoded differently`);
  if (typeName(value) !== body.type) failures.push(`body ${body.name}: type ${typeName(value)} != ${body.type}`);
  checked++;
}
for (const r of vectors.routing_ids) {
  const rid = Buffer.alloc(20);
  Buffer.from(r.node_id, "hex").copy(rid);
  rid.writeUInt32BE(r.link, 16);
  if (rid.toString("hex") !== r.routing_id) failures.push(`routing id link ${r.link}`);
  checked++;
}
for (const k of vectors.curve.cluster_keys) {
  const keys = curveClusterKeys(k.secret, k.cluster);
  if (keys.secretZ85 !== k.server_secret_z85 || keys.publicZ85 !== k.server_public_z85) {
    failures.push(`cluster keys of ${k.cluster}: ${keys.secretZ85} ${keys.publicZ85}`);
  }
  checked++;
}
for (const n of vectors.curve.node_ids) {
  const pub = Buffer.from(n.public_hex, "hex");
  if (!z85Decode(n.public_z85).equals(pub)) failures.push("z85 of a public key");
  const id = nodeIdOfPublicKey(pub).toString("hex");
  if (id !== n.node_id) failures.push(`node id ${id} != ${n.node_id}`);
  checked++;
}

console.log(JSON.stringify({ checked, failures }));
process.exit(failures.length ? 1 : 0);
