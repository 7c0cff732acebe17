"""The `probe-sae` command and its interim demo."""

import subprocess
import sys

from probe_sae.cli import main
from probe_sae.demo import run_demo


def test_demo_trains_saves_and_reloads_every_family(tmp_path):
    results = run_demo(out_dir=tmp_path, steps=200, seed=0)
    assert [r.family for r in results] == ["topk", "mp", "rasae"]
    for r in results:
        assert r.fvu < 0.35, r
        assert 5 < r.l0 <= 6  # MP may re-select an atom, so L0 <= k
        assert r.recovery > 0.8, r
        assert (r.path / "config.json").is_file() and (r.path / "model.safetensors").is_file()


def test_cli_demo_exit_code_and_output(tmp_path, capsys):
    assert main(["demo", "--steps", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| topk |" in out and "| mp |" in out and "| rasae |" in out


def test_help_texts_run():
    for args in (["--help"], ["demo", "--help"]):
        res = subprocess.run(
            [sys.executable, "-m", "probe_sae.cli", *args], capture_output=True, text=True
        )
        assert res.returncode == 0 and "Example:" in res.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
