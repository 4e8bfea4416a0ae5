//! Relay-style pagination shared by every list: `first` / `after`, opaque
//! cursors, one extra row fetched to know whether a next page exists.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};

pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 500;

/// A validated page request.
#[derive(Clone, Debug)]
pub struct PageRequest<K> {
    pub first: u64,
    pub after: Option<K>,
}

/// One page of results, newest or first in order, and what comes next.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<(String, T)>,
    pub has_next_page: bool,
    pub total_count: u64,
}

impl PageRequest<i64> {
    /// Parse `first` (1..=500, default 50) and an integer-keyed cursor of `kind`.
    pub fn parse_i64(kind: &str, first: Option<i32>, after: Option<&str>) -> Result<Self> {
        let first = match first {
            None => DEFAULT_PAGE,
            Some(n) if n >= 1 && (n as u64) <= MAX_PAGE => n as u64,
            Some(n) => {
                return Err(Error::invalid("first", format!("must be between 1 and {MAX_PAGE}, got {n}")));
            }
        };
        let after = after
            .map(|cursor| {
                decode(cursor)
                    .and_then(|text| text.strip_prefix(&format!("{kind}:")).and_then(|n| n.parse::<i64>().ok()))
                    .ok_or_else(|| Error::invalid("after", "not a cursor of this list"))
            })
            .transpose()?;
        Ok(Self { first, after })
    }
}

impl PageRequest<uuid::Uuid> {
    /// Parse `first` and a cursor keyed by a (time-ordered, v7) UUID.
    pub fn parse_uuid(kind: &str, first: Option<i32>, after: Option<&str>) -> Result<Self> {
        let first = parse_first(first)?;
        let after = after
            .map(|cursor| {
                decode(cursor)
                    .and_then(|text| text.strip_prefix(&format!("{kind}:")).and_then(|id| id.parse().ok()))
                    .ok_or_else(|| Error::invalid("after", "not a cursor of this list"))
            })
            .transpose()?;
        Ok(Self { first, after })
    }
}

impl PageRequest<String> {
    /// Parse `first` and a cursor keyed by any text (a name, a sort key).
    pub fn parse_string(kind: &str, first: Option<i32>, after: Option<&str>) -> Result<Self> {
        let first = parse_first(first)?;
        let after = after
            .map(|cursor| {
                decode(cursor)
                    .and_then(|text| text.strip_prefix(&format!("{kind}:")).map(str::to_owned))
                    .ok_or_else(|| Error::invalid("after", "not a cursor of this list"))
            })
            .transpose()?;
        Ok(Self { first, after })
    }
}

fn parse_first(first: Option<i32>) -> Result<u64> {
    match first {
        None => Ok(DEFAULT_PAGE),
        Some(n) if n >= 1 && (n as u64) <= MAX_PAGE => Ok(n as u64),
        Some(n) => Err(Error::invalid("first", format!("must be between 1 and {MAX_PAGE}, got {n}"))),
    }
}

pub fn cursor(kind: &str, key: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{key}"))
}

fn decode(cursor: &str) -> Option<String> {
    URL_SAFE_NO_PAD.decode(cursor).ok().and_then(|b| String::from_utf8(b).ok())
}

/// One page of `query`, keyed by a time-ordered (v7) UUID column `id`,
/// newest first: the rows, whether more follow, and the total count.
pub async fn newest_first<E>(
    conn: &impl sea_orm::ConnectionTrait,
    query: sea_orm::Select<E>,
    id: E::Column,
    page: &PageRequest<uuid::Uuid>,
) -> Result<(Vec<E::Model>, bool, u64)>
where
    E: sea_orm::EntityTrait,
    E::Model: Sync,
{
    use sea_orm::{ColumnTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
    let total_count = query.clone().count(conn).await?;
    let mut query = query;
    if let Some(after) = page.after {
        query = query.filter(id.lt(after));
    }
    let mut rows = query.order_by_desc(id).limit(page.first + 1).all(conn).await?;
    let has_next_page = rows.len() as u64 > page.first;
    rows.truncate(usize::try_from(page.first).unwrap_or(usize::MAX));
    Ok((rows, has_next_page, total_count))
}
