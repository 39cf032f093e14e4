// Calls every storage method of the real @supabase/storage-js against a running
// Carmenta (STORAGE_URL = http://host/storage/v1) and checks each result. Prints
// `ok <name>` per check and `done <count>`; exits 1 at the first failure.
import { client as connect, check, ok, code, done } from './checks.mjs';

const { STORAGE_URL, SERVICE_KEY, USER_A, USER_B } = process.env;
const client = (token) => connect(STORAGE_URL, token);
const admin = client(SERVICE_KEY);
const a = client(USER_A);
const b = client(USER_B);

// Buckets.
ok('createBucket', await admin.createBucket('files', { public: false, fileSizeLimit: '10MB', allowedMimeTypes: ['text/*', 'image/png'] }), (d) => d.name === 'files');
ok('createBucket public', await admin.createBucket('pub', { public: true }), (d) => d.name === 'pub');
check('createBucket duplicate', code(await admin.createBucket('pub')) === '409');
check('createBucket as a user', code(await a.createBucket('mine')) === '403');
ok('getBucket', await admin.getBucket('files'), (d) => d.id === 'files' && d.public === false && d.file_size_limit > 0 && d.allowed_mime_types.length === 2);
ok('listBuckets', await a.listBuckets(), (d) => d.map((x) => x.id).sort().join() === 'files,pub');
ok('updateBucket', await admin.updateBucket('files', { public: false, fileSizeLimit: '20MB', allowedMimeTypes: ['text/*', 'image/png'] }), (d) => d.message === 'Successfully updated');

// Uploads.
const fa = a.from('files');
ok('upload', await fa.upload('folder/hello.txt', 'hello from storage-js', { contentType: 'text/plain', cacheControl: '60', metadata: { purpose: 'test' } }),
  (d) => d.path === 'folder/hello.txt' && d.fullPath === 'files/folder/hello.txt' && typeof d.id === 'string');
check('upload duplicate', code(await fa.upload('folder/hello.txt', 'again', { contentType: 'text/plain' })) === '409');
check('upload refused type', code(await fa.upload('folder/x.bin', 'x', { contentType: 'application/zip' })) === '415');
ok('upload Blob (multipart)', await fa.upload('folder/blob.png', new Blob([new Uint8Array([137, 80, 78, 71])], { type: 'image/png' })), (d) => d.path === 'folder/blob.png');
ok('upload upsert', await fa.upload('folder/hello.txt', 'hello, upserted', { contentType: 'text/plain', upsert: true }));
ok('update', await fa.update('folder/hello.txt', 'updated text', { contentType: 'text/plain' }), (d) => d.path === 'folder/hello.txt');

// Reads.
const dl = await fa.download('folder/hello.txt');
check('download', !dl.error && (await dl.data.text()) === 'updated text', dl.error);
const blob = await fa.download('folder/blob.png');
check('download multipart upload', !blob.error && blob.data.size === 4 && blob.data.type === 'image/png', blob.error);
ok('info', await fa.info('folder/hello.txt'), (d) => d.size === 12 && d.contentType === 'text/plain' && d.cacheControl === 'max-age=3600' && d.bucketId === 'files');
ok('exists', await fa.exists('folder/hello.txt'), (d) => d === true);
check('exists (missing)', (await fa.exists('folder/missing.txt')).data === false);
ok('list', await fa.list('folder'), (d) => d.map((x) => x.name).join() === 'blob.png,hello.txt' && d[1].metadata.size === 12);
ok('list root (folders have null id)', await fa.list(), (d) => d.length === 1 && d[0].name === 'folder' && d[0].id === null);
ok('list search', await fa.list('folder', { search: 'hel' }), (d) => d.length === 1);
ok('listV2', await fa.listV2({ prefix: 'folder/', limit: 1 }), (d) => d.objects.length === 1 && d.hasNext === true && d.nextCursor);

// Copy and move.
ok('copy', await fa.copy('folder/hello.txt', 'copy/hello.txt'), (d) => d.path === 'files/copy/hello.txt');
ok('move', await fa.move('copy/hello.txt', 'moved/hello.txt'), (d) => d.message === 'Successfully moved');
ok('move to another bucket', await fa.move('moved/hello.txt', 'from-files.txt', { destinationBucket: 'pub' }));

// Signed URLs.
const su = ok('createSignedUrl', await fa.createSignedUrl('folder/hello.txt', 60), (d) => d.signedUrl.includes('token='));
let r = await fetch(su.signedUrl);
check('signed URL serves the object', r.status === 200 && (await r.text()) === 'updated text', r.status);
const sd = ok('createSignedUrl download', await fa.createSignedUrl('folder/hello.txt', 60, { download: 'copy.txt' }));
r = await fetch(sd.signedUrl);
check('signed URL download disposition', (r.headers.get('content-disposition') || '').startsWith('attachment'), [...r.headers]);
ok('createSignedUrls', await fa.createSignedUrls(['folder/hello.txt', 'folder/missing.txt'], 60), (d) => d.length === 2 && d[0].signedUrl && !d[0].error && d[1].error && !d[1].signedUrl);
const up = ok('createSignedUploadUrl', await fa.createSignedUploadUrl('signed/up.txt'), (d) => d.token && d.signedUrl && d.path === 'signed/up.txt');
ok('uploadToSignedUrl', await fa.uploadToSignedUrl('signed/up.txt', up.token, 'signed body', { contentType: 'text/plain' }), (d) => d.fullPath === 'files/signed/up.txt');
check('signed upload belongs to A', (await (await fa.download('signed/up.txt')).data.text()) === 'signed body');

// Public URLs.
const pub = admin.from('pub').getPublicUrl('from-files.txt');
r = await fetch(pub.data.publicUrl);
check('getPublicUrl serves anonymously', r.status === 200 && (await r.text()) === 'updated text', pub.data.publicUrl);
const pubdl = admin.from('pub').getPublicUrl('from-files.txt', { download: true });
r = await fetch(pubdl.data.publicUrl);
check('getPublicUrl download', (r.headers.get('content-disposition') || '').startsWith('attachment'), pubdl.data.publicUrl);

// User B sees nothing of A's.
const fb = b.from('files');
const bdl = await fb.download('folder/hello.txt');
check('B download', bdl.error && bdl.error.statusCode === '404', bdl.error);
check('B info', (await fb.info('folder/hello.txt')).error?.statusCode === '404');
check('B exists', (await fb.exists('folder/hello.txt')).data === false);
ok('B list', await fb.list('folder'), (d) => d.length === 0);
check('B createSignedUrl', code(await fb.createSignedUrl('folder/hello.txt', 60)) === '404');
ok('B remove', await fb.remove(['folder/hello.txt']), (d) => d.length === 0);
check('B move', code(await fb.move('folder/hello.txt', 'b.txt')) === '404');

// Removal and bucket teardown.
ok('remove', await fa.remove(['folder/hello.txt', 'folder/blob.png', 'signed/up.txt']), (d) => d.length === 3);
check('deleteBucket (not empty)', code(await admin.deleteBucket('pub')) === '409');
ok('emptyBucket', await admin.emptyBucket('pub'));
ok('deleteBucket', await admin.deleteBucket('pub'), (d) => d.message === 'Successfully deleted');
ok('deleteBucket files', await admin.deleteBucket('files'));
check('getBucket (deleted)', code(await admin.getBucket('files')) === '404');

done();
