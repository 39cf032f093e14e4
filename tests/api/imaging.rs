//! Image transformations through the real router: every output is decoded again
//! with libvips and its format and dimensions checked; smart crop keeps an
//! off-centre subject; PDF pages differ; bombs, truncated and foreign files are
//! refused with stable codes; identical concurrent requests run one transform;
//! variants are cached, revalidated and dropped with their object; overload is
//! answered 503 with Retry-After; other users get not-found.

use reqwest::{Method, StatusCode};
use rs_vips::VipsImage;
use rs_vips::voption::{Setter, VOption};
use serde_json::json;

use crate::harness::Backend;
use crate::storage::{St, err};

fn vips() {
    carmenta::imaging::transform::init().expect("libvips");
}

/// A flat grey RGB picture with a saturated red disc at (`cx`, `cy`).
pub(crate) fn picture(w: i32, h: i32, disc: Option<(i32, i32, i32)>) -> VipsImage {
    vips();
    let base = VipsImage::black(w, h).unwrap();
    let mut img =
        base.linear(&[1.0, 1.0, 1.0], &[128.0, 128.0, 128.0]).unwrap().cast(rs_vips::enums::BandFormat::Uchar).unwrap();
    if let Some((cx, cy, r)) = disc {
        img.draw_circle_with_opts(&[230.0, 20.0, 20.0], cx, cy, r, VOption::new().set("fill", true)).unwrap();
        img.draw_circle_with_opts(&[250.0, 250.0, 40.0], cx, cy, r / 3, VOption::new().set("fill", true)).unwrap();
    }
    img
}

pub(crate) fn jpeg(img: &VipsImage) -> Vec<u8> {
    img.jpegsave_buffer_with_opts(VOption::new().set("Q", 90)).unwrap()
}

/// Decodes an output: (loader, width, height, image).
fn decode(bytes: &[u8]) -> (String, i32, i32, VipsImage) {
    vips();
    let img = VipsImage::new_from_buffer(bytes, "").expect("output decodes");
    let loader = img.get_string("vips-loader").unwrap_or_default();
    (loader, img.get_width(), img.get_height(), img)
}

/// How many pixels of `img` are the disc's red.
fn red_pixels(img: &VipsImage) -> usize {
    let rgb = img.extract_band_with_opts(0, VOption::new().set("n", 3)).unwrap();
    let px = rgb.write_to_memory();
    px.chunks(3).filter(|p| p[0] > 180 && p[1] < 90 && p[2] < 90).count()
}

/// A two-page PDF: page 1 blank, page 2 with a black square.
fn two_page_pdf() -> Vec<u8> {
    let content2 = "0 0 0 rg 20 20 160 160 re f";
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>".to_string(),
        "<< /Length 0 >>\nstream\n\nendstream".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 6 0 R >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content2}\nendstream", content2.len()),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}

async fn put(st: &St, token: &str, bucket: &str, key: &str, body: Vec<u8>, ct: &str) {
    let r = st
        .req(Method::POST, &format!("/object/{bucket}/{key}"), token)
        .header("content-type", ct)
        .header("x-upsert", "true")
        .body(body)
        .send()
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn get(st: &St, path: &str, token: &str, accept: &str) -> reqwest::Response {
    st.req(Method::GET, path, token).header("accept", accept).send().await
}

async fn variant_rows(st: &St) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM storage_variants").fetch_one(&st.app.pool).await.unwrap()
}

/// Waits for the variants stored in the background to reach `n` rows.
async fn wait_rows(st: &St, n: i64) {
    let start = std::time::Instant::now();
    loop {
        let got = variant_rows(st).await;
        if got == n {
            return;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "{got} variant rows, expected {n}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn setup() -> St {
    let st = St::new(Backend::Fs).await;
    st.bucket("pub", json!({"public": true})).await;
    st.bucket("priv", json!({"public": false})).await;
    st
}

#[tokio::test]
async fn formats_sizes_and_modes() {
    let st = setup().await;
    put(&st, &st.a.jwt, "pub", "p.jpg", jpeg(&picture(800, 400, None)), "image/jpeg").await;
    let any = "*/*";
    // (query, accept, loader, width, height)
    let cases = [
        ("width=150&height=150&resize=cover", "image/webp,*/*", "webpload", 150, 150),
        ("width=150&height=150&resize=cover", "image/jpeg", "jpegload", 150, 150),
        ("width=200&height=200&resize=contain&format=png", any, "pngload", 200, 100),
        ("width=120&height=90&resize=fill&format=jpeg&quality=50", any, "jpegload", 120, 90),
        ("width=100&format=avif", any, "heifload", 100, 50),
        ("height=40&format=origin", "image/webp", "jpegload", 80, 40),
        ("width=300&height=100&gravity=soea", "image/webp", "webpload", 300, 100),
        ("format=webp", any, "webpload", 800, 400),
    ];
    for (q, accept, loader, w, h) in cases {
        let r = get(&st, &format!("/render/image/public/pub/p.jpg?{q}"), "", accept).await;
        assert_eq!(r.status(), 200, "{q}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let bytes = r.bytes().await.unwrap();
        let (got, gw, gh, _) = decode(&bytes);
        assert!(got.starts_with(loader), "{q}: {got} ({ct})");
        assert_eq!((gw, gh), (w, h), "{q}");
    }
    // The same parameters on the public object URL transform it too.
    let r = get(&st, "/object/public/pub/p.jpg?width=64&height=64", "", "image/webp").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/webp");
    let (_, w, h, _) = decode(&r.bytes().await.unwrap());
    assert_eq!((w, h), (64, 64));
    // Without parameters it is the object itself.
    let r = get(&st, "/object/public/pub/p.jpg", "", "image/webp").await;
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    // download names the file.
    let r = get(&st, "/render/image/public/pub/p.jpg?width=10&download=small.webp", "", "image/webp").await;
    assert!(r.headers()["content-disposition"].to_str().unwrap().contains("small"));
    // Bad values: 400 with a stable code.
    for q in ["width=2501", "width=abc", "resize=crop", "quality=10", "format=bmp", "gravity=up", "page=0"] {
        let r = get(&st, &format!("/render/image/public/pub/p.jpg?{q}"), "", any).await;
        err(r, 400, "400", "InvalidRequest").await;
    }
}

#[tokio::test]
async fn orientation_applied_and_metadata_stripped() {
    let st = setup().await;
    vips();
    let mut img = picture(200, 100, None);
    img.set_int("orientation", 6).unwrap();
    img.set_string("exif-ifd0-Artist", "someone").unwrap();
    let src = img.jpegsave_buffer().unwrap();
    let head = VipsImage::new_from_buffer(&src, "").unwrap();
    assert!(head.get_typeof("exif-data").unwrap_or(0) != 0, "the source carries EXIF");
    assert_eq!(head.get_int("orientation").unwrap(), 6);
    put(&st, &st.a.jwt, "pub", "o.jpg", src, "image/jpeg").await;
    for fmt in ["jpeg", "webp", "png", "avif"] {
        let r = get(&st, &format!("/render/image/public/pub/o.jpg?width=50&format={fmt}"), "", "*/*").await;
        assert_eq!(r.status(), 200);
        let (_, w, h, out) = decode(&r.bytes().await.unwrap());
        // Rotated upright: 100×200, fitted to 50 wide.
        assert_eq!((w, h), (50, 100), "{fmt}");
        assert_eq!(out.get_typeof("exif-data").unwrap_or(0), 0, "{fmt}: EXIF (GPS included) stripped");
        assert_eq!(out.get_typeof("xmp-data").unwrap_or(0), 0, "{fmt}");
    }
}

#[tokio::test]
async fn smart_crop_keeps_an_off_centre_subject() {
    let st = setup().await;
    // The subject sits at the far right of a wide picture.
    put(&st, &st.a.jwt, "pub", "wide.jpg", jpeg(&picture(1500, 500, Some((1320, 250, 140)))), "image/jpeg").await;
    let fetch = |gravity: &'static str| {
        let st = &st;
        async move {
            let r = get(
                st,
                &format!(
                    "/render/image/public/pub/wide.jpg?width=300&height=300&resize=cover&gravity={gravity}&format=png"
                ),
                "",
                "*/*",
            )
            .await;
            assert_eq!(r.status(), 200);
            let (_, w, h, img) = decode(&r.bytes().await.unwrap());
            assert_eq!((w, h), (300, 300));
            red_pixels(&img)
        }
    };
    let auto = fetch("auto").await;
    let centre = fetch("ce").await;
    let east = fetch("ea").await;
    // The disc is ~280 px across in a 500 px high picture cut to 300: most of it stays.
    assert!(auto > 10_000, "gravity=auto keeps the subject ({auto} red pixels)");
    assert_eq!(centre, 0, "the centre crop misses it");
    assert!(east > 10_000, "gravity=ea keeps it too ({east})");
}

#[tokio::test]
async fn pdf_pages() {
    let st = setup().await;
    put(&st, &st.a.jwt, "priv", "doc.pdf", two_page_pdf(), "application/pdf").await;
    let page = |n: u32| {
        let st = &st;
        async move {
            let r = get(st, &format!("/render/image/authenticated/priv/doc.pdf?width=100&page={n}"), &st.a.jwt, "*/*")
                .await;
            assert_eq!(r.status(), 200, "page {n}");
            assert_eq!(r.headers()["content-type"], "image/png", "PDF origin is PNG");
            let (loader, w, h, img) = decode(&r.bytes().await.unwrap());
            assert!(loader.starts_with("pngload"));
            assert_eq!((w, h), (100, 100));
            img.avg().unwrap()
        }
    };
    let one = page(1).await;
    let two = page(2).await;
    assert!(one > 250.0, "page 1 is blank ({one})");
    assert!(two < one - 50.0, "page 2 has the black square ({two} vs {one})");
    let r = get(&st, "/render/image/authenticated/priv/doc.pdf?width=100&page=3", &st.a.jwt, "*/*").await;
    err(r, 400, "400", "InvalidRequest").await;
}

#[tokio::test]
async fn hostile_input_is_refused() {
    let st = setup().await;
    vips();
    // liborc's run-time compiler is off (it crashed the process under concurrent transforms).
    assert!(!carmenta::imaging::transform::vector_paths_enabled());
    // A decompression bomb: 60 megapixels in a few hundred kilobytes.
    let bomb = VipsImage::black(10_000, 6_000)
        .unwrap()
        .pngsave_buffer_with_opts(VOption::new().set("compression", 9))
        .unwrap();
    assert!(bomb.len() < 2_000_000, "{}", bomb.len());
    put(&st, &st.a.jwt, "pub", "bomb.png", bomb, "image/png").await;
    let r = get(&st, "/render/image/public/pub/bomb.png?width=100", "", "*/*").await;
    err(r, 422, "422", "ImageResolutionTooLarge").await;
    // A JPEG whose header claims 60000×60000.
    let mut liar = jpeg(&picture(64, 64, None));
    let sof = liar.windows(2).position(|w| w == [0xFF, 0xC0]).expect("SOF0");
    liar[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    put(&st, &st.a.jwt, "pub", "liar.jpg", liar, "image/jpeg").await;
    let r = get(&st, "/render/image/public/pub/liar.jpg?width=100", "", "*/*").await;
    err(r, 422, "422", "ImageResolutionTooLarge").await;
    // Truncated: half a JPEG.
    let full = jpeg(&picture(600, 400, Some((300, 200, 100))));
    put(&st, &st.a.jwt, "pub", "cut.jpg", full[..full.len() / 2].to_vec(), "image/jpeg").await;
    let r = get(&st, "/render/image/public/pub/cut.jpg?width=100&format=png", "", "*/*").await;
    err(r, 422, "422", "InvalidImage").await;
    // Not an image we decode (whatever its content type says), and an SVG.
    put(&st, &st.a.jwt, "pub", "fake.png", b"hello, world".to_vec(), "image/png").await;
    let r = get(&st, "/render/image/public/pub/fake.png?width=100", "", "*/*").await;
    err(r, 422, "422", "UnsupportedImageFormat").await;
    // An empty file (the worker maps sources; an empty one cannot be mapped).
    put(&st, &st.a.jwt, "pub", "empty.jpg", Vec::new(), "image/jpeg").await;
    let r = get(&st, "/render/image/public/pub/empty.jpg?width=100", "", "*/*").await;
    err(r, 422, "422", "UnsupportedImageFormat").await;
    put(&st, &st.a.jwt, "pub", "x.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(), "image/svg+xml").await;
    let r = get(&st, "/render/image/public/pub/x.svg?width=100", "", "*/*").await;
    err(r, 422, "422", "UnsupportedImageFormat").await;
    // Over 25 MB: refused from the row's size, before reading a byte.
    let big = vec![0u8; 26 * 1024 * 1024];
    put(&st, &st.a.jwt, "pub", "big.jpg", big, "image/jpeg").await;
    let r = get(&st, "/render/image/public/pub/big.jpg?width=100", "", "*/*").await;
    err(r, 422, "422", "ImageTooLarge").await;
    assert_eq!(variant_rows(&st).await, 0);
}

#[tokio::test]
async fn identical_concurrent_requests_run_one_transform() {
    let st = setup().await;
    put(&st, &st.a.jwt, "pub", "c.jpg", jpeg(&picture(2000, 1500, Some((500, 500, 200)))), "image/jpeg").await;
    let before = st.app.state.storage.imaging.transforms_run();
    let url = st.url("/render/image/public/pub/c.jpg?width=300&height=300&gravity=auto");
    let reqs = (0..20).map(|_| {
        let c = st.app.client.clone();
        let url = url.clone();
        async move {
            let r = c.get(url).header("accept", "image/webp").send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }
    });
    let outs = futures::future::join_all(reqs).await;
    assert!(outs.windows(2).all(|w| w[0] == w[1]), "every caller got the same bytes");
    assert_eq!(st.app.state.storage.imaging.transforms_run() - before, 1, "one transform for 20 requests");
    wait_rows(&st, 1).await;
}

/// The scheduling policy of each of this process's threads whose name starts
/// with `prefix` (field 41 of `/proc/self/task/<tid>/stat`).
fn policies(prefix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // "tid (comm) state …": the comm may hold spaces, so split after its ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // Fields after the comm start at field 3; the policy is field 41.
        let policy = stat[close + 2..].split(' ').nth(41 - 3).and_then(|p| p.parse().ok()).unwrap();
        out.push(policy);
    }
    out
}

#[tokio::test]
async fn workers_yield_the_cpu_to_request_handling() {
    let st = setup().await;
    put(&st, &st.a.jwt, "pub", "y.jpg", jpeg(&picture(400, 300, None)), "image/jpeg").await;
    let r = get(&st, "/render/image/public/pub/y.jpg?width=100", "", "image/webp").await;
    assert_eq!(r.status(), 200);
    // Every engine in this test process runs with the default `idle` class.
    let workers = policies("carmenta-imagin");
    assert!(!workers.is_empty(), "the imaging workers are running");
    assert!(workers.iter().all(|p| *p == libc::SCHED_IDLE as u32), "workers' policies: {workers:?}");
    // The thread that handled the request (this test's runtime) stays in the normal class.
    let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    assert_eq!(policies(me.trim()), vec![libc::SCHED_OTHER as u32], "the test thread ({me}) is not an imaging worker");
}

#[tokio::test]
async fn variants_are_cached_revalidated_and_dropped() {
    let st = setup().await;
    put(&st, &st.a.jwt, "pub", "v.jpg", jpeg(&picture(400, 200, None)), "image/jpeg").await;
    let path = "/render/image/public/pub/v.jpg?width=100&height=100";
    let r = get(&st, path, "", "image/webp").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-variant-cache"], "miss");
    assert_eq!(r.headers()["vary"], "Accept");
    assert!(
        r.headers()["cache-control"].to_str().unwrap().starts_with("max-age")
            || r.headers().contains_key("cache-control")
    );
    let xt = r.headers()["x-transformations"].to_str().unwrap().to_string();
    assert!(xt.contains("width:100") && xt.contains("height:100") && xt.contains("format:webp"), "{xt}");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let first = r.bytes().await.unwrap();
    let ran = st.app.state.storage.imaging.transforms_run();
    let r = get(&st, path, "", "image/webp").await;
    assert_eq!(r.headers()["x-variant-cache"], "hit");
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap(), first);
    assert_eq!(st.app.state.storage.imaging.transforms_run(), ran, "served from the variant cache");
    // From the stored variant too (another replica, or after a restart).
    wait_rows(&st, 1).await;
    st.app.state.storage.imaging.forget_recent();
    let r = get(&st, path, "", "image/webp").await;
    assert_eq!(r.headers()["x-variant-cache"], "hit");
    assert_eq!(r.bytes().await.unwrap(), first);
    assert_eq!(st.app.state.storage.imaging.transforms_run(), ran, "served from the stored variant");
    // Another Accept is another variant, with another ETag.
    let r = get(&st, path, "", "image/jpeg").await;
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    wait_rows(&st, 2).await;
    // Revalidation.
    let r = st.req(Method::GET, path, "").header("accept", "image/webp").header("if-none-match", &etag).send().await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    // Overwriting the object drops its variants; the next render is of the new bytes.
    put(&st, &st.a.jwt, "pub", "v.jpg", jpeg(&picture(200, 400, None)), "image/jpeg").await;
    assert_eq!(variant_rows(&st).await, 0);
    let r = get(&st, "/render/image/public/pub/v.jpg?width=100", "", "image/webp").await;
    assert_eq!(r.headers()["x-variant-cache"], "miss");
    let (_, w, h, _) = decode(&r.bytes().await.unwrap());
    assert_eq!((w, h), (100, 200));
    wait_rows(&st, 1).await;
    // Deleting it drops them too; the sweeper removes their bytes.
    let r = st.req(Method::DELETE, "/object/pub/v.jpg", &st.a.jwt).send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(variant_rows(&st).await, 0);
    assert_eq!(st.app.state.storage.blobs.list("variants").await.unwrap().len(), 3);
    let rep =
        carmenta::storage::sweep(&st.app.pool, &st.app.state.storage.blobs, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(rep.variants, 3);
    assert!(st.app.state.storage.blobs.list("variants").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stored_variant_shorter_than_its_row_is_made_again() {
    // Variant bytes are written without an fsync: after a power cut one can be
    // short. Its row's size tells, and it is rendered again, not served cut.
    let st = setup().await;
    put(&st, &st.a.jwt, "pub", "s.jpg", jpeg(&picture(400, 300, Some((100, 100, 40)))), "image/jpeg").await;
    let path = "/render/image/public/pub/s.jpg?width=120";
    let r = get(&st, path, "", "image/webp").await;
    assert_eq!(r.headers()["x-variant-cache"], "miss");
    let first = r.bytes().await.unwrap();
    wait_rows(&st, 1).await;
    let (id, size): (uuid::Uuid, i64) =
        sqlx::query_as("SELECT id, size FROM storage_variants").fetch_one(&st.app.pool).await.unwrap();
    assert_eq!(size, first.len() as i64);
    let blobs = &st.app.state.storage.blobs;
    let file = blobs.local_file(&carmenta::storage::Blobs::variant_path(id)).expect("a local store");
    std::fs::write(&file, &first[..first.len() / 2]).unwrap();
    st.app.state.storage.imaging.forget_recent();
    let ran = st.app.state.storage.imaging.transforms_run();
    let r = get(&st, path, "", "image/webp").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-variant-cache"], "miss", "the short variant is not served");
    let again = r.bytes().await.unwrap();
    let (loader, w, h, _) = decode(&again);
    assert!(loader.starts_with("webpload"), "{loader}");
    assert_eq!((w, h), (120, 90));
    assert_eq!(again.len(), first.len());
    assert_eq!(st.app.state.storage.imaging.transforms_run(), ran + 1);
    // The short one's row is gone and the new one recorded in its place.
    wait_rows(&st, 1).await;
    let (new_id, new_size): (uuid::Uuid, i64) =
        sqlx::query_as("SELECT id, size FROM storage_variants").fetch_one(&st.app.pool).await.unwrap();
    assert_ne!(new_id, id);
    assert_eq!(new_size, first.len() as i64);
    assert!(!file.exists(), "the short variant's bytes are deleted");
}

#[tokio::test]
async fn ownership_and_signed_renders() {
    let st = setup().await;
    put(&st, &st.a.jwt, "priv", "me.jpg", jpeg(&picture(300, 300, None)), "image/jpeg").await;
    let r = get(&st, "/render/image/authenticated/priv/me.jpg?width=50", &st.a.jwt, "*/*").await;
    assert_eq!(r.status(), 200);
    // Another user, and anyone through the public route, find nothing.
    let r = get(&st, "/render/image/authenticated/priv/me.jpg?width=50", &st.b.jwt, "*/*").await;
    err(r, 400, "404", "NoSuchKey").await;
    let r = get(&st, "/render/image/public/priv/me.jpg?width=50", "", "*/*").await;
    err(r, 400, "404", "NoSuchBucket").await;
    let r = get(&st, "/render/image/authenticated/priv/me.jpg?width=50", "", "*/*").await;
    assert_eq!(r.status(), 400);
    // A signed render URL carries the transformation; the query cannot change it.
    let r = st
        .req(Method::POST, "/object/sign/priv/me.jpg", &st.a.jwt)
        .json(&json!({"expiresIn": 60, "transform": {"width": 120, "height": 60, "resize": "fill", "format": "png"}}))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let signed = r.json::<serde_json::Value>().await.unwrap()["signedURL"].as_str().unwrap().to_string();
    assert!(signed.starts_with("/render/image/sign/priv/me.jpg?token="), "{signed}");
    let r = get(&st, &format!("{signed}&width=10"), "", "*/*").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("expires"));
    let (loader, w, h, _) = decode(&r.bytes().await.unwrap());
    assert!(loader.starts_with("pngload"));
    assert_eq!((w, h), (120, 60));
    let r = get(&st, &format!("{}x", signed), "", "*/*").await;
    err(r, 400, "400", "InvalidSignature").await;
    // B cannot sign A's object.
    let r = st
        .req(Method::POST, "/object/sign/priv/me.jpg", &st.b.jwt)
        .json(&json!({"expiresIn": 60, "transform": {"width": 10}}))
        .send()
        .await;
    err(r, 400, "404", "NoSuchKey").await;
}

#[tokio::test]
async fn overload_is_answered_503() {
    let st = St::with(Backend::Fs, |c| {
        c.imaging_workers = 1;
        c.imaging_queue = 0;
    })
    .await;
    st.bucket("pub", json!({"public": true})).await;
    put(&st, &st.a.jwt, "pub", "big.jpg", jpeg(&picture(2400, 1800, Some((1200, 900, 600)))), "image/jpeg").await;
    // Distinct transforms (no coalescing), slow ones (AVIF at full size), all at once.
    let reqs = (0..6).map(|i| {
        let c = st.app.client.clone();
        let url = st.url(&format!("/render/image/public/pub/big.jpg?format=avif&quality={}", 60 + i));
        async move { c.get(url).send().await.unwrap() }
    });
    let res = futures::future::join_all(reqs).await;
    let ok = res.iter().filter(|r| r.status() == 200).count();
    let busy: Vec<&reqwest::Response> = res.iter().filter(|r| r.status() == 503).collect();
    assert!(ok >= 1, "one runs");
    assert!(!busy.is_empty(), "the others are refused while the one worker is busy");
    for r in busy {
        assert!(r.headers().contains_key("retry-after"));
    }
}

#[tokio::test]
async fn a_transform_past_its_timeout_is_answered_503_and_nothing_is_stored() {
    let st = St::with(Backend::Fs, |c| c.imaging_timeout = std::time::Duration::from_millis(1)).await;
    st.bucket("pub", json!({"public": true})).await;
    put(&st, &st.a.jwt, "pub", "big.jpg", jpeg(&picture(2400, 1800, Some((1200, 900, 600)))), "image/jpeg").await;
    // A full-size AVIF takes far longer than a millisecond.
    let r = st.app.client.get(st.url("/render/image/public/pub/big.jpg?format=avif")).send().await.unwrap();
    err(r, 503, "503", "TransformTimeout").await;
    // The worker finishes in the background; no variant is stored for it.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(variant_rows(&st).await, 0);
}

#[tokio::test]
async fn storage_js_transforms() {
    let st = setup().await;
    let dir = crate::harness::temp_dir("carmenta-imaging-js");
    let image = dir.join("p.png");
    std::fs::write(&image, picture(400, 200, None).pngsave_buffer().unwrap()).unwrap();
    let out = crate::storage::node(
        "storage-js-transform.mjs",
        &[
            ("STORAGE_URL", st.url("")),
            ("SERVICE_KEY", st.key.clone()),
            ("USER_A", st.a.jwt.clone()),
            ("USER_B", st.b.jwt.clone()),
            ("IMAGE", image.display().to_string()),
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let done = out.lines().find_map(|l| l.strip_prefix("done ")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    assert_eq!(done, "10", "{out}");
}

#[tokio::test]
async fn a_source_whose_bytes_are_gone_is_not_found_and_stages_are_timed() {
    let st = setup().await;
    put(&st, &st.a.jwt, "pub", "g.jpg", jpeg(&picture(400, 300, None)), "image/jpeg").await;
    // A render read by the worker from the local store, timed stage by stage.
    let r = get(&st, "/render/image/public/pub/g.jpg?width=100", "", "image/webp").await;
    assert_eq!(r.status(), 200);
    let (_, w, _, _) = decode(&r.bytes().await.unwrap());
    assert_eq!(w, 100);
    let metrics = st.app.call(Method::GET, "/metrics").send().await.text().await.unwrap();
    for stage in ["lookup", "queue", "handover", "read", "transform"] {
        assert!(
            metrics.contains(&format!("carmenta_image_stage_seconds_count{{stage=\"{stage}\"}}")),
            "stage {stage} missing from /metrics"
        );
    }
    // The blob vanishes under the row (a lost disk file): the next render says
    // NoSuchKey (HTTP 400 with statusCode 404, as Supabase answers), not a server error.
    let version: uuid::Uuid = sqlx::query_scalar("SELECT version FROM storage_objects WHERE name = 'g.jpg'")
        .fetch_one(&st.app.pool)
        .await
        .unwrap();
    let blobs = &st.app.state.storage.blobs;
    let file = blobs.local_file(&carmenta::storage::Blobs::blob_path(version)).expect("a local store");
    std::fs::remove_file(&file).unwrap();
    let r = get(&st, "/render/image/public/pub/g.jpg?width=101", "", "image/webp").await;
    err(r, 400, "404", "NoSuchKey").await;
}
