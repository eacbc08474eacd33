//! blenderdist: a peer-to-peer render farm for Blender.
//!
//! # Layout
//! - [`blender_scripts`]: the Python run inside Blender (render driver, dependency tracer), embedded.
//! - [`blendfile`]: reads .blend files without Blender: the version that saved one, and rewriting absolute paths.
//! - [`cli`]: the command line (clap), and the conversion of its addresses into multiaddrs.
//! - [`protocol`]: every wire type, the protocol names and the size limits.
//! - [`net`]: the one event loop that owns the libp2p swarm, and the `Client` handle the rest of the code uses.
//! - [`scheduler`]: pure state of jobs, frames and leases; inputs in, decisions out, no I/O.
//! - [`relay`]: `blenderdist relay`: a node that only relays, for owners behind home routers.
//! - [`status`]: `blenderdist status`: asks a host what its farm does and prints it.
//! - [`store`]: durable host state (redb), the content-addressed blob store, node keys.
//! - [`host`]: the owner: watches the job folder, runs the scheduler, answers volunteers, writes frames.
//! - [`worker`]: the volunteer: claims frames, fetches blobs, renders, returns results.
//! - [`worker::blender`]: the only code that starts Blender.
//! - [`update`]: self-update: signed manifests, the owner's relaunch, volunteers fetching and switching builds.

pub mod blender_scripts;
pub mod blendfile;
pub mod cli;
pub mod generate;
pub mod host;
pub mod net;
pub mod protocol;
pub mod relay;
pub mod scheduler;
pub mod status;
pub mod store;
pub mod update;
pub mod worker;
