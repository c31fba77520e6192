"""Scan an exported model folder for unsafe pickle content before anything unpickles it.

The scanner is modelscan (a denylist of dangerous globals, read from the pickle opcodes, never
executed). Measured with modelscan 0.8.8, MLflow 3.17, scikit-learn 1.9 and cloudpickle 3.1:

* An sklearn model as skops (MLflow's default), as cloudpickle, and a pyfunc PythonModel
  pickled by value give no findings. Their cloudpickle output names only `numpy.dtype`,
  `numpy.ndarray`, `numpy._core.multiarray._reconstruct` and the estimator's class, or
  `builtins.type`, mlflow's classes and cloudpickle's rebuilders (`_make_function`,
  `_make_skeleton_class`, `_builtin_type`, `_make_cell`, ...): none is on the denylist.
* So modelscan cannot see code rebuilt from a pickled code object: a cloudpickled function
  called from `__reduce__` runs on load and yields no finding (flagging cloudpickle's rebuilders
  would flag every PythonModel). Globals that reach any function by name are added to its
  denylist here (`importlib`, `pydoc.locate`, `operator.methodcaller`, ...: EXTRA_UNSAFE_GLOBALS).
  A clean report lowers the risk; only a pickle-free format (skops) removes it.
* A joblib file holding numpy arrays is unscannable (a false positive): joblib writes array
  buffers raw inside the pickle stream, or compresses the file, and modelscan parses opcodes only.
* On its own modelscan skips a pickle whose name lacks a pickle extension in lower case (MLmodel
  may name any file), skips a `.pt`/`.bin` file without PyTorch's legacy magic number, and reads
  only the first pickle of a legacy PyTorch file. Such files are scanned again here as whole
  pickle streams; a protocol 0 or 1 pickle under another name is still not scanned.
"""

from __future__ import annotations

import copy
import pickletools
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.lib.format
from modelscan.error import ErrorBase
from modelscan.issues import Issue
from modelscan.model import Model

# Before modelscan.tools: importing that first is a circular import inside modelscan.
from modelscan.modelscan import ModelScan
from modelscan.settings import DEFAULT_SETTINGS
from modelscan.skip import ModelScanSkipped, SkipCategories
from modelscan.tools.picklescanner import scan_pickle_bytes

SEVERITIES = ("low", "medium", "high", "critical")
SCAN_MODES = ("block", "warn", "off")
UNSCANNABLE = "(unscannable)"

# Beyond modelscan's denylist: each reaches any function by name (seen to run os.mkdir on load).
EXTRA_UNSAFE_GLOBALS = {
    "importlib": "*",
    "pydoc": "*",
    "_operator": ["methodcaller", "attrgetter"],
    "operator": ["methodcaller"],
    "marshal": "*",
    "ctypes": "*",
    "code": "*",
}

_DESCRIBE_LIMIT = 10
_GLOBAL_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_ZIP_MAGIC = b"PK\x03\x04"
_SCANNERS = DEFAULT_SETTINGS["scanners"]
_PICKLE_SUFFIXES = _SCANNERS["modelscan.scanners.PickleUnsafeOpScan"]["supported_extensions"]
_NUMPY_SUFFIXES = _SCANNERS["modelscan.scanners.NumpyUnsafeOpScan"]["supported_extensions"]
# modelscan reads every pickle in these (it matches suffixes case-sensitively).
_READ_WHOLE = frozenset(_PICKLE_SUFFIXES + _NUMPY_SUFFIXES)
# modelscan matches suffixes case-sensitively; loaders unpickle MODEL.PKL all the same.
_PICKLE_SUFFIXES_ANY_CASE = frozenset(_PICKLE_SUFFIXES)


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class ScanPolicy:
    """What a scan's findings do: block the model, only warn, or nothing."""

    mode: str = "block"
    block_severity: str = "high"
    allow_globals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in SCAN_MODES:
            raise ValueError(f"scan mode {self.mode!r} is not one of {', '.join(SCAN_MODES)}")
        if self.block_severity not in SEVERITIES:
            raise ValueError(
                f"block severity {self.block_severity!r} is not one of {', '.join(SEVERITIES)}"
            )
        if isinstance(self.allow_globals, str):
            # a setting at fault, reported as the other settings are
            raise ValueError("allow_globals is a list of 'module.name' globals, not one string")  # noqa: TRY004
        allowed = tuple(self.allow_globals)
        for name in allowed:
            # Only real globals: an unscannable file is never allowlisted.
            if not isinstance(name, str) or not _GLOBAL_NAME.fullmatch(name):
                raise ValueError(f"allowed global {name!r} is not of the form 'module.name'")
        object.__setattr__(self, "allow_globals", allowed)


def scan_policy(security: Any, mode: str | None = None) -> ScanPolicy:
    """The policy of the configuration's `security` section (scanning sits below the
    configuration, so it reads the section's fields without naming its type); in `mode`, if
    given: an audit weighs findings as `block` would."""
    return ScanPolicy(mode or security.scan, security.block_severity, tuple(security.allow_globals))


@dataclass(frozen=True)
class Finding:
    """One unsafe global (or unscannable file) in a scanned folder."""

    file: str
    operator: str
    severity: str
    description: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    def to_dict(self) -> dict[str, str]:
        """The finding as JSON-ready fields."""
        return {
            "file": self.file,
            "operator": self.operator,
            "severity": self.severity,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """The finding that to_dict wrote."""
        return cls(
            file=str(data["file"]),
            operator=str(data["operator"]),
            severity=str(data["severity"]),
            description=str(data.get("description", "")),
        )


@dataclass(frozen=True)
class ScanReport:
    """Every finding in a folder, most severe first."""

    findings: tuple[Finding, ...]
    files_scanned: int
    seconds: float

    def _at_or_above(self, policy: ScanPolicy) -> tuple[Finding, ...]:
        if policy.mode != "block":
            return ()
        threshold = _rank(policy.block_severity)
        return tuple(f for f in self.findings if _rank(f.severity) >= threshold)

    def blocking(self, policy: ScanPolicy) -> tuple[Finding, ...]:
        """Findings that stop the model under policy (none unless its mode is block)."""
        return tuple(f for f in self._at_or_above(policy) if f.operator not in policy.allow_globals)

    @classmethod
    def of_record(cls, findings: Iterable[Mapping[str, Any]]) -> ScanReport:
        """The findings a quarantine record kept, to weigh them again under today's policy."""
        return cls(
            findings=tuple(Finding.from_dict(f) for f in findings), files_scanned=0, seconds=0.0
        )

    def allowed(self, policy: ScanPolicy) -> tuple[Finding, ...]:
        """Findings that would block but for policy's allowlist."""
        return tuple(f for f in self._at_or_above(policy) if f.operator in policy.allow_globals)

    def describe(self, findings: Iterable[Finding] | None = None) -> str:
        """Short text naming each finding's file, operator and severity."""
        listed = tuple(self.findings if findings is None else findings)
        if not listed:
            return "no findings"
        parts = [f"{f.file}: {f.operator} ({f.severity})" for f in listed[:_DESCRIBE_LIMIT]]
        if len(listed) > _DESCRIBE_LIMIT:
            parts.append(f"and {len(listed) - _DESCRIBE_LIMIT} more")
        return "; ".join(parts)


_shim_lock = threading.Lock()
_shim_applied = False


def _apply_numpy_shim() -> None:
    # modelscan 0.8.8 reads .npy headers with numpy.lib.format._check_version and
    # _read_array_header, which numpy 2.4 keeps only in numpy.lib._format_impl. Without them
    # every .npy, so every skops model (a zip of .npy files), is a scan error. Remove this
    # once modelscan supports numpy 2.4.
    global _shim_applied
    with _shim_lock:
        if _shim_applied:
            return
        missing = [
            name
            for name in ("_check_version", "_read_array_header")
            if not hasattr(numpy.lib.format, name)
        ]
        if missing:
            from numpy.lib import _format_impl

            for name in missing:
                setattr(numpy.lib.format, name, getattr(_format_impl, name))
        _shim_applied = True


def _relative(source: str | Path, root: Path) -> str:
    try:
        return Path(source).relative_to(root).as_posix()
    except ValueError:
        return str(source)


def _issue_finding(issue: Issue, root: Path) -> Finding:
    fields = issue.details.output_json()
    return Finding(
        file=_relative(fields["source"], root),
        operator=f"{fields['module']}.{fields['operator']}",
        severity=issue.severity.name.lower(),
        description=fields["description"],
    )


def _unscannable(file: str, why: str) -> Finding:
    # High, not lower: a pickle crafted to break the parser can still run when loaded.
    return Finding(file=file, operator=UNSCANNABLE, severity="high", description=why)


def _error_finding(error: ErrorBase, root: Path) -> Finding:
    fields = error.to_dict()
    source = fields.get("source")
    # No source means a scanner failed to load: nothing in the folder can be trusted.
    file = _relative(source, root) if source else "."
    return _unscannable(file, f"{fields['category']}: {fields['description']}")


def _raw_bytes(error: ErrorBase, root: Path) -> bool:
    """A scanner error about a whole file (not a zip member) that no unpickler could run code from."""
    source = error.to_dict().get("source")
    if not source or ":" in Path(str(source)).name:  # zip members are named "file.zip:member"
        return False
    file = Path(str(source))
    file = file if file.is_absolute() else root / file
    # A pickle-named file stays a finding: joblib and others compress what the scanner cannot see.
    if file.suffix.lower() in _PICKLE_SUFFIXES_ANY_CASE:
        return False
    return file.is_file() and _breaks_before_any_code(file)


def _skip_finding(skipped: ModelScanSkipped, root: Path) -> Finding | None:
    if skipped.category.value != SkipCategories.BAD_ZIP.value:
        return None
    return _unscannable(_relative(skipped.source, root), skipped.message)


def _looks_like_pickle(head: bytes) -> bool:
    # PROTO opcode of protocol 2 to 5: what pickle, cloudpickle, joblib and torch write.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


# Formats that are never pickles and that their loaders never unpickle, whatever their first
# bytes (a safetensors header length of 0x0380 reads like a protocol 3 pickle's start).
_NOT_PICKLES = frozenset(
    {
        ".safetensors",
        ".onnx",
        ".gguf",
        ".json",
        ".yaml",
        ".yml",
        ".txt",
        ".md",
        ".csv",
        ".parquet",
        ".py",
    }
)


def _needs_pickle_rescan(file: Path) -> bool:
    if file.suffix in _READ_WHOLE or file.suffix.lower() in _NOT_PICKLES:
        return False
    with open(file, "rb") as handle:
        head = handle.read(4)
    if head == _ZIP_MAGIC:  # modelscan scans the members
        return False
    if file.suffix.lower() in _PICKLE_SUFFIXES_ANY_CASE:
        return _pickle_can_start(file)
    # PyTorch's extensions and other names: only what pickle (protocol 2 and up) and torch.save
    # write. Raw tensors in a .bin are bytes an unpickler stops on, or a PROTO it never reaches.
    return _looks_like_pickle(head)


def _pickle_can_start(file: Path) -> bool:
    """Whether an unpickler gets past the file's first opcode (else nothing in it can run)."""
    with open(file, "rb") as handle:
        try:
            next(pickletools.genops(handle))
        except Exception:  # noqa: BLE001 - any parse error at the first opcode
            return False
    return True


# The opcodes through which a pickle reaches code: import a global, or call or build with one.
_CODE_OPCODES = frozenset(
    {
        "GLOBAL",
        "STACK_GLOBAL",
        "INST",
        "OBJ",
        "REDUCE",
        "NEWOBJ",
        "NEWOBJ_EX",
        "BUILD",
        "EXT1",
        "EXT2",
        "EXT4",
    }
)


def _breaks_before_any_code(file: Path) -> bool:
    """Whether every pickle an unpickler could read from `file` ends, or breaks off, before any
    opcode that reaches code: raw bytes (tensors) a scanner fails to parse, that run nothing."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        while handle.tell() < size:
            try:
                for opcode, _, _ in pickletools.genops(handle):
                    if opcode.name in _CODE_OPCODES:
                        return False
            except Exception:  # noqa: BLE001 - the parse error an unpickler would stop at
                return True
    return True


def _rescan_as_pickle(file: Path, root: Path, settings: dict[str, Any]) -> list[Finding]:
    """Every pickle in file, for files modelscan skipped or read only the start of."""
    relative = _relative(file, root)
    try:
        with Model(file) as model:
            results = scan_pickle_bytes(model, settings, multiple_pickles=True)
    except Exception as error:  # noqa: BLE001 - modelscan's parser raises more than its own errors
        return [_unscannable(relative, f"pickle: {error}")]
    return [_issue_finding(issue, root) for issue in results.issues] + [
        _error_finding(error, root) for error in results.errors
    ]


def _modelscan(root: Path, settings: dict[str, Any]) -> tuple[list[Finding], set[str]]:
    scanner = ModelScan(settings=settings)
    scanner.scan(root)  # the API alone: the CLI's report is what prints to stdout
    findings = [_issue_finding(issue, root) for issue in scanner.issues.all_issues]
    findings += [
        _error_finding(error, root) for error in scanner.errors if not _raw_bytes(error, root)
    ]
    findings += [f for s in scanner.skipped if (f := _skip_finding(s, root)) is not None]
    return findings, set(scanner.scanned)


def scan_folder(path: Path) -> ScanReport:
    """Scan every file under path, zip members included, without unpickling anything."""
    root = Path(path).absolute()
    if not root.is_dir():
        raise NotADirectoryError(f"not a model folder: {root}")
    _apply_numpy_shim()
    started = time.perf_counter()
    # modelscan keeps a reference to its settings; a private copy keeps concurrent scans apart.
    settings = copy.deepcopy(DEFAULT_SETTINGS)
    critical = settings["unsafe_globals"]["CRITICAL"]
    for module, names in EXTRA_UNSAFE_GLOBALS.items():
        known = critical.get(module, [])
        critical[module] = "*" if "*" in (names, known) else sorted({*known, *names})
    findings, scanned = _modelscan(root, settings)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if _needs_pickle_rescan(file):
            extra = _rescan_as_pickle(file, root, settings)
            findings += extra
            if not any(f.operator == UNSCANNABLE for f in extra):
                scanned.add(str(file))
    unique = sorted(set(findings), key=lambda f: (-_rank(f.severity), f.file, f.operator))
    return ScanReport(
        findings=tuple(unique),
        files_scanned=len(scanned),
        seconds=time.perf_counter() - started,
    )


def refused(folder: Path, policy: ScanPolicy | None) -> str | None:
    """What the scan blocks in `folder`, described, or None (no policy, or nothing blocks)."""
    if policy is None or policy.mode == "off":
        return None
    report = scan_folder(folder)
    blocking = report.blocking(policy)
    return report.describe(blocking) if blocking else None
