"""Save user preferences with "Auto Run Python Scripts" switched on.

Test helper only: it creates the unsafe configuration that blenderdist must
defend against. Point Blender at a throw-away config directory first, never at
a real user's:

    HOME=/tmp/h XDG_CONFIG_HOME=/tmp/h/.config \
        blender -b --python-exit-code 1 --python scripts/enable_autoexec_prefs.py

Blender 3.4 on Linux keeps preferences in $BLENDER_USER_CONFIG if set, else
$XDG_CONFIG_HOME/blender/3.4/config if set, else $HOME/.config/blender/3.4/config
(userpref.blend). Do not pass --factory-startup: it is meant to leave the saved
preferences alone.
"""

import os
import sys

import bpy

prefs = bpy.context.preferences
prefs.filepaths.use_scripts_auto_execute = True
bpy.ops.wm.save_userpref()

config_dir = bpy.utils.user_resource("CONFIG")
path = os.path.join(config_dir, "userpref.blend")
if not os.path.isfile(path):
    print("enable_autoexec_prefs: preferences were not written to " + path)
    sys.exit(1)
print("enable_autoexec_prefs: auto-run enabled in " + path)
