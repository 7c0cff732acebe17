"""Faults around training checkpoints (issue 19): Ctrl-C inside a multi-SAE step, damaged
checkpoints, resumes with changed settings, a run that never completed a checkpoint,
non-finite activations, unreadable images and closing the source."""

from __future__ import annotations

import json
import os
import shutil
import signal
import warnings

import pytest
import torch
from toy_activations import sparse_mixture

from probe_sae.saes import MPConfig, TopKConfig, family_config
from probe_sae.stream import TensorTokenSource
from probe_sae.train import SAETarget, TrainConfig, Trainer
from probe_sae.train.checkpoint import CheckpointError, CheckpointWarning, verify_checkpoint
from probe_sae.train.sae_run import SAERun

D, C, K = 32, 96, 4
STEP_4, STEP_8 = "step-000000004", "step-000000008"


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return sparse_mixture(n_tokens=4096, d_model=D, n_atoms=64, active=K, seed=3).x


def _targets(k: int = K) -> list[SAETarget]:
    return [
        SAETarget("topk", "tokens", TopKConfig(n_concepts=C, k=k, aux_k=16)),
        SAETarget(
            "rasae",
            "tokens",
            family_config("rasae", n_concepts=C, n_candidates=128, k=K, delta=0.5),
        ),
        SAETarget("mp", "tokens", MPConfig(n_concepts=C, k=K)),
    ]


def _config(folder, **kw) -> TrainConfig:
    base = dict(
        max_steps=10,
        lr=3e-3,
        warmup_steps=3,
        init_tokens=512,
        log_every=4,
        progress=False,
        dead_window=512,
        checkpoint_dir=str(folder),
        checkpoint_every=100,
    )
    base.update(kw)
    return TrainConfig(**base)


def _train(tokens, folder, resume=None, batch_size=128, targets=None, allow=(), **kw):
    source = TensorTokenSource(tokens, batch_size, epochs=None, seed=2)
    trainer = Trainer(targets or _targets(), source, _config(folder, **kw))
    return trainer.run(resume=resume, allow_changes=allow)


def _assert_same(result, reference) -> None:
    """Same steps, every parameter and buffer of every SAE to 1e-6, the same metrics log."""
    assert result.steps == reference.steps and result.tokens == reference.tokens
    for name, sae in reference.saes.items():
        other = result.saes[name].state_dict()
        for key, value in sae.state_dict().items():
            torch.testing.assert_close(other[key], value, rtol=0, atol=1e-6, msg=f"{name}.{key}")
    rows = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in result.metrics]
    expected = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in reference.metrics]
    assert rows == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def straight(tokens, tmp_path_factory):
    """The uninterrupted 10-step run."""
    return _train(tokens, tmp_path_factory.mktemp("straight"))


@pytest.fixture(scope="module")
def eight_steps(tokens, tmp_path_factory):
    """A finished 8-step run with checkpoints at steps 4 and 8, and its result."""
    folder = tmp_path_factory.mktemp("eight")
    return folder, _train(tokens, folder, max_steps=8, checkpoint_every=4)


def _interrupt_in_forward(monkeypatch, plan: dict[str, int], how: str = "sigint") -> None:
    """Interrupt from inside the forward of the SAEs named in ``plan`` at their ``plan[name]``-th
    forward (counted per SAE object, so per run): a real SIGINT as Ctrl-C sends it, two of
    them, or a KeyboardInterrupt raised right there."""
    original = SAERun.__init__

    def init(run, name, layer, sae, config, *more):
        original(run, name, layer, sae, config, *more)
        calls = {"n": 0}

        def hook(module, args):
            calls["n"] += 1
            if plan.get(name) != calls["n"]:
                return
            if how == "raise":
                raise KeyboardInterrupt
            for _ in range(2 if how == "double" else 1):
                os.kill(os.getpid(), signal.SIGINT)

        sae.register_forward_pre_hook(hook)

    monkeypatch.setattr(SAERun, "__init__", init)


def test_ctrl_c_inside_a_multi_sae_step_resumes_exactly(tokens, straight, tmp_path, monkeypatch):
    """SIGINT in the 2nd SAE's forward of step 3, then in the 3rd SAE's of step 7: each time the
    step is finished for all SAEs, checkpointed, and the resumed run equals the straight one."""
    plan = {"rasae": 3}
    _interrupt_in_forward(monkeypatch, plan)
    with pytest.raises(KeyboardInterrupt):
        _train(tokens, tmp_path)
    assert (tmp_path / "latest").read_text() == "step-000000003"
    plan.clear()
    plan["mp"] = 4  # 4th forward of the resumed run: step 7
    with pytest.raises(KeyboardInterrupt):
        _train(tokens, tmp_path, resume=tmp_path)
    assert (tmp_path / "latest").read_text() == "step-000000007"
    plan.clear()
    resumed = _train(tokens, tmp_path, resume=tmp_path)
    _assert_same(resumed, straight)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("how", ["raise", "double"])
def test_an_interrupt_that_cuts_a_step_writes_no_mixed_checkpoint(
    tokens, straight, tmp_path, monkeypatch, how
):
    """A KeyboardInterrupt raised inside a step (or a second Ctrl-C) stops at once: a warning,
    no checkpoint of the torn state, and resuming from the last one equals the straight run."""
    _interrupt_in_forward(monkeypatch, {"rasae": 6}, how)
    torn = r"inside step 6.*continues from .*step-000000004"
    with pytest.warns(CheckpointWarning, match=torn), pytest.raises(KeyboardInterrupt):
        _train(tokens, tmp_path, checkpoint_every=4)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [STEP_4]
    monkeypatch.undo()
    _assert_same(_train(tokens, tmp_path, resume=tmp_path, checkpoint_every=4), straight)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) - 64] ^= 0x04  # in the tensor bytes, after the header
    path.write_bytes(bytes(data))


def _edit_step(path):
    state = json.loads(path.read_text())
    state["step"] = 7  # still valid JSON: only the checksum tells
    path.write_text(json.dumps(state))


DAMAGES = {
    "truncated optimizer": (
        "topk/optimizer.safetensors",
        _truncate,
        r"topk/optimizer\.safetensors has [\d,]+ bytes, [\d,]+ were written",
    ),
    "bad json": (
        "trainer.json",
        lambda p: p.write_text('{"step": 8,'),
        r"trainer\.json is not valid JSON",
    ),
    "edited json": ("trainer.json", _edit_step, r"trainer\.json fails its sha256"),
    "missing tracker": (
        "rasae/tracker.safetensors",
        os.remove,
        r"rasae/tracker\.safetensors is missing",
    ),
    "flipped bit": (
        "mp/sae/model.safetensors",
        _flip_bit,
        r"mp/sae/model\.safetensors fails its sha256",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_a_damaged_latest_checkpoint_falls_back_to_the_intact_one(
    tokens, eight_steps, tmp_path, kind
):
    pristine, reference = eight_steps
    folder = tmp_path / "run"
    shutil.copytree(pristine, folder)
    file, damage, message = DAMAGES[kind]
    damage(folder / STEP_8 / file)
    with pytest.warns(CheckpointWarning, match=rf"{STEP_8}: {message}.*resuming from {STEP_4}"):
        resumed = _train(tokens, folder, resume=folder, max_steps=8, checkpoint_every=4)
    _assert_same(resumed, reference)
    verify_checkpoint(folder / STEP_8)  # rewritten by the resumed run: intact again
    damage(folder / STEP_8 / file)  # damaged again: an error that names it, never a raw one
    with pytest.raises(CheckpointError, match=rf"{STEP_8} is damaged: {message}"):
        verify_checkpoint(folder / STEP_8)


def test_fallback_equals_resuming_from_the_intact_checkpoint_directly(
    tokens, eight_steps, tmp_path
):
    pristine, reference = eight_steps
    shutil.copytree(pristine, tmp_path / "direct")
    direct = _train(
        tokens,
        tmp_path / "direct",
        resume=tmp_path / "direct" / STEP_4,
        max_steps=8,
        checkpoint_every=4,
    )
    shutil.copytree(pristine, tmp_path / "fallback")
    _flip_bit(tmp_path / "fallback" / STEP_8 / "topk" / "sae" / "model.safetensors")
    with pytest.warns(CheckpointWarning, match="topk/sae/model.safetensors fails"):
        fallback = _train(
            tokens,
            tmp_path / "fallback",
            resume=tmp_path / "fallback",
            max_steps=8,
            checkpoint_every=4,
        )
    _assert_same(fallback, direct)
    _assert_same(direct, reference)


def test_no_intact_checkpoint_is_an_error_that_names_each_damage(tokens, eight_steps, tmp_path):
    pristine, _ = eight_steps
    folder = tmp_path / "run"
    shutil.copytree(pristine, folder)
    _truncate(folder / STEP_8 / "mp" / "optimizer.safetensors")
    (folder / STEP_4 / "trainer.json").write_text("garbage")
    with pytest.raises(
        CheckpointError, match=r"no intact checkpoint.*mp/optimizer.*not valid JSON"
    ):
        _train(tokens, folder, resume=folder, max_steps=8, checkpoint_every=4)
    with pytest.raises(
        CheckpointError, match=r"step-000000008 is damaged: mp/optimizer.*fall back"
    ):
        _train(tokens, folder, resume=folder / STEP_8, max_steps=8, checkpoint_every=4)


def test_a_resume_with_other_settings_is_refused_listing_the_fields(tokens, eight_steps, tmp_path):
    pristine, reference = eight_steps
    folder = tmp_path / "run"
    shutil.copytree(pristine, folder)
    with pytest.raises(CheckpointError) as caught:
        _train(
            tokens,
            folder,
            resume=folder,
            max_steps=12,
            lr=1e-3,
            checkpoint_every=5,
            batch_size=64,
            targets=_targets(k=8),
        )
    message = str(caught.value)
    for line in (
        "train.max_steps: 8 → 12",
        "train.lr: 0.003 → 0.001",
        "saes.topk.config.k: 4 → 8",
        "source.batch_size: 128 → 64",
        "allow_changes=(",
    ):
        assert line in message, message
    assert "checkpoint_every" not in message  # always allowed
    # extend the run: allowed by name, 4 more steps, the new setting recorded
    longer = _train(
        tokens, folder, resume=folder, max_steps=12, checkpoint_every=4, allow=("max_steps",)
    )
    assert longer.steps == 12 and longer.checkpoint.name == "step-000000012"
    saved = json.loads((longer.checkpoint / "trainer.json").read_text())
    assert saved["run"]["train"]["max_steps"] == 12
    first = {name: sae.state_dict() for name, sae in reference.saes.items()}
    assert not torch.equal(longer.saes["topk"].state_dict()["W_enc"], first["topk"]["W_enc"])


def test_an_allowed_sae_change_applies_when_it_fits_the_saved_weights(
    tokens, eight_steps, tmp_path
):
    pristine, _ = eight_steps
    folder = tmp_path / "run"
    shutil.copytree(pristine, folder)
    common = dict(resume=folder, max_steps=8, checkpoint_every=4)
    result = _train(tokens, folder, targets=_targets(k=3), allow=("saes.topk.config.k",), **common)
    assert result.saes["topk"].k == 3 and result.saes["topk"].config.k == 3
    wider = [SAETarget("topk", "tokens", TopKConfig(n_concepts=2 * C, k=K)), *_targets()[1:]]
    with pytest.raises(CheckpointError, match=r"SAE 'topk' cannot take the changed \['n_concepts'"):
        _train(tokens, folder, targets=wider, allow=("n_concepts", "aux_k"), **common)


def test_a_run_that_never_completed_a_checkpoint_starts_afresh(tokens, straight, tmp_path):
    folder = tmp_path / "run"
    stale = folder / ".tmp-step-000000004" / "topk"
    stale.mkdir(parents=True)
    (stale / "optimizer.safetensors").write_bytes(b"half written")
    with pytest.warns(CheckpointWarning, match="no complete checkpoint.*from the beginning"):
        result = _train(tokens, folder, resume=folder)
    _assert_same(result, straight)
    assert not list(folder.glob(".tmp-step-*"))
    # the folder of this run's checkpoints, never created (a crash before the first write)
    with pytest.warns(CheckpointWarning, match="does not exist yet"):
        _train(tokens, tmp_path / "new", resume=tmp_path / "new", max_steps=2)
    with pytest.raises(CheckpointError, match=r"no checkpoint folder at .*typo"):
        _train(tokens, tmp_path / "new", resume=tmp_path / "typo", max_steps=2)


def test_all_non_finite_first_sample_names_the_layer(tokens, tmp_path):
    bad = tokens * float("inf")
    with pytest.raises(ValueError, match=r"layer 'tokens': all 512 tokens .* non-finite"):
        _train(bad, tmp_path)


def test_partly_non_finite_tokens_warn_once_and_are_counted_once(tokens):
    bad = tokens[:2048].clone()
    bad[::17, 3] = float("nan")
    bad[5::31, 0] = float("inf")
    n_bad = int((~torch.isfinite(bad).all(dim=1)).sum())
    source = TensorTokenSource(bad, 256, epochs=1, seed=0)
    config = _config(None, checkpoint_dir=None, max_steps=8, init_tokens=256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer(_targets(), source, config).run()
    about = [w for w in caught if "non-finite" in str(w.message)]
    assert len(about) == 1, [str(w.message) for w in caught]
    assert result.nonfinite_tokens == {"tokens": n_bad}  # once per token, not per SAE
    assert all(torch.isfinite(p).all() for sae in result.saes.values() for p in sae.parameters())


class _Closing(TensorTokenSource):
    """A token source that must be closed and skips 3 unreadable images in its 2nd batch."""

    skipped_images = closed = calls = 0

    def next_batch(self):
        self.calls += 1
        self.skipped_images += 3 if self.calls == 2 else 0
        return super().next_batch()

    def close(self) -> None:
        self.closed += 1


def test_skipped_images_are_reported_and_the_source_is_closed(tokens, tmp_path, monkeypatch):
    source = _Closing(tokens, 128, epochs=None, seed=2)
    # the stream itself warns about unreadable images (tests/test_faults_data.py); the run
    # reports their count
    result = Trainer(_targets()[:1], source, _config(tmp_path, max_steps=3)).run()
    assert result.skipped_images == 3 and source.closed == 1
    _interrupt_in_forward(monkeypatch, {"topk": 2})
    interrupted = _Closing(tokens, 128, epochs=None, seed=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_targets()[:1], interrupted, _config(tmp_path / "b", max_steps=3)).run()
    assert interrupted.closed == 1
    assert (
        json.loads((tmp_path / "b" / "step-000000002" / "trainer.json").read_text())[
            "skipped_images"
        ]
        == 3
    )


@pytest.fixture(scope="module")
def organism():
    from probe_sae import load_model

    return load_model("organism")


def test_train_sae_passes_allow_changes_and_explains_a_batch_larger_than_the_data(
    organism, tmp_path
):
    from probe_sae import train_sae
    from probe_sae.organism.world import generate

    images = generate(8, seed=4).images
    common = dict(
        sae="topk",
        n_concepts=64,
        k=4,
        buffer_tokens=512,
        init_tokens=256,
        progress=False,
        checkpoint_dir=str(tmp_path),
        batch_size=128,
    )
    train_sae(organism, 1, images, max_steps=3, **common)
    with pytest.raises(CheckpointError, match=r"train\.max_steps: 3 → 4"):
        train_sae(organism, 1, images, max_steps=4, resume=tmp_path, **common)
    longer = train_sae(
        organism, 1, images, max_steps=4, resume=tmp_path, allow_changes=("max_steps",), **common
    )
    assert longer.steps == 4
    with pytest.raises(ValueError, match=r"fewer tokens than one batch of batch_size=4096.*lower"):
        train_sae(
            organism,
            1,
            generate(2, seed=4).images,
            sae="topk",
            n_concepts=64,
            batch_size=4096,
            max_steps=2,
            progress=False,
        )


@pytest.mark.parametrize(
    ("field", "value", "fix"),
    [
        ("max_steps", 0, "max_steps must be positive or none"),
        ("lr", 0.0, "lr must be positive"),
        ("log_every", 0, "log_every must be positive"),
    ],
)
def test_train_settings_that_cannot_run_are_refused(field, value, fix):
    """Before: ``max_steps=0`` trained one step. Now the config refuses it, naming the field."""
    from probe_sae.config import ConfigError

    with pytest.raises(ConfigError, match=fix):
        TrainConfig(**{field: value})
