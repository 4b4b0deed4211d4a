"""`noduleflow serve` on the command line: refusals name the bad value; --status reads a spool."""
from __future__ import annotations

import json

import pytest

from noduleflow.cli import main


@pytest.mark.parametrize("argv,message", [
    (["--host", "0.0.0.0"], "needs --allow-ae"),
    (["--allow-ae", "THIS_TITLE_IS_TOO_LONG"], "AE title 'THIS_TITLE_IS_TOO_LONG'"),
    (["--port", "70000"], "--port 70000"),
    (["--forward", "PACS:104"], "--forward 'PACS:104'"),
    (["--allow-host", "not-an-ip"], "--allow-host 'not-an-ip'"),
    (["--no-network"], "--no-network needs --watch"),
    (["--quiet-period", "0"], "--quiet-period must be > 0"),
    (["--incomplete-wait", "5"], "--incomplete-wait must be >= --quiet-period 10.0 (got 5.0)"),
    (["--max-associations", "0"], "--max-associations must be >= 1 (got 0)"),
    (["--acse-timeout", "0"], "--acse-timeout must be > 0 seconds (got 0.0)"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["serve", "--spool", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_status_of_a_spool(tmp_path, capsys, series_pool):
    from noduleflow.serve.spool import Spool

    assert main(["serve", "--spool", str(tmp_path / "none"), "--status"]) == 2
    sp = Spool(tmp_path / "s")
    f = series_pool[0][0]
    sp.store(f.read_bytes(), "1.2.3", "1.2.3.1")
    capsys.readouterr()
    assert main(["serve", "--spool", str(tmp_path / "s"), "--status"]) == 0
    out = capsys.readouterr().out
    assert "service not running" in out and "received 1" in out and "1.2.3" in out
    assert main(["serve", "--spool", str(tmp_path / "s"), "--status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["counts"]["received"] == 1 and st["series"][0]["instances"] == 1 and not st["running"]


def _serve_parser():
    """``noduleflow serve``'s parser alone (the other commands' options are not under test here)."""
    import argparse

    from noduleflow.commands import serve

    parser = argparse.ArgumentParser(prog="noduleflow")
    sub = parser.add_subparsers()
    serve.register(sub)
    return parser, sub.choices["serve"]


def test_the_options_are_generated_from_serve_config(tmp_path):
    import dataclasses

    from noduleflow.commands.options import config_values
    from noduleflow.serve import ServeConfig, Spool

    parser, serve_parser = _serve_parser()
    flat = " ".join(serve_parser.format_help().split())
    cli = [f for f in dataclasses.fields(ServeConfig) if f.metadata.get("cli")]
    assert {f.name for f in cli} >= {"host", "port", "quiet_s", "min_free_mb", "allow_hosts", "network", "png"}
    for f in cli:
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in flat, flag
        if f.default not in (dataclasses.MISSING, None, ()):
            shown = (flag if f.default else "--no-" + flag[2:]) if isinstance(f.default, bool) else f.default
            assert f"(default {shown})" in flat.replace("- ", "-"), f.name
    # what the options parse to when none is given is the dataclass's own defaults
    args = parser.parse_args(["serve", "--spool", str(tmp_path)])
    assert ServeConfig(**config_values(ServeConfig, args)) == ServeConfig(spool=tmp_path)
    args = parser.parse_args(["serve", "--spool", str(tmp_path), "--allow-host", "10.0.0.5", "--allow-host",
                              "10.0.1.0/24", "--no-network", "--watch", str(tmp_path / "in"), "--quiet-period", "3"])
    cfg = ServeConfig(**config_values(ServeConfig, args))
    assert (cfg.allow_hosts, cfg.network, cfg.watch, cfg.quiet_s) == (("10.0.0.5", "10.0.1.0/24"), False,
                                                                      tmp_path / "in", 3.0)
    # the spool's free-space floor is the config's, not a second default
    assert Spool(tmp_path / "spool").min_free_mb == ServeConfig.min_free_mb == 256.0
