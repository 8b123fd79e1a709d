"""teelab in a real JupyterLab, in a real (headless) Chromium, as a user sees it.

The user starts a notebook on the simulated TEE kernel from the Launcher, sees the amber badge, opens the
attestation panel (the measurement and every check), runs a cell, restarts (a restart re-attests), and a
screenshot of each state is kept in tests/artifacts/.

A data owner chooses the release policy an upload is sealed under (seeing what it admits first), uploads a
CSV from the dataset browser (with a progress bar), sees the policy on the dataset, grants access, inserts
``read_dataset(...)`` into the notebook and runs it in the attested kernel; revoking stops the next read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, expect

from .conftest import KernelEnv, copy_kernelspec, write_policy
from .lab import LabPage, LabServer, chromium, jupyter_lab

pytestmark = pytest.mark.slow

DISPLAY_NAME = "Python 3 (teelab · simulated TEE)"
SIMULATED = "Simulated TEE — not confidential"
HERE = Path(__file__).resolve().parent
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def lab_env(kernel_env: KernelEnv, workdir: Path) -> dict[str, str]:
    """The kernel tests' installed kernel and policy; everything else of Jupyter's in a scratch folder."""
    config = workdir / "jupyter-config"
    config.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **kernel_env.environ(),
        "JUPYTER_CONFIG_DIR": str(config),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture
def lab(kernel_env: KernelEnv, tmp_path: Path) -> Iterator[LabServer]:
    with jupyter_lab(tmp_path, lab_env(kernel_env, tmp_path), "jupyter-lab") as server:
        yield server


@pytest.fixture
def lab_page(lab: LabServer, tmp_path: Path) -> Iterator[LabPage]:
    with chromium(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield LabPage(page, lab)


def attested_notebook(lab_page: LabPage) -> None:
    lab_page.open()
    lab_page.new_notebook(DISPLAY_NAME)
    expect(lab_page.badge).to_have_text(SIMULATED, timeout=60_000)
    expect(lab_page.badge).to_have_attribute("data-level", "simulated")


def test_simulated_kernel_badge_panel_and_restart(lab_page: LabPage, kernel_env: KernelEnv) -> None:
    attested_notebook(lab_page)
    # Amber (the theme's warning colour): the status-bar item must never look like a confidential kernel.
    shown, amber = lab_page.badge.evaluate(
        """node => {
            const probe = document.body.appendChild(document.createElement('div'));
            probe.style.background = 'var(--jp-warn-color1)';
            const amber = getComputedStyle(probe).backgroundColor;
            probe.remove();
            return [getComputedStyle(node).backgroundColor, amber];
        }"""
    )
    assert shown == amber, (shown, amber)

    panel = lab_page.open_attestation_panel()
    expect(panel.banner).to_contain_text(SIMULATED)
    expect(panel.simulated_warning).to_be_visible()
    expect(panel.simulated_warning).to_contain_text("without hardware isolation")
    expect(panel.measurement).to_have_text(kernel_env.mrenclave)
    expect(panel.fact("TCB status")).to_have_text("UpToDate")
    expect(panel.fact("Policy")).to_contain_text("teelab-sim")
    expect(panel.fact("Verified at")).to_have_text(ISO_TIME)
    expect(panel.checks.first).to_be_visible()
    names = panel.checks.evaluate_all("rows => rows.map(r => r.dataset.check)")
    assert len(names) >= 5 and "policy.expected_report_data" in names
    assert panel.root.locator(".teelab-check-failed").count() == 0
    lab_page.screenshot("jupyterlab-attestation-panel")

    assert lab_page.run_cell("print(6 * 7)").strip() == "42"

    started = panel.fact("Started").inner_text()
    lab_page.restart_kernel()
    # The record is fetched again after the restart's fresh handshake.
    expect(panel.fact("Started")).not_to_have_text(started, timeout=60_000)
    expect(lab_page.badge).to_have_text(SIMULATED)
    lab_page.wait_idle()
    assert lab_page.run_cell("print('after restart')").strip() == "after restart"
    lab_page.screenshot("jupyterlab-after-restart")


def amber(locator: Locator, prop: str) -> tuple[str, str]:
    """The element's colour ``prop`` and the theme's warning colour (amber), both as the browser computes them."""
    shown, warn = locator.evaluate(
        """(node, prop) => {
            const probe = document.body.appendChild(document.createElement('div'));
            probe.style.color = 'var(--jp-warn-color1)';
            const amber = getComputedStyle(probe).color;
            probe.remove();
            return [getComputedStyle(node)[prop], amber];
        }""",
        prop,
    )
    return str(shown), str(warn)


def test_upload_grant_and_read_a_dataset(
    lab_page: LabPage, broker: object, kernel_env: KernelEnv, tmp_path: Path
) -> None:
    """A data owner chooses a release policy, uploads a CSV and grants themselves; the notebook reads it inside
    the attested kernel."""
    from teelab.sealed_store.services import session_user

    me = f"user:{session_user()}"
    csv = tmp_path / "patients 2024.csv"
    csv.write_text("id,age\n" + "".join(f"{i},{20 + i % 50}\n" for i in range(200_000)))
    attested_notebook(lab_page)
    page = lab_page.page
    browser = lab_page.open_datasets()

    # Nothing is released under a policy by omission: no policy is chosen for the user, no upload without one.
    expect(browser.policy_select).to_have_value("")
    expect(browser.upload_button).to_be_disabled()
    browser.choose_policy("teelab-sim")
    expect(browser.upload_button).to_be_enabled()
    admits = browser.policy_preview
    expect(admits.locator('[data-teelab="policy-id"]')).to_have_text(
        "Releases the key under policy teelab-sim"
    )
    expect(admits.locator('[data-teelab="policy-tees"]')).to_have_text("TEE types admitted: SGX")
    simulated = admits.locator('[data-teelab="policy-simulated"]')
    expect(simulated).to_contain_text("Admits simulated kernels — not confidential")
    shown, warn = amber(simulated, "borderTopColor")
    assert shown == warn, (shown, warn)
    expect(admits.locator('[data-teelab="policy-pin"][data-tee="sgx"]')).to_have_text(
        "SGX: pins isv_prod_id, mrenclave, mrsigner"
    )
    admits.locator(".teelab-policy-text summary").click()
    expect(admits.locator('[data-teelab="policy-text"]')).to_contain_text(kernel_env.mrenclave)
    lab_page.screenshot("jupyterlab-dataset-policy-chosen")

    # A slow uplink, so the progress bar has something to show.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 400_000},
    )
    browser.start_upload(csv, "patients")  # under the policy chosen above
    expect(browser.progress).to_be_visible()
    page.wait_for_function(
        "el => el.value > 0 && el.value < el.max", arg=browser.progress.element_handle(), timeout=30_000
    )
    expect(browser.root.locator(".teelab-progress-text")).to_contain_text("% of 1.")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    expect(browser.row("patients")).to_be_visible(timeout=120_000)
    expect(browser.message).to_have_text(
        "Uploaded patients version 1 (200000 rows), sealed under policy teelab-sim."
    )
    expect(browser.progress).to_be_hidden()
    expect(browser.row("patients").locator('[data-teelab="policy"]')).to_have_text(
        "release policy: teelab-sim"
    )
    # The form is back to no policy: the next upload chooses again.
    expect(browser.policy_select).to_have_value("")
    expect(browser.upload_button).to_be_disabled()
    lab_page.screenshot("jupyterlab-dataset-uploaded")
    expect(browser.row("patients").locator('[data-teelab="access"]')).to_contain_text("admin")

    browser.grant("patients", me, expires="2031-01-31T12:00")
    expect(browser.row("patients").locator('[data-teelab="access"]')).to_contain_text("read")

    browser.insert_read_dataset("patients")
    source = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").last
    expect(source).to_contain_text('df = read_dataset("patients")')
    lab_page.run_active_cell()
    assert lab_page.run_cell("print(df.shape, int(df['age'].max()))").strip() == "(200000, 2) 69"
    lab_page.screenshot("jupyterlab-dataset-read")

    browser.row("patients").locator(f'[data-teelab="grant"][data-principal="{me}"] .teelab-revoke').click()
    expect(browser.row("patients").locator('[data-teelab="grant"]')).to_have_count(0)
    output = lab_page.run_cell(
        "try:\n    read_dataset('patients')\nexcept Exception as e:\n    print(type(e).__name__)"
    )
    assert output.strip() == "KeyBrokerError"


def test_artifacts_folder_is_ignored_by_git() -> None:
    root = HERE.parents[1]
    ignored = [line.strip() for line in (root / ".gitignore").read_text().splitlines()]
    assert "tests/artifacts/" in ignored  # screenshots and logs never end up in a commit


def test_a_restart_the_policy_refuses_turns_the_badge_red(lab_page: LabPage, kernel_env: KernelEnv) -> None:
    # A kernel of its own, whose operator tightens the policy while it runs: the restart re-attests, fails.
    name, display_name = "teelab-tightened", "teelab · policy tightened later"
    spec_dir = copy_kernelspec(kernel_env, kernel_env.jupyter_data, name=name)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    (spec_dir / "kernel.json").write_text(json.dumps({**spec, "display_name": display_name}))
    policy = write_policy(kernel_env, name, kernel_env.policy.read_text())
    try:
        lab_page.open()
        lab_page.new_notebook(display_name)
        expect(lab_page.badge).to_have_text(SIMULATED, timeout=60_000)

        policy.write_text(policy.read_text().replace("allow_simulation = true", "allow_simulation = false"))
        lab_page.restart_kernel()
        expect(lab_page.badge).to_have_text("Attestation failed: policy.simulation", timeout=60_000)
        expect(lab_page.badge).to_have_attribute("data-level", "failed")
        lab_page.screenshot("jupyterlab-refused-restart")
    finally:
        shutil.rmtree(spec_dir)
        policy.unlink()


UNPINNED_POLICY = """# <img src=x onerror="window.__teelabInjected = 1"> an operator's comment, shown as text
id = "prod<b>bold</b>"
allow_simulation = false

[tdx]
"""


def test_the_policy_chooser_shows_an_unpinned_policy_in_amber_and_policy_text_as_text(
    lab_page: LabPage, kernel_env: KernelEnv
) -> None:
    # Published beside the kernel's: the operator's policy text (and id) is data, never markup.
    policy = write_policy(kernel_env, "prod-unpinned", UNPINNED_POLICY)
    try:
        lab_page.open()
        browser = lab_page.open_datasets()
        browser.choose_policy("prod-unpinned")
        expect(browser.policy_select.locator('option[value="prod-unpinned"]')).to_have_text(
            "prod-unpinned (id prod<b>bold</b>)"
        )
        admits = browser.policy_preview
        expect(admits.locator('[data-teelab="policy-id"]')).to_have_text(
            "Releases the key under policy prod<b>bold</b>"
        )
        expect(admits.locator('[data-teelab="policy-simulated"]')).to_have_text("Simulated kernels: refused")
        expect(admits.locator('[data-teelab="policy-tees"]')).to_have_text("TEE types admitted: TDX")
        unpinned = admits.locator('[data-teelab="policy-pin"][data-tee="tdx"]')
        expect(unpinned).to_have_text(
            "TDX: pins nothing — no identity pinned: any kernel image on this TEE receives the key"
        )
        shown, warn = amber(unpinned, "color")
        assert shown == warn, (shown, warn)
        admits.locator(".teelab-policy-text summary").click()
        expect(admits.locator('[data-teelab="policy-text"]')).to_contain_text('<img src=x onerror="window.')
        assert admits.locator("img, b").count() == 0
        assert browser.root.locator("option b").count() == 0
        assert lab_page.page.evaluate("window.__teelabInjected") is None
        expect(browser.upload_button).to_be_enabled()
        lab_page.screenshot("jupyterlab-dataset-policy-unpinned")
    finally:
        policy.unlink()
