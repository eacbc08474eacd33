//! What survives on disk: the owner's durable job state, content-addressed blobs, and node keys.

pub mod blobs;
pub mod disk;
pub mod keys;
pub mod state;
