"""alice's and carol's flows in a real (headless) Chromium through a real JupyterHub.

Each signs in on the hub's login page, waits on the spawn page, lands in JupyterLab, starts a notebook on the
teelab kernel from the Launcher and sees the amber "simulated" badge. alice's cell reads her dataset. carol's
cell is refused, and the refusal says why. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from teelab.extension.hub.demo import HubProcess
from tests.extension.lab import LabPage, chromium

pytestmark = pytest.mark.slow

DISPLAY_NAME = "Python 3 (teelab · simulated TEE)"
SIMULATED = "Simulated TEE — not confidential"
READ = "from teelab.sealed_store import read_dataset\nprint('rows', len(read_dataset('sample-sales')))"


class HubLog:
    """What LabPage reports when a kernel is refused: here, the hub's log (the servers log into it)."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub

    def log_tail(self) -> str:
        return (self.hub.root / "jupyterhub.log").read_text(errors="replace")[-4000:]


class HubLabPage(LabPage):
    def sign_in(self, hub: HubProcess, user: str) -> None:
        """The hub's login form, then its spawn page, which opens JupyterLab once the server is up."""
        self.page.goto(f"{hub.url}/hub/login")
        self.page.fill("#username_input", user)
        self.page.fill("#password_input", hub.password)
        self.page.click("#login_submit")
        expect(self.page.locator(".jp-LauncherCard").first).to_be_visible(timeout=180_000)
        assert f"/user/{user}/lab" in self.page.url


@pytest.fixture
def lab_page(hub: HubProcess, tmp_path: Path) -> Iterator[HubLabPage]:
    with chromium(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield HubLabPage(page, HubLog(hub))  # type: ignore[arg-type]


def test_alice_reads_her_dataset_in_an_attested_kernel(hub: HubProcess, lab_page: HubLabPage) -> None:
    lab_page.sign_in(hub, "alice")
    lab_page.new_notebook(DISPLAY_NAME)
    expect(lab_page.badge).to_have_text(SIMULATED, timeout=60_000)
    expect(lab_page.badge).to_have_attribute("data-level", "simulated")
    assert lab_page.run_cell(READ).strip() == "rows 3000"
    lab_page.screenshot("jupyterhub-alice-reads")


def test_carol_is_refused_and_told_why(hub: HubProcess, lab_page: HubLabPage) -> None:
    lab_page.sign_in(hub, "carol")
    lab_page.new_notebook(DISPLAY_NAME)
    expect(lab_page.badge).to_have_text(SIMULATED, timeout=60_000)
    output = lab_page.run_cell(READ)
    assert "no current grant on the dataset" in output, output
    lab_page.screenshot("jupyterhub-carol-refused")
