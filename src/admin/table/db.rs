//! The table browser's statements over the `public` schema: introspection from
//! `pg_catalog`, bounded counts, keyset pages with typed filters, row reads and
//! writes (values cast by PostgreSQL from their text form, so every type's own
//! input rules apply), CSV export streamed by `COPY … TO STDOUT` and CSV import
//! by `COPY … FROM STDIN` in one transaction. Table and column names come from
//! introspection only, quoted; values are bound, or quoted as literals for COPY.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use sqlx::postgres::types::Oid;
use sqlx::{PgPool, Row as _};

use super::{Browse, Column, Filter, ForeignKey, Incoming, Op, Row, TableError, TableInfo};
use crate::db::quote_ident as q;

/// Application tables with the planner's row estimate (`-1`: never analysed).
pub async fn tables(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.relname::text, c.reltuples::int8 FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
    )
    .fetch_all(pool)
    .await
}

/// The table `name` of schema `public`, or `None`.
pub async fn info(pool: &PgPool, name: &str) -> Result<Option<TableInfo>, sqlx::Error> {
    let found: Option<(Oid, i64)> = sqlx::query_as(
        "SELECT c.oid, c.reltuples::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname = $1 AND c.relkind IN ('r', 'p')",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    let Some((oid, estimate)) = found else { return Ok(None) };
    type ColRow = (String, String, String, bool, bool, bool, Option<Vec<String>>);
    let cols: Vec<ColRow> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text,
                NOT a.attnotnull, a.attgenerated <> '' OR a.attidentity = 'a',
                a.atthasdef OR a.attidentity <> '',
                (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = a.atttypid)
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let columns = cols
        .into_iter()
        .map(|(name, data_type, udt, nullable, generated, has_default, enums)| Column {
            name,
            data_type,
            udt,
            nullable,
            generated,
            has_default,
            enum_values: enums.unwrap_or_default(),
        })
        .collect();
    let pk: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let links: Vec<(bool, String, String, String)> = sqlx::query_as(
        "SELECT k.conrelid = $1, a.attname::text,
                CASE WHEN k.conrelid = $1 THEN rc.relname ELSE lc.relname END::text, ra.attname::text
         FROM pg_constraint k
         JOIN pg_class lc ON lc.oid = k.conrelid JOIN pg_class rc ON rc.oid = k.confrelid
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
         JOIN pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attnum = k.confkey[1]
         WHERE k.contype = 'f' AND cardinality(k.conkey) = 1 AND (k.conrelid = $1 OR k.confrelid = $1)
         ORDER BY 3, 2",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let mut fks = Vec::new();
    let mut incoming = Vec::new();
    for (outgoing, column, table, ref_column) in links {
        if outgoing {
            fks.push(ForeignKey { column, ref_table: table, ref_column });
        } else {
            incoming.push(Incoming { table, column, ref_column });
        }
    }
    Ok(Some(TableInfo { name: name.to_string(), columns, pk, fks, incoming, estimate }))
}

/// Exact row count when it is at most `cap` (`None` past it): never scans more
/// than `cap + 1` rows.
pub async fn count_upto(pool: &PgPool, info: &TableInfo, cap: i64) -> Result<Option<i64>, sqlx::Error> {
    let sql = format!("SELECT count(*) FROM (SELECT 1 FROM public.{} LIMIT $1) s", q(&info.name));
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(cap + 1).fetch_one(pool).await?;
    Ok((n <= cap).then_some(n))
}

/// A statement under construction: its text and its arguments (bound as text,
/// or inlined as quoted literals where no parameters are possible, as in COPY).
struct Sql {
    text: String,
    args: Vec<Option<String>>,
    inline: bool,
}

impl Sql {
    fn new(inline: bool) -> Sql {
        Sql { text: String::new(), args: Vec::new(), inline }
    }
    /// A placeholder (or literal) for `v` cast to `ty`.
    fn typed(&mut self, v: &str, ty: &str) -> String {
        format!("CAST({} AS {ty})", self.raw(v))
    }
    /// A placeholder (or literal) for the text `v`.
    fn raw(&mut self, v: &str) -> String {
        if self.inline {
            format!("'{}'", v.replace('\'', "''"))
        } else {
            self.args.push(Some(v.to_string()));
            format!("${}", self.args.len())
        }
    }
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.text.clone()));
        for a in &self.args {
            query = query.bind(a.clone());
        }
        query
    }
}

/// The key expressions (primary key, or `ctid` without one) with their types.
fn key_exprs(info: &TableInfo) -> Vec<(String, String)> {
    if info.pk.is_empty() {
        return vec![("t.ctid".into(), "tid".into())];
    }
    info.pk
        .iter()
        .map(|k| {
            let ty = info.column(k).map(|c| c.data_type.clone()).unwrap_or_else(|| "text".into());
            (format!("t.{}", q(k)), ty)
        })
        .collect()
}

/// `(k1, k2) op (v1, v2)` for the key.
fn key_compare(sql: &mut Sql, keys: &[(String, String)], op: &str, values: &[String]) -> Result<String, TableError> {
    if values.len() != keys.len() {
        return Err(TableError::BadKey);
    }
    let lhs: Vec<&str> = keys.iter().map(|(e, _)| e.as_str()).collect();
    let rhs: Vec<String> = keys.iter().zip(values).map(|((_, ty), v)| sql.typed(v, ty)).collect();
    Ok(format!("({}) {op} ({})", lhs.join(", "), rhs.join(", ")))
}

fn filter_sql(sql: &mut Sql, info: &TableInfo, f: &Filter) -> Result<String, TableError> {
    let col = info.column(&f.column).filter(|c| c.sortable()).ok_or_else(|| TableError::Column(f.column.clone()))?;
    let e = format!("t.{}", q(&col.name));
    Ok(match f.op {
        Op::IsNull => format!("{e} IS NULL"),
        Op::NotNull => format!("{e} IS NOT NULL"),
        Op::Contains => {
            let pattern = format!("%{}%", crate::storage::db::like_escape(&f.value));
            format!("CAST({e} AS text) ILIKE {}", sql.raw(&pattern))
        }
        op => {
            let sym = match op {
                Op::Eq => "=",
                Op::Ne => "<>",
                Op::Lt => "<",
                Op::Le => "<=",
                Op::Gt => ">",
                _ => ">=",
            };
            format!("{e} {sym} {}", sql.typed(&f.value, &col.data_type))
        }
    })
}

/// `WHERE …` for the filters and the cursor, and `ORDER BY …`.
fn where_and_order(sql: &mut Sql, info: &TableInfo, b: &Browse) -> Result<(String, String), TableError> {
    let keys = key_exprs(info);
    let dir = if b.desc { "DESC" } else { "ASC" };
    let cmp = if b.desc { "<" } else { ">" };
    let mut conds = Vec::new();
    for f in &b.filters {
        conds.push(filter_sql(sql, info, f)?);
    }
    let sort = match &b.sort {
        Some(s) => Some(info.column(s).filter(|c| c.sortable()).ok_or_else(|| TableError::Column(s.clone()))?),
        None => None,
    };
    if let Some(after) = &b.after {
        match (sort, &after.sort) {
            (None, None) => conds.push(key_compare(sql, &keys, cmp, &after.key)?),
            (Some(col), Some(value)) => {
                let e = format!("t.{}", q(&col.name));
                let cond = match value {
                    Some(v) if !col.nullable => {
                        let mut lhs = vec![e.clone()];
                        lhs.extend(keys.iter().map(|(k, _)| k.clone()));
                        let mut rhs = vec![sql.typed(v, &col.data_type)];
                        if after.key.len() != keys.len() {
                            return Err(TableError::BadKey);
                        }
                        rhs.extend(keys.iter().zip(&after.key).map(|((_, ty), v)| sql.typed(v, ty)));
                        format!("({}) {cmp} ({})", lhs.join(", "), rhs.join(", "))
                    }
                    Some(v) => {
                        let a = sql.typed(v, &col.data_type);
                        let b2 = sql.typed(v, &col.data_type);
                        let k = key_compare(sql, &keys, cmp, &after.key)?;
                        format!("({e} {cmp} {a} OR ({e} = {b2} AND {k}) OR {e} IS NULL)")
                    }
                    None => format!("({e} IS NULL AND {})", key_compare(sql, &keys, cmp, &after.key)?),
                };
                conds.push(cond);
            }
            _ => return Err(TableError::BadKey),
        }
    }
    let mut order: Vec<String> = Vec::new();
    if let Some(col) = sort {
        // NULLS LAST only where NULLs can be: a NOT NULL column keeps the plain
        // order, which a (backward) index scan serves without sorting.
        let nulls = if col.nullable { " NULLS LAST" } else { "" };
        order.push(format!("t.{} {dir}{nulls}", q(&col.name)));
    }
    order.extend(keys.iter().map(|(k, _)| format!("{k} {dir}")));
    let where_sql = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    Ok((where_sql, format!("ORDER BY {}", order.join(", "))))
}

/// The select list: visible columns as text (cut to `cut` characters when set),
/// then the key as text, then the sort column as text.
fn select_list(info: &TableInfo, cut: Option<usize>, sort: Option<&str>) -> String {
    let mut parts: Vec<String> = info
        .visible()
        .map(|c| match cut {
            Some(n) => format!("left(CAST(t.{} AS text), {n})", q(&c.name)),
            None => format!("CAST(t.{} AS text)", q(&c.name)),
        })
        .collect();
    parts.extend(key_exprs(info).into_iter().map(|(k, _)| format!("CAST({k} AS text)")));
    parts.push(match sort {
        Some(s) => format!("CAST(t.{} AS text)", q(s)),
        None => "NULL::text".into(),
    });
    parts.join(", ")
}

fn to_row(info: &TableInfo, r: &sqlx::postgres::PgRow) -> Result<Row, sqlx::Error> {
    let n = info.visible().count();
    let k = key_exprs(info).len();
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        values.push(r.try_get::<Option<String>, _>(i)?);
    }
    let mut key = Vec::with_capacity(k);
    for i in n..n + k {
        key.push(r.try_get::<Option<String>, _>(i)?.unwrap_or_default());
    }
    Ok(Row { values, key, sort: r.try_get::<Option<String>, _>(n + k)? })
}

/// A page of rows (at most `b.limit + 1`, so the caller knows whether more follow),
/// values cut to 300 characters, under a statement timeout.
pub async fn browse(pool: &PgPool, info: &TableInfo, b: &Browse, timeout: Duration) -> Result<Vec<Row>, TableError> {
    let mut sql = Sql::new(false);
    let (where_sql, order) = where_and_order(&mut sql, info, b)?;
    sql.text = format!(
        "SELECT {} FROM public.{} t {where_sql} {order} LIMIT {}",
        select_list(info, Some(300), b.sort.as_deref()),
        q(&info.name),
        b.limit + 1
    );
    let mut tx = pool.begin().await?;
    crate::admin::db::set_timeout(&mut tx, timeout).await?;
    let rows = sql.query().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows.iter().map(|r| to_row(info, r)).collect::<Result<_, _>>()?)
}

/// One row, uncut, by key.
pub async fn row(pool: &PgPool, info: &TableInfo, key: &[String]) -> Result<Option<Row>, TableError> {
    let mut sql = Sql::new(false);
    let cond = key_compare(&mut sql, &key_exprs(info), "=", key)?;
    sql.text = format!("SELECT {} FROM public.{} t WHERE {cond}", select_list(info, None, None), q(&info.name));
    let r = sql.query().fetch_optional(pool).await?;
    Ok(r.map(|r| to_row(info, &r)).transpose()?)
}

/// Checks that a written column exists, is visible and is not generated.
fn writable<'a>(info: &'a TableInfo, name: &str) -> Result<&'a Column, TableError> {
    info.column(name).filter(|c| !c.sealed() && !c.generated).ok_or_else(|| TableError::Column(name.to_string()))
}

/// Inserts a row from (column, value) pairs (`None`: NULL; columns left out take
/// their defaults); the new row.
pub async fn insert(pool: &PgPool, info: &TableInfo, values: &[(String, Option<String>)]) -> Result<Row, TableError> {
    if !info.editable() {
        return Err(TableError::NoKey);
    }
    let mut sql = Sql::new(false);
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    for (name, v) in values {
        let c = writable(info, name)?;
        cols.push(q(&c.name));
        vals.push(match v {
            Some(v) => sql.typed(v, &c.data_type),
            None => "NULL".into(),
        });
    }
    let body = if cols.is_empty() {
        "DEFAULT VALUES".into()
    } else {
        format!("({}) VALUES ({})", cols.join(", "), vals.join(", "))
    };
    sql.text = format!("INSERT INTO public.{} AS t {body} RETURNING {}", q(&info.name), select_list(info, None, None));
    let r = sql.query().fetch_one(pool).await?;
    Ok(to_row(info, &r)?)
}

/// Updates a row by key; (before, after), or `None` when no row has the key.
pub async fn update(
    pool: &PgPool,
    info: &TableInfo,
    key: &[String],
    changes: &[(String, Option<String>)],
) -> Result<Option<(Row, Row)>, TableError> {
    if !info.editable() {
        return Err(TableError::NoKey);
    }
    let keys = key_exprs(info);
    let mut tx = pool.begin().await?;
    let mut read = Sql::new(false);
    let cond = key_compare(&mut read, &keys, "=", key)?;
    read.text =
        format!("SELECT {} FROM public.{} t WHERE {cond} FOR UPDATE", select_list(info, None, None), q(&info.name));
    let Some(before) = read.query().fetch_optional(&mut *tx).await? else { return Ok(None) };
    let before = to_row(info, &before)?;
    if changes.is_empty() {
        return Ok(Some((before.clone(), before)));
    }
    let mut sql = Sql::new(false);
    let mut sets = Vec::new();
    for (name, v) in changes {
        let c = writable(info, name)?;
        let value = match v {
            Some(v) => sql.typed(v, &c.data_type),
            None => "NULL".into(),
        };
        sets.push(format!("{} = {value}", q(&c.name)));
    }
    let cond = key_compare(&mut sql, &keys, "=", key)?;
    sql.text = format!(
        "UPDATE public.{} AS t SET {} WHERE {cond} RETURNING {}",
        q(&info.name),
        sets.join(", "),
        select_list(info, None, None)
    );
    let after = sql.query().fetch_one(&mut *tx).await?;
    let after = to_row(info, &after)?;
    tx.commit().await?;
    Ok(Some((before, after)))
}

/// Deletes a row by key; the row as it was, or `None`.
pub async fn delete(pool: &PgPool, info: &TableInfo, key: &[String]) -> Result<Option<Row>, TableError> {
    if !info.editable() {
        return Err(TableError::NoKey);
    }
    let mut sql = Sql::new(false);
    let cond = key_compare(&mut sql, &key_exprs(info), "=", key)?;
    sql.text =
        format!("DELETE FROM public.{} AS t WHERE {cond} RETURNING {}", q(&info.name), select_list(info, None, None));
    let r = sql.query().fetch_optional(pool).await?;
    Ok(r.map(|r| to_row(info, &r)).transpose()?)
}

/// The `COPY … TO STDOUT` statement exporting the filtered, sorted rows' visible
/// columns as CSV with a header (values inlined as quoted literals).
pub fn export_statement(info: &TableInfo, b: &Browse) -> Result<String, TableError> {
    let mut sql = Sql::new(true);
    let unpaged = Browse { after: None, ..b.clone() };
    let (where_sql, order) = where_and_order(&mut sql, info, &unpaged)?;
    let cols: Vec<String> = info.visible().map(|c| format!("t.{}", q(&c.name))).collect();
    Ok(format!(
        "COPY (SELECT {} FROM public.{} t {where_sql} {order}) TO STDOUT WITH (FORMAT csv, HEADER true)",
        cols.join(", "),
        q(&info.name)
    ))
}

/// Streams `statement`'s CSV through a small channel: the export holds a few
/// chunks in memory whatever the table's size, and stops when the reader goes.
pub fn export_csv(pool: PgPool, statement: String) -> tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let result = async {
            let mut conn = pool.acquire().await?;
            // Literals are quoted for standard strings (backslashes are plain).
            sqlx::query("SET standard_conforming_strings = on").execute(&mut *conn).await?;
            let mut stream = conn.copy_out_raw(&statement).await?;
            while let Some(chunk) = stream.try_next().await? {
                if tx.send(Ok(chunk)).await.is_err() {
                    drop(stream);
                    // The connection is mid-COPY: do not hand it back to the pool.
                    conn.close_on_drop();
                    return Ok(());
                }
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    rx
}

/// Imports CSV (with a header naming the columns) into the table in one
/// transaction: every row or none. Returns the rows written.
pub async fn import_csv(pool: &PgPool, info: &TableInfo, columns: &[String], data: &[u8]) -> Result<u64, TableError> {
    let mut cols = Vec::new();
    for name in columns {
        cols.push(q(&writable(info, name)?.name));
    }
    let statement =
        format!("COPY public.{} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)", q(&info.name), cols.join(", "));
    let mut tx = pool.begin().await?;
    let mut copy = tx.copy_in_raw(&statement).await?;
    copy.send(data).await?;
    let n = copy.finish().await?;
    tx.commit().await?;
    Ok(n)
}
