"""A site's data spec: where its own images are and how to prepare them (``docs/data.md``).

A spec is a small YAML or JSON file a hospital writes once. It names only that site's folder:
a deployment's site process reads it and nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedshield.errors import ConfigError

__all__ = ["CSV_HEADERS", "INTENSITIES", "VOLUMES", "DataSpec"]

# The CSV header each task's index file starts with (path relative to the spec's root).
CSV_HEADERS = {"classification": ("path", "label"), "segmentation": ("image", "mask")}
INTENSITIES = ("minmax",)  # or [low, high]: a fixed window mapped to [0, 1], clipped
VOLUMES = ("refuse", "middle-slice")  # what a 3-D volume becomes: the models are 2-D
_SEGMENTATION_CLASSES = ("background", "lesion")


@dataclass(frozen=True)
class DataSpec:
    """One site's own image folder and its preprocessing.

    Example (``site-a.yaml``; relative paths are relative to the spec file)::

        name: hospital-a
        root: images/            # every path in the CSV is relative to it
        labels: labels.csv       # path,label (classification) or image,mask (segmentation)
        classes: [benign, malignant]
        size: [64, 64]
        cache: .cache/

    Args:
        name: the site's name in results (default: the spec file's stem).
        root: the folder holding the images and the CSV.
        labels: the CSV, relative to ``root``.
        classes: class names, in the order of their indices (every site lists the same);
            a CSV label is a name of this list or its index.
        task: ``classification`` or ``segmentation`` (masks of class indices, 0 background).
        size: ``(H, W)`` every image is resized to; None: every image must share one shape.
        channels: 1 (grayscale) or 3 (RGB); an image with another count is refused.
        intensity: ``minmax`` (each image scaled to [0, 1]) or ``(low, high)`` (a fixed
            window, e.g. CT Hounsfield units, mapped to [0, 1] and clipped).
        volumes: ``refuse`` (default) or ``middle-slice`` (a 3-D volume's middle slice
            along its last axis).
        test_fraction: the share of images held out for the site's test set (stratified by
            label for classification).
        seed: the split's seed (fixed: the same split at every load).
        cache: a folder for the preprocessed arrays (None: no cache).
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    labels: Path = Path("labels.csv")
    task: str = "classification"
    size: tuple[int, int] | None = None
    channels: int = 1
    intensity: str | tuple[float, float] = "minmax"
    volumes: str = "refuse"
    test_fraction: float = 0.2
    seed: int = 0
    cache: Path | None = None

    def __post_init__(self) -> None:
        check = self._check
        check(isinstance(self.name, str) and self.name.strip(), "name", "a non-empty string")
        check(isinstance(self.root, Path), "root", "a path")
        check(isinstance(self.labels, Path), "labels", "a path")
        check(self.task in CSV_HEADERS, "task", " or ".join(CSV_HEADERS))
        _check_classes(self.classes, self.task)
        check(self.size is None or _is_size(self.size), "size", "[height, width] in 1..4096")
        check(self.channels in (1, 3) and _is_int(self.channels), "channels", "1 or 3")
        check(
            self.intensity in INTENSITIES or _is_window(self.intensity),
            "intensity", "minmax or [low, high] with low < high",
        )  # fmt: skip
        check(self.volumes in VOLUMES, "volumes", " or ".join(VOLUMES))
        check(
            _is_number(self.test_fraction) and 0 < self.test_fraction < 1,
            "test_fraction", "a number strictly between 0 and 1",
        )  # fmt: skip
        check(_is_int(self.seed) and self.seed >= 0, "seed", "a non-negative integer")
        check(self.cache is None or isinstance(self.cache, Path), "cache", "a path or null")

    def _check(self, ok: Any, key: str, what: str) -> None:
        _need(ok, key, what, getattr(self, key))

    @property
    def csv_path(self) -> Path:
        """The CSV's path."""
        return self.root / self.labels

    @classmethod
    def load(cls, path: str | os.PathLike) -> DataSpec:
        """The spec in the YAML (or ``.json``) file ``path``.

        Raises:
            ConfigError: naming ``path``, when it cannot be read or parsed, has a key this
                spec does not know, lacks ``root`` or ``classes``, or has a value of the
                wrong type or range.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"data spec {path}: cannot read it ({exc})") from None
        try:
            raw = _parse(text, json_file=path.suffix.lower() == ".json")
        except ValueError as exc:
            raise ConfigError(f"data spec {path}: not valid YAML/JSON ({exc})") from None
        try:
            return cls(**_arguments(raw, path))
        except ConfigError as exc:
            raise ConfigError(f"data spec {path}: {exc}") from None

    def fingerprint(self) -> dict[str, Any]:
        """What the preprocessed arrays depend on, as plain data (the cache's key; the name
        and the cache folder are not part of it, nor the split)."""
        skip = ("name", "cache", "test_fraction", "seed")
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name not in skip}


def _parse(text: str, *, json_file: bool) -> Any:
    if json_file:
        return json.loads(text)
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).replace("\n", " ")) from None


def _arguments(raw: Any, path: Path) -> dict[str, Any]:
    """``DataSpec``'s keyword arguments from the parsed file ``raw``; relative ``root`` and
    ``cache`` are taken from the spec file's folder."""
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of keys (name, root, labels, classes, ...)")
    known = {f.name for f in fields(DataSpec)}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("root", "classes") if raw.get("task") != "segmentation" else ("root",):
        if key not in raw:
            raise ConfigError(f"missing key {key!r}")
    args = dict(raw)
    args.setdefault("name", path.stem)
    for key in ("root", "labels", "cache"):
        value = args.get(key)
        if value is not None:
            _need(isinstance(value, str) and value, key, "a path (a non-empty string)", value)
            args[key] = Path(value)
    base = path.parent
    args["root"] = (base / args["root"]).resolve()
    if args.get("cache") is not None:
        args["cache"] = (base / args["cache"]).resolve()
    args["classes"] = _class_names(args.get("classes", list(_SEGMENTATION_CLASSES)))
    for key in ("size", "intensity"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    return args


def _class_names(value: Any) -> tuple[str, ...]:
    """The class list as names; integers become their decimal text, anything else is
    refused (YAML reads ``no``/``yes`` as booleans: quote such names)."""
    if not isinstance(value, list) or not all(
        isinstance(c, str | int) and not isinstance(c, bool) for c in value
    ):
        raise ConfigError(
            f"classes must be a list of names (strings or integers), got {value!r}; quote "
            'names YAML reads as other types ("no", "yes", "on", "1.5")'
        )
    return tuple(str(c).strip() for c in value)


def _check_classes(classes: Any, task: str) -> None:
    _need(
        isinstance(classes, tuple) and all(isinstance(c, str) and c for c in classes),
        "classes", "a list of non-empty names", classes,
    )  # fmt: skip
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes {list(classes)} lists a name twice")
    if task == "segmentation":
        _need(
            len(classes) == 2, "classes", "two names for segmentation (background, lesion)", classes
        )
    else:
        _need(len(classes) >= 2, "classes", "at least two names", classes)


def _need(ok: Any, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def _is_size(size: Any) -> bool:
    return (
        isinstance(size, tuple)
        and len(size) == 2
        and all(_is_int(s) and 1 <= s <= 4096 for s in size)
    )


def _is_window(window: Any) -> bool:
    return (
        isinstance(window, tuple)
        and len(window) == 2
        and all(_is_number(v) for v in window)
        and window[0] < window[1]
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
