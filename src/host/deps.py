"""List every external file a .blend needs to render, for blenderdist's host.

Embedded in the binary (include_str!) and run with the owner's Blender:

    blender -b --factory-startup --disable-autoexec FILE.blend --python-exit-code 1 \
        --python deps.py -- --out OUT.json

On success writes OUT.json (through OUT.json.tmp and an atomic rename) and exits 0. On an internal error
writes nothing, prints ``deps.py: error: ...`` on stderr and exits 1. It only reads data-blocks through
RNA: nothing from the .blend runs (no operators, no depsgraph evaluation, no drivers) and nothing but
OUT.json is written.

OUT.json:
  blender        bpy.app.version_string
  files          [{"path", "kind"}] every existing external file, deduplicated, sorted by path; kind is
                 image, udim, sequence, movie, library, cache, sound, font, ies, volume, alembic, script
                 or other (other = only bpy.utils.blend_paths() knew it)
  missing        [{"path", "kind", "used_by"}] referenced but absent on this machine
  cache_folders  folders included whole (point, fluid and ocean caches)
  scenes         {"engine", "denoising", "file_outputs", "sequencer", "resolution"} of the scene that renders;
                 resolution is [width, height] of its frames, or null when a crop to the render border makes
                 it depend on the frame

Paths are absolute and normalised with os.path.normpath (symlinks are kept). Blender 3.4 on Linux turns
every backslash of a stored path into '/' (at load time, and again in BLI_path_abs), so this does the
same, and maps Windows drive letters the way BLI_path_abs does ('C:\\x' -> '/c/x').
"""

import json
import os
import re
import sys

import bpy

FOLDER_LIMIT = 100_000  # files per expanded folder (cache folder or image sequence)
KINDS = ("image", "udim", "sequence", "movie", "library", "cache", "sound", "font", "ies", "volume",
         "alembic", "script", "other")


class TracerError(Exception):
    pass


def under_tempdir(path):
    """Blender's own session folder (/tmp/blender_XXXX): new for every run, never part of a project."""
    temp = os.path.normpath(bpy.app.tempdir) if bpy.app.tempdir else None
    return bool(temp) and (path == temp or path.startswith(temp + os.sep))


def udim_present(path):
    """A tiled path counts as present when any tile exists, as in the volunteer's driver."""
    if "<UDIM>" not in path and "<UVTILE>" not in path:
        return False
    import glob
    return bool(glob.glob(re.sub(r"<UDIM>|<UVTILE>", "*", glob.escape(path))))


def parse_args():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    out = None
    i = 0
    while i < len(argv):
        if argv[i] == "--out" and i + 1 < len(argv):
            out = argv[i + 1]
            i += 2
        elif argv[i].startswith("--out="):
            out = argv[i][len("--out="):]
            i += 1
        else:
            raise TracerError(f"unknown argument {argv[i]!r} (usage: -- --out OUT.json)")
    if not out:
        raise TracerError("missing --out OUT.json")
    return os.path.abspath(out)


def describe(id_data, what=None):
    """'Image 'wood'' or 'Image 'tex' (library '//libs/a.blend')'."""
    kind = what or type(id_data).__name__
    text = f"{kind} '{id_data.name}'"
    lib = getattr(id_data, "library", None)
    if lib is not None:
        text += f" (library '{lib.filepath}')"
    return text


class Tracer:
    def __init__(self):
        if not bpy.data.filepath:
            raise TracerError("no .blend file loaded")
        self.main = os.path.normpath(os.path.abspath(bpy.data.filepath))
        self.files = {}          # path -> kind
        self.missing = {}        # path -> [kind, [used_by...]]
        self.cache_folders = set()
        self.covered = set()     # every path resolved by a rule (for the blend_paths cross-check)

    # -- paths -------------------------------------------------------------------------------------------

    def resolve(self, raw, library=None):
        """Absolute, normalised path of a stored path, or None for an empty one."""
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not raw or not raw.strip():
            return None
        path = raw.replace("\\", "/")
        if path.startswith("//"):
            # bpy.path.abspath joins '//x' with the folder of the library file (or the main file).
            path = bpy.path.abspath(path, library=library)
        elif len(path) >= 3 and path[0].isalpha() and path[1] == ":" and path[2] == "/":
            path = "/" + path[0].lower() + path[2:]  # BLI_path_abs on POSIX: 'C:/x' -> '/c/x'
        if not os.path.isabs(path):
            path = os.path.abspath(path)  # relative without '//': Blender opens it from the cwd
        return os.path.normpath(path)

    # -- recording ---------------------------------------------------------------------------------------

    def add(self, path, kind, used_by):
        """One referenced file: into files if it exists, else into missing."""
        if path is None or path == self.main:
            return
        assert kind in KINDS, kind
        self.covered.add(path)
        if os.path.isfile(path):
            old = self.files.get(path)
            if old is None or old == "other":
                self.files[path] = kind
        else:
            self.add_missing(path, kind, used_by)

    def add_missing(self, path, kind, used_by):
        self.covered.add(path)
        entry = self.missing.setdefault(path, [kind, []])
        if used_by not in entry[1]:
            entry[1].append(used_by)

    def add_ref(self, raw, kind, id_data, used_by=None):
        self.add(self.resolve(raw, getattr(id_data, "library", None)), kind, used_by or describe(id_data))

    def add_folder(self, folder, kind, used_by, required):
        """Every file under folder (recursively); a required folder that is absent is missing."""
        if folder is None:
            return
        self.covered.add(folder)
        if not os.path.isdir(folder):
            if required:
                self.add_missing(folder, kind, used_by)
            return
        self.cache_folders.add(folder)
        count = 0
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                count += 1
                if count > FOLDER_LIMIT:
                    raise TracerError(f"folder {folder} (used by {used_by}) has more than {FOLDER_LIMIT} "
                                      "files; refusing to include it")
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    self.add(os.path.normpath(path), kind, used_by)

    def add_sequence(self, path, kind, used_by):
        """Every file in the folder matching the numbered pattern of path (frame_0001.png -> frame_####.png),
        decoded like BLI_path_sequence_decode: the last run of digits before the extension."""
        if path is None:
            return
        self.covered.add(path)
        folder, name = os.path.split(path)
        dot = name.rfind(".")
        stem_end = dot if dot > 0 else len(name)
        m = None
        for m in re.finditer(r"[0-9]+", name[:stem_end]):
            pass
        if m is None:  # no frame number: a single file
            self.add(path, kind, used_by)
            return
        head, digits, tail = name[:m.start()], m.group(), name[m.end():]
        width = len(digits)
        pattern = re.compile(re.escape(head) + r"([0-9]+)" + re.escape(tail) + r"\Z")
        found = []
        try:
            entries = os.listdir(folder)
        except OSError:
            entries = []
        for entry in entries:
            hit = pattern.match(entry)
            if not hit:
                continue
            num = hit.group(1)
            # Blender writes frame N as '%0*d' % (width, N): exactly width digits, or more without padding.
            if len(num) != width and (len(num) < width or num.startswith("0")):
                continue
            full = os.path.join(folder, entry)
            if os.path.isfile(full):
                found.append(full)
                if len(found) > FOLDER_LIMIT:
                    raise TracerError(f"sequence {path} (used by {used_by}) has more than {FOLDER_LIMIT} "
                                      f"files in {folder}; refusing to include it")
        if not found:
            self.add_missing(path, kind, used_by)
        for full in found:
            self.add(os.path.normpath(full), kind, used_by)

    # -- data-blocks -------------------------------------------------------------------------------------

    def libraries(self):
        # bpy.data.libraries lists indirect libraries too, each once (Blender merges a file linked through
        # several paths, circular links included), so no recursion is needed and nothing can loop; the
        # path set deduplicates anyway.
        for lib in bpy.data.libraries:
            if lib.packed_file is not None:
                continue
            # After loading, Blender rewrites an indirect library's relative path to be relative to the main
            # file, so it resolves against the main file, not against its parent library.
            self.add(self.resolve(lib.filepath), "library", f"Library '{lib.name}'")

    def images(self):
        for img in bpy.data.images:
            source = img.source
            if source in ("GENERATED", "VIEWER"):
                continue
            if img.packed_file is not None or len(getattr(img, "packed_files", ())) > 0:
                continue
            if not img.filepath:
                continue
            used_by = describe(img, "Image")
            lib = img.library
            if source == "TILED":
                self.udim(img, used_by)
            elif source == "SEQUENCE":
                self.add_sequence(self.resolve(img.filepath, lib), "sequence", used_by)
            elif source == "MOVIE":
                self.add_ref(img.filepath, "movie", img, used_by)
            else:
                self.add_ref(img.filepath, "image", img, used_by)

    def udim(self, img, used_by):
        raw = img.filepath.replace("\\", "/")
        if "<UDIM>" not in raw and "<UVTILE>" not in raw:
            # A path stored without a token (files from before 3.0): the tile number in the file name.
            head, name = raw.rsplit("/", 1) if "/" in raw else ("", raw)
            hits = [m for m in re.finditer(r"(?<![0-9])(1[0-9]{3})(?![0-9])", name)
                    if 1001 <= int(m.group(1)) <= 1999]
            if not hits:
                self.add_ref(img.filepath, "udim", img, used_by)
                return
            m = hits[-1]
            name = name[:m.start()] + "<UDIM>" + name[m.end():]
            raw = (head + "/" if head else "") + name
        pattern = self.resolve(raw, img.library)
        self.covered.add(pattern)
        for tile in img.tiles:
            n = tile.number
            u, v = (n - 1001) % 10 + 1, (n - 1001) // 10 + 1
            path = pattern.replace("<UDIM>", str(n)).replace("<UVTILE>", f"u{u}_v{v}")
            self.add(path, "udim", f"{used_by} tile {n}")

    def movieclips(self):
        for clip in bpy.data.movieclips:
            if not clip.filepath:
                continue
            path = self.resolve(clip.filepath, clip.library)
            if clip.source == "SEQUENCE":
                self.add_sequence(path, "sequence", describe(clip, "Movie clip"))
            else:
                self.add(path, "movie", describe(clip, "Movie clip"))

    def sequencer(self):
        for scene in bpy.data.scenes:
            se = scene.sequence_editor
            if se is None:
                continue
            lib = scene.library
            for strip in se.sequences_all:
                used_by = f"Sequencer strip '{strip.name}' in scene '{scene.name}'"
                if strip.type == "IMAGE":
                    directory = strip.directory.replace("\\", "/")
                    if directory and not directory.endswith("/"):
                        directory += "/"  # keeps '//' (the .blend's own folder) intact
                    for elem in strip.elements:
                        if elem.filename:
                            self.add(self.resolve(directory + elem.filename, lib), "sequence", used_by)
                elif strip.type == "MOVIE":
                    self.add(self.resolve(strip.filepath, lib), "movie", used_by)
                elif strip.type == "SOUND" and strip.sound is not None:
                    sound = strip.sound
                    if sound.packed_file is None:
                        self.add(self.resolve(sound.filepath, sound.library), "sound", used_by)

    def sounds(self):
        for sound in bpy.data.sounds:
            if sound.packed_file is None and sound.filepath:
                self.add_ref(sound.filepath, "sound", sound, describe(sound, "Sound"))

    def fonts(self):
        for font in bpy.data.fonts:
            if font.packed_file is not None or not font.filepath or font.filepath == "<builtin>":
                continue
            self.add_ref(font.filepath, "font", font, describe(font, "Font"))

    def cache_files(self):
        for cf in bpy.data.cache_files:
            used_by = describe(cf, "Cache file")
            if cf.filepath:
                path = self.resolve(cf.filepath, cf.library)
                if cf.is_sequence:
                    self.add_sequence(path, "alembic", used_by)
                else:
                    self.add(path, "alembic", used_by)
            for layer in getattr(cf, "layers", ()):
                if layer.filepath:
                    self.add(self.resolve(layer.filepath, cf.library), "alembic", f"{used_by} layer")

    def volumes(self):
        for vol in bpy.data.volumes:
            if vol.packed_file is not None or not vol.filepath:
                continue
            path = self.resolve(vol.filepath, vol.library)
            if vol.is_sequence:
                self.add_sequence(path, "volume", describe(vol, "Volume"))
            else:
                self.add(path, "volume", describe(vol, "Volume"))

    def node_trees(self):
        """IES and OSL script nodes with external files, in every node tree."""
        trees = []
        for coll in (bpy.data.materials, bpy.data.worlds, bpy.data.lights, bpy.data.textures,
                     bpy.data.linestyles, bpy.data.scenes):
            for owner in coll:
                nt = getattr(owner, "node_tree", None)
                if nt is not None:
                    trees.append((nt, owner))
        for group in bpy.data.node_groups:
            trees.append((group, group))
        for nt, owner in trees:
            for node in nt.nodes:
                kind = {"ShaderNodeTexIES": "ies", "ShaderNodeScript": "script"}.get(node.bl_idname)
                if kind is None or getattr(node, "mode", "") != "EXTERNAL" or not node.filepath:
                    continue
                used_by = f"{describe(owner)} node '{node.name}'"
                self.add(self.resolve(node.filepath, owner.library), kind, used_by)

    # -- caches --------------------------------------------------------------------------------------------

    def point_cache(self, pc, owner, what):
        """A disk or external point cache: the whole folder (ptcache_path in pointcache.c)."""
        for cache in pc.point_caches if len(pc.point_caches) else [pc]:
            if not (cache.use_disk_cache or cache.use_external):
                continue  # stored inside the .blend
            lib = owner.library
            base = (self.resolve(lib.filepath) if lib is not None and cache.use_library_path else self.main)
            if cache.use_external:
                raw = cache.filepath.replace("\\", "/")
                if not raw:
                    continue
                folder = (os.path.join(os.path.dirname(base), raw[2:]) if raw.startswith("//")
                          else self.resolve(raw))
            else:
                file = os.path.basename(base)
                if len(file) > 6:
                    file = file[:-6]  # Blender cuts six characters (".blend") whatever they are
                folder = os.path.join(os.path.dirname(base), "blendcache_" + file)
            folder = os.path.normpath(folder)
            self.add_folder(folder, "cache", f"{describe(owner)} {what} point cache", required=cache.is_baked)

    def modifiers(self):
        for ob in bpy.data.objects:
            lib = ob.library
            for md in ob.modifiers:
                used_by = f"{describe(ob, 'Object')} modifier '{md.name}'"
                t = md.type
                if t == "MESH_CACHE":
                    self.add(self.resolve(md.filepath, lib), "cache", used_by)
                elif t == "PARTICLE_SYSTEM":
                    self.point_cache(md.particle_system.point_cache, ob, f"particle system '{md.name}'")
                elif t in ("CLOTH", "SOFT_BODY"):
                    self.point_cache(md.point_cache, ob, t.lower().replace("_", " "))
                elif t == "DYNAMIC_PAINT":
                    canvas = md.canvas_settings
                    for surface in canvas.canvas_surfaces if canvas is not None else ():
                        if surface.is_cache_user and surface.point_cache is not None:
                            self.point_cache(surface.point_cache, ob, f"dynamic paint '{surface.name}'")
                elif t == "FLUID" and md.fluid_type == "DOMAIN":
                    ds = md.domain_settings
                    folder = self.resolve(ds.cache_directory, lib)
                    self.add_folder(folder, "cache", used_by, required=ds.has_cache_baked_any)
                elif t == "OCEAN" and md.is_cached:
                    self.add_folder(self.resolve(md.filepath, lib), "cache", used_by, required=True)
        for scene in bpy.data.scenes:
            rbw = scene.rigidbody_world
            if rbw is not None and rbw.point_cache is not None:
                self.point_cache(rbw.point_cache, scene, "rigid body world")

    # -- cross-check -------------------------------------------------------------------------------------

    def blend_paths(self):
        """Files bpy.utils.blend_paths knows that no rule above covered (kind 'other')."""
        texts = set()
        for text in bpy.data.texts:  # a text's content is saved in the .blend: not a dependency
            p = self.resolve(text.filepath, text.library) if text.filepath else None
            if p:
                texts.add(p)
        extra = []
        for raw in bpy.utils.blend_paths(absolute=True, packed=False, local=False):
            path = self.resolve(raw)
            if path is None or path == self.main or path in self.covered or path in texts:
                continue
            if any(path.startswith(f + os.sep) for f in self.cache_folders):
                continue
            if os.path.isfile(path):
                self.add(path, "other", "bpy.utils.blend_paths")
                extra.append(path)
            elif not os.path.exists(path) and not under_tempdir(path) and not udim_present(path):
                # The volunteer's driver checks blend_paths the same way; whatever is absent here may be absent
                # there (an unbaked cache folder, say), or every frame would fail as "did not arrive".
                self.add_missing(path, "other", "bpy.utils.blend_paths")
        return extra

    # -- scene summary -----------------------------------------------------------------------------------

    @staticmethod
    def scene_summary():
        scene = bpy.context.scene
        r = scene.render
        engine = r.engine
        denoising = False
        if engine == "CYCLES" and scene.cycles.use_denoising:
            # Debian's build fails ("Build without OpenImageDenoiser") only when a view layer that renders
            # also has denoising on; denoising data passes and the compositor's Denoise node render fine.
            layers = [bpy.context.view_layer] if r.use_single_layer else list(scene.view_layers)
            denoising = any(vl.use and vl.cycles.use_denoising for vl in layers if vl is not None)
        file_outputs = 0
        if scene.use_nodes and r.use_compositing and scene.node_tree is not None:
            seen = set()

            def count(tree):
                n = 0
                if tree.name_full in seen:
                    return 0
                seen.add(tree.name_full)
                for node in tree.nodes:
                    if node.mute:
                        continue
                    if node.bl_idname == "CompositorNodeOutputFile":
                        n += 1
                    elif node.bl_idname == "CompositorNodeGroup" and node.node_tree is not None:
                        n += count(node.node_tree)
                return n

            file_outputs = count(scene.node_tree)
        # RE_seq_render_active: the sequencer renders when enabled and any top-level strip is not sound.
        se = scene.sequence_editor
        sequencer = bool(r.use_sequencer and se is not None
                         and any(s.type != "SOUND" for s in se.sequences))
        # BKE_render_resolution: the size in pixels is the integer part of size × percentage / 100.
        resolution = None
        if not (r.use_border and r.use_crop_to_border):
            resolution = [r.resolution_x * r.resolution_percentage // 100,
                          r.resolution_y * r.resolution_percentage // 100]
        return {"engine": engine, "denoising": bool(denoising), "file_outputs": file_outputs,
                "sequencer": sequencer, "resolution": resolution}

    # -- all -----------------------------------------------------------------------------------------------

    def run(self):
        self.libraries()
        self.volumes()  # before the fluid folders, so VDBs a Volume reads are 'volume'
        self.images()
        self.movieclips()
        self.sequencer()
        self.sounds()
        self.fonts()
        self.cache_files()
        self.node_trees()
        self.modifiers()
        extra = self.blend_paths()
        for path in list(self.files):  # a file found after all is not missing
            self.missing.pop(path, None)
        return {
            "blender": bpy.app.version_string,
            "files": [{"path": p, "kind": k} for p, k in sorted(self.files.items())],
            "missing": [{"path": p, "kind": k, "used_by": ", ".join(users)}
                        for p, (k, users) in sorted(self.missing.items())],
            "cache_folders": sorted(self.cache_folders),
            "scenes": self.scene_summary(),
        }, extra


def check_utf8(doc):
    """JSON carries text: a path that is not valid UTF-8 cannot be transported faithfully."""
    for entry in doc["files"] + doc["missing"]:
        try:
            entry["path"].encode("utf-8")
        except UnicodeEncodeError:
            raise TracerError("path is not valid UTF-8: " + entry["path"].encode("utf-8", "replace").decode())


def main():
    out = parse_args()
    doc, extra = Tracer().run()
    check_utf8(doc)
    tmp = out + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.replace(tmp, out)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise TracerError(f"cannot write {out}: {e}")
    size = sum(os.path.getsize(e["path"]) for e in doc["files"])
    print(f"deps.py: {len(doc['files'])} files ({size} bytes), {len(doc['missing'])} missing, "
          f"{len(doc['cache_folders'])} cache folders, {len(extra)} found only by blend_paths", flush=True)


try:
    main()
except TracerError as e:
    print(f"deps.py: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
except Exception as e:  # noqa: BLE001 - any bug must fail loudly, never write a partial list
    import traceback
    traceback.print_exc()
    print(f"deps.py: error: internal: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
