"""Online SAE training from a token source: one or several SAEs per batch.

Each step, for every SAE: forward, backward, ``prepare_gradients`` (unit-norm atoms),
gradient clipping, AdamW, ``apply_constraints`` (feasible dictionary right after the step).
Before the first step the run estimates, on its first tokens, the normalisation statistics,
``b_pre`` (geometric median) and, for archetypal SAEs, the candidates (k-means), then rewinds
the source so those tokens are trained on too. Metrics are logged every ``log_every`` steps;
checkpoints are written atomically every ``checkpoint_every`` steps and on Ctrl-C, and
``resume=`` continues exactly where a checkpoint stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae._atomic import atomic_write
from probe_sae.allocator import on_cpu, tune_cpu_allocator
from probe_sae.config import to_dict
from probe_sae.constants import TRAINING_LOG
from probe_sae.metrics.reconstruction import ReconstructionStats
from probe_sae.saes import SAE, SAEConfig, build_sae, kmeans, load_sae
from probe_sae.stream.tokens import TokenSource
from probe_sae.train import checkpoint as ckpt
from probe_sae.train.config import TrainConfig
from probe_sae.train.dead import FiringTracker
from probe_sae.train.init import geometric_median, normalization_stats
from probe_sae.train.schedule import warmup_cosine


def build_for_run(config: SAEConfig, d_model: int, first_tokens_n: Tensor) -> SAE:
    """Build the SAE a config describes once the run has seen its first (normalised) tokens:
    an archetypal dictionary takes its candidates from them (k-means, seeded by the config).

    ``n_candidates`` defaults to ``max(n_concepts, min(4 × n_concepts, first tokens))``.
    """
    config = config.resolve(d_model)
    archetypal = config.archetypal_dictionary
    if archetypal is None:
        return build_sae(config, d_model)
    n_concepts = int(config.n_concepts)  # type: ignore[arg-type]
    n_tokens = first_tokens_n.shape[0]
    n_cand = archetypal.n_candidates or max(n_concepts, min(4 * n_concepts, n_tokens))
    if n_tokens < n_cand:
        raise ValueError(
            f"{config.family} needs {n_cand} archetypal candidates but the run's first sample has "
            f"only {n_tokens} tokens: raise TrainConfig.init_tokens"
        )
    candidates = kmeans(first_tokens_n, n_cand, seed=config.seed)
    return build_sae(config, d_model, candidates=candidates)


@dataclass
class SAETarget:
    """One SAE trained on one layer of the source, saved under ``name``: an SAE, or the config
    of one to build from the run's first tokens."""

    name: str
    layer: str
    sae: SAE | SAEConfig


@dataclass
class TrainResult:
    """What a training run returns.

    Attributes:
        saes: the trained SAEs by run name (the family names for ``train_sae``).
        metrics: the training log, one dict per SAE every ``log_every`` steps (``step``,
            ``tokens``, ``name``, ``fvu``, ``l0``, ``dead_fraction``, ``lr``, ...).
        steps, tokens: optimizer steps taken and tokens seen.
        nonfinite_tokens: per layer, tokens skipped because they were not finite.
        checkpoint: the latest checkpoint folder, when the run wrote checkpoints.
    """

    saes: dict[str, SAE]
    metrics: list[dict[str, Any]]
    steps: int
    tokens: int
    nonfinite_tokens: dict[str, int]
    checkpoint: Path | None

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write each SAE to ``out_dir/<name>/`` (``config.json`` + ``model.safetensors``) with
        its rows of the metrics log in ``training_log.json``; returns the folders by name."""
        folders: dict[str, Path] = {}
        for name, sae in self.saes.items():
            folder = sae.save_pretrained(Path(out_dir) / name)
            rows = [row for row in self.metrics if row.get("name") == name]
            text = json.dumps(rows, indent=1)
            atomic_write(folder / TRAINING_LOG, lambda tmp, text=text: Path(tmp).write_text(text))
            folders[name] = folder
        return folders


class _Run:
    """The training state of one SAE."""

    def __init__(self, target: SAETarget, sae: SAE, config: TrainConfig) -> None:
        self.name, self.layer, self.sae = target.name, target.layer, sae
        self.optimizer = torch.optim.AdamW(
            sae.parameters(),
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
            fused=_fused_supported(sae),
        )
        self.tracker = FiringTracker(sae.n_concepts, config.dead_window, config.dense_threshold)
        self.uses_dead_mask = hasattr(sae, "aux_coeff") and getattr(sae, "aux_coeff", 0) > 0
        self._reset_interval()

    def _reset_interval(self) -> None:
        self.stats = ReconstructionStats()
        self.l0_sum, self.loss_sum, self.n_steps = 0.0, 0.0, 0
        self.term_sums: dict[str, float] = {}

    def step(self, x: Tensor, lr: float, grad_clip: float | None) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        dead = self.tracker.dead_mask() if self.uses_dead_mask else None
        out = self.sae(x, dead_mask=dead)
        out.loss.backward()
        self.sae.prepare_gradients()
        if grad_clip is not None:
            clip_grad_norm(self.sae.parameters(), grad_clip)
        self.optimizer.step()
        self.sae.apply_constraints()
        with torch.no_grad():
            if out.sparse_codes is not None:
                codes = out.sparse_codes
                active = codes.indices[codes.values != 0]
                l0 = float(codes.l0().double().sum())
            else:
                active = out.dense_codes != 0
                l0 = float(active.double().sum())
            self.tracker.update(active, x.shape[0])
            self.stats.update(x, out.x_hat)
        self.l0_sum += l0
        self.loss_sum += float(out.loss.detach())
        self.n_steps += 1
        for key, value in out.terms.items():
            self.term_sums[key] = self.term_sums.get(key, 0.0) + float(value)

    def summary(self) -> dict[str, float]:
        row = {
            "fvu": self.stats.fvu,
            "l0": self.l0_sum / max(self.stats.n_tokens, 1),
            "loss": self.loss_sum / max(self.n_steps, 1),
            **{k: v / max(self.n_steps, 1) for k, v in self.term_sums.items()},
            **self.tracker.interval_summary(),
        }
        self._reset_interval()
        return row


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> float:
    """Scale the gradients so that their joint L2 norm is at most ``max_norm``; returns the norm.

    The same scaling as ``torch.nn.utils.clip_grad_norm_`` (factor ``max_norm / (norm + 1e-6)``
    when below 1), but the gradients are left untouched when no clipping is needed instead of
    being multiplied by 1.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = float(torch.linalg.vector_norm(norms))
    factor = max_norm / (total + 1e-6)
    if factor < 1.0:
        torch._foreach_mul_(grads, factor)
    return total


def _fused_supported(sae: SAE) -> bool:
    p = next(sae.parameters())
    return p.device.type in ("cpu", "cuda") and p.dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
    )


class Trainer:
    """Trains several SAEs from one token source.

    Example::

        source = TensorTokenSource(acts, batch_size=1024)
        result = Trainer([SAETarget("topk", "tokens", TopKConfig(k=32))], source,
                         TrainConfig(max_steps=1000)).run()
    """

    def __init__(
        self, targets: list[SAETarget], source: TokenSource, config: TrainConfig | None = None
    ) -> None:
        if not targets:
            raise ValueError("give at least one SAETarget")
        self.targets, self.source, self.config = targets, source, config or TrainConfig()
        names = [ckpt.check_run_name(t.name) for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"SAE run names must be unique, got {names}")
        self._validate()
        self.runs: list[_Run] = []
        self.step = self.tokens = 0
        self.metrics: list[dict[str, Any]] = []
        self.nonfinite = {t.layer: 0 for t in targets}
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ set-up
    def _validate(self) -> None:
        widths = self.source.widths()
        for t in self.targets:
            if t.layer not in widths:
                raise ValueError(
                    f"SAE {t.name!r} wants layer {t.layer!r}, the source streams {sorted(widths)}"
                )
            if isinstance(t.sae, SAE) and t.sae.d_model != widths[t.layer]:
                raise ValueError(
                    f"width mismatch for SAE {t.name!r}: it takes d_model={t.sae.d_model} but layer "
                    f"{t.layer!r} has width {widths[t.layer]}; build it with d_model={widths[t.layer]}"
                )
        cfg = self.config
        if cfg.max_steps is None and cfg.max_tokens is None:
            raise ValueError(
                "set TrainConfig.max_steps or max_tokens (the schedule needs a length)"
            )

    @property
    def total_steps(self) -> int:
        cfg = self.config
        by_tokens = cfg.max_tokens // self.source.batch_size if cfg.max_tokens is not None else None
        candidates = [s for s in (cfg.max_steps, by_tokens) if s is not None]
        return max(min(candidates), 1)

    def _first_tokens(self) -> dict[str, Tensor]:
        """Finite tokens of the first ``init_tokens`` of each layer; rewinds the source."""
        start = self.source.state_dict()
        layers = {t.layer for t in self.targets}
        chunks: dict[str, list[Tensor]] = {k: [] for k in layers}
        have = 0
        while have < self.config.init_tokens:
            batch = self.source.next_batch()
            if batch is None:
                break
            for k in layers:
                x = batch[k]
                chunks[k].append(x[torch.isfinite(x).all(dim=1)].float())
            have += self.source.batch_size
        self.source.load_state_dict(start)
        if have == 0:
            raise ValueError("the token source is empty")
        return {k: torch.cat(v) for k, v in chunks.items()}

    def _initialise(self) -> None:
        first = self._first_tokens()
        for t in self.targets:
            x = first[t.layer]
            mean, scale = normalization_stats(x, self.config.normalization)
            x_n = (x - mean) / scale
            sae = t.sae if isinstance(t.sae, SAE) else build_for_run(t.sae, x.shape[1], x_n)
            sae.set_normalization(
                mean.to(sae.b_pre), scale.to(sae.b_pre), self.config.normalization
            )
            describe = getattr(self.source, "describe", None)
            if describe is not None:
                sae.provenance = {**describe(t.layer), **sae.provenance}
            with torch.no_grad():
                sae.b_pre.copy_(geometric_median(x_n).to(sae.b_pre))
            sae.train()
            self.runs.append(_Run(t, sae, self.config))

    def _restore(self, path: str | Path) -> None:
        folder = ckpt.resolve_checkpoint(path)
        state = ckpt.read_checkpoint(folder)
        saved = {r["name"]: r["layer"] for r in state["targets"]}
        wanted = {t.name: t.layer for t in self.targets}
        if saved != wanted:
            raise ValueError(
                f"checkpoint {folder} trains {saved}, this run {wanted}: resume with the same targets"
            )
        for t in self.targets:
            run_state = ckpt.read_run(folder, t.name)
            loaded = load_sae(run_state["sae_dir"])
            if isinstance(t.sae, SAE):
                t.sae.load_state_dict(loaded.state_dict())
                t.sae.normalization = loaded.normalization
                sae = t.sae
            else:
                sae = loaded
            sae.train()
            run = _Run(t, sae, self.config)
            ckpt.load_optimizer_state(
                run.optimizer, run_state["optimizer_tensors"], run_state["optimizer_meta"]
            )
            run.tracker.load_state_dict(run_state["tracker"])
            self.runs.append(run)
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.metrics = list(state["metrics"])
        self.nonfinite = dict(state["nonfinite"])
        self.source.load_state_dict(state["source"])

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state into ``config.checkpoint_dir``."""
        if self.config.checkpoint_dir is None:
            raise ValueError("set TrainConfig.checkpoint_dir to write checkpoints")
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "config": to_dict(self.config),
            "source": self.source.state_dict(),
            "targets": [{"name": r.name, "layer": r.layer} for r in self.runs],
            "metrics": self.metrics,
            "nonfinite": self.nonfinite,
        }
        runs = {
            r.name: {"sae": r.sae, "optimizer": r.optimizer, "tracker": r.tracker}
            for r in self.runs
        }
        self.last_checkpoint = ckpt.write_checkpoint(
            Path(self.config.checkpoint_dir), self.step, state, runs, self.config.keep_checkpoints
        )
        return self.last_checkpoint

    # -------------------------------------------------------------------- loop
    def run(self, resume: str | Path | None = None) -> TrainResult:
        """Train until ``total_steps`` (or the source ends); returns the SAEs and the metrics log."""
        if resume is not None:
            self._restore(resume)
        else:
            self._initialise()
        if any(on_cpu(r.sae.b_pre.device) for r in self.runs):
            tune_cpu_allocator()
        cfg, total = self.config, self.total_steps
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="training SAEs",
            unit="step",
            disable=not cfg.progress,
        )
        interval_start, interval_tokens = time.perf_counter(), 0
        try:
            while self.step < total:
                batch = self.source.next_batch()
                if batch is None:
                    break
                for run in self.runs:
                    x = batch[run.layer]
                    finite = torch.isfinite(x).all(dim=1)
                    if not bool(finite.all()):
                        self.nonfinite[run.layer] += int((~finite).sum())
                        x = x[finite]
                    if x.shape[0] == 0:
                        continue
                    lr = self._lr(self.step, total)
                    run.step(
                        x.to(device=run.sae.b_pre.device, dtype=run.sae.b_pre.dtype),
                        lr,
                        cfg.grad_clip,
                    )
                n = next(iter(batch.values())).shape[0]
                self.step += 1
                self.tokens += n
                interval_tokens += n
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    elapsed = time.perf_counter() - interval_start
                    self._log(lr, interval_tokens / max(elapsed, 1e-9))
                    bar.set_postfix(
                        tok_s=f"{interval_tokens / max(elapsed, 1e-9):,.0f}",
                        fvu=f"{self.metrics[-1]['fvu']:.3f}",
                    )
                    interval_start, interval_tokens = time.perf_counter(), 0
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if any(run.n_steps for run in self.runs):  # the source ended between two log rows
                elapsed = time.perf_counter() - interval_start
                self._log(self._lr(self.step - 1, total), interval_tokens / max(elapsed, 1e-9))
        except KeyboardInterrupt:
            if cfg.checkpoint_dir is not None:
                self.save_checkpoint()
            raise
        finally:
            bar.close()
        if cfg.checkpoint_dir is not None and (
            self.last_checkpoint is None
            or not self.last_checkpoint.name.endswith(f"{self.step:09d}")
        ):
            self.save_checkpoint()
        for run in self.runs:
            run.sae.eval()
        return TrainResult(
            {r.name: r.sae for r in self.runs},
            self.metrics,
            self.step,
            self.tokens,
            dict(self.nonfinite),
            self.last_checkpoint,
        )

    def _lr(self, step: int, total: int) -> float:
        cfg = self.config
        return warmup_cosine(step, total, cfg.lr, cfg.warmup_steps, cfg.lr * cfg.final_lr_fraction)

    def _log(self, lr: float, tokens_per_s: float) -> None:
        for run in self.runs:
            if run.n_steps == 0:
                continue
            row = {
                "step": self.step,
                "tokens": self.tokens,
                "name": run.name,
                "layer": run.layer,
                "lr": lr,
            }
            row.update(run.summary())
            row["tokens_per_s"] = tokens_per_s
            row["nonfinite_tokens"] = self.nonfinite[run.layer]
            self.metrics.append(row)
