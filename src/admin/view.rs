//! The page model the admin templates render: a page is a title, a navigation
//! section and a list of blocks (headings, stat cards, tables whose cells may be
//! links or small action forms, forms with typed fields, preformatted text,
//! images, pagers). Every page of the console is built from these, so every
//! page looks and behaves alike and every form carries the session's CSRF token.

use askama::Template;

/// The navigation: (section, label, href).
pub const NAV: &[(&str, &str, &str)] = &[
    ("overview", "Overview", "/admin"),
    ("users", "Users", "/admin/users"),
    ("orgs", "Organizations", "/admin/orgs"),
    ("storage", "Storage", "/admin/storage"),
    ("connections", "Connections", "/admin/connections"),
    ("conversations", "Conversations", "/admin/conversations"),
    ("knowledge", "Knowledge", "/admin/knowledge"),
    ("memory", "Memory", "/admin/memory"),
    ("tables", "Tables", "/admin/tables"),
    ("sql", "SQL", "/admin/sql"),
    ("audit", "Audit log", "/admin/audit"),
];

/// A console page.
#[derive(Template)]
#[template(path = "admin/page.html")]
pub struct Page {
    /// Title.
    pub title: String,
    /// The navigation section it belongs to.
    pub section: &'static str,
    /// The signed-in admin's email (absent on the sign-in page).
    pub admin: Option<String>,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    /// A message above the content.
    pub notice: Option<Notice>,
    /// The content.
    pub blocks: Vec<Block>,
}

impl Page {
    /// An empty page.
    pub fn new(title: impl Into<String>, section: &'static str) -> Page {
        Page { title: title.into(), section, admin: None, csrf: String::new(), notice: None, blocks: Vec::new() }
    }
    /// Adds a block.
    pub fn push(&mut self, b: Block) -> &mut Page {
        self.blocks.push(b);
        self
    }
    /// The navigation entries.
    pub fn nav(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        NAV
    }
}

/// A message: `ok` or `error`.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `ok` or `error`.
    pub kind: &'static str,
    /// The text.
    pub text: String,
}

impl Notice {
    /// A success message.
    pub fn ok(text: impl Into<String>) -> Option<Notice> {
        Some(Notice { kind: "ok", text: text.into() })
    }
    /// An error message.
    pub fn error(text: impl Into<String>) -> Option<Notice> {
        Some(Notice { kind: "error", text: text.into() })
    }
}

/// A piece of a page.
pub enum Block {
    /// A section heading.
    Heading(String),
    /// A paragraph.
    Text(String),
    /// Stat cards: (label, value, link).
    Stats(Vec<(String, String, Option<String>)>),
    /// A table.
    Table(Table),
    /// A form.
    Form(Form),
    /// Preformatted text (JSON, SQL plans, message parts).
    Pre(String),
    /// A value to copy (a link, a token): shown, with a copy button.
    Copy(String),
    /// Links in a row: (href, label).
    Links(Vec<(String, String)>),
    /// An image preview.
    Image(String),
    /// A PDF preview (embedded).
    Pdf(String),
    /// Paging links: (first page, next page).
    Pager(Option<String>, Option<String>),
}

/// A table.
pub struct Table {
    /// Column heads.
    pub head: Vec<Head>,
    /// Rows of cells.
    pub rows: Vec<Vec<Cell>>,
    /// Shown when there are no rows.
    pub empty: String,
}

/// A column head, a sort link when `href` is set.
pub struct Head {
    /// Label.
    pub label: String,
    /// Sort link.
    pub href: Option<String>,
    /// `▲`/`▼` when sorted by this column.
    pub mark: &'static str,
    /// The column's type, shown small.
    pub note: String,
}

impl Head {
    /// A plain head.
    pub fn plain(label: impl Into<String>) -> Head {
        Head { label: label.into(), href: None, mark: "", note: String::new() }
    }
    /// Plain heads from labels.
    pub fn all(labels: &[&str]) -> Vec<Head> {
        labels.iter().map(|l| Head::plain(*l)).collect()
    }
}

/// A table cell.
pub enum Cell {
    /// Text.
    Text(String),
    /// Monospace text (ids, values).
    Mono(String),
    /// SQL NULL.
    Null,
    /// A link: (href, text).
    Link(String, String),
    /// A badge: (text, `ok`/`warn`/`bad`).
    Badge(String, &'static str),
    /// Small action buttons (each its own POST form with the CSRF token).
    Actions(Vec<Action>),
    /// A thumbnail image.
    Thumb(String),
}

impl Cell {
    /// Text, or NULL.
    pub fn opt(v: Option<String>) -> Cell {
        v.map(Cell::Text).unwrap_or(Cell::Null)
    }
}

/// A one-button POST form.
pub struct Action {
    /// Where it posts.
    pub action: String,
    /// Button label.
    pub label: String,
    /// Hidden fields.
    pub fields: Vec<(String, String)>,
    /// Styled as destructive.
    pub danger: bool,
}

impl Action {
    /// A button posting to `action`.
    pub fn new(action: impl Into<String>, label: impl Into<String>) -> Action {
        Action { action: action.into(), label: label.into(), fields: Vec::new(), danger: false }
    }
    /// Styled as destructive.
    pub fn danger(mut self) -> Action {
        self.danger = true;
        self
    }
    /// With a hidden field.
    pub fn field(mut self, k: impl Into<String>, v: impl Into<String>) -> Action {
        self.fields.push((k.into(), v.into()));
        self
    }
}

/// A form.
pub struct Form {
    /// Where it goes.
    pub action: String,
    /// `get` or `post` (post forms carry the CSRF token).
    pub method: &'static str,
    /// Fields.
    pub fields: Vec<Field>,
    /// Submit label.
    pub submit: String,
    /// `multipart/form-data` (uploads).
    pub multipart: bool,
    /// Fields in one line.
    pub inline: bool,
    /// Styled as destructive.
    pub danger: bool,
}

impl Form {
    /// A POST form.
    pub fn post(action: impl Into<String>, submit: impl Into<String>) -> Form {
        Form {
            action: action.into(),
            method: "post",
            fields: Vec::new(),
            submit: submit.into(),
            multipart: false,
            inline: false,
            danger: false,
        }
    }
    /// A GET form (search, filters).
    pub fn get(action: impl Into<String>, submit: impl Into<String>) -> Form {
        Form { method: "get", inline: true, ..Form::post(action, submit) }
    }
    /// Adds a field.
    pub fn field(mut self, f: Field) -> Form {
        self.fields.push(f);
        self
    }
}

/// A form field.
pub struct Field {
    /// Name.
    pub name: String,
    /// Label.
    pub label: String,
    /// `text`, `textarea`, `select`, `checkbox`, `hidden`, `password`, `email`,
    /// `file`, `number`, `search`.
    pub kind: &'static str,
    /// Value.
    pub value: String,
    /// Options of a select: (value, label).
    pub options: Vec<(String, String)>,
    /// A hint under the field.
    pub hint: String,
    /// Required.
    pub required: bool,
    /// Offers a "set NULL" checkbox named `null.<name>`.
    pub nullable: bool,
}

impl Field {
    /// A field of `kind`.
    pub fn new(kind: &'static str, name: impl Into<String>, label: impl Into<String>) -> Field {
        Field {
            name: name.into(),
            label: label.into(),
            kind,
            value: String::new(),
            options: Vec::new(),
            hint: String::new(),
            required: false,
            nullable: false,
        }
    }
    /// With a value.
    pub fn value(mut self, v: impl Into<String>) -> Field {
        self.value = v.into();
        self
    }
    /// Required.
    pub fn required(mut self) -> Field {
        self.required = true;
        self
    }
    /// With a hint.
    pub fn hint(mut self, h: impl Into<String>) -> Field {
        self.hint = h.into();
        self
    }
    /// With options (a select).
    pub fn options(mut self, o: Vec<(String, String)>) -> Field {
        self.options = o;
        self
    }
    /// A hidden field.
    pub fn hidden(name: impl Into<String>, value: impl Into<String>) -> Field {
        Field::new("hidden", name, "").value(value)
    }
}

/// The landing page at `/` of a server.
#[derive(Template)]
#[template(path = "admin/landing.html")]
pub struct Landing {
    /// The version.
    pub version: &'static str,
}

/// Bytes in a human unit.
pub fn human_bytes(n: i64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[i]) }
}

/// A timestamp as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn when(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(2048), "2.0 KB");
    }
}
