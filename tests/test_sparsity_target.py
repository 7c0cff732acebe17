"""target_l0: the L0 controller of ReLU and JumpReLU SAEs, its state across checkpoints, and
the JumpReLU threshold's learnability."""

from __future__ import annotations

import math

import pytest
import torch
from toy_activations import sparse_mixture

from probe_sae.config import ConfigError
from probe_sae.saes import JumpReLUConfig, ReLUConfig, build_sae, load_sae
from probe_sae.saes.relu import COEFF_RANGE, L0_MOMENTUM, L0Controller
from probe_sae.stream import TensorTokenSource
from probe_sae.train import SAETarget, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 16, 64


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return sparse_mixture(n_tokens=4096, d_model=D, n_atoms=48, active=4, seed=5).x


# ---------------------------------------------------------------- controller mathematics
@pytest.mark.parametrize(
    ("l0", "direction"), [(24.0, 1), (12.0, -1), (16.0, 0)], ids=["above", "below", "at"]
)
def test_a_stationary_l0_moves_the_coefficient_towards_the_target(l0, direction):
    ctl = L0Controller(1e-3, target_l0=16, rate=0.01)
    start = float(ctl.coeff)
    for _ in range(50):
        ctl.update(torch.tensor(l0))
    error = (l0 - 16) / 16
    assert float(ctl.running_l0) == pytest.approx(l0)
    assert int(ctl.updates) == 50
    assert float(ctl.coeff) == pytest.approx(start * math.exp(50 * 0.01 * error), rel=1e-5)
    assert (float(ctl.coeff) > start) - (float(ctl.coeff) < start) == direction


def test_the_running_l0_is_an_exponential_average_started_at_the_first_batch():
    ctl = L0Controller(1.0, target_l0=10, rate=0.1)
    ctl.update(torch.tensor(20.0))
    assert float(ctl.running_l0) == 20.0
    ctl.update(torch.tensor(10.0))
    assert float(ctl.running_l0) == pytest.approx(L0_MOMENTUM * 20 + (1 - L0_MOMENTUM) * 10)


def test_the_relative_error_and_the_coefficient_are_clamped():
    ctl = L0Controller(1.0, target_l0=4, rate=0.5)
    ctl.update(torch.tensor(400.0))  # relative error 99, clamped to 1
    assert float(ctl.coeff) == pytest.approx(math.exp(0.5))
    for _ in range(100):
        ctl.update(torch.tensor(400.0))
    assert float(ctl.coeff) == pytest.approx(COEFF_RANGE)
    for _ in range(200):
        ctl.update(torch.tensor(0.0))
    assert float(ctl.coeff) == pytest.approx(1 / COEFF_RANGE)


def test_target_l0_is_validated_and_defaults_to_none():
    assert ReLUConfig().target_l0 is None and JumpReLUConfig().target_l0 is None
    with pytest.raises(ConfigError, match="target_l0 must be a positive"):
        ReLUConfig(target_l0=0)
    with pytest.raises(ConfigError, match="target_l0_rate must be positive"):
        JumpReLUConfig(target_l0=8, target_l0_rate=0)
    with pytest.raises(ValueError, match="must start positive"):
        build_sae(ReLUConfig(target_l0=8, l1_coeff=0.0), D)


@pytest.mark.parametrize("config", [ReLUConfig, JumpReLUConfig])
def test_the_controller_steps_only_in_training_and_its_coefficient_weights_the_penalty(
    config, tokens
):
    sae = build_sae(config(n_concepts=C, target_l0=4), D)
    x = tokens[:256]
    out = sae(x)  # a training-mode forward: the loss uses the coefficient before the update
    name = "l1_coeff" if config is ReLUConfig else "l0_coeff"
    penalty = "l1" if config is ReLUConfig else "l0"
    assert float(out.terms[name]) == pytest.approx(1e-3)
    assert float(out.loss) == pytest.approx(
        float(out.terms["mse"] + 1e-3 * out.terms[penalty]), rel=1e-6
    )
    ctl = sae.l0_controller
    assert int(ctl.updates) == 1 and float(ctl.running_l0) == pytest.approx(
        float(out.l0.float().mean())
    )
    assert float(ctl.coeff) > 1e-3  # a fresh SAE fires far more than 4 concepts per token
    sae.eval()
    before = {k: v.clone() for k, v in ctl.state_dict().items()}
    sae(x)
    assert all(torch.equal(before[k], v) for k, v in ctl.state_dict().items())


@pytest.mark.parametrize("config", [ReLUConfig, JumpReLUConfig])
def test_default_none_is_todays_sae_bitwise(config, tokens):
    sae = build_sae(config(n_concepts=C), D)
    assert sae.l0_controller is None
    extra = ["log_threshold"] if config is JumpReLUConfig else []
    assert list(sae.state_dict()) == [
        "b_pre",
        "W_enc",
        "b_enc",
        *extra,
        "input_mean",
        "input_scale",
        "decoder.weight",
    ]
    out = sae(tokens[:128])
    penalty = "l1" if config is ReLUConfig else "l0"
    assert set(out.terms) == {"mse", penalty}
    assert torch.equal(out.loss, out.terms["mse"] + 1e-3 * out.terms[penalty])


# ---------------------------------------------------------------- training and checkpoints
def _train_config(tmp_path=None, **kw) -> TrainConfig:
    base = dict(
        max_steps=40,
        lr=3e-3,
        warmup_steps=4,
        init_tokens=512,
        log_every=10,
        progress=False,
        summary_tokens=512,
    )
    if tmp_path is not None:
        base["checkpoint_dir"] = str(tmp_path)
    return TrainConfig(**{**base, **kw})


def _targets(target_l0: float | None = 6) -> list[SAETarget]:
    return [
        SAETarget("relu", "tokens", ReLUConfig(n_concepts=C, target_l0=target_l0)),
        SAETarget("jumprelu", "tokens", JumpReLUConfig(n_concepts=C, target_l0=target_l0)),
    ]


def test_the_coefficient_is_logged_and_saved_with_the_sae(tokens, tmp_path):
    source = TensorTokenSource(tokens, 128, epochs=None, seed=0)
    result = Trainer(_targets(), source, _train_config()).run()
    rows = [r for r in result.metrics if r["name"] == "relu"]
    assert rows[-1]["l1_coeff"] > rows[0]["l1_coeff"] > 1e-3  # L0 starts far above 6
    folders = result.save(tmp_path)
    for name, sae in result.saes.items():
        loaded = load_sae(folders[name])
        assert loaded.config.target_l0 == 6
        for key in ("coeff", "running_l0", "updates"):
            assert torch.equal(getattr(loaded.l0_controller, key), getattr(sae.l0_controller, key))
        x = tokens[:64]
        assert torch.equal(loaded.encode(x), sae.encode(x))  # inference ignores the state


def test_a_resumed_run_equals_an_uninterrupted_one(tokens, tmp_path):
    first = Trainer(
        _targets(),
        TensorTokenSource(tokens, 128, None, seed=2),
        _train_config(tmp_path, checkpoint_every=17, keep_checkpoints=5),
    ).run()
    resumed = Trainer(
        _targets(),
        TensorTokenSource(tokens, 128, None, seed=2),
        _train_config(tmp_path, checkpoint_every=17, keep_checkpoints=5),
    ).run(resume=tmp_path / "step-000000017")
    for name in ("relu", "jumprelu"):
        a, b = first.saes[name].state_dict(), resumed.saes[name].state_dict()
        assert a.keys() == b.keys() and int(a["l0_controller.updates"]) == 40
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


# ---------------------------------------------------------------- JumpReLU thresholds
def test_the_jumprelu_threshold_gets_a_straight_through_gradient_and_moves(tokens):
    config = JumpReLUConfig(n_concepts=C, bandwidth=0.5, init_threshold=0.5, l0_coeff=1e-2)
    sae = build_sae(config, D)
    sae.set_normalization(tokens.mean(0), tokens.std(0), "standardize")
    sae(tokens[:512]).loss.backward()
    grad = sae.log_threshold.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    assert int((grad != 0).sum()) > C // 2  # most thresholds have pre-activations in the window
    source = TensorTokenSource(tokens, 128, epochs=None, seed=0)
    result = Trainer(
        [SAETarget("j", "tokens", config)], source, _train_config(max_steps=60, lr=1e-2)
    ).run()
    moved = (result.saes["j"].log_threshold - math.log(0.5)).abs()
    assert float(moved.max()) > 0.05 and int((moved > 1e-3).sum()) > C // 2


def test_the_jumprelu_threshold_learns_under_bf16_autocast(tokens):
    config = JumpReLUConfig(n_concepts=C, bandwidth=0.5, init_threshold=0.5, target_l0=4)
    source = TensorTokenSource(tokens, 128, epochs=None, seed=0)
    cfg = _train_config(max_steps=30, lr=1e-2, sae_autocast="bfloat16")
    sae = Trainer([SAETarget("j", "tokens", config)], source, cfg).run().saes["j"]
    assert sae.log_threshold.dtype == torch.float32
    assert float((sae.log_threshold - math.log(0.5)).abs().max()) > 0.05


# ---------------------------------------------------------------- acceptance (slow)
def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float32)


def _organism(n_images: int = 1024) -> torch.Tensor:
    from probe_sae import load_model
    from probe_sae.hooks import capture
    from probe_sae.organism import generate

    model, images = load_model("organism"), generate(n_images, seed=0).images
    parts = [
        capture(model, images[i : i + 256], "blocks.2")["blocks.2"] for i in range(0, n_images, 256)
    ]
    return torch.cat([p.acts.float() for p in parts])


_THRESHOLDS_STUCK = pytest.mark.xfail(
    strict=True,
    reason="at bandwidth = init_threshold = 1e-3 the JumpReLU thresholds barely move in 1,500 "
    "Adam steps on standardised activations, whatever the L0 coefficient (docs: families.md)",
)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["relu", pytest.param("jumprelu", marks=_THRESHOLDS_STUCK)])
@pytest.mark.parametrize("data", ["digits", "organism"])
def test_target_l0_16_is_reached_within_25_percent(family, data):
    x = _digits() if data == "digits" else _organism()
    config = (ReLUConfig if family == "relu" else JumpReLUConfig)(target_l0=16)
    batch = 256 if data == "digits" else 512
    source = TensorTokenSource(x, batch, epochs=None, seed=0)
    result = Trainer(
        [SAETarget(family, "tokens", config)],
        source,
        TrainConfig(max_steps=1500, progress=False, log_every=150),
    ).run()
    assert abs(result.summary[family].l0 - 16) <= 0.25 * 16, result.summary[family]


@pytest.mark.parametrize("config", [ReLUConfig, JumpReLUConfig])
def test_a_saelens_export_without_the_controller_state_loads_with_a_fresh_one(
    config, tokens, tmp_path
):
    from probe_sae.saes import load_saelens, save_saelens

    sae = build_sae(config(n_concepts=C, target_l0=4), D)
    sae(tokens[:128])  # one controller step
    loaded = load_saelens(save_saelens(sae, tmp_path))
    assert loaded.config.target_l0 == 4 and int(loaded.l0_controller.updates) == 0
    assert torch.allclose(loaded.encode(tokens[:64]), sae.encode(tokens[:64]))
    partial = {k: v for k, v in sae.state_dict().items() if k != "l0_controller.updates"}
    with pytest.raises(RuntimeError, match=r"l0_controller\.updates"):
        build_sae(config(n_concepts=C, target_l0=4), D).load_state_dict(partial)
