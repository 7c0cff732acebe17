"""Online training on the model organism's synthetic images (issue 4's acceptance)."""

import torch

from probe_sae import ActivationStream, train_sae
from probe_sae.metrics import evaluate
from probe_sae.organism import load_organism
from probe_sae.organism.world import generate


def test_topk_rasae_and_mp_learn_online_on_the_organism():
    model = load_organism()
    images = generate(320, seed=3).images
    result = train_sae(
        model, "blocks.2", images, sae=["topk", "rasae", "mp"], n_concepts=512, k=16,
        batch_size=256, buffer_tokens=4096, epochs=2, lr=3e-3, init_tokens=2048, log_every=10, progress=False,
    )
    assert result.steps == 2 * (320 * 69 // 256)
    held_out = ActivationStream(model, generate(64, seed=99).images, "blocks.2", batch_size=256, buffer_tokens=4096)
    for name, sae in result.saes.items():
        rows = [r for r in result.metrics if r["name"] == name]
        assert rows[-1]["fvu"] < 0.35 and rows[-1]["fvu"] < 0.5 * rows[0]["fvu"], rows[-1]
        report = evaluate(sae, held_out)
        held_out = ActivationStream(model, generate(64, seed=99).images, "blocks.2", batch_size=256, buffer_tokens=4096)
        assert report.fvu < 0.4 and report.l0 <= 16 + 1e-9
        assert torch.isfinite(sae.dictionary).all()


def test_trained_saes_remember_their_layer_and_save_with_their_log(tmp_path):
    from probe_sae import load_model, load_sae

    model = load_model("organism")
    assert model.spec == "organism"
    result = train_sae(
        model, 1, generate(32, seed=4).images, sae=["topk", "topk"], n_concepts=64, k=4,
        batch_size=128, buffer_tokens=512, max_steps=6, log_every=2, progress=False,
    )
    folders = result.save(tmp_path)
    assert sorted(folders) == ["topk", "topk-2"]
    loaded = load_sae(folders["topk-2"])
    assert loaded.provenance == {
        "model": "organism", "model_name": "organism", "layer": "blocks.1", "tokens": "all",
        "random_weights": False, "seed": None,
    }
    import json

    log = json.loads((folders["topk-2"] / "training_log.json").read_text())
    assert [row["step"] for row in log] == [2, 4, 6]
    assert {row["name"] for row in log} == {"topk-2"}
    # the reloaded model from the saved spec has the layer the SAE was trained on
    again = load_model(loaded.provenance["model"])
    assert again.layer_info(loaded.provenance["layer"]).shape[-1] == loaded.d_model
