//! The only code that starts Blender (with `super::session`, which drives one process). A [`Renderer`] turns
//! (blend file, frame) into an image file; the real one, [`BlenderRenderer`], runs Blender with
//! `--factory-startup --disable-autoexec`, so a stranger's .blend can never run Python on a volunteer whatever its
//! preferences say, and drives it with a small Python driver shipped inside this binary (`driver.py`). Blender's
//! exit code lies, so success means the driver said so *and* the file exists and is not empty; on failure the tail
//! of Blender's output goes into the error.
//!
//! By default one Blender per .blend and render slot stays open between frames, so start-up (about a second, and
//! most of a short frame) is paid once per job rather than once per frame. `--process-per-frame` restores the
//! start-per-frame behaviour for comparison and as a fallback.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::session::{Launch, Limits, Session};
use crate::protocol::VolunteerCaps;

#[derive(Debug, Clone)]
pub struct RenderRequest {
    pub blend: PathBuf,
    pub frame: u32,
    /// An empty folder for this frame's output.
    pub out_dir: PathBuf,
    /// Files the .blend references that may be missing (they are missing on the owner's machine too); any other
    /// missing file fails the frame rather than render it differently from the owner.
    pub allowed_missing: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RenderedFrame {
    pub path: PathBuf,
    /// The image format's extension, lower case, without a dot.
    pub ext: String,
    /// Files the scene's compositor File Output nodes wrote for this frame, with the names they get under the
    /// owner's render folder.
    pub outputs: Vec<(PathBuf, String)>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}{}", if tail.is_empty() { String::new() } else { format!("\n--- last lines of Blender's output ---\n{tail}") })]
pub struct RenderError {
    pub message: String,
    pub tail: String,
}

impl RenderError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), tail: String::new() }
    }
}

/// Something that renders one frame. Implementations: [`BlenderRenderer`], and `FakeRenderer` for tests.
pub trait Renderer: Send + Sync + 'static {
    fn render(&self, request: &RenderRequest) -> impl Future<Output = Result<RenderedFrame, RenderError>> + Send;

    /// Whether Eevee (OpenGL) renders here; `None` when the renderer cannot tell.
    fn probe_opengl(&self) -> impl Future<Output = Option<bool>> + Send {
        async { None }
    }
}

/// A shared renderer renders too, so tests can keep a handle on a fake one.
impl<R: Renderer> Renderer for std::sync::Arc<R> {
    fn render(&self, request: &RenderRequest) -> impl Future<Output = Result<RenderedFrame, RenderError>> + Send {
        (**self).render(request)
    }

    fn probe_opengl(&self) -> impl Future<Output = Option<bool>> + Send {
        (**self).probe_opengl()
    }
}

/// Options for [`BlenderRenderer`].
#[derive(Debug, Clone, Default)]
pub struct BlenderOptions {
    pub threads: Option<u32>,
    /// Start a new Blender for every frame instead of keeping one open per .blend.
    pub process_per_frame: bool,
    pub limits: Limits,
    /// Idle Blenders kept open (one per render slot is right).
    pub keep_open: usize,
    /// Cycles device: `CPU` (the default when empty), `CUDA`, `OPTIX`, `HIP`, `ONEAPI` or `METAL`.
    pub device: String,
}

/// Renders with real Blender, keeping idle processes per .blend for the next frame.
pub struct BlenderRenderer {
    launch: Launch,
    options: BlenderOptions,
    idle: Mutex<Vec<Session>>,
    caps: VolunteerCaps,
}

/// Prints what a Blender can do as one marked JSON line: version, build, OpenImageDenoise, Cycles devices.
const PROBE_PY: &str = r#"
import bpy, json
devices = ["CPU"]
try:
    prefs = bpy.context.preferences.addons["cycles"].preferences
    for kind in ("CUDA", "OPTIX", "HIP", "ONEAPI", "METAL"):
        try:
            if any(d.type == kind for d in prefs.get_devices_for_type(kind)):
                devices.append(kind)
        except Exception:
            pass
except Exception:
    pass
print("@@BLENDERDIST-CAPS@@ " + json.dumps({
    "blender": bpy.app.version_string,
    "build_hash": bpy.app.build_hash.decode(errors="replace"),
    "denoiser": bool(getattr(bpy.app.build_options, "openimagedenoise", False)),
    "devices": devices,
}))
"#;

/// Starts `program` once to learn its version and what it was built with (one second, at start), and checks that
/// it offers `device`.
async fn probe(program: &Path, device: &str) -> Result<VolunteerCaps, RenderError> {
    let device = if device.is_empty() { "CPU" } else { device };
    let output = tokio::process::Command::new(program)
        .args(["-b", "--factory-startup", "--disable-autoexec", "--python-expr", PROBE_PY])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| RenderError::new(format!("cannot run Blender at {}: {e}", program.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("@@BLENDERDIST-CAPS@@ "));
    #[derive(serde::Deserialize)]
    struct Probe {
        blender: String,
        build_hash: String,
        denoiser: bool,
        #[serde(default)]
        devices: Vec<String>,
    }
    let Some(found) = line.and_then(|l| serde_json::from_str::<Probe>(l).ok()) else {
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        return Err(RenderError::new(format!(
            "{} does not run as Blender ({}): {}",
            program.display(),
            output.status,
            tail.join(" | ")
        )));
    };
    if !found.devices.iter().any(|d| d == device) {
        return Err(RenderError::new(format!(
            "Blender {} at {} does not offer the Cycles device {device} on this machine; it offers: {}",
            found.blender,
            program.display(),
            found.devices.join(", ")
        )));
    }
    let (blender, build_hash, denoiser) = (found.blender, found.build_hash, found.denoiser);
    Ok(VolunteerCaps { blender, build_hash, device: device.to_string(), denoiser, opengl: None, name: None })
}

impl BlenderRenderer {
    /// Writes the driver into `work_dir` and checks that `program` runs.
    pub async fn new(program: PathBuf, options: BlenderOptions, work_dir: &Path) -> Result<Self, RenderError> {
        tokio::fs::create_dir_all(work_dir)
            .await
            .map_err(|e| RenderError::new(format!("cannot create {}: {e}", work_dir.display())))?;
        let driver = work_dir.join("blenderdist_driver.py");
        tokio::fs::write(&driver, crate::blender_scripts::DRIVER_PY)
            .await
            .map_err(|e| RenderError::new(format!("cannot write {}: {e}", driver.display())))?;
        let caps = probe(&program, &options.device).await?;
        let launch = Launch { program, driver, threads: options.threads, device: options.device.clone() };
        Ok(Self { launch, options, idle: Mutex::new(Vec::new()), caps })
    }

    /// What this Blender can do, measured at start.
    pub fn caps(&self) -> &VolunteerCaps {
        &self.caps
    }

    /// `--blender`, else `$BLENDER`, else `blender` on PATH.
    pub fn default_program(flag: Option<PathBuf>) -> PathBuf {
        flag.or_else(|| std::env::var_os("BLENDER").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("blender"))
    }

    /// An idle session on `blend`, if one is open.
    fn take_idle(&self, blend: &Path) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let at = idle.iter().position(|s| s.blend == blend)?;
        Some(idle.swap_remove(at))
    }

    /// Keeps a healthy session for the next frame; sessions beyond `keep_open` are closed, other .blends first.
    fn put_back(&self, session: Session) -> Vec<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let blend = session.blend.clone();
        idle.push(session);
        let keep = self.options.keep_open.max(1);
        let mut closed = Vec::new();
        while idle.len() > keep {
            let at = idle.iter().position(|s| s.blend != blend).unwrap_or(0);
            closed.push(idle.remove(at));
        }
        closed
    }
}

/// Renders an 8×8 Eevee frame and says whether it worked.
const OPENGL_PROBE_PY: &str = r#"
import bpy, os, sys, tempfile
s = bpy.context.scene
s.render.engine = "BLENDER_EEVEE"
s.render.resolution_x = s.render.resolution_y = 8
s.eevee.taa_render_samples = 1
s.render.filepath = os.path.join(tempfile.mkdtemp(), "probe.png")
try:
    bpy.ops.render.render(write_still=True)
    ok = os.path.getsize(s.render.filepath) > 0
except Exception:
    ok = False
print("@@BLENDERDIST-OPENGL@@ " + ("yes" if ok else "no"))
sys.stdout.flush()
"#;

impl Renderer for BlenderRenderer {
    /// Three seconds of Blender on a machine without a GPU: run once, in the background, after the volunteer starts.
    async fn probe_opengl(&self) -> Option<bool> {
        let run = tokio::process::Command::new(&self.launch.program)
            .args(["-b", "--factory-startup", "--disable-autoexec", "--python-expr", OPENGL_PROBE_PY])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(120), run).await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        Some(text.lines().any(|l| l == "@@BLENDERDIST-OPENGL@@ yes"))
    }

    async fn render(&self, request: &RenderRequest) -> Result<RenderedFrame, RenderError> {
        let mut session = match self.take_idle(&request.blend) {
            Some(session) => session,
            None => Session::start(&self.launch, &request.blend, &request.allowed_missing).await?,
        };
        let out_stem = request.out_dir.join(format!("frame_{:04}", request.frame));
        // Dropping this future (a recalled frame) drops the session, which kills its Blender.
        let result = session.render(request.frame, &out_stem, self.options.limits).await;
        let alive = match &result {
            Ok(_) => true,
            Err((_, alive)) => *alive,
        };
        if alive && !self.options.process_per_frame {
            for old in self.put_back(session) {
                old.close().await;
            }
        } else {
            session.close().await;
        }
        result.map_err(|(e, _)| e)
    }
}
