"""Reading the small JSON files that describe models (cards, reBEN ``config.json``), with messages
that name the file and say what is wrong with it.

Encoding: JSON files are UTF-8 (RFC 8259). A file that starts with a Unicode byte-order mark is
decoded as that mark says (UTF-8, UTF-16 or UTF-32), because Windows editors and PowerShell 5's
``>`` / ``Out-File`` write such files and the mark leaves no doubt about the encoding; without a
mark anything but UTF-8 is refused with a message saying so, never guessed.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from ..errors import ModelError

#: Byte-order mark → codec. UTF-32 first: its little-endian mark starts with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode(raw: bytes, path: Path, what: str) -> str:
    """``raw`` as text: by its byte-order mark when it has one, else strict UTF-8."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise ModelError(f"{what} {path} is not {codec.upper().replace('-SIG', '')} JSON as its byte-order mark says: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(
            f"{what} {path} is not UTF-8 JSON: byte 0x{raw[exc.start]:02x} at offset {exc.start} is not UTF-8; "
            "save the file as UTF-8"
        ) from None
    if "\x00" in text:
        # UTF-16 without a byte-order mark decodes as "UTF-8" with a NUL byte beside every ASCII character.
        raise ModelError(f"{what} {path} is not UTF-8 JSON: it holds NUL bytes (UTF-16 without a byte-order mark?); "
                         "save the file as UTF-8")
    return text


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ModelError saying ``what`` the file is and why it cannot be used."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{what} {path} is a folder, not a JSON file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(decode(raw, path, what))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path} must hold a JSON object")
    return data
