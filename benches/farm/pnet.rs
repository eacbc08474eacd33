//! Private farm overhead: what the swarm key (libp2p pnet: XSalsa20 under noise, see `net::private`) costs a blob
//! transfer. A 512 MiB file (256 MiB with --quick) of pseudo-random bytes is fetched over `/blenderdist/blob/1`
//! between two connected `blenderdist::net::spawn` nodes, from an open pair and from a private pair (both nodes
//! holding the same key), in the same run, alternating, three times each (once with --quick); the fastest of each
//! counts. Both the production path (into a `BlobStore`: hash, write, fsync, rename) and the stream read into memory
//! (transport only, where the extra cipher shows most) are measured. Both ends run in this one process, so they
//! share the machine's cores, and each end pays the cipher once per byte.
//!
//! No goal: a comparison (issue 10 asks for the figure, not a bound), reported as a ratio.

use std::time::Duration;

use blenderdist::{
    net::SwarmKey,
    store::blobs::{hash_file, BlobStore},
};

use crate::{
    blob::{rate, write_source, BlobPair},
    common::{note, row, Opts},
};

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let size: u64 = if opts.quick { 256 << 20 } else { 512 << 20 };
    let rounds = if opts.quick { 1 } else { 3 };
    let dir = opts.temp_dir("pnet")?;
    let src = dir.path().join("source.bin");
    eprintln!("   writing {} MiB of test data", size >> 20);
    write_source(src.clone(), size).await?;
    let (hash, _) = hash_file(&src).await?;
    let open = BlobPair::start(dir.path(), hash, &src, None).await?;
    let private = BlobPair::start(dir.path(), hash, &src, Some(SwarmKey::generate())).await?;
    let store = BlobStore::open(dir.path().join("store"))?;

    let mut best = [[Duration::MAX; 2]; 2]; // [open, private] × [store, memory]
    for round in 1..=rounds {
        for (i, (name, pair)) in [("open", &open), ("private", &private)].into_iter().enumerate() {
            let t = pair.fetch(&store, hash).await?;
            std::fs::remove_file(store.path(&hash))?;
            let m = pair.fetch_to_memory(hash, size).await?;
            eprintln!("   round {round}: {name} fetch {}, into memory {}", rate(size, t), rate(size, m));
            best[i][0] = best[i][0].min(t);
            best[i][1] = best[i][1].min(m);
        }
    }
    let ratio = |k: usize| best[0][k].as_secs_f64() / best[1][k].as_secs_f64();
    row(
        &format!("Private farm: {} MiB blob fetch with pnet ÷ without (open farm)", size >> 20),
        &rate(size, best[1][0]),
        &rate(size, best[0][0]),
        &format!("{:.3}", ratio(0)),
        "none (a comparison)",
        "-",
    );
    note(&format!(
        "Private farm, the blob stream read into memory (no hash, no disk; the transport alone) in the same run: \
         with pnet {}, without {} (ratio {:.3}).",
        rate(size, best[1][1]),
        rate(size, best[0][1]),
        ratio(1),
    ));
    Ok(())
}
