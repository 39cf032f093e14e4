//! Context assembly (`POST /v1/context`): what a model call needs about the user,
//! within a token budget counted by the target model's tokenizer (tiktoken-rs).
//! Sections, in the order asked: `profile` (active profile and instruction
//! memories, and pinned ones), `memories` (hybrid search for the query),
//! `knowledge` (hybrid search over the knowledge base) and `messages` (the
//! conversation's recent messages, packed newest first, shown oldest first). Each
//! section gets a share of the budget ([`SHARES`]); what a section leaves unused
//! passes to the next. Every item carries its tokens and scores; everything left
//! out is listed with the reason. Same inputs, same output.

use std::collections::HashSet;

use tiktoken_rs::CoreBPE;
use time::OffsetDateTime;
use time::macros::format_description;
use uuid::Uuid;

use super::Memory as State;
use super::db::{self, SearchFilter};
use super::service::{self, Mode};
use super::types::*;
use crate::error::ApiError;

/// The sections and their default shares of the budget.
pub const SHARES: [(&str, f64); 4] = [("profile", 0.15), ("memories", 0.30), ("knowledge", 0.30), ("messages", 0.25)];

/// Default budget in tokens.
pub const DEFAULT_BUDGET: i64 = 4000;

/// Default tokenizer model.
pub const DEFAULT_MODEL: &str = "gpt-4o";

/// Memories retrieved for the query.
const MEMORY_CANDIDATES: i64 = 30;

/// Knowledge chunks retrieved for the query.
const KNOWLEDGE_CANDIDATES: i64 = 12;

/// Recent messages considered.
const MESSAGE_CANDIDATES: i64 = 100;

/// Always-on memories considered.
const PROFILE_CANDIDATES: i64 = 100;

fn heading(name: &str) -> &'static str {
    match name {
        "profile" => "## About the user",
        "memories" => "## Relevant memories",
        "knowledge" => "## From the user's knowledge base",
        _ => "## Recent messages",
    }
}

fn day(t: OffsetDateTime) -> String {
    t.format(format_description!("[year]-[month]-[day]")).unwrap_or_default()
}

fn minute(t: OffsetDateTime) -> String {
    t.format(format_description!("[year]-[month]-[day] [hour]:[minute]")).unwrap_or_default()
}

/// A candidate item before packing.
struct Candidate {
    id: String,
    text: String,
    source: String,
    scores: Option<Scores>,
}

/// Packs `items` in order into `budget` tokens under `name`'s heading; the ones
/// that do not fit go to `omitted`.
fn pack(bpe: &CoreBPE, name: &str, budget: usize, items: Vec<Candidate>, omitted: &mut Vec<Omitted>) -> ContextSection {
    let count = |s: &str| bpe.encode_ordinary(s).len();
    let head = count(heading(name)) + 1;
    let mut used = 0;
    let mut kept = Vec::new();
    let mut full = head > budget;
    for c in items {
        let tokens = count(&c.text) + 1;
        if full || head + used + tokens > budget {
            // Later, smaller items may still fit (but messages stay contiguous).
            if name == "messages" {
                full = true;
            }
            omitted.push(Omitted { id: c.id, section: name.to_string(), reason: "budget".into(), tokens });
            continue;
        }
        used += tokens;
        kept.push(ContextItem { id: c.id, text: c.text, source: c.source, tokens, scores: c.scores });
    }
    ContextSection {
        name: name.to_string(),
        budget_tokens: budget,
        tokens: if kept.is_empty() { 0 } else { head + used },
        items: kept,
    }
}

/// The section's rendered text (empty when it has no items).
fn render(s: &ContextSection) -> String {
    if s.items.is_empty() {
        return String::new();
    }
    let mut out = String::from(heading(&s.name));
    for i in &s.items {
        out.push('\n');
        out.push_str(&i.text);
    }
    out
}

fn render_all(sections: &[ContextSection]) -> String {
    sections.iter().map(render).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("\n\n")
}

/// Checks the request's sections: known names, no repeats; default all.
fn sections(req: &Option<Vec<String>>) -> Result<Vec<&'static str>, ApiError> {
    let Some(names) = req else {
        return Ok(SHARES.iter().map(|s| s.0).collect());
    };
    if names.is_empty() {
        return Err(ApiError::unprocessable("invalid_sections", "ask for at least one section"));
    }
    let mut out = Vec::new();
    for n in names {
        let Some((name, _)) = SHARES.iter().find(|s| s.0 == n) else {
            return Err(ApiError::unprocessable(
                "invalid_sections",
                format!("unknown section {n:?}: use profile, memories, knowledge, messages"),
            ));
        };
        if out.contains(name) {
            return Err(ApiError::unprocessable("invalid_sections", format!("section {n:?} is listed twice")));
        }
        out.push(*name);
    }
    Ok(out)
}

/// Assembles the context.
pub async fn assemble(m: &State, user: Uuid, req: ContextRequest) -> Result<Context, ApiError> {
    let budget = match req.budget_tokens {
        None => DEFAULT_BUDGET,
        Some(b) if (64..=200_000).contains(&b) => b,
        Some(_) => return Err(ApiError::unprocessable("invalid_budget", "budget_tokens must be 64 to 200000")),
    } as usize;
    let model = req.model.as_deref().map(str::trim).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_MODEL).to_string();
    let bpe = tiktoken_rs::bpe_for_model(&model).map_err(|_| {
        ApiError::unprocessable("unknown_model", format!("no tokenizer is known for model {model:?} (try gpt-4o)"))
    })?;
    let names = sections(&req.sections)?;
    if let Some(q) = &req.query {
        service::check_query(q)?;
    }
    let recent = match req.conversation_id {
        Some(c) => {
            if !db::owns_conversation(&m.pool, user, c).await? {
                return Err(ApiError::not_found("conversation not found"));
            }
            db::recent_messages(&m.pool, user, c, None, MESSAGE_CANDIDATES).await?
        }
        None => Vec::new(),
    };
    let query: Option<String> = match req.query.as_deref().map(str::trim) {
        Some(q) => Some(q.to_string()),
        None => recent
            .iter()
            .find(|x| x.role == "user" && !x.text.trim().is_empty())
            .map(|x| x.text.trim().chars().take(2000).collect()),
    };
    let want = |s: &str| names.contains(&s);
    // Whose knowledge: the folder's space, an organization's the caller may read, or
    // their own, with more organizations' beside it.
    let scope = crate::knowledge::service::Scope {
        folder: req.knowledge_folder_id,
        org: req.knowledge_org_id,
        orgs: req.knowledge_org_ids.as_deref().unwrap_or_default(),
        names: ["knowledge_org_ids", "knowledge_org_id", "knowledge_folder_id"],
        code: "invalid_knowledge_scope",
    };
    scope.check()?;
    let spaces = if want("knowledge") { scope.spaces(&m.knowledge, user).await? } else { Vec::new() };
    // The sections' retrievals are independent: run them together.
    let (profile_rows, ranked, retrieved) = tokio::join!(
        async {
            if want("profile") { db::always_on(&m.pool, user, PROFILE_CANDIDATES).await.map(Some) } else { Ok(None) }
        },
        async {
            match (&query, want("memories")) {
                (Some(q), true) => service::rank(
                    m,
                    user,
                    q,
                    &SearchFilter::default(),
                    Mode::Hybrid,
                    service::DEFAULT_WEIGHTS,
                    MEMORY_CANDIDATES,
                )
                .await
                .map(Some),
                _ => Ok(None),
            }
        },
        async {
            match (&query, want("knowledge")) {
                (Some(q), true) if spaces.len() > 1 => {
                    crate::knowledge::service::retrieve_across(&m.knowledge, &spaces, q, KNOWLEDGE_CANDIDATES)
                        .await
                        .map(Some)
                }
                (Some(q), true) => crate::knowledge::service::retrieve(
                    &m.knowledge,
                    spaces.first().map_or(user, |s| s.id),
                    q,
                    req.knowledge_folder_id,
                    KNOWLEDGE_CANDIDATES,
                )
                .await
                .map(Some),
                _ => Ok(None),
            }
        },
    );
    let mut profile_rows = profile_rows?;
    let mut ranked = ranked?;
    let mut retrieved = retrieved?;
    let mut omitted = Vec::new();
    let share_total: f64 = names.iter().filter_map(|n| SHARES.iter().find(|s| s.0 == *n)).map(|s| s.1).sum();
    let mut out = Vec::new();
    let mut carry = 0usize;
    let mut shown: HashSet<Uuid> = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let share = SHARES.iter().find(|s| s.0 == *name).map(|s| s.1).unwrap_or(0.0);
        let mut section_budget = ((budget as f64) * share / share_total).floor() as usize + carry;
        if i == names.len() - 1 {
            // The last section takes whatever the others left.
            let spent: usize = out.iter().map(|s: &ContextSection| s.tokens).sum();
            section_budget = budget.saturating_sub(spent + 2 * out.len());
        }
        let items = match *name {
            "profile" => {
                let rows = profile_rows.take().unwrap_or_default();
                rows.into_iter()
                    .map(|r| {
                        shown.insert(r.id);
                        let text = match (&r.slot, r.kind.as_str()) {
                            (Some(slot), _) => format!("- {slot}: {}", r.text),
                            (None, "instruction") => format!("- Instruction: {}", r.text),
                            _ => format!("- {}", r.text),
                        };
                        Candidate { id: r.id.to_string(), text, source: format!("memory:{}", r.kind), scores: None }
                    })
                    .collect()
            }
            "memories" => match ranked.take() {
                None => {
                    omitted.push(Omitted {
                        id: "*".into(),
                        section: "memories".into(),
                        reason: "no_query".into(),
                        tokens: 0,
                    });
                    Vec::new()
                }
                Some(ranked) => {
                    if ranked.vector_failed {
                        omitted.push(Omitted {
                            id: "vector".into(),
                            section: "memories".into(),
                            reason: "embedder_unavailable".into(),
                            tokens: 0,
                        });
                    }
                    let mut items = Vec::new();
                    for (r, scores) in ranked.hits {
                        if shown.contains(&r.id) {
                            omitted.push(Omitted {
                                id: r.id.to_string(),
                                section: "memories".into(),
                                reason: "duplicate".into(),
                                tokens: 0,
                            });
                            continue;
                        }
                        items.push(Candidate {
                            id: r.id.to_string(),
                            text: format!("- {} (since {})", r.text, day(r.valid_from)),
                            source: format!("memory:{}", r.kind),
                            scores: Some(scores),
                        });
                    }
                    items
                }
            },
            "knowledge" => match retrieved.take() {
                None => {
                    omitted.push(Omitted {
                        id: "*".into(),
                        section: "knowledge".into(),
                        reason: "no_query".into(),
                        tokens: 0,
                    });
                    Vec::new()
                }
                Some((hits, degraded)) => {
                    if degraded {
                        omitted.push(Omitted {
                            id: "vector".into(),
                            section: "knowledge".into(),
                            reason: "embedder_unavailable".into(),
                            tokens: 0,
                        });
                    }
                    hits.into_iter()
                        .enumerate()
                        .map(|(n, h)| {
                            let mut place = h.citation.title.clone();
                            for hd in &h.citation.headings {
                                place.push_str(" › ");
                                place.push_str(hd);
                            }
                            if let Some(p) = h.citation.page {
                                place.push_str(&format!(" (p. {p})"));
                            }
                            Candidate {
                                id: h.citation.chunk_id.to_string(),
                                text: format!("[{}] {place}\n{}", n + 1, h.text.trim()),
                                source: format!("knowledge:{}", h.citation.document_id),
                                scores: Some(h.scores),
                            }
                        })
                        .collect()
                }
            },
            _ => recent
                .iter()
                .filter(|x| !x.text.trim().is_empty())
                .map(|x| Candidate {
                    id: x.id.clone(),
                    text: format!("{} ({}): {}", x.role, minute(x.created_at), x.text.trim()),
                    source: format!("message:{}", x.role),
                    scores: None,
                })
                .collect(),
        };
        let mut section = pack(bpe, name, section_budget, items, &mut omitted);
        if *name == "messages" {
            // Packed newest first; read oldest first.
            section.items.reverse();
        }
        carry = section_budget.saturating_sub(section.tokens);
        out.push(section);
    }
    // Joining can merge tokens differently than counting parts: trim from the end
    // until the whole text fits.
    let mut text = render_all(&out);
    let mut tokens = bpe.encode_ordinary(&text).len();
    while tokens > budget {
        let Some(s) = out.iter_mut().rev().find(|s| !s.items.is_empty()) else { break };
        let drop_at = if s.name == "messages" { 0 } else { s.items.len() - 1 };
        let item = s.items.remove(drop_at);
        s.tokens = s.tokens.saturating_sub(item.tokens);
        if s.items.is_empty() {
            s.tokens = 0;
        }
        omitted.push(Omitted { id: item.id, section: s.name.clone(), reason: "budget".into(), tokens: item.tokens });
        text = render_all(&out);
        tokens = bpe.encode_ordinary(&text).len();
    }
    Ok(Context { query, model, budget_tokens: budget, tokens, sections: out, omitted, text })
}
