"""``fedsynth init coordinator | site``: the files load with the real loaders, every option
lands in them, nothing is overwritten without --force, bad values write nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedsynth.cli import main
from fedsynth.config import (
    DEFAULT_PERFORMANCE_METHOD,
    DEFAULT_PERFORMANCE_TEST,
    DEFAULT_PI_WIDTH,
    load_coordinator_config,
    load_site_config,
)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_coordinator_loads_with_every_option(capsys, tmp_path):
    out = tmp_path / "conf" / "coordinator.toml"
    out.parent.mkdir()
    code, stdout, err = run(capsys, "init", "coordinator", "--out", out, "--name",
                            "coord.lan", "--listen", "127.0.0.1:6000", "--pki",
                            tmp_path / "conf" / "pki", "--allow", "site-a, site-b",
                            "--state", out.parent / "st.db", "--method", "DL", "--test",
                            "knha")
    assert code == 0 and stdout == ""
    assert "wrote" in err and "fedsynth coordinator serve --config" in err
    assert "fedsynth ca issue --dir" in err            # the certificates do not exist yet
    config = load_coordinator_config(out)
    assert config.listen == "127.0.0.1:6000"
    assert config.allow == ("site-a", "site-b")
    assert config.tls.cert == (out.parent / "pki" / "coordinator.crt").resolve()
    assert config.tls.ca == (out.parent / "pki" / "ca.crt").resolve()
    assert config.state.endswith(str((out.parent / "st.db").resolve()))
    assert config.pooling.method == "DL" and config.pooling.test == "knha"
    assert config.report_dir == (out.parent / "reports").resolve()      # the default
    text = out.read_text()
    assert 'cert = "pki/coordinator.crt"' in text         # relative to the file
    assert "--coordinator coord.lan" in text
    assert text.count("\n# ") > 20                         # commented
    # every key the loader knows about is either set or shown commented
    data = tomllib.loads(text)
    assert {"listen", "state", "tls", "sites", "pooling"} <= set(data)
    assert "# [[schedule]]" in text
    # the [pooling] keys of issue 12: written out (not only defaulted by the loader), with
    # the defaults of fedsynth/config.py, each commented
    pooling = data["pooling"]
    assert pooling["performance_method"] == DEFAULT_PERFORMANCE_METHOD
    assert pooling["performance_test"] == DEFAULT_PERFORMANCE_TEST
    written = {k: tuple(v) if isinstance(v, list) else v
               for k, v in pooling["pi_width"].items()}
    assert written == dict(DEFAULT_PI_WIDTH)
    assert config.pooling.performance_method == DEFAULT_PERFORMANCE_METHOD
    assert config.pooling.performance_test == DEFAULT_PERFORMANCE_TEST
    assert dict(config.pooling.pi_width) == dict(DEFAULT_PI_WIDTH)
    section = text[text.index("[pooling.pi_width]"):]
    for name in DEFAULT_PI_WIDTH:
        line = next(x for x in section.splitlines() if x.startswith(f"{name} ="))
        assert "# " in line, line
    assert "rule pi_width" in text and "false switches a default off" in text


def test_init_coordinator_pi_width_edits_load(capsys, tmp_path):
    """Editing the written widths as its comments say loads with the real loader."""
    out = tmp_path / "coordinator.toml"
    assert run(capsys, "init", "coordinator", "--out", out)[0] == 0
    text = out.read_text().replace("\nauc = 0.05 ", "\nauc = 0.03 ").replace(
        "\nbrier = 0.02 ", "\nbrier = false ").replace(
        "[pooling.pi_width]\n", "[pooling.pi_width]\nlogistic = [0.8, 1.25]\n")
    out.write_text(text)
    widths = load_coordinator_config(out).pooling.pi_width
    assert widths["auc"] == 0.03 and "brier" not in widths
    assert widths["logistic"] == (0.8, 1.25)
    assert widths["oe_ratio"] == DEFAULT_PI_WIDTH["oe_ratio"]


def test_init_site_loads_with_every_option(capsys, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    out = tmp_path / "site.toml"
    code, _, err = run(capsys, "init", "site", "--out", out, "--name", "site-a",
                       "--coordinator", "coord.lan:6000", "--pki", "/srv/pki", "--data", data,
                       "--server-name", "coord.lan", "--min-cell-count", "10", "--min-n",
                       "50")
    assert code == 0, err
    config = load_site_config(out)
    assert config.name == "site-a" and config.coordinator == "coord.lan:6000"
    assert config.server_name == "coord.lan"
    assert config.tls.cert == Path("/srv/pki/site-a.crt")
    assert config.data.path == data.resolve()
    assert config.privacy.min_cell_count == 10 and config.privacy.min_n == 50
    assert 'path = "data.csv"' in out.read_text()
    addr = tmp_path / "coordinator.addr"
    out2 = tmp_path / "site2.toml"
    assert run(capsys, "init", "site", "--out", out2, "--name", "site-b", "--coordinator",
               f"@{addr}", "--data", data)[0] == 0
    assert load_site_config(out2).coordinator == f"@{addr.resolve()}"
    assert 'coordinator = "@coordinator.addr"' in out2.read_text()


def test_init_never_overwrites_without_force(capsys, tmp_path):
    out = tmp_path / "coordinator.toml"
    out.write_text("# mine\n")
    code, _, err = run(capsys, "init", "coordinator", "--out", out)
    assert code == 2 and "--force" in err and out.read_text() == "# mine\n"
    code, _, _ = run(capsys, "init", "coordinator", "--out", out, "--force")
    assert code == 0 and out.read_text().startswith("# coordinator.toml, written by")


@pytest.mark.parametrize("argv,needle", [
    (["site", "--name", "Bad Name", "--coordinator", "h:1", "--data", "d.csv"], "--name:"),
    (["site", "--name", "s", "--coordinator", "h", "--data", "d.csv"], "--coordinator:"),
    (["site", "--name", "s", "--coordinator", "h:1", "--data", "d.csv", "--min-n", "0"],
     "--min-n"),
    (["coordinator", "--allow", "a,B C"], "--allow: site name 'B C'"),
    (["coordinator", "--allow", "a,a"], "--allow:"),
    (["coordinator", "--listen", "nope"], "--listen:"),
    (["coordinator", "--name", "../x"], "--name:"),
    (["coordinator", "--state", "mysql://x/y"], "state"),
])
def test_init_bad_values_write_nothing(capsys, tmp_path, argv, needle):
    out = tmp_path / "x.toml"
    code, stdout, err = run(capsys, "init", *argv, "--out", out)
    assert code == 2 and stdout == "" and needle in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
