"""OpenSSF model signatures of export folders: each workspace signs its exports with its own EC key.

`model.sig`, a Sigstore bundle written by the `model_signing` package, sits inside the export folder
and covers every other file there, manifest.json (what the export is of) included. Anyone holding
the workspace's public key can check an export with the standard command line:

    model_signing verify key --signature DIR/model.sig --public_key PUB.pem \
        --no-ignore-git-paths DIR

(`--no-ignore-git-paths` because the signature covers files such as .gitignore too; the CLI leaves
out the signature file itself on its own.)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from marketplace.errors import MarketplaceError
from marketplace.manifest import SIGNATURE_NAME

if TYPE_CHECKING:
    from model_signing import manifest

# The curves model_signing accepts (Sigstore's).
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
EC_ONLY = "only EC keys (P-256, P-384, P-521) are supported"


class SignatureError(MarketplaceError, RuntimeError):
    """An export whose OpenSSF signature is missing or does not verify."""


def generate_key_pair() -> tuple[str, str]:
    """A new (private PEM, public PEM) pair on P-256."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private.decode("ascii"), _public_pem(key.public_key())


def check_private_key(pem: str) -> None:
    """ValueError saying why, unless `pem` is an unencrypted PEM EC private key on a curve
    model_signing accepts."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError(
            "the signing key is encrypted; it must be an unencrypted PEM EC private key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if _is_public_key(pem):
            raise ValueError("the signing key is a public key, not a PEM EC private key") from None
        raise ValueError("the signing key is not a PEM EC private key") from None
    _check_ec(key, "the signing key", "private")


def read_public_key(value: str, base: Path) -> str:
    """The PEM text of `value`: inline PEM, or a file path relative to `base` unless absolute."""
    if value.lstrip().startswith("-----BEGIN"):
        _load_public_key(value, "the inline public key")
        return value
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise ValueError(f"public key file {path} does not exist")
    try:
        pem = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ValueError(f"public key file {path} is not a PEM EC public key") from None
    _load_public_key(pem, f"public key file {path}")
    return pem


def public_key_fingerprint(pem: str) -> str:
    """Names a signer in logs and cards: the first 16 hex digits of the SHA-256 of the key's
    DER SubjectPublicKeyInfo."""
    der = _load_public_key(pem, "the public key").public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _load_public_key(pem: str, what: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        private = "PRIVATE KEY-----" in pem
        hint = " (it is a private key; configure the public one)" if private else ""
        raise ValueError(f"{what} is not a PEM EC public key{hint}") from None
    _check_ec(key, what, "public")
    return key


def _is_public_key(pem: str) -> bool:
    try:
        serialization.load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


def _check_ec(key: object, what: str, kind: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        algorithm = type(key).__name__.lstrip("_").removesuffix("PrivateKey")
        algorithm = algorithm.removesuffix("PublicKey")
        # A configuration error (the wrong kind of key), as callers expect: not a TypeError.
        raise ValueError(f"{what} is not a PEM EC {kind} key: it is {algorithm}; {EC_ONLY}")  # noqa: TRY004
    if key.curve.name not in CURVES:
        raise ValueError(f"{what} is on curve {key.curve.name}; {EC_ONLY}")


def _public_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@contextmanager
def _key_file(pem: str) -> Iterator[Path]:
    # model_signing reads keys from files only: mkstemp's file is 0600, and it goes as soon as the
    # key is loaded (when the config is built, before any hashing).
    fd, name = tempfile.mkstemp(prefix="marketplace-key-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(pem)
        yield Path(name)
    finally:
        os.unlink(name)


@functools.cache
def _export_hashing() -> type:
    """The hashing config class; model_signing (and Sigstore under it) is imported only by the
    processes that sign or verify: half a second and 26 MB for each run that does not."""
    from model_signing import hashing

    class ExportHashing(hashing.Config):
        """How an export is hashed, for signing and verifying alike: every file but model.sig, git
        files included. Notes how far verification got, since model_signing raises plain errors:
        what fails before the files are hashed is the signature itself."""

        def __init__(self) -> None:
            super().__init__()
            self.set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)
            self.started = False
            self.actual: manifest.Manifest | None = None

        def hash(self, model_path, *, files_to_hash: Iterable | None = None) -> manifest.Manifest:
            self.started = True
            self.actual = super().hash(model_path, files_to_hash=files_to_hash)
            return self.actual

    return ExportHashing


def sign_export(folder: Path, private_key_pem: str) -> Path:
    """Sign every file under `folder` but model.sig; write `folder`/model.sig, return its path."""
    check_private_key(private_key_pem)
    from model_signing import signing

    with _key_file(private_key_pem) as key_file:
        config = signing.Config().use_elliptic_key_signer(private_key=key_file)
    target = folder / SIGNATURE_NAME
    # Written beside and renamed, so a reader never sees half a bundle. The library writes the
    # bundle after hashing, so the temporary name is not among the signed files.
    staged = folder / f".{SIGNATURE_NAME}.tmp"
    staged.unlink(missing_ok=True)
    config.set_hashing_config(_export_hashing()()).sign(folder, staged)
    with open(staged, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staged, target)
    return target


def verify_export_signature(folder: Path, public_key_pem: str) -> None:
    """SignatureError saying why, unless `folder`/model.sig verifies under the key and matches
    every file. A `public_key_pem` that is not an EC public key is the configuration's fault:
    ValueError."""
    signature = folder / SIGNATURE_NAME
    if not signature.is_file():
        raise SignatureError(f"{folder}: it is not signed (no {SIGNATURE_NAME})")
    _load_public_key(public_key_pem, "the public key")
    from model_signing import verifying

    with _key_file(public_key_pem) as key_file:
        config = verifying.Config().use_elliptic_key_verifier(public_key=key_file)
    hashed = _export_hashing()()
    try:
        config.set_hashing_config(hashed).verify(folder, signature)
    except Exception as exc:
        raise SignatureError(f"{folder}: {_reason(exc, hashed, signature)}") from exc


def _reason(exc: Exception, hashed, signature: Path) -> str:
    if hashed.actual is not None:
        return f"its signature does not match its files ({_differences(signature, hashed.actual)})"
    if hashed.started:
        return f"its files could not be read to check its signature ({exc})"
    # The errors about the key: the bundle's key hint differs, or the signature fails under it.
    if isinstance(exc, InvalidSignature) or str(exc).startswith("Key mismatch"):
        return "its signature was not made with the key configured for it"
    return f"its {SIGNATURE_NAME} is not a valid signature bundle"


def _differences(signature: Path, actual: manifest.Manifest) -> str:
    # model_signing's own account prints raw digest bytes; this names the files the way
    # manifest.check_export does. The bundle has just verified, so its digests can be trusted.
    signed = _signed_digests(signature)
    found = {item.identifier: item.digest.digest_hex for item in actual.resource_descriptors()}
    changed = [name for name in signed.keys() & found.keys() if signed[name] != found[name]]
    changes = (
        ("missing", sorted(signed.keys() - found.keys())),
        ("added", sorted(found.keys() - signed.keys())),
        ("changed", sorted(changed)),
    )
    return "; ".join(
        f"{label}: {', '.join(names[:10])}{' …' if len(names) > 10 else ''}"
        for label, names in changes
        if names
    )


def _signed_digests(signature: Path) -> dict[str, str]:
    bundle = json.loads(signature.read_text(encoding="utf-8"))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    resources = statement["predicate"]["resources"]
    return {resource["name"]: resource["digest"] for resource in resources}


# What an export's signature is under its workspace's key: one decision for the imports step
# (which refuses) and the audit check (which reports).
VERIFIED, UNCHECKED, UNSIGNED, MIS_SIGNED = "verified", "unchecked", "unsigned", "mis-signed"


@dataclass(frozen=True)
class SignatureState:
    state: str  # VERIFIED, UNCHECKED (no key, none required), UNSIGNED or MIS_SIGNED
    reason: str = ""


def signature_state(
    workspace: str, *, has_key: bool, required: bool, signed: bool, error: str | None
) -> SignatureState:
    """An export's signature under its workspace's key. `signed`: it carries a signature;
    `error`: why that signature did not verify under the key (None: it did, or no key)."""
    if has_key:
        if error is None:
            return SignatureState(VERIFIED)
        return SignatureState(MIS_SIGNED if signed else UNSIGNED, error)
    if required:
        return SignatureState(UNSIGNED, f"workspace {workspace} has no public key")
    return SignatureState(UNCHECKED)


def export_signature_state(
    local: Path, location: str, workspace: str, public_key: str | None, required: bool
) -> SignatureState:
    """signature_state of the export folder `local`, its messages naming `location`."""
    error = None
    if public_key is not None:
        try:
            verify_export_signature(local, public_key)
        except SignatureError as exc:
            error = str(exc).replace(str(local), location)
    signed = (local / SIGNATURE_NAME).is_file()
    return signature_state(
        workspace, has_key=public_key is not None, required=required, signed=signed, error=error
    )
