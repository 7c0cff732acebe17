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
from concurrent.futures import ThreadPoolExecutor
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
from probe_sae.train.devices import place_saes, run_device
from probe_sae.train.distributed import Ranks, current_ranks
from probe_sae.train.init import geometric_median, normalization_stats
from probe_sae.train.interrupt import InterruptGuard
from probe_sae.train.prefetch import Prefetcher
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
        #: the process group of a distributed run (``None``: one process)
        self.ranks: Ranks | None = current_ranks()
        self._prefetch: Prefetcher | None = None
        self._threads: ThreadPoolExecutor | None = None

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
        world = self.ranks.world_size if self.ranks is not None else 1
        step_tokens = self.source.batch_size * world  # the global batch
        by_tokens = cfg.max_tokens // step_tokens if cfg.max_tokens is not None else None
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
        if self.ranks is not None:
            return self._first_tokens_distributed(self.ranks)
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

    def _first_tokens_distributed(self, ranks: Ranks) -> dict[str, Tensor]:
        """The first ``init_tokens`` tokens of the global batches, on every rank: each rank's
        first batches, gathered in the order one process reading the union of the ranks'
        batches (rank 0's batch i, rank 1's batch i, ..., then batch i + 1) would see them."""
        start = self.source.state_dict()
        layers = sorted({t.layer for t in self.targets})
        batches: list[dict[str, Tensor]] = []
        while len(batches) * self.source.batch_size * ranks.world_size < self.config.init_tokens:
            batch = self.source.next_batch()
            if batch is None:
                break
            batches.append(batch)
        self.source.load_state_dict(start)
        n = ranks.all_reduce_min(len(batches), "the number of first batches")
        if n == 0:
            raise ValueError(self._no_batch_message())
        first = {}
        for k in layers:
            local = torch.stack([b[k].float() for b in batches[:n]])  # (n, B, d)
            every = ranks.all_gather(local, "the first tokens")  # (W, n, B, d)
            x = every.transpose(0, 1).reshape(-1, local.shape[-1])
            first[k] = x[torch.isfinite(x).all(dim=1)]
            if first[k].shape[0] == 0:
                raise ValueError(
                    f"layer {k!r}: all tokens of the run's first sample are non-finite (NaN or "
                    "Inf) on every rank; check the model and its inputs"
                )
        return first

    def _placement(self) -> dict[str, torch.device | None]:
        """Each SAE's device (``TrainConfig.device`` / ``sae_devices``; see place_saes)."""
        cfg = self.config
        device = run_device(cfg.device, self.source)
        if cfg.device is None and not cfg.sae_devices:  # an SAE given built stays put
            device = None if any(isinstance(t.sae, SAE) for t in self.targets) else device
        return place_saes([t.name for t in self.targets], device, cfg.sae_devices)

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
        placement = self._placement()
        for t in self.targets:
            x = first[t.layer]
            mean, scale = normalization_stats(x, self.config.normalization)
            x_n = (x - mean) / scale
            sae = t.sae if isinstance(t.sae, SAE) else build_for_run(t.sae, x.shape[1], x_n)
            if placement[t.name] is not None:
                sae = sae.to(placement[t.name])
            sae.set_normalization(
                mean.to(sae.b_pre), scale.to(sae.b_pre), self.config.normalization
            )
            describe = getattr(self.source, "describe", None)
            if describe is not None:
                sae.provenance = {**describe(t.layer), **sae.provenance}
            with torch.no_grad():
                sae.b_pre.copy_(geometric_median(x_n).to(sae.b_pre))
            sae.train()
            if self.ranks is not None:  # every rank trains rank 0's SAEs from here on
                self.ranks.broadcast_module(sae, f"the initial SAE {t.name!r}")
            self.runs.append(SAERun(t.name, t.layer, sae, self.config, self.ranks))

    # ------------------------------------------------------------------ resume
    def _restore(self, path: str | Path, allow_changes: Sequence[str]) -> bool:
        """Load the newest intact checkpoint of ``path``; False when there is none to load."""
        own = self.config.checkpoint_dir
        new_run_ok = own is not None and Path(path).resolve() == Path(own).resolve()
        ranks = self.ranks
        opened = (
            ckpt.open_checkpoint(path, new_run_ok=new_run_ok)
            if ranks is None  # else rank 0 verifies it and every rank reads the same one
            else ranks.on_main("the checkpoint", lambda: _open(path, new_run_ok))
        )
        if opened is None:
            return False
        folder, state = opened
        ckpt.check_world_size(folder, state, 1 if ranks is None else ranks.world_size)
        saved = {r["name"]: r["layer"] for r in state["targets"]}
        wanted = {t.name: t.layer for t in self.targets}
        if saved != wanted:
            raise ckpt.CheckpointError(
                f"checkpoint {folder} trains {saved}, this run {wanted}: resume with the same "
                "SAE names and layers"
            )
        run_config = self.run_config()
        changes = (
            ckpt.check_run_config(folder, state["run"], run_config, allow_changes)
            if ranks is None  # rank 0's source describes the run (each rank's part differs)
            else ranks.on_main(
                "the run settings",
                lambda: ckpt.check_run_config(folder, state["run"], run_config, allow_changes),
            )
        )
        main = ranks is None or ranks.is_main
        placement = self._placement()
        try:
            for t in self.targets:
                run = self._load_run(folder, t, changes, placement[t.name])
                if main:  # rank 0 saved the sums of every rank
                    run.load_interval_state(state["intervals"][t.name])
                self.runs.append(run)
            sources = state.get("sources") or [state["source"]]
            self.source.load_state_dict(sources[0 if ranks is None else ranks.rank])
        except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as err:
            if isinstance(err, ckpt.CheckpointError):
                raise
            raise ckpt.CheckpointError(
                f"checkpoint {folder} passed its checksums but could not be loaded ({err}): it "
                "was written by another probe_sae version, or an allowed change does not fit "
                "its saved state; resume with the version and arguments that wrote it"
            ) from err
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.metrics = list(state["metrics"]) if main else []
        if main:  # the saved counts are those of every rank
            self.nonfinite = {**self.nonfinite, **state["nonfinite"]}
            self._skipped_before = int(state["skipped_images"])
        self.last_checkpoint = folder
        if own is not None and folder.parent.resolve() == Path(own).resolve():
            self._saved_step = self.step
        return True

    def _load_run(
        self,
        folder: Path,
        target: SAETarget,
        changes: list[tuple[str, Any, Any]],
        device: torch.device | None = None,
    ) -> SAERun:
        run_state = ckpt.read_run(folder, target.name)
        loaded = load_sae(run_state["sae_dir"])
        if isinstance(target.sae, SAE) and device is None:
            device = target.sae.b_pre.device
        if device is not None:
            loaded = loaded.to(device)
        if isinstance(target.sae, SAE):
            target.sae.load_state_dict(loaded.state_dict())
            target.sae.normalization = loaded.normalization
            target.sae.provenance = {**loaded.provenance, **target.sae.provenance}
            sae = target.sae
        else:
            sae = _with_changes(loaded, target.name, changes)
        sae.train()
        if device is not None:
            sae = sae.to(device)
        run = SAERun(target.name, target.layer, sae, self.config, self.ranks)
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
        position = self._prefetch.position() if self._prefetch else self.source.state_dict()
        ranks = self.ranks
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "run": self.run_config(),
            "source": position,
            "targets": [{"name": r.name, "layer": r.layer} for r in self.runs],
            "metrics": self.metrics,
            "intervals": {},
            "nonfinite": self._total_nonfinite(),
            "skipped_images": self._total_skipped(),
        }
        if ranks is not None:  # rank 0 writes every rank's position and the summed intervals
            state["sources"] = ranks.gather_objects(position, "the stream positions")
            state["source"], state["world_size"] = state["sources"][0], ranks.world_size
            for r in self.runs:
                r.reduce_interval()
        state["intervals"] = {r.name: r.interval_state() for r in self.runs}
        runs = {
            r.name: {"sae": r.sae, "optimizer": r.optimizer, "tracker": r.tracker}
            for r in self.runs
        }
        root, step, keep = Path(self.config.checkpoint_dir), self.step, self.config.keep_checkpoints
        write = lambda: ckpt.write_checkpoint(root, step, state, runs, keep)  # noqa: E731
        self.last_checkpoint = write() if ranks is None else ranks.on_main("the checkpoint", write)
        self._saved_step = self.step
        return self.last_checkpoint

    def _total_nonfinite(self) -> dict[str, int]:
        """Non-finite tokens per layer, over every rank."""
        if self.ranks is None:
            return dict(self.nonfinite)
        keys = sorted(self.nonfinite)
        counts = torch.tensor([self.nonfinite[k] for k in keys], dtype=torch.long)
        total = self.ranks.all_reduce(counts, "the non-finite token counts")
        return dict(zip(keys, (int(v) for v in total), strict=True))

    def _total_skipped(self) -> int:
        """Unreadable images skipped, over every rank."""
        if self.ranks is None:
            return self.skipped_images
        t = torch.tensor([self.skipped_images], dtype=torch.long)
        return int(self.ranks.all_reduce(t, "the unreadable image counts")[0])

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
            self._start_helpers()
            self._train(self.total_steps)
            if self.ranks is None or self.ranks.is_main:
                warn_short_run(
                    self.tokens,
                    self.step,
                    (r.sae.n_concepts for r in self.runs),
                    self.config.warmup_steps,
                )
            if self.config.checkpoint_dir is not None and self._saved_step != self.step:
                self.save_checkpoint()
        finally:
            self._stop_helpers()
            close = getattr(self.source, "close", None)
            if callable(close):
                close()
        return self._result()

    def _start_helpers(self) -> None:
        """The prefetch thread (``TrainConfig.prefetch``; default: SAEs on a GPU) and, for SAEs
        spread over several GPUs in one process, one thread per device for their steps."""
        devices = {r.device for r in self.runs}
        on_gpu = any(d.type == "cuda" for d in devices)
        prefetch = self.config.prefetch if self.config.prefetch is not None else on_gpu
        if prefetch:
            model_device = getattr(getattr(self.source, "model", None), "device", None)
            self._prefetch = Prefetcher(self.source, model_device)
        if self.ranks is None and on_gpu and len(devices) > 1:  # collectives need one order
            self._threads = ThreadPoolExecutor(len(devices), thread_name_prefix="probe-sae-sae")

    def _stop_helpers(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()  # the source stays at the position after the last step
            self._prefetch = None
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None

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
                    before = None if self._prefetch else self.source.state_dict()
                    phase = "fetch"
                    batch = self._fetch(read_ahead=self.step + 1 < total)
                    if not self._every_rank_has(batch):
                        break
                    assert batch is not None
                    with guard.deferred():
                        phase = "step"
                        self._step(batch, total)
                        phase = "boundary"
                with guard.deferred():
                    phase = "step"
                    if self._steps_since_log():  # the source ended between rows
                        self._log_interval(self._lr(self.step - 1, total))
                    phase = "boundary"
        except KeyboardInterrupt:
            self._interrupted(phase, before)
            raise
        finally:
            self._bar.close()

    def _steps_since_log(self) -> bool:
        """Whether steps were taken since the last log row (agreed by every rank)."""
        pending = any(run.n_steps for run in self.runs)
        if self.ranks is None:
            return pending
        return bool(self.ranks.all_reduce_max(int(pending), "whether a log row is due"))

    def _fetch(self, read_ahead: bool) -> dict[str, Tensor] | None:
        """The next batch (``None`` at the end), read ahead by the prefetch thread if any."""
        if self._prefetch is not None:
            return self._prefetch.next(read_ahead)[1]
        return self.source.next_batch()

    def _every_rank_has(self, batch: dict[str, Tensor] | None) -> bool:
        """Whether this rank (and, in a distributed run, every rank) got a batch: a run stops
        when the first rank's part of the images ends."""
        if self.ranks is None:
            return batch is not None
        have = self.ranks.all_reduce_min(int(batch is not None), "whether every rank has a batch")
        return bool(have)

    def _step(self, batch: dict[str, Tensor], total: int) -> None:
        """One step of every SAE on ``batch``, its log row and its checkpoint when due."""
        cfg, lr = self.config, self._lr(self.step, total)
        xs = self._finite(batch)
        moved: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
        jobs = []
        for run in self.runs:
            x = xs[run.layer]
            if x.shape[0] == 0 and self.ranks is None:
                continue
            key = (run.layer, run.device, run.sae.b_pre.dtype)
            if key not in moved:  # each layer goes once to each device
                moved[key] = x.to(device=key[1], dtype=key[2], non_blocking=True)
            jobs.append((run, moved[key]))
        if self._threads is not None:
            futures = [self._threads.submit(r.step, x, lr, cfg.grad_clip) for r, x in jobs]
            for future in futures:
                future.result()
        else:
            for run, x in jobs:
                run.step(x, lr, cfg.grad_clip)
        for layer, x in xs.items():
            self.recent[layer].add(x)
        n = next(iter(batch.values())).shape[0]
        if self.ranks is not None:
            n = int(self.ranks.all_reduce(torch.tensor([n]), "the batch sizes")[0])
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
        if self._prefetch is not None:  # wait for the read in flight, then undo it
            self._prefetch.rewind()
        elif phase == "fetch" and before is not None:
            self.source.load_state_dict(before)  # the batch being read is read again on resume
        if self.ranks is not None:  # writing one needs every rank, which may not be here
            warnings.warn(
                f"interrupted at step {self.step} of a distributed run: no checkpoint is written "
                f"(it needs every rank); resume= continues from "
                f"{self.last_checkpoint or 'the start'}",
                ckpt.CheckpointWarning,
                stacklevel=3,
            )
            return
        if self.config.checkpoint_dir is not None and self._saved_step != self.step:
            self.save_checkpoint()

    def _result(self) -> TrainResult:
        for run in self.runs:
            run.sae.eval()
        skipped = self._total_skipped()  # the stream warns about them itself
        return TrainResult(
            {r.name: r.sae for r in self.runs},
            self.metrics,
            self.step,
            self.tokens,
            self._total_nonfinite(),
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
        nonfinite = self._total_nonfinite()
        for run in self.runs:
            if self.ranks is not None:
                run.reduce_interval()  # rank 0 logs the sums of every rank
                if not self.ranks.is_main:
                    run.tracker.interval_summary()  # resets its interval like rank 0's
                    continue
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
            row["nonfinite_tokens"] = nonfinite[run.layer]
            self.metrics.append(row)


def _open(path: str | Path, new_run_ok: bool) -> tuple[Path, dict[str, Any]] | None:
    """``open_checkpoint`` with its warnings shown (run on rank 0 only)."""
    return ckpt.open_checkpoint(path, new_run_ok=new_run_ok)


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
