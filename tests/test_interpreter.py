"""core/interpreter.py: the program of the running Python on every QGIS layout, and for real here with a
foreign ``python3`` first on PATH (what QGIS's embedded Python reports as ``sys.executable``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import s2seg
from s2seg.core.interpreter import PythonLayout, find_interpreter, interpreter_candidates

#: The folder holding the s2seg package under test, for the subprocesses.
PACKAGE_PARENT = str(Path(s2seg.__file__).parent.parent)  # not resolved: s2seg may be a link


def layout(platform, prefix, executable, base_prefix=None, version=(3, 11)):
    base = base_prefix or prefix
    return PythonLayout(platform=platform, version=version, prefix=prefix, base_prefix=base, exec_prefix=prefix,
                        base_exec_prefix=base, executable=executable)


# (case, layout, programs that exist, expected)
LAYOUTS = [
    ("debian, pyenv shim first on PATH",
     layout("linux", "/usr", "/root/.pyenv/shims/python3"),
     {"/root/.pyenv/shims/python3", "/usr/bin/python3", "/usr/bin/python3.11"},
     "/usr/bin/python3.11"),
    ("debian, QGIS started from an activated venv",
     layout("linux", "/home/u/venv", "/home/u/venv/bin/python3", base_prefix="/usr"),
     {"/usr/bin/python3.11", "/home/u/venv/bin/python3.11", "/home/u/venv/bin/python3"},
     "/home/u/venv/bin/python3.11"),
    ("flatpak-style /app prefix",
     layout("linux", "/app", "/app/bin/qgis"),
     {"/app/bin/qgis", "/app/bin/python3", "/usr/bin/python3.11"},
     "/app/bin/python3"),
    ("windows OSGeo4W",
     layout("win32", r"C:\OSGeo4W\apps\Python39", r"C:\OSGeo4W\bin\qgis-bin.exe", version=(3, 9)),
     {r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\bin\python3.exe", r"C:\OSGeo4W\apps\Python39\python.exe"},
     r"C:\OSGeo4W\apps\Python39\python.exe"),
    ("windows standalone installer",
     layout("win32", r"C:\Program Files\QGIS 3.22.16\apps\Python39",
            r"C:\Program Files\QGIS 3.22.16\bin\qgis-bin.exe", version=(3, 9)),
     {r"C:\Program Files\QGIS 3.22.16\apps\Python39\python.exe"},
     r"C:\Program Files\QGIS 3.22.16\apps\Python39\python.exe"),
    ("windows venv made from OSGeo4W's python",
     layout("win32", r"C:\Users\u\s2seg-env", r"C:\OSGeo4W\bin\qgis-bin.exe",
            base_prefix=r"C:\OSGeo4W\apps\Python39", version=(3, 9)),
     {r"C:\OSGeo4W\apps\Python39\python.exe", r"C:\Users\u\s2seg-env\Scripts\python.exe"},
     r"C:\Users\u\s2seg-env\Scripts\python.exe"),
    ("macOS QGIS.app, prefix Contents/MacOS",
     layout("darwin", "/Applications/QGIS.app/Contents/MacOS", "/Applications/QGIS.app/Contents/MacOS/QGIS",
            version=(3, 9)),
     {"/Applications/QGIS.app/Contents/MacOS/QGIS", "/Applications/QGIS.app/Contents/MacOS/bin/python3",
      "/usr/bin/python3"},
     "/Applications/QGIS.app/Contents/MacOS/bin/python3"),
    ("macOS QGIS.app, Python framework prefix",
     layout("darwin", "/Applications/QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.9",
            "/Applications/QGIS-LTR.app/Contents/MacOS/QGIS", version=(3, 9)),
     {"/Applications/QGIS-LTR.app/Contents/MacOS/bin/python3"},
     "/Applications/QGIS-LTR.app/Contents/MacOS/bin/python3"),
    ("plain python, nothing under the prefix: sys.executable as last resort",
     layout("linux", "/opt/py", "/somewhere/python3.11"),
     {"/somewhere/python3.11"},
     "/somewhere/python3.11"),
]


@pytest.mark.parametrize("case, python, programs, expected", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_layouts(case, python, programs, expected):
    assert find_interpreter(python, exists=programs.__contains__) == expected


def test_nothing_found_names_what_was_searched():
    python = layout("win32", r"C:\OSGeo4W\apps\Python39", r"C:\OSGeo4W\bin\qgis-bin.exe", version=(3, 9))
    with pytest.raises(FileNotFoundError) as info:
        find_interpreter(python, exists=lambda path: False)
    message = str(info.value)
    assert r"C:\OSGeo4W\apps\Python39\python.exe" in message and "3.9" in message
    assert "qgis-bin.exe" not in interpreter_candidates(python)[0]


def test_this_interpreter_is_found():
    found = find_interpreter()
    out = subprocess.run([found, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == sys.prefix


@pytest.fixture()
def foreign_python_first(tmp_path: Path) -> dict[str, str]:
    """PATH with a foreign ``python3`` (a program that is not this Python) in front, as a pyenv shim is here."""
    shims = tmp_path / "shims"
    shims.mkdir()
    foreign = shims / "python3"
    foreign.write_text("#!/bin/sh\necho 'foreign python' >&2\nexit 3\n")
    foreign.chmod(0o755)
    return {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), PACKAGE_PARENT) if p)}


@pytest.mark.skipif(os.name == "nt", reason="argv[0] lookup on PATH is POSIX behaviour")
def test_foreign_python_first_on_path(foreign_python_first):
    """Started as ``python3`` (as QGIS's embedded Python is), ``sys.executable`` is the PATH python3; the
    finder still returns a program that is this Python (same prefix), not the foreign one."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    code = ("import sys, subprocess; from s2seg.core.interpreter import find_interpreter; "
            "from s2seg.s2seg_plugin.dependencies import python_executable; "
            "print(sys.executable); print(sys.prefix); print(find_interpreter()); print(python_executable())")
    out = subprocess.run(["python3", "-c", code], executable=base, env=foreign_python_first,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    executable, prefix, found, for_messages = out.stdout.split()
    assert executable.endswith("shims/python3")  # the trap is set: sys.executable is the foreign program
    assert found == for_messages and "shims" not in found
    check = subprocess.run([found, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                           env=foreign_python_first, timeout=60)
    assert check.stdout.strip() == prefix
