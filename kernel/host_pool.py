"""Which host agents a remote kernel may use, and the credentials this gateway presents to each.

The operator's Jupyter configuration is the authority. ``hosts`` is the pool every ``teelab-remote`` kernelspec
uses; a kernelspec may instead name its own (``metadata.kernel_provisioner.config.hosts``, or ``host``), but
only within what the operator allows:

* every host it names must be in the operator's ``hosts`` or ``allowed_hosts`` (an allow-list: a kernelspec
  cannot send kernels — their code, their data keys — to a machine the operator never approved);
* and, unless the operator says ``kernelspec_hosts = "any"``, the kernelspec must be installed where only the
  administrator writes (``system_kernelspec_dirs``, by default Jupyter's system paths; the kernel.json not
  writable by group or others). A kernelspec in a user's home is writable by anything running as that user.
  With ``kernelspec_hosts = "never"`` a kernelspec naming hosts is refused (never silently ignored).

A refused kernelspec starts nothing and says which rule it broke. Hosts are compared as parsed addresses
(``grpcs://h:1`` and ``grpcs://h:01`` are one host).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from teelab.errors import ConfigError
from teelab.kernel.host_client import HostTarget

KERNELSPEC_HOST_KEYS = frozenset({"hosts", "host"})


@dataclass(frozen=True)
class HostCredentials:
    """What this gateway presents to one agent: a bearer token, or a client certificate (or both)."""

    token: str | None
    ca: bytes | None
    client_certificate: tuple[bytes, bytes] | None  # (PEM chain, PEM key)


def read_private_file(path: Path, what: str, *, forbidden: int = 0o077) -> bytes:
    """A secret file's bytes; refused if its mode grants group or others any of ``forbidden``."""
    try:
        if path.stat().st_mode & forbidden:
            raise ConfigError(f"the {what} {path} is open to other users", hint=f"chmod 600 {path}")
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror}") from None


def load_credentials(
    token_file: str | None, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> HostCredentials:
    if (cert_file is None) != (key_file is None):
        raise ConfigError("a gateway client certificate needs both client_cert_file and client_key_file")
    if token_file is None and cert_file is None:
        raise ConfigError(
            "no credential for the host agents: set c.RemoteTeeProvisioner.host_token_file, or "
            "client_cert_file and client_key_file"
        )
    token = None
    if token_file is not None:
        # As before: a token file readable by others is refused (mode 0600 recommended).
        token = read_private_file(Path(token_file), "host token file", forbidden=0o044).decode().strip()
    certificate = None
    if cert_file is not None and key_file is not None:
        try:
            chain = Path(cert_file).read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read the client certificate {cert_file}: {error.strerror}") from None
        certificate = (chain, read_private_file(Path(key_file), "client key file"))
    try:
        ca = Path(ca_file).read_bytes() if ca_file else None
    except OSError as error:
        raise ConfigError(f"cannot read the host CA file {ca_file}: {error.strerror}") from None
    return HostCredentials(token, ca, certificate)


def kernelspec_host_list(named: Sequence[object]) -> list[str]:
    """A kernelspec's ``hosts`` (a list) and ``host`` (one address) values, as one list of addresses."""
    hosts: list[str] = []
    for value in named:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError("a kernelspec's hosts are grpcs://HOST:PORT strings")
        hosts.extend(values)
    return hosts


def _targets(texts: Iterable[str]) -> dict[str, str]:
    """Each address's canonical form -> the address as written."""
    return {str(HostTarget.parse(text)): text for text in texts}


def kernelspec_pool(
    requested: Sequence[str],
    *,
    kernelspec: str,
    resource_dir: str | None,
    operator_hosts: Sequence[str],
    allowed_hosts: Sequence[str],
    mode: str,
    system_dirs: Sequence[str],
) -> list[str]:
    """The hosts a kernelspec named, if the operator's rules (module docstring) allow them; else ConfigError."""
    where = f"the kernelspec {kernelspec!r}" + (f" ({resource_dir})" if resource_dir else "")
    if mode == "never":
        raise ConfigError(
            f"{where} names host agents, and this server's operator lets no kernelspec choose them",
            hint="c.RemoteTeeProvisioner.kernelspec_hosts = 'system' allows system-wide kernelspecs to",
        )
    try:
        named = _targets(requested)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error.message}", hint=error.hint) from None
    if not named:
        raise ConfigError(f"{where} names an empty list of host agents")
    approved = _targets([*operator_hosts, *allowed_hosts])
    reasons = []
    unapproved = [text for canonical, text in named.items() if canonical not in approved]
    if unapproved:
        reasons.append(
            f"names host agents this server's operator has not approved ({', '.join(unapproved)}; approved: "
            f"c.RemoteTeeProvisioner.hosts and allowed_hosts)"
        )
    if mode != "any" and not installed_system_wide(resource_dir, system_dirs):
        reasons.append(
            "is not installed system-wide, and only system-wide kernelspecs may choose host agents "
            f"(c.RemoteTeeProvisioner.system_kernelspec_dirs: {', '.join(system_dirs) or 'none'})"
        )
    if reasons:
        raise ConfigError(
            f"refusing {where}: it " + "; and it ".join(reasons),
            hint="install the kernelspec system-wide with hosts the operator listed, or remove its hosts",
        )
    return list(named.values())


def installed_system_wide(resource_dir: str | None, system_dirs: Sequence[str]) -> bool:
    """True if the kernelspec lives (after symlinks) under a system kernelspec folder, and its kernel.json is
    not writable by group or others."""
    if not resource_dir:
        return False
    try:
        real = Path(resource_dir).resolve(strict=True)
        spec_mode = (real / "kernel.json").stat().st_mode
    except OSError:
        return False
    if spec_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    for folder in system_dirs:
        try:
            root = Path(folder).resolve(strict=True)
        except OSError:
            continue
        if real.is_relative_to(root) and real != root:
            return True
    return False
