"""README.md runs as written: its code blocks are read from the README itself (not copied here)
and run, and the figures its prose states match what the code prints or what the repository
records. A README edit that breaks a command, a block or a figure fails this file."""

import math
import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch

from probe_sae.cli import main
from probe_sae.organism.model import PACKAGED_DIR, read_config
from probe_sae.train.summary import ShortRunWarning

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

# Python blocks that need a download (pretrained weights, the user's image folder) cannot run
# offline: the test runs them with these substitutions, keyed by the block's section. Each `old`
# text must occur in the README block (test_substitutions_still_match), so a README edit cannot
# silently escape the test. "{images}" is a folder of PNG collages the test writes.
SUBSTITUTIONS = {
    "Train SAEs on a live layer": [
        ('"open_clip:ViT-B-32/laion2b_s34b_b79k"', '"organism"'),  # offline model
        ('"blocks.11"', '"blocks.2"'),  # the organism has 4 blocks
        ('"path/to/images"', '"{images}"'),  # 64 PNGs of organism collages
    ],
    "Real datasets, SAELens and the Hub": [
        ('"open_clip:ViT-B-32/openai"', '"organism"'),
        ('"blocks.8"', '"blocks.2"'),
        ('"path/to/saved_dataset"', '"{dataset}"'),  # the same 64 collages, saved by `datasets`
    ],
}
# Python blocks that continue the namespace of the block before them (one example split
# over two sections); every other block runs in a fresh namespace.
CONTINUES = {"Evaluate and benchmark"}

pytestmark = pytest.mark.usefixtures("one_thread")


def readme_blocks() -> list[tuple[str, str, str]]:
    """(section heading, language, code) of each fenced block of README.md, in order."""
    blocks, section, lang, code = [], "", None, []
    for line in README.read_text().splitlines():
        if lang is None and line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            if lang is None:
                lang, code = line[3:].strip(), []
            else:
                blocks.append((section, lang, "\n".join(code) + "\n"))
                lang = None
        elif lang is not None:
            code.append(line)
    return blocks


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: `\\` continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [shlex.join(words) for words in lines if words]


def prose() -> str:
    """README.md without its code blocks, lines joined (figures may wrap)."""
    text = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)
    return " ".join(text.split())


BLOCKS = readme_blocks()
# The first block (`pip install -e . && probe-sae demo`, then the test suite) is not run here:
# installing is CI's job, CI runs the test suite verbatim, and the demo is tested in
# tests/test_cli_demo.py. test_first_block_is_the_install_block checks what is skipped.
INSTALL_BLOCK, *RUN_BLOCKS = BLOCKS
CLI_BLOCK = next(code for section, lang, code in RUN_BLOCKS if section == "The command line")
PYTHON_BLOCKS = [(section, code) for section, lang, code in RUN_BLOCKS if lang == "python"]


def test_every_block_is_run_or_skipped_on_purpose():
    assert [lang for _, lang, _ in RUN_BLOCKS] == ["bash"] + ["python"] * len(PYTHON_BLOCKS)
    assert len(PYTHON_BLOCKS) >= 4


def test_first_block_is_the_install_block():
    section, lang, code = INSTALL_BLOCK
    assert section == "" and lang == "bash"
    assert shell_commands(code) == [
        "pip install -e . '&&' probe-sae demo",
        "pip install -e '.[dev]' '&&' python -m pytest -q",
    ]


def test_substitutions_still_match():
    sections = [section for section, _ in PYTHON_BLOCKS]
    for section, pairs in SUBSTITUTIONS.items():
        assert sections.count(section) == 1, f"README has no single Python block in {section!r}"
        code = dict(PYTHON_BLOCKS)[section]
        for old, _ in pairs:
            assert old in code, f"README block {section!r} no longer holds {old!r}"
    assert set(CONTINUES) <= set(sections)


# ------------------------------------------------------------------ the command line
def _run(command: str, capsys) -> str:
    words = shlex.split(command)
    assert words[0] == "probe-sae", command
    assert main(words[1:]) == 0, command
    return capsys.readouterr().out


def _fvus(out: str) -> dict[str, float]:
    """{SAE: FVU} from train's end-of-training summary lines."""
    found = re.findall(
        r"^  (\w+): FVU ([\d.]+), L0 [\d.]+, dead [\d.]+ % on the last [\d,]+ tokens", out, re.M
    )
    return {name: float(fvu) for name, fvu in found}


def _stated_fvus() -> tuple[dict[str, float], float]:
    """The FVU per SAE and the bound the README states for its train example."""
    text = prose()
    m = re.search(r"the example above .*? prints (FVU .*?), each below ([\d.]+)", text)
    assert m, "README no longer states the train example's FVU"
    stated = {name: float(v) for v, name in re.findall(r"([\d.]+) \((\w+)\)", m.group(1))}
    return stated, float(m.group(2))


def test_command_line_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = [c for c in shell_commands(CLI_BLOCK) if not c.startswith("probe-sae bench")]
    assert [c.split()[1] for c in commands] == [
        "layers", "train", "train", "eval", "report", "browse"
    ]
    assert "blocks.2" in _run(commands[0], capsys)
    # the train example gives good SAEs, and the README states what it prints
    fvus = _fvus(_run(commands[1], capsys))
    stated, bound = _stated_fvus()
    assert set(fvus) == set(stated) == {"topk", "rasae", "mp"}, fvus
    for name, fvu in fvus.items():
        assert fvu < bound, (name, fvu)
        assert abs(fvu - stated[name]) <= 0.03, f"README states FVU {stated[name]}, got {fvu}"
    assert set(_fvus(_run(commands[2], capsys))) == set(stated)  # the rerun
    assert "| FVU |" in _run(commands[3], capsys)
    _run(commands[4], capsys)
    assert (tmp_path / "report.html").stat().st_size > 0
    _run(commands[5], capsys)
    assert (tmp_path / "browser" / "index.html").is_file()


# slow: even --quick takes 30-36 s on 2 cores, which puts this file over its 120 s budget; the
# stability study itself runs at small sizes in tests/test_bench_papers.py.
@pytest.mark.slow
def test_command_line_bench_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    benches = [c for c in shell_commands(CLI_BLOCK) if c.startswith("probe-sae bench")]
    assert benches
    for command in benches:
        # --quick: the full benchmark takes minutes (docs/benchmarks.md); --quick runs the same
        # code at smaller sizes. The full runs are what benchmarks/bench_papers.py records.
        out = _run(command + " --quick", capsys)
        assert "Published:" in out


@pytest.mark.slow
def test_default_train_flags_give_the_stated_worse_fit(tmp_path, monkeypatch, capsys):
    """The README says one epoch at the default lr leaves topk at a stated FVU."""
    monkeypatch.chdir(tmp_path)
    m = re.search(
        r"one epoch at the default `--lr ([\d.e-]+)` leaves topk at FVU ([\d.]+)", prose()
    )
    assert m, "README no longer states the default flags' FVU"
    train = next(c for c in shell_commands(CLI_BLOCK) if c.startswith("probe-sae train organism"))
    train = train.replace("--epochs 2 --lr 2e-3", "--epochs 1")
    from probe_sae.train import TrainConfig

    assert TrainConfig().lr == float(m.group(1))
    fvu = _fvus(_run(train, capsys))["topk"]
    assert abs(fvu - float(m.group(2))) <= 0.03, fvu


# ------------------------------------------------------------------ the Python blocks
@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    from probe_sae.organism import generate

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(generate(64).images):
        array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def saved_dataset(tmp_path, image_folder):
    """The PNG collages as a `datasets.Dataset` saved with `save_to_disk`."""
    import datasets

    files = sorted(str(p) for p in image_folder.iterdir())
    features = datasets.Features({"image": datasets.Image()})
    folder = tmp_path / "dataset"
    datasets.Dataset.from_dict({"image": files}, features=features).save_to_disk(str(folder))
    return folder


def test_python_blocks_run(tmp_path, monkeypatch, image_folder, saved_dataset):
    """Each Python block runs; the SAEs of the blocks that run as written are not undertrained
    (no ShortRunWarning: a substituted block trains on 64 images, so it may warn), and the FVU
    the evaluation block states is what it measures."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for section, code in PYTHON_BLOCKS:
        for old, new in SUBSTITUTIONS.get(section, []):
            code = code.replace(old, new.format(images=image_folder, dataset=saved_dataset))
        if section not in CONTINUES:
            namespace = {"__name__": f"readme: {section}"}
        with warnings.catch_warnings():
            # a substituted block trains on 64 images: expected to be short
            action = "ignore" if section in SUBSTITUTIONS else "error"
            warnings.simplefilter(action, ShortRunWarning)
            exec(compile(code, f"README.md: {section}", "exec"), namespace)
        if section == "Evaluate and benchmark":
            m = re.search(r"# FVU \(([\d.]+) here\)", code)
            assert m, "README's evaluation block no longer states its FVU"
            fvu = namespace["report"].fvu
            assert fvu < 0.1 and abs(fvu - float(m.group(1))) <= 0.03, fvu
    assert (tmp_path / "my_sae" / "config.json").exists()
    assert (tmp_path / "rasae_vitb32" / "config.json").exists()
    assert (tmp_path / "eval.json").exists()
    assert (tmp_path / "topk_saelens" / "cfg.json").exists()


# ------------------------------------------------------------------ figures in the prose
def test_organism_figures():
    text = prose()
    config = read_config(PACKAGED_DIR)
    arch, world = config["architecture"], config["world"]
    assert f"held-out mean AUC {config['held_out']['mean_auc']:.3f}" in text
    grid = arch["image_size"] // arch["patch_size"]
    assert (
        f"CLS, {arch['reg_tokens']} registers, {grid} × {grid} patches, width {arch['width']}, "
        f"{arch['depth']} blocks" in text
    )
    size = world["image_size"]
    assert (
        f"{size} × {size} collages of {world['n_objects']} objects out of "
        f"{arch['n_kinds']} known kinds" in text
    )


def test_summary_tokens_figure():
    from probe_sae.train import TrainConfig

    assert f"the run's last {TrainConfig().summary_tokens:,} tokens" in prose()


def test_tutorial_count():
    m = re.search(r"Jupyter notebooks (\d+)–(\d+)", prose())
    assert m
    found = sorted(p.name[:2] for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))
    assert found == [f"{i:02d}" for i in range(int(m.group(1)), int(m.group(2)) + 1)]


def test_benchmark_wall_times_match_docs():
    m = re.search(r"Expected wall times on .*?: (.*? min)\.", prose())
    assert m, "README no longer states the benchmarks' wall times"
    stated = re.findall(r"([\w-]+) ~([\d.]+)(?:–([\d.]+))? min", m.group(1))
    measured = dict(
        re.findall(
            # each benchmark's default run (`--seed` only; variants such as `--world hard` aside)
            r"`probe-sae bench ([\w-]+) --seed[^`]*`.*?wall time ([\d.]+) min",
            BENCHMARKS.read_text(),
        )
    )
    assert (
        {name for name, _, _ in stated}
        == set(measured)
        == {"mp-k", "stability", "identifiability", "plausibility", "hierarchy"}
    )
    for name, low, high in stated:
        minutes = float(measured[name])
        if high:  # a range holds the recorded time
            assert float(low) <= minutes <= float(high), (name, low, high, minutes)
        else:  # a single figure is the recorded time at the figure's precision
            decimals = len(low.partition(".")[2])
            assert math.isclose(round(minutes, decimals), float(low)), (name, low, minutes)
