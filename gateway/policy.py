"""The appraisal policy: which authentic evidence is *acceptable* (reference values and tolerances).

A policy is a TOML file (documented key by key in ``docs/policy.md``) or an :class:`AppraisalPolicy` built in
code. Loading never weakens policy by accident: an unknown key, a wrong type, a malformed measurement or an
empty allow-list is a :class:`~teelab.errors.ConfigError` naming the file, the key and what is wrong — a typo
such as ``alow_debug = true`` must not silently fall back to a default.

The default policy (no file) demands what every policy demands: valid signatures and chains (the verifier's
job), TCB status ``UpToDate``, no advisories, not a debug TEE, not simulated.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from teelab.errors import ConfigError
from teelab.gateway import policy_values as pv
from teelab.gateway.policy_values import ACCEPT_ANY_ADVISORY as ACCEPT_ANY_ADVISORY
from teelab.gateway.policy_values import CONTROLLER_BINDINGS as CONTROLLER_BINDINGS
from teelab.gateway.policy_values import MAX_COLLATERAL_AGE_CAP as MAX_COLLATERAL_AGE_CAP
from teelab.gateway.verified import Tee

DEFAULT_POLICY_ID = "teelab-default"
# A policy is a few kilobytes; anything far larger is not a policy file and is refused before parsing.
MAX_POLICY_BYTES = 1 << 20
# Safe defaults (issue 12; the reasons are in docs/policy.md, "Defaults against stale collateral"):
# Intel's TCB info, QE identity and PCK CRLs are 30-day documents; a PCCS refreshes them daily.
DEFAULT_MAX_COLLATERAL_AGE = timedelta(days=30)
# Intel's TCB recovery that every TCB info served by PCS (update=standard) carried from early 2024 on; older
# collateral predates it and lets an unpatched platform look UpToDate. Raise it after every TCB recovery.
DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER = 17

_SGX_MEASUREMENT_BYTES = 32
_TDX_MEASUREMENT_BYTES = 48
_SNP_MEASUREMENT_BYTES = 48
_SNP_HOST_DATA_BYTES = 32
_MAX_VMPL = 3
_REPORT_DATA_BYTES = 64


@dataclass(frozen=True)
class SgxReference:
    """Reference values for SGX enclaves. An empty tuple / ``None`` pins nothing."""

    mrenclave: tuple[str, ...] = ()
    mrsigner: tuple[str, ...] = ()
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    controller_binding: str = "platform"

    def __post_init__(self) -> None:
        with pv.built_in_code("SgxReference"):
            pv.set_field(
                self, "mrenclave", pv.hex_values("sgx.mrenclave", self.mrenclave, _SGX_MEASUREMENT_BYTES)
            )
            pv.set_field(
                self, "mrsigner", pv.hex_values("sgx.mrsigner", self.mrsigner, _SGX_MEASUREMENT_BYTES)
            )
            if self.isv_prod_id is not None:
                pv.uint("sgx.isv_prod_id", self.isv_prod_id, 16)
            if self.min_isv_svn is not None:
                pv.uint("sgx.min_isv_svn", self.min_isv_svn, 16)
            pv.binding(
                "sgx.controller_binding",
                self.controller_binding,
                pinned=self.pins_identity,
                pins=SGX_IDENTITY_PINS,
            )

    @property
    def pins_identity(self) -> bool:
        """Whether only one enclave image (or one signer's one product) passes: MRENCLAVE, or MRSIGNER with
        ISVPRODID. MRSIGNER alone admits every enclave that key ever signed."""
        return bool(self.mrenclave) or (bool(self.mrsigner) and self.isv_prod_id is not None)


@dataclass(frozen=True)
class TdxReference:
    """Reference values for TDX trust domains. An empty tuple pins nothing."""

    mrtd: tuple[str, ...] = ()
    rtmr0: tuple[str, ...] = ()
    rtmr1: tuple[str, ...] = ()
    rtmr2: tuple[str, ...] = ()
    rtmr3: tuple[str, ...] = ()
    mrconfigid: tuple[str, ...] = ()
    controller_binding: str = "platform"

    def __post_init__(self) -> None:
        with pv.built_in_code("TdxReference"):
            for name in TDX_PINS:
                pv.set_field(
                    self, name, pv.hex_values(f"tdx.{name}", getattr(self, name), _TDX_MEASUREMENT_BYTES)
                )
            pv.binding(
                "tdx.controller_binding",
                self.controller_binding,
                pinned=self.pins_identity,
                pins=TDX_IDENTITY_PINS,
            )

    @property
    def pins_identity(self) -> bool:
        """Whether the TD's initial image is pinned (MRTD); without it the host boots firmware of its own."""
        return bool(self.mrtd)


TDX_PINS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid")
SGX_IDENTITY_PINS = "sgx.mrenclave, or sgx.mrsigner with sgx.isv_prod_id"
TDX_IDENTITY_PINS = "tdx.mrtd"
SNP_IDENTITY_PINS = "snp.measurement"
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


@dataclass(frozen=True)
class SnpMinTcb:
    """Minimum SEV-SNP TCB components (compared with the report's REPORTED_TCB). ``None`` = no minimum.

    ``fmc`` exists only on Turin and later; a minimum for it rejects reports that carry no FMC component.
    """

    bootloader: int | None = None
    tee: int | None = None
    snp: int | None = None
    microcode: int | None = None
    fmc: int | None = None

    def __post_init__(self) -> None:
        with pv.built_in_code("SnpMinTcb"):
            for name in SNP_TCB_COMPONENTS:
                value = getattr(self, name)
                if value is not None:
                    pv.uint(f"snp.min_tcb.{name}", value, 8)

    def minimums(self) -> dict[str, int]:
        return {name: value for name in SNP_TCB_COMPONENTS if (value := getattr(self, name)) is not None}


# The minimum SEV-SNP TCB when the policy sets none, per product: the Milan level of AMD's 2023 firmware and
# microcode (SNP firmware SVN 8, microcode SPL 115). TCB numbering differs per product, so a product without an
# entry has no default and its evidence is refused until the policy sets snp.min_tcb.
DEFAULT_SNP_MIN_TCB: dict[str, SnpMinTcb] = {
    "Milan": SnpMinTcb(bootloader=3, tee=0, snp=8, microcode=115),
}


@dataclass(frozen=True)
class SnpReference:
    """Reference values and guest-policy requirements for SEV-SNP.

    The defaults are the safe ones (docs/policy.md): a minimum TCB (``min_tcb = None`` means the product's
    default, :data:`DEFAULT_SNP_MIN_TCB`), a CRL of AMD's ARK, VMPL 0 and no migration agent. SMT and
    multiple sockets are allowed by default; a hardened policy sets ``allow_smt = false`` or
    ``require_single_socket = true``.
    """

    measurement: tuple[str, ...] = ()
    host_data: tuple[str, ...] = ()
    min_tcb: SnpMinTcb | None = None
    allow_smt: bool = True
    # A migration agent can move the guest, and read its memory on the way.
    allow_migration_agent: bool = False
    require_single_socket: bool = False
    # Refuse evidence whose ASK/ASVK was not checked against a current CRL of AMD's ARK.
    require_crl: bool = True
    # The highest VMPL accepted: VMPL 0 is the guest's most privileged level; a report from a higher level
    # was requested by less privileged code (under an SVSM, the guest OS), which is not what was measured.
    max_vmpl: int = 0
    controller_binding: str = "platform"

    def __post_init__(self) -> None:
        with pv.built_in_code("SnpReference"):
            pv.set_field(
                self,
                "measurement",
                pv.hex_values("snp.measurement", self.measurement, _SNP_MEASUREMENT_BYTES),
            )
            pv.set_field(
                self, "host_data", pv.hex_values("snp.host_data", self.host_data, _SNP_HOST_DATA_BYTES)
            )
            for name in ("allow_smt", "allow_migration_agent", "require_single_socket", "require_crl"):
                pv.flag(f"snp.{name}", getattr(self, name))
            if pv.uint("snp.max_vmpl", self.max_vmpl, 8) > _MAX_VMPL:
                raise pv.Invalid("snp.max_vmpl", f"a VMPL is 0 to {_MAX_VMPL}")
            pv.binding(
                "snp.controller_binding",
                self.controller_binding,
                pinned=self.pins_identity,
                pins=SNP_IDENTITY_PINS,
            )

    @property
    def pins_identity(self) -> bool:
        """Whether the guest's launch image is pinned (MEASUREMENT)."""
        return bool(self.measurement)


@dataclass(frozen=True)
class AppraisalPolicy:
    """An appraisal policy. Build it in code or load it with :func:`load_policy`.

    ``sgx`` / ``tdx`` / ``snp`` hold reference values per TEE. When the policy has *any* of them, evidence
    from a TEE without its section is rejected: a policy that pins an SGX enclave must not accept an
    arbitrary SEV-SNP guest just because it has nothing to compare it with. An empty section (``[tdx]``)
    accepts that TEE without pinning measurements.
    """

    id: str = DEFAULT_POLICY_ID
    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    accepted_advisory_ids: tuple[str, ...] = ()
    allow_debug: bool = False
    allow_simulation: bool = False
    max_collateral_age: timedelta | None = DEFAULT_MAX_COLLATERAL_AGE
    # Intel collateral (TCB info, QE identity) must be at least this TCB evaluation (TCB recovery) number.
    min_tcb_evaluation_data_number: int = DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER
    # Expected report_data: up to 64 bytes, zero-padded on the right to the evidence's report_data length.
    report_data: bytes | None = None
    sgx: SgxReference | None = None
    tdx: TdxReference | None = None
    snp: SnpReference | None = None
    # SHA-256 of the file the policy was loaded from, so a result names the exact policy text.
    digest: str | None = None

    def __post_init__(self) -> None:
        with pv.built_in_code("AppraisalPolicy"):
            pv.policy_id("id", self.id)
            pv.set_field(
                self,
                "accepted_tcb_statuses",
                pv.tcb_statuses("accepted_tcb_statuses", self.accepted_tcb_statuses),
            )
            pv.set_field(
                self,
                "accepted_advisory_ids",
                pv.advisories("accepted_advisory_ids", self.accepted_advisory_ids),
            )
            pv.flag("allow_debug", self.allow_debug)
            pv.flag("allow_simulation", self.allow_simulation)
            if self.max_collateral_age is not None:
                pv.duration("max_collateral_age", self.max_collateral_age)
            pv.uint("min_tcb_evaluation_data_number", self.min_tcb_evaluation_data_number, 32)
            if self.report_data is not None:
                if (
                    not isinstance(self.report_data, bytes)
                    or not 1 <= len(self.report_data) <= _REPORT_DATA_BYTES
                ):
                    raise pv.Invalid("report_data", "expected 1 to 64 bytes")

    @property
    def pinned_tees(self) -> tuple[Tee, ...]:
        """The TEEs this policy has a section for; empty means every TEE is judged by the common keys."""
        sections: tuple[tuple[Tee, object], ...] = (
            ("sgx", self.sgx),
            ("tdx", self.tdx),
            ("sev-snp", self.snp),
        )
        return tuple(tee for tee, section in sections if section is not None)

    def require_identity_pin(self, backend: str, *, simulated: bool = False) -> None:
        """Refuse (ConfigError) to run a real-TEE kernel under a policy that pins no image identity.

        Without a pin, any enclave or guest on genuine hardware passes — including one the host built itself,
        which then receives the session's keys. Every TEE the policy accepts must pin its identity (SGX:
        MRENCLAVE, or MRSIGNER with ISVPRODID; TDX: MRTD; SEV-SNP: MEASUREMENT); a policy without a TEE
        section accepts every TEE and so pins nothing. ``simulated`` backends protect nothing anyway and are
        exempt. Called by ``teelab kernel install`` and by the provisioner before every kernel start.
        """
        if simulated:
            return
        references: tuple[tuple[str, SgxReference | TdxReference | SnpReference | None, str], ...] = (
            ("sgx", self.sgx, SGX_IDENTITY_PINS),
            ("tdx", self.tdx, TDX_IDENTITY_PINS),
            ("snp", self.snp, SNP_IDENTITY_PINS),
        )
        present = [(name, ref, pins) for name, ref, pins in references if ref is not None]
        unpinned = [f"[{name}] needs {pins}" for name, ref, pins in present if not ref.pins_identity]
        if present and not unpinned:
            return
        problem = (
            "it has no [sgx], [tdx] or [snp] section, so it accepts any enclave or guest"
            if not present
            else "; ".join(unpinned)
        )
        raise ConfigError(
            f"policy {self.id!r} pins no kernel image for the {backend} backend: {problem}. On real hardware "
            "the host could then run an image of its own and receive the session's keys",
            hint="pin the image: `teelab enclave measure` prints its MRENCLAVE (or measurement) for the policy "
            "file; see docs/policy.md",
        )

    @property
    def accepts_any_advisory(self) -> bool:
        return self.accepted_advisory_ids == (ACCEPT_ANY_ADVISORY,)

    def with_overrides(self, *, allow_debug: bool = False, allow_simulation: bool = False) -> AppraisalPolicy:
        """This policy loosened from the command line; the id says so, so no result hides the override."""
        suffix = ""
        if allow_debug and not self.allow_debug:
            suffix += "+allow-debug"
        if allow_simulation and not self.allow_simulation:
            suffix += "+allow-simulation"
        if not suffix:
            return self
        return replace(
            self,
            id=self.id[:120] + suffix,
            allow_debug=self.allow_debug or allow_debug,
            allow_simulation=self.allow_simulation or allow_simulation,
        )


_TOP_KEYS = (
    "id",
    "accepted_tcb_statuses",
    "accepted_advisory_ids",
    "allow_debug",
    "allow_simulation",
    "max_collateral_age",
    "min_tcb_evaluation_data_number",
    "report_data",
    "sgx",
    "tdx",
    "snp",
)
_SGX_KEYS = ("mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn", "controller_binding")
_TDX_KEYS = (*TDX_PINS, "controller_binding")
_SNP_KEYS = (
    "measurement",
    "host_data",
    "min_tcb",
    "allow_smt",
    "allow_migration_agent",
    "require_single_socket",
    "require_crl",
    "max_vmpl",
    "controller_binding",
)


def _check_keys(prefix: str, table: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise pv.Invalid(
                where, f"unknown key{pv.suggest(key, allowed)}; allowed here: {', '.join(allowed)}"
            )


def _table(key: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise pv.Invalid(key, f"expected a table ([{key}] or {key} = {{...}}), got {pv.describe(value)}")
    return value


def _non_empty_hexes(key: str, value: object, nbytes: int) -> tuple[str, ...]:
    values = pv.hex_values(key, value, nbytes)
    if not values:
        raise pv.Invalid(key, "an empty list allows nothing; remove the key to accept any value")
    return values


def _parse_sgx(table: Mapping[str, object]) -> SgxReference:
    _check_keys("sgx", table, _SGX_KEYS)
    ref = SgxReference(
        mrenclave=_non_empty_hexes("sgx.mrenclave", table["mrenclave"], _SGX_MEASUREMENT_BYTES)
        if "mrenclave" in table
        else (),
        mrsigner=_non_empty_hexes("sgx.mrsigner", table["mrsigner"], _SGX_MEASUREMENT_BYTES)
        if "mrsigner" in table
        else (),
        isv_prod_id=pv.uint("sgx.isv_prod_id", table["isv_prod_id"], 16) if "isv_prod_id" in table else None,
        min_isv_svn=pv.uint("sgx.min_isv_svn", table["min_isv_svn"], 16) if "min_isv_svn" in table else None,
    )
    return _with_binding("sgx", table, ref, SGX_IDENTITY_PINS)


def _parse_tdx(table: Mapping[str, object]) -> TdxReference:
    _check_keys("tdx", table, _TDX_KEYS)

    def pin(name: str) -> tuple[str, ...]:
        return _non_empty_hexes(f"tdx.{name}", table[name], _TDX_MEASUREMENT_BYTES) if name in table else ()

    ref = TdxReference(
        mrtd=pin("mrtd"),
        rtmr0=pin("rtmr0"),
        rtmr1=pin("rtmr1"),
        rtmr2=pin("rtmr2"),
        rtmr3=pin("rtmr3"),
        mrconfigid=pin("mrconfigid"),
    )
    return _with_binding("tdx", table, ref, TDX_IDENTITY_PINS)


_Reference = TypeVar("_Reference", SgxReference, TdxReference, SnpReference)


def _with_binding(section: str, table: Mapping[str, object], ref: _Reference, pins: str) -> _Reference:
    # Checked here, against the section's parsed pins, so the error names the policy file.
    if "controller_binding" not in table:
        return ref
    key = f"{section}.controller_binding"
    binding = pv.binding(key, table["controller_binding"], pinned=ref.pins_identity, pins=pins)
    return replace(ref, controller_binding=binding)


def _parse_snp(table: Mapping[str, object]) -> SnpReference:
    _check_keys("snp", table, _SNP_KEYS)
    min_tcb = None
    if "min_tcb" in table:
        tcb = _table("snp.min_tcb", table["min_tcb"])
        _check_keys("snp.min_tcb", tcb, SNP_TCB_COMPONENTS)
        if not tcb:
            raise pv.Invalid(
                "snp.min_tcb", f"an empty table sets no minimum; give any of {', '.join(SNP_TCB_COMPONENTS)}"
            )
        min_tcb = SnpMinTcb(**{name: pv.uint(f"snp.min_tcb.{name}", value, 8) for name, value in tcb.items()})
    defaults = SnpReference()

    def flag(name: str) -> bool:
        return pv.flag(f"snp.{name}", table[name]) if name in table else bool(getattr(defaults, name))

    max_vmpl = pv.uint("snp.max_vmpl", table["max_vmpl"], 8) if "max_vmpl" in table else defaults.max_vmpl
    if max_vmpl > _MAX_VMPL:
        raise pv.Invalid("snp.max_vmpl", f"a VMPL is 0 to {_MAX_VMPL}")
    ref = SnpReference(
        measurement=_non_empty_hexes("snp.measurement", table["measurement"], _SNP_MEASUREMENT_BYTES)
        if "measurement" in table
        else (),
        host_data=_non_empty_hexes("snp.host_data", table["host_data"], _SNP_HOST_DATA_BYTES)
        if "host_data" in table
        else (),
        min_tcb=min_tcb,
        allow_smt=flag("allow_smt"),
        allow_migration_agent=flag("allow_migration_agent"),
        require_single_socket=flag("require_single_socket"),
        require_crl=flag("require_crl"),
        max_vmpl=max_vmpl,
    )
    return _with_binding("snp", table, ref, SNP_IDENTITY_PINS)


def policy_from_mapping(
    data: Mapping[str, object], *, source: str, default_id: str, digest: str | None = None
) -> AppraisalPolicy:
    """Build a policy from parsed TOML (or any mapping of the same shape); errors name ``source``."""
    with pv.errors_from(source):
        _check_keys("", data, _TOP_KEYS)
        fields: dict[str, object] = {"id": pv.policy_id("id", data["id"]) if "id" in data else default_id}
        if "accepted_tcb_statuses" in data:
            fields["accepted_tcb_statuses"] = pv.tcb_statuses(
                "accepted_tcb_statuses", data["accepted_tcb_statuses"]
            )
        if "accepted_advisory_ids" in data:
            fields["accepted_advisory_ids"] = pv.advisories(
                "accepted_advisory_ids", data["accepted_advisory_ids"]
            )
        for name in ("allow_debug", "allow_simulation"):
            if name in data:
                fields[name] = pv.flag(name, data[name])
        if "max_collateral_age" in data:
            fields["max_collateral_age"] = pv.duration("max_collateral_age", data["max_collateral_age"])
        if "min_tcb_evaluation_data_number" in data:
            fields["min_tcb_evaluation_data_number"] = pv.uint(
                "min_tcb_evaluation_data_number", data["min_tcb_evaluation_data_number"], 32
            )
        if "report_data" in data:
            fields["report_data"] = bytes.fromhex(
                pv.hex_text("report_data", data["report_data"], _REPORT_DATA_BYTES, exact=False)
            )
        if "sgx" in data:
            fields["sgx"] = _parse_sgx(_table("sgx", data["sgx"]))
        if "tdx" in data:
            fields["tdx"] = _parse_tdx(_table("tdx", data["tdx"]))
        if "snp" in data:
            fields["snp"] = _parse_snp(_table("snp", data["snp"]))
        return AppraisalPolicy(digest=digest, **fields)  # type: ignore[arg-type]


def parse_policy(
    text: str | bytes, *, source: str = "<policy>", default_id: str = DEFAULT_POLICY_ID
) -> AppraisalPolicy:
    """Parse policy TOML. Every malformed input is a ConfigError naming ``source``; nothing else escapes."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigError(
            f"{source}: {len(raw)} bytes is too large for a policy file (limit {MAX_POLICY_BYTES})"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {error.start})", hint="a policy is a TOML text file"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"{source}: not valid TOML: {error}", hint="see docs/policy.md for an example"
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: nested too deeply") from None
    return policy_from_mapping(
        data, source=source, default_id=default_id, digest=hashlib.sha256(raw).hexdigest()
    )


def load_policy(path: str | Path) -> AppraisalPolicy:
    """Load a policy file. Its ``id`` defaults to the file name without extension."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"policy file not found: {path}", hint="check the path given to --policy") from None
    except OSError as error:
        raise ConfigError(f"cannot read policy file {path}: {error.strerror or error}") from None
    default_id = path.stem if pv.POLICY_ID.fullmatch(path.stem) else "policy"
    return parse_policy(raw, source=str(path), default_id=default_id)
