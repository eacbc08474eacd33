//! One integration-test binary (one link), as a list of modules.

mod common;

mod blender_e2e;
mod blender_faults;
mod bounded;
mod cli;
mod control;
mod dashboard;
mod deliver;
mod farm;
mod finish;
mod hostile;
mod lan;
mod peer_text;
mod private;
mod projects;
mod relay;
mod status;
mod swarm;
mod update;
mod upnp;
mod verify;
