"""Build etcd and the Kubernetes control plane from the Go module proxy, once per version.

``go install k8s.io/kubernetes/cmd/...@v`` cannot work: k8s.io/kubernetes replaces its
staging modules (k8s.io/api, k8s.io/client-go, ...) with local directories. So a small
wrapper module outside the repository requires k8s.io/kubernetes and replaces each staging
module by its published v0.Y.Z twin, read from the go.mod that the proxy serves. etcd gets
the same treatment with a wrapper ``main`` calling etcdmain.Main.

Builds take minutes, so every phase is timed and reported while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kopeck.localcluster.versions import (
    ETCD_VERSION,
    KUBE_BINARIES,
    KUBERNETES_VERSION,
    Binaries,
    binaries,
    cache_root,
)

MIN_GO = (1, 25)
"""Kubernetes 1.35 declares go 1.25.0 in its go.mod."""

PACKAGE_LINE = re.compile(r"^[\w.\-]+(/[\w.\-~+]+)+$")
"""A line of ``go build -v``: the import path of a package it just compiled."""

TICK_SECONDS = 15.0
"""How often a non-interactive build prints that it is still alive."""


class BuildError(RuntimeError):
    """A build step failed; the message says which and shows the tail of its output."""


@dataclass
class Progress:
    """Prints phases with timings; a live line on a terminal, a line per tick otherwise."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)
    _last_tick: float = 0.0

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self._t0:6.1f}s] {message}", file=self.stream, flush=True)

    def tick(self, message: str) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.stream.isatty():
            print(f"\r\x1b[K         {message}", end="", file=self.stream, flush=True)
        elif now - self._last_tick >= TICK_SECONDS:
            self._last_tick = now
            print(f"         {message}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.say(f"{name} ...")
        start = time.monotonic()
        self._last_tick = start
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            self.timings.append((name, elapsed))
            if not self.quiet and self.stream.isatty():
                print("\r\x1b[K", end="", file=self.stream)
            self.say(f"{name}: {_fmt(elapsed)}")

    def summary(self) -> str:
        """Where the time went, longest phase first."""
        total = sum(t for _, t in self.timings)
        lines = [f"build time {_fmt(total)}; where it went:"]
        for name, t in sorted(self.timings, key=lambda nt: -nt[1]):
            share = 100 * t / total if total else 0
            lines.append(f"  {_fmt(t):>8}  {share:3.0f}%  {name}")
        return "\n".join(lines)


def _fmt(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"


def go_binary() -> str:
    """The `go` command, checked to be new enough; a clear error otherwise."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"`go` (>= {MIN_GO[0]}.{MIN_GO[1]}) is not on PATH; it builds the control plane. "
            "Install Go, or point KOPECK_KUBE_BIN_DIR / KOPECK_ETCD_BIN_DIR at prebuilt binaries."
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    match = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    if match is None or (int(match[1]), int(match[2])) < MIN_GO:
        raise BuildError(
            f"{go} is {out.stdout.strip()}; Kubernetes {KUBERNETES_VERSION} needs "
            f"go >= {MIN_GO[0]}.{MIN_GO[1]}"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
    env["GO111MODULE"] = "on"
    return env


def _run_go(
    argv: Sequence[str],
    cwd: Path,
    log: Path,
    progress: Progress,
    label: str,
) -> list[str]:
    """Run a go command, stream its output to a log and count what it does for the ticker.

    ``go build -v`` prints each package it compiles and ``go mod`` each module it downloads,
    so the counts show where a long phase stands; a silent stretch at the end is the linker.
    """
    lines: list[str] = []
    start = time.monotonic()
    with log.open("a") as logf:
        logf.write(f"\n$ (cd {cwd} && {' '.join(argv)})\n")
        logf.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=_go_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        stdout = proc.stdout

        def reader() -> None:
            for line in stdout:
                logf.write(line)
                lines.append(line.rstrip("\n"))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(timeout=1.0)
            compiled = sum(1 for ln in lines if PACKAGE_LINE.match(ln))
            downloaded = sum(1 for ln in lines if ln.startswith("go: downloading"))
            what = f"{compiled} packages compiled" if compiled else ""
            if downloaded:
                what = f"{downloaded} modules downloaded" + (f", {what}" if what else "")
            last = lines[-1][:70] if lines else "starting"
            progress.tick(
                f"{label}: {what or 'working'} ({_fmt(time.monotonic() - start)}; {last})"
            )
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-25:])
        raise BuildError(f"{label} failed (exit {rc}); full log: {log}\n{tail}")
    return lines


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One build per cache at a time; a second caller waits and then finds the binaries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class UpstreamMod:
    """What the wrapper module copies from k8s.io/kubernetes' own go.mod."""

    go_line: str
    godebug: list[str]
    staging: list[str]


def parse_kubernetes_mod(text: str) -> UpstreamMod:
    """Staging modules (``k8s.io/X => ./staging/...``), go line and godebug defaults."""
    staging = re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s+=>\s+\./staging/", text, re.M)
    go_match = re.search(r"^go\s+(\S+)", text, re.M)
    godebug = re.findall(r"^(godebug\s+.+)$", text, re.M)
    if not staging or go_match is None:
        raise BuildError("k8s.io/kubernetes go.mod has no staging replaces; unknown layout")
    return UpstreamMod(go_line=go_match[1], godebug=godebug, staging=sorted(set(staging)))


def kube_wrapper_gomod(kube_version: str, upstream: UpstreamMod) -> str:
    """go.mod of the wrapper: require kubernetes, replace each staging module by v0.Y.Z."""
    staging_version = "v0." + kube_version.removeprefix("v").split(".", 1)[1]
    lines = ["module kopeck.local/k8sbuild", "", f"go {upstream.go_line}", ""]
    lines += [*upstream.godebug, ""] if upstream.godebug else []
    lines += [f"require k8s.io/kubernetes {kube_version}", ""]
    lines += [f"replace {mod} => {mod} {staging_version}" for mod in upstream.staging]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def _ldflags(kube_version: str) -> str:
    major, minor = kube_version.removeprefix("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={kube_version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def build_kubernetes(
    kube_version: str = KUBERNETES_VERSION,
    names: Sequence[str] = KUBE_BINARIES,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Build the missing Kubernetes binaries among ``names``; returns their directory."""
    progress = progress or Progress()
    base = cache_root() / "kubernetes" / kube_version
    out = out_dir or base / "bin"
    src = base / "src"
    log = base / "build.log"
    with locked(base / ".lock"):
        todo = [n for n in names if not os.access(out / n, os.X_OK)]
        if not todo:
            return out
        go = go_binary()
        src.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        progress.say(f"building Kubernetes {kube_version} ({', '.join(todo)}) in {base}")
        with progress.phase(f"k8s {kube_version}: fetch k8s.io/kubernetes from the module proxy"):
            lines = _run_go(
                [go, "mod", "download", "-json", f"k8s.io/kubernetes@{kube_version}"],
                cwd=src.parent,
                log=log,
                progress=progress,
                label="go mod download",
            )
            info = json.loads("\n".join(ln for ln in lines if not ln.startswith("go:")))
            if info.get("Error"):
                raise BuildError(f"cannot fetch k8s.io/kubernetes@{kube_version}: {info['Error']}")
            upstream = parse_kubernetes_mod(Path(info["GoMod"]).read_text())
        # go mod tidy rewrites go.mod, so the wrapper's own text is kept apart in go.mod.in
        changed = _write_if_changed(src / "go.mod.in", kube_wrapper_gomod(kube_version, upstream))
        if changed or not (src / "go.mod").exists():
            shutil.copy(src / "go.mod.in", src / "go.mod")
        imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{n}"' for n in KUBE_BINARIES)
        _write_if_changed(
            src / "tools.go", f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"
        )
        with progress.phase(
            f"k8s {kube_version}: download dependencies ({len(upstream.staging)} staging "
            "modules + third party; go mod tidy)"
        ):
            _run_go([go, "mod", "tidy"], src, log, progress, "go mod tidy")
        for name in todo:
            with progress.phase(f"k8s {kube_version}: compile and link {name}"):
                tmp = out / f".{name}.tmp"
                _run_go(
                    [
                        go, "build", "-v", "-trimpath", "-ldflags", _ldflags(kube_version),
                        "-o", str(tmp), f"k8s.io/kubernetes/cmd/{name}",
                    ],
                    src, log, progress, f"go build {name}",
                )  # fmt: skip
                tmp.replace(out / name)
    return out


def build_etcd(
    etcd_version: str = ETCD_VERSION,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Build etcd from go.etcd.io/etcd/server/v3 via a wrapper main; returns its directory."""
    progress = progress or Progress()
    base = cache_root() / "etcd" / etcd_version
    out = out_dir or base / "bin"
    src = base / "src"
    log = base / "build.log"
    with locked(base / ".lock"):
        if os.access(out / "etcd", os.X_OK):
            return out
        go = go_binary()
        src.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        progress.say(f"building etcd {etcd_version} in {base}")
        _write_if_changed(
            src / "go.mod",
            f"module kopeck.local/etcdbuild\n\ngo {MIN_GO[0]}.{MIN_GO[1]}.0\n\n"
            f"require go.etcd.io/etcd/server/v3 {etcd_version}\n",
        )
        _write_if_changed(
            src / "main.go",
            'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
            "func main() { etcdmain.Main(os.Args) }\n",
        )
        with progress.phase(f"etcd {etcd_version}: download modules (go mod tidy)"):
            _run_go([go, "mod", "tidy"], src, log, progress, "go mod tidy")
        with progress.phase(f"etcd {etcd_version}: compile and link etcd"):
            tmp = out / ".etcd.tmp"
            _run_go(
                [go, "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."],
                src, log, progress, "go build etcd",
            )  # fmt: skip
            tmp.replace(out / "etcd")
    return out


def ensure_binaries(
    kube_version: str = KUBERNETES_VERSION,
    etcd_version: str = ETCD_VERSION,
    progress: Progress | None = None,
    kube_names: Sequence[str] = KUBE_BINARIES,
    with_etcd: bool = True,
) -> Binaries:
    """The binaries of these versions, building only what is missing from the cache."""
    bins = binaries(kube_version, etcd_version)
    missing = {p.name for p in bins.missing()}
    wanted_kube = [n for n in kube_names if n in missing]
    want_etcd = with_etcd and "etcd" in missing
    if not wanted_kube and not want_etcd:
        return bins
    for var, need in (("KOPECK_KUBE_BIN_DIR", wanted_kube), ("KOPECK_ETCD_BIN_DIR", want_etcd)):
        if need and os.environ.get(var):
            raise BuildError(f"{var}={os.environ[var]} lacks {need}; unset it to build them")
    progress = progress or Progress()
    if want_etcd:
        build_etcd(etcd_version, progress=progress)
    if wanted_kube:
        build_kubernetes(kube_version, wanted_kube, progress=progress)
    progress.say(progress.summary())
    return bins


def go_install(name: str, spec: str, gobin: Path, log: Path, progress: Progress,
               ldflags: str = "-s -w") -> None:
    """``go install -v spec`` (package@version) into gobin, with its output in a log and a
    ticker of what it did: the Go tools the tests and benches build beside the control
    plane (kube-score, kwok)."""
    env = dict(os.environ, GOBIN=str(gobin), GOTOOLCHAIN="local", CGO_ENABLED="0")
    env.pop("GOFLAGS", None)  # -mod=... is refused with package@version
    argv = [go_binary(), "install", "-v", "-trimpath", "-ldflags", ldflags, spec]
    lines: list[str] = []
    with log.open("a") as logf:
        logf.write(f"\n$ {' '.join(argv)}\n")
        logf.flush()
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        stdout = proc.stdout

        def reader() -> None:
            for line in stdout:
                logf.write(line)
                lines.append(line.rstrip("\n"))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        start = time.monotonic()
        while thread.is_alive():
            thread.join(timeout=1.0)
            downloaded = sum(1 for ln in lines if ln.startswith("go: downloading"))
            progress.tick(
                f"go install {name}: {downloaded} modules downloaded, "
                f"{len(lines) - downloaded} packages compiled ({time.monotonic() - start:.0f}s)"
            )
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-25:])
        raise BuildError(f"go install {name} failed (exit {rc}); full log: {log}\n{tail}")
