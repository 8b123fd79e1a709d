"""Attested kernel sessions vs plain ipykernel (issue 4), side by side in one run.

- cold start: from creating the KernelManager to the first ``execute_reply`` (median of repeated starts,
  alternating plain and teelab so drift affects both alike);
- round trip: ``execute_request`` → ``execute_reply`` for trivial cells (median and p99 over ≥ 200 cells),
  both kernels running, one cell to each in turn.
Baseline: ipykernel's own ``python3`` kernelspec over TCP, no encryption (what a stock install runs).
teelab: the ``teelab-sim`` kernel — enclave image check, simulated quote, verification, HPKE bundle, CURVE on
every socket and the ZAP allow-list. Goals: start ≤ 1.3× plain, round trip ≤ 1.1× plain.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import isolated_teelab, median, percentile, write_result


def _start_to_first_reply(kernel_name: str) -> float:
    from jupyter_client.manager import KernelManager

    start = time.perf_counter()
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        msg_id = kc.execute("1")
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        return time.perf_counter() - start
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _round_trips(kernel_names: dict[str, str], cells: int) -> dict[str, list[float]]:
    """Every kernel started at once, then one cell each in turn, so drift on a shared machine hits all alike."""
    from jupyter_client.manager import KernelManager

    managers = {key: KernelManager(kernel_name=name) for key, name in kernel_names.items()}
    clients = {}
    try:
        for key, km in managers.items():
            km.start_kernel()
            clients[key] = km.client()
            clients[key].start_channels()
            clients[key].wait_for_ready(timeout=120)
        for kc in clients.values():
            for _ in range(20):  # warm up
                kc.execute_interactive("pass", timeout=60)
        times: dict[str, list[float]] = {key: [] for key in clients}
        for _ in range(cells):
            for key, kc in clients.items():
                start = time.perf_counter()
                msg_id = kc.execute("pass")
                while kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") != msg_id:
                    pass
                times[key].append(time.perf_counter() - start)
                while kc.iopub_channel.msg_ready():  # keep iopub drained between cells
                    kc.get_iopub_msg(timeout=1)
        return times
    finally:
        for kc in clients.values():
            kc.stop_channels()
        for km in managers.values():
            if km.has_kernel:
                km.shutdown_kernel(now=True)


def run(starts: int = 7, cells: int = 300) -> dict[str, object]:
    from teelab.kernel.kernelspec import install

    with tempfile.TemporaryDirectory() as scratch, isolated_teelab(Path(scratch)):
        install(backend="sim", user=True)
        kernels = {"plain": "python3", "teelab_sim": "teelab-sim"}
        for name in kernels.values():  # first starts compile bytecode caches; not part of the steady state
            _start_to_first_reply(name)
        start_times: dict[str, list[float]] = {k: [] for k in kernels}
        for _ in range(starts):
            for key, name in kernels.items():
                start_times[key].append(_start_to_first_reply(name))
        rtts = _round_trips(kernels, cells)
    summary: dict[str, dict[str, float]] = {}
    for key in kernels:
        summary[key] = {
            "start_seconds_median": round(median(start_times[key]), 3),
            "rtt_ms_median": round(median(rtts[key]) * 1000, 3),
            "rtt_ms_p99": round(percentile(rtts[key], 99) * 1000, 3),
        }
    ratios = {
        "start": round(
            summary["teelab_sim"]["start_seconds_median"] / summary["plain"]["start_seconds_median"], 3
        ),
        "rtt_median": round(summary["teelab_sim"]["rtt_ms_median"] / summary["plain"]["rtt_ms_median"], 3),
        "rtt_p99": round(summary["teelab_sim"]["rtt_ms_p99"] / summary["plain"]["rtt_ms_p99"], 3),
    }
    result = {
        "starts": starts,
        "cells": cells,
        **summary,
        "ratios": ratios,
        "goal": {"start": 1.3, "rtt_median": 1.1},
        "meets_goal": ratios["start"] <= 1.3 and ratios["rtt_median"] <= 1.1,
    }
    write_result("kernel_session", result)
    return result


if __name__ == "__main__":
    print(run())
