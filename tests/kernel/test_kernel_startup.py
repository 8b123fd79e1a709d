"""The attested kernel's start and shell under a LibOS's limits (tee_runtimes.md §1.7): no process is created
while it starts, and ``!cmd`` works, with a clear notice, where the TEE has no pseudo-terminal."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from .conftest import KERNEL, KernelEnv
from .test_kernel_manager import run

# What Gramine does: os.openpty fails, and pty's fallback ends in "out of pty devices".
NO_PTY = "import os\ndef _no_pty():\n    raise OSError('out of pty devices')\nos.openpty = _no_pty\nos.forkpty = _no_pty\n"


@pytest.fixture
def session(kernel_env: KernelEnv) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _reaped_children_faults(pid: int) -> int:
    """cminflt of /proc/PID/stat: page faults of every child PID has waited for (any exec'd child has many)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[8])


def test_the_kernel_creates_no_process_while_it_starts(
    session: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = session
    process = km.provisioner.process  # type: ignore[union-attr]
    assert process is not None
    # Ready and answering, and so far no child was reaped and none is alive.
    assert _reaped_children_faults(process.pid) == 0
    assert psutil.Process(process.pid).children(recursive=True) == []
    # Control experiment: a cell that runs a command makes the count move.
    assert run(kc, "import subprocess; subprocess.run(['true'])")[0]["status"] == "ok"
    assert _reaped_children_faults(process.pid) > 0


def test_a_process_started_during_start_up_is_refused_with_an_os_error() -> None:
    code = (
        "import platform, subprocess\n"
        "from teelab.kernel.startup import ProcessDuringStartup, no_processes, refused_during_startup\n"
        "with no_processes():\n"
        "    try:\n"
        "        subprocess.run(['true'])\n"
        "    except ProcessDuringStartup as error:\n"
        "        print('refused:', isinstance(error, OSError), error.message)\n"
        "    print('processor:', repr(platform.processor()))\n"
        "print('after:', subprocess.run(['true']).returncode, refused_during_startup())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "refused: True no process may be created while the kernel starts (subprocess.Popen)",
        "processor: ''",  # platform's `uname -p` was refused and it carried on
        "after: 0 ['subprocess.Popen', 'subprocess.Popen']",
    ]


def test_shell_commands_run_without_a_pty_with_a_notice(
    session: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = session
    assert run(kc, NO_PTY)[0]["status"] == "ok"
    reply, output = run(
        kc, "def f():\n    word = 'local'\n    !echo no-pty {word} $word\nf()\n!echo again; exit 3"
    )
    assert reply["status"] == "ok"
    assert "no-pty local local\n" in output and "again\n" in output
    assert output.count("this TEE has no pseudo-terminal") == 1
    assert run(kc, "print(_exit_code)")[1] == "3\n"


def test_shell_commands_still_use_a_pty_where_there_is_one(
    session: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = session
    reply, output = run(kc, "def f():\n    word = 'local'\n    !test -t 1 && echo on-a-tty {word}\nf()")
    assert reply["status"] == "ok"
    assert "on-a-tty local" in output and "pseudo-terminal" not in output
