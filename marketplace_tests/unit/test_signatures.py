"""OpenSSF signatures of export folders: per-workspace EC keys, model.sig inside the folder."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from model_signing import signing

from marketplace.manifest import SIGNATURE_NAME
from marketplace.signatures import (
    SignatureError,
    check_private_key,
    generate_key_pair,
    public_key_fingerprint,
    read_public_key,
    sign_export,
    verify_export_signature,
)
from marketplace_tests.testing.driving import model_signing_verify

CLI = Path(sys.executable).parent / "model_signing"
NOT_SIGNED = "it is not signed (no model.sig)"
WRONG_KEY = "its signature was not made with the key configured for it"
NOT_A_BUNDLE = "its model.sig is not a valid signature bundle"
FILES_DIFFER = "its signature does not match its files"
EC_ONLY = "only EC keys (P-256, P-384, P-521) are supported"


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    """Two workspaces' key pairs."""
    return {"ws_a": generate_key_pair(), "ws_b": generate_key_pair()}


def _export(root: Path, model: str, files: dict[str, bytes] | None = None) -> Path:
    folder = root / model
    (folder / "artifacts").mkdir(parents=True)
    files = files or {"model.pkl": model.encode() * 100, "artifacts/MLmodel": b"flavors: {}"}
    for relative, data in files.items():
        (folder / relative).write_bytes(data)
    manifest = {"workspace": "ws_a", "model_name": model, "version": 1, "files": sorted(files)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _refusal(folder: Path, public_pem: str) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_export_signature(folder, public_pem)
    return str(caught.value)


# Signing and verification


def test_round_trip(tmp_path, keys):
    private, public = keys["ws_a"]
    folder = _export(tmp_path, "a")
    signature = sign_export(folder, private)
    assert signature == folder / SIGNATURE_NAME and signature.is_file()
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["artifacts", "manifest.json", "model.pkl", "model.sig"]
    verify_export_signature(folder, public)
    # Signing again (model.sig already there) leaves it out just the same.
    sign_export(folder, private)
    verify_export_signature(folder, public)


def test_signature_covers_every_file_but_itself(tmp_path, keys):
    private, _ = keys["ws_a"]
    folder = _export(tmp_path, "a", {"model.pkl": b"w", ".gitignore": b"*.tmp"})
    statement = _statement(sign_export(folder, private))
    names = {resource["name"] for resource in statement["predicate"]["resources"]}
    assert names == {"model.pkl", ".gitignore", "manifest.json"}
    assert statement["predicate"]["serialization"]["ignore_paths"] == [SIGNATURE_NAME]


def test_an_edited_manifest_fails(tmp_path, keys):
    private, public = keys["ws_a"]
    folder = _export(tmp_path, "a")
    sign_export(folder, private)
    document = json.loads((folder / "manifest.json").read_text())
    document["model_name"] = "b"  # relabelled as another model
    (folder / "manifest.json").write_text(json.dumps(document))
    assert _refusal(folder, public) == f"{folder}: {FILES_DIFFER} (changed: manifest.json)"


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda f: (f / "artifacts/MLmodel").write_bytes(b"evil"), "changed: artifacts/MLmodel"),
        (
            lambda f: (f / "artifacts/extra.py").write_bytes(b"import os"),
            "added: artifacts/extra.py",
        ),
        (lambda f: (f / "model.pkl").unlink(), "missing: model.pkl"),
        (lambda f: (f / ".gitignore").write_bytes(b"*"), "added: .gitignore"),
    ],
    ids=["changed", "added", "removed", "added-git-file"],
)
def test_a_file_changed_after_signing_fails_naming_it(tmp_path, keys, tamper, expected):
    private, public = keys["ws_a"]
    folder = _export(tmp_path, "a")
    sign_export(folder, private)
    tamper(folder)
    assert _refusal(folder, public) == f"{folder}: {FILES_DIFFER} ({expected})"


def test_several_differences_are_all_named(tmp_path, keys):
    private, public = keys["ws_a"]
    folder = _export(tmp_path, "a")
    sign_export(folder, private)
    (folder / "model.pkl").write_bytes(b"other")
    (folder / "artifacts" / "MLmodel").unlink()
    (folder / "new.bin").write_bytes(b"new")
    assert _refusal(folder, public).endswith(
        f"({'missing: artifacts/MLmodel; added: new.bin; changed: model.pkl'})"
    )


def test_another_workspaces_key_does_not_verify(tmp_path, keys):
    folder = _export(tmp_path, "a")
    sign_export(folder, keys["ws_a"][0])
    assert _refusal(folder, keys["ws_b"][1]) == f"{folder}: {WRONG_KEY}"


def test_a_signature_without_key_hint_still_needs_the_right_key(tmp_path, keys):
    # The bundle's key hint is unsigned: without it the ECDSA check alone must refuse.
    folder = _export(tmp_path, "a")
    signature = sign_export(folder, keys["ws_a"][0])
    bundle = json.loads(signature.read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    signature.write_text(json.dumps(bundle))
    assert _refusal(folder, keys["ws_b"][1]) == f"{folder}: {WRONG_KEY}"
    verify_export_signature(folder, keys["ws_a"][1])


def test_a_signature_copied_onto_other_files_fails(tmp_path, keys):
    a = _export(tmp_path, "a")
    b = _export(tmp_path, "b")
    sign_export(a, keys["ws_a"][0])
    sign_export(b, keys["ws_b"][0])
    shutil.copy(a / SIGNATURE_NAME, b / SIGNATURE_NAME)
    # Under B's key (what B's exports are checked with), and under A's key (the files are not A's).
    assert _refusal(b, keys["ws_b"][1]) == f"{b}: {WRONG_KEY}"
    assert (
        _refusal(b, keys["ws_a"][1]) == f"{b}: {FILES_DIFFER} (changed: manifest.json, model.pkl)"
    )


def test_files_that_cannot_be_hashed_fail_saying_so(tmp_path, keys):
    private, public = keys["ws_a"]
    folder = _export(tmp_path, "a")
    sign_export(folder, private)
    (folder / "link.pkl").symlink_to(folder / "model.pkl")  # model_signing refuses symlinks
    message = _refusal(folder, public)
    assert message.startswith(f"{folder}: its files could not be read to check its signature (")
    assert "symlink" in message


def test_an_unsigned_export_fails(tmp_path, keys):
    folder = _export(tmp_path, "a")
    assert _refusal(folder, keys["ws_a"][1]) == f"{folder}: {NOT_SIGNED}"


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"\xff\xfe\x00", b"{}", b"[]", b'{"mediaType": "x"}', "half"],
    ids=["empty", "text", "binary", "empty-object", "list", "wrong-media-type", "truncated"],
)
def test_a_garbage_model_sig_fails(tmp_path, keys, content):
    private, public = keys["ws_a"]
    folder = _export(tmp_path, "a")
    signature = sign_export(folder, private)
    if content == "half":
        content = signature.read_bytes()[: signature.stat().st_size // 2]
    signature.write_bytes(content)
    assert _refusal(folder, public) == f"{folder}: {NOT_A_BUNDLE}"


def test_a_model_sig_that_is_a_folder_is_not_a_signature(tmp_path, keys):
    folder = _export(tmp_path, "a")
    (folder / SIGNATURE_NAME).mkdir()
    assert _refusal(folder, keys["ws_a"][1]) == f"{folder}: {NOT_SIGNED}"


def test_verification_with_a_bad_public_key_is_a_configuration_error(tmp_path, keys):
    folder = _export(tmp_path, "a")
    sign_export(folder, keys["ws_a"][0])
    with pytest.raises(ValueError, match="the public key is not a PEM EC public key"):
        verify_export_signature(folder, "not a key")


def test_signing_with_a_bad_private_key_writes_nothing(tmp_path, keys):
    folder = _export(tmp_path, "a")
    with pytest.raises(ValueError, match="the signing key is a public key"):
        sign_export(folder, keys["ws_a"][1])
    assert not (folder / SIGNATURE_NAME).exists()


# The private key's temporary file


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's folder, for this test alone."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_private_key_file_is_0600_and_gone_after_signing(
    tmp_path, keys, private_tmp, monkeypatch
):
    seen = []
    load = signing.Config.use_elliptic_key_signer

    def observe(self, *, private_key, password=None):
        seen.append((Path(private_key), stat.S_IMODE(os.stat(private_key).st_mode)))
        return load(self, private_key=private_key, password=password)

    monkeypatch.setattr(signing.Config, "use_elliptic_key_signer", observe)
    folder = _export(tmp_path, "a")
    sign_export(folder, keys["ws_a"][0])
    [(path, mode)] = seen
    assert path.parent == private_tmp and mode == 0o600
    assert list(private_tmp.iterdir()) == []


def test_the_private_key_file_is_gone_when_signing_fails(tmp_path, keys, private_tmp, monkeypatch):
    def fail(self, *, private_key, password=None):
        assert Path(private_key).read_text() == keys["ws_a"][0]
        raise OSError("disk full")

    monkeypatch.setattr(signing.Config, "use_elliptic_key_signer", fail)
    with pytest.raises(OSError, match="disk full"):
        sign_export(_export(tmp_path, "a"), keys["ws_a"][0])
    assert list(private_tmp.iterdir()) == []


def test_verifying_leaves_nothing_behind(tmp_path, keys, private_tmp):
    folder = _export(tmp_path, "a")
    sign_export(folder, keys["ws_a"][0])
    verify_export_signature(folder, keys["ws_a"][1])
    _refusal(folder, keys["ws_b"][1])
    assert list(private_tmp.iterdir()) == []
    assert not (folder / f".{SIGNATURE_NAME}.tmp").exists()


# Keys


def test_generated_keys_are_p256_pem():
    private, public = generate_key_pair()
    check_private_key(private)
    assert private.startswith("-----BEGIN PRIVATE KEY-----")
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    key = serialization.load_pem_public_key(public.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert generate_key_pair() != (private, public)


def test_fingerprint_names_the_key(keys):
    fingerprint = public_key_fingerprint(keys["ws_a"][1])
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert fingerprint == public_key_fingerprint(keys["ws_a"][1].replace("\n", "\r\n"))
    assert fingerprint != public_key_fingerprint(keys["ws_b"][1])
    with pytest.raises(ValueError, match="not a PEM EC public key"):
        public_key_fingerprint(keys["ws_a"][0])


def test_read_public_key_inline(tmp_path, keys):
    public = keys["ws_a"][1]
    assert read_public_key(public, tmp_path) == public
    assert read_public_key("\n  " + public, tmp_path) == "\n  " + public


def test_read_public_key_from_a_relative_or_absolute_path(tmp_path, keys):
    public = keys["ws_a"][1]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ws_a.pub").write_text(public)
    assert read_public_key("keys/ws_a.pub", tmp_path) == public
    assert read_public_key(str(tmp_path / "keys" / "ws_a.pub"), tmp_path / "elsewhere") == public


def test_read_public_key_from_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=f"public key file {tmp_path / 'nope.pub'} does not exist"):
        read_public_key("nope.pub", tmp_path)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hello", "is not a PEM EC public key"),
        (b"\x00\xff\x10", "is not a PEM EC public key"),
        (
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "is not a PEM EC public key",
        ),
        ("private", "is not a PEM EC public key (it is a private key; configure the public one)"),
        ("rsa", f"is not a PEM EC public key: it is RSA; {EC_ONLY}"),
        ("p224", f"is on curve secp224r1; {EC_ONLY}"),
    ],
    ids=["text", "binary", "bad-pem", "private-key", "rsa", "unsupported-curve"],
)
def test_read_public_key_refuses_what_is_not_an_ec_public_key(tmp_path, keys, content, says):
    content = {
        "private": keys["ws_a"][0].encode(),
        "rsa": _public_pem(rsa.generate_private_key(65537, 2048)),
        "p224": _public_pem(ec.generate_private_key(ec.SECP224R1())),
    }.get(content, content)
    (tmp_path / "key.pub").write_bytes(content)
    with pytest.raises(ValueError) as caught:
        read_public_key("key.pub", tmp_path)
    assert str(caught.value) == f"public key file {tmp_path / 'key.pub'} {says}"
    if content.startswith(b"-----BEGIN"):
        with pytest.raises(ValueError) as caught:
            read_public_key(content.decode(), tmp_path)
        assert str(caught.value) == f"the inline public key {says}"


@pytest.mark.parametrize(
    ("pem", "says"),
    [
        ("garbage", "the signing key is not a PEM EC private key"),
        ("public", "the signing key is a public key, not a PEM EC private key"),
        ("rsa", "the signing key is not a PEM EC private key: it is RSA; only EC keys"),
        ("encrypted", "the signing key is encrypted"),
    ],
)
def test_check_private_key_refuses(keys, pem, says):
    rsa_key = rsa.generate_private_key(65537, 2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = {
        "public": keys["ws_a"][1],
        "rsa": rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "encrypted": ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        ).decode(),
    }.get(pem, pem)
    with pytest.raises(ValueError) as caught:
        check_private_key(pem)
    assert str(caught.value).startswith(says)
    assert "PRIVATE KEY" not in str(caught.value)  # never echoes the key


# Anyone can verify with the standard command line


def test_the_model_signing_cli_verifies_an_export(tmp_path, keys):
    private, public = keys["ws_a"]
    # A .gitignore too: the standard CLI skips git files unless told not to.
    folder = _export(
        tmp_path, "a", {"model.pkl": b"w", "artifacts/MLmodel": b"m", ".gitignore": b"*"}
    )
    sign_export(folder, private)
    (tmp_path / "ws_a.pub").write_text(public)
    (tmp_path / "ws_b.pub").write_text(keys["ws_b"][1])

    verified = model_signing_verify(folder, tmp_path / "ws_a.pub")
    assert verified.returncode == 0, verified.stderr
    assert "Verification succeeded" in verified.stdout

    without_git_files = model_signing_verify(folder, tmp_path / "ws_a.pub", git_files=False)
    assert without_git_files.returncode != 0 and "Missing files" in without_git_files.stderr

    other_key = model_signing_verify(folder, tmp_path / "ws_b.pub")
    assert other_key.returncode != 0 and "Key mismatch" in other_key.stderr

    (folder / "model.pkl").write_bytes(b"tampered")
    tampered = model_signing_verify(folder, tmp_path / "ws_a.pub")
    assert tampered.returncode != 0
    assert "Hash mismatch for 'model.pkl'" in tampered.stderr


# Helpers


def _statement(signature: Path) -> dict:
    bundle = json.loads(signature.read_text())
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
