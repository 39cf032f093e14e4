//! The libvips work, synchronous (it runs on the blocking pool, one operation per
//! worker): recognising the source by its first bytes, refusing what is too large
//! from the header alone, `thumbnail_buffer` with shrink-on-load (EXIF orientation
//! applied), the crop, and the encoder with metadata stripped.

use std::sync::OnceLock;

use rs_vips::VipsImage;
use rs_vips::voption::{Setter, VOption};

use super::ImageError;
use super::params::{Format, Gravity, MAX_SIDE, Resize, Transform};

/// Largest source accepted, in bytes.
pub const MAX_SOURCE_BYTES: u64 = 25 * 1024 * 1024;
/// Largest source accepted, in pixels.
pub const MAX_SOURCE_PIXELS: u64 = 50_000_000;

/// A source format we decode (everything else is refused before libvips sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
    /// GIF.
    Gif,
    /// AVIF or HEIF.
    Heif,
    /// TIFF.
    Tiff,
    /// PDF (page thumbnails).
    Pdf,
}

impl Source {
    /// Recognises a source by its signature.
    pub fn sniff(b: &[u8]) -> Option<Source> {
        if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Source::Jpeg)
        } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Source::Png)
        } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
            Some(Source::Webp)
        } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
            Some(Source::Gif)
        } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
            Some(Source::Tiff)
        } else if b.starts_with(b"%PDF-") {
            Some(Source::Pdf)
        } else if b.len() >= 12 && &b[4..8] == b"ftyp" {
            let brand = &b[8..12];
            [b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"]
                .iter()
                .any(|x| brand == *x)
                .then_some(Source::Heif)
        } else {
            None
        }
    }

    /// The output format `format=origin` means for this source (browsers cannot
    /// show TIFF or PDF, so those become PNG).
    pub fn origin(self) -> Format {
        match self {
            Source::Jpeg => Format::Jpeg,
            Source::Webp => Format::Webp,
            Source::Gif => Format::Gif,
            Source::Heif => Format::Avif,
            Source::Png | Source::Tiff | Source::Pdf => Format::Png,
        }
    }

    fn paged(self) -> bool {
        matches!(self, Source::Pdf | Source::Tiff | Source::Gif | Source::Heif)
    }
}

/// An encoded result.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// Their format.
    pub format: Format,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
}

/// The loader classes libvips may use; every other loader is blocked.
const ALLOWED_LOADERS: [&str; 8] = [
    "VipsForeignLoadJpeg",
    "VipsForeignLoadPng",
    "VipsForeignLoadWebp",
    "VipsForeignLoadNsgif",
    "VipsForeignLoadGif",
    "VipsForeignLoadHeif",
    "VipsForeignLoadTiff",
    "VipsForeignLoadPdf",
];

// Not in rs-vips' bindings; exported by every libvips 8.x this links against.
unsafe extern "C" {
    fn vips_vector_set_enabled(enabled: std::ffi::c_int);
    fn vips_vector_isenabled() -> std::ffi::c_int;
}

/// Starts libvips once per process: one thread per operation (our worker pool is
/// the parallelism), the operation cache off (each transform is new work, and the
/// cache would pin source buffers), liborc's run-time compiled vector paths off,
/// and only the loaders we need.
///
/// liborc is off because libvips 8.14 compiles a fresh orc program for each
/// resize it builds, and with several transforms at once liborc 0.4.33 crashed the
/// process (a SIGSEGV in `liborc`, seen twice in the imaging bench's in-process
/// loops). The plain C paths are as fast here: the resize that follows the
/// scaled JPEG decode works on a small image, and the per-transform compile goes.
pub fn init() -> Result<(), ImageError> {
    // Kept as text: libvips's error is not Clone, and every later call reports it.
    static INIT: OnceLock<Result<(), std::sync::Arc<str>>> = OnceLock::new();
    INIT.get_or_init(|| {
        rs_vips::Vips::init("carmenta").map_err(|e| std::sync::Arc::<str>::from(e.to_string()))?;
        // SAFETY: a flag libvips reads when it builds an operation; set once, right
        // after vips_init and before any operation runs.
        unsafe { vips_vector_set_enabled(0) };
        rs_vips::Vips::concurrency_set(1);
        rs_vips::Vips::cache_set_max(0);
        rs_vips::Vips::cache_set_max_mem(0);
        rs_vips::Vips::cache_set_max_files(0);
        let block = |name: &str, on: bool| {
            if let Ok(c) = std::ffi::CString::new(name) {
                // SAFETY: a NUL-terminated class name; libvips copies what it needs.
                unsafe { rs_vips::bindings::vips_operation_block_set(c.as_ptr(), i32::from(on)) };
            }
        };
        block("VipsForeignLoad", true);
        for l in ALLOWED_LOADERS {
            block(l, false);
        }
        Ok(())
    })
    .clone()
    .map_err(|e| ImageError::new(500, "InternalError", format!("libvips did not start: {e}")))
}

/// Whether libvips would use liborc's compiled vector paths (false once [`init`] ran).
pub fn vector_paths_enabled() -> bool {
    // SAFETY: reads a libvips flag.
    unsafe { vips_vector_isenabled() != 0 }
}

fn undecodable(e: impl std::fmt::Display) -> ImageError {
    let text = e.to_string();
    tracing::debug!(error = %text, "image not decodable");
    ImageError::new(422, "InvalidImage", "the image could not be decoded (corrupt or truncated)")
}

/// What [`probe`] learnt from a source's header.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// The format.
    pub kind: Source,
    /// Width once upright (EXIF orientation applied).
    pub width: u32,
    /// Height once upright.
    pub height: u32,
    /// The EXIF orientation (1–8).
    pub orientation: i32,
}

/// Checks a source's format and declared size without decoding pixels: the
/// format, the pixel count (≤ 50 MP) and, for paged sources, the page. A JPEG's
/// header is read here; other formats' by libvips.
pub fn probe(src: &[u8], page: u32) -> Result<Probe, ImageError> {
    if src.len() as u64 > MAX_SOURCE_BYTES {
        return Err(too_big_file());
    }
    let kind = Source::sniff(src).ok_or_else(|| {
        ImageError::new(
            422,
            "UnsupportedImageFormat",
            "the object is not an image Carmenta transforms (JPEG, PNG, WebP, GIF, AVIF/HEIF, TIFF, PDF)",
        )
    })?;
    if page > 1 && !kind.paged() {
        return Err(ImageError::new(400, "InvalidRequest", "page applies to PDF and other multi-page sources"));
    }
    let jpeg = if kind == Source::Jpeg { super::jpeg::dimensions(src) } else { None };
    let (w, h, orientation) = match jpeg {
        Some((w, h, orientation)) => (u64::from(w), u64::from(h), orientation),
        None => {
            init()?;
            // A header read: libvips loads lazily, so no pixel is decoded here.
            let head = VipsImage::new_from_buffer(src, "").map_err(undecodable)?;
            if kind.paged() {
                let pages = head.get_int("n-pages").unwrap_or(1).max(1) as u32;
                if page > pages {
                    return Err(ImageError::new(
                        400,
                        "InvalidRequest",
                        format!("page {page} is beyond the document's {pages} page(s)"),
                    ));
                }
            }
            let (w, h) = (head.get_width().max(0) as u64, head.get_height().max(0) as u64);
            (w, h, head.get_int("orientation").unwrap_or(1))
        }
    };
    if w * h > MAX_SOURCE_PIXELS {
        return Err(ImageError::new(
            422,
            "ImageResolutionTooLarge",
            format!("The source image resolution is too large to process ({w}×{h}; at most 50 megapixels)"),
        ));
    }
    let (w, h) = if matches!(orientation, 5..=8) { (h, w) } else { (w, h) };
    Ok(Probe { kind, width: w as u32, height: h as u32, orientation })
}

/// The refusal for a source over 25 MB.
pub fn too_big_file() -> ImageError {
    ImageError::new(422, "ImageTooLarge", "The source image file is too large to process (at most 25 MB)")
}

/// Renders `src` (already probed) into `out`.
pub fn render(src: &[u8], p: &Probe, t: &Transform, out: Format) -> Result<Rendered, ImageError> {
    let (kind, w0, h0) = (p.kind, p.width, p.height);
    init()?;
    // Loader options go in the option string: 8.14's thumbnail_buffer does not
    // hand its own `fail_on` to the loader (a truncated file would render grey).
    let loader = if kind.paged() && t.page > 1 {
        format!("fail_on=truncated,page={}", t.page - 1)
    } else {
        "fail_on=truncated".to_string()
    };
    let (sw, sh) = (f64::from(w0.max(1)), f64::from(h0.max(1)));
    let max = MAX_SIDE as i32;
    let o = VOption::new;
    // (thumbnail width, its options, source pixels per output pixel, a compass cut)
    let (width, opts, shrink, cut) = match (t.width, t.height, t.resize) {
        (Some(w), Some(h), Resize::Fill) => (
            w as i32,
            o().set("height", h as i32).set("size", "force"),
            (sw / f64::from(w)).min(sh / f64::from(h)),
            None,
        ),
        (Some(w), Some(h), Resize::Cover) => {
            let shrink = (sw / f64::from(w)).min(sh / f64::from(h));
            match t.gravity {
                Gravity::Centre => {
                    (w as i32, o().set("height", h as i32).set("crop", "centre").set("size", "both"), shrink, None)
                }
                // Scale to cover the box, then cut the box at the anchor.
                Gravity::Auto | Gravity::Compass(..) => {
                    let tw = (sw / shrink).ceil().max(f64::from(w)) as i32;
                    let th = (sh / shrink).ceil().max(f64::from(h)) as i32;
                    (tw, o().set("height", th).set("size", "both"), shrink, Some((t.gravity, w as i32, h as i32)))
                }
            }
        }
        // Contain, or a single side given: fit inside the box (the missing side is
        // bounded by the output limit).
        (Some(_), Some(_), Resize::Contain) | (Some(_), None, _) | (None, Some(_), _) => {
            let (bw, bh) = (t.width.map_or(max, |w| w as i32), t.height.map_or(max, |h| h as i32));
            (bw, o().set("height", bh).set("size", "both"), (sw / f64::from(bw)).max(sh / f64::from(bh)), None)
        }
        // No size: the picture as it is, down to the output limit.
        (None, None, _) => {
            (max, o().set("height", max).set("size", "down"), (sw / f64::from(max)).max(sh / f64::from(max)), None)
        }
    };
    let mut image = thumbnail(src, p, &loader, width, opts, shrink)?;
    if let Some((gravity, w, h)) = cut {
        let (iw, ih) = (image.get_width(), image.get_height());
        let (cw, ch) = (w.min(iw), h.min(ih));
        let (left, top) = match gravity {
            Gravity::Compass(x, y) => ((i32::from(x) + 1) * (iw - cw) / 2, (i32::from(y) + 1) * (ih - ch) / 2),
            _ => {
                image = image.copy_memory().map_err(undecodable)?;
                let (ax, ay) = attention(&image, cw, ch).map_err(undecodable)?;
                ((ax - cw / 2).clamp(0, iw - cw), (ay - ch / 2).clamp(0, ih - ch))
            }
        };
        image = image.extract_area(left, top, cw, ch).map_err(undecodable)?;
    }
    encode(image, t.quality, out)
}

/// The centre of attention of `image` for a `cw` × `ch` crop, by libvips'
/// attention measure (edges, skin tones, saturation). libvips analyses a copy it
/// resamples to about 32 pixels, and 8.14 builds its resampling kernels afresh for
/// every call, which costs more for a larger shrink than the analysis itself; so it
/// is handed a copy box-shrunk to about 64 pixels first.
fn attention(image: &VipsImage, cw: i32, ch: i32) -> rs_vips::Result<(i32, i32)> {
    let k = (image.get_width().min(image.get_height()) / 64).max(1);
    let small = if k > 1 { image.shrink(f64::from(k), f64::from(k))?.copy_memory()? } else { image.copy_memory()? };
    let (sw, sh) = (small.get_width(), small.get_height());
    let (mut ax, mut ay) = (sw / 2, sh / 2);
    small.smartcrop_with_opts(
        (cw / k).clamp(1, sw),
        (ch / k).clamp(1, sh),
        VOption::new().set("interesting", "attention").set("attention_x", &mut ax).set("attention_y", &mut ay),
    )?;
    Ok((ax * k + k / 2, ay * k + k / 2))
}

/// `thumbnail_buffer`, except for JPEGs: libvips 8.14 shrinks those on load only to
/// twice the target size and resamples the rest, through Debian's libjpeg-turbo
/// 2.1. We decode them with libjpeg-turbo 3 at the whole power-of-two factor (as
/// sharp's `fastShrinkOnLoad` does) and let `thumbnail_image` finish; JPEGs that
/// decoder does not take go to libvips at that factor.
fn thumbnail<'a>(
    src: &'a [u8],
    p: &Probe,
    loader: &'a str,
    width: i32,
    opts: VOption<'a>,
    shrink: f64,
) -> Result<VipsImage, ImageError> {
    if p.kind != Source::Jpeg {
        return VipsImage::thumbnail_buffer_with_opts(src, width, opts.set("option_string", loader))
            .map_err(undecodable);
    }
    let factor = [8u32, 4, 2].into_iter().find(|s| f64::from(*s) <= shrink).unwrap_or(1);
    let loaded = match super::jpeg::decode(src, factor).map_err(undecodable)? {
        Some(d) => {
            let interpretation = if d.bands == 1 { "b-w" } else { "srgb" };
            let img = VipsImage::new_from_memory_copy(
                &d.pixels,
                d.width,
                d.height,
                d.bands,
                rs_vips::enums::BandFormat::Uchar,
            )
            .and_then(|i| i.copy_with_opts(VOption::new().set("interpretation", interpretation)))
            .map_err(undecodable);
            // libvips copied the pixels; the buffer serves the next decode on this thread.
            super::scratch::give_back(d.pixels);
            let mut img = img?;
            if p.orientation > 1 {
                img.set_int("orientation", p.orientation).map_err(undecodable)?;
            }
            img
        }
        None => VipsImage::new_from_buffer(src, &format!("{loader},shrink={factor}")).map_err(undecodable)?,
    };
    loaded.thumbnail_image_with_opts(width, opts).map_err(undecodable)
}

fn encode(mut image: VipsImage, quality: u8, out: Format) -> Result<Rendered, ImageError> {
    let q = i32::from(quality);
    if out == Format::Jpeg && image.hasalpha() {
        image = image
            .flatten_with_opts(VOption::new().set("background", &[255.0, 255.0, 255.0][..]))
            .map_err(undecodable)?;
    }
    let (width, height) = (image.get_width().max(0) as u32, image.get_height().max(0) as u32);
    // Decoding is lazy: a truncated source fails here, while pixels are pulled.
    if out == Format::Webp
        && let Some(bytes) = webp(&image, quality)?
    {
        return Ok(Rendered { bytes, format: out, width, height });
    }
    let bytes = match out {
        Format::Webp => image.webpsave_buffer_with_opts(VOption::new().set("Q", q).set("strip", true)),
        Format::Avif => image.heifsave_buffer_with_opts(
            VOption::new().set("Q", q).set("compression", "av1").set("strip", true).set("effort", 2),
        ),
        Format::Jpeg => {
            image.jpegsave_buffer_with_opts(VOption::new().set("Q", q).set("strip", true).set("optimize_coding", true))
        }
        Format::Png => image.pngsave_buffer_with_opts(VOption::new().set("strip", true).set("compression", 6)),
        Format::Gif => image.gifsave_buffer_with_opts(VOption::new().set("strip", true)),
    }
    .map_err(undecodable)?;
    // libvips 8.14's webpsave writes EXIF even when told to strip.
    let bytes = if out == Format::Webp { strip_webp_metadata(bytes) } else { bytes };
    Ok(Rendered { bytes, format: out, width, height })
}

/// Encodes 8-bit sRGB(A) pixels with the libwebp 1.6 that `libwebp-sys` bundles
/// (the settings of libvips' `webpsave`: lossy, method 4, no metadata), which is a
/// quarter faster than the 1.2 Debian's libvips links. `None` for other pixel
/// layouts, which libvips encodes.
fn webp(image: &VipsImage, quality: u8) -> Result<Option<Vec<u8>>, ImageError> {
    use rs_vips::enums::BandFormat;
    let bands = image.get_bands();
    if image.get_format().ok() != Some(BandFormat::Uchar)
        || !(bands == 3 || bands == 4)
        || !matches!(image.get_interpretation(), Ok(rs_vips::enums::Interpretation::Srgb))
    {
        return Ok(None);
    }
    // Evaluating the pipeline here surfaces decoding errors (a truncated source).
    let pixels = image.copy_memory().map_err(undecodable)?.write_to_memory();
    let (w, h) = (image.get_width(), image.get_height());
    if pixels.len() != (w as usize) * (h as usize) * bands as usize {
        return Ok(None);
    }
    let mut out: *mut u8 = std::ptr::null_mut();
    // SAFETY: `pixels` holds `h` rows of `w × bands` bytes, the stride given; libwebp
    // allocates `out` (freed below with WebPFree) and returns its length, 0 on failure.
    let len = unsafe {
        let encode = if bands == 4 { libwebp_sys::WebPEncodeRGBA } else { libwebp_sys::WebPEncodeRGB };
        encode(pixels.as_ptr(), w, h, w * bands, f32::from(quality), &mut out)
    };
    if out.is_null() || len == 0 {
        return Err(ImageError::internal("libwebp could not encode"));
    }
    // SAFETY: `out` points at `len` bytes libwebp allocated.
    let bytes = unsafe { std::slice::from_raw_parts(out, len) }.to_vec();
    // SAFETY: allocated by libwebp, freed once.
    unsafe { libwebp_sys::WebPFree(out.cast()) };
    Ok(Some(bytes))
}

/// Drops the `EXIF` and `XMP ` chunks of a WebP file (and their flags in `VP8X`).
/// Anything that is not a well-formed RIFF/WebP container is returned unchanged.
pub fn strip_webp_metadata(b: Vec<u8>) -> Vec<u8> {
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WEBP" {
        return b;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..12]);
    let mut i = 12;
    while i + 8 <= b.len() {
        let len = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        let end = i + 8 + len + (len & 1);
        if i + 8 + len > b.len() {
            return b;
        }
        let fourcc = &b[i..i + 4];
        if fourcc != b"EXIF" && fourcc != b"XMP " {
            let start = out.len();
            out.extend_from_slice(&b[i..end.min(b.len())]);
            if fourcc == b"VP8X" && len >= 1 {
                out[start + 8] &= !(0x08 | 0x04);
            }
        }
        i = end;
    }
    let size = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_signatures() {
        assert_eq!(Source::sniff(b"\xFF\xD8\xFF\xE0rest"), Some(Source::Jpeg));
        assert_eq!(Source::sniff(b"\x89PNG\r\n\x1a\nrest"), Some(Source::Png));
        assert_eq!(Source::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Source::Webp));
        assert_eq!(Source::sniff(b"\0\0\0\x1cftypavif"), Some(Source::Heif));
        assert_eq!(Source::sniff(b"%PDF-1.7"), Some(Source::Pdf));
        assert_eq!(Source::sniff(b"<svg"), None);
        assert_eq!(Source::sniff(b"BM\0\0"), None);
    }

    #[test]
    fn only_the_allowed_loaders_run() {
        init().expect("libvips");
        // libvips has an SVG loader (librsvg) and a magick one; both are blocked.
        let svg =
            br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>"#;
        assert!(VipsImage::new_from_buffer(svg, "").is_err());
        let png = VipsImage::black(4, 4).and_then(|i| i.pngsave_buffer()).expect("png");
        assert!(VipsImage::new_from_buffer(&png, "").is_ok());
    }

    #[test]
    fn jpegs_render_through_libjpeg_turbo_3_and_libwebp_1_6() {
        init().expect("libvips");
        let src = VipsImage::black_with_opts(800, 600, VOption::new().set("bands", 3))
            .and_then(|i| i.linear(&[1.0], &[90.0]))
            .and_then(|i| i.cast(rs_vips::enums::BandFormat::Uchar))
            .and_then(|i| i.jpegsave_buffer())
            .expect("jpeg");
        let p = probe(&src, 1).expect("probe");
        let t = Transform::parse([("width", "100")]).expect("transform");
        let out = render(&src, &p, &t, Format::Webp).expect("render");
        assert_eq!((out.width, out.height), (100, 75));
        let back = VipsImage::new_from_buffer(&out.bytes, "").expect("webp decodes");
        assert_eq!((back.get_width(), back.get_height()), (100, 75));
        // libwebp's own encoder was used: libvips' writes an extended (VP8X) file.
        assert!(!out.bytes.windows(4).any(|w| w == b"VP8X"), "simple WebP from libwebp");
    }

    #[test]
    fn webp_metadata_chunks_are_dropped() {
        let chunk = |cc: &[u8], data: &[u8]| {
            let mut c = cc.to_vec();
            c.extend_from_slice(&(data.len() as u32).to_le_bytes());
            c.extend_from_slice(data);
            if data.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let mut body = b"WEBP".to_vec();
        body.extend(chunk(b"VP8X", &[0x08 | 0x04 | 0x10, 0, 0, 0, 1, 0, 0, 1, 0, 0]));
        body.extend(chunk(b"VP8 ", &[1, 2, 3]));
        body.extend(chunk(b"EXIF", b"gps here"));
        body.extend(chunk(b"XMP ", b"<x/>"));
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend(body);
        let out = strip_webp_metadata(file);
        assert!(!out.windows(4).any(|w| w == b"EXIF" || w == b"XMP "));
        assert_eq!(out[20], 0x10, "only the alpha flag is left");
        assert_eq!(u32::from_le_bytes([out[4], out[5], out[6], out[7]]) as usize, out.len() - 8);
        assert!(out.windows(4).any(|w| w == b"VP8 "));
    }
}
