"""Data-parallel training over torch.distributed (gloo, 2 CPU processes): equal to one process
on the union of the ranks' batches; a dead rank; resume with another world size."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import time
import traceback
from pathlib import Path

import pytest
import torch

from probe_sae import load_model
from probe_sae.data import shard_images
from probe_sae.organism import generate
from probe_sae.saes import TopKConfig, family_config
from probe_sae.stream import ActivationStream, StreamConfig
from probe_sae.train import CheckpointError, SAETarget, TrainConfig, Trainer
from probe_sae.train.checkpoint import verify_checkpoint

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::probe_sae.train.summary.ShortRunWarning"),
]

WORLD, N_IMAGES, BATCH, LAYER = 2, 48, 128, "blocks.2"
STREAM = StreamConfig(batch_size=BATCH, image_batch_size=8, buffer_tokens=4096, epochs=None)
DIE_AT_CALL = 7  # init reads 2 batches, steps 1..4 read 4 more: the 7th read follows step 4
TIMEOUT_S = 30.0  # the collective timeout of the workers


def _targets() -> list[SAETarget]:
    return [
        SAETarget("topk", LAYER, TopKConfig(n_concepts=128, k=8)),
        SAETarget("rasae", LAYER, family_config("rasae", n_concepts=128, k=8, delta=0.5)),
    ]


def _config(**kw) -> TrainConfig:
    base = dict(max_steps=10, lr=3e-3, warmup_steps=2, init_tokens=512, log_every=5)
    return TrainConfig(**{**base, "progress": False, **kw})


def _stream(model, rank: int) -> ActivationStream:
    images = generate(N_IMAGES, seed=0).images
    return ActivationStream(model, shard_images(images, rank, WORLD), LAYER, STREAM)


class _Union:
    """One process's view of the ranks' batches: batch i is rank 0's batch i, then rank 1's."""

    def __init__(self, sources) -> None:
        self.sources = sources
        self.batch_size = sum(s.batch_size for s in sources)

    def widths(self):
        return self.sources[0].widths()

    def next_batch(self):
        batches = [s.next_batch() for s in self.sources]
        if any(b is None for b in batches):
            return None
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}

    def state_dict(self):
        return {"parts": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state):
        for s, part in zip(self.sources, state["parts"], strict=True):
            s.load_state_dict(part)


class _DieAt:
    """A source whose process exits (as if killed) on its n-th read."""

    def __init__(self, source, at_call: int) -> None:
        self.source, self.at_call, self.calls = source, at_call, 0
        self.batch_size = source.batch_size

    def widths(self):
        return self.source.widths()

    def next_batch(self):
        self.calls += 1
        if self.calls == self.at_call:
            os._exit(3)
        return self.source.next_batch()

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def _worker(rank: int, init_file: str, out: str) -> None:
    """Rank ``rank``: (1) train both SAEs for 10 steps, save rank 0's result; (2) train with a
    checkpoint every 4 steps while rank 1 dies after the first; rank 0 records its error."""
    torch.set_num_threads(1)
    out_dir = Path(out)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    model = load_model("organism")
    result = Trainer(_targets(), _stream(model, rank), _config()).run()
    if rank == 0:
        for name, sae in result.saes.items():
            torch.save(sae.state_dict(), out_dir / f"{name}.pt")
        (out_dir / "metrics.json").write_text(json.dumps(result.metrics))
    source = _stream(model, rank)
    if rank == 1:
        source = _DieAt(source, DIE_AT_CALL)
    config = _config(checkpoint_every=4, checkpoint_dir=str(out_dir / "ckpt"))
    start = time.monotonic()
    try:
        Trainer(_targets(), source, config).run()
    except Exception as err:
        (out_dir / f"error-{rank}.txt").write_text(
            f"{time.monotonic() - start:.1f}\n{type(err).__name__}: {err}\n"
            + traceback.format_exc()
        )
        os._exit(1)
    os._exit(0)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The folder the two workers wrote into (see :func:`_worker`)."""
    out = tmp_path_factory.mktemp("ddp")
    init_file = out / "init"
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_worker, args=(r, str(init_file), str(out))) for r in (0, 1)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 240
    for p in procs:
        p.join(max(deadline - time.monotonic(), 1))
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"workers {hung} hung (killed after the test's hard timeout)"
    assert procs[1].exitcode == 3, "rank 1 should have died in the second run"
    return out


def test_two_ranks_equal_one_process_on_the_union_of_their_batches(two_ranks):
    model = load_model("organism")
    union = _Union([_stream(model, r) for r in range(WORLD)])
    reference = Trainer(_targets(), union, _config()).run()
    for name, sae in reference.saes.items():
        ranked = torch.load(two_ranks / f"{name}.pt", weights_only=True)
        for key, value in sae.state_dict().items():
            torch.testing.assert_close(ranked[key], value, rtol=0, atol=1e-5, msg=f"{name}.{key}")
    metrics = json.loads((two_ranks / "metrics.json").read_text())
    assert [(r["step"], r["name"], r["tokens"]) for r in metrics] == [
        (r["step"], r["name"], r["tokens"]) for r in reference.metrics
    ]
    for got, want in zip(metrics, reference.metrics, strict=True):
        assert got["fvu"] == pytest.approx(want["fvu"], rel=1e-4)
        assert got["l0"] == pytest.approx(want["l0"], rel=1e-6)
        assert got["dead_fraction"] == want["dead_fraction"]
    assert reference.tokens == 10 * WORLD * BATCH


def test_a_dead_rank_leaves_the_checkpoint_intact_and_the_other_fails_clearly(two_ranks):
    text = (two_ranks / "error-0.txt").read_text()
    elapsed = float(text.splitlines()[0])
    assert elapsed < TIMEOUT_S + 60, text
    assert "DistributedError" in text and "rank 0 of 2" in text and "died" in text, text
    ckpt = two_ranks / "ckpt"
    assert (ckpt / "latest").read_text() == "step-000000004"
    state = verify_checkpoint(ckpt / "step-000000004")
    assert state["world_size"] == 2 and len(state["sources"]) == 2 and state["step"] == 4


def test_resume_with_another_world_size_is_refused(two_ranks):
    model = load_model("organism")
    config = _config(checkpoint_every=4, checkpoint_dir=str(two_ranks / "ckpt"))
    trainer = Trainer(_targets(), _stream(model, 0), config)
    with pytest.raises(CheckpointError, match=r"2 rank\(s\), this run has 1.*same number of ranks"):
        trainer.run(resume=two_ranks / "ckpt")


@pytest.mark.slow  # two Python processes loading torch and the organism: ~15 s on 2 cores
def test_the_cli_trains_unchanged_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 -m probe_sae.cli train ...`: each rank reads half of the
    images, the step count and the token count are global, rank 0 writes the SAEs."""
    import shutil
    import socket
    import subprocess
    import sys

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(port), "-m", "probe_sae.cli", "train", "organism",
        "--layer", "blocks.2", "--images", "synthetic:64", "--sae", "topk", "rasae",
        "--n-concepts", "64", "--k", "4", "--batch-size", "128", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # 32 images per rank × 69 tokens // 128 = 17 steps of 2 × 128 global tokens
    assert "17 steps, 4,352 tokens" in done.stdout, done.stdout
    assert done.stdout.count("trained topk, rasae") == 1  # only rank 0 reports
    assert (out / "topk" / "config.json").is_file() and (out / "rasae" / "config.json").is_file()
    # with --cache: every rank captures its own shards, rank 0 writes one manifest for them all,
    # which a single process reads whole
    cache = tmp_path / "cache"
    cached = [*command[:-2], "--out", str(tmp_path / "cached"), "--cache", str(cache)]
    cached[cached.index("--master_port") + 1] = str(port + 1)
    done = subprocess.run(cached, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["ranks"] == 2 and [s["rank"] for s in manifest["shards"]] == [0, 1]
    from probe_sae.stream import CachedTokens

    whole = CachedTokens(cache, 128, rank=0, world_size=1)
    assert whole.shard_ids == [0, 1]
    assert sum(s["count"] for s in manifest["shards"]) == 2 * 17 * 128  # each rank's full batches
