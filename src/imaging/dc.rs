//! DC-only decoding of baseline JPEGs, for thumbnails at 1/8 scale or smaller.
//!
//! At 1/8 scale each 8 × 8 block becomes one pixel whose value is the block's DC
//! coefficient, so the AC coefficients are only to be stepped over. libjpeg-turbo
//! still decodes each of them symbol by symbol (Huffman code, then its magnitude
//! bits); here one table lookup steps over a code *and* its magnitude bits, and
//! the bit reader refills eight bytes at a time. That is where a thumbnail of a
//! large photo spends most of its time (see ARCHITECTURE.md for the figures).
//!
//! Only what is common and simple is taken: 8-bit baseline or extended sequential
//! Huffman JPEGs with one interleaved scan, greyscale or YCbCr with chroma at 1 × 1
//! sampling (4:4:4, 4:2:2, 4:4:0, 4:2:0). Anything else (progressive, arithmetic,
//! 12-bit, CMYK, RGB, several scans) and anything malformed or truncated returns
//! `None`, and the caller decodes with libjpeg-turbo, which reports the error.

use std::borrow::Cow;

use super::jpeg::{Decoded, be16, segments};
use super::scratch;

/// Bits looked up at once.
const LOOKUP: u32 = 11;

/// One Huffman table: a direct lookup for short codes, the canonical limits for
/// longer ones, and (for AC tables) the step-over table.
struct Table {
    /// Next `LOOKUP` bits → `length << 8 | symbol`, 0 when the code is longer.
    fast: Vec<u16>,
    /// Next `LOOKUP` bits → as many whole AC symbols (code and magnitude bits) as
    /// they hold: bits consumed (bits 0–4), coefficients advanced (5–11, 64 at
    /// an end of block), and 1 + the largest coefficient index the run may start
    /// at (12–18; 0 when not even one symbol fits: the slow path). Empty for DC
    /// tables.
    skip: Vec<u32>,
    /// Largest code of each length (−1 when none), index = length.
    maxcode: [i32; 17],
    /// Offset from a code of each length to its symbol's index.
    valoff: [i32; 17],
    symbols: Vec<u8>,
}

impl Table {
    /// Builds a table from a DHT segment's counts and symbols (None when the
    /// code lengths do not make a prefix code); `ac` tables get the step-over table.
    fn new(counts: &[u8], symbols: &[u8], ac: bool) -> Option<Table> {
        let mut t = Table {
            fast: vec![0; 1 << LOOKUP],
            skip: Vec::new(),
            maxcode: [-1; 17],
            valoff: [0; 17],
            symbols: symbols.to_vec(),
        };
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16u32 {
            let n = usize::from(*counts.get(len as usize - 1)?);
            t.valoff[len as usize] = k as i32 - code;
            for _ in 0..n {
                let sym = *symbols.get(k)?;
                if code >= 1 << len {
                    return None;
                }
                if len <= LOOKUP {
                    let shift = LOOKUP - len;
                    let base = (code as usize) << shift;
                    for suffix in 0..1usize << shift {
                        t.fast[base | suffix] = (len as u16) << 8 | u16::from(sym);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                t.maxcode[len as usize] = code - 1;
            }
            code <<= 1;
        }
        if ac {
            t.skip = (0..1usize << LOOKUP).map(|index| t.steps(index)).collect();
        }
        Some(t)
    }

    /// The `skip` entry for the bits `index`: AC symbols decoded one after the
    /// other while each fits whole, stopping after an end of block or once the
    /// block is certainly full.
    fn steps(&self, index: usize) -> u32 {
        let mask = (1usize << LOOKUP) - 1;
        let (mut used, mut advance, mut last_start, mut count) = (0u32, 0u32, 0u32, 0u32);
        while advance < 64 {
            let e = self.fast[(index << used) & mask];
            let (len, sym) = (u32::from(e >> 8), u32::from(e & 0xFF));
            let (r, size) = (sym >> 4, sym & 15);
            if e == 0 || used + len + size > LOOKUP {
                break;
            }
            used += len + size;
            last_start = advance;
            count += 1;
            if size == 0 && r != 15 {
                advance = 64;
                break;
            }
            advance += if size == 0 { 16 } else { r + 1 };
        }
        if count == 0 {
            return 0;
        }
        // Every symbol must start inside the block: k + last_start ≤ 63.
        used | advance << 5 | (64 - last_start) << 12
    }
}

/// The entropy-coded data, read through a 64-bit buffer (valid bits at the top).
/// Past the end, or at a marker, zeros are fed in and counted, so truncation is
/// recognised once the decoder has used any of them.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
    fake: u32,
}

impl Bits<'_> {
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(chunk) = self.data.get(self.pos..self.pos + 8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            let w = u64::from_be_bytes(b);
            let v = !w;
            // No 0xFF byte (stuffing or a marker) among the eight: take them whole.
            if (v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080) == 0 {
                let k = (63 - self.n) / 8;
                let take = 8 * k;
                self.acc |= (w >> (64 - take)) << (64 - self.n - take);
                self.n += take;
                self.pos += k as usize;
                return;
            }
        }
        self.refill_slow();
    }

    #[cold]
    fn refill_slow(&mut self) {
        while self.n <= 56 {
            let byte = match self.data.get(self.pos) {
                Some(0xFF) if self.data.get(self.pos + 1) == Some(&0) => {
                    self.pos += 2;
                    Some(0xFF)
                }
                Some(0xFF) | None => None,
                Some(&b) => {
                    self.pos += 1;
                    Some(b)
                }
            };
            match byte {
                Some(b) => self.acc |= u64::from(b) << (56 - self.n),
                None => self.fake += 8,
            }
            self.n += 8;
        }
    }

    #[inline(always)]
    fn consume(&mut self, k: u32) {
        self.acc <<= k;
        self.n -= k;
    }

    /// Whether every bit used so far was real data.
    fn sound(&self) -> bool {
        self.n >= self.fake
    }

    #[inline(always)]
    fn symbol(&mut self, t: &Table) -> Option<u8> {
        if self.n < 16 {
            self.refill();
        }
        let e = t.fast[(self.acc >> (64 - LOOKUP)) as usize];
        if e != 0 {
            self.consume(u32::from(e >> 8));
            return Some(e as u8);
        }
        self.slow_symbol(t)
    }

    #[cold]
    fn slow_symbol(&mut self, t: &Table) -> Option<u8> {
        for len in LOOKUP + 1..=16 {
            let code = (self.acc >> (64 - len)) as i32;
            if code <= t.maxcode[len as usize] {
                self.consume(len);
                return t.symbols.get((code + t.valoff[len as usize]) as usize).copied();
            }
        }
        None
    }

    /// `s` (1–16) raw bits.
    #[inline(always)]
    fn take(&mut self, s: u32) -> u32 {
        if self.n < s {
            self.refill();
        }
        let v = (self.acc >> (64 - s)) as u32;
        self.consume(s);
        v
    }

    /// Steps over a block's AC coefficients.
    #[inline(always)]
    fn skip_ac(&mut self, t: &Table) -> Option<()> {
        let mut k = 1u32;
        while k < 64 {
            if self.n < 32 {
                self.refill();
            }
            let e = t.skip[(self.acc >> (64 - LOOKUP)) as usize];
            if k < e >> 12 {
                self.consume(e & 31);
                k += (e >> 5) & 127;
                continue;
            }
            let rs = self.symbol(t)?;
            let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
            if s == 0 {
                if r != 15 {
                    break;
                }
                k += 16;
            } else {
                self.take(s);
                k += r + 1;
            }
        }
        Some(())
    }

    /// At a restart interval's end: the marker, and a fresh buffer.
    fn restart(&mut self) -> Option<()> {
        if !self.sound() {
            return None;
        }
        (self.acc, self.n, self.fake) = (0, 0, 0);
        while self.data.get(self.pos) == Some(&0xFF) && self.data.get(self.pos + 1) == Some(&0xFF) {
            self.pos += 1;
        }
        match self.data.get(self.pos..self.pos + 2) {
            Some([0xFF, 0xD0..=0xD7]) => {
                self.pos += 2;
                Some(())
            }
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    dc: usize,
    ac: usize,
}

/// The header, up to the start of the scan.
struct Header {
    width: usize,
    height: usize,
    comps: Vec<Component>,
    q0: [i32; 4],
    dc: [Option<Table>; 4],
    ac: [Option<Table>; 4],
    restart: usize,
    scan: usize,
}

fn header(src: &[u8]) -> Option<Header> {
    let mut h = Header {
        width: 0,
        height: 0,
        comps: Vec::new(),
        q0: [0; 4],
        dc: [None, None, None, None],
        ac: [None, None, None, None],
        restart: 0,
        scan: 0,
    };
    let (mut jfif, mut adobe_rgb) = (false, false);
    for (marker, seg, i) in segments(src) {
        match marker {
            0xC0 | 0xC1 => {
                if *seg.first()? != 8 || !h.comps.is_empty() {
                    return None;
                }
                h.height = be16(seg, 1)?;
                h.width = be16(seg, 3)?;
                let n = usize::from(*seg.get(5)?);
                if h.width == 0 || h.height == 0 || !(n == 1 || n == 3) {
                    return None;
                }
                for c in 0..n {
                    let b = seg.get(6 + 3 * c..9 + 3 * c)?;
                    let (hs, vs) = (usize::from(b[1] >> 4), usize::from(b[1] & 15));
                    h.comps.push(Component { id: b[0], h: hs, v: vs, tq: usize::from(b[2] & 3), dc: 0, ac: 0 });
                }
            }
            // Progressive, lossless, hierarchical, arithmetic: libjpeg-turbo's.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCC | 0xCD..=0xCF => return None,
            0xC4 => {
                let mut j = 0;
                while j < seg.len() {
                    let class = seg[j];
                    let counts = seg.get(j + 1..j + 17)?;
                    let total: usize = counts.iter().map(|c| usize::from(*c)).sum();
                    let symbols = seg.get(j + 17..j + 17 + total)?;
                    let slot = usize::from(class & 3);
                    match class >> 4 {
                        0 => h.dc[slot] = Some(Table::new(counts, symbols, false)?),
                        1 => h.ac[slot] = Some(Table::new(counts, symbols, true)?),
                        _ => return None,
                    }
                    j += 17 + total;
                }
            }
            0xDB => {
                let mut j = 0;
                while j < seg.len() {
                    let (wide, slot) = (seg[j] >> 4 != 0, usize::from(seg[j] & 3));
                    h.q0[slot] = if wide { be16(seg, j + 1)? as i32 } else { i32::from(*seg.get(j + 1)?) };
                    j += if wide { 129 } else { 65 };
                }
            }
            0xDD => h.restart = be16(seg, 0)?,
            0xE0 if seg.starts_with(b"JFIF\0") => jfif = true,
            0xEE if seg.starts_with(b"Adobe") => adobe_rgb = seg.get(11) == Some(&0),
            0xDA => {
                let n = usize::from(*seg.first()?);
                if n != h.comps.len() || seg.get(1 + 2 * n..4 + 2 * n)? != [0, 63, 0] {
                    return None;
                }
                for c in 0..n {
                    let b = seg.get(1 + 2 * c..3 + 2 * c)?;
                    let comp = h.comps.iter_mut().find(|x| x.id == b[0])?;
                    (comp.dc, comp.ac) = (usize::from(b[1] >> 4 & 3), usize::from(b[1] & 3));
                }
                h.scan = i;
            }
            _ => {}
        }
    }
    if h.comps.is_empty() || h.scan == 0 {
        return None;
    }
    if h.comps.len() == 3 {
        let rgb_ids = h.comps.iter().map(|c| c.id).eq(*b"RGB");
        if !jfif && (adobe_rgb || rgb_ids) {
            return None;
        }
        let y = h.comps[0];
        if !(1..=2).contains(&y.h) || !(1..=2).contains(&y.v) || h.comps[1..].iter().any(|c| c.h != 1 || c.v != 1) {
            return None;
        }
    } else {
        // A single component's scan is not interleaved: one block per MCU.
        (h.comps[0].h, h.comps[0].v) = (1, 1);
    }
    h.comps.iter().all(|c| h.dc[c.dc].is_some() && h.ac[c.ac].is_some() && h.q0[c.tq] > 0).then_some(h)
}

/// Decodes `src` at 1/8 scale from its DC coefficients alone; `None` when the
/// file is not one this decoder takes, or is damaged (libjpeg-turbo then decides).
pub fn decode(src: &[u8]) -> Option<Decoded> {
    let h = header(src)?;
    let (hmax, vmax) = (h.comps[0].h, h.comps[0].v);
    let (mcux, mcuy) = (h.width.div_ceil(8 * hmax), h.height.div_ceil(8 * vmax));
    let planes_w: Vec<usize> = h.comps.iter().map(|c| mcux * c.h).collect();
    let mut planes: Vec<Vec<u8>> = h.comps.iter().map(|c| scratch::zeroed(mcux * c.h * mcuy * c.v)).collect();
    let mut bits = Bits { data: src.get(h.scan..)?, pos: 0, acc: 0, n: 0, fake: 0 };
    let mut pred = [0i32; 3];
    let mut todo = h.restart;
    // Each component's DC and AC tables and DC quantiser (`header` checked them).
    let tables = h
        .comps
        .iter()
        .map(|c| Some((h.dc[c.dc].as_ref()?, h.ac[c.ac].as_ref()?, h.q0[c.tq])))
        .collect::<Option<Vec<_>>>()?;
    for my in 0..mcuy {
        for mx in 0..mcux {
            if h.restart > 0 {
                if todo == 0 {
                    bits.restart()?;
                    pred = [0; 3];
                    todo = h.restart;
                }
                todo -= 1;
            }
            for (c, (comp, &(dc, ac, q))) in h.comps.iter().zip(&tables).enumerate() {
                for by in 0..comp.v {
                    for bx in 0..comp.h {
                        let s = u32::from(bits.symbol(dc)?);
                        let diff = match s {
                            0 => 0,
                            1..=15 => {
                                let v = bits.take(s) as i32;
                                if v < 1 << (s - 1) { v - (1 << s) + 1 } else { v }
                            }
                            _ => return None,
                        };
                        pred[c] = pred[c].wrapping_add(diff);
                        bits.skip_ac(ac)?;
                        // libjpeg's 1 × 1 inverse DCT: (DC × Q + 4) / 8, centred on 128.
                        let value = ((pred[c].wrapping_mul(q) + 4) >> 3) + 128;
                        let at = (my * comp.v + by) * planes_w[c] + mx * comp.h + bx;
                        *planes[c].get_mut(at)? = value.clamp(0, 255) as u8;
                    }
                }
            }
        }
        if !bits.sound() {
            return None;
        }
    }
    let (ow, oh) = (h.width.div_ceil(8), h.height.div_ceil(8));
    if h.comps.len() == 1 {
        let mut pixels = scratch::empty(ow * oh);
        for y in 0..oh {
            pixels.extend_from_slice(planes[0].get(y * planes_w[0]..y * planes_w[0] + ow)?);
        }
        planes.into_iter().for_each(scratch::give_back);
        return Some(Decoded { pixels, width: ow as i32, height: oh as i32, bands: 1 });
    }
    let (lw, lh) = (planes_w[0], mcuy * vmax);
    let cb = upsample(&planes[1], planes_w[1], mcuy, hmax, vmax)?;
    let cr = upsample(&planes[2], planes_w[2], mcuy, hmax, vmax)?;
    if cb.len() != lw * lh || cr.len() != lw * lh {
        return None;
    }
    let mut pixels = scratch::zeroed(ow * oh * 3);
    for y in 0..oh {
        let row = y * lw;
        let (ys, cbs, crs) = (planes[0].get(row..row + ow)?, cb.get(row..row + ow)?, cr.get(row..row + ow)?);
        let out = pixels.get_mut(y * ow * 3..(y + 1) * ow * 3)?;
        for (((px, &l), &b), &r) in out.chunks_exact_mut(3).zip(ys).zip(cbs).zip(crs) {
            let (l, b, r) = (i32::from(l), i32::from(b) - 128, i32::from(r) - 128);
            px[0] = (l + ((91_881 * r + 32_768) >> 16)).clamp(0, 255) as u8;
            px[1] = (l + ((-22_554 * b - 46_802 * r + 32_768) >> 16)).clamp(0, 255) as u8;
            px[2] = (l + ((116_130 * b + 32_768) >> 16)).clamp(0, 255) as u8;
        }
    }
    [cb, cr].into_iter().for_each(scratch::give_back_cow);
    planes.into_iter().for_each(scratch::give_back);
    Some(Decoded { pixels, width: ow as i32, height: oh as i32, bands: 3 })
}

/// A chroma plane brought to the luma grid (×1 or ×2 each way) by the triangle
/// filter libjpeg's "fancy" upsampling uses (¾ of the nearer sample, ¼ of the
/// farther).
fn upsample(p: &[u8], w: usize, h: usize, fx: usize, fy: usize) -> Option<Cow<'_, [u8]>> {
    let mut rows = Cow::Borrowed(p);
    let mut width = w;
    if fx == 2 {
        let mut out = scratch::empty(w * 2 * h);
        for y in 0..h {
            let r = rows.get(y * w..(y + 1) * w)?;
            for x in 0..w {
                let (prev, cur, next) = (r[x.saturating_sub(1)], r[x], r[(x + 1).min(w - 1)]);
                out.push(((3 * u16::from(cur) + u16::from(prev) + 1) >> 2) as u8);
                out.push(((3 * u16::from(cur) + u16::from(next) + 2) >> 2) as u8);
            }
        }
        rows = Cow::Owned(out);
        width = w * 2;
    }
    if fy == 2 {
        let mut out = scratch::empty(width * h * 2);
        for y in 0..h {
            let (prev, cur, next) = (y.saturating_sub(1), y, (y + 1).min(h - 1));
            for (near, far) in [(cur, prev), (cur, next)] {
                let (a, b) = (rows.get(near * width..(near + 1) * width)?, rows.get(far * width..(far + 1) * width)?);
                out.extend(a.iter().zip(b).map(|(&a, &b)| ((3 * u16::from(a) + u16::from(b) + 2) >> 2) as u8));
            }
        }
        scratch::give_back_cow(std::mem::replace(&mut rows, Cow::Owned(out)));
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use rs_vips::VipsImage;
    use rs_vips::voption::{Setter, VOption};

    fn photo(w: i32, h: i32, bands: i32, opts: VOption) -> Vec<u8> {
        crate::imaging::transform::init().expect("libvips");
        let noise =
            VipsImage::gaussnoise_with_opts(w, h, VOption::new().set("sigma", 30.0).set("mean", 128.0)).expect("noise");
        let xy = VipsImage::xyz(w, h).expect("xyz");
        let base = xy.extract_band(0).and_then(|x| x.linear(&[200.0 / w as f64], &[20.0])).expect("ramp");
        let one = (base + noise).cast(rs_vips::enums::BandFormat::Uchar).expect("cast");
        let img = if bands == 3 {
            let g = one.rot(rs_vips::enums::Angle::D180).expect("rot");
            let b = one.flip(rs_vips::enums::Direction::Horizontal).expect("flip");
            VipsImage::bandjoin(&[one, g, b]).expect("join")
        } else {
            one
        };
        img.jpegsave_buffer_with_opts(opts).expect("jpeg")
    }

    fn psnr(a: &[u8], b: &[u8]) -> f64 {
        let mse = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>() / a.len() as f64;
        10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
    }

    #[test]
    fn greyscale_matches_libjpeg_turbo_exactly() {
        for (w, h) in [(203, 101), (64, 64), (9, 17)] {
            let jpeg = photo(w, h, 1, VOption::new().set("Q", 90));
            let ours = super::decode(&jpeg).expect("taken");
            let theirs = crate::imaging::jpeg::decode_turbo(&jpeg, 8).expect("decodes").expect("taken");
            assert_eq!((ours.width, ours.height, ours.bands), (theirs.width, theirs.height, theirs.bands));
            assert_eq!(ours.pixels, theirs.pixels, "{w}×{h}");
        }
    }

    #[test]
    fn colour_is_close_to_libjpeg_turbo_for_every_subsampling_and_restart_intervals() {
        for (sub, restart) in [("on", 0), ("off", 0), ("on", 3), ("off", 1)] {
            let jpeg = photo(
                403,
                301,
                3,
                VOption::new().set("Q", 85).set("subsample_mode", sub).set("restart_interval", restart),
            );
            let ours = super::decode(&jpeg).expect("taken");
            let theirs = crate::imaging::jpeg::decode_turbo(&jpeg, 8).expect("decodes").expect("taken");
            assert_eq!((ours.width, ours.height, ours.bands), (51, 38, 3));
            assert_eq!((theirs.width, theirs.height), (51, 38));
            let p = psnr(&ours.pixels, &theirs.pixels);
            if sub == "off" {
                // 4:4:4: the same pixels as libjpeg-turbo's, bit for bit.
                assert_eq!(ours.pixels, theirs.pixels, "restart {restart}");
            } else {
                // 4:2:0: libjpeg-turbo scales chroma by a 2 × 2 inverse DCT, we by
                // upsampling its DC; measured 41 dB.
                assert!(p > 36.0, "restart {restart}: PSNR {p:.1} dB");
            }
        }
    }

    #[test]
    fn damaged_or_unusual_files_are_left_to_libjpeg_turbo_and_never_panic() {
        let jpeg = photo(160, 120, 3, VOption::new().set("Q", 80));
        assert!(super::decode(&jpeg).is_some());
        for cut in [jpeg.len() / 2, jpeg.len() - 200, 3, 0] {
            assert!(super::decode(&jpeg[..cut]).is_none(), "cut at {cut}");
        }
        let progressive = photo(64, 64, 3, VOption::new().set("interlace", true));
        assert!(super::decode(&progressive).is_none());
        // Flipped bytes anywhere: any answer but a panic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut bad = jpeg.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bad.len();
                bad[at] = (state >> 32) as u8;
            }
            let _ = super::decode(&bad);
        }
    }
}
