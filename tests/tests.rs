//! One integration-test binary (one link), as a list of modules.

mod common;

mod blender_e2e;
mod cli;
mod farm;
mod hostile;
mod lan;
