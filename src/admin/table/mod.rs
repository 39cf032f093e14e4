//! The table browser's model: what a table looks like (columns, primary key,
//! foreign keys both ways, the planner's row estimate), which columns are sealed
//! (never shown, never written), the typed filters, the keyset cursor, and which
//! input fits each column type. Its statements are in `db.rs`.

pub mod db;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};

/// A column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Name.
    pub name: String,
    /// The full type (`format_type`), e.g. `timestamp with time zone`, `text[]`.
    pub data_type: String,
    /// The base type's name (`typname`), e.g. `timestamptz`, `_text`, `jsonb`.
    pub udt: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Generated or `GENERATED ALWAYS AS IDENTITY`: never written.
    pub generated: bool,
    /// Whether the column has a default (an insert may leave it out).
    pub has_default: bool,
    /// The labels of an enum type.
    pub enum_values: Vec<String>,
}

impl Column {
    /// Sealed or secret: encrypted bytes, token and password hashes, secrets.
    /// Never selected, never shown, never written by the console.
    pub fn sealed(&self) -> bool {
        self.udt == "bytea" || self.name.ends_with("_hash") || self.name.contains("secret") || self.name == "csrf_token"
    }

    /// The input that fits the column's type.
    pub fn input(&self) -> Input {
        if !self.enum_values.is_empty() {
            return Input::Choice(self.enum_values.clone());
        }
        match self.udt.as_str() {
            "bool" => Input::Choice(vec!["true".into(), "false".into()]),
            "json" | "jsonb" => Input::Json,
            "timestamptz" | "timestamp" => Input::Timestamp,
            "date" => Input::Date,
            "uuid" => Input::Uuid,
            "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" | "oid" => Input::Number,
            "text" | "varchar" | "bpchar" | "name" | "citext" | "ltree" => Input::Text,
            u if u.starts_with('_') => Input::Array,
            _ => Input::Text,
        }
    }

    /// Whether the column can be sorted and filtered (not sealed, not a vector
    /// or other type without ordering worth having).
    pub fn sortable(&self) -> bool {
        !self.sealed() && !matches!(self.udt.as_str(), "vector" | "tsvector" | "json")
    }
}

/// The form input for a column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One of fixed values (enums, booleans).
    Choice(Vec<String>),
    /// JSON in a text area (checked by PostgreSQL's json input).
    Json,
    /// A timestamp (ISO 8601 with offset).
    Timestamp,
    /// A date.
    Date,
    /// A UUID.
    Uuid,
    /// A number.
    Number,
    /// An array literal such as `{a,b}`.
    Array,
    /// Text.
    Text,
}

impl Input {
    /// A short hint shown by the field.
    pub fn hint(&self) -> &'static str {
        match self {
            Input::Choice(_) => "",
            Input::Json => "JSON",
            Input::Timestamp => "e.g. 2026-12-04 10:00:00+00",
            Input::Date => "YYYY-MM-DD",
            Input::Uuid => "UUID",
            Input::Number => "number",
            Input::Array => "array literal, e.g. {a,b}",
            Input::Text => "",
        }
    }
}

/// A single-column foreign key of this table.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    /// This table's column.
    pub column: String,
    /// The referenced table.
    pub ref_table: String,
    /// The referenced column.
    pub ref_column: String,
}

/// A single-column foreign key of another table pointing here.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The referencing table.
    pub table: String,
    /// Its column.
    pub column: String,
    /// This table's column it points at.
    pub ref_column: String,
}

/// A table as the browser sees it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Name (schema `public`).
    pub name: String,
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Primary key columns (empty: browse only).
    pub pk: Vec<String>,
    /// Outgoing foreign keys.
    pub fks: Vec<ForeignKey>,
    /// Incoming foreign keys.
    pub incoming: Vec<Incoming>,
    /// The planner's row estimate (`-1`: never analysed).
    pub estimate: i64,
}

impl TableInfo {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    /// Columns that may be shown.
    pub fn visible(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.sealed())
    }
    /// Whether rows can be edited (a primary key whose columns are all visible).
    pub fn editable(&self) -> bool {
        !self.pk.is_empty() && self.pk.iter().all(|k| self.column(k).is_some_and(|c| !c.sealed()))
    }
    /// The outgoing foreign key of `column`.
    pub fn fk(&self, column: &str) -> Option<&ForeignKey> {
        self.fks.iter().find(|f| f.column == column)
    }
}

/// A filter operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// Case-insensitive substring of the text form.
    Contains,
    /// `IS NULL`
    IsNull,
    /// `IS NOT NULL`
    NotNull,
}

impl Op {
    /// Every operator with its query-string name and label.
    pub const ALL: [(Op, &'static str, &'static str); 9] = [
        (Op::Eq, "eq", "="),
        (Op::Ne, "ne", "≠"),
        (Op::Lt, "lt", "<"),
        (Op::Le, "le", "≤"),
        (Op::Gt, "gt", ">"),
        (Op::Ge, "ge", "≥"),
        (Op::Contains, "contains", "contains"),
        (Op::IsNull, "null", "is null"),
        (Op::NotNull, "notnull", "is not null"),
    ];
    /// The operator named `s`.
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.iter().find(|(_, n, _)| *n == s).map(|(o, _, _)| *o)
    }
    /// Its query-string name.
    pub fn name(self) -> &'static str {
        Op::ALL.iter().find(|(o, _, _)| *o == self).map(|(_, n, _)| *n).unwrap_or("eq")
    }
    /// Whether it takes a value.
    pub fn takes_value(self) -> bool {
        !matches!(self, Op::IsNull | Op::NotNull)
    }
}

/// One filter: `column op value`, the value cast to the column's type by PostgreSQL.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Column.
    pub column: String,
    /// Operator.
    pub op: Op,
    /// Value (text form).
    pub value: String,
}

/// Where a page continues: the last row's sort value and key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    /// The sort column's value (text form; `Some(None)`: NULL), when sorting by a
    /// column; absent (not `null`) when sorting by the key alone.
    #[serde(default, deserialize_with = "crate::error::double_option", skip_serializing_if = "Option::is_none")]
    pub sort: Option<Option<String>>,
    /// The primary key's values (text form).
    pub key: Vec<String>,
}

impl Cursor {
    /// The opaque form.
    pub fn encode(&self) -> String {
        B64URL.encode(serde_json::to_vec(self).unwrap_or_default())
    }
    /// Parses the opaque form.
    pub fn decode(s: &str) -> Option<Cursor> {
        serde_json::from_slice(&B64URL.decode(s).ok()?).ok()
    }
}

/// What a browse asks for.
#[derive(Debug, Clone, Default)]
pub struct Browse {
    /// Sort column (besides the key).
    pub sort: Option<String>,
    /// Descending.
    pub desc: bool,
    /// Filters, all of which must hold.
    pub filters: Vec<Filter>,
    /// Continue after this row.
    pub after: Option<Cursor>,
    /// Page size.
    pub limit: i64,
}

/// A problem with a browse or a write the admin can fix.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// No such table.
    #[error("no such table")]
    NoTable,
    /// No such column, or a sealed one.
    #[error("no column {0:?} can be used here")]
    Column(String),
    /// The table has no primary key (rows cannot be addressed).
    #[error("this table has no primary key: it can be browsed, not edited")]
    NoKey,
    /// The cursor or key is not this table's.
    #[error("the row key or page cursor does not fit this table")]
    BadKey,
    /// PostgreSQL refused a value or a write (its message).
    #[error("{0}")]
    Refused(String),
    /// The database failed.
    #[error(transparent)]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for TableError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(d) => TableError::Refused(d.message().to_string()),
            e => TableError::Db(e),
        }
    }
}

/// A row: the visible columns' values (text form), and its key.
#[derive(Debug, Clone)]
pub struct Row {
    /// Values of [`TableInfo::visible`] columns, in order (`None`: NULL).
    pub values: Vec<Option<String>>,
    /// Primary key values.
    pub key: Vec<String>,
    /// The sort column's value.
    pub sort: Option<String>,
}

/// A row's key in a URL: the key values joined as JSON, base64url.
pub fn encode_key(key: &[String]) -> String {
    B64URL.encode(serde_json::to_vec(key).unwrap_or_default())
}

/// Parses [`encode_key`]'s form.
pub fn decode_key(s: &str) -> Option<Vec<String>> {
    serde_json::from_slice(&B64URL.decode(s).ok()?).ok()
}

/// A row's visible values as a JSON object (for the audit log's before/after).
pub fn as_json(info: &TableInfo, values: &[Option<String>]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (c, v) in info.visible().zip(values) {
        m.insert(c.name.clone(), v.clone().map(serde_json::Value::String).unwrap_or(serde_json::Value::Null));
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_and_key_round_trip() {
        for sort in [None, Some(None), Some(Some("x".to_string()))] {
            let c = Cursor { sort, key: vec!["a\"b".into(), "1".into()] };
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        assert_eq!(decode_key(&encode_key(&["x".into()])), Some(vec!["x".to_string()]));
        assert_eq!(Cursor::decode("%%%"), None);
    }

    #[test]
    fn sealed_columns_and_inputs() {
        let col = |name: &str, udt: &str| Column {
            name: name.into(),
            data_type: udt.into(),
            udt: udt.into(),
            nullable: true,
            generated: false,
            has_default: false,
            enum_values: vec![],
        };
        assert!(col("credentials", "bytea").sealed());
        assert!(col("token_hash", "text").sealed());
        assert!(col("client_secret", "text").sealed());
        assert!(!col("email", "text").sealed());
        assert_eq!(col("x", "_text").input(), Input::Array);
        assert_eq!(col("x", "jsonb").input(), Input::Json);
        assert_eq!(col("x", "bool").input(), Input::Choice(vec!["true".into(), "false".into()]));
    }
}
