//! Every SQL statement on the chat tables: conversations, messages, feedback, search.
//! Each query on user-owned rows takes the owner as a parameter.

use sqlx::{FromRow, PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// A conversation row.
#[derive(Debug, Clone, FromRow)]
pub struct ConversationRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub owner_id: Uuid,
    /// Title.
    pub title: String,
    /// `private` or `public`.
    pub visibility: String,
    /// Archived.
    pub archived: bool,
    /// App metadata.
    pub metadata: serde_json::Value,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
    /// Last message or change.
    pub last_activity_at: OffsetDateTime,
}

const CONV_COLS: &str = "id, owner_id, title, visibility, archived, metadata, created_at, updated_at, last_activity_at";

/// Inserts a conversation; a taken id is a unique violation.
pub async fn insert_conversation(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    title: &str,
    visibility: &str,
    metadata: &serde_json::Value,
) -> Result<ConversationRow, sqlx::Error> {
    let sql = format!(
        "INSERT INTO conversations (id, owner_id, title, visibility, metadata) VALUES ($1, $2, $3, $4, $5) RETURNING {CONV_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(owner)
        .bind(title)
        .bind(visibility)
        .bind(metadata)
        .fetch_one(pool)
        .await
}

/// A conversation the caller may read: theirs, or a public one.
pub async fn readable_conversation(
    pool: &PgPool,
    id: Uuid,
    caller: Option<Uuid>,
) -> Result<Option<ConversationRow>, sqlx::Error> {
    let sql =
        format!("SELECT {CONV_COLS} FROM conversations WHERE id = $1 AND (owner_id = $2 OR visibility = 'public')");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(caller).fetch_optional(pool).await
}

/// The caller's own conversation.
pub async fn own_conversation(pool: &PgPool, id: Uuid, owner: Uuid) -> Result<Option<ConversationRow>, sqlx::Error> {
    let sql = format!("SELECT {CONV_COLS} FROM conversations WHERE id = $1 AND owner_id = $2");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(owner).fetch_optional(pool).await
}

/// Which conversations a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchivedFilter {
    /// Only active ones (the default).
    Active,
    /// Only archived ones.
    Archived,
    /// Both.
    All,
}

/// The owner's conversations, newest activity first, after the keyset cursor.
pub async fn list_conversations(
    pool: &PgPool,
    owner: Uuid,
    filter: ArchivedFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ConversationRow>, sqlx::Error> {
    let archived: Option<bool> = match filter {
        ArchivedFilter::Active => Some(false),
        ArchivedFilter::Archived => Some(true),
        ArchivedFilter::All => None,
    };
    let sql = format!(
        "SELECT {CONV_COLS} FROM conversations
         WHERE owner_id = $1 AND ($2::bool IS NULL OR archived = $2)
           AND ($3::timestamptz IS NULL OR (last_activity_at, id) < ($3, $4))
         ORDER BY last_activity_at DESC, id DESC LIMIT $5"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner)
        .bind(archived)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Changes to a conversation; `None` leaves a field.
#[derive(Debug, Default)]
pub struct ConversationPatch {
    /// New title.
    pub title: Option<String>,
    /// New visibility.
    pub visibility: Option<String>,
    /// Archive or unarchive.
    pub archived: Option<bool>,
    /// Replace metadata.
    pub metadata: Option<serde_json::Value>,
}

/// Updates the owner's conversation.
pub async fn update_conversation(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    p: &ConversationPatch,
) -> Result<Option<ConversationRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE conversations SET title = COALESCE($3, title), visibility = COALESCE($4, visibility),
            archived = COALESCE($5, archived), metadata = COALESCE($6, metadata), updated_at = now()
         WHERE id = $1 AND owner_id = $2 RETURNING {CONV_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(owner)
        .bind(&p.title)
        .bind(&p.visibility)
        .bind(p.archived)
        .bind(&p.metadata)
        .fetch_optional(pool)
        .await
}

/// Deletes the owner's conversation and (by cascade) its messages.
pub async fn delete_conversation(pool: &PgPool, id: Uuid, owner: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM conversations WHERE id = $1 AND owner_id = $2")
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await?
        .rows_affected()
        == 1)
}

/// A message row.
#[derive(Debug, Clone, FromRow)]
pub struct MessageRow {
    /// Client id.
    pub id: String,
    /// Conversation.
    pub conversation_id: Uuid,
    /// Order within the conversation.
    pub seq: i64,
    /// Role.
    pub role: String,
    /// UIMessage parts, verbatim.
    pub parts: serde_json::Value,
    /// UIMessage metadata, verbatim.
    pub metadata: Option<serde_json::Value>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

const MSG_COLS: &str = "id, conversation_id, seq, role, parts, metadata, created_at, updated_at";

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new message.
    Created,
    /// The same id with new content replaced the message.
    Replaced,
    /// The same id with the same content: nothing changed.
    Unchanged,
    /// The id belongs to a message in another conversation.
    OtherConversation,
}

/// The common case in one round trip: inserts a new message into the owner's
/// conversation and marks its activity. `None` when nothing was inserted (the id
/// exists already, or the conversation is not the owner's): the caller then takes
/// the careful path, [`upsert_message`].
pub async fn insert_new_message<'e, E>(
    executor: E,
    owner: Uuid,
    conversation: Uuid,
    id: &str,
    role: &str,
    parts: &serde_json::value::RawValue,
    metadata: Option<&serde_json::value::RawValue>,
) -> Result<Option<MessageRow>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let sql = format!(
        "WITH ins AS (
            INSERT INTO messages (owner_id, id, conversation_id, role, parts, metadata)
            SELECT $1, $2, c.id, $4, $5, $6 FROM conversations c WHERE c.id = $3 AND c.owner_id = $1
            ON CONFLICT (owner_id, id) DO NOTHING
            RETURNING {MSG_COLS}),
         touch AS (UPDATE conversations SET last_activity_at = now() WHERE id = $3 AND EXISTS (SELECT 1 FROM ins))
         SELECT {MSG_COLS} FROM ins"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner)
        .bind(id)
        .bind(conversation)
        .bind(role)
        .bind(sqlx::types::Json(parts))
        .bind(metadata.map(sqlx::types::Json))
        .fetch_optional(executor)
        .await
}

/// Whether stored JSON equals JSON text that came in (a resend is the same message).
fn same_json(stored: &serde_json::Value, sent: &serde_json::value::RawValue) -> bool {
    serde_json::from_str::<serde_json::Value>(sent.get()).is_ok_and(|v| &v == stored)
}

fn same_metadata(stored: &Option<serde_json::Value>, sent: Option<&serde_json::value::RawValue>) -> bool {
    match (stored, sent) {
        (None, None) => true,
        (Some(s), Some(t)) => same_json(s, t),
        _ => false,
    }
}

/// Inserts or replaces one message inside `tx` (idempotent by id per owner).
pub async fn upsert_message(
    tx: &mut Transaction<'_, Postgres>,
    owner: Uuid,
    conversation: Uuid,
    id: &str,
    role: &str,
    parts: &serde_json::value::RawValue,
    metadata: Option<&serde_json::value::RawValue>,
) -> Result<(Upserted, MessageRow), sqlx::Error> {
    let sql = format!("SELECT {MSG_COLS} FROM messages WHERE owner_id = $1 AND id = $2 FOR UPDATE");
    let existing: Option<MessageRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(owner).bind(id).fetch_optional(&mut **tx).await?;
    match existing {
        Some(row) if row.conversation_id != conversation => Ok((Upserted::OtherConversation, row)),
        Some(row) if row.role == role && same_json(&row.parts, parts) && same_metadata(&row.metadata, metadata) => {
            Ok((Upserted::Unchanged, row))
        }
        Some(_) => {
            let sql = format!(
                "UPDATE messages SET role = $3, parts = $4, metadata = $5, updated_at = now()
                 WHERE owner_id = $1 AND id = $2 RETURNING {MSG_COLS}"
            );
            let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(id)
                .bind(role)
                .bind(parts)
                .bind(metadata)
                .fetch_one(&mut **tx)
                .await?;
            Ok((Upserted::Replaced, row))
        }
        None => {
            let sql = format!(
                "INSERT INTO messages (owner_id, id, conversation_id, role, parts, metadata)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {MSG_COLS}"
            );
            let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(id)
                .bind(conversation)
                .bind(role)
                .bind(parts)
                .bind(metadata)
                .fetch_one(&mut **tx)
                .await?;
            Ok((Upserted::Created, row))
        }
    }
}

/// Marks activity on a conversation (inside the append transaction).
pub async fn touch_conversation(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE conversations SET last_activity_at = now() WHERE id = $1").bind(id).execute(&mut **tx).await?;
    Ok(())
}

/// Direction of a message page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages, or those before a cursor (older).
    Before(Option<i64>),
    /// Messages after a cursor (newer).
    After(i64),
}

/// A page of a conversation's messages, in chronological order; fetches one extra
/// row to tell whether more exist in that direction.
pub async fn list_messages(
    pool: &PgPool,
    conversation: Uuid,
    page: Page,
    limit: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    let (sql, cursor) = match page {
        Page::Before(c) => (
            format!(
                "SELECT * FROM (SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 AND ($2::bigint IS NULL OR seq < $2)
                 ORDER BY seq DESC LIMIT $3) m ORDER BY seq"
            ),
            c,
        ),
        Page::After(c) => (
            format!("SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
            Some(c),
        ),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(conversation).bind(cursor).bind(limit).fetch_all(pool).await
}

/// Deletes one of the owner's messages in a conversation.
pub async fn delete_message(pool: &PgPool, owner: Uuid, conversation: Uuid, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM messages WHERE owner_id = $1 AND conversation_id = $2 AND id = $3")
        .bind(owner)
        .bind(conversation)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected()
        == 1)
}

/// Deletes the messages after (or from, with `inclusive`) the message `id`;
/// `None` if that message is not in the conversation.
pub async fn delete_messages_after(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    id: &str,
    inclusive: bool,
) -> Result<Option<u64>, sqlx::Error> {
    let (found, deleted): (i64, i64) = sqlx::query_as(
        "WITH anchor AS (SELECT seq FROM messages WHERE owner_id = $1 AND conversation_id = $2 AND id = $3),
         del AS (DELETE FROM messages m USING anchor a
                 WHERE m.conversation_id = $2 AND m.owner_id = $1 AND (m.seq > a.seq OR ($4 AND m.seq = a.seq))
                 RETURNING 1)
         SELECT (SELECT count(*) FROM anchor), (SELECT count(*) FROM del)",
    )
    .bind(owner)
    .bind(conversation)
    .bind(id)
    .bind(inclusive)
    .fetch_one(pool)
    .await?;
    Ok((found > 0).then_some(deleted as u64))
}

/// Sets (`Some`) or clears (`None`) feedback on one of the owner's messages, in one
/// statement; false if there is no such message.
pub async fn set_feedback(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    id: &str,
    value: Option<&str>,
    comment: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH m AS (SELECT 1 FROM messages WHERE owner_id = $1 AND conversation_id = $2 AND id = $3),
         up AS (INSERT INTO message_feedback (owner_id, message_id, conversation_id, value, comment)
                SELECT $1, $3, $2, $4, $5 FROM m WHERE $4::text IS NOT NULL
                ON CONFLICT (owner_id, message_id)
                DO UPDATE SET value = EXCLUDED.value, comment = EXCLUDED.comment, updated_at = now()
                RETURNING 1),
         del AS (DELETE FROM message_feedback
                 WHERE $4::text IS NULL AND owner_id = $1 AND message_id = $3 AND EXISTS (SELECT 1 FROM m)
                 RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM m)",
    )
    .bind(owner)
    .bind(conversation)
    .bind(id)
    .bind(value)
    .bind(comment)
    .fetch_one(pool)
    .await
}

/// Feedback values for a set of the owner's messages.
pub async fn feedback_for(pool: &PgPool, owner: Uuid, ids: &[String]) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT message_id, value FROM message_feedback WHERE owner_id = $1 AND message_id = ANY($2)")
        .bind(owner)
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// A search hit's details.
#[derive(Debug, FromRow)]
pub struct SearchHit {
    /// Position in the owner's messages (the key fusion ranks by).
    pub seq: i64,
    /// Message id.
    pub id: String,
    /// Conversation.
    pub conversation_id: Uuid,
    /// Role.
    pub role: String,
    /// Highlighted excerpt.
    pub headline: String,
    /// Created.
    pub created_at: OffsetDateTime,
}

/// What message search is limited to besides the owner.
#[derive(Debug, Default, Clone)]
pub struct MessageFilter {
    /// Created at or after.
    pub after: Option<OffsetDateTime>,
    /// Created before.
    pub before: Option<OffsetDateTime>,
    /// One conversation.
    pub conversation: Option<Uuid>,
    /// One role.
    pub role: Option<String>,
}

/// A message's text parts joined, as SQL (`m` is the messages row): what search,
/// memory extraction and context assembly read of a message.
pub const MESSAGE_TEXT: &str =
    "coalesce((SELECT string_agg(p->>'text', ' ') FROM jsonb_array_elements(m.parts) p WHERE p->>'type' = 'text'), '')";

type SeqScores<'q> = sqlx::query::QueryAs<'q, Postgres, (i64, f64), sqlx::postgres::PgArguments>;

/// Binds a [`MessageFilter`] after a query's own parameters (see [`message_filter`]).
fn bind_message_filter<'q>(q: SeqScores<'q>, f: &'q MessageFilter) -> SeqScores<'q> {
    q.bind(f.after).bind(f.before).bind(f.conversation).bind(f.role.as_deref())
}

/// The filter on `m` with the owner at `$1` and the filters at `$n`…`$n+3`.
fn message_filter(n: usize) -> String {
    let (a, b, c, r) = (n, n + 1, n + 2, n + 3);
    format!(
        "m.owner_id = $1 AND (${a}::timestamptz IS NULL OR m.created_at >= ${a}) \
         AND (${b}::timestamptz IS NULL OR m.created_at < ${b}) \
         AND (${c}::uuid IS NULL OR m.conversation_id = ${c}) AND (${r}::text IS NULL OR m.role = ${r})"
    )
}

/// Full-text ranking (`ts_rank_cd`, web-search syntax) of the owner's messages:
/// (seq, rank), best first.
pub async fn fulltext_messages(
    pool: &PgPool,
    owner: Uuid,
    query: &str,
    f: &MessageFilter,
    limit: i64,
) -> Result<Vec<(i64, f64)>, sqlx::Error> {
    let q = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.seq, ts_rank_cd(m.search, q)::float8 AS rank \
         FROM messages m, websearch_to_tsquery('english', $2) q \
         WHERE m.search @@ q AND {filter} ORDER BY rank DESC, m.seq DESC LIMIT $3",
        filter = message_filter(4)
    )))
    .persistent(false)
    .bind(owner)
    .bind(query)
    .bind(limit);
    bind_message_filter(q, f).fetch_all(pool).await
}

/// Nearest of the owner's messages with vectors of `model` (an exact scan):
/// (seq, cosine distance), nearest first.
pub async fn nearest_messages(
    pool: &PgPool,
    owner: Uuid,
    query: crate::db::shared::VectorQuery<'_>,
    f: &MessageFilter,
    limit: i64,
) -> Result<Vec<(i64, f64)>, sqlx::Error> {
    let q = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.seq, (m.embedding <=> $2)::float8 AS dist FROM messages m \
         WHERE m.embedding_model = $3 AND {filter} ORDER BY dist, m.seq DESC LIMIT $4",
        filter = message_filter(5)
    )))
    .persistent(false)
    .bind(owner)
    .bind(query.vector)
    .bind(query.model)
    .bind(limit);
    bind_message_filter(q, f).fetch_all(pool).await
}

/// Details of the returned messages, with `ts_headline` run on these rows only.
pub async fn message_hits(
    pool: &PgPool,
    owner: Uuid,
    seqs: &[i64],
    query: &str,
) -> Result<Vec<SearchHit>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.seq, m.id, m.conversation_id, m.role, m.created_at, \
           ts_headline('english', {MESSAGE_TEXT}, websearch_to_tsquery('english', $3), 'StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MaxWords=20, MinWords=5') \
             AS headline \
         FROM messages m WHERE m.owner_id = $1 AND m.seq = ANY($2)"
    )))
    .bind(owner)
    .bind(seqs)
    .bind(query)
    .fetch_all(pool)
    .await
}

/// The ids of the storage objects named by `refs` that `owner` owns, in order;
/// `None` when any is missing or someone else's.
pub async fn owned_objects(
    pool: &PgPool,
    owner: Uuid,
    refs: &[crate::chat::types::AttachmentRef],
) -> Result<Option<Vec<Uuid>>, sqlx::Error> {
    let buckets: Vec<&str> = refs.iter().map(|r| r.bucket.as_str()).collect();
    let keys: Vec<&str> = refs.iter().map(|r| r.key.as_str()).collect();
    let found: Vec<(i32, Uuid)> = sqlx::query_as(
        "SELECT r.ord::int, o.id FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS r(bucket, key, ord) \
         JOIN storage_objects o ON o.bucket_id = r.bucket AND o.name = r.key AND o.owner_id = $1 ORDER BY r.ord",
    )
    .bind(owner)
    .bind(&buckets)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    Ok((found.len() == refs.len()).then(|| found.into_iter().map(|(_, id)| id).collect()))
}

/// Replaces the attachments of a message.
pub async fn set_attachments(
    tx: &mut Transaction<'_, Postgres>,
    owner: Uuid,
    message_id: &str,
    objects: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM message_attachments WHERE owner_id = $1 AND message_id = $2")
        .bind(owner)
        .bind(message_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO message_attachments (owner_id, message_id, object_id, position) \
         SELECT $1, $2, o, p::int FROM unnest($3::uuid[]) WITH ORDINALITY AS t(o, p) ON CONFLICT DO NOTHING",
    )
    .bind(owner)
    .bind(message_id)
    .bind(objects)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The attachments of `owner`'s messages `ids`, in position order.
pub async fn attachments_for(
    pool: &PgPool,
    owner: Uuid,
    ids: &[String],
) -> Result<Vec<crate::chat::types::Attachment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.message_id, o.id AS object_id, o.bucket_id AS bucket, o.name AS key, o.content_type, o.size \
         FROM message_attachments a JOIN storage_objects o ON o.id = a.object_id \
         WHERE a.owner_id = $1 AND a.message_id = ANY($2) ORDER BY a.message_id, a.position",
    )
    .bind(owner)
    .bind(ids)
    .fetch_all(pool)
    .await
}
