"""A notebook's Dask cluster in the kernel attestation panel, in a real JupyterLab and a real (headless) Chromium.

The user opens the attestation panel of a notebook on the simulated TEE kernel (no cluster yet), starts a
``TeeCluster`` (sim, a scheduler and one worker) in a cell — the cell shows it as LocalCluster does, with each
node's verdict — and the panel lists every node with its verdict as it is attested; scaling to two workers adds
a row, closing the cluster empties the section. A report forged by code in the kernel is shown only as text, a
malformed one is refused, and after a restart the panel asks the new kernel. The kernel is the clusters'
controller: the nodes are launched from the kernel's process through the sim backend. A screenshot goes to
tests/artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import KernelEnv
from .lab import LabPage, chromium, jupyter_lab
from .test_browser import attested_notebook, lab_env

pytestmark = pytest.mark.slow

NODE_TIMEOUT = 120_000  # ms: a node's launch and handshake on a loaded 2-core machine


@pytest.fixture
def lab_page(kernel_env: KernelEnv, tmp_path: Path) -> Iterator[LabPage]:
    with (
        jupyter_lab(tmp_path, lab_env(kernel_env, tmp_path), "jupyter-lab-dask") as server,
        chromium(tmp_path / "chromium-profile") as context,
    ):
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield LabPage(page, server)


def start_cluster_code(kernel_env: KernelEnv) -> str:
    from teelab.enclave_runtime.backends import get_backend
    from teelab.enclave_runtime.images import KERNEL_IMAGE

    # The kernel's own image and policy, named explicitly: inside the kernel, teelab's data folder is the
    # TEE's private home, not the one `teelab kernel install` wrote to.
    image = get_backend("sim").image_dir(KERNEL_IMAGE)
    return (
        "from teelab.dask import TeeCluster\n"
        f"cluster = TeeCluster(n_workers=1, backend='sim', image={str(image)!r}, policy={str(kernel_env.policy)!r})\n"
        "cluster"
    )


def test_the_panel_lists_every_node_of_the_kernels_cluster_with_its_verdict(
    lab_page: LabPage, kernel_env: KernelEnv
) -> None:
    attested_notebook(lab_page)
    panel = lab_page.open_attestation_panel()
    section = lab_page.page.locator('[data-teelab="dask-clusters"]')
    # No cluster yet: the kernel has no comm target and closes the panel's request.
    expect(section.locator('[data-teelab="dask-empty"]')).to_have_text("No Dask cluster in this kernel.")
    expect(section.locator('[data-teelab="dask-provenance"]')).to_contain_text("Reported by the kernel")

    output = lab_page.run_cell(start_cluster_code(kernel_env))
    short = kernel_env.mrenclave[:16]
    # The cell shows the cluster as LocalCluster's card does, with every node's verdict.
    assert "TeeCluster" in output and output.count(short) == 2, output
    assert output.count("pass (warning)") == 2, output

    rows = section.locator('[data-teelab="dask-node"]')
    expect(rows).to_have_count(2, timeout=NODE_TIMEOUT)
    for name, role in (("scheduler", "scheduler"), ("0", "worker")):
        row = section.locator(f'[data-teelab="dask-node"][data-node="{name}"]')
        expect(row).to_have_attribute("data-role", role)
        expect(row).to_have_attribute("data-verdict", "pass")
        expect(row.locator('[data-teelab="dask-verdict"]')).to_have_text("✓ pass (warning)")
        expect(row).to_contain_text(short)
        expect(row.locator("td").nth(4)).to_have_text("SGX/sim")
    expect(section.locator('[data-teelab="dask-simulated"]')).to_contain_text("not confidential")

    # Scaled up in the notebook: the new worker's row appears once it is attested and joined.
    lab_page.run_cell("cluster.scale(2)\nprint('scaling')")
    worker = section.locator('[data-teelab="dask-node"][data-node="1"]')
    expect(worker).to_have_attribute("data-connected", "true", timeout=NODE_TIMEOUT)
    expect(worker).to_have_attribute("data-verdict", "pass")
    expect(rows).to_have_count(3)
    addresses = rows.locator("td:nth-child(7)").all_inner_texts()
    assert all(re.fullmatch(r"tls://127\.0\.0\.1:\d+", a) for a in addresses), addresses
    expect(panel.banner).to_be_visible()  # the kernel's own attestation stays above
    # Room for the panel's table: the file browser folded away, as a user would.
    lab_page.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
    section.scroll_into_view_if_needed()
    lab_page.screenshot("jupyterlab-dask-cluster-panel")

    # Closed: the section says so.
    assert lab_page.run_cell("cluster.close()\nprint('closed')").strip() == "closed"
    expect(section.locator('[data-teelab="dask-empty"]')).to_be_visible(timeout=60_000)

    # Code in the kernel can forge the report (the panel is the kernel's word; the gateway's verdict on the
    # kernel anchors trust), but what it sends is only ever text, and a malformed report is refused.
    assert lab_page.run_cell(FORGE).strip() == "forged"
    forged = section.locator('[data-teelab="dask-node"]')
    expect(forged).to_have_count(1)
    expect(forged.locator("td").nth(1)).to_have_text(MARKUP)
    expect(section.locator("h4")).to_contain_text("<b>cluster</b>")
    assert section.locator("img, b").count() == 0
    assert lab_page.page.evaluate("window.__teelabDask") is None
    assert lab_page.run_cell(MALFORMED).strip() == "malformed"
    expect(section.locator('[data-teelab="dask-error"]')).to_have_text(
        "the kernel sent a malformed report (starts is not a count)"
    )

    # A restart is a new kernel: the panel asks it afresh (nothing forged survives it).
    lab_page.restart_kernel()
    lab_page.wait_idle()
    expect(section.locator('[data-teelab="dask-empty"]')).to_be_visible(timeout=60_000)


MARKUP = '<img src=x onerror="window.__teelabDask = 1">'
NODE = {
    "name": MARKUP,
    "role": "worker",
    "address": None,
    "connected": False,
    "verdict": "affirming",
    "accepted": True,
    "tee": "sgx",
    "simulated": False,
    "measurement": "00" * 32,
    "controller": {"passed": True, "detail": MARKUP},
    "failure": None,
    "attested_at": "2026-12-03T00:00:00Z",
    "starts": 1,
}
CLUSTER = {
    "id": "forged",
    "name": "<b>cluster</b>",
    "status": "running",
    "backend": "sim",
    "simulated": False,
    "scheduler_address": "tls://10.0.0.1:1",
    "nodes": [NODE],
}


def send_from_the_kernel(message: dict[str, object], said: str) -> str:
    return (
        "import comm\n"
        f"comm.create_comm(target_name='teelab.dask.attestation', data={message!r})\n"
        f"print({said!r})"
    )


FORGE = send_from_the_kernel(
    {"type": "clusters", "version": 1, "seq": 10**6, "clusters": [CLUSTER]}, "forged"
)
MALFORMED = send_from_the_kernel(
    {
        "type": "clusters",
        "version": 1,
        "seq": 10**6 + 1,
        "clusters": [{**CLUSTER, "nodes": [{**NODE, "starts": 0}]}],
    },
    "malformed",
)
