"""Typed configs: JSON round trips, the command line generated from them, one default per
field, and a run rerun from its run.json."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import typing
from pathlib import Path
from typing import Literal

import pytest
import torch
from safetensors.torch import load_file

import probe_sae
from probe_sae.cli import build_parser, main, run_config_from_args, run_option_classes
from probe_sae.config import (
    ConfigError,
    add_options,
    config_fields,
    field_docs,
    field_types,
    from_dict,
    parse_value,
    to_dict,
)
from probe_sae.run import RunConfig, read_run_config, write_run_config
from probe_sae.saes import (
    ArchetypalConfig,
    SAEConfig,
    TopKConfig,
    available_families,
    build_sae,
    family_config,
    registered_families,
)
from probe_sae.saes.config import SparsityConfig
from probe_sae.stream import StreamConfig
from probe_sae.train import TrainConfig

ALL_CONFIGS = [StreamConfig, TrainConfig, ArchetypalConfig, *registered_families().values()]


def _other_value(tp, default):
    """A valid value of type ``tp`` different from ``default``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return not default
    if tp is int:
        return (default or 0) + 3
    if tp is float:
        return (default or 0.0) * 0.5 + 0.125
    if tp is str:
        return "somewhere"
    if origin is Literal:
        return next(a for a in args if a != default)
    if origin is tuple and args == (str, ...):
        return ("cpu", "cpu")
    if origin is tuple:
        return tuple(0.5 + 0.1 * i for i in range(len(args)))
    options = [a for a in args if a is not type(None)]
    if tp == (str | tuple[int, ...]):
        return "patches" if default != "patches" else "cls"
    return _other_value(options[0], None if default is None else default)


def _changed(cls):
    """An instance of ``cls`` with every field changed from its default."""
    values = {}
    for f in config_fields(cls):
        tp = field_types(cls)[f.name]
        if f.name == "archetypal":
            values[f.name] = ArchetypalConfig(delta=0.25, n_candidates=99)
        else:
            values[f.name] = _other_value(tp, f.default)
    return cls(**values)


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_config_json_round_trip(cls):
    for config in (cls(), _changed(cls)):
        text = json.dumps(to_dict(config))
        assert from_dict(cls, json.loads(text)) == config
        if isinstance(config, SAEConfig):  # the family tag picks the class
            assert from_dict(SAEConfig, json.loads(text)) == config
            assert json.loads(text)["family"] == config.family


def test_every_field_has_a_one_line_docstring():
    for cls in [*ALL_CONFIGS, RunConfig]:
        docs = field_docs(cls)
        missing = [f.name for f in config_fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_family_presets_and_names():
    assert set(available_families()) == {
        *registered_families(),
        "asae",
        "rasae",
        "matryoshka_asae",
        "matryoshka_rasae",
    }
    rasae = family_config("rasae", k=8, delta=0.5)
    assert isinstance(rasae, TopKConfig) and rasae.archetypal == ArchetypalConfig(0.5)
    assert family_config("asae", encoder="relu").archetypal == ArchetypalConfig(delta=0.0)
    with pytest.raises(ConfigError, match="asae has delta = 0"):
        family_config("asae", delta=1.0)
    with pytest.raises(ConfigError, match=r"topk SAEs have no l1_coeff.*aux_coeff"):
        family_config("topk", l1_coeff=1.0)
    with pytest.raises(ConfigError, match="unknown SAE family 'nope'"):
        family_config("nope")


def test_from_dict_names_the_bad_field():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['lr_'\].*'lr'"):
        from_dict(TrainConfig, {"lr_": 1.0})
    with pytest.raises(ConfigError, match=r"k: '8' is not a int"):
        from_dict(SAEConfig, {"family": "topk", "k": "8"})
    with pytest.raises(ConfigError, match="unknown SAE family 'mystery'"):
        from_dict(SAEConfig, {"family": "mystery"})
    with pytest.raises(ConfigError, match=r"train.betas: expected 2 values"):
        from_dict(RunConfig, {"model": "m", "layer": "l", "images": "i",
                              "saes": {"a": {"family": "mp"}}, "train": {"betas": [0.9]}})  # fmt: skip
    with pytest.raises(ConfigError, match="k must be positive"):
        TopKConfig(k=0)


def test_parse_value_reads_command_line_words():
    assert parse_value(int | None, "none", "--x") is None
    assert parse_value(int | None, "7", "--x") == 7
    assert parse_value(tuple[float, float], "0.8,0.95", "--x") == (0.8, 0.95)
    assert parse_value(str | tuple[int, ...], "0,5,6", "--x") == (0, 5, 6)
    assert parse_value(str | tuple[int, ...], "patches", "--x") == "patches"
    with pytest.raises(ConfigError, match="--x: cannot read 'seven'"):
        parse_value(int, "seven", "--x")


def test_add_options_on_a_new_config_class():
    """The generator is generic: any frozen dataclass with field docstrings gets flags."""

    @dataclasses.dataclass(frozen=True)
    class Toy:
        width: int = 4
        """How wide."""
        name: str | None = None
        """What to call it."""
        fast: bool = False
        """Go fast."""

    parser = argparse.ArgumentParser()
    options = add_options(parser, [Toy])
    assert set(options) == {"width", "name", "fast"}
    assert "How wide. (default: 4)" in parser.format_help()
    args = parser.parse_args(["--width", "9", "--fast"])
    assert vars(args) == {"width": 9, "fast": True}  # unset flags stay absent


def _train_args(*extra: str, families=("topk", "rasae", "mp", "relu", "batchtopk", "jumprelu", "matryoshka")):
    argv = ["train", "organism", "--layer", "blocks.2", "--images", "synthetic:8", "--sae"]
    return build_parser().parse_args([*argv, *families, *extra])


def _values_of(run: RunConfig, name: str) -> list:
    found = []
    for config in (run.stream, run.train, *run.saes.values()):
        if name in {f.name for f in config_fields(type(config))}:
            found.append(getattr(config, name))
        archetypal = getattr(config, "archetypal", None)
        if archetypal is not None and name in {f.name for f in config_fields(ArchetypalConfig)}:
            found.append(getattr(archetypal, name))
    return found


def test_every_config_field_is_a_train_flag():
    """Derive the fields from the config classes and set each one from the command line."""
    option_fields = set(_train_args().run_fields)
    for cls in run_option_classes():
        for f in config_fields(cls):
            if f.name == "archetypal":  # a nested config: its own fields are flags
                continue
            assert f.name in option_fields, f"{cls.__name__}.{f.name} has no flag"
            tp = field_types(cls)[f.name]
            value = _other_value(tp, f.default)
            if tp is bool:
                words = [f"--{'' if value else 'no-'}{f.name.replace('_', '-')}"]
            else:
                text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                words = [f"--{f.name.replace('_', '-')}", text]
            run = run_config_from_args(_train_args(*words))
            seen = _values_of(run, f.name)
            assert seen and all(v == value for v in seen), (cls.__name__, f.name, value, seen)


def test_a_flag_no_sae_takes_is_an_error():
    with pytest.raises(ConfigError, match=r"l1_coeff \(fields of relu\).*topk: topk"):
        run_config_from_args(_train_args("--l1-coeff", "0.1", families=("topk",)))
    assert main(["train", "organism", "--layer", "blocks.2", "--images", "synthetic:8",
                 "--l1-coeff", "0.1"]) == 2  # fmt: skip


def _package_defaults() -> list[tuple[str, int, str, str]]:
    """(file, line, name, default) of every literal default in the package: dataclass fields
    and function parameters. The benchmarks and the demo pin their own settings on purpose
    (the papers' and the demo's), so they are left out."""
    root = Path(probe_sae.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("bench/") or rel == "demo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            pairs = []
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                pairs.append((node.target.id, node.value))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                positional = a.posonlyargs + a.args
                pairs += zip([p.arg for p in positional[len(positional) - len(a.defaults):]],
                             a.defaults, strict=True)  # fmt: skip
                pairs += [(p.arg, d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d]
            for name, value in pairs:
                found.append((rel, value.lineno, name, ast.unparse(value)))
    return found


def test_each_sae_and_run_default_is_written_once():
    defaults = _package_defaults()
    k_default = str(SparsityConfig.k)
    k_sites = [d for d in defaults if d[2] == "k" and d[3] == k_default]
    assert [(f, n) for f, _, n, _ in k_sites] == [("saes/config.py", "k")], k_sites
    watched = {f.name: f for cls in [SAEConfig, ArchetypalConfig, *registered_families().values()]
               for f in config_fields(cls)}  # fmt: skip
    for name in ("batch_size", "buffer_tokens", "image_batch_size", "init_tokens", "lr"):
        cls = StreamConfig if name in {f.name for f in config_fields(StreamConfig)} else TrainConfig
        watched[name] = next(f for f in config_fields(cls) if f.name == name)
    del watched["seed"]  # seed=0 is every random function's convention, not a setting
    for name, f in watched.items():
        if f.default is None or f.default is dataclasses.MISSING:
            continue
        sites = [d for d in defaults if d[2] == name and _same_literal(d[3], f.default)]
        assert len(sites) == 1, f"the default of {name} ({f.default}) is written at {sites}"


def _same_literal(text: str, value) -> bool:
    try:
        return eval(text, {}) == value  # literals and simple arithmetic such as 1 / 32
    except Exception:
        return False


def test_the_checker_finds_a_restated_default(tmp_path, monkeypatch):
    """The scan above can fail: plant a second ``k = 32`` default and it is found."""
    fake = tmp_path / "probe_sae"
    (fake / "saes").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "saes" / "config.py").write_text("class A:\n    k: int = 32\n")
    (fake / "cli.py").write_text("def train(k: int = 32):\n    pass\n")
    monkeypatch.setattr(probe_sae, "__file__", str(fake / "__init__.py"))
    sites = [d for d in _package_defaults() if d[2] == "k" and d[3] == "32"]
    assert [(f, n) for f, _, n, _ in sites] == [("cli.py", "k"), ("saes/config.py", "k")]


def test_run_config_round_trip_through_run_json(tmp_path):
    run = RunConfig(
        "organism", "blocks.2", "synthetic:64",
        {"topk": TopKConfig(k=4), "rasae": family_config("rasae", n_candidates=128)},
        StreamConfig(tokens=(0, 5, 6), batch_size=256), TrainConfig(betas=(0.8, 0.9)),
    )  # fmt: skip
    path = write_run_config(run, tmp_path)
    assert read_run_config(path) == run == read_run_config(tmp_path)
    data = json.loads(path.read_text())
    data["train"]["lr"] = "fast"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"train\.lr: 'fast' is not a float"):
        read_run_config(path)


def test_run_from_config_equals_run_from_flags_bitwise(tmp_path):
    flags = ["--n-concepts", "64", "--k", "4", "--max-steps", "4", "--batch-size", "128",
             "--init-tokens", "512", "--lr", "0.002", "--no-progress", "--seed", "3"]  # fmt: skip
    first = tmp_path / "flags"
    argv = ["train", "organism", "--layer", "blocks.2", "--images", "synthetic:24"]
    assert main([*argv, "--sae", "topk", "rasae", "mp", *flags, "--out", str(first)]) == 0
    second = tmp_path / "config"
    assert main(["train", "--config", str(first / "run.json"), "--out", str(second)]) == 0
    rerun = read_run_config(second / "run.json")
    assert dataclasses.replace(rerun, out=str(first)) == read_run_config(first / "run.json")
    assert rerun.stream.seed == 3 and all(c.seed == 3 for c in rerun.saes.values())
    for name in ("topk", "rasae", "mp"):
        a = load_file(str(first / name / "model.safetensors"))
        b = load_file(str(second / name / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # an override on top of --config changes the run
    third = tmp_path / "override"
    assert main(["train", "--config", str(first), "--k", "2", "--out", str(third)]) == 0
    assert {c.k for c in read_run_config(third).saes.values()} == {2}


def test_train_sae_applies_fields_like_the_command_line():
    model = probe_sae.load_model("organism")
    from probe_sae.organism import generate

    with pytest.raises(ConfigError, match="no SAE, stream or training setting here takes lr_"):
        probe_sae.train_sae(model, "blocks.2", generate(8).images, lr_=1.0)
    sae = build_sae(TopKConfig(k=3), 16)
    assert sae.n_concepts == 128 and sae.config.n_concepts == 128 and sae.config.aux_k == 8
