// The sharp anchor: `node run.js <jpeg> <width|crop> <seconds> <streams>` runs the
// operation on the in-memory JPEG in `streams` concurrent loops (one libvips thread
// each) for `seconds`, and prints one JSON line {images, seconds, per_sec, version}.
const fs = require('fs');
const sharp = require('sharp');

const [file, mode, secs, streams] = process.argv.slice(2);
const input = fs.readFileSync(file);
sharp.concurrency(1);
sharp.cache(false);

function once() {
  const s = sharp(input);
  const r = mode === 'crop'
    ? s.resize(300, 300, { fit: 'cover', position: sharp.strategy.attention })
    : s.resize({ width: 300 });
  return r.webp({ quality: 80 }).toBuffer();
}

async function loop(deadline) {
  let n = 0;
  while (Date.now() < deadline) {
    await once();
    n++;
  }
  return n;
}

(async () => {
  await once(); // warm up
  const start = Date.now();
  const deadline = start + Number(secs) * 1000;
  const counts = await Promise.all(Array.from({ length: Number(streams) }, () => loop(deadline)));
  const seconds = (Date.now() - start) / 1000;
  const images = counts.reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ images, seconds, per_sec: images / seconds, version: sharp.versions }));
})();
