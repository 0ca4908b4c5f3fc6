#!/usr/bin/env bash
# Install the s2seg plugin into the current user's QGIS profile and enable it, so that QGIS
# desktop and qgis_process both load it.
#
# By default the plugin zip is built (tools/package.sh) and unpacked into
# <profile>/python/plugins/s2seg — exactly what "Install from ZIP" does. --link symlinks the
# checkout instead (edits take effect on the next QGIS start). When the project's .venv exists
# its site-packages is recorded in the profile (setting s2seg/extraPythonPaths) so that QGIS's
# own Python finds torch there; --no-venv skips that.
#
# The profile root is $QGIS_CUSTOM_CONFIG_PATH when set (as QGIS itself does), else the
# platform default (~/.local/share/QGIS/QGIS3 on Linux).
#
# usage: tools/install_plugin.sh [--profile NAME] [--zip FILE] [--link] [--no-venv]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PLUGIN=s2seg
PROFILE="${QGIS_PROFILE:-default}"
MODE=zip
ZIP=""
USE_VENV=1
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="$2"; shift 2 ;;
        --zip) ZIP="$2"; shift 2 ;;
        --link) MODE=link; shift ;;
        --no-venv) USE_VENV=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install_plugin.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ -n "${QGIS_CUSTOM_CONFIG_PATH:-}" ]; then
    CONFIG_ROOT="$QGIS_CUSTOM_CONFIG_PATH"
elif [ "$(uname -s)" = "Darwin" ]; then
    CONFIG_ROOT="$HOME/Library/Application Support/QGIS/QGIS3"
else
    CONFIG_ROOT="${XDG_DATA_HOME:-$HOME/.local/share}/QGIS/QGIS3"
fi
PROFILE_DIR="$CONFIG_ROOT/profiles/$PROFILE"
PLUGINS_DIR="$PROFILE_DIR/python/plugins"
TARGET="$PLUGINS_DIR/$PLUGIN"
INI="$PROFILE_DIR/QGIS/QGIS3.ini"
mkdir -p "$PLUGINS_DIR" "$PROFILE_DIR/QGIS"

# Replace an earlier installation — but never delete a folder that is not an s2seg plugin.
if [ -L "$TARGET" ]; then
    rm "$TARGET"
elif [ -e "$TARGET" ]; then
    if ! grep -qs '^name=S2Seg' "$TARGET/metadata.txt"; then
        echo "install_plugin.sh: $TARGET exists and is not the s2seg plugin; not touching it" >&2
        exit 1
    fi
    rm -rf "$TARGET"
fi

if [ "$MODE" = link ]; then
    ln -s "$ROOT" "$TARGET"
else
    if [ -z "$ZIP" ]; then
        ZIP="$(bash "$ROOT/tools/package.sh" -q)"
    fi
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$ZIP" "$PLUGINS_DIR"  # any Python
    [ -f "$TARGET/metadata.txt" ] || { echo "install_plugin.sh: $ZIP has no $PLUGIN/metadata.txt" >&2; exit 1; }
fi

SITE=""
VENV_PY="$ROOT/.venv/bin/python"
if [ "$USE_VENV" = 1 ] && [ -x "$VENV_PY" ]; then
    SITE="$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
fi

# Enable the plugin ([PythonPlugins] s2seg=true, what `qgis_process plugins enable` writes) and
# record the extra Python path, through QSettings so the ini keeps QGIS's own format.
# A Python with Qt's bindings (QGIS's own): the first python3 on PATH may be another one (pyenv, conda).
SETTINGS_PY=""
for candidate in "$VENV_PY" /usr/bin/python3 "$(command -v python3 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'import PyQt5.QtCore' 2>/dev/null; then
        SETTINGS_PY="$candidate"
        break
    fi
done
[ -n "$SETTINGS_PY" ] || { echo "install_plugin.sh: no Python with PyQt5 (QGIS's Python) found" >&2; exit 1; }
"$SETTINGS_PY" - "$INI" "$PLUGIN" "$SITE" <<'PY'
import sys
try:
    from qgis.PyQt.QtCore import QSettings
except ImportError:
    from PyQt5.QtCore import QSettings
ini, plugin, site = sys.argv[1:4]
settings = QSettings(ini, QSettings.IniFormat)
settings.setValue(f"PythonPlugins/{plugin}", True)
if site:
    settings.setValue("s2seg/extraPythonPaths", site)
else:
    settings.remove("s2seg/extraPythonPaths")
settings.sync()
if settings.status() != QSettings.NoError:
    sys.exit(f"install_plugin.sh: cannot write {ini}")
PY

echo "s2seg installed: $TARGET ($MODE), enabled in $INI"
if [ -n "$SITE" ]; then
    echo "QGIS will use torch from $SITE"
else
    # Tell the user now, not at the first run, when QGIS's Python lacks torch.
    "$SETTINGS_PY" - "$PLUGINS_DIR" <<'PY' || true
import sys
sys.path.insert(0, sys.argv[1])
from s2seg.s2seg_plugin.dependencies import missing_dependencies_message
message = missing_dependencies_message()
if message:
    print("\nNote: " + message)
PY
fi
echo "Start QGIS and find \"Segment Sentinel-2 tile\" under S2Seg ▸ Segmentation in the Processing Toolbox,"
echo "or run: qgis_process.bin run s2seg:segmenttile -- INPUT=<tile> OUTPUT_FOLDER=<folder>"
