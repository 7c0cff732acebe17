"""The `probe-sae` command (layers, train, eval, report, bench, demo) and the demo itself."""

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch

from probe_sae.cli import main
from probe_sae.demo import auc_per_column, run_demo

SUBCOMMANDS = ["layers", "train", "eval", "report", "bench", "demo"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "probe_sae.cli", *args], capture_output=True, text=True
    )


def test_help_texts_run_and_show_an_example():
    res = _cli("--help")
    assert res.returncode == 0 and "Example:" in res.stdout
    for name in SUBCOMMANDS:
        assert name in res.stdout
    for name in SUBCOMMANDS:
        res = _cli(name, "--help")
        assert res.returncode == 0, res.stderr
        assert "Example: probe-sae " + name in res.stdout


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["layers", "nope:x"], "write family:name"),
        (["layers", "open_clip:NotAModel"], "open_clip.list_models()"),
        (["train", "organism", "--layer", "blocks.9", "--images", "synthetic:8"], "probe-sae layers organism"),
        (["train", "organism", "--layer", "nolayer", "--images", "synthetic:8"], "model.layers() lists"),
        (["train", "organism", "--layer", "2", "--images", "/no/such/folder"], "pass a folder of images"),
        (["train", "organism", "--layer", "2", "--images", "synthetic:x"], "synthetic:N"),
        (["eval", "/no/such/sae", "--images", "synthetic:8"], "save_pretrained"),
    ],
)
def test_user_errors_are_one_line_with_the_fix_and_exit_2(args, fix):
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and lines[0].startswith("probe-sae "), res.stderr
    assert fix in lines[0]


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_layers_lists_the_blocks(capsys):
    assert main(["layers", "organism", "--blocks"]) == 0
    out = capsys.readouterr().out
    assert "4 blocks" in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == [f"blocks.{i}" for i in range(4)]


def test_train_eval_report_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "organism", "--layer", "2", "--images", "synthetic:160", "--sae", "topk",
            "rasae", "--n-concepts", "128", "--k", "8", "--lr", "3e-3", "--log-every", "2",
            "--out", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained topk, rasae on organism blocks.2" in out
    for name in ("topk", "rasae"):
        cfg = json.loads((run / name / "config.json").read_text())
        assert cfg["provenance"]["model"] == "organism" and cfg["provenance"]["layer"] == "blocks.2"
        assert json.loads((run / name / "training_log.json").read_text())
    report_json = tmp_path / "eval.json"
    assert main(["eval", str(run / "topk"), "--images", "synthetic:64:5", "--json", str(report_json)]) == 0
    out = capsys.readouterr().out
    figures = json.loads(report_json.read_text())["topk"]
    # every token of every image is evaluated (no partial batch dropped)
    assert figures["evaluation"]["n_tokens"] == 64 * 69
    assert 0 < figures["evaluation"]["fvu"] < 1
    assert figures["fidelity"]["accuracy_clean"] > 0.9
    assert "spliced fidelity" in out and "accuracy recovered" in out
    html_path = tmp_path / "report.html"
    assert main(["report", str(run / "topk"), str(run / "rasae"), "--images", "synthetic:32:5",
                 "--out", str(html_path)]) == 0
    text = html_path.read_text()
    assert text.count("data:image/png;base64,") >= 4
    assert "topk" in text and "rasae" in text
    assert "No training_log.json" not in text  # the curves of both SAEs were found


def test_auc_per_column_matches_the_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (40, 3), generator=gen).float()  # many ties
    labels = torch.rand(40, generator=gen) > 0.5
    got = auc_per_column(scores, labels)
    pos, neg = scores[labels], scores[~labels]
    for col in range(3):
        diff = pos[:, col][:, None] - neg[:, col][None]
        expected = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
        assert float(got[col]) == pytest.approx(expected, abs=1e-12)


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self._in = [], False

    def handle_starttag(self, tag, attrs):
        self._in = tag in ("h1", "h2")

    def handle_data(self, data):
        if self._in and data.strip():
            self.headings.append(data.strip())
            self._in = False


def test_demo_trains_evaluates_steers_and_reports(tmp_path):
    result = run_demo(tmp_path, n_train=384, n_test=96, epochs=1, progress=False)
    assert [r.name for r in result.saes] == ["topk", "rasae", "mp"]
    for r in result.saes:
        assert r.fvu < 0.6, r
        assert r.l0_patch <= 16 + 1e-9 and r.l0_cls <= 16 + 1e-9
        assert r.identifiability > result.all_absent_baseline
        assert r.fidelity.accuracy_recovered is not None and r.fidelity.accuracy_recovered > 0.3
        assert (r.folder / "model.safetensors").is_file()
        assert (r.folder / "training_log.json").is_file()
    s = result.steering
    assert s.auc > 0.8 and s.multiples[0] == 0
    assert s.p_kind == sorted(s.p_kind) and s.p_kind[-1] > s.p_kind[0] + 0.05
    assert result.report is not None and result.report.is_file()
    parser = _Sections()
    parser.feed(result.report.read_text())
    assert "Demo summary" in parser.headings and "Steering" in parser.headings
    report = result.report.read_text()
    assert "<h3>Ground truth</h3>" in report  # concepts named by the objects they detect
    assert f"P({s.kind})" in report


@pytest.mark.slow
def test_cli_demo_default_sizes(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| topk |" in out and "| mp |" in out and "| rasae |" in out and "report:" in out
