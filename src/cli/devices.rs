//! `otadepot devices import`: register a fleet from a CSV file.
//!
//! Columns (a header row names them, in any order): `endpoint_id` and
//! `model` (required), `serial`, `gateway`, and `attr.<key>` for each
//! operator attribute. Rows go in batches of up to 10,000, each all or nothing;
//! the secrets go to `--secrets-out` (created new, readable by its owner
//! only) as `endpoint_id,device_id,secret`, since they are shown once.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use crate::app::App;
use crate::auth::Ctx;
use crate::error::Error;
use crate::service::device::{self, NewDevice};

/// Import `file`; returns how many devices were registered.
pub async fn import(app: &App, file: &Path, secrets_out: &Path, batch: usize) -> anyhow::Result<usize> {
    if batch == 0 || batch > device::MAX_BATCH {
        bail!("--batch must be between 1 and {}", device::MAX_BATCH);
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let headers = reader.headers().with_context(|| format!("reading the header row of {}", file.display()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let endpoint_col = column("endpoint_id").context("the CSV needs an endpoint_id column")?;
    let model_col = column("model").context("the CSV needs a model column")?;
    let serial_col = column("serial");
    let gateway_col = column("gateway");
    let attribute_cols: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix("attr.").map(|key| (i, key.to_owned())))
        .collect();
    if let Some(unknown) = headers
        .iter()
        .find(|h| !matches!(*h, "endpoint_id" | "model" | "serial" | "gateway") && !h.starts_with("attr."))
    {
        bail!("unknown column {unknown:?} (endpoint_id, model, serial, gateway, attr.<key>)");
    }

    let mut out = secrets_file(secrets_out)?;
    writeln!(out, "endpoint_id,device_id,secret")?;
    let ctx = Ctx::system("cli:devices-import");
    let mut imported = 0;
    let mut pending: Vec<(u64, NewDevice)> = Vec::with_capacity(batch);
    let mut records = reader.records();
    loop {
        let record = records.next().transpose().with_context(|| format!("reading {}", file.display()))?;
        if let Some(record) = &record {
            let line = record.position().map_or(0, csv::Position::line);
            let get = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|v| !v.is_empty()).map(str::to_owned);
            pending.push((
                line,
                NewDevice {
                    endpoint_id: get(Some(endpoint_col)).unwrap_or_default(),
                    model: get(Some(model_col)).unwrap_or_default(),
                    serial: get(serial_col),
                    gateway: get(gateway_col),
                    attributes: attribute_cols
                        .iter()
                        .filter_map(|(i, key)| get(Some(*i)).map(|v| (key.clone(), v)))
                        .collect(),
                    reported_attributes: Vec::new(),
                },
            ));
        }
        if pending.len() == batch || (record.is_none() && !pending.is_empty()) {
            let lines: Vec<u64> = pending.iter().map(|(line, _)| *line).collect();
            let inputs = std::mem::take(&mut pending).into_iter().map(|(_, d)| d).collect();
            match device::register_many(app, &ctx, inputs).await {
                Ok(registered) => {
                    for r in &registered {
                        writeln!(out, "{},{},{}", r.device.row.endpoint_id, r.device.row.id, r.secret)?;
                    }
                    out.flush()?;
                    imported += registered.len();
                }
                Err(Error::Rows { rows }) => {
                    let mut message = format!(
                        "{} row(s) refused in the batch from line {}; that batch was not imported ({imported} devices before it were):",
                        rows.len(),
                        lines.first().copied().unwrap_or_default()
                    );
                    for row in rows.iter().take(50) {
                        let line = lines.get(row.row).copied().unwrap_or_default();
                        message.push_str(&format!("\n  line {line} ({}): {}: {}", row.key, row.field, row.message));
                    }
                    if rows.len() > 50 {
                        message.push_str(&format!("\n  … and {} more", rows.len() - 50));
                    }
                    bail!(message);
                }
                Err(other) => {
                    bail!("importing the batch from line {}: {other}", lines.first().copied().unwrap_or_default())
                }
            }
        }
        if record.is_none() {
            break;
        }
    }
    Ok(imported)
}

fn secrets_file(path: &Path) -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    Ok(std::io::BufWriter::new(file))
}
