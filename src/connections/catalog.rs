//! The provider catalog: how to talk OAuth to each service and where its API lives.
//! Entries use Nango's field names (`auth_mode`, `authorization_url`, `token_url`,
//! `authorization_params`, `token_params`, `refresh_params`, `default_scopes`,
//! `scope_separator`, `disable_pkce`, `authorization_method`,
//! `token_request_auth_method`, `body_format`, `alternate_access_token_response_path`,
//! `token_response_metadata`, `connection_config`, `proxy.base_url`, `proxy.headers`,
//! `proxy.retry`, `alias`, …) so entries port mechanically. Carmenta adds where the
//! external account id comes from: `account_id_path` (a dotted path into the token
//! response) or `identity: {url, id_path}` (an endpoint called with the new token),
//! and `revoke_url` (RFC 7009) where a deleted connection's token is revoked.
//!
//! The built-in catalog (`providers.json`) is compiled into the binary; a file named
//! by `CARMENTA_PROVIDERS_FILE` adds entries or overrides fields of existing ones.
//! `alias` inherits from another entry by a *deep* merge (Nango merges shallowly, so
//! an alias overriding one proxy field loses the parent's other proxy fields). The
//! merged catalog is validated at start; errors name the entry and the field.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// The catalog compiled into the binary.
pub const BUILTIN: &str = include_str!("providers.json");

/// Auth modes the broker knows.
const AUTH_MODES: [&str; 6] = ["OAUTH2", "OAUTH2_CC", "API_KEY", "BASIC", "CUSTOM", "APP"];

/// A provider after alias resolution, as raw JSON plus the fields the broker reads.
#[derive(Debug, Clone, Serialize)]
pub struct Provider {
    /// Its name (`google-mail`).
    pub name: String,
    /// `OAUTH2`, `API_KEY`, `BASIC`, …
    pub auth_mode: String,
    /// The resolved entry, every field (aliases merged in).
    pub raw: Value,
    /// The proxy's base URL: the first `proxy.base_url` alternative without a
    /// `${…}` template, parsed at load; `None` when every one needs connection
    /// configuration.
    #[serde(skip)]
    pub proxy_base: Option<url::Url>,
}

impl Provider {
    /// A string field.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.raw.get(field).and_then(Value::as_str)
    }
    /// The API base URL (`proxy.base_url`).
    pub fn proxy_base_url(&self) -> Option<&str> {
        self.raw.get("proxy").and_then(|p| p.get("base_url")).and_then(Value::as_str)
    }
    /// `token_expiration_buffer`: how long before expiry its access tokens are
    /// refreshed, when the entry says.
    pub fn expiration_buffer(&self) -> Option<u64> {
        self.raw.get("token_expiration_buffer").and_then(Value::as_u64)
    }
    /// The names of the connection configuration it declares (`subdomain`, …).
    pub fn config_keys(&self) -> Vec<String> {
        self.raw
            .get("connection_config")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether an URL of the entry takes connection configuration.
    pub fn needs_config(&self) -> bool {
        ["authorization_url", "token_url", "refresh_url", "revoke_url"]
            .iter()
            .any(|f| self.str(f).is_some_and(|u| !u.split("||").any(|a| !a.contains("${"))))
    }

    /// The entry with its URLs (authorization, token, refresh, revoke, identity,
    /// proxy base) filled from a connection's `config`; an entry without
    /// templates comes back as it is. A URL whose values are missing stays a
    /// template (the broker then answers `provider_needs_connection_config` where
    /// it needs it); a value that is invalid or would choose a host is an error.
    pub fn with_config(&self, config: &Value) -> Result<Provider, ConfigError> {
        // Validation lets `${connectionConfig.*}` appear only where keys are declared.
        if self.raw.get("connection_config").is_none() {
            return Ok(self.clone());
        }
        let decls = self.raw.get("connection_config").and_then(Value::as_object).cloned().unwrap_or_default();
        let fill = |u: &str, origin_ok: bool| match fill_alternatives(u, config, &decls, origin_ok) {
            Ok(filled) => Ok(Some(filled)),
            Err(ConfigError::Missing) => Ok(None),
            Err(e) => Err(e),
        };
        let mut raw = self.raw.clone();
        for field in ["authorization_url", "token_url", "refresh_url", "revoke_url"] {
            if let Some(Value::String(u)) = raw.get(field).cloned()
                && u.contains("${")
                && let Some(filled) = fill(&u, false)?
            {
                raw[field] = Value::String(filled);
            }
        }
        if let Some(Value::String(u)) = raw.get("identity").and_then(|i| i.get("url")).cloned()
            && u.contains("${")
            && let Some(filled) = fill(&u, false)?
        {
            raw["identity"]["url"] = Value::String(filled);
        }
        let mut proxy_base = self.proxy_base.clone();
        if let Some(Value::String(u)) = raw.get("proxy").and_then(|p| p.get("base_url")).cloned()
            && u.contains("${")
            && let Some(filled) = fill(&u, true)?
        {
            proxy_base = Some(url::Url::parse(filled.trim_end_matches('/')).map_err(|_| ConfigError::Invalid)?);
            raw["proxy"]["base_url"] = Value::String(filled);
        }
        Ok(Provider { name: self.name.clone(), auth_mode: self.auth_mode.clone(), raw, proxy_base })
    }

    /// Its categories.
    pub fn categories(&self) -> Vec<String> {
        self.raw
            .get("categories")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
    /// Scopes requested when an integration names none.
    pub fn default_scopes(&self) -> Vec<String> {
        self.raw
            .get("default_scopes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

/// Why connection configuration could not fill a provider's URLs; each is a
/// stable error code of the connect flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// A declared value was not given.
    Missing,
    /// A value is not one of the declared ones, or not a DNS label.
    Invalid,
    /// A value would choose the whole host of a URL that receives the client
    /// secret or the authorization (only values from a declared list may).
    HostRefused,
}

impl ConfigError {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            ConfigError::Missing => "connection_config_missing",
            ConfigError::Invalid => "connection_config_invalid",
            ConfigError::HostRefused => "connection_config_host_refused",
        }
    }
}

/// Whether `v` is one DNS label (letters, digits, inner hyphens; 1–63).
fn dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}

/// Fills one URL alternative's `${connectionConfig.*}` from `config`. A value
/// from a declared `enum` may go anywhere; any other must be a DNS label, and may
/// stand in the host only before a fixed domain (`${subdomain}.zendesk.com`), so a
/// user cannot send the client secret to a host of their choosing. A template that
/// is a whole origin (`${connectionConfig.instance_url}/api`) takes an https URL
/// when `origin_ok` (the proxy's base, which receives only the user's own token).
fn fill_one(
    template: &str,
    config: &Value,
    decls: &Map<String, Value>,
    origin_ok: bool,
) -> Result<String, ConfigError> {
    let host_span = template.find("://").map(|i| {
        let start = i + 3;
        let end = template[start..].find('/').map_or(template.len(), |j| start + j);
        (start, end)
    });
    let mut out = String::with_capacity(template.len());
    let mut rest_start = 0;
    while let Some(rel) = template[rest_start..].find("${") {
        let i = rest_start + rel;
        let Some(j) = template[i..].find('}') else { return Err(ConfigError::Invalid) };
        let var = &template[i + 2..i + j];
        let end = i + j + 1;
        out.push_str(&template[rest_start..i]);
        let key = var.strip_prefix("connectionConfig.").ok_or(ConfigError::Invalid)?;
        let value = config.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()).ok_or(ConfigError::Missing)?;
        let listed = decls.get(key).and_then(|d| d.get("enum")).and_then(Value::as_array);
        match listed {
            Some(list) => {
                if !list.iter().any(|v| v.as_str() == Some(value)) {
                    return Err(ConfigError::Invalid);
                }
            }
            None if i == 0 && origin_ok => {
                let u = url::Url::parse(value).map_err(|_| ConfigError::Invalid)?;
                let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost"));
                if !(u.scheme() == "https" || (u.scheme() == "http" && loopback)) || u.query().is_some() {
                    return Err(ConfigError::Invalid);
                }
                out.push_str(value.trim_end_matches('/'));
                rest_start = end;
                continue;
            }
            None if i == 0 => return Err(ConfigError::HostRefused),
            None => {
                if !dns_label(value) {
                    return Err(ConfigError::Invalid);
                }
                if let Some((hs, he)) = host_span
                    && i >= hs
                    && i < he
                {
                    // In the host: only before a fixed domain of two labels or more.
                    let after = &template[end..he];
                    if !(after.starts_with('.') && after[1..].contains('.') && !after.contains("${")) {
                        return Err(ConfigError::HostRefused);
                    }
                }
            }
        }
        out.push_str(value);
        rest_start = end;
    }
    out.push_str(&template[rest_start..]);
    Ok(out)
}

/// The first alternative of `raw` (`A || B`) that `config` fills.
fn fill_alternatives(
    raw: &str,
    config: &Value,
    decls: &Map<String, Value>,
    origin_ok: bool,
) -> Result<String, ConfigError> {
    let mut first_err = None;
    for alt in raw.split("||").map(str::trim) {
        match fill_one(alt, config, decls, origin_ok) {
            Ok(u) => return Ok(u),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(ConfigError::Invalid))
}

/// The resolved, validated catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    providers: BTreeMap<String, Provider>,
}

/// Merges `over` into `base`: objects recursively, anything else replaced.
pub fn deep_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => deep_merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Why the catalog could not be loaded; each names the file, the entry, the field.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The override file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a JSON object of entries.
    #[error("{file}: {reason}")]
    File {
        /// The file (or "built-in providers.json").
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry as a whole is refused.
    #[error("provider {provider:?}: {reason}")]
    Entry {
        /// The entry.
        provider: String,
        /// What is wrong.
        reason: String,
    },
    /// A field of an entry is refused.
    #[error("provider {provider:?}: field {field:?}: {reason}")]
    Field {
        /// The entry.
        provider: String,
        /// The field (dotted for nested ones).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn field_error(provider: &str, field: &str, reason: impl Into<String>) -> CatalogError {
    CatalogError::Field { provider: provider.to_string(), field: field.to_string(), reason: reason.into() }
}

fn entries(text: &str, source: &str) -> Result<Map<String, Value>, CatalogError> {
    let file = |reason: String| CatalogError::File { file: source.to_string(), reason };
    match serde_json::from_str::<Strict>(text) {
        Ok(Strict(Value::Object(m))) => Ok(m),
        Ok(_) => Err(file("expected a JSON object of provider entries".into())),
        Err(e) => Err(file(e.to_string())),
    }
}

/// JSON read like `serde_json::Value`, except that a key repeated in one object
/// is an error naming it (serde_json keeps the last one silently: a provider
/// written twice would quietly lose its first entry).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(out))
    }
}

impl Catalog {
    /// The built-in catalog, with `overrides` (the text of an override file) merged
    /// on top: a new name adds an entry, an existing one overrides its fields.
    pub fn load(overrides: Option<(&str, &str)>) -> Result<Catalog, CatalogError> {
        let mut raw = entries(BUILTIN, "built-in providers.json")?;
        if let Some((source, text)) = overrides {
            for (name, entry) in entries(text, source)? {
                if !entry.is_object() {
                    let reason = format!("entry {name:?}: expected an object");
                    return Err(CatalogError::File { file: source.to_string(), reason });
                }
                match raw.get_mut(&name) {
                    Some(existing) => deep_merge(existing, &entry),
                    None => {
                        raw.insert(name, entry);
                    }
                }
            }
        }
        let mut providers = BTreeMap::new();
        for name in raw.keys() {
            let resolved = resolve(&raw, name, &mut Vec::new())?;
            let p = validate(name, resolved)?;
            providers.insert(name.clone(), p);
        }
        Ok(Catalog { providers })
    }

    /// A provider by name.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.providers.get(name)
    }

    /// Every provider, by name.
    pub fn all(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }
}

/// The catalog the configuration asks for: built-in, plus `providers_file` if set.
pub fn load_configured(config: &crate::config::Config) -> Result<Catalog, CatalogError> {
    match &config.providers_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| CatalogError::Read { path: path.clone(), source })?;
            Catalog::load(Some((&path.display().to_string(), &text)))
        }
        None => Catalog::load(None),
    }
}

/// Resolves `name`'s alias chain into one entry (parent first, child merged on top).
fn resolve(raw: &Map<String, Value>, name: &str, seen: &mut Vec<String>) -> Result<Value, CatalogError> {
    if seen.iter().any(|s| s == name) {
        return Err(field_error(name, "alias", format!("alias cycle through {}", seen.join(" -> "))));
    }
    seen.push(name.to_string());
    let entry = raw
        .get(name)
        .ok_or_else(|| CatalogError::Entry { provider: name.to_string(), reason: "is not in the catalog".into() })?;
    match entry.get("alias") {
        None => Ok(entry.clone()),
        Some(Value::String(parent)) => {
            if !raw.contains_key(parent) {
                return Err(field_error(name, "alias", format!("no provider named {parent:?}")));
            }
            let mut base = resolve(raw, parent, seen)?;
            if let (Some(own), Some(family)) = (entry.get("scope_separator"), base.get("scope_separator"))
                && own != family
            {
                return Err(field_error(
                    name,
                    "scope_separator",
                    format!("{own} differs from its family's ({parent:?} uses {family})"),
                ));
            }
            deep_merge(&mut base, entry);
            Ok(base)
        }
        Some(_) => Err(field_error(name, "alias", "expected a provider name")),
    }
}

/// The categories an entry may name.
pub const CATEGORIES: [&str; 20] = [
    "productivity",
    "mail",
    "calendar",
    "storage",
    "documents",
    "crm",
    "support",
    "communication",
    "dev-tools",
    "ai",
    "finance",
    "hr",
    "ats",
    "commerce",
    "marketing",
    "analytics",
    "social",
    "video",
    "design",
    "health",
];

/// Checks a URL field: every `A || B` alternative is HTTPS (plain HTTP only to a
/// loopback host, for local development), and every `${…}` in it names a
/// declared `connection_config` key. A value starting with a variable (an
/// instance URL learnt at connect time) is checked for its variables only.
fn check_url(v: &str, config_keys: &[String]) -> Result<(), String> {
    for u in v.split("||").map(str::trim) {
        check_vars(u, config_keys, &[])?;
        if u.starts_with("${") {
            // A whole origin learnt at connect time (`${connectionConfig.instance_url}/api`).
            continue;
        }
        let concrete = fill_placeholders(u);
        let parsed = url::Url::parse(&concrete).map_err(|_| format!("{u:?} is not a URL"))?;
        let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => return Err(format!("{u:?} is not HTTPS")),
        }
    }
    Ok(())
}

/// `${…}` replaced by a placeholder label, to check a template's shape.
fn fill_placeholders(u: &str) -> String {
    let mut out = String::with_capacity(u.len());
    let mut rest = u;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        out.push('x');
        rest = rest[i..].find('}').map_or("", |j| &rest[i + j + 1..]);
    }
    out.push_str(rest);
    out
}

/// Every `${name}` in `text` is `connectionConfig.<declared key>` or one of `extra`.
fn check_vars(text: &str, config_keys: &[String], extra: &[&str]) -> Result<(), String> {
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let Some(j) = rest[i..].find('}') else { return Err(format!("unclosed ${{ in {text:?}")) };
        let var = &rest[i + 2..i + j];
        let known = match var.strip_prefix("connectionConfig.") {
            Some(k) => config_keys.iter().any(|c| c == k),
            None => extra.contains(&var),
        };
        if !known {
            return Err(format!("unknown template variable ${{{var}}} (declare it under connection_config)"));
        }
        rest = &rest[i + j + 1..];
    }
    Ok(())
}

fn validate(name: &str, raw: Value) -> Result<Provider, CatalogError> {
    let err = |field: &str, msg: &str| field_error(name, field, msg);
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') || name.is_empty() {
        let reason = "names are lowercase letters, digits, '-' and '_'".to_string();
        return Err(CatalogError::Entry { provider: name.to_string(), reason });
    }
    let auth_mode = raw.get("auth_mode").and_then(Value::as_str).ok_or_else(|| err("auth_mode", "missing"))?;
    if !AUTH_MODES.contains(&auth_mode) {
        return Err(err("auth_mode", &format!("{auth_mode:?} is not one of {AUTH_MODES:?}")));
    }
    let config_keys: Vec<String> = match raw.get("connection_config") {
        None => Vec::new(),
        Some(Value::Object(m)) if m.values().all(Value::is_object) => m.keys().cloned().collect(),
        Some(_) => return Err(err("connection_config", "expected an object of {key: {type: …}}")),
    };
    match raw.get("docs") {
        Some(Value::String(u)) => check_url(u, &[]).map_err(|e| err("docs", &e))?,
        _ => return Err(err("docs", "missing (the provider's developer documentation, an https URL)")),
    }
    match raw.get("categories").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => {
            for c in a {
                if !c.as_str().is_some_and(|c| CATEGORIES.contains(&c)) {
                    return Err(err("categories", &format!("{c} is not one of {CATEGORIES:?}")));
                }
            }
        }
        _ => return Err(err("categories", "missing (a non-empty array of categories)")),
    }
    if let Some(v) = raw.get("refresh")
        && !v.as_str().is_some_and(|r| ["reusable", "rotating", "none"].contains(&r))
    {
        return Err(err("refresh", "expected reusable, rotating or none"));
    }
    if auth_mode == "OAUTH2" && !raw.get("scope_separator").is_some_and(Value::is_string) {
        return Err(err("scope_separator", "missing (required for OAuth)"));
    }
    for field in ["authorization_url", "token_url", "refresh_url", "revoke_url"] {
        match raw.get(field) {
            Some(Value::String(u)) => check_url(u, &config_keys).map_err(|e| err(field, &e))?,
            Some(Value::Object(m)) => {
                for u in m.values().filter_map(Value::as_str) {
                    check_url(u, &config_keys).map_err(|e| err(field, &e))?;
                }
            }
            _ => {}
        }
    }
    if let Some(v) = raw.get("identity").and_then(|i| i.get("url")).and_then(Value::as_str) {
        check_url(v, &config_keys).map_err(|e| err("identity.url", &e))?;
    }
    if let Some(p) = raw.get("proxy") {
        if let Some(u) = p.get("base_url").and_then(Value::as_str) {
            check_url(u, &config_keys).map_err(|e| err("proxy.base_url", &e))?;
        }
        if let Some(h) = p.get("headers").and_then(Value::as_object) {
            for v in h.values().filter_map(Value::as_str) {
                check_vars(v, &config_keys, &["apiKey", "accessToken"]).map_err(|e| err("proxy.headers", &e))?;
            }
        }
    }
    if matches!(auth_mode, "OAUTH2" | "CUSTOM" | "OAUTH2_CC") {
        for field in ["authorization_url", "token_url"] {
            if auth_mode == "OAUTH2_CC" && field == "authorization_url" {
                continue;
            }
            match raw.get(field) {
                // Their shape and scheme were checked above with the other URLs.
                Some(Value::String(_)) => {}
                Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
                Some(_) => return Err(err(field, "expected an http(s) URL")),
                None => return Err(err(field, "missing (required for OAuth)")),
            }
        }
    }
    for field in ["refresh_url", "revoke_url"] {
        if let Some(v) = raw.get(field)
            && !v.is_string()
        {
            return Err(err(field, "expected an http(s) URL"));
        }
    }
    for (field, allowed) in [
        ("body_format", &["form", "json"][..]),
        ("authorization_method", &["body", "header"][..]),
        ("token_request_auth_method", &["basic", "custom", "private_key_jwt"][..]),
    ] {
        if let Some(v) = raw.get(field) {
            match v.as_str() {
                Some(s) if allowed.contains(&s) => {}
                _ => return Err(err(field, &format!("expected one of {allowed:?}"))),
            }
        }
    }
    for field in ["authorization_params", "token_params", "refresh_params"] {
        if let Some(v) = raw.get(field)
            && !v.as_object().is_some_and(|m| m.values().all(Value::is_string))
        {
            return Err(err(field, "expected an object of string values"));
        }
    }
    if let Some(v) = raw.get("default_scopes")
        && !v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    {
        return Err(err("default_scopes", "expected an array of strings"));
    }
    if let Some(v) = raw.get("scope_separator")
        && !v.is_string()
    {
        return Err(err("scope_separator", "expected a string"));
    }
    if let Some(v) = raw.get("disable_pkce")
        && !v.is_boolean()
    {
        return Err(err("disable_pkce", "expected true or false"));
    }
    if let Some(v) = raw.get("token_expiration_buffer")
        && v.as_u64().is_none_or(|n| n > 86_400)
    {
        return Err(err("token_expiration_buffer", "expected seconds (0 to 86400)"));
    }
    // Carmenta's additions: where the external account id comes from.
    if let Some(v) = raw.get("account_id_path")
        && !v.is_string()
    {
        return Err(err("account_id_path", "expected a dotted path such as authed_user.id"));
    }
    if let Some(v) = raw.get("identity") {
        if !v.get("url").is_some_and(Value::is_string) {
            return Err(err("identity.url", "expected an http(s) URL"));
        }
        if v.get("id_path").is_some_and(|p| !p.is_string()) {
            return Err(err("identity.id_path", "expected a dotted path"));
        }
    }
    match raw.get("proxy") {
        Some(Value::Object(p)) => {
            match p.get("base_url") {
                Some(Value::String(_)) => {}
                Some(_) => return Err(err("proxy.base_url", "expected an http(s) URL")),
                None => return Err(err("proxy.base_url", "missing")),
            }
            if let Some(h) = p.get("headers")
                && !h.as_object().is_some_and(|m| m.values().all(Value::is_string))
            {
                return Err(err("proxy.headers", "expected an object of string values"));
            }
        }
        Some(_) => return Err(err("proxy", "expected an object")),
        None => return Err(err("proxy.base_url", "missing")),
    }
    let proxy_base = match raw
        .get("proxy")
        .and_then(|p| p.get("base_url"))
        .and_then(Value::as_str)
        .and_then(|b| b.split("||").map(str::trim).find(|u| !u.contains("${")))
    {
        Some(u) => Some(
            url::Url::parse(u.trim_end_matches('/')).map_err(|_| err("proxy.base_url", "expected an http(s) URL"))?,
        ),
        None => None,
    };
    Ok(Provider { name: name.to_string(), auth_mode: auth_mode.to_string(), raw, proxy_base })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_resolves_and_aliases_merge_deeply() {
        let c = Catalog::load(None).unwrap();
        assert!(c.all().count() >= 20);
        let drive = c.get("google-drive").unwrap();
        // Inherited from google and kept beside the alias's own proxy.retry.
        assert_eq!(drive.proxy_base_url(), Some("https://www.googleapis.com"));
        assert!(drive.raw["proxy"]["retry"]["in_body"].is_object());
        assert_eq!(drive.raw["authorization_params"]["access_type"], "offline");
        assert_eq!(c.get("google-mail").unwrap().proxy_base_url(), Some("https://gmail.googleapis.com"));
        assert_eq!(c.get("outlook").unwrap().str("token_url"), c.get("microsoft").unwrap().str("token_url"));
        assert_eq!(c.get("notion").unwrap().str("authorization_method"), Some("header"));
        assert_eq!(c.get("slack").unwrap().raw["disable_pkce"], true);
    }

    /// `docs` and `categories`, which every entry needs, for test entries.
    const D: &str = r#""docs": "https://docs.acme.test/api", "categories": ["crm"]"#;

    #[test]
    fn overrides_add_and_replace_fields() {
        let over = format!(
            r#"{{"notion": {{"proxy": {{"headers": {{"notion-version": "2025-09-03"}}}}}},
                "acme": {{"auth_mode": "API_KEY", "proxy": {{"base_url": "https://api.acme.test"}}, {D}}}}}"#
        );
        let c = Catalog::load(Some(("providers.override.json", &over))).unwrap();
        let notion = c.get("notion").unwrap();
        assert_eq!(notion.raw["proxy"]["headers"]["notion-version"], "2025-09-03");
        assert_eq!(notion.proxy_base_url(), Some("https://api.notion.com"), "other proxy fields kept");
        assert_eq!(c.get("acme").unwrap().auth_mode, "API_KEY");
    }

    #[test]
    fn errors_name_entry_and_field() {
        let oauth = |extra: &str| {
            format!(
                r#"{{"x": {{"auth_mode": "OAUTH2", "authorization_url": "https://a.test/auth", "token_url": "https://a.test/token",
                    "scope_separator": " ", "proxy": {{"base_url": "https://api.a.test"}}, {D}{extra}}}}}"#
            )
        };
        let cases = [
            (format!(r#"{{"x": {{"auth_mode": "OAUTH9", "proxy": {{"base_url": "https://a"}}, {D}}}}}"#), "\"x\": field \"auth_mode\"".to_string()),
            (
                format!(r#"{{"x": {{"auth_mode": "OAUTH2", "token_url": "https://t", "scope_separator": " ", "proxy": {{"base_url": "https://a"}}, {D}}}}}"#),
                "field \"authorization_url\": missing".into(),
            ),
            (r#"{"x": {"alias": "nope"}}"#.into(), "\"x\": field \"alias\": no provider named \"nope\"".into()),
            (r#"{"x": {"alias": "y"}, "y": {"alias": "x"}}"#.into(), "alias cycle".into()),
            (r#"{"notion": {"body_format": "xml"}}"#.into(), "\"notion\": field \"body_format\"".into()),
            (format!(r#"{{"x": {{"auth_mode": "API_KEY", "proxy": {{"base_url": "ftp://a"}}, {D}}}}}"#), "field \"proxy.base_url\"".into()),
            (format!(r#"{{"x": {{"auth_mode": "API_KEY", {D}}}}}"#), "\"x\": field \"proxy.base_url\": missing".into()),
            ("[1]".into(), "expected a JSON object".into()),
            // What every entry must state, for its auth mode.
            (r#"{"x": {"auth_mode": "API_KEY", "proxy": {"base_url": "https://a"}}}"#.into(), "\"x\": field \"docs\": missing".into()),
            (r#"{"x": {"auth_mode": "API_KEY", "proxy": {"base_url": "https://a"}, "docs": "https://d"}}"#.into(), "field \"categories\": missing".into()),
            (
                r#"{"x": {"auth_mode": "API_KEY", "proxy": {"base_url": "https://a"}, "docs": "https://d", "categories": ["toys"]}}"#.into(),
                "field \"categories\": \"toys\" is not one of".into(),
            ),
            (oauth("").replace(r#""scope_separator": " ","#, ""), "field \"scope_separator\": missing".into()),
            (format!(r#"{{"x": {{"auth_mode": "OAUTH2_CC", "proxy": {{"base_url": "https://a"}}, {D}}}}}"#), "field \"token_url\": missing".into()),
            (oauth(r#", "refresh": "sometimes""#), "field \"refresh\": expected reusable, rotating or none".into()),
            // Plain HTTP only to a loopback host.
            (oauth("").replace("https://a.test/token", "http://a.test/token"), "field \"token_url\": \"http://a.test/token\" is not HTTPS".into()),
            (oauth("").replace("https://api.a.test", "http://10.0.0.7"), "field \"proxy.base_url\"".into()),
            (r#"{"x": {"auth_mode": "API_KEY", "proxy": {"base_url": "https://a"}, "docs": "http://d.test", "categories": ["crm"]}}"#.into(), "field \"docs\"".into()),
            // Template variables must be declared.
            (
                oauth("").replace("https://a.test/auth", "https://${connectionConfig.subdomain}.a.test/auth"),
                "field \"authorization_url\": unknown template variable ${connectionConfig.subdomain}".into(),
            ),
            (
                oauth("").replace(
                    r#""proxy": {"base_url": "https://api.a.test"}"#,
                    r#""proxy": {"base_url": "https://api.a.test", "headers": {"x-key": "${secretKey}"}}"#,
                ),
                "field \"proxy.headers\": unknown template variable ${secretKey}".into(),
            ),
            // A key written twice, at the top or inside an entry.
            (format!(r#"{{"x": {{"auth_mode": "API_KEY", "proxy": {{"base_url": "https://a"}}, {D}}}, "x": {{}}}}"#), "duplicate key \"x\"".into()),
            (oauth(r#", "token_url": "https://b.test/token""#), "duplicate key \"token_url\"".into()),
            // An alias may not change its family's scope separator.
            (r#"{"google-x": {"alias": "google", "scope_separator": ","}}"#.into(), "\"google-x\": field \"scope_separator\": \",\" differs from its family's".into()),
        ];
        for (text, want) in cases {
            let e = Catalog::load(Some(("over.json", &text))).unwrap_err();
            assert!(e.to_string().contains(&want), "{text}: {e}");
        }
        // Declared variables, loopback HTTP and a whole-URL variable are fine.
        let ok =
            oauth(r#", "connection_config": {"subdomain": {"type": "string"}, "instance_url": {"type": "string"}}"#)
                .replace("https://a.test/auth", "https://${connectionConfig.subdomain}.a.test/auth")
                .replace("https://a.test/token", "http://127.0.0.1:9/token")
                .replace("https://api.a.test", "${connectionConfig.instance_url}");
        Catalog::load(Some(("over.json", &ok))).unwrap();
    }

    #[test]
    fn connection_config_fills_urls_only_where_safe() {
        let c = Catalog::load(None).unwrap();
        let zendesk = c.get("zendesk").unwrap();
        assert!(zendesk.needs_config());
        let z = zendesk.with_config(&serde_json::json!({"subdomain": "acme"})).unwrap();
        assert_eq!(z.str("token_url"), Some("https://acme.zendesk.com/oauth/tokens"));
        assert_eq!(z.proxy_base.as_ref().map(|u| u.as_str()), Some("https://acme.zendesk.com/"));
        for (bad, err) in
            [("evil.com/x", ConfigError::Invalid), ("a.b", ConfigError::Invalid), ("-x", ConfigError::Invalid)]
        {
            assert_eq!(zendesk.with_config(&serde_json::json!({"subdomain": bad})).unwrap_err(), err, "{bad}");
        }
        let unfilled = zendesk.with_config(&serde_json::json!({})).unwrap();
        assert!(unfilled.str("authorization_url").unwrap().contains("${"), "left a template");
        // A region suffix takes only a declared value.
        let zoho = c.get("zoho-desk").unwrap();
        let z = zoho.with_config(&serde_json::json!({"extension": "eu"})).unwrap();
        assert_eq!(z.str("token_url"), Some("https://accounts.zoho.eu/oauth/v2/token"));
        assert_eq!(z.proxy_base_url(), Some("https://desk.zoho.eu"));
        assert_eq!(zoho.with_config(&serde_json::json!({"extension": "evil.com"})).unwrap_err(), ConfigError::Invalid);
        // A whole host chosen by the user is refused for OAuth URLs.
        let looker = c.get("looker").unwrap();
        assert_eq!(looker.with_config(&serde_json::json!({"host": "attacker"})).unwrap_err(), ConfigError::HostRefused);
        // Alternatives: the filled one wins; without config the concrete one.
        let sf = c.get("salesforce").unwrap();
        let filled = sf.with_config(&serde_json::json!({"hostname": "x"})).unwrap();
        assert_eq!(filled.proxy_base, None, "salesforce's proxy base waits for its instance URL");
        assert_eq!(
            filled.str("token_url"),
            Some("https://login.salesforce.com/services/oauth2/token"),
            "a hostname that is not a subdomain of a fixed domain is not used; the concrete alternative is"
        );
        let sf = sf
            .with_config(&serde_json::json!({"hostname": "x", "instance_url": "https://acme.my.salesforce.com"}))
            .unwrap();
        assert_eq!(sf.proxy_base_url(), Some("https://acme.my.salesforce.com"));
        assert_eq!(
            c.get("notion").unwrap().with_config(&serde_json::json!({})).unwrap().raw,
            c.get("notion").unwrap().raw
        );
    }

    #[test]
    fn the_builtin_catalog_is_large_documented_and_categorised() {
        let c = Catalog::load(None).unwrap();
        let n = c.all().count();
        assert!(n >= 200, "{n} providers");
        let mut modes = std::collections::BTreeMap::new();
        for p in c.all() {
            *modes.entry(p.auth_mode.clone()).or_insert(0) += 1;
            assert!(p.str("docs").is_some_and(|d| d.starts_with("https://")), "{}", p.name);
        }
        for mode in ["OAUTH2", "OAUTH2_CC", "API_KEY", "BASIC"] {
            assert!(modes.get(mode).copied().unwrap_or(0) >= 1, "{mode}: {modes:?}");
        }
        for cat in CATEGORIES {
            assert!(c.all().any(|p| p.raw["categories"].as_array().unwrap().iter().any(|x| x == cat)), "{cat}");
        }
        // Families: an alias states only what differs.
        let zoho_desk = c.get("zoho-desk").unwrap();
        assert_eq!(zoho_desk.str("token_url"), c.get("zoho").unwrap().str("token_url"));
        assert_eq!(zoho_desk.proxy_base_url(), Some("https://desk.zoho.${connectionConfig.extension}"));
        assert_eq!(c.get("onedrive").unwrap().str("token_url"), c.get("microsoft").unwrap().str("token_url"));
    }
}
