"""``fedsynth init coordinator | site``: the files load with the real loaders, every option
lands in them, nothing is overwritten without --force, bad values write nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedsynth.cli import main
from fedsynth.config import load_coordinator_config, load_site_config


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
