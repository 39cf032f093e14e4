// Resumable upload with the real tus-js-client: the connection is cut halfway
// through a PATCH, the offset the server kept is read back, and the upload resumes
// from it to completion. A second upload goes in 1 MiB chunks with
// creation-with-upload. Prints a JSON summary as the last line.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const { STORAGE_URL, TOKEN, OTHER_TOKEN, FILE } = process.env;
const data = fs.readFileSync(FILE);
const endpoint = `${STORAGE_URL}/upload/resumable`;
const common = (objectName, extra = {}) => ({
  endpoint,
  headers: { authorization: `Bearer ${TOKEN}`, 'x-upsert': 'true' },
  metadata: { bucketName: 'tus', objectName, contentType: 'application/x-test', cacheControl: '3600', metadata: JSON.stringify({ via: 'tus' }) },
  retryDelays: [0, 200, 500, 1000, 2000],
  ...extra,
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// 1. Start, cut the connection halfway through the body.
let url;
await new Promise((resolve, reject) => {
  let cut = false;
  const upload = new tus.Upload(data, common('big/resumed.bin', {
    uploadDataDuringCreation: false,
    onProgress(sent, total) {
      if (!cut && sent > total / 2) {
        cut = true;
        url = upload.url;
        upload.abort(false).then(resolve, reject);
      }
    },
    onError: reject,
    onSuccess: () => reject(new Error('finished before the cut')),
  }));
  upload.start();
});
if (!url) throw new Error('no upload URL');

// 2. What did the server keep? (HEAD, as a client resuming would.)
const head = async (token) => fetch(url, { method: 'HEAD', headers: { 'tus-resumable': '1.0.0', authorization: `Bearer ${token}` } });
let offset = 0;
for (let i = 0; i < 50; i++) {
  const r = await head(TOKEN);
  if (r.status !== 200) throw new Error(`HEAD ${r.status}`);
  offset = Number(r.headers.get('upload-offset'));
  if (offset > 0) break;
  await sleep(100);
}
const other = await head(OTHER_TOKEN);
if (other.status !== 404) throw new Error(`another user's HEAD answered ${other.status}`);

// 3. Resume from the URL to completion.
await new Promise((resolve, reject) => {
  const upload = new tus.Upload(data, common('big/resumed.bin', { uploadUrl: url, onError: reject, onSuccess: resolve }));
  upload.start();
});

// 4. Chunked, with creation-with-upload.
await new Promise((resolve, reject) => {
  const upload = new tus.Upload(data.subarray(0, 3 * 1024 * 1024 + 5), common('small/chunks.bin', {
    chunkSize: 1024 * 1024, uploadDataDuringCreation: true, onError: reject, onSuccess: resolve,
  }));
  upload.start();
});
const check = await fetch(`${STORAGE_URL}/object/tus/small/chunks.bin`, { headers: { authorization: `Bearer ${TOKEN}` } });
const body = Buffer.from(await check.arrayBuffer());
if (check.status !== 200 || !body.equals(data.subarray(0, 3 * 1024 * 1024 + 5))) throw new Error(`chunked upload differs (${check.status})`);

console.log(JSON.stringify({ size: data.length, resumedAt: offset, objects: 2 }));
