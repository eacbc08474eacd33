//! A fresh ext4 file system for a benchmark's on-disk folders: a sparse image file in the benchmark's temp folder,
//! formatted with mkfs.ext4's defaults (a journal, as on an owner's desktop) and mounted through a loop device.
//!
//! This VM's root file system is ext4 without a journal. There, creating a file skips every inode of its block group
//! freed in the last 5-300 s (perf: `recently_deleted`), so a run that followed another benchmark's clean-up, or
//! cargo's churn, paid 30-40 % more host CPU per stored frame in the kernel than the same run minutes later: the
//! figures measured what ran before, not the farm. A file system made for the run has nothing deleted in it. Its
//! writes and fsyncs still reach the disk (the loop device fsyncs its backing file). Needs root, mkfs.ext4 and loop
//! devices; without them the benchmark uses its temp folder as it is and says so.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _};

pub struct LoopDisk {
    image: PathBuf,
    mount: PathBuf,
}

impl LoopDisk {
    /// Image size: sparse, so only what the run writes takes space.
    const SIZE: u64 = 8 << 30;

    /// A fresh, mounted file system under `tmp`, or why there is none.
    pub fn make(tmp: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(tmp)?;
        let stamp =
            format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().map(|d| d.as_nanos()).unwrap_or(0));
        let (image, mount) = (tmp.join(format!("disk-{stamp}.img")), tmp.join(format!("disk-{stamp}")));
        std::fs::File::create(&image)?.set_len(Self::SIZE)?;
        let made = Self { image, mount };
        std::fs::create_dir_all(&made.mount)?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&made.image))?;
        run(Command::new("mount").args(["-o", "loop"]).arg(&made.image).arg(&made.mount))?;
        Ok(made)
    }

    pub fn dir(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("   kept {} mounted on {}", self.image.display(), self.mount.display());
            return;
        }
        // Lazily if something still holds a file open; the image goes either way (its blocks with the last user).
        if run(Command::new("umount").arg(&self.mount)).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let what = format!("{command:?}");
    let out = command.output().with_context(|| format!("cannot run {what}"))?;
    ensure!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}
