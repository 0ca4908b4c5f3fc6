"""URLs in messages and on disk without their secrets (signed URLs carry tokens in the query string)."""
from __future__ import annotations

import re
import urllib.parse

_URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")
_URL_IN_VSICURL = re.compile(r"/vsicurl\?[^\s'\"]*?url=([^\s&'\":]+)")


def redact(text: str) -> str:
    """``text`` with every URL's query string (tokens, signatures) replaced by ``?…``; a
    ``/vsicurl?…&url=<quoted URL>`` path is shown as ``/vsicurl/<URL>`` first."""
    text = _URL_IN_VSICURL.sub(lambda m: "/vsicurl/" + urllib.parse.unquote(m.group(1)), text)
    return _URL_QUERY.sub(r"\1?…", text)
