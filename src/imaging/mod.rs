//! Image transformations (what imgproxy does behind Supabase Storage): the
//! parameters (`params.rs`), the libvips work (`transform.rs`), the variant rows
//! (`db.rs`), scaled JPEG decoding (`jpeg.rs`, and `dc.rs` at 1/8; their buffers
//! reused per thread by `scratch.rs`), and here the
//! engine around them: a worker pool of bounded size (its threads in `SCHED_IDLE`
//! by default, so request handling gets a core ahead of any transform) with a bounded
//! queue (overload is refused, not queued without end), coalescing of
//! identical concurrent requests into one transform, a per-transform timeout, and
//! the variant cache in the object store (`variants/…`, one row per variant).
//! The HTTP surface is storage's (`storage/render.rs`).

pub mod db;
pub mod dc;
pub mod jpeg;
pub mod params;
pub mod scratch;
pub mod transform;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::PgPool;
use tokio::sync::{OnceCell, Semaphore};
use uuid::Uuid;

pub use params::{Format, Transform};

use crate::storage::Blobs;
use crate::storage::blobs::BlobError;

/// A refusal or failure of a transformation, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    /// HTTP-like status (400, 422, 503, 500).
    pub status: u16,
    /// Stable code (`InvalidRequest`, `ImageTooLarge`, `ImageResolutionTooLarge`,
    /// `UnsupportedImageFormat`, `InvalidImage`, `Overloaded`, `TransformTimeout`).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ImageError {
    /// An error.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ImageError {
        ImageError { status, code, message: message.into() }
    }
    /// A server-side failure; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> ImageError {
        tracing::error!(error = %cause, "imaging internal error");
        ImageError::new(500, "InternalError", "Internal Server Error")
    }
}

impl From<sqlx::Error> for ImageError {
    fn from(e: sqlx::Error) -> Self {
        ImageError::internal(e)
    }
}

/// A transformed image, ready to send.
#[derive(Debug, Clone)]
pub struct Output {
    /// Encoded bytes.
    pub bytes: Bytes,
    /// MIME type.
    pub content_type: String,
    /// Whether it came from the variant cache.
    pub cached: bool,
}

type Shared = Arc<OnceCell<Result<Arc<Output>, ImageError>>>;

/// The engine: one per process.
#[derive(Debug)]
pub struct Imaging {
    workers: Arc<Semaphore>,
    pool: Workers,
    admitted: AtomicUsize,
    capacity: usize,
    timeout: Duration,
    inflight: Mutex<HashMap<String, Shared>>,
    transforms: AtomicU64,
    /// Recent variants' bytes by (version, params). A version's variant never
    /// changes, so entries need no invalidation: a new version is a new key.
    recent: RwLock<HashMap<String, Arc<Output>>>,
    recent_bytes: AtomicUsize,
}

/// Bytes of variants kept in memory (the rest are read from the object store).
const RECENT_BYTES: usize = 64 * 1024 * 1024;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The CPU scheduling class the imaging workers run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Linux `SCHED_IDLE` (the default): a worker gets a core whenever nothing
    /// else wants it, and gives it up at once when a request-handling thread or
    /// the database wakes. Transforms still use every idle cycle, but they no
    /// longer delay the short work around them (theirs included).
    Idle,
    /// The ordinary time-sharing class, as every other thread.
    Normal,
}

impl Priority {
    const ALL: [Priority; 2] = [Priority::Idle, Priority::Normal];

    /// The configuration value (`idle`, `normal`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Idle => "idle",
            Priority::Normal => "normal",
        }
    }

    /// The class a configuration value names, if any.
    pub fn from_name(name: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Puts the calling thread (and the threads it starts later, libvips' own
    /// among them) in this class. A failure is logged, and the thread runs on.
    /// (Linux only; elsewhere the workers stay in the normal class.)
    fn apply(self) {
        #[cfg(target_os = "linux")]
        if self == Priority::Idle {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler with pid 0 changes only the calling thread
            // and reads `param`, which lives across the call.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "imaging worker left in the normal scheduling class");
            }
        }
    }
}

/// The threads libvips runs on: a fixed set, started on first use, so libvips'
/// per-thread buffers are made once per thread (threads that come and go, as a
/// general blocking pool's do, would leave theirs behind) and stay warm. A job is
/// only handed over by a holder of a worker permit, so one is always idle for it.
/// The threads end when the engine is dropped.
#[derive(Debug)]
struct Workers {
    count: usize,
    priority: Priority,
    jobs: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>>,
}

impl Workers {
    fn run(&self, job: Job) -> Result<(), ImageError> {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..self.count {
                let rx = rx.clone();
                let priority = self.priority;
                let spawned = std::thread::Builder::new().name(format!("carmenta-imaging-{i}")).spawn(move || {
                    priority.apply();
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match next {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                    rs_vips::Vips::thread_shutdown();
                });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "imaging worker thread not started");
                }
            }
            Mutex::new(tx)
        });
        jobs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| ImageError::internal("imaging workers are gone"))
    }
}

/// Releases an admission when dropped.
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Imaging {
    /// `workers` transforms at once, `queue` more waiting, each at most `timeout`,
    /// on worker threads in the scheduling class `priority`.
    pub fn new(workers: usize, queue: usize, timeout: Duration, priority: Priority) -> Imaging {
        let workers = workers.max(1);
        Imaging {
            workers: Arc::new(Semaphore::new(workers)),
            pool: Workers { count: workers, priority, jobs: OnceLock::new() },
            admitted: AtomicUsize::new(0),
            capacity: workers + queue,
            timeout,
            inflight: Mutex::new(HashMap::new()),
            transforms: AtomicU64::new(0),
            recent: RwLock::new(HashMap::new()),
            recent_bytes: AtomicUsize::new(0),
        }
    }

    /// How many transforms this process has run (not counting cache hits and
    /// coalesced requests).
    pub fn transforms_run(&self) -> u64 {
        self.transforms.load(Ordering::Acquire)
    }

    /// The variant of object version `version` (of `size` bytes) for `t` and the
    /// resolved output `out`, whose normalised form is `params`: from the cache,
    /// else made once however many ask at the same time, stored, and returned.
    pub async fn variant(
        &self,
        pool: &PgPool,
        blobs: &Blobs,
        (version, size): (Uuid, i64),
        t: &Transform,
        out: Option<Format>,
        params: &str,
    ) -> Result<Arc<Output>, ImageError> {
        let key = format!("{version}|{params}");
        if let Some(hit) = self.recent.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(hit);
        }
        let looked_up = Instant::now();
        let stored = db::find(pool, version, params).await?;
        stage("lookup", looked_up);
        if let Some(v) = stored {
            let path = Blobs::variant_path(v.id);
            match blobs.read_all(&path).await {
                Ok(bytes) if bytes.len() as i64 == v.size => {
                    let hit = Arc::new(Output { bytes, content_type: v.content_type, cached: true });
                    self.remember(&key, &hit);
                    return Ok(hit);
                }
                // Bytes gone or short (a sweep raced us, a lost write, or a power cut
                // before the unsynced bytes reached the disk): drop them, make it again.
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::debug!(variant = %v.id, "stored image variant missing or short; making it again");
                    db::delete(pool, v.id).await?;
                    let _ = blobs.delete(&path).await;
                }
                Err(e) => return Err(ImageError::internal(e)),
            }
        }
        if u64::try_from(size).unwrap_or(u64::MAX) > transform::MAX_SOURCE_BYTES {
            return Err(transform::too_big_file());
        }
        let cell: Shared = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.clone()).or_default().clone()
        };
        let result = cell.get_or_init(|| self.produce(pool, blobs, version, t, out, params)).await.clone();
        {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                m.remove(&key);
            }
        }
        if let Ok(made) = &result {
            self.remember(&key, &Arc::new(Output { cached: true, ..(**made).clone() }));
        }
        result
    }

    /// Drops the in-memory variants (later reads go to the stored ones).
    pub fn forget_recent(&self) {
        if let Ok(mut m) = self.recent.write() {
            m.clear();
            self.recent_bytes.store(0, Ordering::Relaxed);
        }
    }

    /// Keeps a variant in memory, emptying the map when it would exceed its budget.
    fn remember(&self, key: &str, v: &Arc<Output>) {
        let Ok(mut m) = self.recent.write() else { return };
        if self.recent_bytes.load(Ordering::Relaxed) + v.bytes.len() > RECENT_BYTES {
            m.clear();
            self.recent_bytes.store(0, Ordering::Relaxed);
        }
        if m.insert(key.to_string(), v.clone()).is_none() {
            self.recent_bytes.fetch_add(v.bytes.len(), Ordering::Relaxed);
        }
    }

    async fn produce(
        &self,
        pool: &PgPool,
        blobs: &Blobs,
        version: Uuid,
        t: &Transform,
        out: Option<Format>,
        params: &str,
    ) -> Result<Arc<Output>, ImageError> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(ImageError::new(503, "Overloaded", "too many image transformations at once; retry shortly"));
        }
        let _admission = Admission(&self.admitted);
        // The source is read once a worker is free, so waiting requests hold no bytes.
        let queued = Instant::now();
        let permit = self.workers.clone().acquire_owned().await.map_err(ImageError::internal)?;
        stage("queue", queued);
        // On the local store the worker reads the file itself, into a buffer it
        // keeps (no hop through the blocking pool, no fresh pages per source);
        // elsewhere the bytes are fetched here first.
        let blob = Blobs::blob_path(version);
        let source = match blobs.local_file(&blob) {
            Some(file) => Source::File(file),
            None => {
                let reading = Instant::now();
                let bytes = blobs.read_all(&blob).await.map_err(|e| match e {
                    object_store::Error::NotFound { .. } => not_found(),
                    other => ImageError::internal(other),
                })?;
                stage("read", reading);
                Source::Bytes(bytes)
            }
        };
        self.transforms.fetch_add(1, Ordering::AcqRel);
        metrics::counter!("carmenta_image_transforms_total").increment(1);
        let t2 = t.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        let handed = Instant::now();
        self.pool.run(Box::new(move || {
            // The worker slot is held for as long as libvips runs, even past a timeout.
            let _permit = permit;
            stage("handover", handed);
            let rendered = source.with(|src| {
                let started = Instant::now();
                let r = transform::probe(src, t2.page)
                    .and_then(|probe| transform::render(src, &probe, &t2, out.unwrap_or(probe.kind.origin())));
                stage("transform", started);
                r
            });
            let _ = done.send(rendered);
        }))?;
        let rendered = match tokio::time::timeout(self.timeout, result).await {
            Err(_) => return Err(ImageError::new(503, "TransformTimeout", "Image request timed out")),
            Ok(Err(_)) => return Err(ImageError::internal("an imaging worker stopped")),
            Ok(Ok(r)) => r?,
        };
        let bytes = Bytes::from(rendered.bytes);
        let content_type = rendered.format.mime().to_string();
        // Stored off the request path: the variant is a cache, and the caller (and
        // the in-memory map) already have it; a store lost to a crash is made again.
        let store = (pool.clone(), blobs.clone(), params.to_string(), content_type.clone(), bytes.clone());
        let (w, h) = (rendered.width as i32, rendered.height as i32);
        tokio::spawn(async move {
            let (pool, blobs, params, content_type, bytes) = store;
            let storing = Instant::now();
            let saved = save(&pool, &blobs, version, &params, &content_type, bytes, (w, h)).await;
            stage("store", storing);
            if let Err(e) = saved {
                tracing::warn!(error = %e, "image variant not stored");
            }
        });
        Ok(Arc::new(Output { bytes, content_type, cached: false }))
    }
}

fn not_found() -> ImageError {
    ImageError::new(404, "NoSuchKey", "Object not found")
}

/// A source picture: a file of the local store, mapped by the worker, or bytes
/// already fetched from a remote store.
enum Source {
    File(std::path::PathBuf),
    Bytes(Bytes),
}

impl Source {
    /// Runs `f` on the source's bytes (on an imaging worker thread). A local file
    /// is mapped, not copied: its pages are already in the page cache, and mapping
    /// them (populated up front) costs a fraction of copying 3–25 MB per render.
    fn with<T>(self, f: impl FnOnce(&[u8]) -> Result<T, ImageError>) -> Result<T, ImageError> {
        let file = match self {
            Source::Bytes(b) => return f(&b),
            Source::File(file) => file,
        };
        let reading = Instant::now();
        let opened = std::fs::File::open(&file).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (len, opened) = match opened {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(ImageError::internal(e)),
            Ok(o) => o,
        };
        // The row's size was checked; this bounds a file that grew anyway.
        if len > transform::MAX_SOURCE_BYTES {
            return Err(transform::too_big_file());
        }
        // SAFETY: a blob file is written under a staging name and renamed into
        // place, and never opened for writing again (a new version is a new file;
        // a delete unlinks it, which leaves a mapping intact), so the mapped bytes
        // cannot change or shrink while they are read. (memmap2 maps an empty file
        // as an empty slice.)
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&opened) }.map_err(ImageError::internal)?;
        stage("read", reading);
        f(&map)
    }
}

/// Records how long a stage of an uncached render took, from `since`:
/// `carmenta_image_stage_seconds{stage}` with `lookup` (the stored-variant query),
/// `queue` (waiting for a worker), `handover` (to the worker thread), `read` (the
/// source's bytes), `transform` (libvips and the encoders) and `store` (the
/// variant's bytes and row, after the response).
fn stage(name: &'static str, since: Instant) {
    metrics::histogram!("carmenta_image_stage_seconds", "stage" => name).record(since.elapsed().as_secs_f64());
}

/// Writes a variant's bytes, then its row (only while its version is an object's);
/// the bytes are removed again when the row is not inserted.
async fn save(
    pool: &PgPool,
    blobs: &Blobs,
    version: Uuid,
    params: &str,
    content_type: &str,
    bytes: Bytes,
    (width, height): (i32, i32),
) -> Result<(), BlobError> {
    let id = Uuid::now_v7();
    let size = bytes.len() as i64;
    blobs.write_cache(&Blobs::variant_path(id), bytes).await?;
    let row = db::NewVariant { id, source_version: version, params, content_type, size, width, height };
    if !db::insert(pool, &row).await? {
        // Another replica stored it first, or the object changed meanwhile.
        blobs.delete(&Blobs::variant_path(id)).await?;
    }
    Ok(())
}

/// Removes variant rows whose object version is gone, and variant bytes no row
/// points at that are older than `min_age`. Returns how many blobs were removed.
pub async fn sweep(pool: &PgPool, blobs: &Blobs, min_age: Duration) -> Result<usize, BlobError> {
    db::delete_stale(pool).await?;
    blobs.sweep_unreferenced("variants", min_age, |ids| async move { db::live(pool, &ids).await }).await
}
