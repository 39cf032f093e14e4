//! Server-rendered auth pages under `/auth/`: sign-in, sign-up, magic link (request,
//! sent, confirm), forgot and reset password, verify email. After success they
//! redirect to an allow-listed `redirect_url` (never elsewhere). Pages carry a
//! strict CSP, `same-origin` referrers (their URLs can hold single-use tokens,
//! which must not reach another site; `no-referrer` would make browsers send
//! `Origin: null` on the pages' own form posts, failing the login-CSRF check)
//! and deny framing.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use std::sync::Arc;

use crate::auth::AuthState;
use crate::auth::service;
use crate::auth::types::{SignInRequest, SignUpRequest};
use crate::auth::{Peer, email};
use crate::error::ApiError;

/// The hosted pages (not in the OpenAPI document: they are HTML for browsers).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/auth/sign-in", get(sign_in_page).post(sign_in_submit))
        .route("/auth/sign-up", get(sign_up_page).post(sign_up_submit))
        .route("/auth/magic-link", get(magic_link_page).post(magic_link_submit))
        .route("/auth/magic-link/sent", get(magic_link_sent))
        .route("/auth/magic-link/confirm", axum::routing::post(magic_link_confirm))
        .route("/auth/forgot-password", get(forgot_page).post(forgot_submit))
        .route("/auth/reset-password", get(reset_page).post(reset_submit))
        .route("/auth/verify-email", get(verify_email_page))
        .route("/auth/signed-in", get(signed_in_page))
        .route("/auth/mfa", get(mfa_page).post(mfa_submit))
        .route("/auth/assets/passkey.js", get(passkey_js))
        .route("/auth/mfa/passkey", axum::routing::post(mfa_passkey_start))
        .route("/auth/mfa/passkey/finish", axum::routing::post(mfa_passkey_finish))
        .route("/auth/social/{provider}", get(social_start))
        .route("/auth/social/{provider}/callback", get(social_callback_get).post(social_callback_post))
        .merge(super::account::routes())
        .merge(super::orgs::routes())
}

/// Cookie binding a social sign-in to the browser that started it.
pub(crate) const SOCIAL_COOKIE: &str = "carmenta_social";

/// Cookie holding the second-factor step's token between the sign-in form and
/// the code form (HttpOnly, `/auth` only, ten minutes).
const MFA_COOKIE: &str = "carmenta_mfa";

pub(crate) struct Field {
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    value: String,
    autocomplete: &'static str,
    required: bool,
    /// A choice of (value, label): rendered as a select, `value` chosen.
    options: Vec<(String, String)>,
}

impl Field {
    /// The same field, but one that may be left empty.
    pub(crate) fn optional(self) -> Field {
        Field { required: false, ..self }
    }
    /// The same field as a choice among `options` (value, label).
    pub(crate) fn choose(self, options: Vec<(String, String)>) -> Field {
        Field { options, ..self }
    }
}

/// A form on a hosted page.
pub(crate) struct PageForm {
    pub(crate) action: String,
    pub(crate) hidden: Vec<(String, String)>,
    pub(crate) fields: Vec<Field>,
    pub(crate) submit: String,
}

impl PageForm {
    /// A form of only hidden fields and a button.
    pub(crate) fn button(action: &str, hidden: Vec<(String, String)>, submit: impl Into<String>) -> PageForm {
        PageForm { action: action.to_string(), hidden, fields: Vec::new(), submit: submit.into() }
    }
}

/// One hosted page: a title, an error or message, an optional image (a QR code),
/// codes to copy, a plain list, forms, provider buttons and links.
#[derive(Template)]
#[template(path = "auth_page.html")]
pub(crate) struct Page {
    pub(crate) title: &'static str,
    pub(crate) error: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) image: Option<(String, String)>,
    pub(crate) codes: Vec<String>,
    /// A plain list (members, organizations), with its accessible name.
    pub(crate) items: Option<(&'static str, Vec<String>)>,
    pub(crate) form: Option<PageForm>,
    pub(crate) more: Vec<PageForm>,
    pub(crate) buttons: Vec<(String, String)>,
    pub(crate) passkeys: Vec<PasskeyButton>,
    pub(crate) links: Vec<(String, String)>,
}

/// A button that runs a WebAuthn ceremony (`assets/auth/passkey.js`), then goes to `next`.
pub(crate) struct PasskeyButton {
    /// `sign-in`, `register` or `second-factor`.
    pub(crate) kind: &'static str,
    pub(crate) label: &'static str,
    pub(crate) next: String,
    /// Ask for a name first (registration).
    pub(crate) named: bool,
}

impl Page {
    /// An empty page titled `title`.
    pub(crate) fn new(title: &'static str) -> Page {
        Page {
            title,
            error: None,
            message: None,
            image: None,
            codes: Vec::new(),
            items: None,
            form: None,
            more: Vec::new(),
            buttons: Vec::new(),
            passkeys: Vec::new(),
            links: Vec::new(),
        }
    }
    /// The page as a response (allowed to run the passkey script when it has
    /// passkey buttons).
    pub(crate) fn respond(self, status: StatusCode) -> Response {
        let scripted = !self.passkeys.is_empty();
        let mut res = html_page(status, self.render());
        if scripted {
            res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(SCRIPTED_CSP));
        }
        res
    }
}

/// The CSP of a page with passkey buttons: the same, plus this origin's scripts
/// (only `/auth/assets/passkey.js`) and requests to this origin.
const SCRIPTED_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
    img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The passkey script of the hosted pages.
const PASSKEY_JS: &str = include_str!("../../assets/auth/passkey.js");

async fn passkey_js() -> Response {
    let mut res = PASSKEY_JS.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    res.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

/// A rendered page as the response: HTML with a strict CSP (no scripts, forms
/// only to this origin), referrers only to this origin, no framing and no caching.
pub fn html_page(status: StatusCode, rendered: Result<String, askama::Error>) -> Response {
    let html = match rendered {
        Ok(h) => h,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let mut res = (status, html).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub(crate) fn field(
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    autocomplete: &'static str,
    value: &str,
) -> Field {
    Field { name, label, kind, value: value.to_string(), autocomplete, required: true, options: Vec::new() }
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    redirect_url: Option<String>,
    token: Option<String>,
}

/// A validated redirect target (see [`service::safe_redirect`]).
fn target(state: &AuthState, raw: Option<&str>) -> Result<Option<String>, ApiError> {
    raw.filter(|r| !r.is_empty()).map(|r| service::safe_redirect(&state.config, r)).transpose()
}

/// The page explaining that a redirect target was refused.
fn bad_redirect(e: ApiError) -> Response {
    let mut p = Page::new("Invalid redirect");
    p.error = Some(e.message);
    p.respond(StatusCode::UNPROCESSABLE_ENTITY)
}

fn with_redirect(path: &str, redirect: Option<&str>) -> String {
    match redirect {
        Some(r) => {
            let encoded: String = url::form_urlencoded::byte_serialize(r.as_bytes()).collect();
            format!("{path}?redirect_url={encoded}")
        }
        None => path.to_string(),
    }
}

fn hidden_redirect(redirect: Option<&str>) -> Vec<(String, String)> {
    redirect.map(|r| vec![("redirect_url".to_string(), r.to_string())]).unwrap_or_default()
}

/// Runs a state-changing form action after the login-CSRF origin check.
async fn guarded<T>(
    state: &AuthState,
    headers: &HeaderMap,
    action: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    crate::auth::check_login_origin(state, headers)?;
    action.await
}

/// A 303 to `to` (after a form post); a value that is not a header value leaves
/// no Location (callers pass validated targets).
pub(crate) fn see_other(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Adds a cookie to a response.
fn set_cookie(res: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The header clearing the second-factor step's cookie.
fn mfa_cookie_cleared() -> String {
    format!("{MFA_COOKIE}=; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// Sets the session cookie and sends the browser on (303) to the target.
pub(crate) fn signed_in(state: &AuthState, session_token: &str, redirect: Option<&str>) -> Response {
    let mut res = see_other(redirect.unwrap_or("/auth/signed-in"));
    let max_age = state.config.session_ttl.as_secs() as i64;
    res.headers_mut().insert(header::SET_COOKIE, crate::auth::session_cookie(state, session_token, max_age));
    res.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

/// After a first factor: signed in, or on to the second-factor page with the
/// step's token in a short-lived cookie.
pub(crate) fn after_first_factor(state: &AuthState, outcome: service::SignIn, redirect: Option<&str>) -> Response {
    match outcome {
        service::SignIn::Session(body) => signed_in(state, &body.session_token, redirect),
        service::SignIn::SecondFactor(c) => {
            let mut res = see_other(&with_redirect("/auth/mfa", redirect));
            let secure = if state.config.public_url.scheme() == "https" { "; Secure" } else { "" };
            set_cookie(
                &mut res,
                &format!("{MFA_COOKIE}={}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=600{secure}", c.mfa_token),
            );
            res
        }
    }
}

/// Ends a sign-in or sign-up form: the session cookie and the redirect on success
/// (or the second-factor page), the same form again with the error otherwise.
fn finish_credentials(
    state: &AuthState,
    redirect: Option<&str>,
    result: Result<service::SignIn, ApiError>,
    form: fn(Option<&str>, &str) -> Page,
    email: &str,
) -> Response {
    match result {
        Ok(outcome) => after_first_factor(state, outcome, redirect),
        Err(e) => {
            let mut p = form(redirect, email);
            p.error = Some(e.message);
            p.respond(e.status)
        }
    }
}

fn sign_in_form(redirect: Option<&str>, email: &str) -> Page {
    let mut p = Page::new("Sign in");
    p.form = Some(PageForm {
        action: "/auth/sign-in".into(),
        hidden: hidden_redirect(redirect),
        fields: vec![
            field("email", "Email", "email", "email", email),
            field("password", "Password", "password", "current-password", ""),
        ],
        submit: "Sign in".into(),
    });
    p.links = vec![
        (with_redirect("/auth/sign-up", redirect), "Create an account".into()),
        (with_redirect("/auth/magic-link", redirect), "Email me a sign-in link".into()),
        (with_redirect("/auth/forgot-password", redirect), "Forgot password?".into()),
    ];
    p
}

async fn sign_in_page(State(state): State<Arc<AuthState>>, Query(q): Query<PageQuery>) -> Response {
    match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => {
            let mut p = sign_in_form(r.as_deref(), "");
            p.buttons = social_buttons(&state, r.as_deref()).await;
            if state.webauthn.is_some() {
                p.passkeys.push(PasskeyButton {
                    kind: "sign-in",
                    label: "Sign in with a passkey",
                    next: r.clone().unwrap_or_else(|| "/auth/signed-in".into()),
                    named: false,
                });
            }
            p.respond(StatusCode::OK)
        }
        Err(e) => bad_redirect(e),
    }
}

/// "Continue with …" links for the configured social providers.
async fn social_buttons(state: &AuthState, redirect: Option<&str>) -> Vec<(String, String)> {
    crate::auth::social::enabled(state)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| (with_redirect(&format!("/auth/social/{}", p.id), redirect), format!("Continue with {}", p.name)))
        .collect()
}

/// Sends the browser to a provider with the flow cookie set (the link flow of
/// the account page uses it too).
pub(crate) async fn to_provider(
    state: &AuthState,
    provider: &str,
    redirect: Option<&str>,
    link_user: Option<uuid::Uuid>,
) -> Result<Response, ApiError> {
    let secret = crate::auth::social::random_value();
    let started = crate::auth::social::start(
        state,
        provider,
        crate::auth::social::Binding::Browser(&secret),
        redirect,
        link_user,
    )
    .await?;
    HeaderValue::from_str(&started.authorization_url).map_err(ApiError::internal)?;
    let mut res = see_other(&started.authorization_url);
    // A provider posting its answer back (Apple's form_post) is a cross-site POST:
    // over https the cookie is SameSite=None so it still arrives.
    let same_site = if state.config.public_url.scheme() == "https" { "SameSite=None; Secure" } else { "SameSite=Lax" };
    set_cookie(&mut res, &format!("{SOCIAL_COOKIE}={secret}; Path=/auth/social; HttpOnly; {same_site}; Max-Age=600"));
    res.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(res)
}

async fn social_start(
    State(state): State<Arc<AuthState>>,
    Path(provider): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let redirect = match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    match to_provider(&state, &provider, redirect.as_deref(), None).await {
        Ok(res) => res,
        Err(e) => social_failed(e, redirect.as_deref()),
    }
}

fn social_failed(e: ApiError, redirect: Option<&str>) -> Response {
    let mut p = Page::new("Sign-in failed");
    p.error = Some(e.message);
    p.links = vec![(with_redirect("/auth/sign-in", redirect), "Back to sign in".into())];
    if e.code == "identity_link_required" {
        p.message =
            Some("Sign in with your password or an email link, then link this provider under account security.".into());
    }
    p.respond(e.status)
}

async fn social_callback_get(
    State(state): State<Arc<AuthState>>,
    Path(provider): Path<String>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(params): Query<crate::auth::social::CallbackParams>,
) -> Response {
    social_callback(&state, &provider, params, &headers, peer).await
}

async fn social_callback_post(
    State(state): State<Arc<AuthState>>,
    Path(provider): Path<String>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(params): Form<crate::auth::social::CallbackParams>,
) -> Response {
    social_callback(&state, &provider, params, &headers, peer).await
}

/// The provider's redirect back: signed in (or on to the second factor), linked,
/// or sent to the app with its code; the flow cookie is cleared either way.
async fn social_callback(
    state: &AuthState,
    provider: &str,
    params: crate::auth::social::CallbackParams,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Response {
    use crate::auth::social::Completed;
    let browser = crate::auth::cookie_value(headers, SOCIAL_COOKIE);
    let client = crate::auth::client_info(headers, peer);
    let mut res = match crate::auth::social::callback(state, provider, params, browser, &client).await {
        Ok(Completed::SignIn(outcome, redirect)) => after_first_factor(state, outcome, redirect.as_deref()),
        Ok(Completed::Linked(_, _)) => see_other("/auth/account?linked=1"),
        Ok(Completed::AppCode(to)) => match HeaderValue::from_str(&to) {
            Ok(_) => {
                let mut res = see_other(&to);
                res.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
                res
            }
            Err(e) => social_failed(ApiError::internal(e), None),
        },
        Err(e) => social_failed(e, None),
    };
    if browser.is_some() {
        set_cookie(&mut res, &format!("{SOCIAL_COOKIE}=; Path=/auth/social; HttpOnly; Max-Age=0"));
    }
    res
}

#[derive(Debug, Deserialize)]
struct CredentialsForm {
    email: String,
    password: String,
    #[serde(default)]
    redirect_url: Option<String>,
}

async fn sign_in_submit(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<CredentialsForm>,
) -> Response {
    let redirect = match target(&state, f.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    let result = guarded(
        &state,
        &headers,
        service::sign_in(
            &state,
            SignInRequest { email: f.email.clone(), password: f.password },
            &crate::auth::client_info(&headers, peer),
        ),
    )
    .await;
    finish_credentials(&state, redirect.as_deref(), result, sign_in_form, &f.email)
}

fn sign_up_form(redirect: Option<&str>, email: &str) -> Page {
    let mut p = Page::new("Create your account");
    p.form = Some(PageForm {
        action: "/auth/sign-up".into(),
        hidden: hidden_redirect(redirect),
        fields: vec![
            field("email", "Email", "email", "email", email),
            field("password", "Password", "password", "new-password", ""),
        ],
        submit: "Create account".into(),
    });
    p.links = vec![(with_redirect("/auth/sign-in", redirect), "Already have an account? Sign in".into())];
    p
}

async fn sign_up_page(State(state): State<Arc<AuthState>>, Query(q): Query<PageQuery>) -> Response {
    match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => sign_up_form(r.as_deref(), "").respond(StatusCode::OK),
        Err(e) => bad_redirect(e),
    }
}

async fn sign_up_submit(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<CredentialsForm>,
) -> Response {
    let redirect = match target(&state, f.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    let req = SignUpRequest { email: f.email.clone(), password: f.password, name: None, unsafe_metadata: None };
    let result = guarded(&state, &headers, service::sign_up(&state, req, &crate::auth::client_info(&headers, peer)))
        .await
        .map(|b| service::SignIn::Session(Box::new(b)));
    finish_credentials(&state, redirect.as_deref(), result, sign_up_form, &f.email)
}

fn email_form(title: &'static str, action: &str, submit: &str, redirect: Option<&str>) -> Page {
    let mut p = Page::new(title);
    p.form = Some(PageForm {
        action: action.into(),
        hidden: hidden_redirect(redirect),
        fields: vec![field("email", "Email", "email", "email", "")],
        submit: submit.into(),
    });
    p.links = vec![(with_redirect("/auth/sign-in", redirect), "Back to sign in".into())];
    p
}

/// Without a token: the form to ask for a link. With one: a button that signs in
/// (a POST, so mail scanners that prefetch links do not use the token up).
async fn magic_link_page(State(state): State<Arc<AuthState>>, Query(q): Query<PageQuery>) -> Response {
    let redirect = match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    match q.token {
        Some(token) => {
            let mut p = Page::new("Sign in");
            p.message = Some("Continue to sign in to your account.".into());
            let mut hidden = hidden_redirect(redirect.as_deref());
            hidden.push(("token".into(), token));
            p.form = Some(PageForm {
                action: "/auth/magic-link/confirm".into(),
                hidden,
                fields: vec![],
                submit: "Sign in".into(),
            });
            p.respond(StatusCode::OK)
        }
        None => email_form("Sign in with a link", "/auth/magic-link", "Email me a link", redirect.as_deref())
            .respond(StatusCode::OK),
    }
}

#[derive(Debug, Deserialize)]
struct EmailForm {
    email: String,
    #[serde(default)]
    redirect_url: Option<String>,
}

async fn magic_link_submit(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<EmailForm>,
) -> Response {
    let redirect = match target(&state, f.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    match email::request_magic_link(&state, &f.email, redirect.as_deref(), &crate::auth::client_info(&headers, peer))
        .await
    {
        Ok(()) => see_other("/auth/magic-link/sent"),
        Err(e) => {
            let mut p = email_form("Sign in with a link", "/auth/magic-link", "Email me a link", redirect.as_deref());
            p.error = Some(e.message);
            p.respond(e.status)
        }
    }
}

async fn magic_link_sent() -> Response {
    let mut p = Page::new("Check your email");
    p.message = Some(
        "If an account exists for that address, a sign-in link is on its way. It works once and expires soon.".into(),
    );
    p.links = vec![("/auth/sign-in".into(), "Back to sign in".into())];
    p.respond(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    token: String,
    #[serde(default)]
    redirect_url: Option<String>,
}

async fn magic_link_confirm(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    let redirect = match target(&state, f.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    let result = guarded(
        &state,
        &headers,
        email::consume_magic_link(&state, &f.token, &crate::auth::client_info(&headers, peer)),
    )
    .await;
    match result {
        Ok(outcome) => after_first_factor(&state, outcome, redirect.as_deref()),
        Err(e) => {
            let mut p = Page::new("Link not valid");
            p.error = Some(e.message);
            p.links = vec![(with_redirect("/auth/magic-link", redirect.as_deref()), "Send a new link".into())];
            p.respond(e.status)
        }
    }
}

async fn forgot_page(State(state): State<Arc<AuthState>>, Query(q): Query<PageQuery>) -> Response {
    match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => email_form("Reset your password", "/auth/forgot-password", "Email me a reset link", r.as_deref())
            .respond(StatusCode::OK),
        Err(e) => bad_redirect(e),
    }
}

async fn forgot_submit(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<EmailForm>,
) -> Response {
    let redirect = match target(&state, f.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    match email::forgot_password(&state, &f.email, redirect.as_deref(), &crate::auth::client_info(&headers, peer)).await
    {
        Ok(()) => {
            let mut p = Page::new("Check your email");
            p.message = Some("If an account exists for that address, a reset link is on its way.".into());
            p.respond(StatusCode::OK)
        }
        Err(e) => {
            let mut p = email_form(
                "Reset your password",
                "/auth/forgot-password",
                "Email me a reset link",
                redirect.as_deref(),
            );
            p.error = Some(e.message);
            p.respond(e.status)
        }
    }
}

fn reset_form(token: &str, redirect: Option<&str>) -> Page {
    let mut p = Page::new("Choose a new password");
    let mut hidden = hidden_redirect(redirect);
    hidden.push(("token".into(), token.to_string()));
    p.form = Some(PageForm {
        action: "/auth/reset-password".into(),
        hidden,
        fields: vec![field("new_password", "New password", "password", "new-password", "")],
        submit: "Set password".into(),
    });
    p
}

async fn reset_page(State(state): State<Arc<AuthState>>, Query(q): Query<PageQuery>) -> Response {
    let redirect = match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    match q.token {
        Some(t) => reset_form(&t, redirect.as_deref()).respond(StatusCode::OK),
        None => {
            let mut p = Page::new("Link not valid");
            p.error = Some("this link has no token".into());
            p.respond(StatusCode::BAD_REQUEST)
        }
    }
}

#[derive(Debug, Deserialize)]
struct ResetForm {
    token: String,
    new_password: String,
    #[serde(default)]
    redirect_url: Option<String>,
}

async fn reset_submit(State(state): State<Arc<AuthState>>, headers: HeaderMap, Form(f): Form<ResetForm>) -> Response {
    let redirect = match target(&state, f.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    let result = guarded(&state, &headers, email::reset_password(&state, &f.token, f.new_password)).await;
    match result {
        Ok(()) => {
            if let Some(to) = redirect
                && let Ok(v) = HeaderValue::from_str(&to)
            {
                let mut res = StatusCode::SEE_OTHER.into_response();
                res.headers_mut().insert(header::LOCATION, v);
                return res;
            }
            let mut p = Page::new("Password changed");
            p.message = Some("Your password is set. Every session was signed out; sign in again.".into());
            p.links = vec![("/auth/sign-in".into(), "Sign in".into())];
            p.respond(StatusCode::OK)
        }
        Err(e) => {
            let mut p = reset_form(&f.token, redirect.as_deref());
            p.error = Some(e.message);
            p.respond(e.status)
        }
    }
}

async fn verify_email_page(State(state): State<Arc<AuthState>>, Query(q): Query<PageQuery>) -> Response {
    let redirect = match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    let Some(token) = q.token else {
        let mut p = Page::new("Link not valid");
        p.error = Some("this link has no token".into());
        return p.respond(StatusCode::BAD_REQUEST);
    };
    match email::verify_email(&state, &token).await {
        Ok(_) => {
            if let Some(to) = redirect
                && let Ok(v) = HeaderValue::from_str(&to)
            {
                let mut res = StatusCode::SEE_OTHER.into_response();
                res.headers_mut().insert(header::LOCATION, v);
                return res;
            }
            let mut p = Page::new("Email confirmed");
            p.message = Some("Thanks, your email address is confirmed.".into());
            p.respond(StatusCode::OK)
        }
        Err(e) => {
            let mut p = Page::new("Link not valid");
            p.error = Some(e.message);
            p.respond(e.status)
        }
    }
}

async fn signed_in_page() -> Response {
    let mut p = Page::new("You're signed in");
    p.message = Some("You can close this page and return to the app.".into());
    p.respond(StatusCode::OK)
}

fn mfa_form(redirect: Option<&str>) -> Page {
    let mut p = Page::new("Two-step verification");
    p.message = Some("Enter the six-digit code from your authenticator app.".into());
    p.form = Some(PageForm {
        action: "/auth/mfa".into(),
        hidden: hidden_redirect(redirect),
        fields: vec![field("code", "Authentication code", "text", "one-time-code", "")],
        submit: "Verify".into(),
    });
    p.more = vec![PageForm {
        action: "/auth/mfa".into(),
        hidden: hidden_redirect(redirect),
        fields: vec![field("backup_code", "Or a backup code", "text", "off", "")],
        submit: "Use backup code".into(),
    }];
    p
}

fn mfa_expired(redirect: Option<&str>, status: StatusCode, error: String) -> Response {
    let mut p = Page::new("Sign in again");
    p.error = Some(error);
    p.links = vec![(with_redirect("/auth/sign-in", redirect), "Back to sign in".into())];
    p.respond(status)
}

async fn mfa_page(State(state): State<Arc<AuthState>>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let redirect = match target(&state, q.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    let Some(token) = crate::auth::cookie_value(&headers, MFA_COOKIE) else {
        return mfa_expired(redirect.as_deref(), StatusCode::BAD_REQUEST, "this sign-in has expired".into());
    };
    let mut p = mfa_form(redirect.as_deref());
    if crate::auth::mfa::step_factors(&state, token).await.unwrap_or_default().iter().any(|f| f == "passkey") {
        p.passkeys.push(PasskeyButton {
            kind: "second-factor",
            label: "Use a passkey",
            next: redirect.clone().unwrap_or_else(|| "/auth/signed-in".into()),
            named: false,
        });
    }
    p.respond(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
struct MfaForm {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    backup_code: Option<String>,
    #[serde(default)]
    redirect_url: Option<String>,
}

async fn mfa_submit(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<MfaForm>,
) -> Response {
    let redirect = match target(&state, f.redirect_url.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_redirect(e),
    };
    let Some(token) = crate::auth::cookie_value(&headers, MFA_COOKIE) else {
        return mfa_expired(redirect.as_deref(), StatusCode::BAD_REQUEST, "this sign-in has expired".into());
    };
    let req = crate::auth::types::MfaVerifyRequest {
        mfa_token: token.to_string(),
        code: f.code.filter(|c| !c.trim().is_empty()),
        backup_code: f.backup_code.filter(|c| !c.trim().is_empty()),
        passkey: None,
    };
    let client = crate::auth::client_info(&headers, peer);
    match guarded(&state, &headers, crate::auth::mfa::verify(&state, req, &client)).await {
        Ok(body) => {
            let mut res = signed_in(&state, &body.session_token, redirect.as_deref());
            set_cookie(&mut res, &mfa_cookie_cleared());
            res
        }
        Err(e) if e.code == "invalid_mfa_token" => mfa_expired(redirect.as_deref(), e.status, e.message),
        Err(e) => {
            let mut p = mfa_form(redirect.as_deref());
            p.error = Some(e.message);
            p.respond(e.status)
        }
    }
}

/// The passkey second factor from the hosted page: the step's token is in the
/// HttpOnly cookie, so the page's script asks here.
async fn mfa_passkey_start(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    crate::auth::check_login_origin(&state, &headers)?;
    let token = crate::auth::cookie_value(&headers, MFA_COOKIE)
        .ok_or_else(|| ApiError::unauthorized("this sign-in has expired").with_code("invalid_mfa_token"))?;
    let options = crate::auth::passkeys::start_second_factor(&state, token).await?;
    Ok(crate::error::ApiJson(options).into_response())
}

/// Finishes the hosted passkey second factor: the session cookie, the step's cleared.
async fn mfa_passkey_finish(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    crate::error::ApiJson(a): crate::error::ApiJson<crate::auth::types::PasskeyAssertion>,
) -> Result<Response, ApiError> {
    crate::auth::check_login_origin(&state, &headers)?;
    let token = crate::auth::cookie_value(&headers, MFA_COOKIE)
        .ok_or_else(|| ApiError::unauthorized("this sign-in has expired").with_code("invalid_mfa_token"))?;
    let req = crate::auth::types::MfaVerifyRequest {
        mfa_token: token.to_string(),
        code: None,
        backup_code: None,
        passkey: Some(a),
    };
    let body = crate::auth::mfa::verify(&state, req, &crate::auth::client_info(&headers, peer)).await?;
    let mut res = crate::error::ApiJson(serde_json::json!({"signed_in": true})).into_response();
    let max_age = state.config.session_ttl.as_secs() as i64;
    res.headers_mut().insert(header::SET_COOKIE, crate::auth::session_cookie(&state, &body.session_token, max_age));
    set_cookie(&mut res, &mfa_cookie_cleared());
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
