"""The appraisal policy file: every key, every malformed shape, and fuzzing that only ConfigError escapes."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import ConfigError
from teelab.gateway.policy import (
    DEFAULT_POLICY_ID,
    AppraisalPolicy,
    SgxReference,
    SnpMinTcb,
    SnpReference,
    TdxReference,
    load_policy,
    parse_policy,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="p.toml")
    return caught.value.message


def test_empty_file_is_the_default_policy() -> None:
    policy = parse_policy("", default_id=DEFAULT_POLICY_ID)
    assert policy.accepted_tcb_statuses == ("UpToDate",)
    assert policy.accepted_advisory_ids == ()
    assert policy.allow_debug is False
    assert policy.allow_simulation is False
    assert policy.max_collateral_age == timedelta(days=30)  # the safe default (docs/policy.md)
    assert policy.min_tcb_evaluation_data_number == 17
    assert policy.report_data is None
    assert policy.sgx is policy.tdx is policy.snp is None
    assert policy.pinned_tees == ()
    assert policy.id == DEFAULT_POLICY_ID
    assert AppraisalPolicy().id == DEFAULT_POLICY_ID
    # The file's digest names the exact policy text a result was judged by.
    assert policy.digest is not None and len(policy.digest) == 64


def test_the_documented_example_parses_to_what_the_docs_say() -> None:
    block = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    policy = parse_policy(block.group(1), source="docs/policy.md")
    assert policy.id == "prod-kernels-2025-07"
    assert policy.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert policy.accepted_advisory_ids == ("INTEL-SA-00615",)
    assert policy.max_collateral_age == timedelta(days=7)
    assert policy.min_tcb_evaluation_data_number == 18
    assert policy.sgx == SgxReference(
        mrenclave=(MRENCLAVE,), mrsigner=(policy.sgx.mrsigner[0],), isv_prod_id=0, min_isv_svn=0
    )  # type: ignore[union-attr]
    assert policy.tdx is not None and policy.tdx.mrtd == (MRTD,) and policy.tdx.rtmr3 == ()
    assert policy.snp is not None
    assert policy.snp.min_tcb == SnpMinTcb(bootloader=3, tee=0, snp=8, microcode=115)
    assert policy.snp.allow_migration_agent is False
    assert policy.snp.require_crl is True and policy.snp.max_vmpl == 0
    assert policy.pinned_tees == ("sgx", "tdx", "sev-snp")


def test_every_documented_key_is_accepted() -> None:
    text = f"""
id = "all-keys"
accepted_tcb_statuses = ["uptodate", "OutOfDate", "swhardeningneeded"]
accepted_advisory_ids = ["intel-sa-00615", "INTEL-SA-00289"]
allow_debug = true
allow_simulation = true
max_collateral_age = 3600
min_tcb_evaluation_data_number = 19
report_data = "0x0102"
[sgx]
mrenclave = ["0X{MRENCLAVE.upper()}"]
mrsigner = ["{MRENCLAVE}"]
isv_prod_id = 65535
min_isv_svn = 3
controller_binding = "measurement"
[tdx]
mrtd = ["{MRTD}"]
rtmr0 = ["{MRTD}"]
rtmr1 = ["{MRTD}"]
rtmr2 = ["{MRTD}"]
rtmr3 = ["{MRTD}"]
mrconfigid = ["{MRTD}"]
controller_binding = "measurement"
[snp]
measurement = ["{MRTD}"]
host_data = ["{MRENCLAVE}"]
min_tcb = {{ bootloader = 1, tee = 2, snp = 3, microcode = 4, fmc = 255 }}
allow_smt = false
allow_migration_agent = false
require_single_socket = true
require_crl = false
max_vmpl = 2
controller_binding = "measurement"
"""
    policy = parse_policy(text)
    assert policy.min_tcb_evaluation_data_number == 19
    assert policy.snp is not None and (policy.snp.require_crl, policy.snp.max_vmpl) == (False, 2)
    assert {ref.controller_binding for ref in (policy.sgx, policy.tdx, policy.snp) if ref} == {"measurement"}
    # Names are canonicalised, hex lower-cased, so comparisons never depend on how a value was typed.
    assert policy.accepted_tcb_statuses == ("UpToDate", "OutOfDate", "SWHardeningNeeded")
    assert policy.accepted_advisory_ids == ("INTEL-SA-00615", "INTEL-SA-00289")
    assert policy.report_data == b"\x01\x02"
    assert policy.max_collateral_age == timedelta(hours=1)
    assert policy.sgx is not None and policy.sgx.mrenclave == (MRENCLAVE,)
    assert policy.sgx.isv_prod_id == 65535 and policy.sgx.min_isv_svn == 3
    assert policy.tdx is not None and policy.tdx.mrconfigid == (MRTD,)
    assert policy.snp == SnpReference(
        measurement=(MRTD,),
        host_data=(MRENCLAVE,),
        min_tcb=SnpMinTcb(1, 2, 3, 4, 255),
        allow_smt=False,
        allow_migration_agent=False,
        require_single_socket=True,
        require_crl=False,
        max_vmpl=2,
        controller_binding="measurement",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('max_collateral_age = "30d"', timedelta(days=30)),
        ('max_collateral_age = "12h"', timedelta(hours=12)),
        ('max_collateral_age = "1d12h"', timedelta(hours=36)),
        ('max_collateral_age = "90m"', timedelta(minutes=90)),
        ('max_collateral_age = "2w"', timedelta(days=14)),
        ('max_collateral_age = "45s"', timedelta(seconds=45)),
        ("max_collateral_age = 86400", timedelta(days=1)),
    ],
)
def test_collateral_age_durations(text: str, expected: timedelta) -> None:
    assert parse_policy(text).max_collateral_age == expected


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("alow_debug = true", "alow_debug", "did you mean 'allow_debug'"),
        ("[sgx]\nmrenclaves = []", "sgx.mrenclaves", "did you mean 'mrenclave'"),
        ("[snp]\nmin_tcb = { microcod = 1 }", "snp.min_tcb.microcod", "did you mean 'microcode'"),
        ("[tdx]\nrtmr4 = []", "tdx.rtmr4", "unknown key"),
        ("[policy]\nallow_debug = true", "policy", "unknown key"),
        ("allow_debug = 1", "allow_debug", "expected true or false, got 1"),
        ('allow_simulation = "false"', "allow_simulation", "expected true or false"),
        ('accepted_tcb_statuses = "UpToDate"', "accepted_tcb_statuses", "expected a list"),
        ("accepted_tcb_statuses = []", "accepted_tcb_statuses", "empty list"),
        ('accepted_tcb_statuses = ["UpToDat"]', "accepted_tcb_statuses", "did you mean 'UpToDate'"),
        ('accepted_tcb_statuses = ["Revoked"]', "accepted_tcb_statuses", "cannot be accepted"),
        ('accepted_tcb_statuses = ["TcbLevelNotFound"]', "accepted_tcb_statuses", "TCB not supported"),
        ("accepted_tcb_statuses = [1]", "accepted_tcb_statuses", "is not a TCB status"),
        ('accepted_advisory_ids = ["*", "INTEL-SA-1"]', "accepted_advisory_ids", "must be the only entry"),
        ('accepted_advisory_ids = ["bad id"]', "accepted_advisory_ids", "not an advisory id"),
        ("accepted_advisory_ids = [7]", "accepted_advisory_ids", "expected advisory id strings"),
        ('max_collateral_age = "30 days"', "max_collateral_age", "duration like"),
        ("max_collateral_age = 0", "max_collateral_age", "longer than zero"),
        ("max_collateral_age = -5", "max_collateral_age", "longer than zero"),
        ("max_collateral_age = 1.5", "max_collateral_age", "got 1.5"),
        ("max_collateral_age = true", "max_collateral_age", "got true"),
        ("max_collateral_age = 99999999999999999", "max_collateral_age", "at most 3650 days"),
        ('report_data = "xyz"', "report_data", "is not hex"),
        ('report_data = "abc"', "report_data", "is not hex"),
        ('report_data = ""', "report_data", "expected 1 to 64 bytes"),
        (f'report_data = "{"00" * 65}"', "report_data", "expected 1 to 64 bytes"),
        ("id = 5", "id", "expected a name"),
        ('id = ""', "id", "expected a name"),
        ('id = "has space"', "id", "expected a name"),
        ("sgx = 1", "sgx", "expected a table"),
        ('[sgx]\nmrenclave = "33d8"', "sgx.mrenclave", "expected a list"),
        ('[sgx]\nmrenclave = ["33d8"]', "sgx.mrenclave", "is 2 bytes; this value is 32 bytes"),
        ("[sgx]\nmrenclave = []", "sgx.mrenclave", "empty list allows nothing"),
        ("[sgx]\nmrenclave = [[]]", "sgx.mrenclave", "expected a hex string"),
        (f'[sgx]\nmrsigner = ["{MRTD}"]', "sgx.mrsigner", "is 48 bytes"),
        ("[sgx]\nisv_prod_id = 65536", "sgx.isv_prod_id", "out of range"),
        ("[sgx]\nisv_prod_id = -1", "sgx.isv_prod_id", "out of range"),
        ("[sgx]\nisv_prod_id = true", "sgx.isv_prod_id", "expected an integer"),
        ('[sgx]\nmin_isv_svn = "1"', "sgx.min_isv_svn", "expected an integer"),
        (f'[tdx]\nmrtd = ["{MRENCLAVE}"]', "tdx.mrtd", "is 32 bytes; this value is 48 bytes"),
        (f'[snp]\nhost_data = ["{MRTD}"]', "snp.host_data", "is 48 bytes"),
        ("[snp]\nmin_tcb = 5", "snp.min_tcb", "expected a table"),
        ("[snp]\nmin_tcb = {}", "snp.min_tcb", "sets no minimum"),
        ("[snp]\nmin_tcb = { tee = 256 }", "snp.min_tcb.tee", "out of range"),
        ('[snp]\nallow_smt = "no"', "snp.allow_smt", "expected true or false"),
    ],
)
def test_malformed_keys_name_the_file_the_key_and_the_problem(text: str, key: str, problem: str) -> None:
    message = _error(text)
    assert message.startswith(f"p.toml: key '{key}':"), message
    assert problem in message, message


def test_invalid_toml_and_bytes_are_config_errors() -> None:
    assert "not valid TOML" in _error("allow_debug = ")
    assert "not valid TOML" in _error("a = 1\na = 2")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_policy(b"\xff\xfe", source="p.toml")
    with pytest.raises(ConfigError, match="too large"):
        parse_policy(b"#" * (1 << 21), source="p.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_policy("x = " + "[" * 50000 + "]" * 50000, source="p.toml")


def test_load_policy_from_file(tmp_path: Path) -> None:
    path = tmp_path / "prod.toml"
    path.write_text("allow_debug = false\n[tdx]\n")
    policy = load_policy(path)
    assert policy.id == "prod"  # the file name, when the file sets no id
    assert policy.pinned_tees == ("tdx",)
    assert policy.tdx == TdxReference()
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_policy(tmp_path)
    (tmp_path / "bad.toml").write_text("allow_debug = yes")
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path / "bad.toml")
    assert str(tmp_path / "bad.toml") in caught.value.message
    assert caught.value.exit_code == 2


def test_policies_built_in_code_are_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"sgx\.mrenclave.*is not hex"):
        SgxReference(mrenclave=("zz",))
    with pytest.raises(ConfigError, match="accepted_tcb_statuses"):
        AppraisalPolicy(accepted_tcb_statuses=("Fine",))
    with pytest.raises(ConfigError, match="report_data"):
        AppraisalPolicy(report_data=b"")
    with pytest.raises(ConfigError, match=r"snp\.min_tcb\.fmc"):
        SnpMinTcb(fmc=300)
    with pytest.raises(ConfigError, match="max_collateral_age"):
        AppraisalPolicy(max_collateral_age=timedelta(0))
    assert SgxReference(mrenclave=(MRENCLAVE.upper(),)).mrenclave == (MRENCLAVE,)


def test_command_line_overrides_are_visible_in_the_id() -> None:
    policy = AppraisalPolicy(id="prod")
    assert policy.with_overrides() is policy
    loosened = policy.with_overrides(allow_debug=True, allow_simulation=True)
    assert loosened.id == "prod+allow-debug+allow-simulation"
    assert loosened.allow_debug and loosened.allow_simulation
    # Overriding what the policy already allows changes nothing.
    assert AppraisalPolicy(id="dev", allow_debug=True).with_overrides(allow_debug=True).id == "dev"
    assert AppraisalPolicy(id="x" * 160).with_overrides(allow_debug=True).id.endswith("+allow-debug")


_KEYS = st.sampled_from(
    [
        "id",
        "allow_debug",
        "allow_simulation",
        "accepted_tcb_statuses",
        "accepted_advisory_ids",
        "max_collateral_age",
        "report_data",
        "sgx",
        "tdx",
        "snp",
        "mrenclave",
        "min_tcb",
        "fmc",
        "x",
    ]
)
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["UpToDate", "Revoked", "*", "30d", MRENCLAVE, MRTD, "0x00"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + "}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_fuzz_structured_policies_only_raise_config_error(document: dict[str, object]) -> None:
    text = "\n".join(f"{key} = {_toml_value(value)}" for key, value in document.items())
    try:
        policy = parse_policy(text, source="fuzz.toml")
    except ConfigError as error:
        assert error.message.startswith("fuzz.toml: ")
    else:
        assert isinstance(policy, AppraisalPolicy)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_fuzz_arbitrary_input_only_raises_config_error(data: bytes | str) -> None:
    try:
        parse_policy(data, source="fuzz.toml")
    except ConfigError:
        pass


def test_snp_require_crl_is_read_and_checked() -> None:
    assert parse_policy("[snp]\nrequire_crl = true\n").snp.require_crl is True  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="require_crl"):
        parse_policy('[snp]\nrequire_crl = "yes"\n')
