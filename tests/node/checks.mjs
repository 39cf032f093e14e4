// Shared by the storage-js scripts: a client per token, and checks that print
// `ok <name>` (or `FAIL <name>: <detail>` and exit 1) and count for `done()`.
import { StorageClient } from '@supabase/storage-js';

export const client = (url, token) => new StorageClient(url, { apikey: token, Authorization: `Bearer ${token}` });

let n = 0;
export function check(name, cond, detail) {
  if (!cond) {
    console.log(`FAIL ${name}: ${JSON.stringify(detail)}`);
    process.exit(1);
  }
  n++;
  console.log(`ok ${name}`);
}
export function ok(name, res, pred = () => true) {
  check(name, !res.error && pred(res.data), res.error ?? res.data);
  return res.data;
}
export const code = (res) => res.error && res.error.statusCode;
export function done() {
  console.log(`done ${n}`);
}
