//! One owner per JOBDIR: a host holds an exclusive lock on `JOBDIR/.blenderdist-host.lock` for as long as it runs.
//! A second host on the same folder waits as a standby and takes over when the lock is released — which the
//! operating system does when the first one exits or dies, even by SIGKILL.

use std::{fs::File, path::Path, time::Duration};

use anyhow::Context as _;
use tracing::info;

/// How often a standby host checks whether the owner has gone.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// A standby host was asked to stop before it became the owner.
#[derive(Debug, thiserror::Error)]
#[error("stopped while waiting as a standby")]
pub struct StoppedAsStandby;

/// Holds the lock; dropping it releases the folder.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

/// Takes ownership of `jobdir`, waiting as a standby while another host holds it.
pub async fn acquire(jobdir: &Path) -> anyhow::Result<OwnerLock> {
    let path = jobdir.join(".blenderdist-host.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the owner lock {}", path.display()))?;
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                if announced {
                    info!("the other host on {} is gone; taking over", jobdir.display());
                }
                return Ok(OwnerLock { _file: file });
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                if !announced {
                    info!("another host owns {}; waiting as a standby", jobdir.display());
                    announced = true;
                }
                tokio::time::sleep(STANDBY_POLL).await;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}
