//! File reads and writes off the async runtime, in batches: each batch is one trip to a blocking thread, which opens
//! the file on the first. A frame of a few hundred KiB is then received in one trip (create, write, fsync) and sent
//! in one (open, read), where `tokio::fs` makes a trip per call and per 64 KiB; with hundreds of volunteers every
//! trip is a thread wake-up on the host.

use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

/// Bytes moved per trip to a blocking thread, and so the most one transfer holds in memory besides its network
/// buffer.
pub const BATCH: usize = 256 * 1024;

/// Writes a new file in batches; the file is created with the first batch and fsynced with the last.
pub struct BatchWriter {
    path: PathBuf,
    /// Fail if the file exists (temp names that must be unique) rather than truncate it.
    create_new: bool,
    file: Option<File>,
}

impl BatchWriter {
    pub fn new(path: &Path, create_new: bool) -> Self {
        Self { path: path.to_path_buf(), create_new, file: None }
    }

    /// Appends `bytes` (a batch before the last); gives the buffer back, emptied, for the next batch.
    pub async fn write(&mut self, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let (path, create_new, file) = (self.path.clone(), self.create_new, self.file.take());
        let trip = tokio::task::spawn_blocking(move || {
            let mut file = open(file, &path, create_new)?;
            file.write_all(&bytes)?;
            Ok::<_, io::Error>((file, bytes))
        });
        let (file, mut bytes) = trip.await.map_err(io::Error::other)??;
        self.file = Some(file);
        bytes.clear();
        Ok(bytes)
    }

    /// Appends the last `bytes`, fsyncs the file, then runs `then` in the same trip to the blocking thread, with the
    /// file's path and, when this batch was the whole file, its bytes (so a small file can be read back without a
    /// second trip or a read).
    pub async fn finish<T: Send + 'static>(
        self,
        bytes: Vec<u8>,
        then: impl FnOnce(&Path, Option<&[u8]>) -> T + Send + 'static,
    ) -> io::Result<T> {
        let Self { path, create_new, file } = self;
        let trip = tokio::task::spawn_blocking(move || {
            let whole = file.is_none();
            let mut file = open(file, &path, create_new)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            Ok::<_, io::Error>(then(&path, whole.then_some(bytes.as_slice())))
        });
        trip.await.map_err(io::Error::other)?
    }
}

/// The file a writer's earlier batches opened, or the new file at `path`.
fn open(file: Option<File>, path: &Path, create_new: bool) -> io::Result<File> {
    match file {
        Some(file) => Ok(file),
        None if create_new => std::fs::OpenOptions::new().write(true).create_new(true).open(path),
        None => File::create(path),
    }
}

/// Reads a file in batches of up to [`BATCH`] bytes; the file is opened with the first.
pub struct BatchReader {
    path: PathBuf,
    file: Option<File>,
}

impl BatchReader {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), file: None }
    }

    /// The next batch into `buf` (replacing its contents); an empty `buf` means the end of the file.
    pub async fn read(&mut self, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        let (path, file) = (self.path.clone(), self.file.take());
        let trip = tokio::task::spawn_blocking(move || {
            let file = match file {
                Some(file) => file,
                None => File::open(&path)?,
            };
            buf.clear();
            let mut limited = file.take(BATCH as u64);
            limited.read_to_end(&mut buf)?;
            Ok::<_, io::Error>((limited.into_inner(), buf))
        });
        let (file, buf) = trip.await.map_err(io::Error::other)??;
        self.file = Some(file);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_write_and_read_back_a_file_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join(format!("{len}"));
            let mut writer = BatchWriter::new(&path, true);
            let mut chunks: Vec<&[u8]> = data.chunks(BATCH).collect();
            let last = chunks.pop().unwrap_or_default().to_vec();
            let mut buf = Vec::new();
            for chunk in &chunks {
                buf.extend_from_slice(chunk);
                buf = writer.write(buf).await.unwrap();
            }
            // `then` runs after the fsync, and has the bytes only when the last batch was the whole file.
            let whole = writer.finish(last, |p, whole| (std::fs::read(p).unwrap(), whole.map(<[u8]>::to_vec))).await;
            let (read_back, whole) = whole.unwrap();
            assert_eq!(read_back, data, "{len}");
            assert_eq!(whole.is_some(), data.len() <= BATCH, "{len}");
            assert_eq!(std::fs::read(&path).unwrap(), data, "{len}");
            // A second writer must not replace a file it was to create.
            assert!(BatchWriter::new(&path, true).finish(Vec::new(), |_, _| ()).await.is_err());

            let mut reader = BatchReader::new(&path);
            let mut back = Vec::new();
            let mut buf = Vec::new();
            loop {
                buf = reader.read(buf).await.unwrap();
                if buf.is_empty() {
                    break;
                }
                assert!(buf.len() <= BATCH);
                back.extend_from_slice(&buf);
            }
            assert_eq!(back, data, "{len}");
        }
        assert!(BatchReader::new(&dir.path().join("missing")).read(Vec::new()).await.is_err());
    }
}
