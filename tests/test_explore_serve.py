"""`vlmsae explore --serve`: the server answers the site's own files and the images the site
lists, and nothing else, only for its own Host.

A real server on an ephemeral loopback port (a thread, or the CLI in a subprocess) is asked
with http.client, which sends raw request targets and Host headers as written. Every
refused request is also checked not to carry the bytes it aimed at."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from explore_fixtures import make_images, make_sae, make_token_store, read_js
from vlmsae.cli import app
from vlmsae.core.errors import UserError
from vlmsae.explore.serve import allowed_hosts, exposure_warning, is_loopback, make_server

N_IMAGES, D, D_SAE = 12, 8, 16
TIMEOUT = 10  # seconds, every socket operation
SECRET = b"vlmsae-test-secret-not-to-be-served\n"


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Images in ``imgs/``, a secret file beside them, and two sites of one tiny SAE built
    deeper in the tree: ``runs/a/site`` links the images, ``runs/a/copied`` copies them."""
    from vlmsae.explore.build import build_site
    from vlmsae.explore.site import ExploreConfig

    root = tmp_path_factory.mktemp("serve")
    paths = make_images(root / "imgs", N_IMAGES)
    make_token_store(root / "acts", paths, D)
    make_sae(root / "sae", D, D_SAE)
    (root / "secret.txt").write_bytes(SECRET)
    for name, copy in (("site", False), ("copied", True)):
        build_site(root / "sae", root / "acts", root / "runs" / "a" / name,
                   cfg=ExploreConfig(copy_images=copy))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def server(sites):
    """The linked site served from a thread; yields (port, site_dir)."""
    srv = make_server(sites / "runs" / "a" / "site", port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_port, sites / "runs" / "a" / "site"
    srv.shutdown()
    srv.server_close()
    thread.join(TIMEOUT)


def get(port: int, target: str, host: str | None = "default", method: str = "GET"):
    """(status, headers, body) of one request with this raw target and Host header (None:
    no Host header at all)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", f"127.0.0.1:{port}" if host == "default" else host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_site_files_and_listed_images_answer_with_their_bytes(server, sites):
    port, site = server
    for name in ("index.html", "app.js", "card.js", "style.css", "data/index.js",
                 "data/neurons/00000.js"):  # fmt: skip
        status, _, body = get(port, f"/{name}")
        assert status == 200 and body == (site / name).read_bytes(), name
    status, headers, body = get(port, "/")
    assert status == 200 and body == (site / "index.html").read_bytes()
    assert headers["Content-Type"].startswith("text/html")
    assert get(port, "/", host=f"localhost:{port}")[0] == 200
    listed = json.loads((site / "data" / "images.json").read_text())["images"]
    index = read_js(site / "data" / "index.js", "window.VLMSAE_INDEX = ")
    assert sorted("/" + u for u in index["served"] if u) == sorted(listed) and listed
    for url, file in listed.items():
        status, headers, body = get(port, url)
        assert status == 200 and body == Path(file).read_bytes(), url
        assert headers["Content-Type"] == "image/png"
        assert get(port, url, method="HEAD")[::2] == (200, b"")


def test_a_copied_site_serves_its_thumbnails_and_lists_no_image(sites):
    site = sites / "runs" / "a" / "copied"
    assert json.loads((site / "data" / "images.json").read_text())["images"] == {}
    index = read_js(site / "data" / "index.js", "window.VLMSAE_INDEX = ")
    assert "served" not in index and all(u.startswith("images/") for u in index["images"])
    srv = make_server(site, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        for url in index["images"]:
            status, _, body = get(srv.server_port, f"/{url}")
            assert status == 200 and body == (site / url).read_bytes()
        assert get(srv.server_port, "/_images/0000000.png")[0] == 404
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(TIMEOUT)


@pytest.mark.parametrize(
    "target",
    [
        "/../../../secret.txt",
        "/../../../../../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/%2E%2E/%2E%2E/%2E%2E/secret.txt",
        "/..%2f..%2f..%2fsecret.txt",
        "/data/..%2f..%2f..%2f..%2fsecret.txt",
        "/_images/../../../../secret.txt",
        "//etc/passwd",
        "///etc/passwd",
        "/%2fetc%2fpasswd",
        "/./index.html/../../../../secret.txt",
        "/..\\..\\..\\secret.txt",
        "/%2e%2e%5c%2e%2e%5c%2e%2e%5csecret.txt",
        "/index.html%00.png",
        "/%ff%fe",
        "etc/passwd",
        "http://127.0.0.1/../../../secret.txt",
    ],
)
def test_paths_out_of_the_site_are_refused(server, target):
    port, _ = server
    status, _, body = get(port, target)
    assert status in (400, 404), (target, status)
    assert SECRET not in body and b"root:" not in body


def test_the_images_relative_urls_and_unlisted_files_are_refused(server, sites):
    """The file:// URLs of the images (../../../imgs/...) do not reach them over http, and
    an image URL not in the list answers 404."""
    port, site = server
    index = read_js(site / "data" / "index.js", "window.VLMSAE_INDEX = ")
    rel = next(u for u in index["images"] if u)
    assert rel.startswith("../") and (site / rel).resolve().is_file()
    assert get(port, "/" + rel)[0] == 404
    image = sorted((sites / "imgs").rglob("*.png"))[0]
    for target in (image.as_posix(), "/_images/9999999.png", "/_images/"):
        assert get(port, target)[0] == 404, target


def test_symlinks_that_leave_the_site_are_not_followed(server, sites):
    port, site = server
    (site / "leak.js").symlink_to(sites / "secret.txt")
    (site / "leakdir").symlink_to(sites)
    (site / "data" / "up").symlink_to("../..")  # to runs/a, above the site
    (site / "alias.js").symlink_to("app.js")  # stays inside: served
    try:
        for target in ("/leak.js", "/leakdir/secret.txt", "/leakdir/", "/leakdir",
                       "/data/up/copied/index.html", "/data/up/"):  # fmt: skip
            status, _, body = get(port, target)
            assert status == 404 and SECRET not in body, target
        assert get(port, "/alias.js")[::2] == (200, (site / "app.js").read_bytes())
    finally:
        for name in ("leak.js", "leakdir", "data/up", "alias.js"):
            (site / name).unlink()


def test_directories_are_never_listed(server):
    port, _ = server
    status, headers, _ = get(port, "/data")
    assert status == 301 and headers["Location"] == "/data/"
    for target in ("/data/", "/data/neurons/", "/data/neurons"):
        status, _, body = get(port, target)
        assert status in (301, 404) and b"00000.js" not in body, target


def test_the_image_list_and_hidden_files_are_not_served(server):
    port, site = server
    (site / ".hidden").write_bytes(SECRET)
    try:
        assert get(port, "/data/images.json")[0] == 404
        status, _, body = get(port, "/.hidden")
        assert status == 404 and SECRET not in body
    finally:
        (site / ".hidden").unlink()


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1:{other}", "127.0.0.1", "localhost",
     "127.0.0.1.nip.io:{port}", "0.0.0.0:{port}", "", None],
)  # fmt: skip
def test_a_foreign_host_header_is_refused(server, host):
    """DNS rebinding: a page of another name that resolves to 127.0.0.1 sends its own
    name as Host; so does a request with no port or another port."""
    port, _ = server
    value = None if host is None else host.format(port=port, other=port + 1)
    status, _, body = get(port, "/index.html", host=value)
    assert status == 403 and b"VLMSAE" not in body


def test_two_host_headers_are_refused(server):
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", "/index.html", skip_host=True)
        conn.putheader("Host", f"127.0.0.1:{port}")
        conn.putheader("Host", "evil.example")
        conn.endheaders()
        assert conn.getresponse().status == 403
    finally:
        conn.close()


def test_only_get_and_head_are_answered(server):
    port, _ = server
    for method in ("POST", "PUT", "DELETE"):
        assert get(port, "/index.html", method=method)[0] == 501, method


def test_a_tampered_image_list_serves_no_other_file(sites, tmp_path):
    """A received site may list any path: a listed file that is not an image is refused,
    and a list of another form is an Error line, not a traceback."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(sites / "runs" / "a" / "site", site, symlinks=True)
    listing = {"schema": 1, "images": {"/_images/0000001.png": str(sites / "secret.txt")}}
    (site / "data" / "images.json").write_text(json.dumps(listing))
    srv = make_server(site, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        status, _, body = get(srv.server_port, "/_images/0000001.png")
        assert status == 404 and SECRET not in body
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(TIMEOUT)
    for bad in ('{"schema": 1, "images": {"/etc/passwd": "/etc/passwd"}}',
                '{"schema": 1, "images": {"/_images/1.png": "relative.png"}}',
                '{"schema": 2, "images": {}}', "[1]", "not json"):  # fmt: skip
        (site / "data" / "images.json").write_text(bad)
        with pytest.raises(UserError, match="images.json"):
            make_server(site, port=0)
        res = CliRunner().invoke(app, ["explore", "--serve", "--out", str(site), "--port", "0"])
        assert res.exit_code == 2 and res.output.startswith("Error: "), res.output
        assert "Traceback" not in res.output


def test_a_site_without_an_image_list_serves_its_own_files_and_warns(sites, tmp_path, caplog):
    """A site built before data/images.json existed: its files, none of its images."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(sites / "runs" / "a" / "site", site)
    (site / "data" / "images.json").unlink()
    with caplog.at_level("WARNING", logger="vlmsae.explore.serve"):
        srv = make_server(site, port=0)
    assert "no data/images.json" in caplog.text and "rebuild" in caplog.text
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert get(srv.server_port, "/index.html")[0] == 200
        assert get(srv.server_port, "/_images/0000000.png")[0] == 404
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(TIMEOUT)


def test_a_folder_without_a_site_is_an_error(tmp_path):
    with pytest.raises(UserError, match="index.html"):
        make_server(tmp_path, port=0)


def test_the_cli_serves_on_loopback_and_says_where(sites):
    """`vlmsae explore --serve` in a subprocess: one line with the URL of the site's root,
    no warning on loopback; the listed images answer there."""
    site = sites / "runs" / "a" / "site"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmsae", "explore", "--serve", "--out", str(site),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line == f"serving {site} on http://127.0.0.1:{port}/ (Ctrl-C stops)\n"
        url = next(iter(json.loads((site / "data" / "images.json").read_text())["images"]))
        assert get(port, url)[0] == 200 and get(port, "/../secret.txt")[0] == 404
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert "WARNING" not in err, err


def test_hosts_and_the_warning_of_a_non_loopback_address():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "example.org"))
    assert allowed_hosts("127.0.0.1", 80) == {"127.0.0.1:80", "localhost:80", "[::1]:80"}
    assert "0.0.0.0:80" not in allowed_hosts("0.0.0.0", 80)  # a wildcard names no host
    assert "10.1.2.3:80" in allowed_hosts("10.1.2.3", 80)
    assert exposure_warning("127.0.0.1", 80) is None
    text = exposure_warning("0.0.0.0", 8123)
    assert "not a loopback address" in text and "8123" in text and "refused" in text
    assert "10.1.2.3:80 or" in exposure_warning("10.1.2.3", 80)
