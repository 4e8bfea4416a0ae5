//! Secrets generated on first start into the data dir, for single-node
//! setups that configured none. Replicas must share them: configure one.

use std::path::Path;

use anyhow::Context;
use rand::RngCore;

/// Read `<data_dir>/<file>`, or create it with 48 random bytes (hex) and
/// log a warning naming `config_key` (never the secret).
pub fn load_or_generate(data_dir: &Path, file: &str, config_key: &str) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(file);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(text.trim().as_bytes().to_vec());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "no {config_key} configured: generated a random secret; configure one shared by every replica for production"
    );
    Ok(secret.into_bytes())
}

/// Create a file readable by its owner only; fails if it exists (no races
/// between two starting processes overwriting each other's secret).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}
