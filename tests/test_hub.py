"""The Hugging Face Hub, offline: SAEs and models read from a huggingface_hub cache built here
exactly as huggingface_hub lays it out, fast errors for what is not cached, and push_to_hub.

The Hub cannot be reached from the test machine. The cache tests set ``HF_HUB_OFFLINE=1`` and
read only the cache. The push tests replace only the network boundary (``HfApi.create_repo``
and ``HfApi.upload_folder``) with fakes that record what would be uploaded; everything before
it (saving, the model card, the folder layout) is the real code, and the uploaded folder is
loaded back with ``load_sae``, directly and through a Hub cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from probe_sae import build_sae, load_model, load_sae
from probe_sae.hub import (
    HubSpec,
    OfflineError,
    download_sae,
    model_card,
    parse_hub_spec,
    push_sae,
)
from probe_sae.metrics import evaluate

D, C, K = 16, 32, 4
REPO = "probe-org/tiny-saes"
PROVENANCE = {
    "model": "hf:facebook/dinov2-small",
    "model_name": "hf:facebook/dinov2-small",
    "random_weights": False,
    "seed": None,
    "layer": "blocks.1",
    "tokens": "patches",
}


# ------------------------------------------------------------------------------ helpers


def commit_of(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # 40 hex digits, like a git commit


def add_to_cache(cache: Path, repo_id: str, files: dict[str, Path], ref: str = "main") -> str:
    """Put ``{path in repo: local file}`` into ``cache`` as huggingface_hub does: the content in
    ``blobs/<sha256>``, ``snapshots/<commit>/<path>`` a relative symlink to it, and
    ``refs/<ref>`` holding the commit. Returns the commit."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    digests = {p: hashlib.sha256(f.read_bytes()).hexdigest() for p, f in sorted(files.items())}
    commit = commit_of(f"{repo_id}@{ref}:{json.dumps(digests, sort_keys=True)}")
    for path_in_repo, source in files.items():
        blob = storage / "blobs" / digests[path_in_repo]
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        link = storage / "snapshots" / commit / path_in_repo
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {f"{prefix}{p.name}": p for p in sorted(folder.iterdir()) if p.is_file()}


def small_sae(seed: int):
    torch.manual_seed(seed)
    x = torch.randn(256, D) * 2 + 1
    sae = build_sae("topk", D, C, seed=seed, k=K)
    sae.set_normalization(x.mean(0), x.std(0), "standardize")
    with torch.no_grad():
        sae.b_pre.add_(0.1 * seed)
    sae.provenance = dict(PROVENANCE)
    return sae.eval(), x


def same_sae(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache that this process (huggingface_hub included) uses, offline."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub read HF_HUB_CACHE when it was imported; point it here as a fresh process would
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def captured_upload(monkeypatch, tmp_path):
    """Replace the network calls of push_to_hub; returns the record of what was sent."""
    sent: dict = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        sent["create_repo"].append({"repo_id": repo_id, **kwargs})
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, **kwargs):
        target = tmp_path / "uploaded" / repo_id / (path_in_repo or "")
        shutil.copytree(folder_path, target, dirs_exist_ok=True)  # the temporary folder goes away
        sent["upload_folder"].append(
            {
                "repo_id": repo_id,
                "path_in_repo": path_in_repo,
                "files": sorted(os.listdir(folder_path)),
                **kwargs,
            }
        )
        return "https://huggingface.co/fake/commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    sent["root"] = tmp_path / "uploaded"
    return sent


# ------------------------------------------------------------------------- SAE names


def test_hub_specs_are_parsed():
    assert parse_hub_spec("hf:org/repo") == HubSpec("org/repo")
    assert parse_hub_spec("hf:org/repo/layer_6/topk@v1.0") == HubSpec(
        "org/repo", "layer_6/topk", "v1.0"
    )
    assert parse_hub_spec("hf:org/repo@refs/pr/1") == HubSpec("org/repo", "", "refs/pr/1")
    assert str(HubSpec("org/repo", "a/b", "v1")) == "hf:org/repo/a/b@v1"
    for bad in (
        "org/repo",
        "hf:repo",
        "hf:org/../x",
        "hf:org/repo/../x",
        "hf:org/repo@",
        "hf:/home/me/sae",
    ):
        with pytest.raises(ValueError, match="hf:org/repo"):
            parse_hub_spec(bad)


# ----------------------------------------------------------------- SAEs from the cache


def test_load_sae_from_the_hub_cache_root_subfolder_and_revision(offline_cache, tmp_path):
    main, x = small_sae(0)
    other, _ = small_sae(1)
    main.save_pretrained(tmp_path / "main")
    other.save_pretrained(tmp_path / "other")
    files = {**folder_files(tmp_path / "main"), **folder_files(tmp_path / "other", "layer_1/topk/")}
    add_to_cache(offline_cache, REPO, files)
    v1 = add_to_cache(offline_cache, REPO, folder_files(tmp_path / "other"), ref="v1")

    loaded = load_sae(f"hf:{REPO}")
    assert same_sae(loaded, main) and loaded.provenance == PROVENANCE
    with torch.no_grad():
        assert torch.equal(loaded(x).x_hat, main(x).x_hat)
    assert same_sae(load_sae(f"hf:{REPO}/layer_1/topk"), other)
    assert same_sae(load_sae(f"hf:{REPO}@v1"), other)  # a tag
    assert same_sae(load_sae(f"hf:{REPO}@{v1}"), other)  # a commit
    folder = download_sae(f"hf:{REPO}/layer_1/topk")
    assert folder.parent.parent.parent.name == "snapshots" and folder.is_relative_to(offline_cache)


def test_download_sae_honours_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae, _ = small_sae(0)
    sae.save_pretrained(tmp_path / "sae")
    add_to_cache(tmp_path / "elsewhere", REPO, folder_files(tmp_path / "sae", "s/"))
    folder = download_sae(f"hf:{REPO}/s", cache_dir=tmp_path / "elsewhere")
    assert same_sae(load_sae(folder), sae)


def test_uncached_sae_fails_fast_naming_repo_files_and_fix(offline_cache, tmp_path):
    start = time.perf_counter()
    with pytest.raises(OfflineError) as info:
        load_sae("hf:probe-org/absent/layer_3@v2")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    for part in (
        "hf:probe-org/absent/layer_3@v2",
        str(offline_cache),
        "layer_3/*",
        "HF_HUB_OFFLINE=1 is set",
        'hf download probe-org/absent --include "layer_3/*" --revision v2',
        "HF_HUB_CACHE",
    ):
        assert part in message, part
    # the repo is cached but not this folder: the missing files are named
    sae, _ = small_sae(0)
    sae.save_pretrained(tmp_path / "sae")
    add_to_cache(offline_cache, REPO, folder_files(tmp_path / "sae"))
    with pytest.raises(OfflineError, match=r"lacks nope/config\.json or nope/cfg\.json"):
        load_sae(f"hf:{REPO}/nope")


def test_unreachable_hub_without_offline_variable_fails_fast(tmp_path, monkeypatch):
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.constants, "ENDPOINT", "https://127.0.0.1:9"
    )  # nothing listens
    start = time.perf_counter()
    with pytest.raises(OfflineError, match=r"127\.0\.0\.1 cannot be reached"):
        download_sae("hf:probe-org/absent", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5


# -------------------------------------------------------------------------------- push


def test_push_to_hub_round_trip(captured_upload, offline_cache, tmp_path):
    sae, x = small_sae(0)
    rows = [
        {"step": 10, "tokens": 5120, "name": "topk", "fvu": 0.5, "l0": 4.0, "dead_fraction": 0.25},
        {
            "step": 20,
            "tokens": 10240,
            "name": "topk",
            "fvu": 0.25,
            "l0": 4.0,
            "dead_fraction": 0.125,
        },
    ]
    sae.push_to_hub(REPO, "layer_1/topk", private=True, training_log=rows)

    assert captured_upload["create_repo"] == [
        {"repo_id": REPO, "private": True, "exist_ok": True, "repo_type": "model"}
    ]
    (call,) = captured_upload["upload_folder"]
    assert call["path_in_repo"] == "layer_1/topk" and call["delete_patterns"] == [
        "training_log.json"
    ]
    assert call["files"] == ["README.md", "config.json", "model.safetensors", "training_log.json"]
    uploaded = captured_upload["root"] / REPO / "layer_1/topk"
    loaded = load_sae(uploaded)
    assert same_sae(loaded, sae) and loaded.provenance == PROVENANCE
    assert json.loads((uploaded / "training_log.json").read_text()) == rows
    # what the Hub would then serve, through the cache
    add_to_cache(offline_cache, REPO, folder_files(uploaded, "layer_1/topk/"))
    with torch.no_grad():
        assert torch.equal(load_sae(f"hf:{REPO}/layer_1/topk")(x).x_hat, sae(x).x_hat)
    card = (uploaded / "README.md").read_text()
    assert "| FVU | 0.2500 |" in card and "| tokens trained | 10,240 |" in card
    assert "| dead fraction | 12.50 % |" in card and "last logged training interval" in card


def test_push_refuses_bad_names_before_any_network(captured_upload):
    sae, _ = small_sae(0)
    with pytest.raises(ValueError, match="full repo id"):
        sae.push_to_hub("just-a-name")
    with pytest.raises(ValueError, match="subfolder"):
        push_sae(sae, REPO, "../up")
    mixed = [{"name": "topk", "tokens": 1, "fvu": 0.5}, {"name": "mp", "tokens": 1, "fvu": 0.4}]
    with pytest.raises(ValueError, match="several SAEs"):
        sae.push_to_hub(REPO, training_log=mixed)
    assert captured_upload["create_repo"] == [] and captured_upload["upload_folder"] == []


def test_model_card_says_what_the_sae_is(tmp_path):
    sae, x = small_sae(0)
    report = evaluate(sae, x, geometry=False)
    card = model_card(sae, REPO, subfolder="layer_1/topk", metrics=report)
    meta = ModelCard(card).data.to_dict()
    assert meta["library_name"] == "probe_sae"
    assert {"sparse-autoencoder", "interpretability", "topk", "hf:facebook/dinov2-small"} <= set(
        meta["tags"]
    )
    assert meta["base_model"] == "facebook/dinov2-small"
    for row in (
        "| family | topk |",
        f"| k | {K} |",
        f"| n_concepts × d_model | {C} × {D} |",
        "| model | `hf:facebook/dinov2-small` |",
        "| layer | `blocks.1` |",
        "| token selection | patches |",
        "| normalization | standardize |",
        f"| FVU | {report.fvu:.4f} |",
        f"| L0 | {report.l0:.2f} |",
        f"| dead fraction | {100 * report.dead_fraction:.2f} % |",
    ):
        assert row in card, row
    assert f"evaluated on {x.shape[0]:,} tokens" in card
    assert f'load_sae("hf:{REPO}/layer_1/topk")' in card
    assert 'load_model("hf:facebook/dinov2-small")' in card
    assert "tokens trained" not in card  # not known: no row rather than a guess


def test_model_card_of_a_random_weight_model_and_no_figures():
    sae, _ = small_sae(0)
    sae.provenance = {
        "model": "open_clip:ViT-B-32",
        "random_weights": True,
        "seed": 7,
        "layer": "visual.transformer.resblocks.3",
        "tokens": "all",
    }
    card = model_card(sae)
    meta = ModelCard(card).data.to_dict()
    assert "base_model" not in meta and "open_clip:ViT-B-32" in meta["tags"]
    assert "| model | `open_clip:ViT-B-32` (random weights, seed 7) |" in card
    assert 'load_model("open_clip:ViT-B-32", seed=7)' in card
    assert "FVU" not in card and 'load_sae("hf:<org>/<repo>")' in card
    sae.provenance = {"model": "hf:/home/me/dinov2", "layer": "blocks.0"}  # a local folder
    meta = ModelCard(model_card(sae)).data.to_dict()
    assert "base_model" not in meta and not any("/home/me" in t for t in meta["tags"])
    sae.provenance = {"model": None, "model_name": "MyViT", "layer": "blocks.0"}  # wrap(module)
    card = model_card(sae)
    assert "| model | `MyViT` |" in card and "load_model" not in card
    assert "MyViT" not in ModelCard(card).data.to_dict()["tags"]


# ------------------------------------------------------------------------------- models

SMALL_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)


def test_transformers_model_from_the_hub_cache_offline(offline_cache, tmp_path):
    import transformers as T

    torch.manual_seed(0)
    original = T.Dinov2Model(T.Dinov2Config(**SMALL_VIT)).eval()
    original.save_pretrained(tmp_path / "dinov2")
    add_to_cache(offline_cache, "probe-org/tiny-dinov2", folder_files(tmp_path / "dinov2"))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no image processor saved: the family's defaults
        model = load_model("hf:probe-org/tiny-dinov2")
    # read from the cache alone: no minute of retries against the unreachable Hub
    assert time.perf_counter() - start < 30
    assert model.name == "hf:probe-org/tiny-dinov2" and model.spec == "hf:probe-org/tiny-dinov2"
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(pixels), original(pixel_values=pixels).pooler_output)

    start = time.perf_counter()
    with pytest.raises(OfflineError) as info:
        load_model("hf:probe-org/absent-model")
    assert time.perf_counter() - start < 5
    assert "hf download probe-org/absent-model" in str(info.value)
    assert "HF_HUB_OFFLINE=1 is set" in str(info.value) and "hf:/path/to/dir" in str(info.value)


def test_open_clip_hub_model_from_the_cache_offline(offline_cache, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    original = open_clip.CLIP(**cfg).eval()
    repo = tmp_path / "clip"
    repo.mkdir()
    (repo / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {}})
    )
    save_file(
        {k: v.contiguous() for k, v in original.state_dict().items()},
        repo / "open_clip_model.safetensors",
    )
    add_to_cache(offline_cache, "probe-org/tiny-clip", folder_files(repo))

    model = load_model("open_clip:hf-hub:probe-org/tiny-clip")
    assert model.name == "open_clip:hf-hub:probe-org/tiny-clip" and not model.random_weights
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(pixels), original.encode_image(pixels))

    start = time.perf_counter()
    with pytest.raises(OfflineError, match="hf download probe-org/absent-clip --include"):
        load_model("open_clip:hf-hub:probe-org/absent-clip")
    assert time.perf_counter() - start < 5
