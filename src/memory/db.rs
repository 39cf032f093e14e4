//! Every statement of the memory area: memories and their history, settings,
//! per-conversation extraction state, extraction runs, BM25 and vector search over
//! memories, and the vectors of messages.

use pgvector::Vector;
use sqlx::{FromRow, PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::chat::db::MESSAGE_TEXT;

/// A memory row.
#[derive(Debug, Clone, FromRow)]
pub struct MemoryRow {
    pub id: Uuid,
    pub kind: String,
    pub slot: Option<String>,
    pub text: String,
    pub norm: String,
    pub confidence: f32,
    pub pinned: bool,
    pub source: String,
    pub conversation_id: Option<Uuid>,
    pub message_ids: Vec<String>,
    pub quote: Option<String>,
    pub metadata: serde_json::Value,
    pub status: String,
    pub valid_from: OffsetDateTime,
    pub valid_to: Option<OffsetDateTime>,
    pub superseded_by: Option<Uuid>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

const COLUMNS: &str = "id, kind, slot, text, norm, confidence, pinned, source, conversation_id, message_ids, quote, \
                       metadata, status, valid_from, valid_to, superseded_by, created_at, updated_at";

/// A memory to insert.
#[derive(Debug)]
pub struct NewMemory<'a> {
    pub id: Uuid,
    pub user: Uuid,
    pub kind: &'a str,
    pub slot: Option<&'a str>,
    pub text: &'a str,
    pub norm: &'a str,
    pub confidence: f32,
    pub pinned: bool,
    pub source: &'a str,
    pub conversation_id: Option<Uuid>,
    pub message_ids: &'a [String],
    pub quote: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
    pub valid_from: Option<OffsetDateTime>,
    /// The vector and its model, when computed before the insert.
    pub embedding: Option<(Vector, &'a str)>,
}

/// Inserts a memory.
pub async fn insert(conn: &mut PgConnection, m: &NewMemory<'_>) -> Result<MemoryRow, sqlx::Error> {
    let (vector, model) = match &m.embedding {
        Some((v, model)) => (Some(v.clone()), Some(*model)),
        None => (None, None),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO memories (id, user_id, kind, slot, text, norm, confidence, pinned, source, conversation_id, \
           message_ids, quote, metadata, valid_from, embedding, embedding_model) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, coalesce($14, now()), $15, $16) \
         RETURNING {COLUMNS}"
    )))
    .bind(m.id)
    .bind(m.user)
    .bind(m.kind)
    .bind(m.slot)
    .bind(m.text)
    .bind(m.norm)
    .bind(m.confidence)
    .bind(m.pinned)
    .bind(m.source)
    .bind(m.conversation_id)
    .bind(m.message_ids)
    .bind(m.quote)
    .bind(m.metadata)
    .bind(m.valid_from)
    .bind(vector)
    .bind(model)
    .fetch_one(conn)
    .await
}

/// One history row.
#[derive(Debug)]
pub struct Event<'a> {
    pub memory: Uuid,
    pub user: Uuid,
    pub event: &'a str,
    pub actor: &'a str,
    pub text: Option<&'a str>,
    pub related: Option<Uuid>,
    pub extraction: Option<Uuid>,
}

/// Writes a history row.
pub async fn record(conn: &mut PgConnection, e: &Event<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO memory_history (memory_id, user_id, event, actor, text, related_id, extraction_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(e.memory)
    .bind(e.user)
    .bind(e.event)
    .bind(e.actor)
    .bind(e.text)
    .bind(e.related)
    .bind(e.extraction)
    .execute(conn)
    .await?;
    Ok(())
}

/// The user's memory, locked when `lock` (for a change).
pub async fn memory(
    conn: &mut PgConnection,
    user: Uuid,
    id: Uuid,
    lock: bool,
) -> Result<Option<MemoryRow>, sqlx::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM memories WHERE id = $1 AND user_id = $2{suffix}"
    )))
    .bind(id)
    .bind(user)
    .fetch_optional(conn)
    .await
}

/// The user's memories by id (any status), in no order.
pub async fn memories(pool: &PgPool, user: Uuid, ids: &[Uuid]) -> Result<Vec<MemoryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM memories WHERE id = ANY($1) AND user_id = $2")))
        .bind(ids)
        .bind(user)
        .fetch_all(pool)
        .await
}

/// The active memory in a slot, locked.
pub async fn in_slot(conn: &mut PgConnection, user: Uuid, slot: &str) -> Result<Option<MemoryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM memories WHERE user_id = $1 AND slot = $2 AND status = 'active' FOR UPDATE"
    )))
    .bind(user)
    .bind(slot)
    .fetch_optional(conn)
    .await
}

/// An active memory with the same normalised text, if any.
pub async fn same_norm(conn: &mut PgConnection, user: Uuid, norm: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM memories WHERE user_id = $1 AND norm = $2 AND status = 'active' LIMIT 1")
        .bind(user)
        .bind(norm)
        .fetch_optional(conn)
        .await
}

/// Ends an active memory: `superseded` by `by`, or `invalidated` when `by` is None.
/// False when it was not active.
pub async fn end(
    conn: &mut PgConnection,
    user: Uuid,
    id: Uuid,
    by: Option<Uuid>,
    at: Option<OffsetDateTime>,
) -> Result<bool, sqlx::Error> {
    let status = if by.is_some() { "superseded" } else { "invalidated" };
    let n = sqlx::query(
        "UPDATE memories SET status = $3, superseded_by = $4, valid_to = greatest(coalesce($5, now()), valid_from), \
           updated_at = now() \
         WHERE id = $1 AND user_id = $2 AND status = 'active'",
    )
    .bind(id)
    .bind(user)
    .bind(status)
    .bind(by)
    .bind(at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Changes pinned, confidence and metadata in place.
pub async fn patch(
    conn: &mut PgConnection,
    user: Uuid,
    id: Uuid,
    pinned: Option<bool>,
    confidence: Option<f32>,
    metadata: Option<&serde_json::Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE memories SET pinned = coalesce($3, pinned), confidence = coalesce($4, confidence), \
           metadata = coalesce($5, metadata), updated_at = now() WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .bind(pinned)
    .bind(confidence)
    .bind(metadata)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes memories (`ids`, or all of the user's when None): the rows with their
/// text, vector and index entries go; their history keeps the events with the
/// text erased, and a `deleted` row. Returns how many were deleted.
pub async fn delete(
    conn: &mut PgConnection,
    user: Uuid,
    ids: Option<&[Uuid]>,
    actor: &str,
) -> Result<u64, sqlx::Error> {
    let gone: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM memories WHERE user_id = $1 AND ($2::uuid[] IS NULL OR id = ANY($2)) RETURNING id",
    )
    .bind(user)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if gone.is_empty() {
        return Ok(0);
    }
    sqlx::query("UPDATE memory_history SET text = NULL WHERE user_id = $1 AND memory_id = ANY($2)")
        .bind(user)
        .bind(&gone)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO memory_history (memory_id, user_id, event, actor) SELECT g, $1, 'deleted', $3 FROM unnest($2::uuid[]) g",
    )
    .bind(user)
    .bind(&gone)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    Ok(gone.len() as u64)
}

/// A memory's history, oldest first.
#[derive(Debug, FromRow)]
pub struct HistoryRow {
    pub memory_id: Uuid,
    pub event: String,
    pub actor: String,
    pub text: Option<String>,
    pub related_id: Option<Uuid>,
    pub extraction_id: Option<Uuid>,
    pub at: OffsetDateTime,
}

/// The history of memories (`ids`, or all of the user's), oldest first.
pub async fn history(pool: &PgPool, user: Uuid, ids: Option<&[Uuid]>) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT memory_id, event, actor, text, related_id, extraction_id, at FROM memory_history \
         WHERE user_id = $1 AND ($2::uuid[] IS NULL OR memory_id = ANY($2)) ORDER BY id",
    )
    .bind(user)
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// The chain of memories `id` superseded, newest first (at most 100).
pub async fn predecessors(pool: &PgPool, user: Uuid, id: Uuid) -> Result<Vec<MemoryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE chain AS ( \
           SELECT m.*, 1 AS depth FROM memories m WHERE m.superseded_by = $1 AND m.user_id = $2 \
           UNION ALL \
           SELECT m.*, c.depth + 1 FROM memories m JOIN chain c ON m.superseded_by = c.id \
           WHERE m.user_id = $2 AND c.depth < 100) \
         SELECT {COLUMNS} FROM chain ORDER BY depth, created_at DESC"
    )))
    .bind(id)
    .bind(user)
    .fetch_all(pool)
    .await
}

/// The list's filters.
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    pub kinds: Option<&'a [String]>,
    pub q: Option<&'a str>,
    pub source: Option<&'a str>,
    pub conversation: Option<Uuid>,
    pub after: Option<OffsetDateTime>,
    pub before: Option<OffsetDateTime>,
    pub all_statuses: bool,
}

/// The user's memories, newest first, keyset-paged by (created_at, id).
pub async fn list(
    pool: &PgPool,
    user: Uuid,
    f: &ListFilter<'_>,
    cursor: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<MemoryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM memories WHERE user_id = $1 \
           AND ($2::text[] IS NULL OR kind = ANY($2)) \
           AND ($3::text IS NULL OR tsv @@ websearch_to_tsquery('english', $3)) \
           AND ($4::text IS NULL OR source = $4) AND ($5::uuid IS NULL OR conversation_id = $5) \
           AND ($6::timestamptz IS NULL OR valid_from >= $6) AND ($7::timestamptz IS NULL OR valid_from < $7) \
           AND ($8 OR status = 'active') \
           AND ($9::timestamptz IS NULL OR (created_at, id) < ($9, $10)) \
         ORDER BY created_at DESC, id DESC LIMIT $11"
    )))
    .bind(user)
    .bind(f.kinds)
    .bind(f.q)
    .bind(f.source)
    .bind(f.conversation)
    .bind(f.after)
    .bind(f.before)
    .bind(f.all_statuses)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Every memory of the user (for export), oldest first.
pub async fn all(pool: &PgPool, user: Uuid) -> Result<Vec<MemoryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM memories WHERE user_id = $1 ORDER BY created_at, id"
    )))
    .bind(user)
    .fetch_all(pool)
    .await
}

/// The always-on memories: active profile and instruction memories, and pinned
/// ones, pinned first then by kind, slot and age.
pub async fn always_on(pool: &PgPool, user: Uuid, limit: i64) -> Result<Vec<MemoryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM memories WHERE user_id = $1 AND status = 'active' \
           AND (kind IN ('profile', 'instruction') OR pinned) \
         ORDER BY pinned DESC, kind, slot NULLS LAST, created_at, id LIMIT $2"
    )))
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Search filters: kinds, and whether ended memories count.
#[derive(Debug, Default, Clone)]
pub struct SearchFilter {
    pub kinds: Option<Vec<String>>,
    pub all_statuses: bool,
}

/// The query's lexemes with their document frequencies among the user's active memories,
/// and the user's count and total length.
pub async fn term_stats(pool: &PgPool, user: Uuid, query: &str) -> Result<crate::rank::TermStats, sqlx::Error> {
    crate::db::shared::term_stats(pool, crate::db::shared::Corpus::Memory, user, query).await
}

/// BM25 (k1 0.9, b 0.4) of the user's memories that contain any of `matching`,
/// scored on every term of `terms` (lexeme, idf) they contain; (id, score), best first.
pub async fn bm25_over(
    pool: &PgPool,
    user: Uuid,
    terms: &[(String, f64)],
    matching: &[String],
    avg_len: f64,
    f: &SearchFilter,
    limit: i64,
) -> Result<Vec<(Uuid, f64)>, sqlx::Error> {
    let (lexemes, idfs): (Vec<String>, Vec<f64>) = terms.iter().cloned().unzip();
    sqlx::query_as(
        "WITH q AS (SELECT * FROM unnest($2::text[], $3::float8[]) AS q(lexeme, idf)), \
         hits AS MATERIALIZED ( \
           SELECT m.id, m.tsv, greatest(length(m.tsv), 1)::float8 AS len FROM memories m \
           WHERE m.user_id = $1 AND ($7 OR m.status = 'active') AND ($8::text[] IS NULL OR m.kind = ANY($8)) \
             AND m.tsv @@ kb_or_query($4::text[])) \
         SELECT h.id, sum(q.idf * (x.tf * 1.9) / (x.tf + 0.9 * (0.6 + 0.4 * h.len / $5)))::float8 AS score \
         FROM hits h CROSS JOIN LATERAL \
           (SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1)::float8 AS tf FROM unnest(h.tsv) u) x \
         JOIN q ON q.lexeme = x.lexeme \
         GROUP BY h.id ORDER BY score DESC, h.id LIMIT $6",
    )
    // Custom plans, as for knowledge (a generic plan cannot see how rare the terms are).
    .persistent(false)
    .bind(user)
    .bind(&lexemes)
    .bind(&idfs)
    .bind(matching)
    .bind(avg_len)
    .bind(limit)
    .bind(f.all_statuses)
    .bind(f.kinds.as_deref())
    .fetch_all(pool)
    .await
}

/// The user's memory count with vectors of `model`, counted up to `cap` (for
/// choosing exact or index search without counting a large set in full).
pub async fn vector_count(pool: &PgPool, user: Uuid, model: &str, cap: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM memories WHERE embedding_model = $1 AND user_id = $2 LIMIT $3) t",
    )
    .bind(model)
    .bind(user)
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// Nearest memories by cosine distance among vectors of `model`: an exact scan
/// when `exact`, else the model's HNSW index with an iterative scan.
pub async fn nearest(
    pool: &PgPool,
    user: Uuid,
    query: crate::db::shared::VectorQuery<'_>,
    f: &SearchFilter,
    limit: i64,
    exact: bool,
) -> Result<Vec<(Uuid, f64)>, sqlx::Error> {
    let crate::db::shared::VectorQuery { model, dim, vector } = query;
    let filter = "($4 OR m.status = 'active') AND ($5::text[] IS NULL OR m.kind = ANY($5))";
    if exact {
        return sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT m.id, (m.embedding <=> $2)::float8 AS dist FROM memories m \
             WHERE m.embedding_model = $6 AND m.user_id = $1 AND {filter} ORDER BY dist, m.id LIMIT $3"
        )))
        .persistent(false)
        .bind(user)
        .bind(vector)
        .bind(limit)
        .bind(f.all_statuses)
        .bind(f.kinds.as_deref())
        .bind(model)
        .fetch_all(pool)
        .await;
    }
    let literal = model.replace('\'', "''");
    let sql = format!(
        "WITH near AS MATERIALIZED ( \
           SELECT m.id, m.status, m.kind, (m.embedding::vector({dim}) <=> $2::vector({dim})) AS dist \
           FROM memories m WHERE m.embedding_model = '{literal}' AND m.user_id = $1 \
           ORDER BY m.embedding::vector({dim}) <=> $2::vector({dim}) LIMIT $3 + 20) \
         SELECT m.id, m.dist::float8 FROM near m WHERE {filter} ORDER BY m.dist + 0, m.id LIMIT $3"
    );
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut *tx).await?;
    sqlx::query("SET LOCAL hnsw.ef_search = 100").execute(&mut *tx).await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(user)
        .bind(vector)
        .bind(limit)
        .bind(f.all_statuses)
        .bind(f.kinds.as_deref())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Memories to embed, up to `limit`: a user's without a vector, or (no user) every
/// memory whose vector is missing or of another model (after a model change).
pub async fn unembedded(
    pool: &PgPool,
    user: Option<Uuid>,
    model: &str,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    match user {
        Some(u) => {
            sqlx::query_as(
                "SELECT id, text FROM memories WHERE embedding IS NULL AND user_id = $1 ORDER BY id LIMIT $2",
            )
            .bind(u)
            .bind(limit)
            .fetch_all(pool)
            .await
        }
        None => {
            sqlx::query_as(
                "SELECT id, text FROM memories WHERE embedding IS NULL OR embedding_model <> $1 ORDER BY id LIMIT $2",
            )
            .bind(model)
            .bind(limit)
            .fetch_all(pool)
            .await
        }
    }
}

/// Stores memory vectors.
pub async fn set_vectors(pool: &PgPool, ids: &[Uuid], vectors: Vec<Vector>, model: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE memories m SET embedding = v.e, embedding_model = $3 \
         FROM unnest($1::uuid[], $2::vector[]) AS v(id, e) WHERE m.id = v.id",
    )
    .bind(ids)
    .bind(vectors)
    .bind(model)
    .execute(pool)
    .await?;
    Ok(())
}

/// The user's messages without a vector, oldest first: (id, text).
pub async fn unembedded_messages(
    conn: &mut PgConnection,
    user: Uuid,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.id, {MESSAGE_TEXT} FROM messages m \
         WHERE m.owner_id = $1 AND m.embedding IS NULL ORDER BY m.seq LIMIT $2"
    )))
    .bind(user)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Stores message vectors.
pub async fn set_message_vectors(
    conn: &mut PgConnection,
    user: Uuid,
    ids: &[String],
    vectors: Vec<Vector>,
    model: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE messages m SET embedding = v.e, embedding_model = $4 \
         FROM unnest($2::text[], $3::vector[]) AS v(id, e) WHERE m.owner_id = $1 AND m.id = v.id",
    )
    .bind(user)
    .bind(ids)
    .bind(vectors)
    .bind(model)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the user lets memories be extracted (default yes).
pub async fn extraction_enabled(pool: &PgPool, user: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar("SELECT extraction FROM memory_settings WHERE user_id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await?
        .unwrap_or(true))
}

/// Sets the user's extraction switch.
pub async fn set_extraction(pool: &PgPool, user: Uuid, on: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO memory_settings (user_id, extraction) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET extraction = $2, updated_at = now()",
    )
    .bind(user)
    .bind(on)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether the user's conversation is remembered; None when it is not theirs.
pub async fn remembered(pool: &PgPool, user: Uuid, conversation: Uuid) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(mc.remember, true) FROM conversations c \
         LEFT JOIN memory_conversations mc ON mc.conversation_id = c.id \
         WHERE c.id = $1 AND c.owner_id = $2",
    )
    .bind(conversation)
    .bind(user)
    .fetch_optional(pool)
    .await
}

/// Marks the user's conversation remembered or not; false when it is not theirs.
pub async fn set_remembered(
    pool: &PgPool,
    user: Uuid,
    conversation: Uuid,
    remember: bool,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO memory_conversations (conversation_id, user_id, remember, pending) \
         SELECT c.id, c.owner_id, $3, 0 FROM conversations c WHERE c.id = $1 AND c.owner_id = $2 \
         ON CONFLICT (conversation_id) DO UPDATE SET remember = $3",
    )
    .bind(conversation)
    .bind(user)
    .bind(remember)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Conversations due for extraction: `after` new messages or more, or some new
/// messages and quiet since `idle_before`; of users who did not opt out.
pub async fn due(pool: &PgPool, after: i32, idle_before: OffsetDateTime, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT mc.conversation_id FROM memory_conversations mc \
         LEFT JOIN memory_settings s ON s.user_id = mc.user_id \
         WHERE mc.pending > 0 AND mc.remember AND coalesce(s.extraction, true) \
           AND (mc.pending >= $1 OR mc.last_message_at < $2) \
         ORDER BY mc.last_message_at LIMIT $3",
    )
    .bind(after)
    .bind(idle_before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A conversation's extraction state, locked for the run.
#[derive(Debug, FromRow)]
pub struct ConversationState {
    pub user_id: Uuid,
    pub remember: bool,
    pub extracted_seq: i64,
    pub extraction: bool,
}

/// Locks a conversation's extraction state (one run at a time per conversation).
pub async fn lock_conversation(
    conn: &mut PgConnection,
    conversation: Uuid,
) -> Result<Option<ConversationState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT mc.user_id, mc.remember, mc.extracted_seq, coalesce(s.extraction, true) AS extraction \
         FROM memory_conversations mc LEFT JOIN memory_settings s ON s.user_id = mc.user_id \
         WHERE mc.conversation_id = $1 FOR UPDATE OF mc",
    )
    .bind(conversation)
    .fetch_optional(conn)
    .await
}

/// Records that messages up to `seq` were read (pending counts only later ones).
pub async fn advance(conn: &mut PgConnection, conversation: Uuid, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE memory_conversations mc SET extracted_seq = greatest(mc.extracted_seq, $2), \
           pending = (SELECT count(*) FROM messages m WHERE m.conversation_id = $1 AND m.seq > greatest(mc.extracted_seq, $2)) \
         WHERE mc.conversation_id = $1",
    )
    .bind(conversation)
    .bind(seq)
    .execute(conn)
    .await?;
    Ok(())
}

/// A message for extraction or context.
#[derive(Debug, Clone, FromRow)]
pub struct MessageText {
    pub id: String,
    pub seq: i64,
    pub role: String,
    pub text: String,
    pub created_at: OffsetDateTime,
}

/// Messages of a conversation with `seq` in (`after`, `upto`], oldest first, at most `limit`.
pub async fn messages_between(
    conn: &mut PgConnection,
    conversation: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<MessageText>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.id, m.seq, m.role, {MESSAGE_TEXT} AS text, m.created_at FROM messages m \
         WHERE m.conversation_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3"
    )))
    .bind(conversation)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The last `limit` messages of the user's conversation up to `seq` (inclusive), newest first.
pub async fn recent_messages(
    pool: &PgPool,
    user: Uuid,
    conversation: Uuid,
    upto: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageText>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.id, m.seq, m.role, {MESSAGE_TEXT} AS text, m.created_at FROM messages m \
         WHERE m.conversation_id = $1 AND m.owner_id = $2 AND ($3::bigint IS NULL OR m.seq <= $3) \
         ORDER BY m.seq DESC LIMIT $4"
    )))
    .bind(conversation)
    .bind(user)
    .bind(upto)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// An extraction run's outcome.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    pub status: &'a str,
    pub added: i32,
    pub updated: i32,
    pub invalidated: i32,
    pub unchanged: i32,
    pub rejected: i32,
    pub error: Option<(&'a str, &'a str)>,
    pub model_ms: Option<i32>,
    pub total_ms: i32,
}

/// Starts an extraction record.
#[allow(clippy::too_many_arguments)]
pub async fn start_extraction(
    pool: &PgPool,
    id: Uuid,
    user: Uuid,
    conversation: Uuid,
    range: (i64, i64),
    messages: i32,
    attempt: i32,
    model: &str,
) -> Result<(), sqlx::Error> {
    // A run still `running` here died with its worker (one run per conversation at a time).
    close_running(pool, conversation, "interrupted", "the run stopped before it finished (its worker went away)")
        .await?;
    sqlx::query(
        "INSERT INTO memory_extractions (id, user_id, conversation_id, status, from_seq, to_seq, messages, attempt, model) \
         VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(user)
    .bind(conversation)
    .bind(range.0)
    .bind(range.1)
    .bind(messages)
    .bind(attempt)
    .bind(model)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a conversation's unfinished runs failed with `code` and `message`.
pub async fn close_running(pool: &PgPool, conversation: Uuid, code: &str, message: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE memory_extractions SET status = 'failed', error_code = $2, error = $3, finished_at = now() \
         WHERE conversation_id = $1 AND status = 'running'",
    )
    .bind(conversation)
    .bind(code)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(())
}

/// Finishes an extraction record.
pub async fn finish_extraction(conn: &mut PgConnection, id: Uuid, o: &Outcome<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE memory_extractions SET status = $2, added = $3, updated = $4, invalidated = $5, unchanged = $6, \
           rejected = $7, error_code = $8, error = $9, model_ms = $10, total_ms = $11, finished_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(o.status)
    .bind(o.added)
    .bind(o.updated)
    .bind(o.invalidated)
    .bind(o.unchanged)
    .bind(o.rejected)
    .bind(o.error.map(|e| e.0))
    .bind(o.error.map(|e| e.1))
    .bind(o.model_ms)
    .bind(o.total_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// The user's extraction runs, newest first.
pub async fn extractions(
    pool: &PgPool,
    user: Uuid,
    conversation: Option<Uuid>,
    cursor: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<super::types::Extraction>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, conversation_id, status, messages, added, updated, invalidated, unchanged, rejected, attempt, \
           model, error_code, error, model_ms, total_ms, created_at, finished_at \
         FROM memory_extractions WHERE user_id = $1 AND ($2::uuid IS NULL OR conversation_id = $2) \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5",
    )
    .bind(user)
    .bind(conversation)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Whether the user owns the conversation.
pub async fn owns_conversation(pool: &PgPool, user: Uuid, conversation: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND owner_id = $2)")
        .bind(conversation)
        .bind(user)
        .fetch_one(pool)
        .await
}

/// Serialises memory writes of one user (duplicate checks and slot changes see
/// each other) for the rest of the transaction.
pub async fn lock_user(conn: &mut PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('memory:' || $1::text, 0))")
        .bind(user)
        .execute(conn)
        .await?;
    Ok(())
}

/// Serialises the embedding of one user's messages for the rest of the transaction.
pub async fn lock_embedding(conn: &mut PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('memory-embed:' || $1::text, 0))")
        .bind(user)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks an ended memory as superseded by `new`.
pub async fn mark_superseded(conn: &mut PgConnection, user: Uuid, old: Uuid, new: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE memories SET status = 'superseded', superseded_by = $3, updated_at = now() WHERE id = $1 AND user_id = $2")
        .bind(old)
        .bind(user)
        .bind(new)
        .execute(conn)
        .await?;
    Ok(())
}

/// Nearest active memories by an exact scan, on the caller's connection (the
/// extraction's transaction sees its own new rows).
pub async fn nearest_in(
    conn: &mut PgConnection,
    user: Uuid,
    query: crate::db::shared::VectorQuery<'_>,
    limit: i64,
) -> Result<Vec<(Uuid, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, (embedding <=> $2)::float8 AS dist FROM memories \
         WHERE user_id = $1 AND status = 'active' AND embedding_model = $3 ORDER BY dist, id LIMIT $4",
    )
    .bind(user)
    .bind(query.vector)
    .bind(query.model)
    .bind(limit)
    .fetch_all(conn)
    .await
}
