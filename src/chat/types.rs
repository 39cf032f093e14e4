//! Request and response bodies of the chat API.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::db::{ConversationRow, MessageRow};

/// `POST /v1/conversations`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// A client-chosen id (the AI SDK's chat id); generated when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Title.
    #[serde(default)]
    pub title: Option<String>,
    /// `private` (default) or `public`.
    #[serde(default)]
    #[schema(pattern = "^(private|public)$")]
    pub visibility: Option<String>,
    /// App metadata (JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `PATCH /v1/conversations/{id}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchConversation {
    /// New title.
    pub title: Option<String>,
    /// `private` or `public`.
    #[schema(pattern = "^(private|public)$")]
    pub visibility: Option<String>,
    /// Archive (true) or restore (false).
    pub archived: Option<bool>,
    /// Replace metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Conversation {
    /// Id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// `private` or `public`.
    pub visibility: String,
    /// Archived.
    pub archived: bool,
    /// App metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Whether the caller may only read it (a public conversation of someone else).
    pub read_only: bool,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Updated.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Last activity (message or change).
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity_at: OffsetDateTime,
}

impl Conversation {
    /// The view of `row` for `caller`.
    pub fn of(row: ConversationRow, caller: Option<Uuid>) -> Conversation {
        Conversation {
            read_only: Some(row.owner_id) != caller,
            id: row.id,
            title: row.title,
            visibility: row.visibility,
            archived: row.archived,
            metadata: row.metadata,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_activity_at: row.last_activity_at,
        }
    }
}

/// A page of conversations, newest activity first.
pub type ConversationList = crate::pagination::Page<Conversation>;

/// An AI SDK `UIMessage` as sent by a client: `parts` and `metadata` are kept
/// exactly as given (unknown part types and fields included).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UiMessageIn {
    /// The client's message id (text, 1–255 characters).
    pub id: String,
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The parts, verbatim (kept as the JSON text that came: parsed into values,
    /// a 10 MB array costs hundreds of MB).
    #[schema(value_type = Vec<Object>)]
    pub parts: Box<serde_json::value::RawValue>,
    /// App metadata, verbatim.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<serde_json::value::RawValue>>,
    /// Storage objects of the caller's to link to the message (not part of the
    /// `UIMessage`; absent leaves existing links alone, `[]` clears them).
    #[serde(default)]
    pub attachments: Option<Vec<AttachmentRef>>,
}

/// A storage object named by bucket and key.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
pub struct AttachmentRef {
    /// Bucket id.
    pub bucket: String,
    /// Object key.
    pub key: String,
}

/// An attachment as returned with a message.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Attachment {
    /// The message it belongs to (not serialised).
    #[serde(skip)]
    pub message_id: String,
    /// The storage object's id.
    pub object_id: Uuid,
    /// Bucket id.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// Content type.
    pub content_type: String,
    /// Bytes.
    pub size: i64,
}

/// `POST /v1/conversations/{id}/messages`: one message, or `{"messages": [...]}`.
/// (Read by a hand-written `Deserialize`: serde's untagged enums buffer the whole
/// document as values first, and keep no raw JSON.)
#[derive(Debug, ToSchema)]
pub enum AppendMessages {
    /// Several messages, appended in order.
    Many {
        /// The messages.
        messages: Vec<UiMessageIn>,
    },
    /// One message.
    One(UiMessageIn),
}

impl<'de> Deserialize<'de> for AppendMessages {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Either shape's fields at once; which are present decides.
        #[derive(Deserialize)]
        struct Either {
            messages: Option<Vec<UiMessageIn>>,
            id: Option<String>,
            role: Option<String>,
            parts: Option<Box<serde_json::value::RawValue>>,
            #[serde(default)]
            metadata: Option<Box<serde_json::value::RawValue>>,
            #[serde(default)]
            attachments: Option<Vec<AttachmentRef>>,
        }
        let e = Either::deserialize(d)?;
        match (e.messages, e.id, e.role, e.parts) {
            (Some(messages), None, None, None) => Ok(AppendMessages::Many { messages }),
            (None, Some(id), Some(role), Some(parts)) => Ok(AppendMessages::One(UiMessageIn {
                id,
                role,
                parts,
                metadata: e.metadata,
                attachments: e.attachments,
            })),
            _ => Err(serde::de::Error::custom(
                "expected a UIMessage ({\"id\", \"role\", \"parts\"}) or {\"messages\": [...]}",
            )),
        }
    }
}

/// A stored message: the `UIMessage` plus server fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct UiMessage {
    /// The client's id.
    pub id: String,
    /// Role.
    pub role: String,
    /// Parts, exactly as stored.
    #[schema(value_type = Vec<Object>)]
    pub parts: serde_json::Value,
    /// Metadata, exactly as stored (absent when none was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The conversation.
    pub conversation_id: Uuid,
    /// Feedback given on it (`up` / `down`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// Storage objects linked to it (download them through `/storage/v1`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Updated.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl UiMessage {
    /// The view of `row`.
    pub fn of(row: MessageRow, feedback: Option<String>) -> UiMessage {
        UiMessage {
            id: row.id,
            role: row.role,
            parts: row.parts,
            metadata: row.metadata,
            conversation_id: row.conversation_id,
            feedback,
            attachments: Vec::new(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The answer to an append.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppendResult {
    /// The messages as stored, in the order given.
    pub data: Vec<UiMessage>,
    /// How many were new.
    pub created: usize,
    /// How many replaced an earlier version with the same id.
    pub replaced: usize,
    /// How many were identical resends.
    pub unchanged: usize,
}

/// A page of messages in chronological order.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    /// Oldest first.
    pub data: Vec<UiMessage>,
    /// Continue in the same direction (older with `before`, newer with `after`); absent when done.
    pub next_cursor: Option<String>,
    /// Cursor of the first message: pass as `before` for older ones.
    pub before_cursor: Option<String>,
    /// Cursor of the last message: pass as `after` for newer ones.
    pub after_cursor: Option<String>,
}

/// `PUT …/feedback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// `up`, `down`, or null to clear.
    pub value: Option<String>,
    /// Optional comment (≤ 2000 characters).
    #[serde(default)]
    pub comment: Option<String>,
}

/// Feedback as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackResponse {
    /// The message.
    pub message_id: String,
    /// `up`, `down` or null.
    pub value: Option<String>,
}

/// A search hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHitView {
    /// Message id.
    pub message_id: String,
    /// Conversation.
    pub conversation_id: Uuid,
    /// Role.
    pub role: String,
    /// Excerpt with matches in `<mark>…</mark>`.
    pub headline: String,
    /// Relevance (the fused score; higher is better).
    pub rank: f32,
    /// Its score on each signal.
    pub scores: crate::rank::Scores,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Message search: what to find and where.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageSearch {
    /// Words, "phrases", -exclusions, OR (web search syntax).
    #[param(min_length = 1, max_length = 500)]
    pub q: String,
    /// `hybrid` (default: full text and vectors fused), `fulltext` or `vector`.
    pub mode: Option<String>,
    /// Only messages created at or after.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub after: Option<OffsetDateTime>,
    /// Only messages created before.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub before: Option<OffsetDateTime>,
    /// Only this conversation's.
    pub conversation_id: Option<Uuid>,
    /// Only this role's (`user`, `assistant`, `system`).
    pub role: Option<String>,
}

/// A page of search hits, best first.
pub type SearchResults = crate::pagination::Page<SearchHitView>;
