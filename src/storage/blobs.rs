//! The bytes of stored objects, in `object_store` (local directory or S3): streaming
//! writes that never hold a whole object in memory, ranged streaming reads, copies,
//! deletes, and the listing the orphan sweeper walks.
//!
//! Layout: `blobs/<2 hex>/<version uuid>` for object bytes (one blob per written
//! version, never overwritten, so a reader never sees a half-written object) and
//! `uploads/<upload id>/<offset>` for the pieces of resumable uploads in progress.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use uuid::Uuid;

use crate::config::StorageBackend;

/// Size of the pieces an upload is sent to the store in (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Size of the pieces a local file is read in.
const READ_CHUNK: usize = 256 * 1024;
/// Parts in flight at once per upload.
const PART_CONCURRENCY: usize = 2;

/// Why writing a blob failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The body grew past the limit; nothing was kept.
    #[error("the object exceeded the maximum allowed size")]
    TooLarge,
    /// The client's body failed (connection cut); nothing was kept.
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// A finished write.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// Bytes written.
    pub size: u64,
    /// Whether the body ended early (only with `keep_partial`): what arrived is kept.
    pub interrupted: bool,
}

/// The object store and its layout.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is the local filesystem: its files can be named
    /// (staging files need sweeping; imaging workers read sources themselves).
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    /// Where caches (image variants) are written: the same store, but on the local
    /// filesystem without the fsync, since a cache entry lost to a power cut is
    /// made again (readers check its length against its row).
    cache: Arc<dyn ObjectStore>,
}

/// Objects are the users' data: the store's directory is the owner's alone (0700),
/// and files and folders created from now on are too (the process's umask gains
/// 077; object_store creates them with the default modes).
fn private_files(root: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only sets the process's file-creation mask; reading it needs setting it.
    unsafe {
        let old = libc::umask(0o077);
        libc::umask(old | 0o077);
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
}

/// Why the object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The local directory could not be created.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store refused its configuration.
    #[error("opening the object store: {0}")]
    Store(#[from] object_store::Error),
}

/// An error of work over blobs and their rows (sweeps, variant writes).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The local filesystem failed.
    #[error("filesystem: {0}")]
    Io(#[from] std::io::Error),
}

impl Blobs {
    /// Opens the configured store (creating the local directory if needed).
    pub fn open(backend: &StorageBackend) -> Result<Blobs, OpenError> {
        let store: Arc<dyn ObjectStore> = match backend {
            StorageBackend::Fs { root } => {
                std::fs::create_dir_all(root).map_err(|source| OpenError::CreateDir { path: root.clone(), source })?;
                private_files(root).map_err(|source| OpenError::CreateDir { path: root.clone(), source })?;
                // fsync before a write returns: the row that follows must never point
                // at bytes a power cut could lose.
                let fs = object_store::local::LocalFileSystem::new_with_prefix(root)?.with_fsync(true);
                let fs = Arc::new(fs);
                let cache = object_store::local::LocalFileSystem::new_with_prefix(root)?;
                return Ok(Blobs { store: fs.clone(), local: Some(fs), cache: Arc::new(cache) });
            }
            StorageBackend::S3(s3) => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(!s3.path_style);
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e.as_str().trim_end_matches('/')).with_allow_http(e.scheme() == "http");
                }
                if let Some(k) = &s3.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(s) = &s3.secret_access_key {
                    b = b.with_secret_access_key(s.expose());
                }
                Arc::new(b.build()?)
            }
        };
        Ok(Blobs { cache: store.clone(), store, local: None })
    }

    /// `<folder>/<first two hex digits>/<id>`: ids spread over 256 folders.
    fn sharded(folder: &str, id: Uuid) -> Path {
        let s = id.simple().to_string();
        Path::from(format!("{folder}/{}/{s}", &s[..2]))
    }

    /// Where the bytes of object version `v` live.
    pub fn blob_path(v: Uuid) -> Path {
        Self::sharded("blobs", v)
    }

    /// Where the bytes of image variant `id` live.
    pub fn variant_path(id: Uuid) -> Path {
        Self::sharded("variants", id)
    }

    /// The file holding blob `path` when the store is the local filesystem (for
    /// readers that do their own blocking I/O on a thread of their own), else `None`.
    pub fn local_file(&self, path: &Path) -> Option<std::path::PathBuf> {
        self.local.as_ref()?.path_to_filesystem(path).ok()
    }

    /// The folder holding the pieces of resumable upload `id`.
    pub fn upload_dir(id: Uuid) -> Path {
        Path::from(format!("uploads/{}", id.simple()))
    }

    /// The piece of upload `id` starting at `offset`.
    pub fn upload_piece(id: Uuid, offset: u64) -> Path {
        Path::from(format!("uploads/{}/{offset:020}", id.simple()))
    }

    /// Writes `body` to `path`, refusing more than `limit` bytes. Small bodies go in
    /// one request; larger ones as a multipart upload that holds at most a few parts
    /// in memory. The object appears whole or not at all. With `keep_partial`, a body
    /// that fails midway keeps what arrived (resumable uploads).
    pub async fn write<S, E>(&self, path: &Path, body: S, limit: u64, keep_partial: bool) -> Result<Written, WriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        let mut first: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        let mut size = 0u64;
        let mut interrupted = false;
        // Buffer up to one part: most objects are small and need a single PUT.
        loop {
            match body.next().await {
                None => break,
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(WriteError::TooLarge);
                    }
                    buffered += chunk.len();
                    first.push(chunk);
                    if buffered >= PART_SIZE {
                        break;
                    }
                }
                Some(Err(e)) if keep_partial => {
                    let _ = e;
                    interrupted = true;
                    break;
                }
                Some(Err(e)) => return Err(WriteError::Body(e.to_string())),
            }
        }
        if buffered < PART_SIZE || interrupted {
            let payload: PutPayload = first.into_iter().collect();
            self.store.put(path, payload).await?;
            return Ok(Written { size, interrupted });
        }
        let upload = self.store.put_multipart(path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        for chunk in first {
            w.put(chunk);
        }
        loop {
            match body.next().await {
                None => break,
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        let _ = w.abort().await;
                        return Err(WriteError::TooLarge);
                    }
                    w.put(chunk);
                    if let Err(e) = w.wait_for_capacity(PART_CONCURRENCY).await {
                        return Err(e.into());
                    }
                }
                Some(Err(_)) if keep_partial => {
                    interrupted = true;
                    break;
                }
                Some(Err(e)) => {
                    let _ = w.abort().await;
                    return Err(WriteError::Body(e.to_string()));
                }
            }
        }
        w.finish().await?;
        Ok(Written { size, interrupted })
    }

    /// Writes a cache entry (an image variant) in one piece. It is not synced to
    /// disk before this returns: after a power cut it may be missing or short, so
    /// its reader compares its length with the size it recorded.
    pub async fn write_cache(&self, path: &Path, bytes: Bytes) -> Result<(), object_store::Error> {
        self.cache.put(path, PutPayload::from(bytes)).await.map(|_| ())
    }

    /// Streams `path`, or the byte `range` of it. A local file is read in 256 KiB
    /// pieces (`object_store`'s own file stream reads 8 KiB per blocking call).
    pub async fn read(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        let opts = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let got = self.store.get_opts(path, opts).await?;
        let range = got.range.clone();
        match got.payload {
            GetResultPayload::File(file, _) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut f = tokio::fs::File::from_std(file);
                f.set_max_buf_size(READ_CHUNK);
                f.seek(std::io::SeekFrom::Start(range.start))
                    .await
                    .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
                let reader = f.take(range.end - range.start);
                Ok(tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK)
                    .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })
                    .boxed())
            }
            GetResultPayload::Stream(s) => Ok(s),
        }
    }

    /// A whole blob in one buffer (one allocation, no joining of pieces).
    pub async fn read_all(&self, path: &Path) -> Result<Bytes, object_store::Error> {
        self.store.get(path).await?.bytes().await
    }

    /// [`Blobs::read`] of a whole blob as an owned, boxed future (for stream combinators).
    pub fn read_owned(
        &self,
        path: Path,
    ) -> futures::future::BoxFuture<
        'static,
        Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error>,
    > {
        let me = self.clone();
        Box::pin(async move { me.read(&path, None).await })
    }

    /// Copies `from` to `to` inside the store.
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<(), object_store::Error> {
        self.store.copy(from, to).await
    }

    /// Moves `from` to `to` inside the store.
    pub async fn rename(&self, from: &Path, to: &Path) -> Result<(), object_store::Error> {
        self.store.rename(from, to).await
    }

    /// Deletes `path`; a missing blob is not an error.
    pub async fn delete(&self, path: &Path) -> Result<(), object_store::Error> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes every blob under `prefix`.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<(), object_store::Error> {
        let items: Vec<ObjectMeta> = self.store.list(Some(prefix)).try_collect().await?;
        for m in items {
            self.delete(&m.location).await?;
        }
        Ok(())
    }

    /// Deletes the blobs under `prefix`, named by a UUID, older than `min_age`, that
    /// `live` (given batches of ids) does not report as referenced. Returns how
    /// many were deleted.
    pub async fn sweep_unreferenced<F, Fut>(
        &self,
        prefix: &str,
        min_age: std::time::Duration,
        live: F,
    ) -> Result<usize, BlobError>
    where
        F: Fn(Vec<Uuid>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Uuid>, sqlx::Error>>,
    {
        let cutoff =
            time::OffsetDateTime::now_utc().unix_timestamp() - i64::try_from(min_age.as_secs()).unwrap_or(i64::MAX / 2);
        let old: Vec<(Uuid, Path)> = self
            .list(prefix)
            .await?
            .into_iter()
            .filter(|m| m.last_modified.timestamp() <= cutoff)
            .filter_map(|m| Some((Uuid::parse_str(m.location.filename()?).ok()?, m.location)))
            .collect();
        let mut removed = 0;
        for chunk in old.chunks(500) {
            let referenced = live(chunk.iter().map(|(id, _)| *id).collect()).await?;
            for (id, path) in chunk {
                if !referenced.contains(id) {
                    self.delete(path).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Everything under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, object_store::Error> {
        self.store.list(Some(&Path::from(prefix))).try_collect().await
    }

    /// Removes the local store's staging files (`name#123`, invisible to listings)
    /// older than `min_age`: what a process killed mid-write leaves. Returns how many.
    pub async fn sweep_staging(&self, min_age: std::time::Duration) -> std::io::Result<usize> {
        let Some(local) = &self.local else { return Ok(0) };
        let mut dirs = Vec::new();
        for folder in ["blobs", "uploads"] {
            dirs.push(local.path_to_filesystem(&Path::from(folder)).map_err(std::io::Error::other)?);
        }
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            while let Some(dir) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let meta = entry.metadata()?;
                    if meta.is_dir() {
                        dirs.push(entry.path());
                        continue;
                    }
                    let name = entry.file_name();
                    let staging = name
                        .to_str()
                        .and_then(|n| n.split_once('#'))
                        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                    let old = meta.modified()?.elapsed().is_ok_and(|age| age >= min_age);
                    if staging && old {
                        std::fs::remove_file(entry.path())?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Checks the store answers (for readiness and `doctor`).
    pub async fn check(&self) -> Result<(), object_store::Error> {
        match self.store.head(&Path::from("carmenta-readiness-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
