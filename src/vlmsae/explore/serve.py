"""The explorer's local server: the site's own files and the images the site lists, nothing
else, to loopback, for its own ``Host``.

What a request may get:

* a regular file of the site folder whose real path (symlinks resolved) stays inside the
  folder; a directory URL gets its ``index.html`` (no listings); names that start with ``.``
  and ``data/images.json`` (absolute paths of the images) are not served;
* a linked image, only under the exact URL path that ``data/images.json`` (written by
  :func:`vlmsae.explore.site.write_site`) maps to its file, and only if that file is an
  image (PIL recognises it): a list received with a site names images, not secrets.

Every request must name ``Host: 127.0.0.1:PORT`` or ``localhost:PORT`` (or the address the
server was bound to): a page of another site that resolves its own name to 127.0.0.1 (DNS
rebinding) gets 403. Only ``GET`` and ``HEAD`` are answered.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from vlmsae.core.errors import UserError
from vlmsae.explore.site import IMAGES_SCHEMA

log = logging.getLogger(__name__)
IMAGES_LIST = "data/images.json"
IMAGE_URL = re.compile(r"/_images/[0-9]{1,12}(\.[a-z0-9]{1,8})?")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MIME = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".json":
        "application/json", ".png": "image/png", ".svg": "image/svg+xml", ".pdf":
        "application/pdf", ".jpg": "image/jpeg"}  # fmt: skip


@dataclass(frozen=True)
class SiteFiles:
    """What the server may answer: the site folder and the linked images it lists."""

    root: Path
    """The site folder, resolved."""
    images: dict[str, Path] = field(default_factory=dict)
    """URL path (``/_images/0000123.png``) → image file."""

    def site_file(self, segments: list[str]) -> Path | str | None:
        """The regular file of the site at these URL path segments (none of them ``.``,
        ``..`` or empty but the last; a trailing ``""`` names a directory: its index.html),
        ``"/"`` for a directory named without its trailing slash, or None when it is not a
        file of the site or its real path leaves the folder."""
        if any(s.startswith(".") or "\\" in s for s in segments if s):
            return None
        real = Path(os.path.realpath(self.root.joinpath(*segments)))
        if not real.is_relative_to(self.root):
            return None
        if real.is_dir():
            if segments[-1]:
                return "/"
            real = Path(os.path.realpath(real / "index.html"))
        if real == self.root / IMAGES_LIST or not real.is_relative_to(self.root):
            return None
        return real if real.is_file() else None


def load_site_files(site_dir: Path) -> SiteFiles:
    """The site at ``site_dir`` with its image list (none in a site of copied thumbnails;
    a site built before the list existed serves its own files only, with a warning)."""
    root = Path(os.path.realpath(site_dir))
    if not (root / "index.html").is_file():
        raise UserError(f"{site_dir} holds no index.html: give --out a site of `vlmsae explore`")
    path = root / IMAGES_LIST
    if not path.is_file():
        log.warning(
            "%s has no %s (built by an older vlmsae): only its own files are served, so "
            "images it links (built without --copy-images) do not load; rebuild it with "
            "`vlmsae explore` to serve them",
            site_dir, IMAGES_LIST,
        )  # fmt: skip
        return SiteFiles(root)
    bad = f"{path} is not an image list of `vlmsae explore`; rebuild the site"
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{bad} ({e})") from e
    if not isinstance(listing, dict) or listing.get("schema") != IMAGES_SCHEMA:
        raise UserError(bad)
    images = listing.get("images")
    if not isinstance(images, dict):
        raise UserError(bad)
    out = {}
    for url, file in images.items():
        if not IMAGE_URL.fullmatch(url) or not isinstance(file, str) or not os.path.isabs(file):
            raise UserError(f"{bad}: entry {url!r}: {file!r}")
        out[url] = Path(file)
    return SiteFiles(root, out)


def _image_type(path: Path) -> str | None:
    """MIME type of an image file PIL recognises (None: not an image, or unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return Image.MIME.get(im.format or "", "application/octet-stream")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """``Host`` header values the server answers: the loopback names with ``port``, and the
    bound address unless it is a wildcard (0.0.0.0, ::)."""
    names = set(LOOPBACK_NAMES)
    bound = f"[{host}]" if ":" in host else host
    if not _is_wildcard(host):
        names.add(bound.lower())
    return frozenset(f"{n}:{port}" for n in names)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SiteHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET and HEAD from ``self.server.site`` (a :class:`SiteFiles`)."""

    server_version = "vlmsae"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or hosts[0].lower() not in self.server.hosts:
            log.warning("refused a request for Host %r (expected one of %s)",
                        ",".join(hosts), ", ".join(sorted(self.server.hosts)))  # fmt: skip
            self.send_error(403, "Forbidden: unknown Host")
            return
        found = self._resolve()
        if found is None:
            self.send_error(404, "Not Found")
        elif isinstance(found, str):
            self.send_response(301)
            self.send_header("Location", found)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send_file(*found, body=body)

    def _resolve(self) -> tuple[Path, str] | str | None:
        """(file, MIME type) to send, a URL to redirect to, or None (404)."""
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        if not raw.startswith("/"):
            return None
        try:
            path = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if "\0" in path:
            return None
        site: SiteFiles = self.server.site
        if path in site.images:
            kind = _image_type(site.images[path])
            return (site.images[path], kind) if kind else None
        segments = path.split("/")[1:]
        if any(not s for s in segments[:-1]) or any(s in (".", "..") for s in segments):
            return None
        file = site.site_file(segments)
        if file is None:
            return None
        if isinstance(file, str):  # a directory: the relative URLs of its index.html
            return raw + "/"  # resolve inside it only under its URL with a slash
        kind = MIME.get(file.suffix.lower(), "application/octet-stream")
        return file, kind + ("; charset=utf-8" if kind.startswith("text/") else "")

    def _send_file(self, path: Path, kind: str, body: bool) -> None:
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except OSError:
            self.send_error(404, "Not Found")
            return
        with f:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if body:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    shutil.copyfileobj(f, self.wfile)  # (unless the browser went away)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class SiteServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server of one site; ``hosts``: the ``Host`` values it answers."""

    daemon_threads = True

    def __init__(self, site: SiteFiles, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.site = site
        super().__init__((host, port), SiteHandler)
        self.hosts = allowed_hosts(host, self.server_port)


def make_server(site_dir: str | Path, port: int = 0, host: str = "127.0.0.1") -> SiteServer:
    """A server of the site at ``site_dir`` listening on ``host:port`` (0: a free port);
    call ``serve_forever()`` on it. Raises UserError when the site or the port is not one."""
    site = load_site_files(Path(site_dir))
    try:
        return SiteServer(site, host, port)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e}); choose another --port") from e


def exposure_warning(host: str, port: int) -> str | None:
    """The warning of a server bound to ``host`` (None on a loopback address)."""
    if is_loopback(host):
        return None
    return (
        f"--host {host} is not a loopback address: anyone who can reach this machine on port "
        f"{port} can read the site and the images it lists (requests must still name Host "
        f"{' or '.join(sorted(allowed_hosts(host, port)))}"
        + ("; a browser elsewhere is refused: bind this machine's address instead)"
           if _is_wildcard(host) else ")")
    )  # fmt: skip


def serve_site(
    site_dir: str | Path,
    port: int = 8000,
    host: str = "127.0.0.1",
    echo: Callable[[str], object] = print,
) -> None:
    """Serve the site at ``site_dir`` on http://HOST:PORT/ until interrupted; ``echo``
    prints the address line. Binding another address than loopback logs a warning."""
    server = make_server(site_dir, port, host)
    warning = exposure_warning(host, server.server_port)
    if warning:
        log.warning("%s", warning)
    name = f"[{host}]" if ":" in host else host
    echo(f"serving {site_dir} on http://{name}:{server.server_port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
