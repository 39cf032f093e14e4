//! Handlers of the console's organizations pages (`/admin/orgs`). Reads come
//! from the console's listings and the organizations' own statements; every
//! action goes through the organizations service as its operator.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use super::db;
use crate::admin::Admin;
use crate::admin::areas::routes::uuid;
use crate::admin::routes::{
    AdminForm, AdminSession, Fail, connection_table, done_notice, page, path_segment, query_pairs, render, see_other,
};
use crate::admin::view::{Action, Block, Cell, Field, Form as VForm, Head, Table, when};
use crate::error::ApiError;
use crate::orgs::service::{self as orgs, By};

type PageResult = Result<Response, Fail>;

/// The organizations pages' routes.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Admin>: FromRef<S>,
{
    Router::new()
        .route("/admin/orgs", get(list))
        .route("/admin/orgs/{id}", get(detail))
        .route("/admin/orgs/{id}/members/{user}/{action}", post(member_action))
        .route("/admin/orgs/{id}/invitations/{inv}/revoke", post(revoke))
        .route("/admin/orgs/{id}/delete", post(delete))
}

/// The organization, or 404.
async fn org_or_404(admin: &Admin, raw: &str) -> Result<db::OrgRow, Fail> {
    let id = uuid(raw, "organization")?;
    db::org(&admin.pool, id).await?.ok_or_else(|| Fail(ApiError::not_found("organization not found")))
}

async fn list(State(admin): State<Arc<Admin>>, AdminSession(s): AdminSession, RawQuery(raw): RawQuery) -> PageResult {
    let q = query_pairs(&raw);
    let search = q.iter().find(|(k, _)| k == "q").map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
    let pattern = search.map(|q| format!("%{}%", crate::storage::db::like_escape(q)));
    let mut p = page(&s, "Organizations", "orgs");
    p.notice = done_notice(&q);
    p.push(Block::Form(
        VForm::get("/admin/orgs", "Search")
            .field(Field::new("search", "q", "Name or slug").value(search.unwrap_or(""))),
    ));
    let rows = db::orgs(&admin.pool, pattern.as_deref(), 200)
        .await?
        .into_iter()
        .map(|o| {
            vec![
                Cell::Link(format!("/admin/orgs/{}", o.id), o.name),
                Cell::Mono(o.slug),
                Cell::Text(o.members.to_string()),
                Cell::Text(o.pending.to_string()),
                Cell::Text(format!(
                    "{} buckets · {} connections · {} documents",
                    o.buckets, o.connections, o.documents
                )),
                Cell::Text(when(o.created_at)),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["organization", "slug", "members", "pending invitations", "shares", "created"]),
        rows,
        empty: if search.is_some() { "No organization matches." } else { "No organizations yet." }.into(),
    }));
    Ok(render(StatusCode::OK, &p))
}

async fn detail(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> PageResult {
    let o = org_or_404(&admin, &raw).await?;
    let id = o.id;
    let mut p = page(&s, o.name.clone(), "orgs");
    p.notice = done_notice(&query_pairs(&q));
    let kv = |k: &str, v: Cell| vec![Cell::Text(k.into()), v];
    p.push(Block::Table(Table {
        head: Head::all(&["", ""]),
        rows: vec![
            kv("id", Cell::Mono(id.to_string())),
            kv("slug", Cell::Mono(o.slug.clone())),
            kv("image", Cell::opt(o.image_url.clone())),
            kv("created", Cell::Text(when(o.created_at))),
        ],
        empty: String::new(),
    }));

    p.push(Block::Heading("Members".into()));
    let members = crate::orgs::db::members(&admin.pool, id).await?;
    let owners = members.iter().filter(|m| m.role == "org:owner").count();
    let rows = members
        .into_iter()
        .map(|m| {
            let base = format!("/admin/orgs/{id}/members/{}", m.user_id);
            let mut actions = Vec::new();
            if m.role != "org:owner" {
                actions.push(Action::new(format!("{base}/make-owner"), "Make owner"));
            }
            // The last owner stays (the service refuses it too).
            if m.role != "org:owner" || owners > 1 {
                actions.push(Action::new(format!("{base}/remove"), "Remove").danger());
            }
            vec![
                Cell::Link(format!("/admin/users/{}", m.user_id), m.email.unwrap_or_else(|| m.user_id.to_string())),
                Cell::Text(m.role),
                Cell::Text(when(m.created_at)),
                Cell::Actions(actions),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["member", "role", "joined", ""]),
        rows,
        empty: "No members.".into(),
    }));

    p.push(Block::Heading("Invitations".into()));
    let now = time::OffsetDateTime::now_utc();
    let rows = crate::orgs::db::invitations(&admin.pool, id)
        .await?
        .into_iter()
        .map(|i| {
            let live = i.status == "pending" && i.expires_at > now;
            let status = match i.status.as_str() {
                "pending" if !live => Cell::Badge("expired".into(), "warn"),
                "pending" => Cell::Badge("pending".into(), "ok"),
                other => Cell::Text(other.into()),
            };
            let actions = if i.status == "pending" {
                vec![Action::new(format!("/admin/orgs/{id}/invitations/{}/revoke", i.id), "Revoke").danger()]
            } else {
                Vec::new()
            };
            vec![
                Cell::Text(i.email),
                Cell::Text(i.role),
                status,
                Cell::Text(when(i.expires_at)),
                Cell::Text(when(i.created_at)),
                Cell::Actions(actions),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["email", "role", "status", "expires", "sent", ""]),
        rows,
        empty: "No invitations.".into(),
    }));

    p.push(Block::Heading("Verified domains".into()));
    let rows = crate::orgs::db::domains(&admin.pool, id)
        .await?
        .into_iter()
        .map(|d| vec![Cell::Mono(d.domain), Cell::Text(d.role), Cell::Text(when(d.created_at))])
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["domain", "joins as", "added"]),
        rows,
        empty: "No verified domains.".into(),
    }));

    p.push(Block::Heading("Roles".into()));
    let rows = crate::orgs::db::roles(&admin.pool, id)
        .await?
        .into_iter()
        .map(|(key, builtin, perms)| {
            vec![
                Cell::Mono(key),
                Cell::Text(if builtin { "built-in" } else { "custom" }.into()),
                Cell::Text(perms.join(" ")),
            ]
        })
        .collect();
    p.push(Block::Table(Table { head: Head::all(&["role", "kind", "permissions"]), rows, empty: "No roles.".into() }));

    p.push(Block::Heading("Shared data".into()));
    let rows = db::buckets(&admin.pool, id)
        .await?
        .into_iter()
        .map(|(b, public)| {
            vec![
                Cell::Link(format!("/admin/storage/b/{}", path_segment(&b)), b),
                Cell::Badge(if public { "public" } else { "private" }.into(), if public { "warn" } else { "ok" }),
            ]
        })
        .collect();
    p.push(Block::Table(Table { head: Head::all(&["bucket", "access"]), rows, empty: "No buckets.".into() }));
    p.push(Block::Table(connection_table(crate::admin::db::connections(&admin.pool, Some(id), 100).await?)));
    p.push(Block::Links(vec![
        (format!("/admin/knowledge?user={id}"), format!("Knowledge space ({} documents)", o.documents)),
        (format!("/admin/audit?user={id}"), "Audit log of this organization".into()),
    ]));

    p.push(Block::Heading("Delete".into()));
    let mut form = VForm::post(
        format!("/admin/orgs/{id}/delete"),
        "Delete the organization with its buckets, knowledge and connections",
    )
    .field(Field::new("text", "confirm", "Type the organization's slug to confirm").required().hint(o.slug.clone()));
    form.danger = true;
    p.push(Block::Form(form));
    Ok(render(StatusCode::OK, &p))
}

async fn member_action(
    State(admin): State<Arc<Admin>>,
    Path((raw, user, action)): Path<(String, String, String)>,
    AdminForm { s, .. }: AdminForm,
) -> PageResult {
    let o = org_or_404(&admin, &raw).await?;
    let user = uuid(&user, "member")?;
    let by = By::operator(s.user_id);
    match action.as_str() {
        "make-owner" => {
            orgs::set_role_by(&admin.auth, &by, true, o.id, user, "org:owner").await?;
            Ok(see_other(&format!("/admin/orgs/{}?done=saved", o.id)))
        }
        "remove" => {
            orgs::remove_by(&admin.auth, &by, true, o.id, user).await?;
            Ok(see_other(&format!("/admin/orgs/{}?done=deleted", o.id)))
        }
        _ => Err(Fail(ApiError::not_found("no route for this path"))),
    }
}

async fn revoke(
    State(admin): State<Arc<Admin>>,
    Path((raw, inv)): Path<(String, String)>,
    AdminForm { s, .. }: AdminForm,
) -> PageResult {
    let o = org_or_404(&admin, &raw).await?;
    let inv = uuid(&inv, "invitation")?;
    orgs::revoke_by(&admin.auth, &By::operator(s.user_id), o.id, inv).await?;
    Ok(see_other(&format!("/admin/orgs/{}?done=revoked_invitation", o.id)))
}

async fn delete(State(admin): State<Arc<Admin>>, Path(raw): Path<String>, AdminForm { s, f }: AdminForm) -> PageResult {
    let o = org_or_404(&admin, &raw).await?;
    if f.get("confirm").map(str::trim) != Some(o.slug.as_str()) {
        return Err(Fail(ApiError::bad_request(
            "confirmation_required",
            format!("type the organization's slug ({}) to confirm", o.slug),
        )));
    }
    orgs::delete_by(&admin.auth, &By::operator(s.user_id), o.id).await?;
    Ok(see_other("/admin/orgs?done=deleted"))
}
