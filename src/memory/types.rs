//! Memory's request and response types (the API's shapes, in OpenAPI).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use crate::rank::Scores;

/// Where a memory came from: "why do you believe this?".
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Provenance {
    /// `conversation` (extracted), `api` (the app added it), `user` (the user said so).
    pub source: String,
    /// The conversation it was extracted from.
    pub conversation_id: Option<Uuid>,
    /// The messages it was extracted from.
    pub message_ids: Vec<String>,
    /// The words in those messages it rests on.
    pub quote: Option<String>,
}

/// A memory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Memory {
    /// Id.
    pub id: Uuid,
    /// `profile`, `fact`, `preference` or `instruction`.
    pub kind: String,
    /// The profile slot (`name`, `timezone`, `language`, …), if any.
    pub slot: Option<String>,
    /// The memory, self-contained.
    pub text: String,
    /// How sure (0 to 1).
    pub confidence: f32,
    /// Pinned memories always enter the context.
    pub pinned: bool,
    /// `active`, `superseded` or `invalidated`.
    pub status: String,
    /// Since when it holds.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    /// Until when it held (set when invalidated or superseded).
    #[serde(with = "time::serde::rfc3339::option")]
    pub valid_to: Option<OffsetDateTime>,
    /// The memory that replaced it.
    pub superseded_by: Option<Uuid>,
    /// Where it came from.
    pub provenance: Provenance,
    /// The app's own data.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One change to a memory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryEntry {
    /// `added`, `updated`, `superseded`, `invalidated` or `deleted`.
    pub event: String,
    /// Who: `user`, `app` or `extractor`.
    pub actor: String,
    /// The text at that point (erased once the memory is deleted).
    pub text: Option<String>,
    /// The other memory involved (successor or predecessor).
    pub related_id: Option<Uuid>,
    /// The extraction run that made the change.
    pub extraction_id: Option<Uuid>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A memory with its history and the memories it replaced.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryDetail {
    /// The memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Every change, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The memories this one superseded, newest first (the chain back).
    pub supersedes: Vec<Memory>,
}

/// Add a memory (no model involved).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMemory {
    /// `profile`, `fact` (default), `preference` or `instruction`.
    pub kind: Option<String>,
    /// The text, 1 to 2000 characters.
    pub text: String,
    /// A profile slot (letters, digits, `_`, `.`, `-`; up to 64); the active memory in
    /// the slot is superseded.
    pub slot: Option<String>,
    /// 0 to 1 (default 1).
    pub confidence: Option<f32>,
    /// Always include in the context.
    pub pinned: Option<bool>,
    /// Since when it holds (default now).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_from: Option<OffsetDateTime>,
    /// A JSON object of the app's own data.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Change a memory. A new `text` is a correction: a new memory supersedes this one
/// (its history says who corrected it); the other fields change in place.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMemory {
    /// The corrected text.
    pub text: Option<String>,
    /// Pin or unpin.
    pub pinned: Option<bool>,
    /// 0 to 1.
    pub confidence: Option<f32>,
    /// Replaces the metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// End a memory's validity (it stays, as history).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateMemory {
    /// When it stopped holding (default now).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_to: Option<OffsetDateTime>,
}

/// Filters of the memory list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListMemories {
    /// Only this kind.
    pub kind: Option<String>,
    /// Words the text must contain (full-text).
    pub q: Option<String>,
    /// Only from this source (`conversation`, `api`, `user`, `admin`).
    pub source: Option<String>,
    /// Only extracted from this conversation.
    pub conversation_id: Option<Uuid>,
    /// Valid from at or after.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub after: Option<OffsetDateTime>,
    /// Valid from before.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub before: Option<OffsetDateTime>,
    /// Include superseded and invalidated memories.
    pub include_superseded: Option<bool>,
}

/// A memory search.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchMemories {
    /// What to look for, 1 to 2000 characters.
    pub query: String,
    /// Results (1 to 100, default 10).
    pub limit: Option<i64>,
    /// Only these kinds.
    pub kinds: Option<Vec<String>>,
    /// Include superseded and invalidated memories.
    pub include_superseded: Option<bool>,
    /// `hybrid` (default), `fulltext` or `vector`.
    pub mode: Option<String>,
    /// Fusion weights: full text, vector, recency (0 to 100 each).
    pub weights: Option<[f64; 3]>,
}

/// A memory search result.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryHit {
    /// The memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Its score on each signal.
    pub scores: Scores,
}

/// Memory search results, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryHits {
    /// The hits.
    pub data: Vec<MemoryHit>,
    /// The weights used (full text, vector, recency).
    pub weights: [f64; 3],
}

/// Everything memory holds about the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryExport {
    /// When exported.
    #[serde(with = "time::serde::rfc3339")]
    pub exported_at: OffsetDateTime,
    /// The user.
    pub user_id: Uuid,
    /// Every memory, superseded and invalidated ones included, with its history.
    pub memories: Vec<MemoryDetail>,
    /// The settings.
    pub settings: MemorySettings,
}

/// The caller's memory settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemorySettings {
    /// Whether memories are extracted from the user's conversations.
    pub extraction: bool,
}

/// Whether a conversation is remembered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationMemory {
    /// False: nothing is extracted from it.
    pub remember: bool,
}

/// Ask for an extraction now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractRequest {
    /// The conversation.
    pub conversation_id: Uuid,
}

/// An extraction run.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Extraction {
    /// Id.
    pub id: Uuid,
    /// The conversation.
    pub conversation_id: Option<Uuid>,
    /// `running`, `done`, `failed` or `skipped`.
    pub status: String,
    /// Messages read.
    pub messages: i32,
    /// Memories added.
    pub added: i32,
    /// Memories that superseded older ones.
    pub updated: i32,
    /// Memories whose validity ended.
    pub invalidated: i32,
    /// Facts the model found already known.
    pub unchanged: i32,
    /// Facts refused (duplicates, secrets, malformed).
    pub rejected: i32,
    /// The attempt.
    pub attempt: i32,
    /// The model asked.
    pub model: Option<String>,
    /// Why it failed.
    pub error_code: Option<String>,
    /// The failure in a sentence.
    pub error: Option<String>,
    /// Time in the model call (ms).
    pub model_ms: Option<i32>,
    /// Total time (ms).
    pub total_ms: Option<i32>,
    /// Started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Finished.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// The answer to an extraction request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtractQueued {
    /// The job's id.
    pub job_id: Uuid,
}

/// Filters of the extraction list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListExtractions {
    /// Only this conversation's.
    pub conversation_id: Option<Uuid>,
}

/// Assemble the context for a model call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextRequest {
    /// The conversation (its recent messages, and its last user message as the
    /// default query).
    pub conversation_id: Option<Uuid>,
    /// What the context should be relevant to (default: the conversation's last
    /// user message).
    pub query: Option<String>,
    /// Tokens the whole context may take (64 to 200,000; default 4,000).
    pub budget_tokens: Option<i64>,
    /// Whose tokenizer counts (`gpt-4o`, `gpt-4`, `o1`, …; default `gpt-4o`).
    pub model: Option<String>,
    /// Sections, in order: `profile`, `memories`, `knowledge`, `messages` (default all).
    pub sections: Option<Vec<String>>,
    /// Restrict knowledge to this folder's subtree (in the folder's space: mine, or an
    /// organization's I may read).
    pub knowledge_folder_id: Option<Uuid>,
    /// Take knowledge from this organization's shared space (`org:knowledge:read`)
    /// instead of my own.
    #[serde(default)]
    pub knowledge_org_id: Option<Uuid>,
    /// Take knowledge from my own space and these organizations' shared spaces
    /// together (each needs `org:knowledge:read`; at most 10), ranked as one list.
    #[serde(default)]
    pub knowledge_org_ids: Option<Vec<Uuid>>,
}

/// One item in a section.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContextItem {
    /// The memory id, chunk id, or message id.
    pub id: String,
    /// The text as rendered.
    pub text: String,
    /// Where it is from (`memory:fact`, `knowledge:<document title>`, `message:user`, …).
    pub source: String,
    /// Its tokens as rendered.
    pub tokens: usize,
    /// Its retrieval scores, where retrieved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
}

/// Something that did not make it into the context.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Omitted {
    /// Its id.
    pub id: String,
    /// Its section.
    pub section: String,
    /// `budget` (did not fit), `duplicate` (already in an earlier section), `no_query`.
    pub reason: String,
    /// Its tokens as rendered (0 when not rendered).
    pub tokens: usize,
}

/// One section of the context.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContextSection {
    /// `profile`, `memories`, `knowledge` or `messages`.
    pub name: String,
    /// Tokens it could use.
    pub budget_tokens: usize,
    /// Tokens it used (heading included).
    pub tokens: usize,
    /// Its items, in rendered order.
    pub items: Vec<ContextItem>,
}

/// An assembled context.
#[derive(Debug, Serialize, ToSchema)]
pub struct Context {
    /// The query used for retrieval.
    pub query: Option<String>,
    /// The tokenizer's model.
    pub model: String,
    /// The budget.
    pub budget_tokens: usize,
    /// Tokens of `text`.
    pub tokens: usize,
    /// The sections.
    pub sections: Vec<ContextSection>,
    /// What was left out, and why.
    pub omitted: Vec<Omitted>,
    /// Everything rendered as one block for a system prompt.
    pub text: String,
}
