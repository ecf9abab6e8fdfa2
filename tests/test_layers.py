"""DESIGN.md's layer rules: the lower layers import neither torch nor the engine."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fedshield"
TORCH_FREE = ("crypto", "compress", "aggregation", "protocols", "privacy")


def test_torch_free_layers_import_without_torch():
    code = (
        "import sys\n"
        + "".join(f"import fedshield.{m}\n" for m in TORCH_FREE)
        + "import fedshield.wire, fedshield.errors\n"
        + "bad = [m for m in ('torch', 'monai', 'fedshield.engine') if m in sys.modules]\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lower_layers_never_import_upwards():
    for layer in TORCH_FREE:
        for path in (PACKAGE / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert not name.startswith(
                        (
                            "torch",
                            "monai",
                            "fedshield.engine",
                            "fedshield.data",
                            "fedshield.cli",
                            "fedshield.attacks",
                            "fedshield.audit",
                            "fedshield.overhead",
                        )
                    ), (path, name)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_crypto_primitives_import_no_protocol():
    for path in (PACKAGE / "crypto").rglob("*.py"):
        bad = [n for n in _imports(path) if n.startswith("fedshield.protocols")]
        assert not bad, (path, bad)


def test_the_site_runtime_reaches_no_server_code():
    """``engine/site.py`` and everything it imports, transitively inside fedshield."""
    server = (
        "fedshield.engine.server_round",
        "fedshield.engine.federation",
        "fedshield.engine.runner",
        "fedshield.engine.flower",
        "fedshield.aggregation",
    )
    seen, todo = set(), ["fedshield.engine.site"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        for name in _imports(path):
            if name.startswith("fedshield."):
                assert not name.startswith(server), f"{module} imports {name}"
                todo.append(name)
    assert "fedshield.engine.compression" in seen  # the walk did reach the site's modules


def test_modules_and_functions_stay_small():
    """Modules under 400 lines, functions under 60 (argument parsers excepted)."""
    top = PACKAGE.parent
    for folder in ("fedshield", "benchmarks", "examples", "tests"):
        for path in (top / folder).rglob("*.py"):
            source = path.read_text()
            assert source.count("\n") <= 400, f"{path} has {source.count(chr(10))} lines"
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    assert length <= 60 or node.name == "_parser", (path, node.name, length)
