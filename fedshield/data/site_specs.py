"""A run's sites from one data spec each (``fedshield run --site-data a.yaml b.yaml ...``):
loaded and checked to fit one model, or only one of them (a deployment's site process)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from fedshield.data.folder import load_spec
from fedshield.data.sites import SiteData
from fedshield.data.spec import DataSpec
from fedshield.errors import ConfigError

__all__ = ["SITE_DATA", "check_site_data", "load_site_specs", "spec_class_names", "spec_classes"]

SITE_DATA = "site-data"  # a run's dataset when its sites come from data specs


def load_site_specs(
    paths: Sequence[str | os.PathLike],
    *,
    only: int | None = None,
    task: str = "classification",
    classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> list[SiteData]:
    """One site per data spec (``fedshield run --site-data``), checked to agree on the task,
    the classes, the channels and the prepared image size (one model for every site).

    Args:
        only: that site alone: only its spec and its folder are read (a deployment's site
            process never opens another site's data); the list then has one element.
        task: the run's task; every spec must be for it.
        classes: the run's number of classes, if it sets one: every spec must list that many.
        class_names: the run's class list, if it pins one (a deployment: each host reads its
            own spec alone, so the run's options carry the list): every spec must list exactly
            these, in this order (label ``i`` is ``class_names[i]`` at every site).

    Raises:
        ConfigError: the specs disagree or share a site name, or one is for another
            ``task``, number of ``classes`` or ``class_names``.
    """
    specs = _specs(paths, only)
    for spec, path in specs:
        _check_spec(spec, path, task=task, classes=classes, class_names=class_names, own=only)
    names = [spec.name for spec, _ in specs]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"data specs {', '.join(p for _, p in specs)} give the site names {names}: each "
            "site needs its own (name: in the spec, else the file's stem)"
        )
    sites = [load_spec(spec) for spec, _ in specs]
    shapes = {site.train_x.shape[1:]: path for site, (_, path) in zip(sites, specs, strict=True)}
    if len(shapes) > 1:
        found = "; ".join(f"{path}: {shape}" for shape, path in shapes.items())
        raise ConfigError(
            f"the sites' images differ in (channels, H, W) ({found}): one model needs one "
            "input; give every spec the same size: and channels:"
        )
    return sites


def _check_spec(
    spec: DataSpec, path: str, *, task: str, classes: int | None,
    class_names: Sequence[str] | None, own: int | None,
) -> None:  # fmt: skip
    """Refuse a spec for another task, number of classes or class list than the run's."""
    if spec.task != task:
        raise ConfigError(
            f"data spec {path} is for {spec.task}; run with --task {spec.task} or fix its task:"
        )
    if classes is not None and classes != len(spec.classes):
        fix = (  # a deployment's site: the run's options must give classes
            "list the federation's classes in this spec, as every site does"
            if own is not None
            else "leave --classes out (the specs give it)"
        )
        raise ConfigError(
            f"the run's classes is {classes}, but data spec {path} lists "
            f"{len(spec.classes)} classes {list(spec.classes)}; {fix}"
        )
    if class_names is not None and list(spec.classes) != list(class_names):
        raise ConfigError(
            f"data spec {path} lists the classes {list(spec.classes)}, but the run's "
            f"class_names are {list(class_names)}: list exactly these, in this order (label "
            "i is class i at every site; another order would swap the model's outputs)"
        )


def spec_classes(paths: Sequence[str | os.PathLike], *, only: int | None = None) -> int:
    """How many classes the data specs ``paths`` list (every spec lists the same;
    ``only``: read that site's spec alone)."""
    return len(_specs(paths, only)[0][0].classes)


def spec_class_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The class list every data spec in ``paths`` gives, in order (they must agree)."""
    return [str(name) for name in _specs(paths, None)[0][0].classes]


def _specs(paths: Sequence[str | os.PathLike], only: int | None) -> list[tuple[DataSpec, str]]:
    """The specs at ``paths`` (``only``: that one), checked to list the same classes."""
    if only is not None and not 0 <= only < len(paths):
        raise ConfigError(f"only must be a site index in 0..{len(paths) - 1}, got {only!r}")
    chosen = list(paths) if only is None else [paths[only]]
    specs = [(DataSpec.load(p), str(p)) for p in chosen]
    first, first_path = specs[0]
    for spec, path in specs[1:]:
        if spec.classes != first.classes:
            raise ConfigError(
                f"data specs {first_path} and {path} list other classes ({list(first.classes)} "
                f"vs {list(spec.classes)}): every site must list the same classes in the same "
                "order (they are the model's outputs)"
            )
    return specs


def check_site_data(paths: Sequence[str | os.PathLike], *, sites: int, dataset: str) -> None:
    """Refuse a run whose ``--site-data`` (one spec per site) contradicts ``--sites`` or
    names a ``--dataset`` too (``synthetic``, the default, stands aside)."""
    if not paths:
        raise ConfigError("--site-data needs one data spec per site (docs/data.md)")
    if len(paths) != sites:
        raise ConfigError(
            f"--site-data gives {len(paths)} spec(s) but --sites is {sites}: one spec per "
            f"site (leave --sites out, or set it to {len(paths)})"
        )
    if dataset not in ("synthetic", SITE_DATA):
        raise ConfigError(f"give --site-data or --dataset {dataset}, not both")
