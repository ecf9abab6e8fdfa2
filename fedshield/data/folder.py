"""A site's own images from its own disk: a data spec in, :class:`SiteData` out (``docs/data.md``).

The spec (:class:`~fedshield.data.spec.DataSpec`) names one folder and a CSV indexing it:
``path,label`` rows for classification, ``image,mask`` rows for segmentation. Every image is
read and prepared through MONAI (:class:`~fedshield.data.imaging.ImageLoader`), the arrays are
cached (``.npz``, keyed by the spec and every file's size, times and inode), and the site
splits them into train and test itself, with the spec's seed (stratified by label for
classification).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedshield.data.imaging import ImageLoader
from fedshield.data.sites import SiteData
from fedshield.data.spec import CSV_HEADERS, DataSpec
from fedshield.errors import DataError

__all__ = [
    "DataSpec",
    "IndexRow",
    "load_data_spec",
    "load_spec",
    "read_index",
    "split_indices",
]

_CACHE_VERSION = 2  # bump when the preparation changes what a spec's arrays are


def load_data_spec(path: str | os.PathLike) -> SiteData:
    """The site the data spec file ``path`` describes: its images prepared, split into train
    and test at the site (named by the spec's ``name``, else the file's stem).

    Raises:
        ConfigError: the spec file is unreadable or invalid (naming it and the key).
        DataError: naming the file (and CSV line): a missing or unreadable image, a label not
            in the spec's classes, mixed shapes or channels, an empty CSV or a bad header.
    """
    return load_spec(DataSpec.load(path))


def load_spec(spec: DataSpec) -> SiteData:
    """The site ``spec`` describes (as :func:`load_data_spec`, from a spec object)."""
    rows = read_index(spec)
    x, y = _cached_arrays(spec, rows)
    labels = y if spec.task == "classification" else None
    root = spec.root.resolve()
    keys = [r.image.resolve().relative_to(root).as_posix() for r in rows]
    train, test = split_indices(labels, keys, spec.test_fraction, spec.seed, where=spec.csv_path)
    return SiteData(spec.name, x[train], y[train], x[test], y[test])


@dataclass(frozen=True)
class IndexRow:
    """One CSV row: its line, its image, and its class index (classification) or mask."""

    line: int
    image: Path
    target: int | Path


def read_index(spec: DataSpec) -> list[IndexRow]:
    """The rows of ``spec``'s CSV, every path checked to be a file (or a DICOM series
    folder) under the spec's root.

    Raises:
        DataError: naming the CSV and the line: missing or empty CSV, a header other than
            the task's, a row without two fields, a path that is absolute, leaves the root or
            does not exist, a label not in the spec's classes.
    """
    where = spec.csv_path
    if not spec.root.is_dir():
        raise DataError(f"{spec.root}: no such folder; fix root: in the spec")
    if not where.is_file():
        raise DataError(
            f"{where}: no such file; the spec's labels: names the CSV, relative to its root "
            f"{spec.root}"
        )
    try:
        with where.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, skipinitialspace=True)
            lines = [(n, row) for n, row in enumerate(reader, 1) if any(row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{where}: cannot read it as a UTF-8 CSV ({exc})") from None
    header = ",".join(CSV_HEADERS[spec.task])
    if not lines:
        raise DataError(f"{where}: empty; a {spec.task} CSV starts with the header {header}")
    (_, first), rows = lines[0], lines[1:]
    if [c.strip().lower() for c in first] != list(CSV_HEADERS[spec.task]):
        other = [t for t, h in CSV_HEADERS.items() if [c.strip() for c in first] == list(h)]
        hint = f" (that is a {other[0]} CSV: set task: {other[0]})" if other else ""
        raise DataError(
            f"{where}: line {lines[0][0]}: header {','.join(first)!r}; a {spec.task} CSV's first "
            f"line is the header {header}, and its rows have those two columns only{hint}"
        )
    if not rows:
        raise DataError(f"{where}: no rows after the header; list one image per line")
    return _once(spec, [_row(spec, n, row) for n, row in rows])


def _once(spec: DataSpec, rows: list[IndexRow]) -> list[IndexRow]:
    """``rows``, checked to list every image once (however spelt, or through a link): a
    repeated image could land in both train and test, or carry two labels."""
    first: dict[Path, int] = {}
    for row in rows:
        seen = first.setdefault(row.image.resolve(), row.line)
        if seen != row.line:
            raise DataError(
                f"{spec.csv_path}: line {row.line}: {row.image} is the image of line {seen} "
                "too; list every image once"
            )
    return rows


def _row(spec: DataSpec, line: int, row: list[str]) -> IndexRow:
    where = f"{spec.csv_path}: line {line}"
    if len(row) != 2:
        raise DataError(
            f"{where}: {len(row)} fields {row}; expected 2 ({', '.join(CSV_HEADERS[spec.task])})"
        )
    image = _file(spec, row[0], where)
    if spec.task == "segmentation":
        return IndexRow(line, image, _file(spec, row[1], where))
    return IndexRow(line, image, _class_index(spec, row[1].strip(), where))


def _file(spec: DataSpec, text: str, where: str) -> Path:
    """The file ``text`` names, relative to the spec's root, checked to exist."""
    text = text.strip()
    relative = Path(text)
    if not text or relative.is_absolute():
        raise DataError(f"{where}: path {text!r} must be relative to the root {spec.root}")
    path = spec.root / relative
    if Path(os.path.normpath(text)).parts[:1] == ("..",):
        raise DataError(f"{where}: path {text!r} leaves the root {spec.root}")
    if not path.exists():
        raise DataError(f"{where}: {path}: no such file (paths are relative to {spec.root})")
    for member in sorted(path.iterdir()) if path.is_dir() else [path]:  # a DICOM series
        target = member.resolve()
        if not target.is_relative_to(spec.root.resolve()):
            raise DataError(
                f"{where}: {member} links to {target}, outside the root {spec.root}; a site "
                "reads only its own folder: copy the file in"
            )
    return path


def _class_index(spec: DataSpec, label: str, where: str) -> int:
    """A CSV label as a class index: one of the spec's names, else an index into them."""
    if label in spec.classes:
        return spec.classes.index(label)
    if re.fullmatch(r"\d+", label) and int(label) < len(spec.classes):
        return int(label)
    raise DataError(
        f"{where}: label {label!r} is not in the spec's classes {list(spec.classes)} (a name, "
        f"or an index 0..{len(spec.classes) - 1}); fix the row or add the class to classes:"
    )


def split_indices(
    labels: np.ndarray | None, keys: list[str], test_fraction: float, seed: int, *, where: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices (each sorted) of the rows named by ``keys`` (their paths),
    ``test_fraction`` of them in test; with ``labels``, per class (stratified: each class
    with at least two rows has at least one in each part).

    The test rows are those whose SHA-256 of ``seed`` and key is smallest: the split depends
    on the rows' paths and the seed only, not on the CSV's order, the machine or numpy.

    Raises:
        DataError: naming ``where``, when the rows are too few for both parts.
    """
    n = len(keys)
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    test = []
    for rows in groups:
        if len(rows) < 2:
            continue
        k = min(max(round(len(rows) * test_fraction), 1), len(rows) - 1)
        ranked = sorted(rows, key=lambda r: hashlib.sha256(f"{seed}/{keys[r]}".encode()).digest())
        test.append(np.array(ranked[:k], dtype=np.int64))
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(n), test)
    if not len(test) or not len(train):
        raise DataError(
            f"{where}: {n} images cannot be split into train and test; list more images"
        )
    return train, test


def _cached_arrays(spec: DataSpec, rows: list[IndexRow]) -> tuple[np.ndarray, np.ndarray]:
    """Every row's prepared image and target; read from ``spec.cache`` when its key (the
    spec's preparation, the rows, every file's size, times and inode) matches, else loaded and
    written there."""
    if spec.cache is None:
        return _load_arrays(spec, rows)
    key = _cache_key(spec, rows)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", spec.name)
    path = spec.cache / f"{stem}-{key[:24]}.npz"
    found = _read_cache(path, len(rows))
    if found is not None:
        return found
    x, y = _load_arrays(spec, rows)
    ours = re.compile(re.escape(stem) + r"-[0-9a-f]{24}\.npz")
    _write_cache(path, x, y, stale=[p for p in spec.cache.glob("*.npz") if ours.fullmatch(p.name)])
    return x, y


def _load_arrays(spec: DataSpec, rows: list[IndexRow]) -> tuple[np.ndarray, np.ndarray]:
    loader = ImageLoader(spec)
    if spec.task == "segmentation":
        pairs = [loader.pair(r.image, r.target) for r in rows]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    x = np.stack([loader.image(r.image) for r in rows])
    return x, np.array([r.target for r in rows], dtype=np.int64)


def _cache_key(spec: DataSpec, rows: list[IndexRow]) -> str:
    files = []
    for row in rows:
        for path in (row.image, row.target) if isinstance(row.target, Path) else (row.image,):
            members = sorted(path.iterdir()) if path.is_dir() else [path]
            stats = [(m, m.stat()) for m in members]  # a replaced file: new inode or ctime
            files += [(str(m), s.st_size, s.st_mtime_ns, s.st_ino, s.st_ctime_ns) for m, s in stats]
    facts = {
        "version": _CACHE_VERSION,
        "spec": spec.fingerprint(),
        "rows": [(str(r.image), str(r.target)) for r in rows],
        "files": files,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays at ``path``, or None when absent or not what was written."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except (OSError, KeyError, ValueError):
        return None
    if x.dtype != np.float32 or y.dtype != np.int64 or x.ndim != 4 or len(x) != n or len(y) != n:
        return None
    return x, y


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray, *, stale) -> None:
    """Write the arrays to ``path`` (atomically), removing this site's older caches."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = [p for p in stale if p != path]
        # a name of its own: another process may be writing this cache at the same time
        handle, part = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, x=x, y=y)
            os.replace(part, path)
        finally:
            Path(part).unlink(missing_ok=True)  # gone once replaced; a failed write's part
        for p in old:
            p.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(
            f"{path}: cannot write the cache ({exc.strerror}); fix cache: in the spec"
        ) from None
