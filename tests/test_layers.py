"""The direction of imports (DESIGN.md): schedules <- store <- service <- grpc <- app;
the server never imports torch; the engine is stdlib only; the client never imports
server code, and its core (connection, errors, plans, admin calls) no torch; the CLI
uses the client core (+ the engine for local plots, + the app for ``serve`` only).
Checked on the source files themselves, so a new import cannot sneak in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"paramsched.server": ROOT / "server", "paramsched.client": ROOT / "client",
            "paramsched.cli": ROOT / "cli", "paramsched": ROOT / "proto" / "paramsched",
            "paramsched.integrations": ROOT / "client" / "integrations"}
#: the client's torch layer: everything else in paramsched.client is its core.
TORCH_LAYER = ("paramsched.client.handle", "paramsched.client.optim", "paramsched.client.spec",
               "paramsched.client.ranks", "paramsched.client.runs",
               "paramsched.client.integrations")


def modules(package: str) -> dict[str, Path]:
    base = PACKAGES[package]
    out = {}
    for path in base.rglob("*.py"):
        if package == "paramsched.client" and "integrations" in path.parts:
            continue  # its own package: paramsched.integrations
        rel = path.relative_to(base).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join([package, *parts])] = path
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Absolute names of everything ``module`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def imports_within(package: str) -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules(package).items()}


LAYERS = ["app", "grpc", "service", "store", "schedules"]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["paramsched", "server"] or len(parts) < 3:
        return None
    return LAYERS.index(parts[2]) if parts[2] in LAYERS else None


def test_server_layers_only_import_downwards():
    bad = []
    for module, names in imports_within("paramsched.server").items():
        mine = layer_of(module)
        for name in names:
            theirs = layer_of(name)
            if mine is not None and theirs is not None and theirs < mine:
                bad.append(f"{module} imports {name}")
    assert not bad, bad


@pytest.mark.parametrize(("package", "forbidden"), [
    ("paramsched.server", ("torch", "mmengine", "paramsched.client", "paramsched.cli")),
    ("paramsched.client", ("paramsched.server", "paramsched.cli", "mmengine", "redis")),
    ("paramsched.integrations", ("paramsched.server", "paramsched.cli", "redis")),
    ("paramsched.cli", ("torch", "mmengine", "redis", "paramsched.server.service",
                        "paramsched.server.store", "paramsched.server.grpc", *TORCH_LAYER)),
])
def test_forbidden_imports(package: str, forbidden: tuple[str, ...]):
    bad = [f"{m} imports {n}" for m, names in imports_within(package).items() for n in names
           if any(n == f or n.startswith(f + ".") for f in forbidden)]
    assert not bad, bad


def test_schedule_engine_is_standard_library_only():
    engine = {m: n for m, n in imports_within("paramsched.server").items()
              if m.startswith("paramsched.server.schedules")}
    assert engine
    for module, names in engine.items():
        for name in names:
            top = name.split(".")[0]
            assert (top == "paramsched" and name.startswith("paramsched.server.schedules")) or (
                top in sys.stdlib_module_names or top == "__future__"), f"{module} imports {name}"


def test_the_cli_is_a_layer_on_the_client_core():
    """One gRPC client in the codebase: the CLI's server calls go through
    ``paramsched.Client`` (no stub of its own, except the standard health check);
    the server app only for ``serve``, in the entry point."""
    cli = imports_within("paramsched.cli")
    assert "paramsched.cli.changes" in cli
    bad = [f"{m} imports {n}" for m, names in cli.items() for n in names
           if n.startswith("paramsched.api.v1.scheduler_pb2_grpc") or (
               n.startswith("paramsched.server.app") and m != "paramsched.cli")]
    assert not bad, bad
    assert any(n.startswith("paramsched.client") for names in cli.values() for n in names)


def test_the_client_core_never_imports_torch():
    core = {m: n for m, n in imports_within("paramsched.client").items()
            if not m.startswith(TORCH_LAYER)}
    assert {"paramsched.client.admin", "paramsched.client._rpc"} <= set(core)
    imported = {m: sorted(n for n in names if n.startswith("paramsched.client"))
                for m, names in core.items()}
    assert imported
    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` now fails
            "import paramsched, paramsched.cli\n"
            "from paramsched import Client\n"
            "client = Client('127.0.0.1:1'); client.close()\n"
            "assert callable(client.list_jobs) and callable(client.decay)\n"
            "assert not any(m.startswith('paramsched.client.handle') for m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("framework", ["transformers", "accelerate"])
def test_hugging_face_is_imported_only_by_its_integration(framework: str):
    """``transformers`` / ``accelerate``: only ``paramsched.integrations.transformers``."""
    found = {m: names for package in PACKAGES for m, names in imports_within(package).items()}
    bad = [f"{m} imports {n}" for m, names in found.items() for n in names
           if n.split(".")[0] == framework and m != "paramsched.integrations.transformers"]
    assert not bad, bad
    assert any(n.split(".")[0] == "transformers"
               for n in found["paramsched.integrations.transformers"])


@pytest.mark.parametrize("framework", ["lightning", "pytorch_lightning"])
def test_lightning_is_imported_only_by_its_integration(framework: str):
    """``lightning``: only ``paramsched.integrations.lightning``."""
    found = {m: names for package in PACKAGES for m, names in imports_within(package).items()}
    bad = [f"{m} imports {n}" for m, names in found.items() for n in names
           if n.split(".")[0] == framework and m != "paramsched.integrations.lightning"]
    assert not bad, bad
    assert any(n.split(".")[0] == "lightning"
               for n in found["paramsched.integrations.lightning"])
