"""No module of riskmesh can unpickle: an AST scan of services/ and riskmesh/.

Refused: any reference to pickle's `load`, `loads` or `Unpickler` (called, aliased,
imported by name, subclassed or passed around — `SimpleNamespace(loads=pickle.loads)`
counts), through `pickle`, `_pickle` or `cPickle` under any alias, and `numpy.load` with
`allow_pickle` anything but False. Peers' bytes are decoded by services.lasso.core.wire.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("services", "riskmesh")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle"}
FORBIDDEN = {"load", "loads", "Unpickler"}


def _allows_pickle(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "allow_pickle":
            return not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
        if keyword.arg is None:
            return True  # **kwargs could carry it
    return len(call.args) >= 3  # numpy.load(file, mmap_mode, allow_pickle, ...)


def unpickling_sites(source: str, filename: str = "<source>") -> list[str]:
    """'line: what' for every way `source` could unpickle."""
    tree = ast.parse(source, filename)
    pickle_aliases: set[str] = set()
    numpy_aliases: set[str] = set()
    forbidden_names: dict[str, str] = {}  # local name → pickle.X
    numpy_load_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in PICKLE_MODULES:
                    pickle_aliases.add(alias.asname or alias.name)
                if alias.name == "numpy":
                    numpy_aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                if node.module in PICKLE_MODULES and (alias.name in FORBIDDEN or alias.name == "*"):
                    forbidden_names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if node.module == "numpy" and alias.name == "load":
                    numpy_load_names.add(alias.asname or alias.name)
    sites = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module in PICKLE_MODULES
            and any(a.name in FORBIDDEN or a.name == "*" for a in node.names)
        ):
            sites.append(f"{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in pickle_aliases and node.attr in FORBIDDEN:
                sites.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in forbidden_names and isinstance(node.ctx, ast.Load):
            sites.append(f"{node.lineno}: {node.id} ({forbidden_names[node.id]})")
        if isinstance(node, ast.Call) and _allows_pickle(node):
            func = node.func
            is_numpy_load = (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and isinstance(func.value, ast.Name)
                and func.value.id in numpy_aliases
            ) or (isinstance(func, ast.Name) and func.id in numpy_load_names)
            if is_numpy_load:
                sites.append(f"{node.lineno}: numpy.load with allow_pickle")
    return sites


def python_files() -> list[Path]:
    return sorted(path for top in SCANNED for path in (ROOT / top).rglob("*.py"))


def test_no_module_under_services_or_riskmesh_unpickles() -> None:
    files = python_files()
    assert len(files) > 100  # the scan sees the code base
    found = {
        str(path.relative_to(ROOT)): sites for path in files if (sites := unpickling_sites(path.read_text(), str(path)))
    }
    assert found == {}


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.loads(b'')",
        "import pickle as p\nx = p.load(f)",
        "import _pickle\n_pickle.Unpickler(f).load()",
        "import pickle\nclass U(pickle.Unpickler): pass",
        "import pickle\nfrom types import SimpleNamespace\nns = SimpleNamespace(loads=pickle.loads)",
        "from pickle import loads\nloads(b'')",
        "from pickle import loads as decode\ndecode(b'')",
        "from pickle import *",
        "import numpy as np\nnp.load('f.npy', allow_pickle=True)",
        "import numpy\nnumpy.load('f.npy', None, True)",
        "from numpy import load\nload('f.npy', allow_pickle=flag)",
        "import numpy as np\nnp.load('f.npy', **options)",
    ],
)
def test_the_scan_finds_each_way_to_unpickle(source: str) -> None:
    assert unpickling_sites(source)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.dumps(1)",
        "import numpy as np\nnp.load('f.npy')\nnp.load('f.npy', allow_pickle=False)",
        "import json\njson.loads('1')",
        "from services.lasso.core import wire\nwire.loads(b'')",
    ],
)
def test_the_scan_passes_what_cannot_unpickle(source: str) -> None:
    assert unpickling_sites(source) == []
