"""The kubectl plugin: the krew manifest matches the entry point, the verbs are `kopeck
report`, and every flag of every plugin command has a help text."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from kopeck.cli import KUBECTL_PLUGIN, build_kubectl_parser, build_parser, kubectl_main, main
from kopeck.reports.kubectl_cost import VERBS, window_period

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "plugins" / "krew" / "kopeck.yaml"
DUMP = Path(__file__).with_name("reports_dump.json")
_spec = importlib.util.spec_from_file_location("kopeck_krew_build", MANIFEST.with_name("build.py"))
assert _spec is not None and _spec.loader is not None
krew_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(krew_build)


def pyproject() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data


def test_krew_manifest_matches_the_entry_point_and_the_archive() -> None:
    doc = yaml.safe_load(MANIFEST.read_text())
    assert doc["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert doc["kind"] == "Plugin"
    scripts = pyproject()["project"]["scripts"]  # type: ignore[index]
    assert scripts[KUBECTL_PLUGIN] == "kopeck.cli:kubectl_main"
    module, _, func = scripts[KUBECTL_PLUGIN].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert doc["metadata"]["name"] == KUBECTL_PLUGIN.removeprefix("kubectl-") == "kopeck"
    spec = doc["spec"]
    assert spec["version"] == "v" + pyproject()["project"]["version"]  # type: ignore[index]
    assert 0 < len(spec["shortDescription"]) <= 50 and spec["description"].strip()
    assert spec["homepage"].startswith("https://")
    archive = krew_build.archive_bytes()
    assert archive == krew_build.archive_bytes(), "the archive is reproducible"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
    oses: set[str] = set()
    for plat in spec["platforms"]:
        assert plat["bin"] == KUBECTL_PLUGIN
        assert plat["sha256"] == hashlib.sha256(archive).hexdigest(), (
            "stale sha256: run python plugins/krew/build.py DIR --check")
        assert plat["uri"].endswith(f"/{spec['version']}/kubectl-kopeck-{spec['version']}.tar.gz")
        assert any(f["from"] in names and f["from"] == plat["bin"] for f in plat["files"])
        for expr in plat["selector"]["matchExpressions"]:
            assert expr["key"] == "os" and expr["operator"] == "In"
            oses |= set(expr["values"])
    assert {"linux", "darwin"} <= oses
    # every command the description names exists in the plugin
    commands = set(build_kubectl_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"report", "export", "explain-bill", *VERBS} == commands
    for word in ("report", "export", "explain-bill", "namespace", "deployment", "label"):
        assert f"kubectl kopeck {word}" in spec["description"] or word in spec["description"]


def test_the_launcher_in_the_archive_runs_the_plugin(tmp_path: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(krew_build.archive_bytes())) as tar:
        tar.extractall(tmp_path, filter="tar")
    launcher = tmp_path / KUBECTL_PLUGIN
    assert os.access(launcher, os.X_OK)
    env = dict(os.environ, KOPECK_PYTHON=sys.executable)
    proc = subprocess.run([str(launcher), "report", "--help"], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: kubectl kopeck report")
    env["KOPECK_PYTHON"] = str(tmp_path / "no-such-python")
    proc = subprocess.run([str(launcher), "report"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "pip install kopeck" in proc.stderr


def _actions(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            out.append((path, action))
    return out


def test_every_flag_has_help() -> None:
    acts = _actions(build_kubectl_parser(), "kubectl kopeck")
    top = build_parser()
    for name in ("report", "export", "explain-bill"):
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        acts += _actions(sub.choices[name], f"kopeck {name}")
    assert len(acts) > 60
    missing = [f"{path} {a.option_strings or a.dest}" for path, a in acts
               if a.help in (None, "", argparse.SUPPRESS)]
    assert not missing, missing


def test_windows_name_periods() -> None:
    now = dt.datetime(2026, 12, 2, 17, tzinfo=dt.UTC)
    assert window_period("month", now) == "2026-12"
    assert window_period("lastmonth", now) == "2026-11"
    assert window_period("today", now) == "2026-12-02"
    assert window_period("yesterday", now) == "2026-12-01"
    assert window_period("week", now) == "2026-W49"
    assert window_period("lastweek", now) == "2026-W48"
    assert window_period("lastmonth", dt.datetime(2027, 1, 1, tzinfo=dt.UTC)) == "2026-12"
    assert window_period("current", now) is None and window_period("all", now) == "all"
    assert window_period("2026-W47", now) == "2026-W47"


@pytest.mark.parametrize("verb,flags,report", [
    (["namespace"], ["--window", "2026-11", "--historical"],
     ["--by", "namespace", "--period", "2026-11"]),
    (["deployment"], ["--window", "all", "--historical", "-o", "csv"],
     ["--by", "deployment", "--period", "all", "-o", "csv"]),
    (["controller"], ["--window", "2026-11", "-n", "shop", "-o", "json"],
     ["--by", "workload", "--window", "month", "--period", "2026-11", "-n", "shop", "-o",
      "json"]),
    (["label", "-l", "team"], ["--window", "2026-11", "--historical", "--show-all-resources"],
     ["--by", "label:team", "--period", "2026-11", "--show-all-resources"]),
])
def test_kubectl_cost_verbs_print_what_kopeck_report_prints(
    verb: list[str], flags: list[str], report: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert kubectl_main([*verb, *flags, "--from-file", str(DUMP)]) == 0
    plugin = capsys.readouterr().out
    assert main(["report", *report, "--from-file", str(DUMP)]) == 0
    assert plugin == capsys.readouterr().out and plugin.strip()
    assert kubectl_main(["report", *report, "--from-file", str(DUMP)]) == 0
    assert capsys.readouterr().out == plugin


def test_deployment_grouping_keeps_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    totals = {}
    for by in ("namespace", "deployment", "workload"):
        assert main(["report", "--by", by, "--period", "all", "-o", "json",
                     "--from-file", str(DUMP)]) == 0
        doc = json.loads(capsys.readouterr().out)
        totals[by] = doc["totals"][0]["total_cost"]
        if by == "deployment":
            keys = {(r["namespace"], r["deployment"]) for r in doc["rows"]}
            assert ("shop", "web") in keys and ("search", "__unallocated__") in keys
            assert ("search", "index") not in keys, "a StatefulSet is not a Deployment"
    assert len(set(totals.values())) == 1, totals


def test_errors_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_main(["namespace", "--window", "1999-01", "--from-file", str(DUMP)]) == 1
    err = capsys.readouterr().err
    assert "no Allocations for period '1999-01'" in err and "--period all" in err
    assert "kopeck report --by namespace --window month -o table --period 1999-01" in err
    assert kubectl_main(["deployment", "--window", "5d", "--from-file", str(DUMP)]) == 1
    assert "--window 5d: kopeck bills whole periods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kubectl_main(["label", "--from-file", str(DUMP)])  # -l is required
    assert "-l/--label" in capsys.readouterr().err
    assert kubectl_main(["namespace", "--print-report-args", "-A", "--context", "c"]) == 0
    assert capsys.readouterr().out.strip() == (
        "kopeck report --by namespace --window month -o table --context c")


def test_explain_bill_defaults_to_the_context_namespace(tmp_path: Path) -> None:
    from kopeck.reports.source import context_namespace

    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "shop"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    assert context_namespace(str(path)) == "shop"
    assert context_namespace(str(path), "b") is None
    assert context_namespace(str(tmp_path / "missing")) is None
