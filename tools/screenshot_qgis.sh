#!/usr/bin/env bash
# Screenshot of QGIS desktop (under Xvfb) after running "Segment Sentinel-2 tile" on a sample tile:
# the Processing Toolbox with the algorithm, and the styled products grouped under the tile name.
# Writes docs/qgis-segment-tile.png (downscaled to stay < 500 KB). Not part of `make test`.
#
# Uses a throw-away QGIS profile: the plugin zip (tools/package.sh) is installed and enabled there
# with tools/install_plugin.sh, which also points QGIS's Python at the project's .venv (torch).
# Needs: qgis, xvfb (xvfb-run), imagemagick — on Debian:
#   apt-get install -y xvfb imagemagick
#
# usage: tools/screenshot_qgis.sh [--size PX] [--output FILE.png] [--keep]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SIZE=720
OUTPUT="$ROOT/docs/qgis-segment-tile.png"
KEEP=0
SCREEN=1600x1000
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE="$2"; shift 2 ;;
        --output) OUTPUT="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "screenshot_qgis.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in qgis xvfb-run convert; do
    command -v "$tool" >/dev/null || { echo "screenshot_qgis.sh: $tool not found (see the header for apt packages)" >&2; exit 1; }
done
[ -x "$ROOT/.venv/bin/python" ] || { echo "screenshot_qgis.sh: run make setup first (.venv missing)" >&2; exit 1; }

WORK="$(mktemp -d)"
if [ "$KEEP" = 0 ]; then trap 'rm -rf "$WORK"' EXIT; else echo "work folder: $WORK"; fi
export QGIS_CUSTOM_CONFIG_PATH="$WORK/profile"
unset QGIS_PLUGINPATH

# Plugin from the zip a user installs, enabled, with the venv's site-packages for torch.
bash "$ROOT/tools/package.sh" -q -o "$WORK/s2seg.zip" >/dev/null
bash "$ROOT/tools/install_plugin.sh" --zip "$WORK/s2seg.zip" >/dev/null
# A calm first start: no tips, no news feed, no version check.
"$ROOT/.venv/bin/python" - "$QGIS_CUSTOM_CONFIG_PATH/profiles/default/QGIS/QGIS3.ini" <<'PY'
import sys
from qgis.PyQt.QtCore import QSettings
s = QSettings(sys.argv[1], QSettings.IniFormat)
for key, value in {"qgis/checkVersion": False, "core/NewsFeed/httpsfeedqgisorg/disabled": True,
                   "qgis/showTips": False, "qgis/showTips322": False}.items():
    s.setValue(key, value)
s.sync()
PY

"$ROOT/.venv/bin/s2seg" sample-tile "$WORK/tile" --size "$SIZE" --seed 3 --level L2A --layout safe >"$WORK/sample.log" 2>&1
TILE="$(find "$WORK/tile" -maxdepth 1 -name '*.SAFE' | head -n1)"
[ -n "$TILE" ] || { echo "screenshot_qgis.sh: no sample tile written" >&2; exit 1; }

export S2SEG_SHOT_TILE="$TILE" S2SEG_SHOT_OUTDIR="$WORK/out" S2SEG_SHOT_PNG="$WORK/screen.png" \
       S2SEG_SHOT_STATUS="$WORK/status"
# QGIS must not pick a desktop session's settings or an offscreen platform from the caller.
unset QT_QPA_PLATFORM
xvfb-run -a -s "-screen 0 ${SCREEN}x24" \
    qgis --noversioncheck --nologo --code "$ROOT/tools/screenshot_qgis.py" >"$WORK/qgis.log" 2>&1 &
QGIS_PID=$!
# The script writes the status file, then quits QGIS; give up after 5 minutes, or 30 s after the status.
for _ in $(seq 600); do
    kill -0 "$QGIS_PID" 2>/dev/null || break
    [ -s "$WORK/status" ] && { for _ in $(seq 60); do kill -0 "$QGIS_PID" 2>/dev/null || break; sleep 0.5; done; break; }
    sleep 0.5
done
if kill -0 "$QGIS_PID" 2>/dev/null; then
    echo "screenshot_qgis.sh: QGIS did not exit; stopping it" >&2
    pkill -TERM -P "$QGIS_PID" 2>/dev/null || true  # xvfb-run's children (QGIS, Xvfb)
    kill "$QGIS_PID" 2>/dev/null || true
fi
wait "$QGIS_PID" 2>/dev/null || true
STATUS="$(cat "$WORK/status" 2>/dev/null || echo "no status: QGIS crashed or timed out")"
if [ "${STATUS%% *}" != ok ]; then
    echo "screenshot_qgis.sh: $STATUS" >&2
    tail -n 30 "$WORK/qgis.log" >&2
    exit 1
fi

mkdir -p "$(dirname "$OUTPUT")"
# Downscale a little and quantise: a UI screenshot stays sharp with 256 colours.
convert "$WORK/screen.png" -resize 1400x -colors 256 -strip "PNG8:$OUTPUT"
echo "$OUTPUT ($STATUS, $(( $(stat -c %s "$OUTPUT") / 1024 )) KiB)"
