"""Sealing: inputs (DataFrame, Arrow, CSV, Parquet file and folder), layout, and what reaches the disk."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest

from teelab.sealed_store.errors import (
    InvalidNameError,
    KeyMismatchError,
    ManifestError,
    PartMissingError,
    PartSizeError,
    SealInputError,
    SealOutputError,
)
from teelab.sealed_store.format import FORMAT, aad_prefix, part_key
from teelab.sealed_store.manifest import parse_manifest
from teelab.sealed_store.seal import SealedDataset, plan_layout, seal_dataset


def _decrypt_part(folder: Path, dek: bytes, name: str, version: int, k: int, n: int) -> pq.ParquetFile:
    prefix = aad_prefix(name, version, k, n)
    props = pe.create_decryption_properties(part_key(dek, prefix), aad_prefix=prefix.encode())
    return pq.ParquetFile(folder / f"part-{k:05d}.parquet", decryption_properties=props)


def test_dataframe_round_trip_keeps_every_dtype(published, frame_factory) -> None:
    back = published.read()
    expected = frame_factory()
    pd.testing.assert_frame_equal(back, expected)
    assert back.dtypes.to_dict() == expected.dtypes.to_dict()


def test_sealed_read_equals_pandas_read_of_the_plain_parquet(published, tmp_path) -> None:
    """What the reader returns is exactly what ``pd.read_parquet`` gives for the same unencrypted data."""
    plain = tmp_path / "plain.parquet"
    published.frame.to_parquet(plain)
    pd.testing.assert_frame_equal(published.read(), pd.read_parquet(plain))


def test_custom_index_survives(publisher, frame_factory) -> None:
    frame = frame_factory(1200).set_index("name")
    published = publisher(frame)
    pd.testing.assert_frame_equal(published.read(), frame)
    # A projection still brings the index along, as pd.read_parquet does.
    assert published.read(columns=["id"]).index.equals(frame.index)


def test_dataframe_attrs_survive(publisher, frame_factory) -> None:
    frame = frame_factory(100)
    frame.attrs = {"source": "clinic-7", "units": {"amount": "CHF"}}
    assert publisher(frame).read().attrs == frame.attrs


def test_arrow_table_input(publisher) -> None:
    table = pa.table({"k": pa.array(range(2500), pa.int16()), "v": pa.array([b"\x00\xff"] * 2500)})
    published = publisher(table)
    assert published.read().equals(table.to_pandas())


def test_csv_input_streams_and_round_trips(publisher, tmp_path, frame_factory) -> None:
    frame = frame_factory(2600).drop(columns=["seen_tz"])
    path = tmp_path / "input.csv"
    frame.to_csv(path, index=False)
    published = publisher(str(path))
    # Compared with the same CSV read by pyarrow and stored as plain Parquet (which keeps no seconds unit).
    plain = tmp_path / "plain.parquet"
    pq.write_table(pacsv.read_csv(path), plain)
    pd.testing.assert_frame_equal(published.read(), pd.read_parquet(plain))
    assert len(published.sealed.dataset.manifest.parts) == 3


def test_gzipped_csv_and_tsv_inputs(publisher, tmp_path) -> None:
    path = tmp_path / "input.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("a,b\n" + "".join(f"{i},x{i}\n" for i in range(1500)))
    published = publisher(path, name="gz")
    assert len(published.sealed.dataset.manifest.parts) == 2
    assert published.read()["b"].iloc[-1] == "x1499"
    tsv = tmp_path / "input.tsv"
    tsv.write_text("a\tb\n1\tx,y\n")
    assert publisher(tsv, name="tsv").read().to_dict("list") == {"a": [1], "b": ["x,y"]}


def test_csv_input_with_explicit_types(sealer, tmp_path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("code\n" + "".join(f"{i:05d}\n" for i in range(10)))
    sealed = sealer(path, csv_convert_options=pacsv.ConvertOptions(column_types={"code": pa.string()}))
    part = _decrypt_part(sealed.dataset.folder, sealed.dek, "sales", 1, 1, 1)
    assert part.read().column("code").to_pylist()[:2] == ["00000", "00001"]


def test_csv_with_a_bad_value_after_the_first_block_is_an_input_error(sealer, tmp_path) -> None:
    path = tmp_path / "late.csv"
    pad = "p" * 120
    rows = "".join(f"{i},{pad}\n" for i in range(80_000))  # > one 8 MiB block: inference sees only ints
    path.write_text("n,pad\n" + rows + f"not-a-number,{pad}\n")
    with pytest.raises(SealInputError, match=r"late\.csv"):
        sealer(path, part_rows=None, row_group_rows=None)
    assert not any((tmp_path).glob("sealed-*/part-*.parquet")), "a failed seal leaves no parts behind"


def test_parquet_file_and_folder_inputs(publisher, sealer, tmp_path, frame_factory) -> None:
    frame = frame_factory(2200)
    path = tmp_path / "input.parquet"
    frame.to_parquet(path, row_group_size=300)
    pd.testing.assert_frame_equal(publisher(str(path), name="from-file").read(), frame)

    folder = tmp_path / "input-folder"
    folder.mkdir()
    frame.iloc[:1000].to_parquet(folder / "a.parquet", index=False)
    frame.iloc[1000:].to_parquet(folder / "b.parquet", index=False)
    back = publisher(folder, name="from-folder").read()
    pd.testing.assert_frame_equal(back, frame.reset_index(drop=True))


def test_empty_table_seals_to_one_part_with_the_schema(publisher) -> None:
    frame = pd.DataFrame({"a": pd.Series([], dtype="int64"), "b": pd.Series([], dtype="str")})
    published = publisher(frame)
    assert len(published.sealed.dataset.manifest.parts) == 1
    back = published.read()
    assert list(back.columns) == ["a", "b"] and len(back) == 0


def test_layout_follows_part_and_row_group_sizes(sealer, frame_factory) -> None:
    frame = frame_factory(10_000)
    sealed = sealer(frame, part_rows=None, row_group_rows=None, part_size=400_000, row_group_size=100_000)
    manifest = sealed.dataset.manifest
    n = len(manifest.parts)
    per_row = pa.Table.from_pandas(frame).nbytes / len(frame)
    layout = plan_layout(num_rows=10_000, bytes_per_row=per_row, part_size=400_000, row_group_size=100_000)
    assert n == layout.parts > 1
    metadata = _decrypt_part(sealed.dataset.folder, sealed.dek, "sales", 1, 1, n).metadata
    assert metadata.num_rows == layout.part_rows
    assert {metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)} == {layout.row_group_rows}


def test_plan_layout_bounds() -> None:
    layout = plan_layout(num_rows=10**9, bytes_per_row=100.0)
    assert 1024 <= layout.row_group_rows <= 1024 * 1024
    assert layout.part_rows % layout.row_group_rows == 0
    assert plan_layout(num_rows=0, bytes_per_row=1.0).parts == 1
    with pytest.raises(SealInputError, match="32767"):
        plan_layout(num_rows=10**6, bytes_per_row=8.0, part_rows=10**6, row_group_rows=1)
    with pytest.raises(SealInputError, match="parts exceed"):
        plan_layout(num_rows=10**6, bytes_per_row=8.0, part_rows=1)


def test_each_part_is_pme_gcm_with_encrypted_footer_and_a_withheld_identity(published, tmp_path) -> None:
    folder = published.sealed.dataset.folder
    n = len(published.sealed.dataset.manifest.parts)
    for k in range(1, n + 1):
        raw = (folder / f"part-{k:05d}.parquet").read_bytes()
        assert raw[:4] == raw[-4:] == b"PARE"  # encrypted footer mode
        assert aad_prefix("sales", 1, k, n).encode() not in raw  # store_aad_prefix=False
        _decrypt_part(folder, published.sealed.dek, "sales", 1, k, n).read()
    with pytest.raises(OSError, match="AAD prefix"):  # pyarrow needs the withheld identity to open it
        props = pe.create_decryption_properties(part_key(published.sealed.dek, aad_prefix("sales", 1, 1, n)))
        pq.read_table(folder / "part-00001.parquet", decryption_properties=props)


def test_nothing_about_the_schema_or_the_key_is_in_the_clear(sealer, tmp_path) -> None:
    frame = pd.DataFrame({"patient_diagnosis_code": ["J45.909"] * 3000, "zz_secret_col": np.arange(3000)})
    sealed = sealer(frame)
    for path in sealed.dataset.folder.iterdir():
        raw = path.read_bytes()
        for needle in (b"patient_diagnosis_code", b"zz_secret_col", b"J45.909", b"int64", sealed.dek):
            assert needle not in raw, f"{needle!r} in {path.name}"
        assert sealed.dek.hex().encode() not in raw


def test_manifest_fields_and_canonical_form(published) -> None:
    sealed = published.sealed.dataset
    raw = sealed.manifest_path.read_bytes()
    document = json.loads(raw)
    assert set(document) == {
        "format",
        "dataset",
        "version",
        "created_at",
        "parts",
        "key",
        "commitment",
        "mac",
        "schema",  # the Arrow schema, encrypted (sealed_schema.py)
    }
    assert document["format"] == FORMAT
    assert document["key"] == {"kbs": "kbs:sales/1"}
    assert [p["name"] for p in document["parts"]] == [
        "part-00001.parquet",
        "part-00002.parquet",
        "part-00003.parquet",
    ]
    assert all("rows" not in p for p in document["parts"]), "row counts are not disclosed by default"
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert parse_manifest(raw).sha256 == sealed.manifest_sha256


def test_the_manifest_holds_the_parts_schema_encrypted(published) -> None:
    sealed = published.sealed.dataset
    manifest = sealed.manifest
    schema = manifest.arrow_schema(published.sealed.dek)
    assert schema is not None and schema.names == [*published.frame.columns]
    assert schema.pandas_metadata is not None  # the index and dtypes pd.read_parquet restores
    n = len(manifest.parts)
    for k in range(1, n + 1):
        physical = _decrypt_part(sealed.folder, published.sealed.dek, "sales", 1, k, n).schema_arrow
        assert physical.equals(schema, check_metadata=True)


def test_a_schema_too_large_for_the_manifest_is_left_to_the_footers(
    sealer, frame_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from teelab.sealed_store import sealed_schema

    monkeypatch.setattr(sealed_schema, "MAX_SCHEMA_BYTES", 64)
    sealed = sealer(frame_factory(100))
    assert sealed.dataset.manifest.encrypted_schema is None
    assert "schema" not in json.loads(sealed.dataset.manifest_path.read_bytes())
    assert sealed.dataset.manifest.arrow_schema(sealed.dek) is None


def test_record_rows_discloses_row_counts(sealer, frame_factory) -> None:
    sealed = sealer(frame_factory(2500), record_rows=True)
    assert [p.rows for p in sealed.dataset.manifest.parts] == [1000, 1000, 500]


def test_every_version_gets_a_fresh_key_unless_one_is_given(sealer, frame_factory) -> None:
    frame = frame_factory(100)
    first, second = sealer(frame), sealer(frame)
    assert first.dek != second.dek and len(first.dek) == 32
    given = bytes(range(32))
    assert sealer(frame, dek=given).dek == given
    with pytest.raises(KeyMismatchError):
        sealer(frame, dek=b"short")
    assert "dek=<32 bytes, hidden>" in repr(first) and given.hex() not in repr(sealer(frame, dek=given))


def test_names_versions_and_options_are_checked(sealer, frame_factory, tmp_path) -> None:
    frame = frame_factory(10)
    for bad_name in ("", ".hidden", "a/b", "x" * 129, "naïve", "-x"):
        with pytest.raises(InvalidNameError):
            sealer(frame, name=bad_name)
    for bad_version in (0, -1, True, 1.0):
        with pytest.raises(InvalidNameError):
            sealer(frame, version=bad_version)
    with pytest.raises(SealInputError, match="compression"):
        sealer(frame, compression="lzo")
    with pytest.raises(SealInputError, match="does not exist"):
        sealer(tmp_path / "nope.csv")
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(SealInputError, match="cannot tell the format"):
        sealer(tmp_path / "data.bin")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SealInputError, match=r"broken\.parquet"):
        sealer(tmp_path / "broken.parquet")


def test_output_folder_must_be_new_or_empty(frame_factory, tmp_path) -> None:
    out = tmp_path / "out"
    seal_dataset(frame_factory(10), name="a", version=1, out=out, progress=False)
    with pytest.raises(SealOutputError, match="not empty"):
        seal_dataset(frame_factory(10), name="a", version=1, out=out, progress=False)


def test_progress_callback_counts_rows(sealer, frame_factory) -> None:
    seen: list[tuple[int, int]] = []
    sealer(frame_factory(2500), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (2500, 2500)


def test_sealed_folder_open_checks_parts(published) -> None:
    folder = published.sealed.dataset.folder
    assert SealedDataset.open(folder).manifest == published.sealed.dataset.manifest
    (folder / "part-00002.parquet").write_bytes(b"short")
    with pytest.raises(PartSizeError, match="part-00002"):
        SealedDataset.open(folder)
    (folder / "part-00002.parquet").unlink()
    with pytest.raises(PartMissingError, match="part-00002"):
        SealedDataset.open(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        SealedDataset.open(folder)


def test_seal_input_errors_name_the_input(tmp_path: Path, sealer: Callable[..., object]) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(SealInputError, match=r"ragged\.csv"):
        sealer(path)
