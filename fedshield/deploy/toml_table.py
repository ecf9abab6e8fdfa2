"""Reading one table of a deployment's TOML file with errors that name the file and the key.

Every check raises :class:`~fedshield.errors.ConfigError` saying where (``site.toml:
[superlink] ca_cert``) and what to write instead: an unknown key, a missing required key, a
value of the wrong type, a path that does not exist. Relative paths are read from the folder
of the file that names them.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, as Flower's dependency
    import tomli as tomllib

from fedshield.errors import ConfigError

__all__ = ["Table", "load_toml"]


def load_toml(path: Path) -> dict:
    """The document in ``path``, or a ConfigError naming the file and what is wrong."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


class Table:
    """One table's values, taken key by key; :meth:`finish` refuses what was not taken."""

    def __init__(self, values: object, *, file: Path, name: str | None = None) -> None:
        self.file, self.name = Path(file), name
        if not isinstance(values, dict):
            raise ConfigError(f"{self._where(None)}must be a table, got {_kind(values)}")
        self.values = dict(values)
        self._taken: set[str] = set()

    def _where(self, key: str | None) -> str:
        table = f" [{self.name}]" if self.name else ""
        return f"{self.file}:{table}{f' {key}' if key else ''}: "

    def error(self, key: str | None, message: str) -> ConfigError:
        """A ConfigError about ``key`` of this table."""
        return ConfigError(self._where(key) + message)

    def has(self, key: str) -> bool:
        """Whether ``key`` is given."""
        return key in self.values

    def take(self, key: str, kind: object, *, default: object = ..., what: str = "") -> object:
        """``key``'s value, checked against the type ``kind`` (``int``, ``float``, ``str``,
        ``list[str]``, ``float | None``...); ``default`` when absent (required without one)."""
        self._taken.add(key)
        if key not in self.values:
            if default is ...:
                hint = f" ({what})" if what else ""
                raise self.error(key, f"missing: this key is required{hint}")
            return default
        value = self.values[key]
        if not _matches(value, kind):
            raise self.error(key, f"expected {_describe(kind)}, got {_kind(value)} {value!r}")
        return float(value) if kind is float else value

    def path(self, key: str, *, default: object = ..., exists: bool = True, what: str = ""):
        """``key`` as a path relative to the file's folder; with ``exists``, an existing file."""
        text = self.take(key, str, default=default, what=what)
        if text is None:
            return None
        path = (self.file.parent / Path(text).expanduser()).resolve()
        if exists and not path.is_file():
            raise self.error(key, f"{path} does not exist (or is not a file)")
        return path

    def table(self, key: str, *, required: bool = False) -> Table | None:
        """The sub-table ``key`` (``None`` when absent and not ``required``)."""
        self._taken.add(key)
        if key not in self.values:
            if required:
                raise self.error(key, "missing: this table is required")
            return None
        name = f"{self.name}.{key}" if self.name else key
        return Table(self.values[key], file=self.file, name=name)

    def finish(self, allowed_hint: str = "") -> None:
        """Refuse every key not taken (a typo, or another file's key)."""
        unknown = sorted(set(self.values) - self._taken)
        if unknown:
            known = ", ".join(sorted(self._taken))
            raise self.error(
                unknown[0], f"unknown key{allowed_hint and ' (' + allowed_hint + ')'}; "
                f"the keys here are: {known}"
            )  # fmt: skip


def _matches(value: object, kind: object) -> bool:
    """Whether a TOML value fits ``kind`` (an int is a float; a bool is no number)."""
    if kind is typing.Any:
        return True
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if kind is None or kind is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(kind)
        return isinstance(value, dict) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(kind, type) and isinstance(value, kind)


def _describe(kind: object) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in typing.get_args(kind) if k is not type(None))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(kind) is list:
        return f"a list of {_describe(typing.get_args(kind)[0]).removeprefix('a ')}s"
    if typing.get_origin(kind) is dict:
        return "a table"
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip
