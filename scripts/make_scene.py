"""Build a small, deterministic, animated test scene and save it as a .blend.

Run inside Blender (arguments after ``--`` belong to this script):

    blender -b --factory-startup --python-exit-code 1 \
        --python scripts/make_scene.py -- OUT.blend \
        [--frames N] [--engine CYCLES|BLENDER_EEVEE|BLENDER_WORKBENCH] \
        [--res WxH] [--samples N] [--format PNG|OPEN_EXR|FFMPEG|JPEG|...]

Exit status: 0 on success, 2 on bad arguments (argparse's SystemExit ends
Blender with that code directly). Any other Python exception only turns into a
non-zero exit if the caller passes ``--python-exit-code 1`` *before*
``--python``: Blender applies options in order, and without it a traceback
still exits 0.
"""

import argparse
import math
import os
import sys

import bpy

IMAGE_FORMATS = [
    item.identifier
    for item in bpy.types.ImageFormatSettings.bl_rna.properties["file_format"].enum_items
]
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")


def parse_args():
    # Blender keeps its own options in sys.argv; ours are only those after "--".
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []

    def resolution(text):
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError("expected WxH, e.g. 320x240")
        if not (4 <= w <= 16384 and 4 <= h <= 16384):
            raise argparse.ArgumentTypeError("width and height must be 4..16384")
        return w, h

    def positive(text):
        n = int(text)
        if n < 1:
            raise argparse.ArgumentTypeError("must be >= 1")
        return n

    p = argparse.ArgumentParser(prog="make_scene.py")
    p.add_argument("out", help="path of the .blend to write")
    p.add_argument("--frames", type=positive, default=24)
    p.add_argument("--engine", choices=ENGINES, default="CYCLES")
    p.add_argument("--res", type=resolution, default=(320, 240))
    p.add_argument("--samples", type=positive, default=16)
    p.add_argument("--format", choices=IMAGE_FORMATS, default="PNG")
    return p.parse_args(argv)


def clear_scene():
    # --factory-startup still loads the default cube/camera/light; start empty
    # so the scene contents depend only on this script.
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)
    for coll in (bpy.data.meshes, bpy.data.materials, bpy.data.lights, bpy.data.cameras):
        for block in list(coll):
            coll.remove(block)


def material(name, rgb):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    mat.diffuse_color = (*rgb, 1.0)  # what Workbench shows
    return mat


def build(scene, frames):
    bpy.ops.mesh.primitive_plane_add(size=12, location=(0, 0, 0))
    bpy.context.object.data.materials.append(material("Floor", (0.6, 0.6, 0.6)))

    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(-2.5, 0, 0.75))
    cube = bpy.context.object
    cube.name = "Mover"
    cube.data.materials.append(material("Red", (0.8, 0.1, 0.05)))

    # Slide across the floor and spin a full turn: every frame differs visibly
    # (position, rotation, shadow). Linear keys so each frame's pose is unique.
    last = max(frames, 2)
    for frame, x, turn in ((1, -2.5, 0.0), (last, 2.5, 2 * math.pi)):
        cube.location.x = x
        cube.rotation_euler.z = turn
        cube.keyframe_insert("location", index=0, frame=frame)
        cube.keyframe_insert("rotation_euler", index=2, frame=frame)
    for fc in cube.animation_data.action.fcurves:
        for kp in fc.keyframe_points:
            kp.interpolation = "LINEAR"

    bpy.ops.object.light_add(type="SUN", location=(3, -3, 6))
    sun = bpy.context.object
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(20), math.radians(30))

    bpy.ops.object.camera_add(location=(0, -8, 4.5))
    cam = bpy.context.object
    cam.rotation_euler = (math.radians(62), 0, 0)
    scene.camera = cam

    # A plain grey world so the background is not black and is engine-neutral.
    world = scene.world or bpy.data.worlds.new("World")
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.07, 0.1, 1.0)


def configure(scene, args):
    r = scene.render
    scene.frame_start = 1
    scene.frame_end = args.frames
    scene.frame_step = 1
    scene.frame_current = 1
    r.resolution_x, r.resolution_y = args.res
    r.resolution_percentage = 100
    r.engine = args.engine

    # Cycles settings are stored even when another engine is chosen, so a
    # later switch to Cycles still gets a build-compatible, repeatable setup.
    c = scene.cycles
    c.device = "CPU"
    c.samples = args.samples
    c.preview_samples = args.samples
    c.use_adaptive_sampling = False   # noise threshold can vary per pass; keep it fixed
    c.use_denoising = False           # Debian's build lacks OpenImageDenoise
    c.use_preview_denoising = False
    c.seed = 0
    c.use_animated_seed = False       # fixed seed: a frame is the same wherever rendered
    scene.eevee.taa_render_samples = args.samples

    fmt = r.image_settings
    fmt.file_format = args.format
    if args.format == "FFMPEG":
        r.ffmpeg.format = "MPEG4"
        r.ffmpeg.codec = "H264"
    elif args.format in ("OPEN_EXR", "OPEN_EXR_MULTILAYER"):
        fmt.color_depth = "32"
        fmt.exr_codec = "ZIP"
    # Extension comes from the format; frames go to //render/NNNN.<ext>.
    r.use_file_extension = True
    r.filepath = "//render/"


def main():
    args = parse_args()
    out = os.path.abspath(args.out)
    scene = bpy.context.scene
    clear_scene()
    build(scene, args.frames)
    configure(scene, args)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    # Uncompressed so the file hashes the same way it is stored and loads fast.
    bpy.ops.wm.save_as_mainfile(filepath=out, compress=False)
    print(f"make_scene: wrote {out} ({args.engine}, {args.res[0]}x{args.res[1]}, "
          f"frames 1-{args.frames}, {args.samples} samples, {args.format})")


main()
