//! The console's handlers: sign-in and sign-out, overview, users, audit log,
//! table browser, SQL runner, the assets and the landing page at `/`. Every page
//! but sign-in needs a live admin session; without one every `/admin` path
//! answers exactly as an unknown path does (404). Every POST carries the
//! session's CSRF token and a same-site origin.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{FromRef, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use uuid::Uuid;

use super::table::{self, Browse, Cursor, Filter, Input, Op, TableError, TableInfo};
use super::view::{Action, Block, Cell, Field, Form as VForm, Head, Notice, Page, Table, human_bytes, when};
use super::{Admin, COOKIE, db, service};
use crate::auth::Peer;
use crate::auth::service::ClientInfo;
use crate::error::ApiError;

/// The console's routes (HTML; not in the OpenAPI document).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Admin>: FromRef<S>,
{
    Router::new()
        .route("/", get(landing))
        .route("/admin/assets/{file}", get(asset))
        .route("/admin/sign-in", get(sign_in_page).post(sign_in_submit))
        .route("/admin/sign-in/link", post(sign_in_link))
        .route("/admin/sign-out", post(sign_out))
        .route("/admin", get(overview))
        .route("/admin/jobs/{id}/retry", post(retry_job))
        .route("/admin/users", get(users))
        .route("/admin/users/{id}", get(user_detail))
        .route("/admin/users/{id}/{action}", post(user_action))
        .route("/admin/audit", get(audit))
        .route("/admin/tables", get(tables))
        .route("/admin/tables/{table}", get(browse))
        .route("/admin/tables/{table}/export.csv", get(export_csv))
        .route("/admin/tables/{table}/import", post(import_csv))
        .route("/admin/tables/{table}/new", get(new_row).post(insert_row))
        .route("/admin/tables/{table}/row/{key}", get(row_detail).post(update_row))
        .route("/admin/tables/{table}/row/{key}/delete", post(delete_row))
        .route("/admin/sql", get(sql_page).post(sql_run))
        .route("/admin/sql/save", post(sql_save))
        .route("/admin/sql/export.csv", post(sql_export))
        .route("/admin/sql/saved/{id}/delete", post(sql_delete))
        .merge(super::areas::routes::routes())
        .merge(super::orgs::routes::routes())
}

/// The page security headers: a strict CSP (scripts and styles only from this
/// origin, no inline code), referrers only to this origin (a sign-in link's
/// token never leaves it; with `no-referrer` Chromium sends `Origin: null` on
/// the console's own forms), no framing, no caching, no sniffing.
pub(crate) fn secure(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'self'; \
             frame-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// A rendered page with `status`.
pub(crate) fn render(status: StatusCode, page: &Page) -> Response {
    match page.render() {
        Ok(html) => secure((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A handler's failure shown as a console page with the error (status kept).
pub(crate) struct Fail(pub ApiError);

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Fail(e)
    }
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail(e.into())
    }
}

impl From<TableError> for Fail {
    fn from(e: TableError) -> Self {
        Fail(match e {
            TableError::NoTable => ApiError::not_found("no such table"),
            TableError::Db(e) => e.into(),
            TableError::Refused(m) => ApiError::unprocessable("value_refused", m),
            e @ TableError::Column(_) => ApiError::bad_request("invalid_column", e.to_string()),
            e @ TableError::NoKey => ApiError::bad_request("no_primary_key", e.to_string()),
            e @ TableError::BadKey => ApiError::bad_request("invalid_key", e.to_string()),
        })
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status.is_server_error() {
            // The usual envelope and log line for internal failures.
            return e.into_response();
        }
        let mut page = Page::new("Something was refused", "");
        page.notice = Notice::error(format!("{} ({})", e.message, e.code));
        page.push(Block::Links(vec![("/admin".into(), "Back to the console".into())]));
        render(e.status, &page)
    }
}

type PageResult = Result<Response, Fail>;

/// The signed-in admin's session; without one, the same 404 as an unknown path.
pub(crate) struct AdminSession(pub db::SessionRow);

fn not_found() -> ApiError {
    ApiError::not_found("no route for this path")
}

impl<S: Send + Sync> FromRequestParts<S> for AdminSession
where
    Arc<Admin>: FromRef<S>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let admin = Arc::<Admin>::from_ref(state);
        let Some(token) = crate::auth::cookie_value(&parts.headers, COOKIE) else { return Err(not_found()) };
        service::session(&admin, token).await?.map(AdminSession).ok_or_else(not_found)
    }
}

/// A page for the signed-in admin.
pub(crate) fn page(s: &db::SessionRow, title: impl Into<String>, section: &'static str) -> Page {
    let mut p = Page::new(title, section);
    p.admin = Some(s.email.clone().unwrap_or_else(|| s.user_id.to_string()));
    p.csrf = s.csrf_token.clone();
    p
}

/// A posted form's fields.
pub(crate) struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of `k`.
    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    /// Whether the checkbox `k` is ticked.
    pub(crate) fn ticked(&self, k: &str) -> bool {
        self.get(k) == Some("true")
    }
}

fn same_site(admin: &Admin, headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let Some(origin) = origin else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    admin.config.origin_allowed(origin)
        || origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
}

/// Refuses a POST without the session's CSRF token or from another site.
pub(crate) fn guard(admin: &Admin, s: &db::SessionRow, headers: &HeaderMap, f: &Fields) -> Result<(), Fail> {
    if !service::csrf_ok(s, f.get("csrf")) || !same_site(admin, headers) {
        return Err(Fail(
            ApiError::forbidden("the form's security token is missing or stale; reload the page and try again")
                .with_code("csrf_failed"),
        ));
    }
    Ok(())
}

/// A console form post: the admin session, the fields, and the CSRF and origin
/// checks already passed (without a session: the usual 404).
pub(crate) struct AdminForm {
    /// The admin's session.
    pub s: db::SessionRow,
    /// The posted fields.
    pub f: Fields,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for AdminForm
where
    Arc<Admin>: FromRef<S>,
{
    type Rejection = Response;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let AdminSession(s) =
            AdminSession::from_request_parts(&mut parts, state).await.map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let Form(f) =
            Form::<Vec<(String, String)>>::from_request(axum::extract::Request::from_parts(parts, body), state)
                .await
                .map_err(IntoResponse::into_response)?;
        let f = Fields(f);
        guard(&Arc::<Admin>::from_ref(state), &s, &headers, &f).map_err(IntoResponse::into_response)?;
        Ok(AdminForm { s, f })
    }
}

/// The client facts of a request.
pub(crate) fn client(headers: &HeaderMap, peer: &Peer) -> ClientInfo {
    crate::auth::client_info(headers, peer.0)
}

/// Parses a raw query string into pairs.
pub(crate) fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// `?k=v&…` for pairs.
pub(crate) fn query_string(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    format!("?{}", s.finish())
}

/// A 303 to `to` (after a POST).
pub(crate) fn see_other(to: &str) -> Response {
    secure(Redirect::to(to).into_response())
}

/// `s` percent-encoded as one URL path segment.
pub(crate) fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A fixed message for a `done=` code after a redirect.
pub(crate) fn done_notice(q: &[(String, String)]) -> Option<Notice> {
    let code = q.iter().find(|(k, _)| k == "done").map(|(_, v)| v.as_str())?;
    let text = match code {
        "banned" => "The user is banned and signed out everywhere.",
        "unbanned" => "The ban is lifted.",
        "revoked" => "Every session of the user has ended.",
        "factors_reset" => {
            "The user's second factors are removed; they sign in with one factor until they enrol again."
        }
        "reset" => "A password-reset link is on its way.",
        "deleted" => "Deleted.",
        "saved" => "Saved.",
        "inserted" => "Row inserted.",
        "updated" => "Row updated.",
        "imported" => "Rows imported.",
        "retried" => "The job is queued again.",
        "created" => "Created.",
        "moved" => "Moved.",
        "uploaded" => "Uploaded.",
        "refreshed" => "Refreshed.",
        "queued" => "Queued.",
        "revoked_invitation" => "The invitation is revoked; its link no longer works.",
        _ => return None,
    };
    Notice::ok(text)
}

// ---- landing, assets, sign-in ------------------------------------------------

async fn landing() -> Response {
    let page = super::view::Landing { version: env!("CARGO_PKG_VERSION") };
    match page.render() {
        Ok(html) => {
            secure((StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
        }
        Err(e) => ApiError::internal(e).into_response(),
    }
}

const CSS: &str = include_str!("../../assets/admin/admin.css");
const JS: &str = include_str!("../../assets/admin/admin.js");

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "admin.css" => (CSS, "text/css; charset=utf-8"),
        "admin.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return not_found().into_response(),
    };
    secure(
        (StatusCode::OK, [(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "public, max-age=300")], body)
            .into_response(),
    )
}

fn sign_in_form(email: &str) -> Block {
    Block::Form(
        VForm::post("/admin/sign-in", "Sign in")
            .field(Field::new("email", "email", "Email").value(email).required())
            .field(Field::new("password", "password", "Password").required()),
    )
}

async fn sign_in_page(RawQuery(raw): RawQuery) -> Response {
    let q = query_pairs(&raw);
    let mut page = Page::new("Admin sign-in", "");
    if let Some((_, token)) = q.iter().find(|(k, _)| k == "token") {
        // A button, not an automatic sign-in: link scanners that fetch the URL
        // must not use the link up.
        page.push(Block::Text("Continue to sign in to the admin console with this one-time link.".into()));
        page.push(Block::Form(VForm::post("/admin/sign-in/link", "Continue").field(Field::hidden("token", token))));
    } else {
        page.push(sign_in_form(""));
        page.push(Block::Text(
            "No admin yet? Run `carmenta admin create --email you@example.com` on the server: it prints a one-time link."
                .into(),
        ));
    }
    render(StatusCode::OK, &page)
}

fn signed_in(admin: &Admin, token: &str) -> Response {
    let secure_flag = if admin.config.public_url.scheme() == "https" { "; Secure" } else { "" };
    let max_age = admin.config.admin.session_ttl.as_secs();
    let cookie = format!("{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure_flag}");
    let mut res = see_other("/admin");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

fn sign_in_refused(e: ApiError, email: &str) -> Response {
    let mut page = Page::new("Admin sign-in", "");
    page.notice = Notice::error(e.message);
    page.push(sign_in_form(email));
    render(e.status, &page)
}

/// The answer to a sign-in: the cookie and the overview, or the form again with
/// the refusal (internal failures keep the usual envelope).
fn sign_in_outcome(admin: &Admin, result: Result<String, ApiError>, email: &str) -> Response {
    match result {
        Ok(token) => signed_in(admin, &token),
        Err(e) if e.status.is_server_error() => e.into_response(),
        Err(e) => sign_in_refused(e, email),
    }
}

async fn sign_in_submit(
    State(admin): State<Arc<Admin>>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let f = Fields(f);
    let email = f.get("email").unwrap_or("").to_string();
    if !same_site(&admin, &headers) {
        return sign_in_refused(ApiError::forbidden("cross-site sign-in refused").with_code("csrf_failed"), &email);
    }
    let password = f.get("password").unwrap_or("").to_string();
    let result = service::sign_in_password(&admin, email.clone(), password, &client(&headers, &peer)).await;
    sign_in_outcome(&admin, result, &email)
}

async fn sign_in_link(
    State(admin): State<Arc<Admin>>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let f = Fields(f);
    if !same_site(&admin, &headers) {
        return sign_in_refused(ApiError::forbidden("cross-site sign-in refused").with_code("csrf_failed"), "");
    }
    let result = service::sign_in_link(&admin, f.get("token").unwrap_or(""), &client(&headers, &peer)).await;
    sign_in_outcome(&admin, result, "")
}

async fn sign_out(State(admin): State<Arc<Admin>>, AdminForm { s, .. }: AdminForm) -> PageResult {
    service::sign_out(&admin, &s).await?;
    let mut res = see_other("/admin/sign-in");
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("carmenta_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(res)
}

// ---- overview -----------------------------------------------------------------

async fn overview(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let q = query_pairs(&raw);
    let mut p = page(&s, "Overview", "overview");
    p.notice = done_notice(&q);
    let c = db::counts(&admin.pool).await?;
    p.push(Block::Stats(vec![
        ("users".into(), c.users.to_string(), Some("/admin/users".into())),
        ("banned".into(), c.banned.to_string(), None),
        ("admins".into(), c.admins.to_string(), Some("/admin/tables/admins".into())),
        ("objects".into(), format!("{} · {}", c.objects, human_bytes(c.bytes)), Some("/admin/storage".into())),
        ("conversations".into(), c.conversations.to_string(), Some("/admin/conversations".into())),
        ("messages".into(), c.messages.to_string(), None),
        ("documents".into(), c.documents.to_string(), Some("/admin/knowledge".into())),
        ("memories".into(), c.memories.to_string(), Some("/admin/memory".into())),
        ("failed jobs".into(), c.failed_jobs.to_string(), None),
    ]));
    let by_status = db::connections_by_status(&admin.pool).await?;
    p.push(Block::Heading("Connections".into()));
    if by_status.is_empty() {
        p.push(Block::Text("No connections yet.".into()));
    } else {
        p.push(Block::Stats(
            by_status.into_iter().map(|(st, n)| (st, n.to_string(), Some("/admin/connections".into()))).collect(),
        ));
    }
    p.push(Block::Heading("Health".into()));
    let jobs = crate::jobs::db::counts(&admin.pool).await?;
    let mut rows = vec![vec![Cell::Text("database".into()), Cell::Badge("ok".into(), "ok"), Cell::Text(String::new())]];
    for (kind, state, n) in jobs {
        let badge = if state == "failed" { "bad" } else { "ok" };
        rows.push(vec![Cell::Text(format!("jobs: {kind}")), Cell::Badge(state, badge), Cell::Text(n.to_string())]);
    }
    p.push(Block::Table(Table { head: Head::all(&["component", "state", "count"]), rows, empty: String::new() }));
    p.push(Block::Heading("Failed jobs".into()));
    let failed = crate::jobs::db::list(&admin.pool, Some("failed"), 50).await?;
    let rows = failed
        .into_iter()
        .map(|j| {
            vec![
                Cell::Mono(j.id.to_string()),
                Cell::Text(j.kind),
                Cell::Text(format!("{}/{}", j.attempts, j.max_attempts)),
                Cell::opt(j.last_error),
                Cell::Text(j.finished_at.map(when).unwrap_or_default()),
                Cell::Actions(vec![Action::new(format!("/admin/jobs/{}/retry", j.id), "Retry")]),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["id", "kind", "attempts", "last error", "failed at", ""]),
        rows,
        empty: "No failed jobs.".into(),
    }));
    Ok(render(StatusCode::OK, &p))
}

async fn retry_job(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    AdminForm { s, .. }: AdminForm,
) -> PageResult {
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    if !crate::jobs::retry(&admin.pool, id).await? {
        return Err(Fail(ApiError::conflict("not_retryable", "only a failed or cancelled job can be retried")));
    }
    service::record(&admin, &s, "admin.job.retry", Some(&id.to_string()), None, serde_json::json!({})).await?;
    Ok(see_other("/admin?done=retried"))
}

// ---- users ----------------------------------------------------------------------

async fn users(State(admin): State<Arc<Admin>>, AdminSession(s): AdminSession, RawQuery(raw): RawQuery) -> PageResult {
    let q = query_pairs(&raw);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let search = get("q");
    let before = match get("cursor") {
        Some(c) => Some(
            crate::pagination::parse_time_id(c).map_err(|_| ApiError::bad_request("invalid_cursor", "bad cursor"))?,
        ),
        None => None,
    };
    let limit = 50;
    let mut rows = db::search_users(&admin.pool, search, before, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| {
            let mut pairs = vec![("cursor".to_string(), crate::pagination::time_id_cursor(r.created_at, r.id))];
            if let Some(s) = search {
                pairs.push(("q".into(), s.to_string()));
            }
            format!("/admin/users{}", query_string(&pairs))
        })
    } else {
        None
    };
    let mut p = page(&s, "Users", "users");
    p.notice = done_notice(&q);
    p.push(Block::Form(
        VForm::get("/admin/users", "Search")
            .field(Field::new("search", "q", "Email, name or id").value(search.unwrap_or(""))),
    ));
    let table_rows = rows
        .into_iter()
        .map(|u| {
            let mut flags = Vec::new();
            if u.admin {
                flags.push("admin");
            }
            if u.banned {
                flags.push("banned");
            }
            if !u.email_verified {
                flags.push("unverified");
            }
            vec![
                Cell::Link(format!("/admin/users/{}", u.id), u.email.unwrap_or_else(|| u.id.to_string())),
                Cell::opt(u.name),
                if flags.is_empty() {
                    Cell::Badge("active".into(), "ok")
                } else {
                    Cell::Badge(flags.join(", "), if u.banned { "bad" } else { "warn" })
                },
                Cell::Text(when(u.created_at)),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["email", "name", "status", "created"]),
        rows: table_rows,
        empty: "No users match.".into(),
    }));
    p.push(Block::Pager(before.map(|_| "/admin/users".to_string()), next));
    Ok(render(StatusCode::OK, &p))
}

fn user_id(raw: &str) -> Result<Uuid, Fail> {
    Uuid::parse_str(raw).map_err(|_| Fail(ApiError::not_found("user not found")))
}

async fn user_detail(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let id = user_id(&id)?;
    let u = crate::auth::db::user_by_id(&admin.pool, id).await?.ok_or_else(|| ApiError::not_found("user not found"))?;
    let is_admin = db::is_admin(&admin.pool, id).await?;
    let mut p = page(&s, u.email.clone().unwrap_or_else(|| id.to_string()), "users");
    p.notice = done_notice(&query_pairs(&raw));
    let kv = |k: &str, v: Cell| vec![Cell::Text(k.into()), v];
    p.push(Block::Table(Table {
        head: Head::all(&["", ""]),
        rows: vec![
            kv("id", Cell::Mono(id.to_string())),
            kv("email", Cell::opt(u.email.clone())),
            kv("verified", Cell::opt(u.email_verified_at.map(when))),
            kv("name", Cell::opt(u.name.clone())),
            kv("password", Cell::Text(if u.password_hash.is_some() { "set" } else { "none" }.into())),
            kv("external id", Cell::opt(u.external_id.clone())),
            kv("created", Cell::Text(when(u.created_at))),
            kv("admin", Cell::Text(if is_admin { "yes" } else { "no" }.into())),
            kv(
                "banned",
                match u.banned_at {
                    Some(t) => Cell::Badge(format!("since {}", when(t)), "bad"),
                    None => Cell::Text("no".into()),
                },
            ),
        ],
        empty: String::new(),
    }));
    let mut actions = vec![
        if u.banned_at.is_some() {
            Action::new(format!("/admin/users/{id}/unban"), "Unban")
        } else {
            Action::new(format!("/admin/users/{id}/ban"), "Ban").danger()
        },
        Action::new(format!("/admin/users/{id}/revoke-sessions"), "Revoke sessions").danger(),
        Action::new(format!("/admin/users/{id}/reset-link"), "Send reset link"),
        Action::new(format!("/admin/users/{id}/reset-factors"), "Reset second factors").danger(),
        Action::new(format!("/admin/users/{id}/impersonate"), "Impersonate"),
    ];
    if u.email.is_none() {
        actions.remove(2);
    }
    p.push(Block::Table(Table { head: vec![], rows: vec![vec![Cell::Actions(actions)]], empty: String::new() }));
    let usage = db::usage(&admin.pool, id).await?;
    p.push(Block::Heading("Usage".into()));
    p.push(Block::Stats(vec![
        ("objects".into(), format!("{} · {}", usage.objects, human_bytes(usage.bytes)), None),
        ("conversations".into(), usage.conversations.to_string(), Some(format!("/admin/conversations?user={id}"))),
        ("documents".into(), usage.documents.to_string(), Some(format!("/admin/knowledge?user={id}"))),
        ("memories".into(), usage.memories.to_string(), Some(format!("/admin/memory?user={id}"))),
    ]));
    p.push(Block::Heading("Metadata".into()));
    let meta = serde_json::json!({
        "public_metadata": u.public_metadata, "private_metadata": u.private_metadata, "unsafe_metadata": u.unsafe_metadata,
    });
    p.push(Block::Pre(serde_json::to_string_pretty(&meta).unwrap_or_default()));
    p.push(Block::Links(vec![(
        format!("/admin/tables/users/row/{}", table::encode_key(&[id.to_string()])),
        "Edit the row in the table browser".into(),
    )]));
    p.push(Block::Heading("Sessions".into()));
    let sessions = db::user_sessions(&admin.pool, id).await?;
    let rows = sessions
        .into_iter()
        .map(|r| {
            let state = if r.revoked_at.is_some() {
                Cell::Badge("revoked".into(), "warn")
            } else if r.expires_at < time::OffsetDateTime::now_utc() {
                Cell::Badge("expired".into(), "warn")
            } else {
                Cell::Badge("live".into(), "ok")
            };
            vec![
                Cell::Mono(r.id.to_string()),
                state,
                Cell::Text(when(r.created_at)),
                Cell::Text(when(r.last_active_at)),
                Cell::opt(r.ip),
                Cell::opt(r.user_agent),
                match r.impersonator_id {
                    Some(a) => Cell::Link(format!("/admin/users/{a}"), format!("impersonated by {a}")),
                    None => Cell::Text(String::new()),
                },
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["id", "state", "created", "last active", "ip", "user agent", ""]),
        rows,
        empty: "No sessions.".into(),
    }));
    p.push(Block::Heading("Organizations".into()));
    let rows = super::orgs::db::orgs_of(&admin.pool, id)
        .await?
        .into_iter()
        .map(|(org, name, role)| vec![Cell::Link(format!("/admin/orgs/{org}"), name), Cell::Text(role)])
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["organization", "role"]),
        rows,
        empty: "In no organization.".into(),
    }));
    p.push(Block::Heading("Connections".into()));
    let conns = db::connections(&admin.pool, Some(id), 100).await?;
    p.push(Block::Table(connection_table(conns)));
    p.push(Block::Links(vec![(format!("/admin/audit?user={id}"), "Audit log of this user".into())]));
    if id != s.user_id {
        p.push(Block::Heading("Delete".into()));
        let mut form = VForm::post(format!("/admin/users/{id}/delete"), "Delete the user and everything they own")
            .field(
                Field::new("text", "confirm", "Type the user's email to confirm")
                    .required()
                    .hint(u.email.clone().unwrap_or_else(|| id.to_string())),
            );
        form.danger = true;
        p.push(Block::Form(form));
    }
    Ok(render(StatusCode::OK, &p))
}

/// The connections table (shared by the user page and the connections page).
pub(crate) fn connection_table(conns: Vec<db::ConnectionRow>) -> Table {
    let rows = conns
        .into_iter()
        .map(|c| {
            vec![
                Cell::Mono(c.id.to_string()),
                Cell::Link(format!("/admin/users/{}", c.user_id), c.email.unwrap_or_else(|| c.user_id.to_string())),
                Cell::Text(c.integration),
                Cell::Badge(c.status.clone(), if c.status == "connected" { "ok" } else { "bad" }),
                Cell::opt(c.last_error),
                Cell::Text(when(c.updated_at)),
                Cell::Actions(vec![
                    Action::new(format!("/admin/connections/{}/refresh", c.id), "Refresh"),
                    Action::new(format!("/admin/connections/{}/delete", c.id), "Delete").danger(),
                ]),
            ]
        })
        .collect();
    Table {
        head: Head::all(&["id", "user", "integration", "status", "last error", "updated", ""]),
        rows,
        empty: "No connections.".into(),
    }
}

async fn user_action(
    State(admin): State<Arc<Admin>>,
    Path((id, action)): Path<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
    AdminForm { s, f }: AdminForm,
) -> PageResult {
    let id = user_id(&id)?;
    let back = |done: &str| see_other(&format!("/admin/users/{id}?done={done}"));
    match action.as_str() {
        "ban" => {
            service::set_banned(&admin, &s, id, true).await?;
            Ok(back("banned"))
        }
        "unban" => {
            service::set_banned(&admin, &s, id, false).await?;
            Ok(back("unbanned"))
        }
        "revoke-sessions" => {
            service::revoke_sessions(&admin, &s, id).await?;
            Ok(back("revoked"))
        }
        "reset-factors" => {
            service::reset_factors(&admin, &s, id).await?;
            Ok(back("factors_reset"))
        }
        "reset-link" => {
            service::send_reset(&admin, &s, id, &client(&headers, &peer)).await?;
            Ok(back("reset"))
        }
        "delete" => {
            service::delete_user(&admin, &s, id, f.get("confirm").unwrap_or("")).await?;
            Ok(see_other("/admin/users?done=deleted"))
        }
        "impersonate" => {
            let res = service::impersonate(&admin, &s, id, &client(&headers, &peer)).await?;
            let mut p = page(&s, "Impersonation session", "users");
            p.notice = Notice::ok(format!(
                "A session as {} until {} UTC. Its tokens carry act.sub = your id; the audit log names you both.",
                res.user.email.clone().unwrap_or_else(|| id.to_string()),
                when(res.session_expires_at)
            ));
            p.push(Block::Text("Session token (exchange it at POST /v1/auth/token, or send it as a bearer):".into()));
            p.push(Block::Copy(res.session_token));
            p.push(Block::Text("Access token:".into()));
            p.push(Block::Copy(res.access_token));
            p.push(Block::Links(vec![(format!("/admin/users/{id}"), "Back to the user".into())]));
            Ok(render(StatusCode::OK, &p))
        }
        _ => Err(Fail(not_found())),
    }
}

// ---- audit log ------------------------------------------------------------------

async fn audit(State(admin): State<Arc<Admin>>, AdminSession(s): AdminSession, RawQuery(raw): RawQuery) -> PageResult {
    let q = query_pairs(&raw);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let (actor, action, user) = (get("actor"), get("action"), get("user"));
    let user_id = match &user {
        Some(u) => Some(Uuid::parse_str(u).map_err(|_| ApiError::bad_request("invalid_user", "user must be an id"))?),
        None => None,
    };
    let before = get("before").and_then(|b| b.parse::<i64>().ok());
    let limit = 100;
    let rows = db::audit(&admin.pool, actor.as_deref(), action.as_deref(), user_id, before, limit).await?;
    let mut p = page(&s, "Audit log", "audit");
    p.push(Block::Form(
        VForm::get("/admin/audit", "Filter")
            .field(Field::new("text", "actor", "Actor starts with").value(actor.clone().unwrap_or_default()))
            .field(Field::new("text", "action", "Action starts with").value(action.clone().unwrap_or_default()))
            .field(Field::new("text", "user", "User id").value(user.clone().unwrap_or_default())),
    ));
    let next = (rows.len() as i64 == limit).then(|| {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in [("actor", &actor), ("action", &action), ("user", &user)] {
            if let Some(v) = v {
                pairs.push((k.into(), v.clone()));
            }
        }
        pairs.push(("before".into(), rows.last().map(|r| r.id).unwrap_or(0).to_string()));
        format!("/admin/audit{}", query_string(&pairs))
    });
    let table_rows = rows
        .into_iter()
        .map(|r| {
            vec![
                Cell::Text(when(r.at)),
                Cell::Mono(r.actor),
                Cell::Text(r.action),
                Cell::opt(r.target),
                match r.on_behalf_of {
                    Some(u) => Cell::Link(format!("/admin/users/{u}"), u.to_string()),
                    None => Cell::Null,
                },
                Cell::Mono(r.detail.to_string()),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["at", "actor", "action", "target", "user", "detail"]),
        rows: table_rows,
        empty: "Nothing recorded matches.".into(),
    }));
    p.push(Block::Pager(before.map(|_| "/admin/audit".to_string()), next));
    Ok(render(StatusCode::OK, &p))
}

// ---- table browser --------------------------------------------------------------

async fn tables(State(admin): State<Arc<Admin>>, AdminSession(s): AdminSession) -> PageResult {
    let list = table::db::tables(&admin.pool).await?;
    let mut p = page(&s, "Tables", "tables");
    p.push(Block::Text("Row counts are the planner's estimates (exact counts would scan big tables).".into()));
    let rows = list
        .into_iter()
        .map(|(name, est)| {
            vec![
                Cell::Link(format!("/admin/tables/{}", path_segment(&name)), name),
                Cell::Text(if est < 0 { "not analysed".into() } else { format!("≈ {est}") }),
            ]
        })
        .collect();
    p.push(Block::Table(Table { head: Head::all(&["table", "rows"]), rows, empty: "No tables.".into() }));
    Ok(render(StatusCode::OK, &p))
}

async fn table_info(admin: &Admin, name: &str) -> Result<TableInfo, Fail> {
    table::db::info(&admin.pool, name).await?.ok_or(Fail(ApiError::not_found("no such table")))
}

/// A browse from the query string: `sort`, `dir`, `after`, and filters as
/// repeated `fc` (column), `fo` (operator), `fv` (value).
fn parse_browse(info: &TableInfo, q: &[(String, String)]) -> Result<Browse, Fail> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let all = |k: &str| q.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let (fc, fo, fv) = (all("fc"), all("fo"), all("fv"));
    let mut filters = Vec::new();
    for (i, column) in fc.iter().enumerate() {
        if column.is_empty() {
            continue;
        }
        let op = fo.get(i).and_then(|o| Op::parse(o)).ok_or_else(|| {
            Fail(ApiError::bad_request("invalid_filter", format!("filter {} has no known operator", i + 1)))
        })?;
        filters.push(Filter { column: column.clone(), op, value: fv.get(i).cloned().unwrap_or_default() });
    }
    let sort = get("sort").map(str::to_string);
    if let Some(s) = &sort
        && !info.column(s).is_some_and(|c| c.sortable())
    {
        return Err(TableError::Column(s.clone()).into());
    }
    let after = match get("after") {
        Some(a) => Some(Cursor::decode(a).ok_or(Fail(ApiError::bad_request("invalid_cursor", "bad page cursor")))?),
        None => None,
    };
    Ok(Browse { sort, desc: get("dir") == Some("desc"), filters, after, limit: 50 })
}

/// The query pairs of a browse without its cursor (filters, sort).
fn browse_pairs(b: &Browse) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    if let Some(s) = &b.sort {
        pairs.push(("sort".to_string(), s.clone()));
        if b.desc {
            pairs.push(("dir".into(), "desc".into()));
        }
    }
    for f in &b.filters {
        pairs.push(("fc".into(), f.column.clone()));
        pairs.push(("fo".into(), f.op.name().into()));
        pairs.push(("fv".into(), f.value.clone()));
    }
    pairs
}

async fn browse(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let info = table_info(&admin, &name).await?;
    let q = query_pairs(&raw);
    let b = parse_browse(&info, &q)?;
    let mut rows = table::db::browse(&admin.pool, &info, &b, admin.config.admin.sql_timeout).await?;
    let more = rows.len() as i64 > b.limit;
    rows.truncate(b.limit as usize);
    let base = format!("/admin/tables/{}", path_segment(&info.name));
    let pairs = browse_pairs(&b);
    let mut p = page(&s, format!("Table {}", info.name), "tables");
    p.notice = done_notice(&q);
    let count = if b.filters.is_empty() {
        match table::db::count_upto(&admin.pool, &info, 10_000).await? {
            Some(n) => format!("{n} rows"),
            None => format!("≈ {} rows (estimate)", info.estimate.max(10_000)),
        }
    } else {
        format!("{}{} rows on this page", rows.len(), if more { "+" } else { "" })
    };
    p.push(Block::Text(count));
    // Filters: the active ones (kept as hidden fields) and one more to add.
    let columns: Vec<(String, String)> =
        info.visible().filter(|c| c.sortable()).map(|c| (c.name.clone(), c.name.clone())).collect();
    let ops: Vec<(String, String)> = Op::ALL.iter().map(|(_, n, l)| (n.to_string(), l.to_string())).collect();
    let mut form = VForm::get(base.clone(), "Apply");
    for (k, v) in &pairs {
        form = form.field(Field::hidden(k.clone(), v.clone()));
    }
    let mut col_opts = vec![(String::new(), "column…".to_string())];
    col_opts.extend(columns);
    form = form
        .field(Field::new("select", "fc", "Filter").options(col_opts))
        .field(Field::new("select", "fo", "Operator").options(ops))
        .field(Field::new("text", "fv", "Value"));
    p.push(Block::Form(form));
    let mut links = Vec::new();
    if !b.filters.is_empty() {
        let desc: Vec<String> = b.filters.iter().map(|f| format!("{} {} {}", f.column, f.op.name(), f.value)).collect();
        p.push(Block::Text(format!("Filters: {}", desc.join(" and "))));
        links.push((base.clone(), "Clear filters".to_string()));
    }
    if info.editable() {
        links.push((format!("{base}/new"), "Insert a row".into()));
    }
    links.push((format!("{base}/export.csv{}", query_string(&pairs)), "Export CSV".into()));
    p.push(Block::Links(links));
    // Heads: sort links.
    let mut head = vec![Head::plain("")];
    for c in info.visible() {
        let mut h = Head::plain(c.name.clone());
        h.note = c.data_type.clone();
        if c.sortable() {
            let desc = b.sort.as_deref() == Some(&c.name) && !b.desc;
            let mut sp: Vec<(String, String)> = vec![("sort".into(), c.name.clone())];
            if desc {
                sp.push(("dir".into(), "desc".into()));
            }
            for f in &b.filters {
                sp.push(("fc".into(), f.column.clone()));
                sp.push(("fo".into(), f.op.name().into()));
                sp.push(("fv".into(), f.value.clone()));
            }
            h.href = Some(format!("{base}{}", query_string(&sp)));
            if b.sort.as_deref() == Some(&c.name) {
                h.mark = if b.desc { " ▼" } else { " ▲" };
            }
        }
        head.push(h);
    }
    let visible: Vec<&table::Column> = info.visible().collect();
    let table_rows = rows
        .iter()
        .map(|r| {
            let mut cells = vec![if info.pk.is_empty() {
                Cell::Text(String::new())
            } else {
                Cell::Link(format!("{base}/row/{}", table::encode_key(&r.key)), "open".into())
            }];
            for (c, v) in visible.iter().zip(&r.values) {
                cells.push(match (v, info.fk(&c.name)) {
                    (None, _) => Cell::Null,
                    (Some(v), Some(fk)) => Cell::Link(
                        format!(
                            "/admin/tables/{}{}",
                            path_segment(&fk.ref_table),
                            query_string(&[
                                ("fc".into(), fk.ref_column.clone()),
                                ("fo".into(), "eq".into()),
                                ("fv".into(), v.clone())
                            ])
                        ),
                        v.clone(),
                    ),
                    (Some(v), None) => Cell::Text(v.clone()),
                });
            }
            cells
        })
        .collect();
    p.push(Block::Table(Table { head, rows: table_rows, empty: "No rows.".into() }));
    let next = if more {
        rows.last().map(|r| {
            let cursor = Cursor { sort: b.sort.as_ref().map(|_| r.sort.clone()), key: r.key.clone() };
            let mut np = pairs.clone();
            np.push(("after".into(), cursor.encode()));
            format!("{base}{}", query_string(&np))
        })
    } else {
        None
    };
    p.push(Block::Pager(b.after.as_ref().map(|_| format!("{base}{}", query_string(&pairs))), next));
    if info.editable() {
        let mut form = VForm::post(format!("{base}/import"), "Import CSV");
        form.multipart = true;
        form = form.field(
            Field::new("file", "file", "CSV file with a header row naming the columns")
                .required()
                .hint("all rows are written in one transaction, or none"),
        );
        p.push(Block::Heading("Import".into()));
        p.push(Block::Form(form));
    }
    Ok(render(StatusCode::OK, &p))
}

/// The page of a row.
fn row_url(info: &TableInfo, key: &[String]) -> String {
    format!("/admin/tables/{}/row/{}", path_segment(&info.name), table::encode_key(key))
}

fn row_key(raw: &str) -> Result<Vec<String>, Fail> {
    table::decode_key(raw).ok_or(Fail(ApiError::bad_request("invalid_key", "the row key in the URL is malformed")))
}

/// The input field of a column, with the row's current value.
fn column_field(c: &table::Column, value: Option<&Option<String>>) -> Field {
    let label = format!("{} ({})", c.name, c.data_type);
    let name = format!("v.{}", c.name);
    let current = value.cloned().flatten();
    let mut f = match c.input() {
        Input::Choice(opts) => {
            let mut o: Vec<(String, String)> = vec![(String::new(), "—".into())];
            o.extend(opts.into_iter().map(|v| (v.clone(), v)));
            // Booleans come back as t/f.
            let v = match current.as_deref() {
                Some("t") => "true".to_string(),
                Some("f") => "false".to_string(),
                other => other.unwrap_or("").to_string(),
            };
            Field::new("select", name, label).options(o).value(v)
        }
        Input::Json => Field::new("textarea", name, label).value(current.clone().unwrap_or_default()),
        Input::Number => Field::new("text", name, label).value(current.clone().unwrap_or_default()),
        Input::Text if current.as_ref().is_some_and(|v| v.len() > 80 || v.contains('\n')) => {
            Field::new("textarea", name, label).value(current.clone().unwrap_or_default())
        }
        _ => Field::new("text", name, label).value(current.clone().unwrap_or_default()),
    };
    f.hint = c.input().hint().to_string();
    if c.generated {
        f.hint = "generated: not editable".into();
    }
    f.nullable = c.nullable;
    if value.is_some() && current.is_none() {
        f.hint = format!("NULL now; an empty field keeps it. {}", f.hint);
    }
    f
}

async fn row_detail(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path((name, key)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let info = table_info(&admin, &name).await?;
    let key = row_key(&key)?;
    let row = table::db::row(&admin.pool, &info, &key).await?.ok_or(Fail(ApiError::not_found("no such row")))?;
    let base = format!("/admin/tables/{}", path_segment(&info.name));
    let enc = table::encode_key(&key);
    let mut p = page(&s, format!("{} · {}", info.name, key.join(", ")), "tables");
    p.notice = done_notice(&query_pairs(&raw));
    let visible: Vec<&table::Column> = info.visible().collect();
    let mut links = vec![(base.clone(), format!("All rows of {}", info.name))];
    for (c, v) in visible.iter().zip(&row.values) {
        if let (Some(fk), Some(v)) = (info.fk(&c.name), v) {
            links.push((
                format!(
                    "/admin/tables/{}{}",
                    path_segment(&fk.ref_table),
                    query_string(&[
                        ("fc".into(), fk.ref_column.clone()),
                        ("fo".into(), "eq".into()),
                        ("fv".into(), v.clone())
                    ])
                ),
                format!("{} → {}", c.name, fk.ref_table),
            ));
        }
    }
    for inc in &info.incoming {
        let Some(v) = visible.iter().position(|c| c.name == inc.ref_column).and_then(|i| row.values[i].clone()) else {
            continue;
        };
        links.push((
            format!(
                "/admin/tables/{}{}",
                path_segment(&inc.table),
                query_string(&[("fc".into(), inc.column.clone()), ("fo".into(), "eq".into()), ("fv".into(), v)])
            ),
            format!("{}.{} ← here", inc.table, inc.column),
        ));
    }
    p.push(Block::Links(links));
    let sealed: Vec<String> = info.columns.iter().filter(|c| c.sealed()).map(|c| c.name.clone()).collect();
    if !sealed.is_empty() {
        p.push(Block::Text(format!("Sealed or secret columns, never shown: {}", sealed.join(", "))));
    }
    if info.editable() {
        let mut form = VForm::post(format!("{base}/row/{enc}"), "Save changes");
        for (c, v) in visible.iter().zip(&row.values) {
            if c.generated {
                continue;
            }
            form = form.field(column_field(c, Some(v)));
        }
        p.push(Block::Form(form));
        p.push(Block::Table(Table {
            head: vec![],
            rows: vec![vec![Cell::Actions(vec![
                Action::new(format!("{base}/row/{enc}/delete"), "Delete this row").danger(),
            ])]],
            empty: String::new(),
        }));
    } else {
        let rows = visible
            .iter()
            .zip(&row.values)
            .map(|(c, v)| vec![Cell::Text(c.name.clone()), Cell::opt(v.clone())])
            .collect();
        p.push(Block::Table(Table { head: Head::all(&["column", "value"]), rows, empty: String::new() }));
    }
    Ok(render(StatusCode::OK, &p))
}

/// The (column, value) pairs a row form posted: `v.<col>`, NULL when `null.v.<col>`
/// is ticked. `skip_empty`: an empty value of a column with a default is left out
/// (an insert takes the default).
fn posted_values(info: &TableInfo, f: &Fields, skip_empty: bool) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for c in info.visible().filter(|c| !c.generated) {
        let Some(v) = f.get(&format!("v.{}", c.name)) else { continue };
        if f.ticked(&format!("null.v.{}", c.name)) {
            out.push((c.name.clone(), None));
        } else if v.is_empty() && skip_empty && (c.has_default || c.nullable) {
            continue;
        } else if v.is_empty() && c.nullable && c.input() != Input::Text {
            // An empty non-text field of a nullable column: NULL (no value of
            // these types is written as nothing).
            out.push((c.name.clone(), None));
        } else {
            out.push((c.name.clone(), Some(v.to_string())));
        }
    }
    out
}

async fn update_row(
    State(admin): State<Arc<Admin>>,
    Path((name, key)): Path<(String, String)>,
    AdminForm { s, f }: AdminForm,
) -> PageResult {
    let info = table_info(&admin, &name).await?;
    let key = row_key(&key)?;
    let current = table::db::row(&admin.pool, &info, &key).await?.ok_or(Fail(ApiError::not_found("no such row")))?;
    let now: HashMap<String, Option<String>> =
        info.visible().map(|c| c.name.clone()).zip(current.values.iter().cloned()).collect();
    let changes: Vec<(String, Option<String>)> = posted_values(&info, &f, false)
        .into_iter()
        .filter(|(c, v)| {
            let old = now.get(c).cloned().flatten();
            if old.is_none() && v.as_deref() == Some("") {
                return false;
            }
            // Booleans are shown as true/false but read back as t/f.
            let same_bool =
                matches!((old.as_deref(), v.as_deref()), (Some("t"), Some("true")) | (Some("f"), Some("false")));
            old != *v && !same_bool
        })
        .collect();
    let (before, after) =
        table::db::update(&admin.pool, &info, &key, &changes).await?.ok_or(Fail(ApiError::not_found("no such row")))?;
    if !changes.is_empty() {
        service::record(
            &admin,
            &s,
            "admin.table.update",
            Some(&format!("{}:{}", info.name, key.join(","))),
            None,
            serde_json::json!({"table": info.name, "key": key, "columns": changes.iter().map(|c| &c.0).collect::<Vec<_>>(),
                "before": table::as_json(&info, &before.values), "after": table::as_json(&info, &after.values)}),
        )
        .await?;
    }
    Ok(see_other(&format!("{}?done=updated", row_url(&info, &after.key))))
}

async fn new_row(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(name): Path<String>,
) -> PageResult {
    let info = table_info(&admin, &name).await?;
    if !info.editable() {
        return Err(TableError::NoKey.into());
    }
    let mut p = page(&s, format!("New row in {}", info.name), "tables");
    p.push(Block::Text("Empty fields of columns with a default take the default.".into()));
    let mut form = VForm::post(format!("/admin/tables/{}/new", path_segment(&info.name)), "Insert");
    for c in info.visible().filter(|c| !c.generated) {
        let mut f = column_field(c, None);
        if c.has_default {
            f.hint = format!("{} (has a default)", f.hint);
        }
        form = form.field(f);
    }
    p.push(Block::Form(form));
    Ok(render(StatusCode::OK, &p))
}

async fn insert_row(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    AdminForm { s, f }: AdminForm,
) -> PageResult {
    let info = table_info(&admin, &name).await?;
    let values = posted_values(&info, &f, true);
    let row = table::db::insert(&admin.pool, &info, &values).await?;
    service::record(
        &admin,
        &s,
        "admin.table.insert",
        Some(&format!("{}:{}", info.name, row.key.join(","))),
        None,
        serde_json::json!({"table": info.name, "key": row.key, "before": null, "after": table::as_json(&info, &row.values)}),
    )
    .await?;
    Ok(see_other(&format!("{}?done=inserted", row_url(&info, &row.key))))
}

async fn delete_row(
    State(admin): State<Arc<Admin>>,
    Path((name, key)): Path<(String, String)>,
    AdminForm { s, .. }: AdminForm,
) -> PageResult {
    let info = table_info(&admin, &name).await?;
    let key = row_key(&key)?;
    let before = table::db::delete(&admin.pool, &info, &key).await?.ok_or(Fail(ApiError::not_found("no such row")))?;
    service::record(
        &admin,
        &s,
        "admin.table.delete",
        Some(&format!("{}:{}", info.name, key.join(","))),
        None,
        serde_json::json!({"table": info.name, "key": key, "before": table::as_json(&info, &before.values), "after": null}),
    )
    .await?;
    Ok(see_other(&format!("/admin/tables/{}?done=deleted", path_segment(&info.name))))
}

async fn export_csv(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let info = table_info(&admin, &name).await?;
    let b = parse_browse(&info, &query_pairs(&raw))?;
    let statement = table::db::export_statement(&info, &b)?;
    service::record(
        &admin,
        &s,
        "admin.table.export",
        Some(&info.name),
        None,
        serde_json::json!({"table": info.name, "filters": browse_pairs(&b)}),
    )
    .await?;
    let rx = table::db::export_csv(admin.pool.clone(), statement);
    let body = axum::body::Body::from_stream(tokio_stream_of(rx));
    let disposition = format!("attachment; filename=\"{}.csv\"", info.name.replace(['"', '\\'], "_"));
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(secure(res))
}

/// A stream over a channel's items.
pub(crate) fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// Most bytes of one CSV import.
const IMPORT_LIMIT: usize = 64 * 1024 * 1024;

/// A file posted in a multipart form.
pub(crate) struct Upload {
    /// The file's own name.
    pub file_name: String,
    /// Its declared content type.
    pub content_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Reads a multipart form: its text fields, and the file of field `file` (at
/// most `limit` bytes, else 413). The CSRF check is the caller's, on the fields.
pub(crate) async fn multipart_form(
    mut multipart: axum::extract::Multipart,
    limit: u64,
) -> Result<(Fields, Option<Upload>), Fail> {
    let bad = |e: axum::extract::multipart::MultipartError| Fail(ApiError::bad_request("invalid_form", e.to_string()));
    let mut fields = Vec::new();
    let mut file = None;
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        if name != "file" {
            fields.push((name, field.text().await.map_err(bad)?));
            continue;
        }
        let file_name = field.file_name().unwrap_or("upload").to_string();
        let content_type = field.content_type().unwrap_or("application/octet-stream").to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(Fail(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the file is larger than {}", human_bytes(limit as i64)),
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some(Upload { file_name, content_type, bytes });
    }
    Ok((Fields(fields), file))
}

/// The header line's column names (CSV quoting understood).
fn csv_header(data: &[u8]) -> Vec<String> {
    let line_end = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let line = String::from_utf8_lossy(&data[..line_end]);
    let line = line.trim_end_matches('\r');
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

async fn import_csv(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(name): Path<String>,
    headers: HeaderMap,
    multipart: axum::extract::Multipart,
) -> PageResult {
    let (f, file) = multipart_form(multipart, IMPORT_LIMIT as u64).await?;
    guard(&admin, &s, &headers, &f)?;
    let data = file.map(|u| u.bytes);
    let info = table_info(&admin, &name).await?;
    let data =
        data.filter(|d| !d.is_empty()).ok_or(Fail(ApiError::bad_request("missing_file", "choose a CSV file")))?;
    let columns = csv_header(&data);
    let n = table::db::import_csv(&admin.pool, &info, &columns, &data).await?;
    service::record(
        &admin,
        &s,
        "admin.table.import",
        Some(&info.name),
        None,
        serde_json::json!({"table": info.name, "columns": columns, "rows": n}),
    )
    .await?;
    Ok(see_other(&format!("/admin/tables/{}?done=imported", path_segment(&info.name))))
}

// ---- SQL runner -----------------------------------------------------------------

struct SqlForm {
    sql: String,
    write: bool,
    explain: String,
    saved: Option<db::SavedQuery>,
}

async fn sql_page_with(
    admin: &Admin,
    s: &db::SessionRow,
    form: SqlForm,
    notice: Option<Notice>,
    extra: Vec<Block>,
    status: StatusCode,
) -> PageResult {
    let mut p = page(s, "SQL", "sql");
    p.notice = notice;
    p.push(Block::Text(format!(
        "Runs in a read-only transaction with a {} s statement timeout, showing at most {} rows. \
         Writes need the write mode and the confirmation box; they are audited.",
        admin.config.admin.sql_timeout.as_secs(),
        admin.config.admin.sql_row_cap
    )));
    let mut f = VForm::post("/admin/sql", "Run")
        .field(Field::new("textarea", "sql", "SQL (one statement)").value(form.sql.clone()).required())
        .field(
            Field::new("select", "mode", "Mode")
                .options(vec![("read".into(), "read-only".into()), ("write".into(), "read-write".into())])
                .value(if form.write { "write" } else { "read" }),
        )
        .field(Field::new("checkbox", "confirm", "I mean to change data (write mode)"))
        .field(
            Field::new("select", "explain", "Plan")
                .options(vec![
                    (String::new(), "run it".into()),
                    ("explain".into(), "EXPLAIN".into()),
                    ("analyze".into(), "EXPLAIN ANALYZE (runs it, rolled back)".into()),
                ])
                .value(form.explain.clone()),
        );
    f.inline = false;
    p.push(Block::Form(f));
    p.blocks.extend(extra);
    p.push(Block::Heading("Saved queries".into()));
    let mut save =
        VForm::post("/admin/sql/save", "Save this query").field(Field::hidden("sql", form.sql.clone())).field(
            Field::new("text", "name", "Name")
                .value(form.saved.as_ref().map(|q| q.name.clone()).unwrap_or_default())
                .required(),
        );
    if let Some(q) = &form.saved {
        save = save.field(Field::hidden("id", q.id.to_string())).field(Field::hidden("version", q.version.to_string()));
        p.push(Block::Text(format!("Editing saved query “{}”, version {}.", q.name, q.version)));
    }
    p.push(Block::Form(save));
    let saved = db::saved_queries(&admin.pool, s.user_id).await?;
    let rows = saved
        .into_iter()
        .map(|q| {
            vec![
                Cell::Link(format!("/admin/sql?saved={}", q.id), q.name),
                Cell::Text(format!("v{}", q.version)),
                Cell::Text(when(q.updated_at)),
                Cell::Mono(q.sql.chars().take(120).collect()),
                Cell::Actions(vec![Action::new(format!("/admin/sql/saved/{}/delete", q.id), "Remove").danger()]),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["name", "version", "saved", "sql", ""]),
        rows,
        empty: "No saved queries.".into(),
    }));
    Ok(render(status, &p))
}

async fn sql_page(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let q = query_pairs(&raw);
    let saved = match q.iter().find(|(k, _)| k == "saved") {
        Some((_, id)) => {
            let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("no such saved query"))?;
            Some(
                db::saved_query(&admin.pool, s.user_id, id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such saved query"))?,
            )
        }
        None => None,
    };
    let form = SqlForm {
        sql: saved
            .as_ref()
            .map(|q| q.sql.clone())
            .unwrap_or_else(|| "SELECT id, email, created_at FROM users ORDER BY created_at DESC LIMIT 20".into()),
        write: false,
        explain: String::new(),
        saved,
    };
    sql_page_with(&admin, &s, form, done_notice(&q), vec![], StatusCode::OK).await
}

/// Most characters of one SQL statement.
const SQL_LIMIT: usize = 100_000;

async fn sql_run(State(admin): State<Arc<Admin>>, AdminForm { s, f }: AdminForm) -> PageResult {
    let sql = f.get("sql").unwrap_or("").to_string();
    let write = f.get("mode") == Some("write");
    let explain = f.get("explain").unwrap_or("").to_string();
    let form = SqlForm { sql: sql.clone(), write, explain: explain.clone(), saved: None };
    if sql.trim().is_empty() || sql.len() > SQL_LIMIT {
        let e = Notice::error("write one statement (at most 100,000 characters)");
        return sql_page_with(&admin, &s, form, e, vec![], StatusCode::BAD_REQUEST).await;
    }
    if write && !f.ticked("confirm") {
        let e = Notice::error("write mode needs the confirmation box ticked; nothing ran");
        return sql_page_with(&admin, &s, form, e, vec![], StatusCode::BAD_REQUEST).await;
    }
    let statement = match explain.as_str() {
        "explain" => format!("EXPLAIN {}", sql.trim()),
        "analyze" => format!("EXPLAIN (ANALYZE, BUFFERS) {}", sql.trim()),
        _ => sql.clone(),
    };
    let mode = if write { db::RunMode::Write } else { db::RunMode::ReadOnly };
    let result =
        db::run_sql(&admin.pool, &statement, mode, admin.config.admin.sql_timeout, admin.config.admin.sql_row_cap)
            .await;
    if write {
        let outcome = match &result {
            Ok(o) => serde_json::json!({"ok": true, "affected": o.affected, "committed": o.committed}),
            Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
        };
        service::record(&admin, &s, "admin.sql.write", None, None, serde_json::json!({"sql": sql, "outcome": outcome}))
            .await?;
    }
    match result {
        Ok(o) => {
            let mut blocks = Vec::new();
            let summary = format!(
                "{} row{}{} in {:.1} ms{}{}",
                o.rows.len(),
                if o.rows.len() == 1 { "" } else { "s" },
                if o.truncated { format!(" (cut at {})", admin.config.admin.sql_row_cap) } else { String::new() },
                o.elapsed.as_secs_f64() * 1000.0,
                o.affected.filter(|n| *n > 0).map(|n| format!(", {n} affected")).unwrap_or_default(),
                if o.committed { ", committed" } else { ", rolled back" },
            );
            if !explain.is_empty() {
                let plan: Vec<String> = o.rows.iter().filter_map(|r| r.first().cloned().flatten()).collect();
                blocks.push(Block::Pre(plan.join("\n")));
            } else if !o.columns.is_empty() {
                let rows = o.rows.iter().map(|r| r.iter().map(|v| Cell::opt(v.clone())).collect()).collect();
                blocks.push(Block::Table(Table {
                    head: o.columns.iter().map(|c| Head::plain(c.clone())).collect(),
                    rows,
                    empty: "No rows.".into(),
                }));
                if !write {
                    blocks.push(Block::Form(
                        VForm::post("/admin/sql/export.csv", "Download these rows as CSV")
                            .field(Field::hidden("sql", sql.clone())),
                    ));
                }
            }
            sql_page_with(&admin, &s, form, Notice::ok(summary), blocks, StatusCode::OK).await
        }
        Err(db::RunError::Db(e)) => Err(Fail(e.into())),
        Err(e) => {
            let text = match &e {
                db::RunError::Refused { message, code: Some(code) } => format!("{message} (SQLSTATE {code})"),
                e => e.to_string(),
            };
            sql_page_with(&admin, &s, form, Notice::error(text), vec![], StatusCode::UNPROCESSABLE_ENTITY).await
        }
    }
}

/// One CSV field, quoted when it must be.
fn csv_field(v: &Option<String>) -> String {
    match v {
        None => String::new(),
        Some(s) if s.contains([',', '"', '\n', '\r']) || s.is_empty() => format!("\"{}\"", s.replace('"', "\"\"")),
        Some(s) => s.clone(),
    }
}

async fn sql_export(State(admin): State<Arc<Admin>>, AdminForm { f, .. }: AdminForm) -> PageResult {
    let sql = f.get("sql").unwrap_or("");
    if sql.trim().is_empty() || sql.len() > SQL_LIMIT {
        return Err(Fail(ApiError::bad_request("invalid_sql", "write one statement")));
    }
    let o = db::run_sql(
        &admin.pool,
        sql,
        db::RunMode::ReadOnly,
        admin.config.admin.sql_timeout,
        admin.config.admin.sql_row_cap,
    )
    .await
    .map_err(|e| match e {
        db::RunError::Db(e) => Fail(e.into()),
        e => Fail(ApiError::unprocessable("sql_refused", e.to_string())),
    })?;
    let mut out = String::new();
    out.push_str(&o.columns.iter().map(|c| csv_field(&Some(c.clone()))).collect::<Vec<_>>().join(","));
    out.push_str("\r\n");
    for r in &o.rows {
        out.push_str(&r.iter().map(csv_field).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    let mut res = (StatusCode::OK, out).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    res.headers_mut()
        .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"query.csv\""));
    Ok(secure(res))
}

async fn sql_save(State(admin): State<Arc<Admin>>, AdminForm { s, f }: AdminForm) -> PageResult {
    let name = f.get("name").unwrap_or("").trim().to_string();
    let sql = f.get("sql").unwrap_or("").to_string();
    if name.is_empty() || name.chars().count() > 200 || sql.trim().is_empty() || sql.len() > SQL_LIMIT {
        return Err(Fail(ApiError::bad_request("invalid_query", "a saved query needs a name (≤ 200) and SQL")));
    }
    let id = f
        .get("id")
        .filter(|v| !v.is_empty())
        .map(Uuid::parse_str)
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid_id", "bad id"))?;
    let result = match id {
        Some(id) => {
            let version = f.get("version").and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
            db::update_query(&admin.pool, s.user_id, id, version, &name, &sql).await
        }
        None => db::create_query(&admin.pool, s.user_id, &name, &sql).await,
    };
    match result {
        Ok(q) => {
            service::record(
                &admin,
                &s,
                "admin.sql.save",
                Some(&q.id.to_string()),
                None,
                serde_json::json!({"name": q.name, "version": q.version}),
            )
            .await?;
            Ok(see_other(&format!("/admin/sql?saved={}&done=saved", q.id)))
        }
        Err(db::SaveError::Db(e)) => Err(Fail(e.into())),
        Err(e) => {
            // Nothing is overwritten: the page shows the admin's text and, for a
            // stale version, what is saved now.
            let mut extra = Vec::new();
            let saved = match (&e, id) {
                (db::SaveError::Stale(_), Some(id)) => db::saved_query(&admin.pool, s.user_id, id).await?,
                _ => None,
            };
            if let Some(current) = &saved {
                extra.push(Block::Heading(format!("Saved now (version {})", current.version)));
                extra.push(Block::Pre(current.sql.clone()));
            }
            let form = SqlForm { sql, write: false, explain: String::new(), saved };
            sql_page_with(&admin, &s, form, Notice::error(format!("not saved: {e}")), extra, StatusCode::CONFLICT).await
        }
    }
}

async fn sql_delete(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    AdminForm { s, .. }: AdminForm,
) -> PageResult {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("no such saved query"))?;
    if !db::delete_query(&admin.pool, s.user_id, id).await? {
        return Err(Fail(ApiError::not_found("no such saved query")));
    }
    service::record(&admin, &s, "admin.sql.delete", Some(&id.to_string()), None, serde_json::json!({})).await?;
    Ok(see_other("/admin/sql?done=deleted"))
}

#[cfg(test)]
mod tests {
    use super::csv_header;

    #[test]
    fn csv_header_reads_quoted_names() {
        assert_eq!(csv_header(b"a,\"b,c\",\"d\"\"e\"\r\n1,2,3"), vec!["a", "b,c", "d\"e"]);
        assert_eq!(csv_header(b"x"), vec!["x"]);
    }
}
