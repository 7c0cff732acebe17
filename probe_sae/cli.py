"""The ``probe-sae`` command: ``layers``, ``train``, ``eval``, ``report``, ``bench``, ``demo``.

User mistakes (a model spec that does not load, a layer the model lacks, a missing folder)
end with one line on stderr that names the fix and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_HELP = (
    "model spec as in probe_sae.load_model: 'organism', 'open_clip:ViT-B-32/openai', "
    "'hf:facebook/dinov2-base', 'timm:vit_small_patch16_224' (random weights without a "
    "pretrained tag / checkpoint; '@/path/ckpt' or an hf directory loads local weights)"
)
IMAGES_HELP = (
    "a folder of images (searched recursively), or 'synthetic:N[:SEED]' for N collages of the "
    "built-in synthetic concept world (the organism's data; gives object labels)"
)


class UsageError(Exception):
    """A mistake in the command line; printed as one line, exit status 2."""


@dataclass
class Images:
    source: Any  # a folder path or an (N, C, H, W) tensor
    labels: Any = None  # (N, n_kinds) presence for synthetic images
    description: str = ""


def parse_images(spec: str) -> Images:
    """``synthetic:N[:SEED]`` or a folder of images."""
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        try:
            n = int(parts[1])
            seed = int(parts[2]) if len(parts) > 2 else 0
        except (IndexError, ValueError):
            raise UsageError(
                f"cannot read {spec!r}: write synthetic:N or synthetic:N:SEED, e.g. synthetic:2000"
            ) from None
        if n <= 0:
            raise UsageError(f"{spec!r}: the number of images must be positive")
        from probe_sae.organism.world import generate

        world = generate(n, seed=seed)
        return Images(world.images, world.presence, f"{n} synthetic collages (seed {seed})")
    folder = Path(spec)
    if not folder.is_dir():
        raise UsageError(
            f"no folder {spec!r}: pass a folder of images or synthetic:N (built-in collages)"
        )
    return Images(str(folder), None, f"images under {folder}")


def load_model_or_exit(spec: str) -> Any:
    from probe_sae import load_model

    try:
        return load_model(spec)
    except (ValueError, KeyError, OSError, ImportError, RuntimeError) as err:
        raise UsageError(f"cannot load model {spec!r}: {_one_line(err)}") from None


def resolve_layer_or_exit(model: Any, layer: str) -> str:
    key: str | int = int(layer) if layer.lstrip("-").isdigit() else layer
    try:
        return model.resolve(key)
    except (ValueError, KeyError) as err:
        raise UsageError(
            f"{_one_line(err)} (run 'probe-sae layers {model.spec or model.name}' to list them)"
        ) from None


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def _load_saes(folders: list[str]) -> dict[str, Any]:
    from probe_sae.saes import load_sae

    saes = {}
    for folder in folders:
        sae = load_sae(folder)
        name = Path(folder).name
        while name in saes:
            name += "'"
        saes[name] = sae
    return saes


def _model_for(saes: dict[str, Any], spec: str | None) -> Any:
    if spec is not None:
        return load_model_or_exit(spec)
    specs = {sae.provenance.get("model") for sae in saes.values()}
    if None in specs or len(specs) != 1:
        raise UsageError(
            "the SAE folders do not name one model they were trained on; pass --model SPEC"
        )
    return load_model_or_exit(specs.pop())


def _layer_for(model: Any, sae: Any, layer: str | None) -> str:
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
    from probe_sae import train_sae

    model = load_model_or_exit(args.model)
    layer = resolve_layer_or_exit(model, args.layer)
    images = parse_images(args.images)
    config: dict[str, Any] = {"lr": args.lr, "log_every": args.log_every}
    if args.checkpoint_every:
        config.update(
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=str(Path(args.out) / "checkpoints"),
        )
    result = train_sae(
        model,
        layer,
        images.source,
        sae=args.sae,
        n_concepts=args.n_concepts,
        expansion=args.expansion,
        k=args.k,
        tokens=args.tokens,
        batch_size=args.batch_size,
        num_workers=args.workers,
        epochs=args.epochs,
        max_steps=args.max_steps,
        seed=args.seed,
        resume=args.resume,
        **config,
    )
    folders = result.save(args.out)
    print(f"trained {', '.join(folders)} on {model.name} {layer} over {images.description}:")
    print(f"{result.steps} steps, {result.tokens:,} tokens")
    for name, folder in folders.items():
        rows = [r for r in result.metrics if r["name"] == name]
        last = f"FVU {rows[-1]['fvu']:.4f}, L0 {rows[-1]['l0']:.1f}" if rows else "no metrics"
        print(f"  {name}: {last} -> {folder}")
    skipped = sum(result.nonfinite_tokens.values())
    if skipped:
        print(f"  {skipped:,} non-finite tokens skipped")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from probe_sae.interventions import spliced_fidelity
    from probe_sae.metrics import evaluate
    from probe_sae.stream.activations import ActivationStream

    saes = _load_saes(args.sae_dirs)
    model = _model_for(saes, args.model)
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
    images = parse_images(args.images)
    path = write_report(saes, images.source, args.out, model=model, training_logs=logs)
    print(f"report written to {Path(path).resolve()}")
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

    print(run_benchmark(args.name, quick=args.quick, seed=args.seed))
    return 0


# --------------------------------------------------------------------------- parser
def _sub(
    sub: Any, name: str, help: str, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"Example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


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
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--layer", required=True, help="layer name, 'blocks.i' or a block index")
    p.add_argument("--images", required=True, help=IMAGES_HELP)
    p.add_argument(
        "--sae",
        nargs="+",
        default=["topk"],
        choices=sorted(available_families()),
        metavar="FAMILY",
        help=f"one or several families, trained from the same forward passes: "
        f"{', '.join(sorted(available_families()))} (default: topk)",
    )
    p.add_argument("--n-concepts", type=int, default=None, help="dictionary size")
    p.add_argument("--expansion", type=int, default=8, help="n_concepts = expansion × width")
    p.add_argument("--k", type=int, default=32, help="sparsity of the k-based families")
    p.add_argument("--tokens", default="all", help="all | cls | patches | registers")
    p.add_argument("--batch-size", type=int, default=1024, help="tokens per step")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes reading and preprocessing images ahead of the model "
        "(default: up to 4 on a GPU, none on CPU)",
    )
    p.add_argument("--epochs", type=int, default=1, help="passes over the images")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--log-every", type=int, default=50, help="steps between metric rows")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--resume", default=None, help="checkpoint folder of an interrupted run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="probe_sae_out/train", help="output folder (one per SAE)")
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
        "bench",
        "run a benchmark of the seed papers offline and print a table",
        "probe-sae bench mp-k --quick",
        "Run one of the A-SAE / MP-SAE papers' benchmarks offline on the organism (or digits), "
        "with the published figures beside ours.",
    )
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
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
