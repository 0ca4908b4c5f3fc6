#!/usr/bin/env bash
# Build the installable QGIS plugin zip: dist/s2seg-<version>.zip with a single top-level
# folder "s2seg/" (what "Install from ZIP" and plugins.qgis.org expect).
#
# The file list is the working tree as git sees it — tracked files plus untracked files that
# .gitignore does not exclude — minus paths marked export-ignore in .gitattributes. So the zip
# matches `git archive --prefix=s2seg/` for a committed tree, and also works before anything is
# committed. Outside a git checkout a built-in exclusion list is used instead.
#
# usage: tools/package.sh [-o OUTPUT.zip] [-q]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PLUGIN=s2seg
QUIET=0
OUTPUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        -o|--output) OUTPUT="$2"; shift 2 ;;
        -q|--quiet) QUIET=1; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

VERSION="$(sed -n 's/^version[[:space:]]*=[[:space:]]*//p' "$ROOT/metadata.txt" | head -n1 | tr -d '\r')"
[ -n "$VERSION" ] || { echo "package.sh: no version= in $ROOT/metadata.txt" >&2; exit 1; }
OUTPUT="${OUTPUT:-$ROOT/dist/$PLUGIN-$VERSION.zip}"
mkdir -p "$(dirname "$OUTPUT")"
OUTPUT="$(cd "$(dirname "$OUTPUT")" && pwd)/$(basename "$OUTPUT")"

LIST="$(mktemp)"
trap 'rm -f "$LIST"' EXIT
cd "$ROOT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ "$(git rev-parse --show-toplevel)" = "$ROOT" ]; then
    # -z everywhere: file names may contain spaces. check-attr prints "path\0attr\0value\0".
    git ls-files -z --cached --others --exclude-standard \
        | git check-attr -z --stdin export-ignore \
        | python3 -c '
import os, sys
fields = sys.stdin.buffer.read().split(b"\0")
for path, _attr, value in zip(fields[0::3], fields[1::3], fields[2::3]):
    if value != b"set" and os.path.isfile(path):  # deleted-but-tracked files are skipped
        sys.stdout.buffer.write(path + b"\n")
' > "$LIST"
else
    find . -type f \
        -not -path './.git/*' -not -path './.venv/*' -not -path './tests/*' -not -path './tools/*' \
        -not -path './docs/*' -not -path './benchmarks/*' -not -path './data/*' -not -path './out/*' -not -path './dist/*' \
        -not -path './.qgis-settings/*' -not -path '*/.pytest_cache/*' -not -path '*/.hypothesis/*' \
        -not -name 'Makefile' -not -name 'pytest.ini' -not -name 'requirements*.txt' -not -name '.git*' \
        | sed 's|^\./||' > "$LIST"
fi

python3 - "$LIST" "$OUTPUT" "$PLUGIN" "$QUIET" <<'PY'
"""Write the zip (sorted, fixed timestamps: reproducible) and check the plugins-site rules."""
import os
import sys
import zipfile

list_file, output, plugin, quiet = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
with open(list_file, "rb") as fh:
    paths = sorted({p.decode() for p in fh.read().splitlines() if p})
# Never ship byte code, caches or editor/OS litter, whatever git thinks.
bad_parts = {"__pycache__", ".pytest_cache", ".hypothesis", "__MACOSX", ".git", ".venv", ".qgis-settings"}
paths = [
    p for p in paths
    if not (set(p.split("/")) & bad_parts) and not p.endswith((".pyc", ".pyo", "~", ".DS_Store", ".swp", ".part"))
]
for required in ("__init__.py", "metadata.txt", "LICENSE"):
    if required not in paths:
        sys.exit(f"package.sh: {required} is missing from the plugin")
tmp = output + ".part"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
    for path in paths:
        info = zipfile.ZipInfo(f"{plugin}/{path}", date_time=(2020, 1, 1, 0, 0, 0))
        mode = os.stat(path).st_mode & 0o777
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as src:
            zf.writestr(info, src.read())
os.replace(tmp, output)
size = os.path.getsize(output)
if size > 25 * 2**20:
    sys.exit(f"package.sh: {output} is {size / 2**20:.1f} MiB; plugins.qgis.org accepts at most 25 MiB")
if not quiet:
    print(f"{output}: {len(paths)} files, {size / 1024:.0f} KiB")
PY
echo "$OUTPUT"
