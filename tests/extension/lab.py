"""A real JupyterLab for browser tests: a ``jupyter lab`` subprocess, and Chromium driven by Playwright.

Page objects (:class:`LabPage`, :class:`AttestationPanelPage`, :class:`DatasetBrowserPage`) hold every
selector, so a test reads as the steps a user takes and new steps (datasets) slot in beside the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium, headless, with nothing that reaches the network on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LabServer:
    port: int
    token: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET", body: object | None = None) -> object:
        request = urllib.request.Request(
            f"{self.url}/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def jupyter_lab(
    workdir: Path, env: dict[str, str], artifact_name: str, extra_args: list[str] | None = None
) -> Iterator[LabServer]:
    """Start ``jupyter lab`` on a free loopback port with a token; stop it afterwards."""
    root = workdir / "notebooks"
    root.mkdir(parents=True, exist_ok=True)
    # No news feed and no "get notified?" prompt: the page must not reach the internet, nor cover the UI.
    settings = (
        Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    )
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port, token = free_port(), os.urandom(24).hex()
    command = [
        str(BIN / "jupyter"),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.port_retries=0",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        *(extra_args or []),
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = workdir / "jupyter-lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LabServer(port, token, root, process, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{server.log_tail()}")
            try:
                server.api("api/status")
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not start:\n{server.log_tail()}") from None
                time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # The server's log is an artifact too: a refused kernel says why only there.
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, ARTIFACTS / f"{artifact_name}.log")


@contextmanager
def chromium(profile: Path) -> Iterator[BrowserContext]:
    """Debian's Chromium (never a downloaded one) with a new, empty profile."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"no {CHROMIUM}: run scripts/install-system-deps.sh (make test does)")
    profile.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


# -- page objects -----------------------------------------------------------------------------------------


class LabPage:
    def __init__(self, page: Page, server: LabServer) -> None:
        self.page = page
        self.server = server

    def open(self) -> None:
        self.page.goto(f"{self.server.url}/lab?token={self.server.token}")
        expect(self.page.locator(".jp-LauncherCard").first).to_be_visible(timeout=60_000)

    def new_notebook(self, kernel_display_name: str) -> None:
        """Click the kernel's card in the Launcher, as a user starts a notebook."""
        self.page.locator(
            f'.jp-LauncherCard[data-category="Notebook"][title="{kernel_display_name}"]'
        ).click()
        expect(self.page.locator(".jp-NotebookPanel").first).to_be_visible(timeout=30_000)
        self.wait_idle()

    def wait_idle(self, timeout: float = 120_000) -> None:
        """Wait for JupyterLab's kernel status "Idle"; a refused kernel fails at once, saying why."""
        self.focus_notebook()
        idle = self.page.locator(".jp-StatusBar-Item", has_text=re.compile(r"\| Idle$"))
        refused = self.page.locator(".jp-Dialog", has_text="Error Starting Kernel")
        expect(idle.or_(refused)).to_be_visible(timeout=timeout)
        if refused.is_visible():
            raise AssertionError(
                f"the kernel was refused: {refused.inner_text()}\n--- jupyter lab log ---\n{self.server.log_tail()}"
            )

    @property
    def badge(self) -> Locator:
        return self.page.locator('[data-teelab="status"]')

    def open_attestation_panel(self) -> AttestationPanelPage:
        self.badge.click()
        panel = AttestationPanelPage(self.page.locator('[data-teelab="attestation-panel"]'))
        expect(panel.root).to_be_visible()
        return panel

    def focus_notebook(self) -> None:
        self.page.locator(".lm-TabBar-tab", has_text=re.compile(r"\.ipynb$")).first.click()

    def run_cell(self, code: str) -> str:
        """Type code into the last cell, run it, and return its output text."""
        self.focus_notebook()
        cells = self.page.locator(".jp-NotebookPanel .jp-Cell")
        # Pinned by index: running the last cell appends a new one, which `.last` would then mean.
        cell = cells.nth(cells.count() - 1)
        cell.locator(".cm-content").click()
        self.page.keyboard.press("ControlOrMeta+a")
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")
        output = cell.locator(".jp-OutputArea-output")
        expect(output.first).to_be_visible(timeout=60_000)
        return output.first.inner_text()

    def run_active_cell(self, timeout: float = 120_000) -> None:
        """Run the last cell as it stands (e.g. one a command inserted) and wait until it has run."""
        self.focus_notebook()
        cells = self.page.locator(".jp-NotebookPanel .jp-Cell")
        cell = cells.nth(cells.count() - 1)
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Shift+Enter")
        expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=timeout)
        errors = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.first.inner_text()

    def restart_kernel(self) -> None:
        self.focus_notebook()
        self.page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel…$")).click()
        self.page.locator(".jp-Dialog-button.jp-mod-accept", has_text="Restart").click()

    def open_datasets(self) -> DatasetBrowserPage:
        browser = DatasetBrowserPage(self.page)
        if not browser.root.is_visible():
            self.page.locator('.jp-SideBar [data-id="teelab-datasets"]').click()
        expect(browser.root).to_be_visible()
        return browser

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


class AttestationPanelPage:
    def __init__(self, root: Locator) -> None:
        self.root = root

    @property
    def banner(self) -> Locator:
        return self.root.locator('[data-teelab="banner"]')

    @property
    def simulated_warning(self) -> Locator:
        return self.root.locator('[data-teelab="simulated-warning"]')

    @property
    def measurement(self) -> Locator:
        return self.root.locator('[data-teelab="measurement"]')

    @property
    def checks(self) -> Locator:
        return self.root.locator('[data-teelab="check"]')

    def fact(self, name: str) -> Locator:
        return self.root.locator(".teelab-facts tr", has=self.root.page.locator("th", has_text=name)).locator(
            "td"
        )


class DatasetBrowserPage:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.root = page.locator('[data-teelab="dataset-browser"]')

    def row(self, name: str) -> Locator:
        return self.root.locator(f'[data-teelab="dataset"][data-name="{name}"]')

    @property
    def message(self) -> Locator:
        return self.root.locator('[data-teelab="message"]')

    @property
    def progress(self) -> Locator:
        return self.root.locator('[data-teelab="upload-progress"]')

    @property
    def upload_button(self) -> Locator:
        return self.root.locator('[data-teelab="upload-form"] button[type="submit"]')

    @property
    def policy_select(self) -> Locator:
        return self.root.locator('[data-teelab="upload-policy"]')

    @property
    def policy_preview(self) -> Locator:
        """What the chosen release policy admits, shown before the upload."""
        return self.root.locator('[data-teelab="policy-preview"]')

    def choose_policy(self, policy: str) -> None:
        expect(self.policy_select.locator(f'option[value="{policy}"]')).to_be_attached()
        self.policy_select.select_option(policy)
        expect(self.policy_preview.locator('[data-teelab="policy-admits"]')).to_be_visible()

    def start_upload(self, file: Path, name: str, policy: str | None = None) -> None:
        """Fill the upload form and submit it; ``policy`` is chosen first unless the test already did."""
        self.root.locator('[data-teelab="upload-file"]').set_input_files(str(file))
        self.root.locator('[data-teelab="upload-name"]').fill(name)
        if policy is not None:
            self.choose_policy(policy)
        self.upload_button.click()

    def upload(self, file: Path, name: str, policy: str) -> None:
        self.start_upload(file, name, policy)
        expect(self.row(name)).to_be_visible(timeout=60_000)

    def grant(self, name: str, principal: str, expires: str | None = None) -> None:
        """``expires`` as the datetime-local input takes it, e.g. "2030-01-31T12:00"."""
        row = self.row(name)
        row.locator('[data-teelab="grant-principal"]').fill(principal)
        if expires:
            row.locator('[data-teelab="grant-expires"]').fill(expires)
        row.locator('[data-teelab="grant-form"] button[type="submit"]').click()
        expect(self.row(name).locator(f'[data-teelab="grant"][data-principal="{principal}"]')).to_be_visible()

    def insert_read_dataset(self, name: str) -> None:
        self.row(name).locator('[data-teelab="insert"]').click()
