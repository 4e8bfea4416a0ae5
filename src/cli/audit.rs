//! `otadepot audit export` and `otadepot audit verify`: the audit trail
//! for auditors, read straight from the database.

use std::io::Write;

use anyhow::bail;
use chrono::{DateTime, Utc};
use sea_orm::{EntityTrait, QueryFilter};

use crate::app::App;
use crate::service::audit;

/// Output formats of `audit export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per event (`details` as JSON text).
    Csv,
}

const COLUMNS: [&str; 12] = [
    "seq",
    "id",
    "at",
    "actor_kind",
    "actor_id",
    "action",
    "object_kind",
    "object_id",
    "details",
    "request_id",
    "prev_hash",
    "hash",
];

/// Write the events with `from <= at < to` to `out`, oldest first, as
/// they are read (a page at a time); returns how many.
pub async fn export(
    app: &App,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    format: Format,
    out: impl Write,
) -> anyhow::Result<u64> {
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        bail!("--from must not be after --to");
    }
    let mut out = std::io::BufWriter::new(out);
    let mut csv = match format {
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(COLUMNS)?;
            out.write_all(&writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
            Some(())
        }
        Format::Jsonl => None,
    };
    let count = audit::export(&app.db, from, to, |event| {
        let at = event.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match csv.as_mut() {
            Some(()) => {
                let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
                writer.write_record([
                    event.seq.to_string(),
                    event.id.to_string(),
                    at,
                    event.actor_kind.clone(),
                    event.actor_id.clone(),
                    event.action.clone(),
                    event.object_kind.clone(),
                    event.object_id.clone(),
                    event.details.to_string(),
                    event.request_id.clone().unwrap_or_default(),
                    event.prev_hash.clone(),
                    event.hash.clone(),
                ])?;
                out.write_all(&writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
            }
            None => {
                let line = serde_json::json!({
                    "seq": event.seq, "id": event.id, "at": at, "actor_kind": event.actor_kind,
                    "actor_id": event.actor_id, "action": event.action, "object_kind": event.object_kind,
                    "object_id": event.object_id, "details": event.details, "request_id": event.request_id,
                    "prev_hash": event.prev_hash, "hash": event.hash,
                });
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    })
    .await?;
    out.flush()?;
    Ok(count)
}

/// A head printed by an earlier `audit verify`: `SEQ:HASH`.
#[derive(Clone, Debug)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

/// Parse `--anchor`: a malformed one (say, the README's shortened example)
/// is a usage error, never a verdict on the trail.
pub fn parse_anchor(value: &str) -> Result<Anchor, String> {
    let usage = "SEQ:HASH as `otadepot audit verify` prints it after \"head\": the event's number, a colon and its 64-digit hex SHA-256";
    let (seq, hash) = value.split_once(':').ok_or_else(|| format!("{value:?} is not {usage}"))?;
    let seq: i64 = seq
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{seq:?} is not an event number; expected {usage}"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("{hash:?} is not a SHA-256 (64 lowercase hex digits); expected {usage}"));
    }
    Ok(Anchor { seq, hash: hash.to_owned() })
}

/// Check the whole chain and, with `anchor` (`SEQ:HASH` recorded from an
/// earlier run), that the chain still holds that event: rows cut off the
/// end since then are caught too. Ok(message) when it holds.
pub async fn verify(app: &App, anchor: Option<Anchor>) -> anyhow::Result<Result<String, String>> {
    let outcome = audit::verify_chain(&app.db).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(broken) = outcome.first_broken {
        return Ok(Err(format!(
            "BROKEN at seq {} (event {}): {}; {} event(s) before it check out",
            broken.seq, broken.id, broken.reason, outcome.checked
        )));
    }
    let head = match &outcome.head {
        Some((seq, hash)) => format!("head {seq}:{hash}"),
        None => "the trail is empty".to_owned(),
    };
    if let Some(Anchor { seq, hash }) = anchor {
        let found = entity::audit_event::Entity::find()
            .filter(sea_orm::ColumnTrait::eq(&entity::audit_event::Column::Seq, seq))
            .one(&app.db)
            .await?;
        match found {
            None => {
                return Ok(Err(format!(
                    "BROKEN: the anchor's event {seq} is gone; the trail ends at {head} (events were cut off)"
                )));
            }
            Some(event) if event.hash != hash => {
                return Ok(Err(format!("BROKEN: event {seq} has hash {}, the anchor says {hash}", event.hash)));
            }
            Some(_) => {}
        }
    }
    Ok(Ok(format!("OK: {} event(s) check out; {head}", outcome.checked)))
}
