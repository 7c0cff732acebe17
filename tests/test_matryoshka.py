"""Matryoshka SAEs (Bussmann et al. 2025): the loss is the sum of the nested prefixes'
reconstruction losses, one prefix is exactly TopK / BatchTopK, the archetypal variant keeps its
constraints, and the family saves, loads, trains online and comes out of the command line."""

from __future__ import annotations

import shlex

import pytest
import torch
from reference_saes import dense_topk

from probe_sae import build_sae, evaluate, kmeans, load_sae, train_sae
from probe_sae.cli import build_parser, run_config_from_args
from probe_sae.config import ConfigError
from probe_sae.saes import (
    BatchTopKConfig,
    BatchTopKSAE,
    MatryoshkaConfig,
    MatryoshkaSAE,
    TopKConfig,
    TopKSAE,
    family_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 12, 40


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(sae: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero biases so the tests exercise them."""
    g = _gen(seed)
    with torch.no_grad():
        for name in ("b_pre", "b_enc"):
            p = getattr(sae, name)
            p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _dense_batchtopk(pre_NC: torch.Tensor, k: int) -> torch.Tensor:
    """The N·k largest positive entries of the batch's ReLU pre-activations, dense."""
    relu = torch.relu(pre_NC)
    flat = relu.reshape(-1)
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[flat.topk(pre_NC.shape[0] * k).indices] = True
    return (relu * (kept & (flat > 0)).view_as(relu).to(relu.dtype)).view_as(pre_NC)


def _reference_loss(sae: MatryoshkaSAE, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Σ over prefixes m of mse(x, b_pre + (codes masked to the first m latents) @ D)."""
    loss = x.new_zeros(())
    for m in sae.prefix_sizes:
        mask = (torch.arange(sae.n_concepts) < m).to(codes.dtype)
        x_hat = (codes * mask) @ sae.dictionary + sae.b_pre
        loss = loss + (x_hat - x).pow(2).mean()
    return loss


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_loss_is_the_sum_of_the_prefix_losses_in_value_and_gradient(activation):
    config = MatryoshkaConfig(
        n_concepts=C, k=4, prefixes=(0.1, 0.25, 17, 1.0), activation=activation
    )
    sae = MatryoshkaSAE(D, config).double()
    _randomise(sae)
    assert sae.prefix_sizes == (4, 10, 17, C) and sae.n_prefixes == 4
    x = torch.randn(64, D, generator=_gen(1), dtype=torch.float64)

    out = sae(x)
    out.loss.backward()
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()

    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc
    if activation == "topk":
        codes = dense_topk(x - sae.b_pre, sae.W_enc, sae.b_enc, 4)
    else:
        codes = _dense_batchtopk(pre, 4)
    torch.testing.assert_close(out.codes, codes.detach(), rtol=0, atol=1e-12)
    loss = _reference_loss(sae, x, codes)
    torch.testing.assert_close(out.loss, loss, rtol=1e-12, atol=0)
    loss.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
    # the full reconstruction is the last prefix's, and the shallow prefixes lose more
    torch.testing.assert_close(out.x_hat, out.codes @ sae.dictionary + sae.b_pre)
    assert out.terms["prefix_mse"] > 3 * out.terms["mse"]


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_one_prefix_is_exactly_the_topk_or_batchtopk_sae(activation):
    config = dict(n_concepts=C, k=4, seed=3)
    if activation == "topk":
        plain = TopKSAE(D, TopKConfig(**config))
    else:
        plain = BatchTopKSAE(D, BatchTopKConfig(**config))
    _randomise(plain, seed=2)
    nested = MatryoshkaSAE(D, MatryoshkaConfig(prefixes=(1.0,), activation=activation, **config))
    nested.load_state_dict(plain.state_dict())
    assert nested.prefix_sizes == (C,)
    x = torch.randn(100, D, generator=_gen(4))
    dead = torch.zeros(C, dtype=torch.bool)
    dead[::3] = True
    kwargs = {"dead_mask": dead} if activation == "topk" else {}
    outs = []
    for sae in (plain, nested):
        out = sae(x, **kwargs)
        out.loss.backward()
        outs.append((out, {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (a, grads_a), (b, grads_b) = outs
    assert torch.equal(a.loss, b.loss) and torch.equal(a.codes, b.codes)
    assert torch.equal(a.x_hat, b.x_hat)
    assert set(a.terms) <= set(b.terms) and ("auxk" in b.terms) == (activation == "topk")
    for name, grad in grads_a.items():
        assert torch.equal(grad, grads_b[name]), name
    if activation == "batchtopk":
        assert torch.equal(plain.threshold, nested.threshold)
        plain.eval(), nested.eval()
        assert torch.equal(plain.encode(x), nested.encode(x))


def test_prefixes_are_checked_and_resolved():
    assert MatryoshkaConfig().prefixes == (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    sizes = MatryoshkaConfig(n_concepts=512).prefix_sizes()
    assert sizes == (32, 64, 128, 256, 512)
    # fractions round, duplicates merge, the whole dictionary is always the last prefix
    assert MatryoshkaConfig(n_concepts=10, prefixes=(0.01, 0.04, 0.5)).prefix_sizes() == (1, 5, 10)
    with pytest.raises(ConfigError, match="must be whole"):
        MatryoshkaConfig(prefixes=(0.5, 2.5))
    with pytest.raises(ConfigError, match="positive"):
        MatryoshkaConfig(prefixes=(0.0, 1.0))
    with pytest.raises(ValueError, match="larger than the dictionary"):
        build_sae("matryoshka", D, C, prefixes=(64,))
    with pytest.raises(ConfigError, match="activation"):
        MatryoshkaConfig(activation="jumprelu")  # type: ignore[arg-type]


def _train_steps(sae, x, steps=20, lr=0.2):
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        sae(x).loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
        yield sae


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_matryoshka_rasae_keeps_its_archetypal_constraints(activation):
    torch.manual_seed(0)
    x = torch.randn(256, D)
    candidates = kmeans(x, 48, seed=0)
    delta = 0.3
    sae = build_sae(
        "matryoshka_rasae", D, 24, candidates=candidates, delta=delta, k=4, activation=activation
    )
    assert isinstance(sae, MatryoshkaSAE) and sae.label == "rasae (matryoshka)"
    w0 = sae.decoder.weights.detach().clone()
    for s in _train_steps(sae, x):
        w, lam = s.decoder.weights, s.decoder.relaxation
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones(24))
        assert (lam.norm(dim=1) <= delta + 1e-6).all()
        torch.testing.assert_close(s.dictionary, w @ candidates + lam)
    assert (sae.decoder.weights - w0).abs().max() > 1e-3  # it did train
    asae = build_sae("matryoshka_asae", D, 24, candidates=candidates, k=4)
    assert asae.decoder.relaxation is None and asae.config.archetypal.delta == 0


def test_archetypal_names_and_their_errors():
    config = family_config("matryoshka_rasae", k=8, delta=0.5, activation="topk")
    assert isinstance(config, MatryoshkaConfig) and config.archetypal.delta == 0.5
    assert family_config("rasae", encoder="matryoshka").family == "matryoshka"
    with pytest.raises(ConfigError, match="matryoshka_asae has delta = 0"):
        family_config("matryoshka_asae", delta=1.0)
    with pytest.raises(ConfigError, match="matryoshka encoder"):
        family_config("matryoshka_rasae", encoder="topk")


def _trained(family: str, **fields):
    torch.manual_seed(0)
    x = torch.randn(128, D) * 2 + 1
    if family.endswith("asae"):
        fields["candidates"] = kmeans(x, 32, seed=0)
    sae = build_sae(family, D, 24, k=3, seed=1, **fields)
    sae.set_normalization(x.mean(0), x.std(0), "standardize")
    for _ in _train_steps(sae, x, steps=3, lr=1e-2):
        pass
    return sae.eval(), x


@pytest.mark.parametrize(
    "family, fields",
    [
        ("matryoshka", {"activation": "topk"}),
        ("matryoshka", {"activation": "batchtopk", "prefixes": (3, 0.5, 1.0)}),
        ("matryoshka_rasae", {"init": "random"}),
    ],
)
def test_save_load_round_trip(family, fields, tmp_path):
    sae, x = _trained(family, **fields)
    sae.save_pretrained(tmp_path / "s")
    loaded = load_sae(tmp_path / "s")
    assert type(loaded) is MatryoshkaSAE and loaded.config == sae.config
    assert loaded.prefix_sizes == sae.prefix_sizes
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x).x_hat, sae(x).x_hat)
        assert torch.equal(loaded(x).loss, sae(x).loss)


@pytest.mark.filterwarnings("ignore:short training run")
def test_tiny_online_run_on_the_organism_then_save_load_and_evaluate(tmp_path):
    from probe_sae import load_model
    from probe_sae.organism.world import generate

    model = load_model("organism")
    images = generate(24, seed=4).images
    result = train_sae(
        model, "blocks.1", images, sae=["matryoshka", "matryoshka_rasae"], n_concepts=64, k=4,
        prefixes=(0.25, 0.5, 1.0), batch_size=128, buffer_tokens=512, max_steps=5, log_every=5,
        init_tokens=512, progress=False,
    )  # fmt: skip
    assert sorted(result.saes) == ["matryoshka", "matryoshka_rasae"]
    assert result.saes["matryoshka_rasae"].label == "rasae (matryoshka)"
    folders = result.save(tmp_path)
    tokens = torch.randn(300, model.layer_info("blocks.1").shape[-1], generator=_gen(9)) * 2
    for name, sae in result.saes.items():
        assert sae.prefix_sizes == (16, 32, 64)
        row = [r for r in result.metrics if r["name"] == name][-1]
        assert row["step"] == 5 and row["prefix_mse"] > row["mse"] > 0
        loaded = load_sae(folders[name])
        a, b = evaluate(sae, tokens, geometry=False), evaluate(loaded, tokens, geometry=False)
        assert a.fvu == b.fvu and a.l0 == b.l0 and b.family == sae.label


def test_the_command_line_trains_matryoshka_families():
    args = build_parser().parse_args(
        shlex.split(
            "train organism --layer blocks.1 --images synthetic:8 --sae matryoshka "
            "matryoshka_rasae --prefixes 0.25,0.5,1 --activation topk --k 4 --n-concepts 64"
        )
    )
    run = run_config_from_args(args)
    assert sorted(run.saes) == ["matryoshka", "matryoshka_rasae"]
    for config in run.saes.values():
        assert isinstance(config, MatryoshkaConfig) and config.activation == "topk"
        assert config.prefixes == (0.25, 0.5, 1.0) and config.k == 4
    assert run.saes["matryoshka_rasae"].archetypal is not None
    assert run.saes["matryoshka"].archetypal is None
