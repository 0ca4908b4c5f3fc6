"""Remote rasters: URLs in messages and on disk without their secrets (signed URLs carry tokens in
the query string), the path GDAL reads a URL at, and what a failed remote read means."""
from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request

_URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")
_URL_IN_VSICURL = re.compile(r"/vsicurl\?[^\s'\"]*?url=([^\s&'\":]+)")
#: /vsicurl/ options: no directory listing (one request fewer per file, and none a server may refuse)
_VSICURL_OPTIONS = "list_dir=no"
_RASTER_NAME = re.compile(r"\.(tiff?|jp2)$", re.IGNORECASE)
#: Seconds the status probe of a failed remote read waits for the server.
PROBE_TIMEOUT_S = 10


def redact(text: str) -> str:
    """``text`` with every URL's query string (tokens, signatures) replaced by ``?…``; a
    ``/vsicurl?…&url=<quoted URL>`` path is shown as ``/vsicurl/<URL>`` first."""
    text = _URL_IN_VSICURL.sub(lambda m: "/vsicurl/" + urllib.parse.unquote(m.group(1)), text)
    return _URL_QUERY.sub(r"\1?…", text)


def is_url(text: object) -> bool:
    """Is ``text`` an ``http(s)://`` URL?"""
    return isinstance(text, str) and text.startswith(("http://", "https://"))


def is_raster_url(text: object) -> bool:
    """Is ``text`` the URL of a raster file (its path, without the query string, ends in
    ``.tif``/``.tiff``/``.jp2``), rather than of a document such as a STAC item?"""
    return is_url(text) and bool(_RASTER_NAME.search(urllib.parse.urlparse(text).path))


def file_name(url: str) -> str:
    """The last segment of ``url``'s path (no query string), unquoted: ``…/B02.tif?sig=…`` → ``B02.tif``."""
    return urllib.parse.unquote(urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])


def gdal_path(href: str) -> str:
    """The path GDAL reads a raster at: ``/vsicurl?…&url=…`` for http(s) (range requests, the URL
    with its query string kept as it is), the path of a ``file://`` URL, else ``href`` itself."""
    if is_url(href):
        return f"/vsicurl?{_VSICURL_OPTIONS}&url={urllib.parse.quote(href, safe='')}"
    if href.startswith("file://"):
        return urllib.parse.urlparse(href).path
    return href


def url_of(path: str) -> str | None:
    """The URL a ``/vsicurl`` path (either form) or an http(s) path reads, or None for a local path."""
    if is_url(path):
        return path
    match = re.match(r"/vsicurl\?.*?(?:^|[?&])url=([^&]+)", path)
    if match:
        return urllib.parse.unquote(match.group(1))
    if path.startswith("/vsicurl/") and is_url(path[len("/vsicurl/"):]):
        return path[len("/vsicurl/"):]
    return None


def explain(message: str) -> str:
    """GDAL's or urllib's message, without secrets, with what an HTTP status or a connection error means."""
    status = re.search(r"HTTP (?:response )?(?:code|Error):? ?(\d{3})", message)
    if status:
        return status_reason(int(status.group(1)))
    if re.search(r"resolve host|Connection refused|connect to|timed out|Couldn't connect|Name or service",
                 message, re.IGNORECASE):
        return f"the host cannot be reached ({redact(message)})"
    return redact(message)


def status_reason(status: int) -> str:
    """What an HTTP error status means for a band read."""
    if status in (401, 403):
        return f"HTTP {status}: access denied (a signed URL may have expired: sign the item or the URLs again)"
    return f"HTTP {status}"


def failed_read_reason(path: str, message: str) -> str:
    """Why reading the raster at ``path`` failed with GDAL's ``message``, without secrets.

    GDAL reports a block that a remote server refused (an expired token: HTTP 403) only as
    "IReadBlock failed"; for a remote path the URL is asked once for its first byte, and an HTTP
    error or an unreachable host is reported as such. (urllib, not GDAL: GDAL keeps no status of
    a failed range request that Python can read.)"""
    url = url_of(path)
    if url is None:
        return redact(message)
    probed = probe(url)
    return probed if probed is not None else explain(message)


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """The reason a GET of the first byte of ``url`` fails (HTTP status, host unreachable), or None when it succeeds."""
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1)
    except urllib.error.HTTPError as exc:
        return status_reason(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"the host cannot be reached ({redact(str(reason))})"
    return None
