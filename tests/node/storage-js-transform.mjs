// Image transformations through the real @supabase/storage-js: download with a
// transform, getPublicUrl with a transform, createSignedUrl with a transform. The
// source (IMAGE, a 400×200 PNG) is uploaded by A; every answer is a PNG (no WebP in
// node's Accept, so the source's format) whose IHDR gives its size. Prints
// `ok <name>` per check and `done <count>`; exits 1 at the first failure.
import fs from 'node:fs';
import { client as connect, check, done } from './checks.mjs';

const { STORAGE_URL, SERVICE_KEY, USER_A, USER_B, IMAGE } = process.env;
const client = (token) => connect(STORAGE_URL, token);
const admin = client(SERVICE_KEY);
const a = client(USER_A);
const b = client(USER_B);

async function pngSize(blobOrResponse) {
  const buf = Buffer.from(await blobOrResponse.arrayBuffer());
  if (buf.subarray(1, 4).toString() !== 'PNG') return null;
  return [buf.readUInt32BE(16), buf.readUInt32BE(20)];
}

check('createBucket', !(await admin.createBucket('pics', { public: false })).error);
check('createBucket public', !(await admin.createBucket('pubpics', { public: true })).error);
const png = fs.readFileSync(IMAGE);
check('upload', !(await a.from('pics').upload('p.png', png, { contentType: 'image/png' })).error);
check('upload public', !(await a.from('pubpics').upload('p.png', png, { contentType: 'image/png' })).error);

const dl = await a.from('pics').download('p.png', { transform: { width: 100, height: 100, resize: 'contain' } });
check('download with transform', !dl.error && JSON.stringify(await pngSize(dl.data)) === '[100,50]', dl.error);
const dl2 = await a.from('pics').download('p.png', { transform: { width: 80, height: 80, resize: 'cover' } });
check('download with cover', !dl2.error && JSON.stringify(await pngSize(dl2.data)) === '[80,80]', dl2.error);
const bdl = await b.from('pics').download('p.png', { transform: { width: 100 } });
check('B download with transform', bdl.error && bdl.error.statusCode === '404', bdl.error);

const pub = a.from('pubpics').getPublicUrl('p.png', { transform: { width: 40, height: 30, resize: 'fill' } });
let r = await fetch(pub.data.publicUrl);
check('getPublicUrl with transform', r.status === 200 && JSON.stringify(await pngSize(r)) === '[40,30]', pub.data.publicUrl);

const signed = await a.from('pics').createSignedUrl('p.png', 60, { transform: { width: 60, height: 60, resize: 'contain' } });
check('createSignedUrl with transform', !signed.error && signed.data.signedUrl.includes('/render/image/sign/'), signed.error ?? signed.data);
r = await fetch(signed.data.signedUrl);
check('signed render URL', r.status === 200 && JSON.stringify(await pngSize(r)) === '[60,30]', r.status);

done();
