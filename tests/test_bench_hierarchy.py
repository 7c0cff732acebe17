"""The hierarchy benchmark's scores on hand-made codes, the hard world's options, and a tiny
end-to-end run."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from probe_sae.bench.hierarchy import (
    PARENT_NAMES,
    firing_f1,
    hierarchy_scores,
    hierarchy_study,
    patch_kinds,
)
from probe_sae.organism.world import (
    DEFAULT_WORLD,
    FAMILIES,
    HARD_WORLD,
    KIND_NAMES,
    World,
    generate,
    get_world,
)

N_KINDS = len(KIND_NAMES)


def tokens_of_every_kind(repeat: int = 5) -> torch.Tensor:
    """Kinds of tokens: ``repeat`` of each of the 16 kinds, then ``repeat * 4`` background."""
    return torch.cat(
        [torch.arange(N_KINDS).repeat_interleave(repeat), torch.full((4 * repeat,), -1)]
    )


def ideal_codes(kinds: torch.Tensor) -> torch.Tensor:
    """Atoms 0..7 are the 8 parents, 8..23 the 16 kinds: each fires exactly on its concept."""
    codes = torch.zeros(kinds.shape[0], 8 + N_KINDS)
    for n, k in enumerate(kinds.tolist()):
        if k < 0:
            continue
        for p, members in enumerate(FAMILIES.values()):
            if k in members:
                codes[n, p] = 1.0 + 0.1 * p
        codes[n, 8 + k] = 2.0
    return codes


def test_firing_f1_counts_firing_codes_against_presence():
    codes = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.5, 0.0], [0.0, 0.0]])
    presence = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    f1 = firing_f1(codes, presence)
    # atom 0 fires on tokens 1, 2: concept 0 (tokens 0, 1): TP 1, FP 1, FN 1 -> 2/4
    # atom 0, concept 1 (tokens 1, 2, 3): TP 2, FP 0, FN 1 -> 4/5; atom 1 fires on token 0
    expected = torch.tensor([[0.5, 0.8], [2 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(f1, expected)
    with pytest.raises(ValueError, match="present on some tokens"):
        firing_f1(codes, torch.zeros(4, 1))


def test_perfect_parent_and_child_atoms_score_one_and_absorb_nothing():
    kinds = tokens_of_every_kind()
    s = hierarchy_scores(ideal_codes(kinds), kinds)
    assert s.parent_identifiability == 1.0 and s.child_identifiability == 1.0
    assert s.parent_atom == list(range(8))
    assert s.own_parent_atoms == 8
    assert s.absorption == [0.0] * 8 and s.miss_rate == 0.0
    assert s.atom_concept == list(range(24))


def test_a_parent_atom_that_skips_one_child_absorbs_exactly_that_child():
    kinds = tokens_of_every_kind(repeat=5)
    codes = ideal_codes(kinds)
    disk = PARENT_NAMES.index("shape:disk")
    red_disk = KIND_NAMES.index("red_disk")
    codes[kinds == red_disk, disk] = 0.0  # the red disks' atom absorbed "disk"
    s = hierarchy_scores(codes, kinds)
    assert s.parent_atom[disk] == disk  # still the best detector of "disk"
    assert s.absorption[disk] == pytest.approx(1 / 4)  # 5 of the 20 disk tokens
    assert s.parent_miss[disk] == pytest.approx(1 / 4)
    assert s.absorption_rate == pytest.approx(1 / 4 / 8)
    others = [a for p, a in enumerate(s.absorption) if p != disk]
    assert others == [0.0] * 7
    # the parent atom fires on 15 of the 20 disk tokens and nowhere else: F1 = 30 / 35
    assert s.parent_f1[disk] == pytest.approx(6 / 7)


def test_a_silent_parent_atom_without_a_firing_child_atom_is_a_miss_not_absorption():
    kinds = tokens_of_every_kind(repeat=4)
    codes = ideal_codes(kinds)
    red = PARENT_NAMES.index("colour:red")
    red_square = KIND_NAMES.index("red_square")
    where = kinds == red_square
    codes[where, red] = 0.0
    codes[where, 8 + red_square] = 0.0  # nothing specific fires on red squares either
    s = hierarchy_scores(codes, kinds)
    assert s.parent_miss[red] == pytest.approx(1 / 4)
    assert s.absorption[red] == 0.0


def test_without_parent_atoms_children_absorb_their_parents():
    """Only child atoms: each parent's best atom is one child's (F1 = 2·¼ / (¼ + 1) = 0.4), which
    is silent on the other three children, whose own atoms fire: absorption 3/4 everywhere."""
    kinds = tokens_of_every_kind(repeat=3)
    codes = ideal_codes(kinds)[:, 8:]
    s = hierarchy_scores(codes, kinds)
    assert s.own_parent_atoms == 0
    assert s.absorption == pytest.approx([3 / 4] * 8)
    assert s.child_identifiability == 1.0
    assert s.parent_identifiability == pytest.approx(0.4)


def test_patch_kinds_majority_background_and_partial():
    label = torch.full((1, 16, 16), -1)
    label[0, :8, :8] = 5  # patch 0: all kind 5
    label[0, :4, 8:16] = 7  # patch 1: half kind 7
    label[0, 8, 0] = 2  # patch 2: one pixel of kind 2
    assert patch_kinds(label, 8).tolist() == [[5, 7, -2, -1]]
    assert patch_kinds(label, 8, min_cover=0.6).tolist() == [[5, -2, -2, -1]]


def test_patch_kinds_agree_with_the_world_presence():
    world = generate(4, seed=2)
    kinds = patch_kinds(world.label_map, 8)
    assert kinds.shape == (4, 64)
    for b in range(4):
        on_patches = set(kinds[b][kinds[b] >= 0].tolist())
        assert on_patches == set(torch.nonzero(world.presence[b]).flatten().tolist())


def test_default_world_is_unchanged_and_presets_are_deterministic():
    default = generate(8, seed=0)
    # the default world's first 8 images of seed 0 before the hard world existed (this machine)
    digest = hashlib.sha256(default.images.numpy().tobytes()).hexdigest()
    assert digest == "b224363440a888d8ef890a5ce011abbc4eb9d9c33fcbcfa1acf415a589fa7e72"
    for same in (generate(8, seed=0, world="default"), generate(8, seed=0, world=World())):
        assert torch.equal(same.images, default.images)
        assert torch.equal(same.label_map, default.label_map)
    hard = generate(8, seed=0, world="hard")
    assert torch.equal(hard.images, generate(8, seed=0, world=HARD_WORLD).images)
    assert torch.equal(hard.images, generate(16, seed=0, world="hard")[:8].images)
    assert torch.equal(hard.presence, default.presence)  # same kinds, drawn the same way
    assert not torch.equal(hard.images, default.images)
    assert get_world("hard").max_rotation == pytest.approx(math.pi)
    assert get_world("hard").jitter_step == 0 and DEFAULT_WORLD.jitter_step == 4
    with pytest.raises(ValueError, match="unknown world"):
        generate(2, world="easy")


@pytest.fixture
def one_thread():
    """Tiny SAEs train ~10× faster on one thread when the 2 shared cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hierarchy_study_runs_and_reports_every_row(one_thread):
    """Planted hierarchy: token = parent shape + parent colour (+ a child detail); tiny SAEs."""
    g = torch.Generator().manual_seed(0)
    d = 32
    shape_dirs, colour_dirs = torch.randn(4, d, generator=g), torch.randn(4, d, generator=g)
    child_dirs = 0.3 * torch.randn(N_KINDS, d, generator=g)
    kinds = torch.randint(-1, N_KINDS, (3000,), generator=g)
    x = 0.05 * torch.randn(3000, d, generator=g)
    on = kinds >= 0
    x[on] += shape_dirs[kinds[on] // 4] + colour_dirs[kinds[on] % 4] + child_dirs[kinds[on]]
    r = hierarchy_study(
        x[:2000],
        x[2000:],
        kinds[2000:],
        families=("topk", "mp", "matryoshka"),
        n_concepts=32,
        k=2,
        n_candidates=64,
        steps=150,
        progress=False,
    )
    assert [row.name for row in r.rows] == ["topk", "mp", "matryoshka", "mp, residual ≤ 0.5"]
    for row in r.rows:
        assert 0.5 <= row.scores.parent_identifiability <= 1
        assert 0 <= row.scores.absorption_rate <= row.scores.miss_rate <= 1
    assert r.row("mp, residual ≤ 0.5").l0 <= r.row("mp").l0
    md = r.to_markdown()
    assert "absorption rate" in md and "Published:" in md and "Bussmann" in md


@pytest.mark.slow
def test_bench_hierarchy_quick_from_the_command_line(capsys):
    """`probe-sae bench hierarchy --quick` end to end (about 1–4 minutes on 2 shared cores)."""
    from probe_sae.cli import main

    assert main(["bench", "hierarchy", "--quick"]) == 0
    out = capsys.readouterr().out
    for family in ("topk", "batchtopk", "jumprelu", "relu", "mp", "asae", "rasae"):
        assert f"| {family} |" in out
    assert "| matryoshka |" in out and "| matryoshka_rasae |" in out
    assert "Published:" in out and "Ours:" in out


def test_world_option_is_refused_where_it_does_not_apply():
    from probe_sae.bench import run_benchmark

    with pytest.raises(ValueError, match="default world only"):
        run_benchmark("hierarchy", world="hard")
    with pytest.raises(ValueError, match="unknown world"):
        run_benchmark("identifiability", world="easy")


def test_the_hard_world_organism_is_shipped_and_reads_the_hard_world():
    from dataclasses import asdict

    from probe_sae.bench.identifiability import world_pooled
    from probe_sae.models import load_model
    from probe_sae.organism.model import PACKAGED_HARD_DIR, read_config

    doc = read_config(PACKAGED_HARD_DIR)
    assert doc["world"] == json_ready(asdict(HARD_WORLD))
    assert doc["held_out"]["mean_auc"] > 0.85  # the default organism reads this world at ≈ 0.74
    assert (PACKAGED_HARD_DIR / "model.safetensors").stat().st_size < 2_500_000
    model = load_model("organism:hard")
    assert model.spec == "organism:hard"
    acts, presence = world_pooled("hard", 8, seed=3)
    assert acts.shape == (8, 128) and presence.shape == (8, N_KINDS)
    assert torch.equal(presence, generate(8, seed=3, world="hard").presence)


def json_ready(value):
    """Tuples as lists, as config.json stores them."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
