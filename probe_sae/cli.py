"""The ``probe-sae`` command: ``layers``, ``train``, ``eval``, ``report``, ``bench``, ``demo``.

User mistakes (a model spec that does not load, a layer the model lacks, a missing folder)
end with one line on stderr that names the fix and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe_sae.constants import RUN_CONFIG_NAME

if TYPE_CHECKING:
    from probe_sae.models import VisionModel
    from probe_sae.run import RunConfig
    from probe_sae.saes import SAE

MODEL_HELP = (
    "model spec as in probe_sae.load_model: 'organism', 'open_clip:ViT-B-32/openai', "
    "'hf:facebook/dinov2-base', 'timm:vit_small_patch16_224' (random weights without a "
    "pretrained tag / checkpoint; '@/path/ckpt' or an hf directory loads local weights)"
)
IMAGES_HELP = (
    "a folder of images (searched recursively; labelled by its labels.csv / labels.json, or "
    "'FOLDER::labels=FILE'), 'synthetic:N[:SEED]' for N collages of the built-in synthetic "
    "concept world (the organism's data; gives object labels), 'hf:PATH[:IMAGE_COLUMN"
    "[:LABEL_COLUMN]]' for a Hugging Face dataset saved with Dataset.save_to_disk (labels from "
    "its ClassLabel columns), or 'wds:PATTERN_OR_URL[::label=cls]' for WebDataset shards, e.g. "
    "'wds:/data/shards-{000..099}.tar' (needs pip install \"probe_sae[datasets]\" for hf: and "
    "wds:)"
)


class UsageError(Exception):
    """A mistake in the command line; printed as one line, exit status 2."""


def load_model_or_exit(spec: str, seed: int | None = None) -> VisionModel:
    """``load_model(spec)`` (random weights drawn under ``seed``, default 0), or a UsageError."""
    from probe_sae import load_model

    try:
        return load_model(spec) if seed is None else load_model(spec, seed=seed)
    except (ValueError, KeyError, OSError, ImportError, RuntimeError, TypeError) as err:
        raise UsageError(f"cannot load model {spec!r}: {_one_line(err)}") from None


def resolve_layer_or_exit(model: VisionModel, layer: str) -> str:
    from probe_sae.run import resolve_layer

    try:
        return resolve_layer(model, layer)
    except (ValueError, KeyError) as err:
        raise UsageError(
            f"{_one_line(err)} (run 'probe-sae layers {model.spec or model.name}' to list them)"
        ) from None


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def _load_saes(folders: list[str]) -> dict[str, SAE]:
    from probe_sae.saes import load_sae

    saes = {}
    for folder in folders:
        sae = load_sae(folder)
        name = Path(folder).name
        while name in saes:
            name += "'"
        saes[name] = sae
    return saes


def _model_for(saes: dict[str, SAE], spec: str | None) -> VisionModel:
    """The model the SAEs were trained on: ``spec`` or their provenance's, rebuilt with the seed
    they record when its weights were random; warns on stderr when they are random."""
    if spec is None:
        specs = {sae.provenance.get("model") for sae in saes.values()}
        if None in specs or len(specs) != 1:
            raise UsageError(
                "the SAE folders do not name one model they were trained on; pass --model SPEC"
            )
        spec = specs.pop()
    seed = _recorded_seed(saes, spec)
    model = load_model_or_exit(spec, seed)
    if seed is not None and (not model.random_weights or model.seed != seed):
        raise UsageError(
            f"the SAEs were trained on {spec} randomly initialised with seed {seed}, but "
            f"{spec} now loads {'pretrained' if not model.random_weights else 'other'} weights "
            f"that cannot be seeded; pass --model with a spec that rebuilds that network, or "
            f"retrain the SAE on a model with saved weights ('family:name@/path/ckpt')"
        )
    if model.random_weights:
        note = "" if seed is not None else (
            " (the SAE records no seed: it was saved before seeds were recorded, so this is "
            "probably not the network it was trained on; retrain it)"
        )
        print(
            f"probe-sae: warning: scoring against a randomly initialised network rebuilt from "
            f"seed {model.seed} ({spec}){note}",
            file=sys.stderr,
        )
    return model


def _recorded_seed(saes: dict[str, SAE], spec: str) -> int | None:
    """The seed the SAEs trained on ``spec`` record for its random weights (``None`` if none)."""
    seeds = {
        sae.provenance.get("seed")
        for sae in saes.values()
        if sae.provenance.get("random_weights") and sae.provenance.get("model") == spec
    }
    seeds.discard(None)
    if len(seeds) > 1:
        raise UsageError(
            f"the SAEs were trained on {spec} initialised with different seeds "
            f"{sorted(seeds)}; evaluate the SAEs of each seed in a separate command"
        )
    return int(seeds.pop()) if seeds else None


def _layer_for(model: VisionModel, sae: SAE, layer: str | None) -> str:
    if layer is not None:
        return resolve_layer_or_exit(model, layer)
    if "layer" not in sae.provenance:
        raise UsageError("the SAE does not record its layer; pass --layer NAME")
    return resolve_layer_or_exit(model, sae.provenance["layer"])


# --------------------------------------------------------------------------- commands
def _cmd_layers(args: argparse.Namespace) -> int:
    model = load_model_or_exit(args.model)
    layers = model.layers()
    aliases = {name: f"blocks.{i}" for i, name in enumerate(model.blocks)}
    print(f"{model.name}: {len(layers)} hookable layers, {len(model.blocks)} blocks")
    for name, info in layers.items():
        if args.blocks and name not in aliases:
            continue
        alias = f"  ({aliases[name]})" if name in aliases and aliases[name] != name else ""
        shape = "×".join(str(s) for s in info.shape)
        print(f"  {name:<40} {shape:<14} {info.output.kind}{alias}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from probe_sae.run import final_figures, train_run

    run = run_config_from_args(args)
    model = load_model_or_exit(run.model)
    layer = resolve_layer_or_exit(model, run.layer)
    result, folders = train_run(
        run, resume=args.resume, model=model, allow_changes=args.allow_changes
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    print(f"trained {', '.join(folders)} on {model.name} {layer} over {run.images}:")
    print(f"{result.steps} steps, {result.tokens:,} tokens; run config: {Path(run.out) / RUN_CONFIG_NAME}")
    for name, folder in folders.items():
        print(f"  {name}: {final_figures(result, name)} -> {folder}")
    skipped = sum(result.nonfinite_tokens.values())
    if skipped:
        print(f"  {skipped:,} non-finite tokens skipped")
    return 0


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run ``probe-sae train`` asks for: ``--config`` (or the defaults) with every flag
    given on the command line applied on top."""
    from probe_sae.run import RunConfig, read_run_config
    from probe_sae.train import apply_fields, named_saes

    given = {name: getattr(args, name) for name in args.run_fields if hasattr(args, name)}
    if args.config is not None:
        run = read_run_config(args.config)
        where = {k: v for k, v in (("model", args.model), ("layer", args.layer),
                                   ("images", args.images), ("out", args.out)) if v is not None}
        run = replace(run, **where)
        if args.sae is not None:
            run = replace(run, saes=named_saes(args.sae))
    else:
        missing = [name for name in ("model", "layer", "images") if getattr(args, name) is None]
        if missing:
            raise UsageError(
                f"give {', '.join('--' + m if m != 'model' else 'MODEL' for m in missing)}, "
                "or --config run.json (written by an earlier run)"
            )
        run = RunConfig(args.model, args.layer, args.images, named_saes(args.sae or ["topk"]))
        if args.out is not None:
            run = replace(run, out=args.out)
    if getattr(args, "cache", None) is not None:
        run = replace(run, cache=args.cache)
    saes, stream, train = apply_fields(run.saes, run.stream, run.train, given)
    return replace(run, saes=saes, stream=stream, train=train)


def _cmd_eval(args: argparse.Namespace) -> int:
    from probe_sae.interventions import spliced_fidelity
    from probe_sae.metrics import evaluate
    from probe_sae.stream.activations import ActivationStream

    saes = _load_saes(args.sae_dirs)
    model = _model_for(saes, args.model)
    from probe_sae.run import parse_images

    images = parse_images(args.images)
    out: dict[str, Any] = {}
    for name, sae in saes.items():
        layer = _layer_for(model, sae, args.layer)
        tokens = sae.provenance.get("tokens", "all")
        stream = ActivationStream(
            model,
            images.source,
            layer,
            tokens=tokens,
            batch_size=4096,
            provenance=True,
            drop_last=False,
        )
        report = evaluate(sae, stream, layout=model.layout, progress=True)
        fidelity = spliced_fidelity(
            model,
            layer,
            sae,
            images.source,
            labels=images.labels,
            tokens=tokens if isinstance(tokens, str) else "all",
            progress=True,
        )
        print(f"\n## {name} ({model.name} {layer}, {images.description})\n")
        print(report.to_markdown())
        print()
        print(fidelity.to_markdown())
        out[name] = {"evaluation": report.to_dict(), "fidelity": fidelity.to_dict()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from probe_sae.constants import TRAINING_LOG
    from probe_sae.report import write_report

    saes = _load_saes(args.sae_dirs)
    model = _model_for(saes, args.model)
    for sae in saes.values():
        _layer_for(model, sae, None)
    logs = {
        name: Path(folder) / TRAINING_LOG
        for name, folder in zip(saes, args.sae_dirs, strict=True)
        if (Path(folder) / TRAINING_LOG).is_file()
    }
    from probe_sae.run import parse_images

    images = parse_images(args.images)
    path = write_report(
        saes,
        images.source,
        args.out,
        model=model,
        training_logs=logs,
        labels=images.labels,
        label_names=images.label_names,
    )
    print(f"report written to {Path(path).resolve()}")
    return 0


def _cmd_browse(args: argparse.Namespace) -> int:
    from probe_sae.browser import build_site, read_vocabulary, serve
    from probe_sae.browser.serve import url_of
    from probe_sae.run import parse_images

    saes = _load_saes(args.sae_dirs)
    model = _model_for(saes, args.model)
    for sae in saes.values():
        _layer_for(model, sae, None)
    vocabulary = read_vocabulary(args.vocab) if args.vocab else None
    images = parse_images(args.images)
    site = build_site(
        saes, images.source, args.out, model=model, top_k=args.top_k, vocabulary=vocabulary,
        max_images=args.max_images,
    )  # fmt: skip
    print(f"concept browser written to {site.index.resolve()}")
    if args.serve:
        server = serve(site.root, args.port, block=False)
        page = site.index.relative_to(site.root).as_posix()
        print(f"serving on {url_of(server)}{page} (Ctrl-C to stop)")
        import threading

        try:
            threading.Event().wait()  # the server runs in its thread until Ctrl-C
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from probe_sae.demo import format_results, run_demo

    result = run_demo(
        out_dir=args.out,
        n_train=args.images,
        epochs=args.epochs,
        seed=args.seed,
        report=not args.no_report,
    )
    print(format_results(result))
    print(f"\nSAEs saved (config.json + model.safetensors) under {result.out_dir / 'saes'}")
    if result.report is not None:
        print(f"report: {Path(result.report).resolve()}")
    print(f"done in {result.seconds:.0f} s")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from probe_sae.bench import run_benchmark

    print(run_benchmark(args.name, quick=args.quick, seed=args.seed, world=args.world))
    return 0


# --------------------------------------------------------------------------- parser
def _sub(
    sub: argparse._SubParsersAction, name: str, help: str, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"Example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run_option_classes() -> dict[type, str]:
    """The config classes ``probe-sae train`` makes flags from, with the names its help uses."""
    from probe_sae.saes import ArchetypalConfig, registered_families
    from probe_sae.stream import StreamConfig
    from probe_sae.train import TrainConfig

    classes: dict[type, str] = {StreamConfig: "stream", TrainConfig: "train"}
    classes.update({cls: name for name, cls in registered_families().items()})
    classes[ArchetypalConfig] = "asae/rasae"
    return classes


def add_run_options(group: argparse._ArgumentGroup) -> list[str]:
    """One ``--field-name`` flag per field of the run's configs; returns the field names."""
    from probe_sae.config import add_options

    classes = run_option_classes()
    return list(add_options(group, classes, owner_names=classes, nested=False))


def build_parser() -> argparse.ArgumentParser:
    from probe_sae.bench import BENCHMARKS
    from probe_sae.constants import __version__
    from probe_sae.saes import available_families

    parser = argparse.ArgumentParser(
        prog="probe-sae",
        description="Sparse autoencoders on live layers of vision models.",
        epilog="Example: probe-sae demo   (then open the report it prints)",
    )
    parser.add_argument("--version", action="version", version=f"probe_sae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _sub(sub, "layers", "list a model's hookable layers", "probe-sae layers organism --blocks")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--blocks", action="store_true", help="list the transformer blocks only")
    p.set_defaults(func=_cmd_layers)

    p = _sub(
        sub,
        "train",
        "stream a layer's activations into online SAE training",
        "probe-sae train organism --layer blocks.2 --images synthetic:2000 --sae topk rasae "
        "--n-concepts 512 --k 16 --out runs/organism",
    )
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument(
        "--config",
        default=None,
        metavar="RUN_JSON",
        help="rerun the run.json an earlier run wrote (or its folder); flags override it",
    )
    p.add_argument("--layer", default=None, help="layer name, 'blocks.i' or a block index")
    p.add_argument("--images", default=None, help=IMAGES_HELP)
    p.add_argument(
        "--sae",
        nargs="+",
        default=None,
        choices=sorted(available_families()),
        metavar="FAMILY",
        help=f"one or several families, trained from the same forward passes: "
        f"{', '.join(sorted(available_families()))} (default: topk)",
    )
    p.add_argument("--out", default=None, help="output folder (default: probe_sae_out/train)")
    p.add_argument(
        "--resume",
        default=None,
        help="checkpoint folder of an interrupted run (OUT/checkpoints): continues exactly from "
        "its newest intact checkpoint",
    )
    p.add_argument(
        "--allow-changes",
        nargs="+",
        default=(),
        metavar="FIELD",
        help="with --resume: settings that may differ from the checkpoint's, e.g. max_steps to "
        "extend a run (others are refused, listing what differs)",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="run the model over the images once, caching the layer's activations in DIR "
        "(float32), then train every epoch from the cache; a DIR holding the same capture is "
        "reused",
    )
    settings = p.add_argument_group(
        "run settings",
        "Every field of StreamConfig, TrainConfig and the SAE family configs; a flag sets the "
        "field in every config that has it ([which ones] ends each line), e.g. --k sets k in "
        "every SAE whose family has one. Unset flags keep the default, or --config's value.",
    )
    p.set_defaults(run_fields=sorted(add_run_options(settings)))
    p.set_defaults(func=_cmd_train)

    p = _sub(
        sub,
        "eval",
        "evaluate saved SAEs: FVU, L0, dead/dense, geometry, spliced fidelity",
        "probe-sae eval runs/organism/topk --images synthetic:256:1",
    )
    p.add_argument("sae_dirs", nargs="+", metavar="SAE_DIR", help="folders written by train")
    p.add_argument("--images", required=True, help=IMAGES_HELP)
    p.add_argument("--model", default=None, help="default: the model the SAE was trained on")
    p.add_argument("--layer", default=None, help="default: the layer the SAE was trained on")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=_cmd_eval)

    p = _sub(
        sub,
        "report",
        "write a self-contained HTML report: metrics, curves, top images with heatmaps",
        "probe-sae report runs/organism/topk runs/organism/rasae --images synthetic:256:1",
    )
    p.add_argument("sae_dirs", nargs="+", metavar="SAE_DIR", help="folders written by train")
    p.add_argument("--images", required=True, help=IMAGES_HELP)
    p.add_argument("--model", default=None, help="default: the model the SAE was trained on")
    p.add_argument("--out", default="probe_sae_out/report.html", help="the HTML file to write")
    p.set_defaults(func=_cmd_report)

    p = _sub(
        sub,
        "browse",
        "build a static concept browser (every concept: top images, heatmaps, stats, labels)",
        "probe-sae browse runs/organism/topk --images synthetic:1000:1 --out probe_sae_out/browse",
        "Stream the images once through the model and the SAEs and write a static site (HTML, JS, "
        "JSON chunks, thumbnails) that opens from file://: all concepts sortable and filterable, "
        "each with its top images and heatmaps, histogram, token kinds, nearest concepts, text "
        "labels for CLIP-like models; each image with its top concepts.",
    )
    p.add_argument("sae_dirs", nargs="+", metavar="SAE_DIR", help="folders written by train")
    p.add_argument("--images", required=True, help=IMAGES_HELP)
    p.add_argument("--model", default=None, help="default: the model the SAE was trained on")
    p.add_argument("--out", default="probe_sae_out/browse", help="the site's folder (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=8, help="top images per concept (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="stop after this many images")
    p.add_argument(
        "--vocab", default=None, metavar="FILE",
        help="words to label concepts with, one a line (CLIP-like models; default: a built-in list)",
    )  # fmt: skip
    p.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default: %(default)s)")
    p.set_defaults(func=_cmd_browse)

    p = _sub(
        sub,
        "bench",
        "run a benchmark of the seed papers offline and print a table",
        "probe-sae bench mp-k --quick",
        "Run one of the A-SAE / MP-SAE papers' benchmarks offline on the organism (or digits), "
        "with the published figures beside ours.",
    )
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--world", choices=("default", "hard"), default="default",
        help="identifiability only: 'hard' runs on collages with continuous jitter and free "
        "rotation, read by the organism trained there (default: %(default)s)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_bench)

    p = _sub(
        sub,
        "demo",
        "run the main job offline on the built-in model organism",
        "probe-sae demo --out probe_sae_out/demo",
        "Stream synthetic collages through the organism's middle layer into TopK, RA-SAE and "
        "MP-SAE at once; evaluate them (FVU, L0, identifiability, spliced fidelity); run one "
        "steering experiment; write the HTML report.",
    )
    p.add_argument(
        "--out", default="probe_sae_out/demo", help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--images", type=int, default=2048, help="training collages (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=2, help="passes over them (default: %(default)s)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from probe_sae.saes import SAEFormatError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UsageError, SAEFormatError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"probe-sae {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"probe-sae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
