//! The node's ed25519 key, kept on disk so that its peer id survives restarts.

use std::{io::Write, path::Path};

use libp2p::identity::Keypair;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the node key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the node key {path} is corrupt ({reason}); move it away to make a new identity")]
    Corrupt { path: String, reason: String },
    #[error("cannot write the node key {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Loads the key at `path`, or makes a new one and writes it there (mode 0600, written whole then renamed).
pub fn load_or_create(path: &Path) -> Result<Keypair, KeyError> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| KeyError::Corrupt { path: shown, reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| KeyError::Corrupt { path: shown.clone(), reason: e.to_string() })?;
            write_private(path, &bytes).map_err(|source| KeyError::Write { path: shown, source })?;
            Ok(key)
        }
        Err(source) => Err(KeyError::Read { path: shown, source }),
    }
}

/// Writes `bytes` to `path` readable by its owner only (mode 0600), whole then renamed.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_survives_reload_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::write(&path, b"junk").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("node.key") && err.contains("corrupt"), "{err}");
    }
}
