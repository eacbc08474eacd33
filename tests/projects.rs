//! Real projects: .blend files that use textures, libraries, caches, fonts and other files beside them. The host
//! finds them with its Blender, volunteers that cannot see the owner's folders receive them and lay them out, and the
//! frames match what plain `blender -b -a` renders on the owner's machine, pixel for pixel.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use blenderdist::{protocol::VolunteerCaps, worker::fake::FakeRenderer};

use crate::{blender_e2e::*, common::*};

const LIMIT: Duration = Duration::from_secs(300);

/// Generates the artist's project under `dir` with `scripts/make_project.py`; returns the main .blend.
fn make_project(dir: &Path, kind: &str) -> PathBuf {
    let script = script("make_project.py");
    let out = Command::new("blender")
        .args(["-b", "--factory-startup", "--python-exit-code", "1", "--python", &script, "--"])
        .arg(dir)
        .args(["--kind", kind])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "make_project.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let main = stdout.lines().rev().find_map(|l| l.strip_prefix("MAIN: ")).expect("no MAIN: line");
    PathBuf::from(main.trim())
}

/// Blobs in a volunteer's cache.
fn cached_blobs(cache: &Path) -> usize {
    files_in(&cache.join("blobs")).iter().filter(|n| n.len() == 64).count()
}

fn job_log(dirs: &Dirs, job: &str) -> String {
    std::fs::read_to_string(dirs.jobdir.join(format!("{job}.log"))).unwrap_or_default()
}

/// A farm for one test: a host, and volunteers that can see neither JOBDIR, RENDERDIR nor the artist's folder.
struct TestFarm {
    _host: Proc,
    _volunteers: Vec<Proc>,
}

/// Renders frames 1..=`frames` of `blend` with plain `blender -b -a` (the baseline), then on a farm whose volunteers
/// (one per cache name, logging to `volunteer-NAME.log`) cannot see the owner's folders, and checks every frame
/// against the baseline. Returns the job log, and the farm (still running).
fn render_on_the_farm(dirs: &Dirs, artist: &Path, blend: &Path, frames: u32, caches: &[&str]) -> (String, TestFarm) {
    let baseline = dirs.root.path().join("baseline");
    render_baseline(blend, &baseline);
    let (host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path(), artist];
    let log = |c: &str| dirs.root.path().join(format!("volunteer-{c}.log"));
    let volunteers =
        caches.iter().map(|c| spawn_isolated_volunteer_logged(&hidden, &dirs.cache(c), &addr, &log(c))).collect();
    write_job(&dirs.jobdir, "shot", &blend.to_string_lossy(), 1, frames);
    let out = dirs.renderdir.join("shot");
    let names = frame_names(1, frames, "png");
    let done = || names.iter().all(|n| out.join(n).is_file());
    wait_until_blocking("every frame", LIMIT, || done() || job_log(dirs, "shot").contains("failed"));
    let log = job_log(dirs, "shot");
    assert!(done() && !log.contains("failed"), "{log}");
    assert_same_pixels(&baseline, &out, &names);
    (log, TestFarm { _host: host, _volunteers: volunteers })
}

/// A scene of `scripts/make_scene.py` in the artist's folder, changed by a line of Blender Python.
fn scene_with(dirs: &Dirs, expr: &str) -> (PathBuf, PathBuf) {
    let artist = dirs.root.path().join("artist");
    std::fs::create_dir_all(&artist).unwrap();
    let blend = artist.join("scene.blend");
    make_scene(&blend, 2, "32x24", 1);
    let expr = format!("import bpy; {expr}; bpy.ops.wm.save_mainfile()");
    blender(&["-b", &blend.to_string_lossy(), "--python-exit-code", "1", "--python-expr", &expr]);
    (artist, blend)
}

/// Renders a generated project (`make_project.py --kind KIND`) on the farm with two volunteers.
fn render_project_on_the_farm(kind: &str, frames: u32) -> (Dirs, String) {
    let dirs = Dirs::new();
    let artist = dirs.root.path().join("artist home");
    let main = make_project(&artist, kind);
    let (log, _farm) = render_on_the_farm(&dirs, &artist, &main, frames, &["a", "b"]);
    (dirs, log)
}

#[test]
fn a_project_with_external_files_of_every_kind_renders_as_blender_does() {
    if skip_without_blender() {
        return;
    }
    let (_dirs, log) = render_project_on_the_farm("all", 3);
    assert!(log.contains("carries "), "the job log should say what the job carries:\n{log}");
    for kind in ["image", "librar", "UDIM tile", "sequence file", "cache file", "font", "IES file"] {
        assert!(log.contains(kind), "the job log should count the {kind}:\n{log}");
    }
    assert!(log.contains("missing on the owner's machine too"), "the missing texture should be named:\n{log}");
}

#[test]
fn a_sequencer_project_renders_as_blender_does() {
    if skip_without_blender() {
        return;
    }
    let (_dirs, log) = render_project_on_the_farm("sequencer", 3);
    assert!(log.contains("carries "), "{log}");
}

#[test]
fn an_openvdb_volume_project_renders_as_blender_does() {
    if skip_without_blender() {
        return;
    }
    let (_dirs, log) = render_project_on_the_farm("volume", 2);
    assert!(log.contains("volume"), "{log}");
}

#[test]
fn paths_blender_lists_but_never_reads_do_not_fail_frames() {
    if skip_without_blender() {
        return;
    }
    let dirs = Dirs::new();
    // An unbaked fluid domain (its cache folder does not exist anywhere) and a text block saved from a file: Blender
    // lists both paths, neither is needed to render.
    std::fs::create_dir_all(dirs.root.path().join("artist")).unwrap();
    std::fs::write(dirs.root.path().join("artist").join("notes.py"), "# notes\n").unwrap();
    let (artist, blend) = scene_with(
        &dirs,
        "bpy.ops.mesh.primitive_cube_add(size=0.5, location=(5, 5, 5)); \
         m = bpy.context.object.modifiers.new('fluid', 'FLUID'); m.fluid_type = 'DOMAIN'; \
         t = bpy.data.texts.new('notes'); t.filepath = '//notes.py'; t.use_fake_user = True",
    );
    render_on_the_farm(&dirs, &artist, &blend, 2, &["a"]);
}

#[test]
fn compositor_file_outputs_come_back_beside_the_frames() {
    if skip_without_blender() {
        return;
    }
    let dirs = Dirs::new();
    // A File Output node writing the image and its alpha into //passes/beauty/ (as studios write passes).
    let (artist, blend) = scene_with(
        &dirs,
        "s = bpy.context.scene; s.use_nodes = True; t = s.node_tree; \
         rl = t.nodes['Render Layers']; fo = t.nodes.new('CompositorNodeOutputFile'); \
         fo.base_path = '//passes/beauty'; fo.format.file_format = 'PNG'; fo.file_slots.new('alpha_'); \
         t.links.new(rl.outputs['Image'], fo.inputs[0]); t.links.new(rl.outputs['Alpha'], fo.inputs[1])",
    );
    let (log, _farm) = render_on_the_farm(&dirs, &artist, &blend, 2, &["a"]);
    let owners = artist.join("passes").join("beauty");
    let names = files_in(&owners);
    assert_eq!(names, ["Image0001.png", "Image0002.png", "alpha_0001.png", "alpha_0002.png"], "plain Blender wrote");
    // The node's files, under their own names, as plain Blender wrote them on the owner's machine.
    let out = dirs.renderdir.join("shot");
    wait_until_blocking("the node's files", LIMIT, || files_in(&out.join("beauty")) == names);
    assert_eq!(files_in(&out), ["0001.png", "0002.png", "beauty"], "{log}");
    assert_same_pixels(&owners, &out.join("beauty"), &names);
}

#[test]
fn a_fluid_domain_renders_from_its_baked_cache_as_blender_does() {
    if skip_without_blender() {
        return;
    }
    let (_dirs, log) = render_project_on_the_farm("fluid", 2);
    assert!(log.contains("cache folder"), "{log}");
}

#[test]
fn an_image_sequence_of_thousands_of_files_travels_and_lays_out() {
    if skip_without_blender() {
        return;
    }
    let dirs = Dirs::new();
    let seq = dirs.root.path().join("artist").join("seq");
    std::fs::create_dir_all(&seq).unwrap();
    for i in 1..=2000 {
        write_png(&seq.join(format!("f_{i:04}.png")), [(i % 256) as u8, (i / 256) as u8, 90]);
    }
    let (artist, blend) = scene_with(
        &dirs,
        "i = bpy.data.images.load('//seq/f_0001.png'); i.source = 'SEQUENCE'; i.use_fake_user = True",
    );
    let (log, _farm) = render_on_the_farm(&dirs, &artist, &blend, 2, &["a"]);
    assert!(log.contains("2000 sequence files"), "{log}");
    assert!(cached_blobs(&dirs.cache("a")) >= 2001, "the sequence did not travel");
}

#[test]
fn an_eevee_scene_renders_as_blender_does_and_volunteers_say_eevee_works() {
    if skip_without_blender() {
        return;
    }
    let dirs = Dirs::new();
    let (artist, blend) =
        scene_with(&dirs, "s = bpy.context.scene; s.render.engine = 'BLENDER_EEVEE'; s.eevee.taa_render_samples = 4");
    let (_log, _farm) = render_on_the_farm(&dirs, &artist, &blend, 2, &["a"]);
    // The volunteer also found, in the background, that Eevee works here.
    let log = dirs.root.path().join("volunteer-a.log");
    wait_until_blocking("the volunteer's OpenGL probe", LIMIT, || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("Eevee and Workbench render here")
    });
}

#[test]
fn a_changed_texture_restarts_the_job_and_only_the_texture_travels_again() {
    if skip_without_blender() {
        return;
    }
    let dirs = Dirs::new();
    let artist = dirs.root.path().join("artist");
    let main = make_project(&artist, "textures");
    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path(), artist.as_path()];
    let cache = dirs.cache("a");
    let _a = spawn_isolated_volunteer(&hidden, &cache, &addr, &[]);
    write_job(&dirs.jobdir, "shot", &main.to_string_lossy(), 1, 2);
    let out = dirs.renderdir.join("shot");
    let names = frame_names(1, 2, "png");
    wait_until_blocking("both frames", LIMIT, || files_in(&out) == names);
    wait_until_blocking("the finished line", LIMIT, || job_log(&dirs, "shot").contains("finished"));
    let before = cached_blobs(&cache);

    // The artist repaints one texture.
    let texture = main.parent().unwrap().join("textures").join("wood.png");
    assert!(texture.is_file(), "the project has no {}", texture.display());
    write_png(&texture, [250, 20, 200]);
    wait_until_blocking("the restart", LIMIT, || job_log(&dirs, "shot").contains("restarted"));
    wait_until_blocking("the second finished line", LIMIT, || job_log(&dirs, "shot").matches("finished").count() >= 2);

    // The new frames show the new texture, as plain Blender renders it now.
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&main, &baseline);
    assert_same_pixels(&baseline, &out, &names);
    // Only the texture and the job's new manifest travelled.
    assert_eq!(cached_blobs(&cache), before + 2, "more than the changed texture was fetched again");
    // And the new version was laid out over the old one (only its images replaced), so the Blender already open on
    // the scene rendered it, with the new texture reloaded.
    let layouts: Vec<String> = files_in(&cache.join("projects")).into_iter().filter(|n| !n.starts_with('.')).collect();
    assert_eq!(layouts.len(), 1, "{layouts:?}");
}

/// A solid 16x16 PNG.
fn write_png(path: &Path, rgb: [u8; 3]) {
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 16, 16);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&rgb.repeat(256)).unwrap();
    writer.finish().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn caps(version: &str) -> Option<VolunteerCaps> {
    Some(VolunteerCaps {
        blender: version.into(),
        build_hash: "test".into(),
        device: "CPU".into(),
        denoiser: false,
        opengl: None,
        name: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_saved_by_a_newer_blender_waits_for_a_volunteer_that_can_open_it() {
    let dirs = Dirs::new();
    // The header of a file saved by Blender 4.3 (the rest does not matter to the fake renderer).
    let bytes = b"BLENDER-v403REND\0\0\0\0 not a real scene".to_vec();
    std::fs::write(dirs.jobdir.join("new.blend"), &bytes).unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    let addr = host.addrs[0].clone();
    let old = std::sync::Arc::new(FakeRenderer::new(Duration::from_millis(10)));
    let (_a, _stop_a) = start_fake_worker_with(dirs.cache("a"), addr.clone(), old.clone(), caps("3.4.1"));
    write_job(&dirs.jobdir, "shot", "new.blend", 1, 3);

    let log_says = |text: &str| job_log(&dirs, "shot").contains(text);
    let want = "waiting: no volunteer can render it: saved by Blender 4.3; volunteers have Blender 3.4.1";
    wait_until("the waiting line", LIMIT, || log_says(want)).await;
    assert!(log_says("no Blender on the owner's machine"), "{}", job_log(&dirs, "shot"));
    assert!(old.frames().is_empty(), "a volunteer with Blender 3.4 was given a 4.3 file");
    assert_eq!(job_log(&dirs, "shot").matches("waiting:").count(), 1, "said more than once");

    let (_b, _stop_b) = start_fake_worker_with(dirs.cache("b"), addr, FakeRenderer::new(Duration::ZERO), caps("4.3.2"));
    let out = dirs.renderdir.join("shot");
    wait_until("the frames, from the newer volunteer", LIMIT, || files_in(&out) == frame_names(1, 3, "png")).await;
    assert!(old.frames().is_empty(), "a volunteer with Blender 3.4 was given a 4.3 file");
}
