// Resumable upload with the real tus-js-client. STORAGE_URL points at a TCP relay
// that cuts the first connection after a few megabytes of request body: the client
// sees the connection die mid-PATCH, asks the server for the offset (HEAD) and
// resumes from there. A second upload goes in 1 MiB chunks with
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
  retryDelays: [0, 200, 500, 1000, 2000, 3000],
  ...extra,
});

// 1. One PATCH carrying the whole file; the relay cuts it; the client resumes.
let resumedAt = 0;
let errors = 0;
let url;
await new Promise((resolve, reject) => {
  const upload = new tus.Upload(data, common('big/resumed.bin', {
    uploadDataDuringCreation: false,
    onShouldRetry: () => { errors++; return true; },
    onAfterResponse: (req, res) => {
      if (req.getMethod() === 'HEAD') resumedAt = Math.max(resumedAt, Number(res.getHeader('Upload-Offset') || 0));
    },
    onError: reject,
    onSuccess: () => { url = upload.url; resolve(); },
  }));
  upload.start();
});
if (errors === 0) throw new Error('the connection was never cut');

// 2. Another user cannot see the upload (it is finished and gone: 404 either way),
//    and an unknown upload id is a 404.
const other = await fetch(url, { method: 'HEAD', headers: { 'tus-resumable': '1.0.0', authorization: `Bearer ${OTHER_TOKEN}` } });
if (other.status !== 404) throw new Error(`another user's HEAD answered ${other.status}`);

// 3. Chunked, with creation-with-upload.
await new Promise((resolve, reject) => {
  const upload = new tus.Upload(data.subarray(0, 3 * 1024 * 1024 + 5), common('small/chunks.bin', {
    chunkSize: 1024 * 1024, uploadDataDuringCreation: true, onError: reject, onSuccess: resolve,
  }));
  upload.start();
});
const check = await fetch(`${STORAGE_URL}/object/tus/small/chunks.bin`, { headers: { authorization: `Bearer ${TOKEN}` } });
const body = Buffer.from(await check.arrayBuffer());
if (check.status !== 200 || !body.equals(data.subarray(0, 3 * 1024 * 1024 + 5))) throw new Error(`chunked upload differs (${check.status})`);

console.log(JSON.stringify({ size: data.length, resumedAt, errors, objects: 2 }));
