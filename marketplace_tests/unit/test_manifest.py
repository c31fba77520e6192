"""SHA-256 manifests: an export verifies only if every file matches the manifest written last."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from marketplace.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    build_manifest,
    read_manifest,
    verify_export,
    write_manifest,
)

IDENTITY = {
    "workspace": "dev01",
    "model_name": "churn",
    "version": 3,
    "run_id": "0123456789abcdef",
    "source": "models:/churn/3",
    "export_date": "2026-11-02",
    "exported_at": "2026-11-02T03:04:05+00:00",
}

FILES = {
    "MLmodel": b"flavors:\n  python_function: {}\n",
    "model.pkl": bytes(range(256)) * 8,
    "requirements.txt": b"scikit-learn==1.5.0\n",
    "artifacts/data/weights.bin": b"\x00\x01\x02\x03" * 100,
    "artifacts/empty.txt": b"",
}


def make_files(root: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def make_export(root: Path, files: dict[str, bytes] = FILES, **identity) -> str:
    """Files, then the manifest last, as an export does; returns the manifest checksum."""
    root.mkdir(parents=True, exist_ok=True)
    make_files(root, files)
    return write_manifest(root, build_manifest(root, **{**IDENTITY, **identity}))


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_build_manifest_records_every_file_with_hash_and_size(tmp_path):
    make_files(tmp_path, FILES)

    manifest = build_manifest(tmp_path, **IDENTITY)

    assert set(manifest.files) == set(FILES)
    for relative, content in FILES.items():
        assert manifest.files[relative] == {
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
        }
    assert manifest.size_bytes == sum(len(content) for content in FILES.values())
    assert (manifest.workspace, manifest.model_name, manifest.version) == ("dev01", "churn", 3)


def test_write_manifest_returns_the_sha256_of_the_file_it_wrote(tmp_path):
    checksum = make_export(tmp_path)

    assert checksum == hashlib.sha256((tmp_path / MANIFEST_NAME).read_bytes()).hexdigest()
    assert not (tmp_path / f".{MANIFEST_NAME}.tmp").exists()


def test_read_manifest_returns_what_was_written_and_its_checksum(tmp_path):
    make_files(tmp_path, FILES)
    written = build_manifest(tmp_path, **IDENTITY)
    checksum = write_manifest(tmp_path, written)

    manifest, read_checksum = read_manifest(tmp_path)

    assert manifest == written
    assert read_checksum == checksum


def test_the_manifest_does_not_list_itself(tmp_path):
    make_export(tmp_path)

    rebuilt = build_manifest(tmp_path, **IDENTITY)

    assert MANIFEST_NAME not in rebuilt.files
    assert set(rebuilt.files) == set(FILES)


def test_fresh_export_verifies(tmp_path):
    checksum = make_export(tmp_path)

    assert verify_export(tmp_path).files.keys() == FILES.keys()
    assert verify_export(tmp_path, expected_checksum=checksum).version == 3
    assert verify_export(tmp_path, expected_checksum=checksum, full=False).model_name == "churn"


def test_changed_file_of_the_same_size_is_refused_with_full_verification(tmp_path):
    make_export(tmp_path)
    target = tmp_path / "model.pkl"
    size = target.stat().st_size
    flip_one_byte(target)
    assert target.stat().st_size == size

    with pytest.raises(ManifestError, match="changed: model.pkl"):
        verify_export(tmp_path, full=True)


def test_changed_file_of_the_same_size_passes_the_size_only_check(tmp_path):
    make_export(tmp_path)
    flip_one_byte(tmp_path / "model.pkl")

    manifest = verify_export(tmp_path, full=False)

    assert "model.pkl" in manifest.files


def test_truncated_file_is_refused_even_by_the_size_only_check(tmp_path):
    make_export(tmp_path)
    target = tmp_path / "artifacts" / "data" / "weights.bin"
    target.write_bytes(target.read_bytes()[:-1])

    with pytest.raises(ManifestError, match="changed: artifacts/data/weights.bin"):
        verify_export(tmp_path, full=False)
    with pytest.raises(ManifestError, match="changed: artifacts/data/weights.bin"):
        verify_export(tmp_path, full=True)


def test_added_file_is_refused_naming_it(tmp_path):
    make_export(tmp_path)
    (tmp_path / "artifacts" / "extra.txt").write_text("not in the manifest")

    with pytest.raises(ManifestError, match="added: artifacts/extra.txt"):
        verify_export(tmp_path, full=False)


def test_removed_file_is_refused_naming_it(tmp_path):
    make_export(tmp_path)
    (tmp_path / "requirements.txt").unlink()

    with pytest.raises(ManifestError, match="missing: requirements.txt"):
        verify_export(tmp_path, full=False)


def test_removed_empty_file_is_refused(tmp_path):
    make_export(tmp_path)
    (tmp_path / "artifacts" / "empty.txt").unlink()

    with pytest.raises(ManifestError, match="missing: artifacts/empty.txt"):
        verify_export(tmp_path)


def test_every_kind_of_difference_is_reported_together(tmp_path):
    make_export(tmp_path)
    (tmp_path / "requirements.txt").unlink()
    (tmp_path / "new.bin").write_bytes(b"x")
    flip_one_byte(tmp_path / "MLmodel")

    with pytest.raises(ManifestError) as info:
        verify_export(tmp_path)

    message = str(info.value)
    assert str(tmp_path) in message
    assert "missing: requirements.txt" in message
    assert "added: new.bin" in message
    assert "changed: MLmodel" in message


def test_deleted_manifest_means_an_incomplete_export(tmp_path):
    make_export(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()

    with pytest.raises(ManifestError, match="incomplete"):
        verify_export(tmp_path, full=False)
    with pytest.raises(ManifestError, match="incomplete"):
        read_manifest(tmp_path)


def test_missing_export_folder_means_an_incomplete_export(tmp_path):
    with pytest.raises(ManifestError, match="incomplete"):
        verify_export(tmp_path / "never-written")


def test_edited_manifest_is_refused_when_the_checksum_is_expected(tmp_path):
    checksum = make_export(tmp_path)
    path = tmp_path / MANIFEST_NAME
    document = json.loads(path.read_text(encoding="utf-8"))
    document["version"] = 4
    path.write_text(json.dumps(document, indent=1, sort_keys=True), encoding="utf-8")

    with pytest.raises(ManifestError, match="edited or replaced"):
        verify_export(tmp_path, expected_checksum=checksum)
    with pytest.raises(ManifestError, match="edited or replaced"):
        verify_export(tmp_path, expected_checksum=checksum, full=False)
    # Without a recorded checksum the files still match the (edited) manifest.
    assert verify_export(tmp_path).version == 4


def test_manifest_rewritten_to_match_a_changed_file_is_refused_by_its_checksum(tmp_path):
    checksum = make_export(tmp_path)
    flip_one_byte(tmp_path / "model.pkl")
    write_manifest(tmp_path, build_manifest(tmp_path, **IDENTITY))

    with pytest.raises(ManifestError, match="edited or replaced"):
        verify_export(tmp_path, expected_checksum=checksum)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b"null", json.dumps({"workspace": "dev01"}).encode(), b"\xff\xfe"],
)
def test_unreadable_manifest_is_refused(tmp_path, content):
    make_export(tmp_path)
    (tmp_path / MANIFEST_NAME).write_bytes(content)

    with pytest.raises(ManifestError, match="unreadable manifest"):
        verify_export(tmp_path)


@pytest.mark.parametrize(
    "files",
    [
        ["model.pkl"],
        {"model.pkl": {}},
        {"model.pkl": {"sha256": "ab"}},
        {"model.pkl": {"size": 1}},
        {"model.pkl": None},
    ],
)
def test_manifest_with_malformed_file_entries_is_refused(tmp_path, files):
    make_export(tmp_path)
    path = tmp_path / MANIFEST_NAME
    document = json.loads(path.read_text(encoding="utf-8"))
    document["files"] = files
    path.write_text(json.dumps(document), encoding="utf-8")

    with pytest.raises(ManifestError, match="unreadable manifest"):
        verify_export(tmp_path, full=False)


def test_nested_folders_and_unicode_names_with_spaces_verify(tmp_path):
    files = {
        "deep/a/b/c/d/leaf.bin": b"leaf",
        "données/modèle final.pkl": "poids ünïcødé".encode(),
        "日本語/モデル.txt": "テキスト".encode(),
        "with space/file name with spaces.txt": b"spaces",
        "deep/manifest.json": b"a nested file called manifest.json is an ordinary file",
    }
    checksum = make_export(tmp_path, files)

    manifest = verify_export(tmp_path, expected_checksum=checksum)

    assert set(manifest.files) == set(files)
    reread, _ = read_manifest(tmp_path)
    assert reread.files == manifest.files

    flip_one_byte(tmp_path / "données" / "modèle final.pkl")
    with pytest.raises(ManifestError, match="changed: données/modèle final.pkl"):
        verify_export(tmp_path)


def test_removed_nested_unicode_file_is_named(tmp_path):
    make_export(tmp_path, {"日本語/モデル.txt": b"x", "keep.txt": b"y"})
    (tmp_path / "日本語" / "モデル.txt").unlink()

    with pytest.raises(ManifestError, match="missing: 日本語/モデル.txt"):
        verify_export(tmp_path)


def test_manifest_json_is_utf8_and_keeps_unicode_names_readable(tmp_path):
    make_export(tmp_path, {"modèle.pkl": b"x"})

    text = (tmp_path / MANIFEST_NAME).read_bytes().decode("utf-8")

    assert "modèle.pkl" in text
    assert isinstance(read_manifest(tmp_path)[0], Manifest)


def test_empty_export_verifies_and_then_refuses_any_added_file(tmp_path):
    make_export(tmp_path, {})

    assert verify_export(tmp_path).files == {}
    (tmp_path / "late.txt").write_text("late")
    with pytest.raises(ManifestError, match="added: late.txt"):
        verify_export(tmp_path)


def test_many_differences_are_listed_with_an_ellipsis(tmp_path):
    make_export(tmp_path, {"keep.txt": b"k"})
    for index in range(12):
        (tmp_path / f"extra{index:02d}.txt").write_text("x")

    with pytest.raises(ManifestError) as info:
        verify_export(tmp_path)

    message = str(info.value)
    assert "extra00.txt" in message and "extra09.txt" in message
    assert "extra11.txt" not in message
    assert "…" in message
