//! JPEG headers (marker segments, size, EXIF orientation) and decoding at a DCT
//! scale: at 1/8 by `dc.rs` when it takes the file, else with libjpeg-turbo 3
//! (built from the source that `turbojpeg-sys` bundles, statically linked). Decoding a large JPEG dominates a
//! thumbnail's cost, and libjpeg-turbo 3's decoder is faster than the 2.1 that
//! Debian's libvips links; at 1/8 scale it also skips most of the inverse DCT. The
//! small image is handed to libvips for the rest. Sources this path does not
//! take (CMYK/YCCK, 12-bit, lossless) go through libvips' own loader.

use std::ffi::CStr;

use turbojpeg_sys as tj;

/// Pixels decoded at a scale, interleaved 8-bit.
#[derive(Debug)]
pub struct Decoded {
    /// `width × height × bands` bytes.
    pub pixels: Vec<u8>,
    /// Width after scaling.
    pub width: i32,
    /// Height after scaling.
    pub height: i32,
    /// 1 (grey) or 3 (sRGB).
    pub bands: i32,
}

/// A decompressor per thread (they are not shareable, and cheap to keep).
struct Handle(tj::tjhandle);

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a handle from tj3Init, destroyed once.
            unsafe { tj::tj3Destroy(self.0) }
        }
    }
}

impl Handle {
    fn new() -> Handle {
        // SAFETY: tj3Init has no preconditions; a null handle is checked before use.
        Handle(unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) })
    }
}

thread_local! {
    static HANDLE: std::cell::RefCell<Handle> = std::cell::RefCell::new(Handle::new());
}

/// libjpeg-turbo refused a file (corrupt or truncated); its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("libjpeg-turbo: {0}")]
pub struct DecodeError(pub String);

fn error(h: tj::tjhandle) -> DecodeError {
    // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
    DecodeError(unsafe { CStr::from_ptr(tj::tj3GetErrorStr(h)) }.to_string_lossy().into_owned())
}

/// The marker segments of a JPEG's header, in order, up to and including the
/// start of scan: (marker, segment contents, offset just past the segment). Ends
/// early, without an error, where the header is malformed.
pub fn segments(src: &[u8]) -> impl Iterator<Item = (u8, &[u8], usize)> {
    let mut i = if src.starts_with(&[0xFF, 0xD8]) { 2 } else { usize::MAX };
    std::iter::from_fn(move || {
        loop {
            if src.get(i) != Some(&0xFF) {
                return None;
            }
            while src.get(i) == Some(&0xFF) {
                i += 1;
            }
            let marker = *src.get(i)?;
            i += 1;
            if matches!(marker, 0x01 | 0xD0..=0xD8) {
                continue;
            }
            let len = be16(src, i).filter(|l| *l >= 2 && marker != 0xD9)?;
            let seg = src.get(i + 2..i + len)?;
            i += len;
            let at = i;
            if marker == 0xDA {
                // Nothing after the start of scan is a header.
                i = usize::MAX;
            }
            return Some((marker, seg, at));
        }
    })
}

/// The big-endian 16-bit number at `i`.
pub fn be16(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(*b.get(i)?) << 8 | usize::from(*b.get(i + 1)?))
}

/// A JPEG's declared width, height and EXIF orientation (1–8), read from its
/// header segments without decoding or copying anything; `None` when the header
/// is not well formed (libvips then reads it, and reports what is wrong).
pub fn dimensions(src: &[u8]) -> Option<(u32, u32, i32)> {
    let (mut size, mut orientation) = (None, None);
    for (marker, seg, _) in segments(src) {
        match marker {
            // The first EXIF block counts, as for libvips.
            0xE1 if seg.starts_with(b"Exif\0\0") && orientation.is_none() => {
                orientation = Some(seg.get(6..).and_then(exif_orientation).unwrap_or(1));
            }
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF if size.is_none() => {
                let (h, w) = (be16(seg, 1)?, be16(seg, 3)?);
                size = Some((w as u32, h as u32)).filter(|(w, h)| *w > 0 && *h > 0);
            }
            0xDA => return size.map(|(w, h)| (w, h, orientation.unwrap_or(1))),
            _ => {}
        }
    }
    None
}

/// The Orientation tag (0x0112) of an EXIF block's first IFD.
fn exif_orientation(tiff: &[u8]) -> Option<i32> {
    let little = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<usize> {
        let b = [*tiff.get(o)?, *tiff.get(o + 1)?];
        Some(usize::from(if little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) }))
    };
    let offset = [*tiff.get(4)?, *tiff.get(5)?, *tiff.get(6)?, *tiff.get(7)?];
    let ifd = if little { u32::from_le_bytes(offset) } else { u32::from_be_bytes(offset) } as usize;
    for e in 0..u16_at(ifd)? {
        let at = ifd + 2 + 12 * e;
        if u16_at(at)? == 0x0112 {
            let v = u16_at(at + 8)? as i32;
            return (1..=8).contains(&v).then_some(v);
        }
    }
    None
}

/// Decodes `src` at `1/shrink` (1, 2, 4 or 8): at 1/8 from the DC coefficients
/// alone when [`super::dc`] takes the file, else with libjpeg-turbo. `Ok(None)`
/// when neither takes it; an error when it is corrupt or truncated.
pub fn decode(src: &[u8], shrink: u32) -> Result<Option<Decoded>, DecodeError> {
    if shrink == 8
        && let Some(d) = super::dc::decode(src)
    {
        return Ok(Some(d));
    }
    decode_turbo(src, shrink)
}

/// Decodes `src` at `1/shrink` with libjpeg-turbo. `Ok(None)` when it does not
/// take the file; an error when it is corrupt or truncated (warnings stop it).
pub fn decode_turbo(src: &[u8], shrink: u32) -> Result<Option<Decoded>, DecodeError> {
    HANDLE.with(|cell| {
        let result = decode_with(cell.borrow().0, src, shrink);
        // A failed decompression may leave state behind: the next file gets a new handle.
        if result.is_err() {
            *cell.borrow_mut() = Handle::new();
        }
        result
    })
}

fn decode_with(h: tj::tjhandle, src: &[u8], shrink: u32) -> Result<Option<Decoded>, DecodeError> {
    {
        if h.is_null() {
            return Ok(None);
        }
        // SAFETY: `h` is a live decompressor of this thread; `src` outlives the
        // calls; the output buffer is sized from the scaled dimensions the
        // library itself reports for the scaling factor set.
        unsafe {
            if tj::tj3DecompressHeader(h, src.as_ptr(), src.len() as _) != 0 {
                return Err(error(h));
            }
            let get = |p: tj::TJPARAM| tj::tj3Get(h, p as i32);
            let (w, hh) = (get(tj::TJPARAM_TJPARAM_JPEGWIDTH), get(tj::TJPARAM_TJPARAM_JPEGHEIGHT));
            let cs = get(tj::TJPARAM_TJPARAM_COLORSPACE);
            let plain = cs == tj::TJCS_TJCS_YCbCr as i32 || cs == tj::TJCS_TJCS_RGB as i32;
            let grey = cs == tj::TJCS_TJCS_GRAY as i32;
            if get(tj::TJPARAM_TJPARAM_PRECISION) != 8 || get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1 || !(plain || grey) {
                return Ok(None);
            }
            let shrink = shrink.clamp(1, 8) as i32;
            tj::tj3Set(h, tj::TJPARAM_TJPARAM_STOPONWARNING as i32, 1);
            if tj::tj3SetScalingFactor(h, tj::tjscalingfactor { num: 1, denom: shrink }) != 0 {
                return Ok(None);
            }
            let (sw, sh) = ((w + shrink - 1) / shrink, (hh + shrink - 1) / shrink);
            let (format, bands) = if grey { (tj::TJPF_TJPF_GRAY, 1) } else { (tj::TJPF_TJPF_RGB, 3) };
            let mut pixels = super::scratch::zeroed((sw as usize) * (sh as usize) * bands as usize);
            if tj::tj3Decompress8(h, src.as_ptr(), src.len() as _, pixels.as_mut_ptr(), 0, format) != 0 {
                return Err(error(h));
            }
            Ok(Some(Decoded { pixels, width: sw, height: sh, bands }))
        }
    }
}

#[cfg(test)]
mod tests {
    use rs_vips::VipsImage;
    use rs_vips::voption::{Setter, VOption};

    #[test]
    fn reads_size_and_orientation_from_the_header_as_libvips_does() {
        crate::imaging::transform::init().expect("libvips");
        for orientation in [1, 3, 6, 8] {
            let mut img = VipsImage::black_with_opts(40, 20, VOption::new().set("bands", 3)).expect("black");
            img.set_int("orientation", orientation).expect("orientation");
            let jpeg = img.jpegsave_buffer().expect("jpeg");
            let theirs = VipsImage::new_from_buffer(&jpeg, "").expect("libvips reads it");
            assert_eq!(theirs.get_int("orientation").unwrap_or(1), orientation);
            assert_eq!(super::dimensions(&jpeg), Some((40, 20, orientation)));
        }
        let plain = VipsImage::black(7, 5).and_then(|i| i.jpegsave_buffer()).expect("jpeg");
        assert_eq!(super::dimensions(&plain), Some((7, 5, 1)));
        // Both EXIF byte orders, written by hand: one IFD entry, Orientation = 6.
        for tiff in [
            b"II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00".to_vec(),
            b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00".to_vec(),
        ] {
            let mut app1 = b"Exif\0\0".to_vec();
            app1.extend(tiff);
            let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1];
            jpeg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
            jpeg.extend(app1);
            jpeg.extend_from_slice(&plain[2..]);
            let theirs = VipsImage::new_from_buffer(&jpeg, "").expect("libvips reads it");
            assert_eq!(theirs.get_int("orientation").unwrap_or(1), 6, "libvips");
            assert_eq!(super::dimensions(&jpeg), Some((7, 5, 6)));
        }
        assert_eq!(super::dimensions(&plain[..4]), None);
        assert_eq!(super::dimensions(b"\xFF\xD8\xFF\xC0\x00\x01"), None);
    }

    #[test]
    fn decodes_at_a_scale_and_refuses_truncation() {
        crate::imaging::transform::init().expect("libvips");
        let img = VipsImage::black_with_opts(203, 101, VOption::new().set("bands", 3)).expect("black");
        let jpeg = img.jpegsave_buffer().expect("jpeg");
        let d = super::decode(&jpeg, 8).expect("decodes").expect("taken");
        assert_eq!((d.width, d.height, d.bands), (26, 13, 3));
        assert_eq!(d.pixels.len(), 26 * 13 * 3);
        let grey = VipsImage::black(64, 32).and_then(|i| i.jpegsave_buffer()).expect("grey jpeg");
        let d = super::decode(&grey, 2).expect("decodes").expect("taken");
        assert_eq!((d.width, d.height, d.bands), (32, 16, 1));
        assert!(super::decode(&jpeg[..jpeg.len() / 2], 1).is_err(), "truncated");
        assert!(super::decode(b"\xFF\xD8\xFFnot a jpeg", 1).is_err());
        // CMYK is left to libvips.
        let cmyk = VipsImage::black_with_opts(16, 16, VOption::new().set("bands", 4))
            .and_then(|i| i.copy_with_opts(VOption::new().set("interpretation", "cmyk")))
            .and_then(|i| i.jpegsave_buffer())
            .expect("cmyk jpeg");
        assert!(super::decode(&cmyk, 1).expect("header").is_none());
    }
}
