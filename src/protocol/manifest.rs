//! The job manifest: every file a job needs, by content hash, and the rules a volunteer checks before it lays the
//! files out. Part of [`crate::protocol`]; split out because it is the one wire type with rules of its own.

use serde::{Deserialize, Serialize};

use super::{BlobHash, MAX_BLOB_SIZE, MAX_PROJECT_FILES, MAX_PROJECT_PATH};

/// Every file a job needs, by content hash: the .blend and the external files it references (textures, libraries,
/// caches, fonts...), each under the absolute path it has on the owner's machine. A volunteer lays the files out
/// under a private folder of its own at those paths (see docs/ARCHITECTURE.md), so the .blend's relative paths
/// resolve as on the owner's machine; absolute paths inside .blend files are rewritten to point there.
///
/// Served as a blob; its hash is the job's version, so a change to any file it lists restarts the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobManifest {
    pub blend: ProjectFile,
    pub files: Vec<ProjectFile>,
    /// Files the .blend references that are missing on the owner's machine too: the owner's own render lacks them
    /// as well, so volunteers render without them.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectFile {
    /// Absolute, `/`-separated path on the owner's machine.
    pub path: String,
    pub hash: BlobHash,
    pub size: u64,
    pub kind: FileKind,
}

/// What a project file is; only [`FileKind::Blend`] and [`FileKind::Library`] are treated differently (their
/// absolute paths are rewritten). Unknown kinds from newer owners read as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Blend,
    Library,
    Image,
    Udim,
    Sequence,
    Movie,
    Cache,
    Sound,
    Font,
    Ies,
    Volume,
    Alembic,
    Script,
    #[serde(other)]
    Other,
}

impl FileKind {
    /// Whether Blender reads the file as a .blend (and so may hold absolute paths to rewrite).
    pub fn is_blend(self) -> bool {
        matches!(self, FileKind::Blend | FileKind::Library)
    }
}

/// Why a [`JobManifest`] from the network is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the job manifest lists {0} files, over the limit of {MAX_PROJECT_FILES}")]
    TooManyFiles(usize),
    #[error("the job manifest names an unusable path {0:?}: {1}")]
    BadPath(String, &'static str),
    #[error("the job manifest lists {0:?} twice, or as both a file and a folder")]
    Clash(String),
    #[error("the job manifest lists a {size}-byte file {path:?}, over the limit")]
    TooLarge { path: String, size: u64 },
}

impl JobManifest {
    /// Every file, the .blend first.
    pub fn all_files(&self) -> impl Iterator<Item = &ProjectFile> {
        std::iter::once(&self.blend).chain(self.files.iter())
    }

    /// Checks what a volunteer must rely on before laying the files out: every path absolute, made of plain
    /// components (no `.`, `..`, empty or NUL parts), within the length limit, and no path listed twice or under
    /// another file. A path that passes can be joined under a private folder without leaving it.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.files.len() > MAX_PROJECT_FILES || self.missing.len() > MAX_PROJECT_FILES {
            return Err(ManifestError::TooManyFiles(self.files.len().max(self.missing.len())));
        }
        let mut paths: Vec<&str> = Vec::with_capacity(self.files.len() + 1);
        for file in self.all_files() {
            project_path_components(&file.path)?;
            if file.size > MAX_BLOB_SIZE {
                return Err(ManifestError::TooLarge { path: file.path.clone(), size: file.size });
            }
            paths.push(&file.path);
        }
        if self.missing.iter().any(|p| p.len() > MAX_PROJECT_PATH) {
            return Err(ManifestError::BadPath("(a missing file)".into(), "too long"));
        }
        // Sorted, a file that is also a folder of another sits right before its first child.
        paths.sort_unstable();
        for pair in paths.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a == b || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('/')) {
                return Err(ManifestError::Clash(a.to_string()));
            }
        }
        Ok(())
    }
}

/// The components of an absolute project path, refusing any that could leave the folder it is joined under.
pub fn project_path_components(path: &str) -> Result<Vec<&str>, ManifestError> {
    let bad = |why| ManifestError::BadPath(path.chars().take(200).collect(), why);
    if path.len() > MAX_PROJECT_PATH {
        return Err(bad("too long"));
    }
    let Some(rest) = path.strip_prefix('/') else { return Err(bad("not absolute")) };
    let parts: Vec<&str> = rest.split('/').collect();
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(bad("empty, '.' or '..' component"));
        }
        if part.contains('\0') || part.len() > 255 {
            return Err(bad("NUL in a component, or a component over 255 bytes"));
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(paths: &[&str]) -> JobManifest {
        let file = |path: &str, kind| ProjectFile {
            path: path.into(),
            hash: BlobHash::of_bytes(path.as_bytes()),
            size: 1,
            kind,
        };
        JobManifest {
            blend: file("/p/shot.blend", FileKind::Blend),
            files: paths.iter().map(|p| file(p, FileKind::Image)).collect(),
            missing: vec![],
        }
    }

    #[test]
    fn only_plain_absolute_paths_pass() {
        // (files besides the .blend, accepted?)
        let table: &[(&[&str], bool)] = &[
            (&["/p/tex/wood.png", "/shared/ü ñ/x.png"], true),
            (&["/p/tex/../../etc/passwd"], false),
            (&["relative/x.png"], false),
            (&["/p//x.png"], false),
            (&["/p/./x.png"], false),
            (&["/p/x\0.png"], false),
            (&["/p/tex", "/p/tex/wood.png"], false),
            (&["/p/x.png", "/p/x.png"], false),
            (&["/p/shot.blend"], false),
            (&["/p/tex", "/p/tex2/a.png"], true),
        ];
        for (paths, ok) in table {
            assert_eq!(manifest(paths).validate().is_ok(), *ok, "{paths:?}");
        }
        let long = format!("/{}", "a/".repeat(MAX_PROJECT_PATH));
        assert!(manifest(&[&long]).validate().is_err());
        let mut big = manifest(&[]);
        big.missing = vec!["/x".into(); MAX_PROJECT_FILES + 1];
        assert_eq!(big.validate(), Err(ManifestError::TooManyFiles(MAX_PROJECT_FILES + 1)));
    }

    #[test]
    fn unknown_kinds_read_as_other() {
        #[derive(Serialize)]
        struct Newer {
            path: String,
            hash: BlobHash,
            size: u64,
            kind: String,
        }
        let bytes = crate::protocol::to_cbor(&Newer {
            path: "/p/x.gltf".into(),
            hash: BlobHash::of_bytes(b"x"),
            size: 1,
            kind: "gltf".into(),
        })
        .unwrap();
        let file: ProjectFile = crate::protocol::from_cbor(&bytes, 1024).unwrap();
        assert_eq!(file.kind, FileKind::Other);
    }
}
