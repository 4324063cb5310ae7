//! Content hashes of the files a run depends on (data, base weights, adapters), for the
//! manifests that record them.

use sha2::{Digest, Sha256};
use std::path::Path;

/// The file's sha256 (lowercase hex) and its size in bytes, read in one pass.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let bytes = std::io::copy(&mut f, &mut h)?;
    Ok((format!("{:x}", h.finalize()), bytes))
}
