"""blenderdist render driver: one Blender process serves many frame requests.

Shipped inside the worker binary and run as (order matters):

    blender -b --factory-startup --disable-autoexec FILE.blend \
        --python-exit-code 1 --python driver.py -- [--threads N]

Blender applies its options left to right: the .blend must be loaded before
--python runs us, and --python-exit-code must precede --python to take effect.
--disable-autoexec only blocks scripts stored in the .blend; this script runs.

Protocol (stdout lines we own start with MARK; everything else is Blender noise):
  start:    MARK {"ready": true, "blender": "3.4.1", "format": "PNG", "ext": "png",
                  "missing_files": [...], ...}
            or MARK {"ready": false, "error": "..."} and exit 1
  request:  one JSON object per stdin line: {"frame": 12, "out": "/abs/dir/stem"}
  answer:   MARK {"frame": 12, "ok": true, "path": "/abs/dir/stem.png", "ext": "png", "seconds": 1.23}
            or MARK {"frame": 12, "ok": false, "error": "..."}
  EOF on stdin: exit 0 (failed frames are reported per request, not in the status).
"""

import argparse
import ctypes
import glob
import json
import os
import re
import sys
import time

import bpy

MARK = "@@BLENDERDIST@@"

try:
    # Blender's C code prints progress through C stdio, which is block-buffered
    # on a pipe; flushing it before each of our lines keeps ours whole and in order.
    _libc = ctypes.CDLL(None)
except OSError:  # e.g. Windows, where CDLL(None) is not available
    _libc = None


def emit(obj):
    if _libc is not None:
        try:
            _libc.fflush(None)
        except Exception:
            pass
    sys.stdout.write(MARK + " " + json.dumps(obj, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def fail_startup(message, code=1):
    emit({"ready": False, "error": message})
    # sys.exit inside --python ends Blender at once with this status.
    sys.exit(code)


class Args(argparse.ArgumentParser):
    def error(self, message):
        fail_startup("driver arguments: " + message, 2)


def parse_args():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    p = Args(prog="driver.py", add_help=False)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="CPU",
                   choices=["CPU", "CUDA", "OPTIX", "HIP", "ONEAPI", "METAL"])
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 0:
        p.error("--threads must be >= 0 (0: all cores)")
    return args


def missing_files():
    """External files the .blend needs that are absent (packed files are skipped)."""
    missing = set()
    # A text's content is saved in the .blend; Blender's session folder is new for every run.
    texts = {os.path.normpath(bpy.path.abspath(t.filepath, library=t.library))
             for t in bpy.data.texts if t.filepath}
    temp = os.path.normpath(bpy.app.tempdir) if bpy.app.tempdir else None
    # packed=False leaves out packed data, local=False keeps linked libraries.
    for path in bpy.utils.blend_paths(absolute=True, packed=False, local=False):
        if not path or path.startswith("<builtin>"):
            continue
        path = os.path.normpath(path)
        if path in texts or (temp and (path == temp or path.startswith(temp + os.sep))):
            continue
        if "<UDIM>" in path or "<UVTILE>" in path:
            # Tiled textures: any tile on disk counts as present.
            pattern = re.sub(r"<UDIM>|<UVTILE>", "*", glob.escape(path))
            if glob.glob(pattern):
                continue
        elif os.path.exists(path):
            continue
        missing.add(path)
    return sorted(missing)


def use_device(scene, device):
    """Render Cycles on the volunteer's chosen device (the worker checked at
    start that Blender offers it). CPU is set explicitly too: a scene saved
    for the artist's GPU would otherwise ask for one."""
    if device == "CPU":
        scene.cycles.device = "CPU"
        return
    prefs = bpy.context.preferences.addons["cycles"].preferences
    prefs.compute_device_type = device
    prefs.get_devices()
    for d in prefs.devices:
        d.use = d.type == device
    scene.cycles.device = "GPU"


def prepare(scene):
    """Make the scene write one still image per request to exactly our path."""
    r = scene.render
    if r.is_movie_format:
        # A movie container cannot be built frame by frame across machines;
        # frames travel as PNG and are assembled later.
        r.image_settings.file_format = "PNG"
    # We give write_still a path that already ends in the format's extension
    # (the stem, frame_NNNN, has none Blender would replace), so the name
    # written is the one we report. The setting stays on because compositor
    # File Output nodes follow it: off, their files would have no extension.
    r.use_file_extension = True


# What each image's files looked like when last seen: (path, inode, mtime, size) per file.
_image_files_seen = {}


def image_files(img):
    """The files an image data-block reads: one, every tile, or every file of its sequence's folder."""
    path = os.path.normpath(bpy.path.abspath(img.filepath, library=img.library))
    if img.source == "TILED" or "<UDIM>" in path or "<UVTILE>" in path:
        return sorted(glob.glob(re.sub(r"<UDIM>|<UVTILE>", "*", glob.escape(path))))
    if img.source == "SEQUENCE":
        folder = os.path.dirname(path)
        try:
            return sorted(os.path.join(folder, n) for n in os.listdir(folder))
        except OSError:
            return []
    return [path]


def signature(files):
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((f, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((f, None, None, None))
    return tuple(out)


def reload_changed_images():
    """The worker replaces a job's images in place when only they changed in a new version, and keeps this Blender
    open on the same .blend: reload every image whose files are not the ones it was loaded from."""
    for img in bpy.data.images:
        if img.packed_file or img.source not in {"FILE", "SEQUENCE", "TILED"} or not img.filepath:
            continue
        key = (img.name, img.library.filepath if img.library else "")
        seen = signature(image_files(img))
        before = _image_files_seen.get(key)
        _image_files_seen[key] = seen
        if before is not None and before != seen:
            img.reload()


def redirect_file_outputs(scene, out_dir):
    """Compositor File Output nodes write where their own path says, often
    next to the .blend: on a volunteer that is the job's cached files. Point
    every one of them into this frame's private folder instead."""
    tree = scene.node_tree if scene.use_nodes else None
    if tree is None:
        return
    for i, node in enumerate(n for n in tree.nodes if n.type == "OUTPUT_FILE"):
        if node.mute:
            continue
        # Keep the name part of the node's path ("//render/passes_" writes passes_0001.exr), drop its folder.
        prefix = os.path.basename(node.base_path.replace("\\", "/"))
        node.base_path = os.path.join(out_dir, "file_outputs", str(i), prefix)


def render_one(scene, req):
    frame = req.get("frame")
    out = req.get("out")
    if not isinstance(frame, int) or isinstance(frame, bool):
        raise ValueError("'frame' must be an integer")
    if not isinstance(out, str) or not os.path.isabs(out):
        raise ValueError("'out' must be an absolute path stem")

    prepare(scene)
    ext = scene.render.file_extension  # e.g. ".png", ".exr"; follows file_format
    path = out + ext
    # A stale file from an earlier attempt must not pass the existence check.
    if os.path.lexists(path):
        os.remove(path)

    redirect_file_outputs(scene, os.path.dirname(out))
    reload_changed_images()
    scene.frame_set(frame)
    # write_still writes to render.filepath as given here: no '#' expansion,
    # and the extension it would add is already there.
    scene.render.filepath = path
    started = time.perf_counter()
    bpy.ops.render.render(write_still=True)  # raises RuntimeError on failure
    seconds = time.perf_counter() - started

    if not os.path.isfile(path):
        raise RuntimeError("render finished but no file at " + path)
    if os.path.getsize(path) == 0:
        raise RuntimeError("render wrote an empty file at " + path)
    return {"frame": frame, "ok": True, "path": path, "ext": ext.lstrip("."),
            "seconds": round(seconds, 3)}


def serve(scene):
    stdin = sys.stdin.buffer  # bytes, so the locale cannot break decoding
    while True:
        line = stdin.readline()
        if not line:
            return  # EOF: the worker is done with us
        line = line.strip()
        if not line:
            continue
        frame = None
        try:
            req = json.loads(line.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
            if isinstance(req.get("frame"), int) and not isinstance(req["frame"], bool):
                frame = req["frame"]  # echo only a well-typed frame
            answer = render_one(scene, req)
        except Exception as exc:  # every failure is an answer, never a crash
            message = str(exc).strip()
            if message.startswith("Error: "):  # Blender's operator report prefix
                message = message[len("Error: "):]
            answer = {"frame": frame, "ok": False,
                      "error": message or type(exc).__name__}
        emit(answer)


def main():
    args = parse_args()
    if not bpy.data.filepath:
        # A .blend that fails to load ends Blender before we run, but one given
        # after --python (or not at all) is not loaded yet: we would see the
        # factory scene and return plausible, wrong frames.
        fail_startup("no .blend file loaded")
    scene = bpy.context.scene
    try:
        if args.threads == 0:
            # Like blender -t 0: let Blender use every core.
            scene.render.threads_mode = "AUTO"
        elif args.threads is not None:
            scene.render.threads_mode = "FIXED"
            scene.render.threads = args.threads
        if scene.render.engine == "CYCLES":
            use_device(scene, args.device)
        source_format = scene.render.image_settings.file_format
        prepare(scene)
        r = scene.render
        ready = {
            "ready": True,
            "blender": bpy.app.version_string,
            "format": r.image_settings.file_format,
            "ext": r.file_extension.lstrip("."),
            "missing_files": missing_files(),
            # Extras so the worker need not start Blender again to read them.
            "source_format": source_format,
            "engine": r.engine,
            "scene": scene.name,
            "frame_start": scene.frame_start,
            "frame_end": scene.frame_end,
            "frame_step": scene.frame_step,
            "resolution": [r.resolution_x * r.resolution_percentage // 100,
                           r.resolution_y * r.resolution_percentage // 100],
            "threads": r.threads,
            # What --disable-autoexec blocked (registered text blocks, Python
            # drivers outside the safe subset), e.g. "Driver 'foo(frame)'";
            # null if nothing. Blocked drivers evaluate to 0 without failing
            # the render, so frames may differ from the artist's own renders.
            "autoexec_blocked": bpy.app.autoexec_fail_message if bpy.app.autoexec_fail else None,
        }
    except Exception as exc:
        fail_startup("driver setup: %s: %s" % (type(exc).__name__, exc))
    emit(ready)
    serve(scene)
    # Exit here rather than let Blender finish: after any failed render Blender
    # leaves a "break" flag set and its normal shutdown then exits 1 even
    # though every request was answered. sys.exit ends Blender with our code
    # (its session temp dir is still removed).
    sys.exit(0)


main()
