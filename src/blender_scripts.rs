//! The Python that blenderdist runs inside Blender, embedded in the binary: the volunteer's render driver and the
//! owner's dependency tracer. Here rather than in `worker` and `host`, because the self-update check (`update`)
//! makes sure a new build carries both.

/// Renders frame after frame of one .blend on a volunteer (see `worker::session`).
pub const DRIVER_PY: &str = include_str!("worker/driver.py");
/// Lists every file a .blend needs, on the owner's machine (see `host::trace`).
pub const DEPS_PY: &str = include_str!("host/deps.py");
/// A line each script prints for blenderdist starts with this.
pub const DRIVER_MARK: &str = "@@BLENDERDIST@@";
