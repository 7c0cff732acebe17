"""Online SAE training from a token source: one or several SAEs per batch.

Each step, for every SAE: forward, backward, ``prepare_gradients`` (unit-norm atoms),
gradient clipping, AdamW, ``apply_constraints`` (feasible dictionary right after the step).
Before the first step the run estimates, on the finite tokens of its first sample, the
normalisation statistics, ``b_pre`` (geometric median) and, for archetypal SAEs, the candidates
(k-means), then rewinds the source so those tokens are trained on too. Non-finite tokens are
skipped, counted and reported (one warning per run). Metrics are logged every ``log_every``
steps; checkpoints are written atomically every ``checkpoint_every`` steps, at the end and on
Ctrl-C, always at a step boundary, and ``resume=`` verifies them and continues exactly where
one stopped (see :meth:`Trainer.run`).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae._atomic import atomic_write
from probe_sae.allocator import on_cpu, tune_cpu_allocator
from probe_sae.config import to_dict
from probe_sae.constants import TRAINING_LOG
from probe_sae.metrics.evaluate import EvalReport
from probe_sae.saes import SAE, SAEConfig, build_sae, kmeans, load_sae
from probe_sae.saes.factory import sae_from_config
from probe_sae.stream.tokens import TokenSource
from probe_sae.train import checkpoint as ckpt
from probe_sae.train.config import TrainConfig
from probe_sae.train.init import geometric_median, normalization_stats
from probe_sae.train.interrupt import InterruptGuard
from probe_sae.train.sae_run import SAERun
from probe_sae.train.schedule import warmup_cosine
from probe_sae.train.summary import RecentTokens, summarize, warn_short_run


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
        skipped_images: images the source skipped as unreadable during the run, over all its
            resumes (the source's ``skipped_images``; 0 for a source without one).
        summary: per SAE, the final SAE (after the last step) evaluated exactly as
            :func:`~probe_sae.metrics.evaluate` does on the run's last
            ``TrainConfig.summary_tokens`` finite tokens (``summary[name].n_tokens`` states the
            window; after a resume, only tokens since the resume count). FVU, L0, dead
            (never fired in the window) and dense fractions; no geometry. Empty when
            ``summary_tokens`` is 0 or no step was taken.
    """

    saes: dict[str, SAE]
    metrics: list[dict[str, Any]]
    steps: int
    tokens: int
    nonfinite_tokens: dict[str, int]
    checkpoint: Path | None
    skipped_images: int = 0
    summary: dict[str, EvalReport] = field(default_factory=dict)

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
        self.runs: list[SAERun] = []
        self.step = self.tokens = 0
        self.metrics: list[dict[str, Any]] = []
        self.nonfinite = {t.layer: 0 for t in targets}
        self.last_checkpoint: Path | None = None
        self._saved_step: int | None = None  # step of the last checkpoint in checkpoint_dir
        self._torn = False  # interrupted inside a step: the state is not a consistent one
        self._warned_nonfinite = False
        self._skipped_before = self._skipped_start = 0
        self._interval_start, self._interval_tokens = time.perf_counter(), 0
        self._bar: Any = None
        self.recent = {t.layer: RecentTokens(self.config.summary_tokens) for t in targets}

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
                    f"width mismatch for SAE {t.name!r}: it takes d_model={t.sae.d_model} but "
                    f"layer {t.layer!r} has width {widths[t.layer]}; build it with "
                    f"d_model={widths[t.layer]}"
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

    def run_config(self) -> dict[str, Any]:
        """The settings a checkpoint records and a resume must match: the TrainConfig
        (``train``), each SAE's layer and resolved config (``saes.<name>``) and the source's
        description (``source``, see :func:`~probe_sae.train.checkpoint.describe_source`)."""
        widths = self.source.widths()
        saes = {}
        for t in self.targets:
            config = t.sae.config if isinstance(t.sae, SAE) else t.sae.resolve(widths[t.layer])
            saes[t.name] = {"layer": t.layer, "config": to_dict(config)}
        return {
            "train": to_dict(self.config),
            "saes": saes,
            "source": ckpt.describe_source(self.source),
        }

    def _first_tokens(self) -> dict[str, Tensor]:
        """Finite tokens of the first ``init_tokens`` of each layer; rewinds the source."""
        start = self.source.state_dict()
        layers = sorted({t.layer for t in self.targets})
        chunks: dict[str, list[Tensor]] = {k: [] for k in layers}
        have = seen = 0
        while have < self.config.init_tokens:
            batch = self.source.next_batch()
            if batch is None:
                break
            for k in layers:
                x = batch[k]
                chunks[k].append(x[torch.isfinite(x).all(dim=1)].float())
            have += self.source.batch_size
            seen += batch[layers[0]].shape[0]
        self.source.load_state_dict(start)
        if have == 0:
            raise ValueError(self._no_batch_message())
        first = {k: torch.cat(v) for k, v in chunks.items()}
        for layer, x in first.items():
            if x.shape[0] == 0:
                raise ValueError(
                    f"layer {layer!r}: all {seen} tokens of the run's first sample (init_tokens="
                    f"{self.config.init_tokens}) are non-finite (NaN or Inf), so no normalisation "
                    "can be estimated; check the model and its inputs (the images' scale, a hook "
                    "that produces NaN) before training on this layer"
                )
        return first

    def _no_batch_message(self) -> str:
        source, batch_size = self.source, self.source.batch_size
        read = getattr(source, "images_read", None)
        skipped = int(getattr(source, "skipped_images", 0) or 0)
        if read == 0 and skipped:
            return (
                f"the token source gave no batch: none of its images could be read ({skipped} "
                "skipped as unreadable); check the image files"
            )
        detail = f" (it read {read} images" if read else ""
        if read:
            length = getattr(getattr(source, "source", None), "length", None)
            per_image = getattr(source, "tokens_per_image", None)
            if length and per_image is not None:
                detail += f"; one pass gives {length * per_image():,} tokens"
            detail += f", {skipped} unreadable ones skipped)" if skipped else ")"
        return (
            f"the token source gave no batch: it holds fewer tokens than one batch of "
            f"batch_size={batch_size}{detail}; lower batch_size (StreamConfig.batch_size, "
            "batch_size= of train_sae) or give the source more data"
        )

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
            self.runs.append(SAERun(t.name, t.layer, sae, self.config))

    # ------------------------------------------------------------------ resume
    def _restore(self, path: str | Path, allow_changes: Sequence[str]) -> bool:
        """Load the newest intact checkpoint of ``path``; False when there is none to load."""
        own = self.config.checkpoint_dir
        new_run_ok = own is not None and Path(path).resolve() == Path(own).resolve()
        opened = ckpt.open_checkpoint(path, new_run_ok=new_run_ok)
        if opened is None:
            return False
        folder, state = opened
        saved = {r["name"]: r["layer"] for r in state["targets"]}
        wanted = {t.name: t.layer for t in self.targets}
        if saved != wanted:
            raise ckpt.CheckpointError(
                f"checkpoint {folder} trains {saved}, this run {wanted}: resume with the same "
                "SAE names and layers"
            )
        changes = ckpt.check_run_config(folder, state["run"], self.run_config(), allow_changes)
        try:
            for t in self.targets:
                run = self._load_run(folder, t, changes)
                run.load_interval_state(state["intervals"][t.name])
                self.runs.append(run)
            self.source.load_state_dict(state["source"])
        except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as err:
            if isinstance(err, ckpt.CheckpointError):
                raise
            raise ckpt.CheckpointError(
                f"checkpoint {folder} passed its checksums but could not be loaded ({err}): it "
                "was written by another probe_sae version, or an allowed change does not fit "
                "its saved state; resume with the version and arguments that wrote it"
            ) from err
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.metrics = list(state["metrics"])
        self.nonfinite = {**self.nonfinite, **state["nonfinite"]}
        self._skipped_before = int(state["skipped_images"])
        self.last_checkpoint = folder
        if own is not None and folder.parent.resolve() == Path(own).resolve():
            self._saved_step = self.step
        return True

    def _load_run(
        self, folder: Path, target: SAETarget, changes: list[tuple[str, Any, Any]]
    ) -> SAERun:
        run_state = ckpt.read_run(folder, target.name)
        loaded = load_sae(run_state["sae_dir"])
        if isinstance(target.sae, SAE):
            target.sae.load_state_dict(loaded.state_dict())
            target.sae.normalization = loaded.normalization
            target.sae.provenance = {**loaded.provenance, **target.sae.provenance}
            sae = target.sae
        else:
            sae = _with_changes(loaded, target.name, changes)
        sae.train()
        run = SAERun(target.name, target.layer, sae, self.config)
        ckpt.load_optimizer_state(
            run.optimizer, run_state["optimizer_tensors"], run_state["optimizer_meta"]
        )
        for group in run.optimizer.param_groups:  # an allowed change of these takes effect
            group["betas"], group["weight_decay"] = self.config.betas, self.config.weight_decay
        run.tracker.load_state_dict(run_state["tracker"])
        return run

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state into ``config.checkpoint_dir``."""
        if self.config.checkpoint_dir is None:
            raise ValueError("set TrainConfig.checkpoint_dir to write checkpoints")
        if self._torn:
            raise RuntimeError(
                "this run was interrupted inside a step, its SAEs partly updated: no checkpoint "
                "can be written of that state; resume from its last checkpoint instead"
            )
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "run": self.run_config(),
            "source": self.source.state_dict(),
            "targets": [{"name": r.name, "layer": r.layer} for r in self.runs],
            "metrics": self.metrics,
            "intervals": {r.name: r.interval_state() for r in self.runs},
            "nonfinite": self.nonfinite,
            "skipped_images": self.skipped_images,
        }
        runs = {
            r.name: {"sae": r.sae, "optimizer": r.optimizer, "tracker": r.tracker}
            for r in self.runs
        }
        self.last_checkpoint = ckpt.write_checkpoint(
            Path(self.config.checkpoint_dir), self.step, state, runs, self.config.keep_checkpoints
        )
        self._saved_step = self.step
        return self.last_checkpoint

    @property
    def skipped_images(self) -> int:
        """Unreadable images the source skipped in this run (and before its checkpoint)."""
        now = int(getattr(self.source, "skipped_images", 0) or 0)
        return self._skipped_before + max(now - self._skipped_start, 0)

    # -------------------------------------------------------------------- loop
    def run(
        self, resume: str | Path | None = None, allow_changes: Sequence[str] = ()
    ) -> TrainResult:
        """Train until ``total_steps`` (or the source ends); returns the SAEs and the metrics log.

        Args:
            resume: a run's checkpoint directory (or one of its ``step-*`` folders) to continue
                from exactly. The newest checkpoint is verified (checksums of every file) and a
                damaged one is skipped for the newest intact one, with a
                :class:`~probe_sae.train.checkpoint.CheckpointWarning` naming the damage. A
                directory with no complete checkpoint yet (or ``checkpoint_dir`` itself, not yet
                created) starts the run afresh with a warning, so the same call with ``resume=``
                always works. The run's settings (:meth:`run_config`) must match the
                checkpoint's; otherwise a
                :class:`~probe_sae.train.checkpoint.CheckpointError` lists the differing fields.
            allow_changes: settings that may differ from the checkpoint's, by dotted path
                (``"train.max_steps"``) or field name (``"max_steps"``, matching that field
                everywhere); the new values are used from the checkpoint's step on (an SAE
                config change must fit the saved weights). ``progress``, ``log_every``,
                ``checkpoint_every``, ``keep_checkpoints``, ``checkpoint_dir`` and the stream's
                ``num_workers`` may always change. Fields read only when a run starts
                (``init_tokens``, ``normalization``) have no effect on a resumed run. Resuming
                from an older ``step-*`` folder replaces the later checkpoints of its directory
                as the run goes on.

        Ctrl-C (SIGINT, main thread) during a step is held until every SAE has finished that
        step; then the checkpoint of that step boundary is written (with ``checkpoint_dir``)
        and KeyboardInterrupt propagates. A Ctrl-C while the source reads a batch rolls the
        source back to the last step. A second Ctrl-C, or a KeyboardInterrupt raised inside a
        step some other way, stops at once and writes nothing: resume continues from the last
        checkpoint. The source's ``close()``, if it has one, is called however the run ends.
        """
        allowed = (allow_changes,) if isinstance(allow_changes, str) else tuple(allow_changes)
        try:
            self._skipped_start = int(getattr(self.source, "skipped_images", 0) or 0)
            if resume is None or not self._restore(resume, allowed):
                self._initialise()
            if any(on_cpu(r.sae.b_pre.device) for r in self.runs):
                tune_cpu_allocator()
            self._train(self.total_steps)
            warn_short_run(
                self.tokens,
                self.step,
                (r.sae.n_concepts for r in self.runs),
                self.config.warmup_steps,
            )
            if self.config.checkpoint_dir is not None and self._saved_step != self.step:
                self.save_checkpoint()
        finally:
            close = getattr(self.source, "close", None)
            if callable(close):
                close()
        return self._result()

    def _train(self, total: int) -> None:
        self._bar = tqdm(
            total=total,
            initial=self.step,
            desc="training SAEs",
            unit="step",
            disable=not self.config.progress,
        )
        self._interval_start, self._interval_tokens = time.perf_counter(), 0
        phase, before = "boundary", None
        try:
            with InterruptGuard() as guard:
                while self.step < total:
                    before, phase = self.source.state_dict(), "fetch"
                    batch = self.source.next_batch()
                    if batch is None:
                        break
                    with guard.deferred():
                        phase = "step"
                        self._step(batch, total)
                        phase = "boundary"
                with guard.deferred():
                    phase = "step"
                    if any(run.n_steps for run in self.runs):  # the source ended between rows
                        self._log_interval(self._lr(self.step - 1, total))
                    phase = "boundary"
        except KeyboardInterrupt:
            self._interrupted(phase, before)
            raise
        finally:
            self._bar.close()

    def _step(self, batch: dict[str, Tensor], total: int) -> None:
        """One step of every SAE on ``batch``, its log row and its checkpoint when due."""
        cfg, lr = self.config, self._lr(self.step, total)
        xs = self._finite(batch)
        for run in self.runs:
            x = xs[run.layer]
            if x.shape[0] == 0:
                continue
            run.step(
                x.to(device=run.sae.b_pre.device, dtype=run.sae.b_pre.dtype), lr, cfg.grad_clip
            )
        for layer, x in xs.items():
            self.recent[layer].add(x)
        n = next(iter(batch.values())).shape[0]
        self.step += 1
        self.tokens += n
        self._interval_tokens += n
        self._bar.update(1)
        if self.step % cfg.log_every == 0 or self.step == total:
            self._log_interval(lr)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def _finite(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each trained layer's finite tokens; the others are counted (and warned about once)."""
        out = {}
        for layer in dict.fromkeys(r.layer for r in self.runs):
            x = batch[layer]
            finite = torch.isfinite(x).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                self.nonfinite[layer] += bad
                x = x[finite]
                self._warn_nonfinite(layer, bad)
            out[layer] = x
        return out

    def _warn_nonfinite(self, layer: str, count: int) -> None:
        if self._warned_nonfinite:
            return
        self._warned_nonfinite = True
        warnings.warn(
            f"{count} non-finite (NaN or Inf) tokens of layer {layer!r} in step {self.step + 1} "
            "were skipped; later ones are skipped without a warning and counted in "
            "TrainResult.nonfinite_tokens (and the metrics' nonfinite_tokens)",
            RuntimeWarning,
            stacklevel=2,
        )

    def _interrupted(self, phase: str, before: dict[str, Any] | None) -> None:
        """After a KeyboardInterrupt: write the checkpoint of the last step boundary, unless the
        interrupt cut a step (then the state is partly updated and nothing is written)."""
        if phase == "step":
            self._torn = True
            last = self.last_checkpoint or "the start (no checkpoint was written yet)"
            warnings.warn(
                f"interrupted inside step {self.step + 1} while its SAEs were updating: no "
                "checkpoint is written of that partly updated state; resume= continues from "
                f"{last}",
                ckpt.CheckpointWarning,
                stacklevel=3,
            )
            return
        if phase == "fetch" and before is not None:
            self.source.load_state_dict(before)  # the batch being read is read again on resume
        if self.config.checkpoint_dir is not None and self._saved_step != self.step:
            self.save_checkpoint()

    def _result(self) -> TrainResult:
        for run in self.runs:
            run.sae.eval()
        skipped = self.skipped_images  # the stream warns about them itself
        return TrainResult(
            {r.name: r.sae for r in self.runs},
            self.metrics,
            self.step,
            self.tokens,
            dict(self.nonfinite),
            self.last_checkpoint,
            skipped,
            self._summaries(),
        )

    def _summaries(self) -> dict[str, EvalReport]:
        """Each SAE evaluated on the layer's last ``summary_tokens`` tokens (see TrainResult)."""
        out = {}
        for run in self.runs:
            tokens = self.recent[run.layer].tokens()
            if tokens is not None:
                out[run.name] = summarize(run.sae, tokens, self.config.dense_threshold)
        return out

    def _lr(self, step: int, total: int) -> float:
        cfg = self.config
        return warmup_cosine(step, total, cfg.lr, cfg.warmup_steps, cfg.lr * cfg.final_lr_fraction)

    def _log_interval(self, lr: float) -> None:
        elapsed = max(time.perf_counter() - self._interval_start, 1e-9)
        tokens_per_s = self._interval_tokens / elapsed
        self._log(lr, tokens_per_s)
        if self.metrics:
            self._bar.set_postfix(
                tok_s=f"{tokens_per_s:,.0f}", fvu=f"{self.metrics[-1]['fvu']:.3f}"
            )
        self._interval_start, self._interval_tokens = time.perf_counter(), 0

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


def _with_changes(sae: SAE, name: str, changes: list[tuple[str, Any, Any]]) -> SAE:
    """``sae`` (restored from a checkpoint) rebuilt with the allowed changes of its config
    (paths ``saes.<name>.config.<field>``), its weights kept."""
    prefix = f"saes.{name}.config."
    mine = {path[len(prefix) :]: new for path, _, new in changes if path.startswith(prefix)}
    if not mine:
        return sae
    data = to_dict(sae.config)
    for dotted, value in mine.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    try:
        rebuilt = sae_from_config(data, sae.d_model).to(sae.b_pre.dtype)
        rebuilt.load_state_dict(sae.state_dict())
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise ckpt.CheckpointError(
            f"SAE {name!r} cannot take the changed {sorted(mine)} on resume: its checkpointed "
            f"weights do not fit the new config ({err}); keep these fields or start a new run"
        ) from err
    rebuilt.normalization, rebuilt.provenance = sae.normalization, dict(sae.provenance)
    return rebuilt
