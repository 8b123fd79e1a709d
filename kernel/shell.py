"""The attested kernel's IPython shell: ``!cmd`` still runs where the TEE has no pseudo-terminal.

IPython runs ``!cmd`` under a pseudo-terminal (pexpect), so programs print as they would in a terminal. Gramine
has no pty devices: there ``!echo hi`` fails with ``OSError: out of pty devices`` (tee_runtimes.md §1.7),
which tells a user nothing about why. Here, when no pty can be opened, the command runs without one — its
output reaches the notebook through the kernel's captured stdout/stderr, as ``os.system`` output does — after a
one-time notice that says so. ``!!cmd``, ``%sx`` and ``%%bash`` use pipes, not a pty, and are unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from subprocess import CalledProcessError

from ipykernel.zmqshell import ZMQInteractiveShell
from IPython.utils.process import system as system_with_pty  # type: ignore[attr-defined]

NO_PTY_NOTICE = (
    "teelab: this TEE has no pseudo-terminal, so `!` commands run without one (programs that need a "
    "terminal, e.g. interactive ones or progress bars, may behave differently)\n"
)


def pty_available() -> bool:
    """Whether a pseudo-terminal can be opened here (asked each time: it costs one open and two closes)."""
    try:
        leader, follower = os.openpty()
    except OSError:
        return False
    os.close(leader)
    os.close(follower)
    return True


def system_without_pty(cmd: str) -> int:
    """Run ``cmd`` in the user's shell with the kernel's stdout/stderr; IPython's exit-code convention."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # The user's own command line, for the user's shell: that is what `!` means.
        code = subprocess.call(cmd, shell=True, executable=os.environ.get("SHELL") or None)  # noqa: S602
    except KeyboardInterrupt:
        code = 130
    return -(code - 128) if code > 128 else code


class TeeShell(ZMQInteractiveShell):  # type: ignore[misc]
    _told_no_pty = False

    def system_piped(self, cmd: str) -> None:
        """ipykernel 7.4's ``system_piped`` (POSIX branch) with a fallback when there is no pty."""
        if cmd.rstrip().endswith("&"):
            raise OSError("Background processes not supported.")
        # depth=1: the user's frame, whose variables ``{name}`` and ``$name`` refer to.
        expanded = self.var_expand(cmd, depth=1)  # type: ignore[no-untyped-call]
        if pty_available():
            exit_code = system_with_pty(expanded)
        else:
            if not self._told_no_pty:
                sys.stderr.write(NO_PTY_NOTICE)
                self._told_no_pty = True
            exit_code = system_without_pty(expanded)
        self.user_ns["_exit_code"] = exit_code
        if getattr(self, "system_raise_on_error", False) and exit_code != 0:
            raise CalledProcessError(exit_code, cmd)

    system = system_piped
