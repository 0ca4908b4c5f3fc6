#!/usr/bin/env bash
# Prepare a fresh Debian bookworm machine: QGIS stack from apt, .venv with torch & co,
# and the repository importable as the package `s2seg` (the repo root is the plugin folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
cd "$ROOT"

if ! /usr/bin/python3 -c "import rasterio, qgis.core, venv" >/dev/null 2>&1 || [ ! -x /usr/bin/qgis_process.bin ]; then
    echo "[setup] installing the QGIS 3.22 stack from Debian (apt)…"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        qgis python3-qgis qgis-providers python3-rasterio gdal-bin python3-venv >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV (system site packages: Debian's numpy, GDAL, rasterio, QGIS)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

STAMP="$VENV/.s2seg-requirements"
if ! cmp -s requirements.txt "$STAMP"; then
    echo "[setup] installing Python packages into .venv (torch takes about a minute)…"
    CONSTRAINTS="$VENV/constraints.txt"
    # Pin numpy to Debian's build so no package drags a newer numpy into the venv.
    echo "numpy==$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)')" > "$CONSTRAINTS"
    "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" -r requirements.txt
    cp requirements.txt "$STAMP"
fi

# Make the repository importable as `s2seg` whatever the checkout folder is called.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$VENV/s2seg-src"
ln -sfn "$ROOT" "$VENV/s2seg-src/s2seg"
echo "$VENV/s2seg-src" > "$SITE/s2seg-src.pth"
cat > "$VENV/bin/s2seg" <<PY
#!$VENV/bin/python
import sys
from s2seg.core.cli import main
sys.exit(main())
PY
chmod +x "$VENV/bin/s2seg"
"$VENV/bin/python" -c "import numpy, rasterio, torch, s2seg.core; assert numpy.__file__.startswith('/usr/lib/python3/'), numpy.__file__"
echo "[setup] ready: $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
