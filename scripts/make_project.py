"""Build a small artist project whose frames depend on external files of every kind.

Run inside Blender (arguments after ``--`` belong to this script):

    blender -b --factory-startup --python-exit-code 1 \
        --python scripts/make_project.py -- DIR [--kind KIND]

KIND (default ``all``):
  all        one main file using textures, library, caches, font, ies and missing together
  textures   relative, absolute, outside-the-project, UTF-8, backslash, UDIM, sequence, HDRI world
  library    lib1 -> lib2 -> lib1 (circular) linked relatively, plus one library linked by absolute path
  caches     particles baked to the default //blendcache_<name>/ disk cache (their velocity is zeroed after
             the bake, so a render without the cache differs), a PC2 file read by a Mesh Cache modifier,
             and an Alembic file read by a Mesh Sequence Cache modifier when Blender has Alembic (Debian's
             3.4.1 has not: it says so and skips it)
  font       a text object using //fonts/DejaVuSerif-Bold.ttf (copied from the system)
  ies        a point light shaped by //ies/light.ies (an LM-63 file written here)
  missing    one image whose file does not exist (renders magenta, on the owner's machine too)
  sequencer  a separate main file rendering the sequencer: an image strip from //strips/ and a movie strip
             (//movies/clip.mkv, FFV1, rendered by Blender itself; AVI_RAW without FFmpeg)
  volume     an OpenVDB sequence baked by a tiny smoke simulation, rendered through a Volume object

Layout under DIR: DIR/project/ holds the main .blend (main.blend for ``all``, main_<kind>.blend otherwise)
and everything it uses, except DIR/shared/outside.png (reached as //../shared/outside.png). Two files are
stored with absolute paths (DIR/project/abs_textures/abs.png, DIR/project/libs/abs_lib.blend): a copy of
the project elsewhere still reads those two from DIR.

The scene: Cycles, CPU, 8 samples, seed 0, no denoising, 64x48 PNG, frames 1..3, a top-down orthographic
camera over a 5x3 grid of cells; every cell shows one dependency with an Emission shader (the IES cell is a
diffuse plane lit by the IES light), so each file changes the pixels of its cell. The last line of stdout
is ``MAIN: /abs/path/of/main.blend``. Deterministic: projects generated twice, in any DIR, render
pixel-identical frames.
"""

import argparse
import math
import os
import shutil
import struct
import sys
import time

import bpy

SCENE_KINDS = ("textures", "library", "caches", "font", "ies", "missing")
OTHER_KINDS = ("sequencer", "volume", "fluid")
RES = (64, 48)
FRAMES = (1, 3)
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf",
)

# Grid cells (column, row) of the 5x3 layout, one per visible dependency.
CELLS = {
    "wood": (0, 0), "abs": (1, 0), "outside": (2, 0), "utf8": (3, 0), "back": (4, 0),
    "udim": (0, 1), "seq": (1, 1), "lib1": (2, 1), "abslib": (3, 1), "particles": (4, 1),
    "pc2": (0, 2), "font": (1, 2), "ies": (2, 2), "missing": (3, 2), "alembic": (4, 2),
}

T0 = time.time()


def log(msg):
    print(f"make_project [{time.time() - T0:5.2f}s] {msg}", flush=True)


def parse_args():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    p = argparse.ArgumentParser(prog="make_project.py")
    p.add_argument("dir", help="folder to build the project in (created if needed)")
    p.add_argument("--kind", choices=("all",) + SCENE_KINDS + OTHER_KINDS, default="all")
    return p.parse_args(argv)


def cell_xy(name):
    col, row = CELLS[name]
    return (-2.0 + col, 1.0 - row)


# ---------------------------------------------------------------------------------------------------------
# Files written directly (images, IES, PC2)


def write_image(path, w, h, pixel, fmt="PNG", float_buffer=False):
    """Write an image file with Blender; pixel(x, y) -> (r, g, b)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = bpy.data.images.new("tmp_write", w, h, alpha=False, float_buffer=float_buffer)
    if float_buffer:
        # Image.save() of a float image in the default "Linear" space writes sRGB-encoded values (a .hdr
        # would hold 0.54 for 0.25); "Non-Color" writes the values as given.
        img.colorspace_settings.name = "Non-Color"
    px = []
    for y in range(h):
        for x in range(w):
            r, g, b = pixel(x, y)
            px += (r, g, b, 1.0)
    img.pixels = px
    img.filepath_raw = path
    img.file_format = fmt
    img.save()
    bpy.data.images.remove(img)


def checker(c1, c2, cell=2):
    return lambda x, y: c1 if ((x // cell) + (y // cell)) % 2 == 0 else c2


def write_ies(path):
    """A rotationally symmetric narrow beam (LM-63-2002): bright to 15 degrees, dark beyond 30."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vert = list(range(0, 91, 5))
    cd = [1000.0 if a <= 15 else (1000.0 * (30 - a) / 15.0 if a < 30 else 0.0) for a in vert]
    lines = [
        "IESNA:LM-63-2002",
        "[TEST] blenderdist test fixture",
        "[MANUFAC] blenderdist",
        "[LUMCAT] NARROW-BEAM",
        "TILT=NONE",
        f"1 1000 1 {len(vert)} 1 1 2 0 0 0",
        "1 1 100",
        " ".join(str(a) for a in vert),
        "0",
        " ".join(f"{c:g}" for c in cd),
    ]
    with open(path, "w", newline="\r\n") as f:
        f.write("\n".join(lines) + "\n")


def write_pc2(path, frames):
    """PC2 point cache: frames is a list of lists of (x, y, z)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<12siiffi", b"POINTCACHE2\0", 1, len(frames[0]), 0.0, 1.0, len(frames)))
        for pts in frames:
            for p in pts:
                f.write(struct.pack("<fff", *p))


# ---------------------------------------------------------------------------------------------------------
# Scene helpers


def new_file():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def save(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bpy.context.preferences.filepaths.save_version = 0  # no .blend1 backups next to the project files
    # relative_remap=False: paths stay exactly as set here (absolute ones absolute, '//' ones relative).
    bpy.ops.wm.save_as_mainfile(filepath=path, compress=False, relative_remap=False)


def configure_render(scene):
    scene.frame_start, scene.frame_end = FRAMES
    scene.frame_current = FRAMES[0]
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y = RES
    r.resolution_percentage = 100
    r.fps = 24
    r.dither_intensity = 0.0
    r.use_file_extension = True
    r.filepath = "//render/"
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    r.image_settings.color_depth = "8"
    c = scene.cycles
    c.device = "CPU"
    c.samples = 8
    c.preview_samples = 8
    c.use_adaptive_sampling = False
    c.use_denoising = False
    c.use_preview_denoising = False
    c.seed = 0
    c.use_animated_seed = False
    c.max_bounces = 2
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"


def add_camera(scene):
    cam_data = bpy.data.cameras.new("Camera")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = 5.0
    cam = bpy.data.objects.new("Camera", cam_data)
    cam.location = (0.0, 0.0, 10.0)
    scene.collection.objects.link(cam)
    scene.camera = cam


def flat_world(scene, rgb=(0.05, 0.05, 0.06)):
    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (*rgb, 1.0)
    scene.world = world
    return world


def quad_mesh(name, size=0.8, u_span=1.0):
    h = size / 2
    me = bpy.data.meshes.new(name)
    me.from_pydata([(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)], [], [(0, 1, 2, 3)])
    uv = me.uv_layers.new(name="UVMap")
    for loop, (u, v) in zip(uv.data, ((0, 0), (u_span, 0), (u_span, 1), (0, 1))):
        loop.uv = (u, v)
    return me


def add_object(scene, name, data, location, material=None):
    ob = bpy.data.objects.new(name, data)
    ob.location = location
    if material is not None:
        data.materials.append(material)
    scene.collection.objects.link(ob)
    return ob


def emission_material(name, image=None, rgb=(1, 1, 1), strength=1.0):
    """Emission shader showing the image (or a flat colour): unaffected by lights, exact colours."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    em = nt.nodes.new("ShaderNodeEmission")
    em.inputs["Strength"].default_value = strength
    em.inputs["Color"].default_value = (*rgb, 1.0)
    nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
    if image is not None:
        tex = nt.nodes.new("ShaderNodeTexImage")
        tex.image = image
        tex.interpolation = "Closest"
        nt.links.new(tex.outputs["Color"], em.inputs["Color"])
        mat["tex_node"] = tex.name
    return mat


def load_image(abs_path, stored_path):
    """Load an existing file, then store the path exactly as an artist's file would have it."""
    img = bpy.data.images.load(abs_path, check_existing=False)
    img.filepath = stored_path
    return img


def textured_cell(scene, name, image, u_span=1.0):
    mat = emission_material("M_" + name, image=image)
    ob = add_object(scene, "Cell_" + name, quad_mesh("Q_" + name, u_span=u_span), (*cell_xy(name), 0), mat)
    return ob, mat


# ---------------------------------------------------------------------------------------------------------
# Kinds


def make_textures(scene, proj, top):
    """Relative, absolute, outside, UTF-8, backslash, UDIM, image sequence and an HDRI world."""
    tex = os.path.join(proj, "textures")
    write_image(os.path.join(tex, "wood.png"), 8, 8, checker((0.55, 0.3, 0.1), (0.8, 0.55, 0.3)))
    textured_cell(scene, "wood", load_image(os.path.join(tex, "wood.png"), "//textures/wood.png"))

    abs_png = os.path.join(proj, "abs_textures", "abs.png")
    write_image(abs_png, 8, 8, checker((0.1, 0.8, 0.2), (0.0, 0.3, 0.05)))
    textured_cell(scene, "abs", load_image(abs_png, abs_png))  # stored absolute

    out_png = os.path.join(top, "shared", "outside.png")
    write_image(out_png, 8, 8, checker((0.2, 0.3, 0.9), (0.9, 0.9, 0.2)))
    textured_cell(scene, "outside", load_image(out_png, "//../shared/outside.png"))

    utf_png = os.path.join(proj, "tex ütf 8", "ñ.png")
    write_image(utf_png, 8, 8, checker((0.9, 0.1, 0.6), (0.3, 0.0, 0.2), cell=4))
    textured_cell(scene, "utf8", load_image(utf_png, "//tex ütf 8/ñ.png"))

    back_png = os.path.join(tex, "back.png")
    write_image(back_png, 8, 8, lambda x, y: (0.1, 0.9, 0.9) if x < 4 else (0.05, 0.2, 0.6))
    textured_cell(scene, "back", load_image(back_png, "//textures\\back.png"))  # Windows separator

    # UDIM: tiles 1001 and 1002; the quad's UVs span u = 0..2, so each half shows one tile.
    write_image(os.path.join(tex, "udim.1001.png"), 8, 8, checker((1.0, 0.5, 0.0), (0.4, 0.2, 0.0)))
    write_image(os.path.join(tex, "udim.1002.png"), 8, 8, checker((0.6, 0.0, 1.0), (0.2, 0.0, 0.4)))
    udim = bpy.data.images.load(os.path.join(tex, "udim.1001.png"), check_existing=False)
    udim.name = "udim"
    udim.source = "TILED"
    udim.filepath = "//textures/udim.<UDIM>.png"
    if not any(t.number == 1002 for t in udim.tiles):
        udim.tiles.new(tile_number=1002)
    textured_cell(scene, "udim", udim, u_span=2.0)

    # Image sequence: frame N of the scene shows frame_000N.png.
    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    for i, c in enumerate(colours, 1):
        dark = tuple(v * 0.3 for v in c)
        write_image(os.path.join(proj, "seq", f"frame_{i:04d}.png"), 8, 8, checker(c, dark, cell=4 - i))
    seq = bpy.data.images.load(os.path.join(proj, "seq", "frame_0001.png"), check_existing=False)
    seq.name = "frames"
    seq.source = "SEQUENCE"
    seq.filepath = "//seq/frame_0001.png"
    _, mat = textured_cell(scene, "seq", seq)
    node = mat.node_tree.nodes[mat["tex_node"]]
    node.image_user.frame_start = 1
    node.image_user.frame_duration = 3
    node.image_user.frame_offset = 0
    node.image_user.use_auto_refresh = True

    # HDRI-like world (Radiance .hdr, float, a small "sun" over 1.0): the camera looks straight down, so the
    # background shows the bottom row (dark brown); the upper half lights the diffuse IES plane a little.
    def sky(x, y):
        if y < 4:
            return (0.25, 0.06, 0.02)
        return (3.0, 2.5, 2.0) if (y == 6 and x in (2, 3)) else (0.15, 0.3, 0.6)

    hdr = os.path.join(proj, "hdri", "sky.hdr")
    write_image(hdr, 16, 8, sky, fmt="HDR", float_buffer=True)
    world = flat_world(scene)
    nt = world.node_tree
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    env.image = load_image(hdr, "//hdri/sky.hdr")
    env.interpolation = "Closest"
    nt.links.new(env.outputs["Color"], nt.nodes["Background"].inputs["Color"])


def make_libraries(proj):
    """lib1 <-> lib2 (circular) and abs_lib; run before the main file is built (each is a new file)."""
    libs = os.path.join(proj, "libs")
    lib1, lib2, abs_lib = (os.path.join(libs, n) for n in ("lib1.blend", "lib2.blend", "abs_lib.blend"))

    # lib1, first version: a node group (used back from lib2) and the collection the main file instances.
    new_file()
    grp = bpy.data.node_groups.new("TintGroup", "ShaderNodeTree")
    grp.inputs.new("NodeSocketColor", "Color")
    grp.outputs.new("NodeSocketColor", "Color")
    gin, gout = grp.nodes.new("NodeGroupInput"), grp.nodes.new("NodeGroupOutput")
    mix = grp.nodes.new("ShaderNodeMixRGB")
    mix.blend_type = "MULTIPLY"
    mix.inputs["Fac"].default_value = 1.0
    mix.inputs["Color2"].default_value = (1.0, 0.6, 0.6, 1.0)
    grp.links.new(gin.outputs["Color"], mix.inputs["Color1"])
    grp.links.new(mix.outputs["Color"], gout.inputs["Color"])
    grp.use_fake_user = True
    col = bpy.data.collections.new("LibCol")
    bpy.context.scene.collection.children.link(col)
    ob = bpy.data.objects.new("LibObj", quad_mesh("LibQuad", size=0.8))
    col.objects.link(ob)
    save(lib1)

    # lib2: a material with an external texture next to lib2, tinted by lib1's node group (link back).
    new_file()
    write_image(os.path.join(libs, "lib2_tex.png"), 8, 8, checker((1.0, 1.0, 1.0), (0.2, 0.6, 1.0)))
    save(lib2)  # saved first so '//' paths have a base
    with bpy.data.libraries.load("//lib1.blend", link=True, relative=True) as (src, dst):
        dst.node_groups = ["TintGroup"]
    tint = bpy.data.node_groups["TintGroup"]
    mat = emission_material("Lib2Mat", image=load_image(os.path.join(libs, "lib2_tex.png"), "//lib2_tex.png"))
    nt = mat.node_tree
    tex = nt.nodes[mat["tex_node"]]
    g = nt.nodes.new("ShaderNodeGroup")
    g.node_tree = tint
    nt.links.new(tex.outputs["Color"], g.inputs["Color"])
    nt.links.new(g.outputs["Color"], nt.nodes["Emission"].inputs["Color"])
    mat.use_fake_user = True
    save(lib2)

    # lib1, final version: LibObj uses lib2's material (lib1 -> lib2 -> lib1).
    bpy.ops.wm.open_mainfile(filepath=lib1)
    with bpy.data.libraries.load("//lib2.blend", link=True, relative=True) as (src, dst):
        dst.materials = ["Lib2Mat"]
    bpy.data.objects["LibObj"].data.materials.append(bpy.data.materials["Lib2Mat"])
    save(lib1)

    # abs_lib: a plain collection, linked from the main file by an absolute path.
    new_file()
    col = bpy.data.collections.new("AbsCol")
    bpy.context.scene.collection.children.link(col)
    ob = bpy.data.objects.new("AbsObj", quad_mesh("AbsQuad", size=0.6))
    ob.data.materials.append(emission_material("AbsMat", rgb=(0.9, 0.9, 0.9)))
    ob.rotation_euler.z = math.radians(45)
    col.objects.link(ob)
    save(abs_lib)
    return lib1, abs_lib


def make_library_links(scene, abs_lib):
    with bpy.data.libraries.load("//libs/lib1.blend", link=True, relative=True) as (src, dst):
        dst.collections = ["LibCol"]
    with bpy.data.libraries.load(abs_lib, link=True, relative=False) as (src, dst):
        dst.collections = ["AbsCol"]
    # As a file saved on Windows stores it: the library's relative path with backslashes.
    for lib in bpy.data.libraries:
        if lib.filepath == "//libs/lib1.blend":
            lib.filepath = "//libs\\lib1.blend"
    for cell, col in (("lib1", "LibCol"), ("abslib", "AbsCol")):
        inst = bpy.data.objects.new("Inst_" + cell, None)
        inst.instance_type = "COLLECTION"
        inst.instance_collection = bpy.data.collections[col]
        inst.location = (*cell_xy(cell), 0)
        scene.collection.objects.link(inst)


def make_caches_before_save(scene, proj):
    """Particles (baked after saving), a PC2 Mesh Cache and, with Alembic support, an Alembic cache."""
    x, y = cell_xy("particles")
    part = add_object(scene, "ParticleShape", bpy.data.meshes.new("PartMesh"), (100.0, 0.0, 0.0),
                      emission_material("PartMat", rgb=(1.0, 1.0, 0.2)))
    h = 0.08
    part.data.from_pydata([(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)], [], [(0, 1, 2, 3)])
    em = add_object(scene, "Emitter", quad_mesh("EmitQuad", size=0.3), (x - 0.2, y, 0))
    em.show_instancer_for_render = False
    md = em.modifiers.new("Particles", "PARTICLE_SYSTEM")
    ps = md.particle_system
    ps.seed = 1
    st = ps.settings
    st.count = 4
    st.frame_start = 1
    st.frame_end = 1
    st.lifetime = 100
    st.emit_from = "FACE"
    st.use_emit_random = False
    st.normal_factor = 0.0
    st.object_align_factor = (6.0, 0.0, 0.0)  # moves +x 0.25 unit per frame
    st.effector_weights.gravity = 0.0
    st.render_type = "OBJECT"
    st.instance_object = part
    st.particle_size = 1.0

    # PC2 Mesh Cache: the base quad is tiny; the cache moves and grows it frame by frame.
    x, y = cell_xy("pc2")
    base = add_object(scene, "PC2Obj", quad_mesh("PC2Quad", size=0.1), (x, y, 0),
                      emission_material("PC2Mat", rgb=(0.2, 1.0, 0.6)))
    frames = []
    for f in range(4):  # cache frames 0..3; scene frame N reads cache frame N
        s = 0.12 + 0.07 * f
        dx = -0.1 + 0.05 * f
        frames.append([(dx - s, -s, 0), (dx + s, -s, 0), (dx + s, s, 0), (dx - s, s, 0)])
    write_pc2(os.path.join(proj, "cache", "anim.pc2"), frames)
    mc = base.modifiers.new("MeshCache", "MESH_CACHE")
    mc.cache_format = "PC2"
    mc.filepath = "//cache/anim.pc2"
    mc.frame_start = 0.0

    if bpy.app.build_options.alembic:
        # Export a quad whose vertices a shape key slides along x (the Mesh Sequence Cache modifier reads
        # vertices, not the object transform), delete it, and read the file back on another object.
        # Untested on Debian's 3.4.1, which is built without Alembic.
        x, y = cell_xy("alembic")
        src = add_object(scene, "AbcSrc", quad_mesh("AbcQuad", size=0.4), (0, 0, 0))
        src.shape_key_add(name="Basis")
        moved = src.shape_key_add(name="Moved")
        for point in moved.data:
            point.co.x += 0.4
        src.location = (x - 0.2, y, 0)  # the reader has its own transform; keep the source out of sight
        for f, value in ((1, 0.0), (3, 1.0)):
            moved.value = value
            moved.keyframe_insert("value", frame=f)
        bpy.context.view_layer.objects.active = src
        bpy.ops.object.select_all(action="DESELECT")
        src.select_set(True)
        abc = os.path.join(proj, "cache", "anim.abc")
        bpy.ops.wm.alembic_export(filepath=abc, start=FRAMES[0], end=FRAMES[1], selected=True)
        bpy.data.objects.remove(src)
        bpy.ops.cachefile.open(filepath=abc)
        cf = bpy.data.cache_files[-1]
        cf.filepath = "//cache/anim.abc"
        reader = add_object(scene, "AbcReader", quad_mesh("AbcBase", size=0.1), (x - 0.2, y, 0),
                            emission_material("AbcMat", rgb=(1.0, 0.3, 0.3)))
        msc = reader.modifiers.new("Cache", "MESH_SEQUENCE_CACHE")
        msc.cache_file = cf
        msc.object_path = "/AbcSrc/AbcQuad"
        log("caches: alembic exported and read back")
    else:
        log("caches: SKIPPED alembic (this Blender is built without Alembic: bpy.app.build_options.alembic "
            "is False); the PC2 Mesh Cache stands in for it")


def bake_particles(scene, proj, blend):
    em = bpy.data.objects["Emitter"]
    pc = em.particle_systems[0].point_cache
    pc.use_disk_cache = True  # only sticks once the file has been saved
    pc.frame_start, pc.frame_end = FRAMES
    with bpy.context.temp_override(scene=scene):
        bpy.ops.ptcache.bake_all(bake=True)
    if not (pc.is_baked and pc.use_disk_cache):
        raise RuntimeError(f"particle bake failed: {pc.info}")
    # Change the settings after baking (a baked cache is kept): a render that lost the cache would
    # re-simulate motionless particles, so the cache visibly matters on frames 2..3.
    em.particle_systems[0].settings.object_align_factor = (0.0, 0.0, 0.0)
    name = os.path.splitext(os.path.basename(blend))[0]
    folder = os.path.join(proj, "blendcache_" + name)
    log(f"caches: baked particles to {folder}: {sorted(os.listdir(folder))}")


def make_font(scene, proj):
    src = next((p for p in FONT_CANDIDATES if os.path.isfile(p)), None)
    if src is None:
        raise RuntimeError("no TTF font found in " + ", ".join(FONT_CANDIDATES))
    dst = os.path.join(proj, "fonts", os.path.basename(src))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    font = bpy.data.fonts.load(dst)
    font.filepath = "//fonts/" + os.path.basename(src)
    curve = bpy.data.curves.new("Text", "FONT")
    curve.body = "Wg"
    curve.font = font
    curve.size = 0.6
    curve.align_x = "CENTER"
    curve.align_y = "CENTER"
    x, y = cell_xy("font")
    add_object(scene, "Text", curve, (x, y, 0), emission_material("TextMat", rgb=(1.0, 0.9, 0.2)))


def make_ies(scene, proj):
    write_ies(os.path.join(proj, "ies", "light.ies"))
    x, y = cell_xy("ies")
    mat = bpy.data.materials.new("IESFloor")
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    bsdf.inputs["Specular"].default_value = 0.0
    add_object(scene, "IESFloor", quad_mesh("IESQuad", size=0.9), (x, y, 0), mat)
    light = bpy.data.lights.new("IESLight", "POINT")
    light.energy = 20.0
    light.shadow_soft_size = 0.0
    light.use_nodes = True
    nt = light.node_tree
    ies = nt.nodes.new("ShaderNodeTexIES")
    ies.mode = "EXTERNAL"
    ies.filepath = "//ies/light.ies"
    nt.links.new(ies.outputs["Fac"], nt.nodes["Emission"].inputs["Strength"])
    add_object(scene, "IESLight", light, (x, y, 0.5))


def make_missing(scene, proj):
    path = os.path.join(proj, "textures", "missing.png")
    write_image(path, 4, 4, lambda x, y: (0.5, 0.5, 0.5))
    img = load_image(path, "//textures/missing.png")
    img.name = "missing"
    os.remove(path)  # referenced, absent: Cycles shows magenta
    textured_cell(scene, "missing", img)


def build_scene_kinds(kinds, top, proj, blend):
    if "library" in kinds:
        _, abs_lib = make_libraries(proj)
        log("library: lib1.blend, lib2.blend (circular), abs_lib.blend written")
    scene = new_file()
    configure_render(scene)
    add_camera(scene)
    save(blend)  # '//' paths and disk caches need a saved file
    if "textures" in kinds:
        make_textures(scene, proj, top)
        log("textures: done")
    else:
        flat_world(scene)
    if "library" in kinds:
        make_library_links(scene, abs_lib)
    if "caches" in kinds:
        make_caches_before_save(scene, proj)
    if "font" in kinds:
        make_font(scene, proj)
    if "ies" in kinds:
        make_ies(scene, proj)
    if "missing" in kinds:
        make_missing(scene, proj)
    save(blend)
    if "caches" in kinds:
        bake_particles(scene, proj, blend)
        save(blend)


# ---------------------------------------------------------------------------------------------------------
# Sequencer and volume (separate main files)


def build_sequencer(proj, blend):
    w, h = RES
    strip_cols = [(0.9, 0.2, 0.2), (0.2, 0.9, 0.2), (0.2, 0.2, 0.9)]
    strips = os.path.join(proj, "strips")
    for i, c in enumerate(strip_cols, 1):
        write_image(os.path.join(strips, f"strip_{i:04d}.png"), w, h,
                    checker(c, (0.1, 0.1, 0.1), cell=4 + 4 * i))

    # The movie: Blender renders three frames of its own sequencer to a lossless FFV1 .mkv (or AVI_RAW).
    movie = None
    mw, mh = 32, 24
    mov_frames = os.path.join(proj, "_movie_src")
    for i in range(1, 4):
        write_image(os.path.join(mov_frames, f"m_{i:04d}.png"), mw, mh,
                    lambda x, y, i=i: (1.0, 1.0, 1.0) if (x + 4 * i) % 12 < 6 else (0.9, 0.5, 0.0))
    scene = new_file()
    scene.render.resolution_x, scene.render.resolution_y = mw, mh
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 3
    se = scene.sequence_editor_create()
    s = se.sequences.new_image("src", os.path.join(mov_frames, "m_0001.png"), 1, 1, fit_method="ORIGINAL")
    for i in (2, 3):
        s.elements.append(f"m_{i:04d}.png")
    scene.render.use_sequencer = True
    movies = os.path.join(proj, "movies")
    os.makedirs(movies, exist_ok=True)
    attempts = []
    if bpy.app.build_options.codec_ffmpeg:
        attempts.append(("FFMPEG", "clip.mkv"))
    attempts.append(("AVI_RAW", "clip.avi"))
    for fmt, name in attempts:
        try:
            scene.render.image_settings.file_format = fmt
            if fmt == "FFMPEG":
                scene.render.ffmpeg.format = "MKV"
                scene.render.ffmpeg.codec = "FFV1"
                scene.render.ffmpeg.audio_codec = "NONE"
            scene.render.use_file_extension = False
            scene.render.filepath = os.path.join(movies, name)
            bpy.ops.render.render(animation=True)
            path = os.path.join(movies, name)
            if os.path.isfile(path) and os.path.getsize(path) > 0:
                movie = path
                log(f"sequencer: movie written with {fmt}: {path}")
                break
        except Exception as e:  # noqa: BLE001 - report and try the next format
            log(f"sequencer: movie with {fmt} failed: {e}")
    shutil.rmtree(mov_frames)

    scene = new_file()
    configure_render(scene)
    add_camera(scene)
    flat_world(scene)
    save(blend)
    se = scene.sequence_editor_create()
    img = se.sequences.new_image("Strips", os.path.join(strips, "strip_0001.png"), 1, 1,
                                 fit_method="ORIGINAL")
    for i in (2, 3):
        img.elements.append(f"strip_{i:04d}.png")
    img.directory = "//strips/"
    if movie is not None:
        mv = se.sequences.new_movie("Movie", movie, 2, 1, fit_method="ORIGINAL")
        mv.filepath = "//movies/" + os.path.basename(movie)
        mv.blend_type = "ALPHA_OVER"
    else:
        log("sequencer: SKIPPED movie strip (no movie could be written)")
    scene.render.use_sequencer = True
    save(blend)


def smoke_material(name, color):
    """A dense, coloured volume material, so the smoke shows clearly in a tiny render."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    pv = nt.nodes.new("ShaderNodeVolumePrincipled")
    pv.inputs["Density"].default_value = 20.0
    pv.inputs["Color"].default_value = color
    nt.links.new(pv.outputs["Volume"], out.inputs["Volume"])
    return mat


def build_volume(proj, blend, domain_renders=False):
    """A baked smoke simulation (OpenVDB cache). With domain_renders, the fluid domain itself renders it from
    its cache folder; otherwise a Volume object reads the VDB sequence and the domain is hidden."""
    scene = new_file()
    configure_render(scene)
    add_camera(scene)
    flat_world(scene, (0.2, 0.2, 0.25))
    sun = bpy.data.lights.new("Sun", "SUN")
    sun.energy = 3.0
    add_object(scene, "Sun", sun, (0, 0, 5))
    save(blend)
    dom = add_object(scene, "Domain", bpy.data.meshes.new("DomMesh"), (0, 0, 0))
    bm = [(x, y, z) for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    dom.data.from_pydata([(1.2 * a, 1.2 * b, 1.2 * c) for a, b, c in bm], [], faces)
    md = dom.modifiers.new("Fluid", "FLUID")
    md.fluid_type = "DOMAIN"
    ds = md.domain_settings
    ds.domain_type = "GAS"
    ds.resolution_max = 12
    ds.cache_type = "ALL"
    ds.cache_data_format = "OPENVDB"
    ds.cache_frame_start, ds.cache_frame_end = FRAMES
    ds.cache_directory = "//cache_fluid"
    flow = add_object(scene, "Flow", bpy.data.meshes.new("FlowMesh"), (0, 0, -0.6))
    flow.data.from_pydata([(x * 0.4, y * 0.4, z * 0.4) for x, y, z in bm], [], faces)
    fm = flow.modifiers.new("Fluid", "FLUID")
    fm.fluid_type = "FLOW"
    fm.flow_settings.flow_type = "SMOKE"
    fm.flow_settings.flow_behavior = "INFLOW"
    flow.hide_render = True
    save(blend)
    t = time.time()
    with bpy.context.temp_override(scene=scene, object=dom, active_object=dom):
        bpy.ops.fluid.bake_all()
    log(f"volume: fluid bake took {time.time() - t:.1f}s")
    data = os.path.join(proj, "cache_fluid", "data")
    vdbs = sorted(f for f in os.listdir(data) if f.endswith(".vdb")) if os.path.isdir(data) else []
    if not vdbs:
        raise RuntimeError("fluid bake wrote no .vdb files")
    if domain_renders:
        dom.data.materials.append(smoke_material("DomainSmoke", (0.1, 0.4, 1.0, 1.0)))
        save(blend)
        return
    # The Volume object reads the VDB sequence; the domain itself is hidden from the render.
    dom.hide_render = True
    vol = bpy.data.volumes.new("Smoke")
    vol.filepath = "//cache_fluid/data/" + vdbs[0]
    vol.is_sequence = True
    vol.frame_start = 1
    vol.frame_duration = len(vdbs)
    vol.materials.append(smoke_material("SmokeMat", (1.0, 0.3, 0.1, 1.0)))
    vob = add_object(scene, "SmokeVolume", vol, (0, 0, 0))
    # The grids carry the domain's own transform: centre the smoke under the camera.
    bb = vob.evaluated_get(bpy.context.evaluated_depsgraph_get()).bound_box
    vob.location = (-(min(v[0] for v in bb) + max(v[0] for v in bb)) / 2,
                    -(min(v[1] for v in bb) + max(v[1] for v in bb)) / 2, 0.0)
    save(blend)


def main():
    args = parse_args()
    top = os.path.abspath(args.dir)
    proj = os.path.join(top, "project")
    os.makedirs(proj, exist_ok=True)
    blend = os.path.join(proj, "main.blend" if args.kind == "all" else f"main_{args.kind}.blend")
    if args.kind == "sequencer":
        build_sequencer(proj, blend)
    elif args.kind == "volume":
        build_volume(proj, blend)
    elif args.kind == "fluid":
        build_volume(proj, blend, domain_renders=True)
    else:
        kinds = SCENE_KINDS if args.kind == "all" else (args.kind,)
        build_scene_kinds(kinds, top, proj, blend)
    log(f"{args.kind}: done")
    print(f"MAIN: {blend}", flush=True)


main()
