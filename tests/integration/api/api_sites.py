"""Two engines for the API tests without making a new PKI each time.

``prepare_sites`` (keys, certificates, configuration) takes most of a second and a half; the tests
prepare one template per session and copy it, rewriting the paths in the configuration, then wire
the engines exactly as ``engine_pair.make_pair`` does.
"""

from __future__ import annotations

import base64
import dataclasses
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

import httpx
from engine_pair import Clock, Loopback, Pair
from fastapi.testclient import TestClient

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import Site, dialog_note, prepare_sites


@dataclasses.dataclass(frozen=True)
class Template:
    root: Path
    gp: Site
    hospital: Site


def make_template(root: Path) -> Template:
    gp, hospital = prepare_sites(root)
    for site in (gp, hospital):
        # the SQLite stores migrated once here, not once per test (a copy opens them as they
        # are: a tenth of a second per store)
        build_engine(load_settings(site.config_path)).store.database.dispose()
    return Template(root, gp, hospital)


def copy_pair(template: Template, target: Path, databases: tuple[str, str] | None = None) -> Pair:
    """A pair from the template; on SQLite in its directory, or on the two database URLs given
    (GP's, hospital's)."""
    shutil.copytree(template.root, target)
    old, new = str(template.root), str(target)
    for config in target.rglob("*.toml"):
        config.write_text(config.read_text().replace(old, new))
    if databases is not None:
        for site, url in zip((template.gp, template.hospital), databases, strict=True):
            config = Path(str(site.config_path).replace(old, new))
            config.write_text(config.read_text() + f'\n[database]\nurl = "{url}"\n')
    gp_site, hospital_site = (
        dataclasses.replace(site, directory=Path(str(site.directory).replace(old, new)))
        for site in (template.gp, template.hospital)
    )
    clock = Clock()
    network = Loopback()
    gp = build_engine(load_settings(gp_site.config_path), clock=clock)
    hospital = build_engine(load_settings(hospital_site.config_path), clock=clock)
    for ctx in (gp, hospital):
        ctx.transports = {"http": network}
    network.engines = {gp_site.endpoint: gp, hospital_site.endpoint: hospital}
    return Pair(gp_site, hospital_site, gp, hospital, clock, network)


@dataclasses.dataclass
class ApiPair:
    """The API tests' fixture: both engines with their HTTP applications and client keys.

    It lives here, not in ``conftest.py``: a module named ``conftest`` imported by tests collides
    with the engine tests' ``conftest`` when both directories run in one pytest call."""

    pair: Pair
    gp_http: TestClient
    hospital_http: TestClient
    gp_key: str
    hospital_key: str
    hospital_admin_key: str
    outsider_key: str

    def post_note(self, text: str) -> httpx.Response:
        """A dialog note from the GP to the hospital, posted with the GP's key."""
        document = dialog_note(self.pair.gp_site, self.pair.hospital_site, text)
        return post_document(self.gp_http, self.gp_key, document)


def post_document(http: TestClient, key: str, document: bytes) -> httpx.Response:
    """``POST /Messages`` of a business document, as an EPJ sends one, with ``key``."""
    return http.post(
        "/Messages",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "businessDocument": base64.b64encode(document).decode(),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
        },
    )
