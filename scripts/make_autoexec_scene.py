"""Build a tiny renderable .blend that carries an auto-run Python text block.

    blender -b --factory-startup --python-exit-code 1 \
        --python scripts/make_autoexec_scene.py -- OUT.blend MARKER_PATH

The text block "evil.py" is registered (use_module), so Blender executes it
whenever the file is loaded with auto-run allowed; it then creates MARKER_PATH.
Tests load the file both ways: the marker must appear for a plain
`blender -b OUT.blend -f 1` with auto-run enabled in the preferences (the
control), and must not appear for the worker's
`blender -b --factory-startup --disable-autoexec OUT.blend --python driver.py`.
"""

import os
import sys

import bpy

argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
if len(argv) != 2:
    print("usage: make_autoexec_scene.py -- OUT.blend MARKER_PATH", file=sys.stderr)
    sys.exit(2)
out, marker = (os.path.abspath(a) for a in argv)

# The factory scene (cube, camera, light) is enough; only make it cheap and
# renderable on Debian's Cycles.
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 1
scene.cycles.use_adaptive_sampling = False
scene.cycles.use_denoising = False  # Debian's build lacks OpenImageDenoise
scene.render.resolution_x, scene.render.resolution_y = 64, 48
scene.render.resolution_percentage = 100
scene.frame_start, scene.frame_end = 1, 2
scene.render.image_settings.file_format = "PNG"
scene.render.filepath = "//render/"

# Record who ran it, so a stray marker can be traced to the process that
# loaded the file. The path is embedded with repr() to survive any characters.
text = bpy.data.texts.new("evil.py")
text.write(
    "import os, sys\n"
    f"with open({marker!r}, 'w') as f:\n"
    "    f.write('auto-run text block executed, pid %d, argv %r\\n' % (os.getpid(), sys.argv))\n"
)
text.use_module = True  # "Register": run on load when auto-run is allowed

os.makedirs(os.path.dirname(out), exist_ok=True)
bpy.ops.wm.save_as_mainfile(filepath=out, compress=False)
print(f"make_autoexec_scene: wrote {out} (marker {marker})")
