"""``/docs`` works without internet and offers the key: the page's assets come from the API
itself, ``openapi.json`` declares the bearer scheme, and headless Chromium, cut off from every
host but loopback, renders the routes and the Authorize button."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.timeout(120)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: The flags this machine's notes give for a headless Chromium on a closed network, and a
#: resolver that finds no host but loopback: a page that needs a CDN renders nothing.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,2400", "--virtual-time-budget=15000",
)  # fmt: skip


def test_the_page_and_its_assets_are_served_by_the_api(api) -> None:
    page = requests.get(f"{api.url}/docs", timeout=10)
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/docs/assets/") for source in sources), sources
    for source in sources:
        assert requests.get(f"{api.url}{source}", timeout=10).status_code == 200, source
    assert "://" not in page.text.split("<script>", 2)[-1].split("url:", 1)[0]


def test_openapi_declares_the_bearer_scheme_on_the_keyed_routes(api) -> None:
    document = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "a key of GENQUEUE_API_KEYS or of the tenants file",
    }  # fmt: skip
    assert document["paths"]["/v1/tasks"]["post"]["security"] == [{"bearer": []}]
    assert document["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={user_data}", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)
def test_headless_chromium_renders_the_routes_without_internet(api, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", f"{api.url}/docs", user_data=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    paths = set(re.findall(r'data-path="([^"]+)"', dom.stdout))
    assert {"/v1/tasks", "/v1/chat/completions", "/v1/models", "/healthz"} <= paths, paths
    assert "btn authorize" in dom.stdout  # the Authorize button, for the bearer scheme
    shot = tmp_path / "docs.png"
    taken = chromium(f"--screenshot={shot}", f"{api.url}/docs", user_data=tmp_path / "profile")
    assert taken.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", taken.stderr
    # A blank page compresses to a few kilobytes; the rendered route list does not.
    assert shot.stat().st_size > 40_000, shot.stat().st_size
