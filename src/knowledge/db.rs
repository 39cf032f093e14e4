//! Every SQL statement on the knowledge tables: folders (ltree paths), documents
//! and their versions, chunks with their vectors, links, BM25 statistics, files
//! being ingested, and the search queries. Each statement on space-held rows takes
//! the space (a user's or an organization's) as a parameter.

use pgvector::Vector;
use sqlx::{FromRow, PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::types::Citation;

/// A knowledge space: a user's own, or an organization's.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct SpaceRow {
    /// Id (the user's or the organization's).
    pub id: Uuid,
    /// The user whose own space it is.
    pub user_id: Option<Uuid>,
    /// The organization whose space it is.
    pub org_id: Option<Uuid>,
}

/// What holds a space's rows, by table.
#[derive(Debug, Clone, Copy)]
pub enum Held {
    /// A folder.
    Folder,
    /// A document.
    Document,
    /// A file being ingested.
    File,
}

/// The space of folder, document or file `id`.
pub async fn space_of(pool: &PgPool, held: Held, id: Uuid) -> Result<Option<SpaceRow>, sqlx::Error> {
    let table = match held {
        Held::Folder => "kb_folders",
        Held::Document => "kb_documents",
        Held::File => "kb_files",
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT s.id, s.user_id, s.org_id FROM {table} t JOIN kb_spaces s ON s.id = t.space_id WHERE t.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Space `id`.
pub async fn space(pool: &PgPool, id: Uuid) -> Result<Option<SpaceRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, user_id, org_id FROM kb_spaces WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// A folder row.
#[derive(Debug, Clone, FromRow)]
pub struct FolderRow {
    /// Id.
    pub id: Uuid,
    /// The ltree path, as text.
    pub path: String,
    /// Display name.
    pub name: String,
    /// The parent's id.
    pub parent_id: Option<Uuid>,
    /// Depth.
    pub depth: i32,
    /// The organization whose space holds it.
    pub org_id: Option<Uuid>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

const FOLDER_COLS: &str = "f.id, f.path::text AS path, f.name, \
    (SELECT p.id FROM kb_folders p WHERE p.space_id = f.space_id AND nlevel(f.path) > 1 \
       AND p.path = subpath(f.path, 0, nlevel(f.path) - 1)) AS parent_id, \
    nlevel(f.path) AS depth, (SELECT s.org_id FROM kb_spaces s WHERE s.id = f.space_id) AS org_id, \
    f.created_at, f.updated_at";

/// Inserts a folder under `parent` (None: top level). None when the parent is not the space's.
pub async fn insert_folder(
    pool: &PgPool,
    space: Uuid,
    id: Uuid,
    parent: Option<Uuid>,
    label: &str,
    name: &str,
) -> Result<Option<FolderRow>, sqlx::Error> {
    let sql = format!(
        "WITH parent AS (SELECT path FROM kb_folders WHERE id = $3 AND space_id = $2), \
         ins AS (INSERT INTO kb_folders (id, space_id, path, name) \
           SELECT $1, $2, CASE WHEN $3::uuid IS NULL THEN $4::ltree ELSE (SELECT path FROM parent) || $4::ltree END, $5 \
           WHERE $3::uuid IS NULL OR EXISTS (SELECT 1 FROM parent) RETURNING *) \
         SELECT {FOLDER_COLS} FROM ins f"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(space)
        .bind(parent)
        .bind(label)
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// The space's folder `id`.
pub async fn folder(pool: &PgPool, space: Uuid, id: Uuid) -> Result<Option<FolderRow>, sqlx::Error> {
    let sql = format!("SELECT {FOLDER_COLS} FROM kb_folders f WHERE f.id = $1 AND f.space_id = $2");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(space).fetch_optional(pool).await
}

/// Child folders of `parent` (None: the top level), by name.
pub async fn child_folders(pool: &PgPool, space: Uuid, parent: Option<&str>) -> Result<Vec<FolderRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {FOLDER_COLS} FROM kb_folders f WHERE f.space_id = $1 AND \
         CASE WHEN $2::ltree IS NULL THEN nlevel(f.path) = 1 \
              ELSE f.path <@ $2::ltree AND nlevel(f.path) = nlevel($2::ltree) + 1 END \
         ORDER BY lower(f.name), f.id LIMIT 1000"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(space).bind(parent).fetch_all(pool).await
}

/// The folders from the top down to `path` (inclusive).
pub async fn breadcrumbs(pool: &PgPool, space: Uuid, path: &str) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, name FROM kb_folders WHERE space_id = $1 AND path @> $2::ltree ORDER BY nlevel(path)")
        .bind(space)
        .bind(path)
        .fetch_all(pool)
        .await
}

/// Renames a folder.
pub async fn rename_folder(pool: &PgPool, space: Uuid, id: Uuid, name: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE kb_folders SET name = $3, updated_at = now() WHERE id = $1 AND space_id = $2")
        .bind(id)
        .bind(space)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Moves the subtree at `old` to `new` (both ltree texts), in one statement.
pub async fn move_subtree(conn: &mut PgConnection, space: Uuid, old: &str, new: &str) -> Result<u64, sqlx::Error> {
    // The root row cannot use subpath(path, nlevel(old)) (it has no labels left).
    let r = sqlx::query(
        "UPDATE kb_folders SET path = CASE WHEN path = $2::ltree THEN $3::ltree \
           ELSE $3::ltree || subpath(path, nlevel($2::ltree)) END, \
           updated_at = CASE WHEN path = $2::ltree THEN now() ELSE updated_at END \
         WHERE space_id = $1 AND path <@ $2::ltree",
    )
    .bind(space)
    .bind(old)
    .bind(new)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// The documents in the folder subtree at `path`.
pub async fn documents_in_subtree(conn: &mut PgConnection, space: Uuid, path: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT d.id FROM kb_documents d JOIN kb_folders f ON f.id = d.folder_id \
         WHERE d.space_id = $1 AND f.space_id = $1 AND f.path <@ $2::ltree",
    )
    .bind(space)
    .bind(path)
    .fetch_all(conn)
    .await
}

/// Deletes the folder subtree at `path` (its documents go with it).
pub async fn delete_subtree(conn: &mut PgConnection, space: Uuid, path: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM kb_folders WHERE space_id = $1 AND path <@ $2::ltree")
        .bind(space)
        .bind(path)
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// Serialises changes to one space's knowledge base (statistics stay exact).
pub async fn lock_space(conn: &mut PgConnection, space: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('kb:' || $1::text, 0))")
        .bind(space)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds (1) or removes (-1) the current chunks of `docs` to or from the BM25 statistics.
pub async fn apply_stats(conn: &mut PgConnection, space: Uuid, docs: &[Uuid], sign: i32) -> Result<(), sqlx::Error> {
    if docs.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT kb_stats_apply($1, $2, $3)").bind(space).bind(docs).bind(sign).execute(conn).await?;
    Ok(())
}

/// A document row with its current version's hash.
#[derive(Debug, Clone, FromRow)]
pub struct DocumentRow {
    /// Id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Folder.
    pub folder_id: Option<Uuid>,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: serde_json::Value,
    /// `manual`, `url`, `upload`.
    pub source_kind: String,
    /// Source URL.
    pub source_url: Option<String>,
    /// Source bucket.
    pub source_bucket: Option<String>,
    /// Source object.
    pub source_object: Option<String>,
    /// Current version.
    pub current_version: i32,
    /// The current version's hash.
    pub content_hash: String,
    /// The object version the current version was read from.
    pub source_version: Option<Uuid>,
    /// The organization whose space holds it.
    pub org_id: Option<Uuid>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

const DOC_COLS: &str = "d.id, d.title, d.folder_id, d.tags, d.metadata, d.source_kind, d.source_url, \
    d.source_bucket, d.source_object, d.current_version, v.content_hash, v.source_version, \
    (SELECT s.org_id FROM kb_spaces s WHERE s.id = d.space_id) AS org_id, d.created_at, d.updated_at";

/// What a new document row holds.
#[derive(Debug)]
pub struct NewDocument<'a> {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub space: Uuid,
    /// Folder.
    pub folder_id: Option<Uuid>,
    /// Title.
    pub title: &'a str,
    /// Tags.
    pub tags: &'a [String],
    /// Metadata.
    pub metadata: &'a serde_json::Value,
    /// Source kind.
    pub source_kind: &'a str,
    /// Source URL.
    pub source_url: Option<&'a str>,
    /// Source bucket.
    pub source_bucket: Option<&'a str>,
    /// Source object.
    pub source_object: Option<&'a str>,
}

/// Inserts a document row (version 1 is inserted next, in the same transaction).
pub async fn insert_document(conn: &mut PgConnection, d: &NewDocument<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kb_documents (id, space_id, folder_id, title, tags, metadata, source_kind, source_url, \
           source_bucket, source_object, current_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
    )
    .bind(d.id)
    .bind(d.space)
    .bind(d.folder_id)
    .bind(d.title)
    .bind(d.tags)
    .bind(d.metadata)
    .bind(d.source_kind)
    .bind(d.source_url)
    .bind(d.source_bucket)
    .bind(d.source_object)
    .execute(conn)
    .await?;
    Ok(())
}

/// The space's document `id`.
pub async fn document(conn: &mut PgConnection, space: Uuid, id: Uuid) -> Result<Option<DocumentRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {DOC_COLS} FROM kb_documents d JOIN kb_versions v ON v.document_id = d.id AND v.version = d.current_version \
         WHERE d.id = $1 AND d.space_id = $2"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(space).fetch_optional(conn).await
}

/// The space's document `id`, locked for a change (its version number may move).
pub async fn lock_document(conn: &mut PgConnection, space: Uuid, id: Uuid) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT current_version FROM kb_documents WHERE id = $1 AND space_id = $2 FOR UPDATE")
        .bind(id)
        .bind(space)
        .fetch_optional(conn)
        .await
}

/// The space's documents, newest change first, in a folder (or anywhere when
/// `folder` is None and `top_only` false; the top level when `top_only`).
pub async fn list_documents(
    pool: &PgPool,
    space: Uuid,
    folder: Option<Uuid>,
    top_only: bool,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<DocumentRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {DOC_COLS} FROM kb_documents d JOIN kb_versions v ON v.document_id = d.id AND v.version = d.current_version \
         WHERE d.space_id = $1 AND ($2::uuid IS NULL OR d.folder_id = $2) AND (NOT $3 OR d.folder_id IS NULL) \
           AND ($4::timestamptz IS NULL OR (d.updated_at, d.id) < ($4, $5)) \
         ORDER BY d.updated_at DESC, d.id DESC LIMIT $6"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(space)
        .bind(folder)
        .bind(top_only)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A new version's content.
#[derive(Debug)]
pub struct NewVersion<'a> {
    /// Document.
    pub document_id: Uuid,
    /// Number.
    pub version: i32,
    /// Title.
    pub title: &'a str,
    /// Body.
    pub body: &'a str,
    /// sha256 of the body.
    pub content_hash: &'a str,
    /// Page starts.
    pub page_starts: Option<&'a [i32]>,
    /// Object version read.
    pub source_version: Option<Uuid>,
}

/// Inserts a version.
pub async fn insert_version(conn: &mut PgConnection, v: &NewVersion<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kb_versions (document_id, version, title, body, content_hash, page_starts, source_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(v.document_id)
    .bind(v.version)
    .bind(v.title)
    .bind(v.body)
    .bind(v.content_hash)
    .bind(v.page_starts)
    .bind(v.source_version)
    .execute(conn)
    .await?;
    Ok(())
}

/// One chunk to insert.
#[derive(Debug)]
pub struct NewChunk {
    /// The chunker's piece (position, headings, page, span, tokens, text).
    pub chunk: super::chunk::Chunk,
    /// sha256 of what is embedded (context and text).
    pub hash: String,
    /// Title and headings.
    pub context: String,
    /// Its vector of the active model, when known at insert (reused or computed).
    pub embedding: Option<Vector>,
}

/// Inserts a version's chunks (BM25 lengths computed from their text), with the
/// vectors already known (of `model`).
pub async fn insert_chunks(
    conn: &mut PgConnection,
    space: Uuid,
    document: Uuid,
    version: i32,
    chunks: &[NewChunk],
    model: &str,
) -> Result<(), sqlx::Error> {
    for batch in chunks.chunks(500) {
        let mut ordinals = Vec::with_capacity(batch.len());
        let mut headings = Vec::with_capacity(batch.len());
        let mut pages = Vec::with_capacity(batch.len());
        let mut starts = Vec::with_capacity(batch.len());
        let mut ends = Vec::with_capacity(batch.len());
        let mut tokens = Vec::with_capacity(batch.len());
        let mut hashes = Vec::with_capacity(batch.len());
        let mut contexts = Vec::with_capacity(batch.len());
        let mut texts = Vec::with_capacity(batch.len());
        let mut vectors: Vec<Option<Vector>> = Vec::with_capacity(batch.len());
        for n in batch {
            let c = &n.chunk;
            vectors.push(n.embedding.clone());
            ordinals.push(c.ordinal);
            // A text[] per row travels as one JSON array (no ragged 2-D arrays).
            headings.push(serde_json::to_string(&c.headings).unwrap_or_else(|_| "[]".into()));
            pages.push(c.page);
            starts.push(c.char_start);
            ends.push(c.char_end);
            tokens.push(c.tokens);
            hashes.push(n.hash.as_str());
            contexts.push(n.context.as_str());
            texts.push(c.text.as_str());
        }
        sqlx::query(
            "INSERT INTO kb_chunks (space_id, document_id, version, ordinal, headings, page, char_start, char_end, \
               tokens, hash, context, text, len, embedding, embedding_model) \
             SELECT $1, $2, $3, o, ARRAY(SELECT jsonb_array_elements_text(h::jsonb)), p, s, e, t, hs, cx, tx, \
               kb_tsv_length(setweight(to_tsvector('english', cx), 'A') || setweight(to_tsvector('english', tx), 'B')), \
               v, CASE WHEN v IS NULL THEN NULL ELSE $14 END \
             FROM unnest($4::int4[], $5::text[], $6::int4[], $7::int4[], $8::int4[], $9::int4[], $10::text[], \
               $11::text[], $12::text[], $13::vector[]) AS u(o, h, p, s, e, t, hs, cx, tx, v)",
        )
        .bind(space)
        .bind(document)
        .bind(version)
        .bind(&ordinals)
        .bind(&headings)
        .bind(&pages)
        .bind(&starts)
        .bind(&ends)
        .bind(&tokens)
        .bind(&hashes)
        .bind(&contexts)
        .bind(&texts)
        .bind(&vectors)
        .bind(model)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Vectors of `model` that earlier versions of `document` hold for these chunk hashes.
pub async fn vectors_by_hash(
    conn: &mut PgConnection,
    document: Uuid,
    model: &str,
    hashes: &[String],
) -> Result<Vec<(String, Vector)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (hash) hash, embedding FROM kb_chunks \
         WHERE document_id = $1 AND embedding_model = $2 AND embedding IS NOT NULL AND hash = ANY($3) \
         ORDER BY hash, version DESC",
    )
    .bind(document)
    .bind(model)
    .bind(hashes)
    .fetch_all(conn)
    .await
}

/// Makes `version` current (with its title).
pub async fn set_current(
    conn: &mut PgConnection,
    document: Uuid,
    version: i32,
    title: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE kb_documents SET current_version = $2, title = $3, updated_at = now() WHERE id = $1")
        .bind(document)
        .bind(version)
        .bind(title)
        .execute(conn)
        .await?;
    Ok(())
}

/// Changes folder, tags and metadata (each when given).
pub async fn patch_document(
    conn: &mut PgConnection,
    space: Uuid,
    id: Uuid,
    folder: Option<Option<Uuid>>,
    tags: Option<&[String]>,
    metadata: Option<&serde_json::Value>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE kb_documents SET folder_id = CASE WHEN $3 THEN $4 ELSE folder_id END, \
           tags = coalesce($5, tags), metadata = coalesce($6, metadata), updated_at = now() \
         WHERE id = $1 AND space_id = $2",
    )
    .bind(id)
    .bind(space)
    .bind(folder.is_some())
    .bind(folder.flatten())
    .bind(tags)
    .bind(metadata)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Deletes a document (versions, chunks and links go with it).
pub async fn delete_document(conn: &mut PgConnection, space: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM kb_documents WHERE id = $1 AND space_id = $2")
        .bind(id)
        .bind(space)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// A version row.
#[derive(Debug, FromRow)]
pub struct VersionRow {
    /// Number.
    pub version: i32,
    /// Title.
    pub title: String,
    /// Hash.
    pub content_hash: String,
    /// Page starts.
    pub page_starts: Option<Vec<i32>>,
    /// Object version read.
    pub source_version: Option<Uuid>,
    /// Whether it is the document's current version.
    pub current: bool,
    /// Body (when asked for).
    pub body: Option<String>,
    /// Written.
    pub created_at: OffsetDateTime,
}

/// The versions of the space's document, newest first (bodies when `bodies`).
pub async fn versions(pool: &PgPool, space: Uuid, id: Uuid, only: Option<i32>) -> Result<Vec<VersionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.version, v.title, v.content_hash, v.page_starts, v.source_version, \
           v.version = d.current_version AS current, CASE WHEN $3::int IS NULL THEN NULL ELSE v.body END AS body, v.created_at \
         FROM kb_versions v JOIN kb_documents d ON d.id = v.document_id \
         WHERE d.id = $1 AND d.space_id = $2 AND ($3::int IS NULL OR v.version = $3) \
         ORDER BY v.version DESC LIMIT 1000",
    )
    .bind(id)
    .bind(space)
    .bind(only)
    .fetch_all(pool)
    .await
}

/// The current body of a document.
pub async fn current_body(pool: &PgPool, space: Uuid, id: Uuid) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.body, (SELECT count(*) FROM kb_chunks c WHERE c.document_id = d.id AND c.version = d.current_version) \
         FROM kb_documents d JOIN kb_versions v ON v.document_id = d.id AND v.version = d.current_version \
         WHERE d.id = $1 AND d.space_id = $2",
    )
    .bind(id)
    .bind(space)
    .fetch_optional(pool)
    .await
}

/// The chunks of a version (the current one when `version` is None).
pub async fn chunks(
    pool: &PgPool,
    space: Uuid,
    id: Uuid,
    version: Option<i32>,
    model: &str,
) -> Result<Vec<super::types::ChunkView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.version, c.ordinal, c.headings, c.page, c.char_start, c.char_end, c.tokens, c.text, \
           (c.embedding_model IS NOT DISTINCT FROM $4 AND c.embedding IS NOT NULL) AS embedded \
         FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id \
         WHERE d.id = $1 AND d.space_id = $2 AND c.version = coalesce($3, d.current_version) \
         ORDER BY c.ordinal LIMIT 10000",
    )
    .bind(id)
    .bind(space)
    .bind(version)
    .bind(model)
    .fetch_all(pool)
    .await
}

/// Chunks without a vector of `model` (optionally of one document): id and the
/// text to embed.
pub async fn unembedded(
    pool: &PgPool,
    document: Option<Uuid>,
    model: &str,
    limit: i64,
) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
    // Two statements, so each keeps its index (by document; the unembedded partial index).
    match document {
        Some(d) => sqlx::query_as(
            "SELECT id, context, text FROM kb_chunks \
             WHERE document_id = $1 AND (embedding IS NULL OR embedding_model IS DISTINCT FROM $2) \
             ORDER BY id LIMIT $3",
        )
        .bind(d),
        None => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, context, text FROM kb_chunks WHERE $1::uuid IS NULL AND {} ORDER BY id LIMIT $3",
            stale(2)
        )))
        .bind(None::<Uuid>),
    }
    .bind(model)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Stores vectors of `model` for chunks.
pub async fn set_vectors(pool: &PgPool, ids: &[i64], vectors: Vec<Vector>, model: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE kb_chunks c SET embedding = u.v, embedding_model = $3 \
         FROM unnest($1::int8[], $2::vector[]) AS u(id, v) WHERE c.id = u.id",
    )
    .bind(ids)
    .bind(vectors)
    .bind(model)
    .execute(pool)
    .await?;
    Ok(())
}

/// Builds the HNSW index for the model's chunk vectors if it is missing.
pub async fn ensure_vector_index(pool: &PgPool, model: &str, dim: usize) -> Result<(), sqlx::Error> {
    crate::db::shared::ensure_hnsw(pool, "kb_chunks", model, dim).await
}

/// The filters every search applies besides the owner.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    /// Subtree (ltree text).
    pub path: Option<String>,
    /// Required tags.
    pub tags: Vec<String>,
    /// Source kind.
    pub source: Option<String>,
    /// Updated at or after.
    pub after: Option<OffsetDateTime>,
    /// Updated before.
    pub before: Option<OffsetDateTime>,
}

/// The filter condition on `d` (documents) and `c` (chunks): parameter $1 is the
/// space, `$n`…`$n+4` the filters (bound by [`bind_filters`]).
fn filter_sql(n: usize) -> String {
    let (p, t, s, a, b) = (n, n + 1, n + 2, n + 3, n + 4);
    format!(
        "c.space_id = $1 AND d.space_id = $1 \
         AND (${p}::ltree IS NULL OR d.folder_id IN (SELECT id FROM kb_folders WHERE space_id = $1 AND path <@ ${p}::ltree)) \
         AND d.tags @> ${t}::text[] AND (${s}::text IS NULL OR d.source_kind = ${s}) \
         AND (${a}::timestamptz IS NULL OR d.updated_at >= ${a}) AND (${b}::timestamptz IS NULL OR d.updated_at < ${b})"
    )
}

fn bind_filters<'q>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, f64), sqlx::postgres::PgArguments>,
    f: &'q Filters,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, f64), sqlx::postgres::PgArguments> {
    q.bind(f.path.as_deref()).bind(&f.tags).bind(f.source.as_deref()).bind(f.after).bind(f.before)
}

/// The query's lexemes with their document frequencies among the space's current chunks,
/// and the space's count and total length.
pub async fn term_stats(pool: &PgPool, space: Uuid, query: &str) -> Result<crate::rank::TermStats, sqlx::Error> {
    crate::db::shared::term_stats(pool, crate::db::shared::Corpus::Knowledge, space, query).await
}

/// BM25 (k1 0.9, b 0.4) of the space's current chunks holding any of the round's
/// matching terms, scored on every query term they hold; (chunk id, score), best first.
pub async fn bm25_over(
    pool: &PgPool,
    space: Uuid,
    round: &crate::rank::Round,
    filters: &Filters,
    limit: i64,
) -> Result<Vec<(i64, f64)>, sqlx::Error> {
    let (lexemes, idfs): (Vec<String>, Vec<f64>) = round.weighted.iter().cloned().unzip();
    let sql = format!(
        "WITH q AS (SELECT * FROM unnest($2::text[], $3::float8[]) AS q(lexeme, idf)), \
         hits AS MATERIALIZED ( \
           SELECT c.id, c.len, c.tsv FROM kb_chunks c \
           JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version \
           WHERE c.tsv @@ kb_or_query($4::text[]) AND {filters}) \
         SELECT h.id, sum(q.idf * (x.tf * 1.9) / (x.tf + 0.9 * (0.6 + 0.4 * h.len / $5)))::float8 AS score \
         FROM hits h CROSS JOIN LATERAL \
           (SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf FROM unnest(h.tsv) u) x \
         JOIN q ON q.lexeme = x.lexeme \
         GROUP BY h.id ORDER BY score DESC, h.id LIMIT $6",
        filters = filter_sql(7)
    );
    // Planned for its own values each time (not a prepared generic plan): a generic
    // plan cannot see how selective the terms are and reads the space's chunks one
    // document at a time (388 ms instead of 2 ms at 100k chunks).
    let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(space)
        .bind(lexemes)
        .bind(idfs)
        .bind(&round.matching)
        .bind(round.avg_len)
        .bind(limit);
    bind_filters(q, filters).fetch_all(pool).await
}

/// BM25 over the space's current chunks, the exact top `limit` (see
/// [`crate::rank::bm25_top`]): idf from the space's document frequencies,
/// length-normalised by the space's average chunk length.
pub async fn bm25(
    pool: &PgPool,
    space: Uuid,
    query: &str,
    filters: &Filters,
    limit: i64,
) -> Result<Vec<(i64, f64)>, sqlx::Error> {
    let stats = term_stats(pool, space, query).await?;
    crate::rank::bm25_top(stats, limit, |r| async move { bm25_over(pool, space, &r, filters, limit).await }).await
}

pub use crate::db::shared::VectorQuery;

/// Nearest chunks by cosine distance among the space's current chunks with vectors
/// of `model`. `exact`: scan every filtered chunk (a space's set is small, or the
/// filter selective); else the HNSW index with an iterative scan, then the filters.
pub async fn nearest(
    pool: &PgPool,
    space: Uuid,
    query: VectorQuery<'_>,
    filters: &Filters,
    limit: i64,
    exact: bool,
) -> Result<Vec<(i64, f64)>, sqlx::Error> {
    let VectorQuery { model, dim, vector: query } = query;
    if exact {
        let sql = format!(
            "SELECT c.id, (c.embedding <=> $2)::float8 AS dist FROM kb_chunks c \
             JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version \
             WHERE c.embedding_model = $3 AND {filters} ORDER BY dist, c.id LIMIT $4",
            filters = filter_sql(5)
        );
        let q =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).persistent(false).bind(space).bind(query).bind(model).bind(limit);
        return bind_filters(q, filters).fetch_all(pool).await;
    }
    let literal = model.replace('\'', "''");
    let sql = format!(
        "WITH near AS MATERIALIZED ( \
           SELECT c.id, c.document_id, c.version, c.space_id, (c.embedding::vector({dim}) <=> $2::vector({dim})) AS dist \
           FROM kb_chunks c WHERE c.embedding_model = '{literal}' AND c.space_id = $1 \
           ORDER BY c.embedding::vector({dim}) <=> $2::vector({dim}) LIMIT $3 * 3 + 20) \
         SELECT c.id, c.dist::float8 FROM near c \
         JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version \
         WHERE {filters} ORDER BY c.dist + 0, c.id LIMIT $3",
        filters = filter_sql(4)
    );
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut *tx).await?;
    sqlx::query("SET LOCAL hnsw.ef_search = 200").execute(&mut *tx).await?;
    let q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).persistent(false).bind(space).bind(query).bind(limit);
    let rows = bind_filters(q, filters).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// The space's current chunk count (for choosing exact or index search).
pub async fn chunk_count(pool: &PgPool, space: Uuid) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query_scalar("SELECT chunks FROM kb_stats WHERE space_id = $1")
        .bind(space)
        .fetch_optional(pool)
        .await?
        .unwrap_or(0))
}

/// A search hit's details.
#[derive(Debug, FromRow)]
pub struct HitRow {
    /// Where the chunk is.
    #[sqlx(flatten)]
    pub citation: super::types::Citation,
    /// Highlighted excerpt (\u{2} and \u{3} around matches), when a term matched.
    pub snippet: Option<String>,
    /// The chunk's text (for a plain excerpt).
    pub text: String,
}

/// Details of the returned chunks, with `ts_headline` run on these rows only.
pub async fn hits(pool: &PgPool, space: Uuid, ids: &[i64], query: &str) -> Result<Vec<HitRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id AS chunk_id, c.document_id, d.title, c.version, c.ordinal, c.headings, c.page, c.char_start, c.char_end, \
           ts_headline('english', c.text, kb_or_query(ARRAY(SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $3)))), \
             'StartSel=\u{2}, StopSel=\u{3}, MaxWords=40, MinWords=15, MaxFragments=2, FragmentDelimiter=\" … \"') AS snippet, \
           left(c.text, 400) AS text \
         FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id \
         WHERE c.id = ANY($1) AND c.space_id = $2 AND d.space_id = $2",
    )
    .bind(ids)
    .bind(space)
    .bind(query)
    .fetch_all(pool)
    .await
}

/// The chunks' citations and whole texts.
pub async fn chunk_texts(pool: &PgPool, space: Uuid, ids: &[i64]) -> Result<Vec<(Citation, String)>, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        citation: Citation,
        text: String,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.id AS chunk_id, c.document_id, d.title, c.version, c.ordinal, c.headings, c.page, c.char_start, \
           c.char_end, c.text \
         FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id \
         WHERE c.id = ANY($1) AND c.space_id = $2 AND d.space_id = $2",
    )
    .bind(ids)
    .bind(space)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.citation, r.text)).collect())
}

/// Link rows: (document id at the other end, its title or the written one, kind).
pub type LinkRow = (Option<Uuid>, String, String);

/// Replaces the document's `[[Title]]` links with `titles`, each resolved to the
/// space's most recently updated document of that title (case-insensitive).
pub async fn replace_wiki_links(
    conn: &mut PgConnection,
    space: Uuid,
    source: Uuid,
    titles: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM kb_links WHERE source_id = $1 AND kind = 'wiki'").bind(source).execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO kb_links (space_id, source_id, target_id, target_title, kind) \
         SELECT $1, $2, (SELECT d.id FROM kb_documents d WHERE d.space_id = $1 AND lower(d.title) = lower(t) \
                          ORDER BY d.updated_at DESC, d.id LIMIT 1), t, 'wiki' \
         FROM unnest($3::text[]) t ON CONFLICT DO NOTHING",
    )
    .bind(space)
    .bind(source)
    .bind(titles)
    .execute(conn)
    .await?;
    Ok(())
}

/// Points unresolved `[[Title]]` links naming `title` at `document`.
pub async fn resolve_links(
    conn: &mut PgConnection,
    space: Uuid,
    document: Uuid,
    title: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE kb_links SET target_id = $2 WHERE space_id = $1 AND target_id IS NULL \
         AND lower(target_title) = lower($3) AND source_id <> $2",
    )
    .bind(space)
    .bind(document)
    .bind(title)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds a manual link between two of the space's documents; false when either is not theirs.
pub async fn add_link(pool: &PgPool, space: Uuid, source: Uuid, target: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO kb_links (space_id, source_id, target_id, target_title, kind) \
         SELECT $1, s.id, t.id, t.title, 'manual' FROM kb_documents s, kb_documents t \
         WHERE s.id = $2 AND s.space_id = $1 AND t.id = $3 AND t.space_id = $1 ON CONFLICT DO NOTHING",
    )
    .bind(space)
    .bind(source)
    .bind(target)
    .execute(pool)
    .await?;
    if r.rows_affected() == 1 {
        return Ok(true);
    }
    // Already linked: still a success when both are the space's.
    let both: i64 = sqlx::query_scalar("SELECT count(*) FROM kb_documents WHERE space_id = $1 AND id IN ($2, $3)")
        .bind(space)
        .bind(source)
        .bind(target)
        .fetch_one(pool)
        .await?;
    Ok(both == if source == target { 1 } else { 2 })
}

/// Removes the manual link from `source` to `target`.
pub async fn delete_link(pool: &PgPool, space: Uuid, source: Uuid, target: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM kb_links WHERE space_id = $1 AND source_id = $2 AND target_id = $3 AND kind = 'manual'",
    )
    .bind(space)
    .bind(source)
    .bind(target)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Links from and to a document: (outgoing, backlinks).
pub async fn links(pool: &PgPool, space: Uuid, id: Uuid) -> Result<(Vec<LinkRow>, Vec<LinkRow>), sqlx::Error> {
    let out = sqlx::query_as(
        "SELECT l.target_id, coalesce(t.title, l.target_title), l.kind FROM kb_links l \
         LEFT JOIN kb_documents t ON t.id = l.target_id \
         WHERE l.space_id = $1 AND l.source_id = $2 ORDER BY l.created_at, l.target_title",
    )
    .bind(space)
    .bind(id)
    .fetch_all(pool)
    .await?;
    let back = sqlx::query_as(
        "SELECT l.source_id, s.title, l.kind FROM kb_links l JOIN kb_documents s ON s.id = l.source_id \
         WHERE l.space_id = $1 AND l.target_id = $2 ORDER BY l.created_at, s.title",
    )
    .bind(space)
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok((out, back))
}

/// A file row: the API's [`FileStatus`].
pub type FileRow = super::types::FileStatus;

const FILE_COLS: &str = "id, space_id, (SELECT s.org_id FROM kb_spaces s WHERE s.id = kb_files.space_id) AS org_id, bucket_id, object_name, folder_id, document_id, ingested_version, status, \
    progress, error_code, error, format, pages, chunks, chunks_embedded, created_at, updated_at";

/// Starts watching an object for the space (or returns the existing watch), and
/// queues its ingestion in the same transaction.
pub async fn upsert_file(
    conn: &mut PgConnection,
    id: Uuid,
    space: Uuid,
    bucket: &str,
    name: &str,
    folder: Option<Uuid>,
) -> Result<FileRow, sqlx::Error> {
    let sql = format!(
        "INSERT INTO kb_files (id, space_id, bucket_id, object_name, folder_id) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (space_id, bucket_id, object_name) DO UPDATE SET folder_id = coalesce(excluded.folder_id, kb_files.folder_id), \
           status = CASE WHEN kb_files.status IN ('failed', 'removed') THEN 'queued' ELSE kb_files.status END, \
           updated_at = now() \
         RETURNING {FILE_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(space)
        .bind(bucket)
        .bind(name)
        .bind(folder)
        .fetch_one(conn)
        .await
}

/// The space's file `id` (any space's when `space` is None: the ingestion job).
pub async fn file(pool: &PgPool, space: Option<Uuid>, id: Uuid) -> Result<Option<FileRow>, sqlx::Error> {
    let sql = format!("SELECT {FILE_COLS} FROM kb_files WHERE id = $1 AND ($2::uuid IS NULL OR space_id = $2)");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(space).fetch_optional(pool).await
}

/// The space's files, newest first.
pub async fn list_files(
    pool: &PgPool,
    space: Uuid,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<FileRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {FILE_COLS} FROM kb_files WHERE space_id = $1 \
         AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(space)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A status change of a file.
#[derive(Debug, Default)]
pub struct FileUpdate<'a> {
    /// New status.
    pub status: &'a str,
    /// Progress 0–1.
    pub progress: f32,
    /// Error code and message (failed).
    pub error: Option<(&'a str, &'a str)>,
    /// Detected format.
    pub format: Option<&'a str>,
    /// Pages.
    pub pages: Option<i32>,
    /// Chunks.
    pub chunks: Option<i32>,
    /// Chunks embedded.
    pub chunks_embedded: Option<i32>,
    /// The document (set when made).
    pub document_id: Option<Uuid>,
    /// The object version ingested (set when ready).
    pub ingested_version: Option<Uuid>,
}

/// Records a file's status (fields left None keep their value; the error is
/// cleared unless given).
pub async fn update_file(conn: &mut PgConnection, id: Uuid, u: &FileUpdate<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE kb_files SET status = $2, progress = $3, error_code = $4, error = $5, \
           format = coalesce($6, format), pages = coalesce($7, pages), chunks = coalesce($8, chunks), \
           chunks_embedded = coalesce($9, chunks_embedded), document_id = coalesce($10, document_id), \
           ingested_version = coalesce($11, ingested_version), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(u.status)
    .bind(u.progress)
    .bind(u.error.map(|e| e.0))
    .bind(u.error.map(|e| e.1))
    .bind(u.format)
    .bind(u.pages)
    .bind(u.chunks)
    .bind(u.chunks_embedded)
    .bind(u.document_id)
    .bind(u.ingested_version)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a file removed (its object is gone) and forgets its document.
pub async fn file_removed(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE kb_files SET status = 'removed', progress = 1, error_code = NULL, error = NULL, document_id = NULL, \
           ingested_version = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stops watching a file (its document stays).
pub async fn delete_file(pool: &PgPool, space: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let r =
        sqlx::query("DELETE FROM kb_files WHERE id = $1 AND space_id = $2").bind(id).bind(space).execute(pool).await?;
    Ok(r.rows_affected() == 1)
}

/// Chunks without a vector of the model in parameter `$n`, written so the
/// `kb_chunks_model` index answers it (`IS DISTINCT FROM` would scan every chunk).
/// A vector is always stored with its model, so a NULL model is a missing vector.
fn stale(n: usize) -> String {
    format!("(embedding_model IS NULL OR embedding_model < ${n} OR embedding_model > ${n})")
}

/// Forgets which object version was ingested (a forced re-ingestion).
pub async fn forget_ingested(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE kb_files SET ingested_version = NULL WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// Sets a file's progress while it is embedding.
pub async fn set_progress(conn: &mut PgConnection, id: Uuid, progress: f32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE kb_files SET progress = $2, updated_at = now() WHERE id = $1 AND status = 'embedding'")
        .bind(id)
        .bind(progress)
        .execute(conn)
        .await?;
    Ok(())
}
