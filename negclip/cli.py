"""Command line: `python -m negclip <command>`; each command has --help."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from negclip.config import PUBLISHED_SETTINGS, TrainConfig
from negclip.models import BUILTIN_MODELS, DEFAULT_MODEL

logger = logging.getLogger("negclip")

MODEL_HELP = f"Hugging Face Hub id (default {DEFAULT_MODEL}), a local model folder, or one of: {', '.join(BUILTIN_MODELS)}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# ---------------------------------------------------------------- negations


def add_negations_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "negations",
        help="build the project's JSONL of presence- and absence-negated captions",
        description="Write presence-negated (false) and absence-negated (true) captions for each image, from COCO "
        "captions plus object labels (COCO instances JSON or the NegBench retrieval CSV), or from a NegBench "
        "retrieval CSV alone.",
    )
    parser.add_argument("--captions", help="COCO captions JSON (captions_val2017.json)")
    parser.add_argument("--instances", help="COCO instances JSON with the object labels (instances_val2017.json)")
    parser.add_argument("--negbench-csv", help="NegBench retrieval CSV: labels (positive_objects / negative_objects), "
                        "and the captions when --captions is not given")
    parser.add_argument("--image-root", required=True, help="folder that contains the images")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--captions-per-image", type=_positive_int, default=None, help="use at most N captions of each image (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for choosing objects and phrasings")
    parser.set_defaults(func=run_negations)


def run_negations(args) -> int:
    from negclip.sources import build_negation_file

    summary = build_negation_file(
        out=args.out,
        image_root=args.image_root,
        captions_json=args.captions,
        instances_json=args.instances,
        negbench_csv=args.negbench_csv,
        captions_per_image=args.captions_per_image,
        seed=args.seed,
    )
    print(summary)
    return 0


# ---------------------------------------------------------------- train


def add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune the front text layers with the Omni-NegCLIP objectives",
        description="Fine-tune CLIP's text encoder on negation data. Writes <output-dir>/adapter (only the trained "
        "tensors, with a model card), train_config.json and metrics.json. Published setting: "
        + ", ".join(f"{key} {value}" for key, value in PUBLISHED_SETTINGS.items())
        + ". Ctrl-C saves a checkpoint; --resume continues from it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        default = getattr(defaults, field.name)
        if field.name == "data":
            parser.add_argument(flag, required=True, help=help_text)
        elif field.type in ("bool | None", "bool"):
            parser.add_argument(flag, type=_bool, default=default, metavar="true|false", help=help_text)
        elif field.type == "int | None":
            parser.add_argument(flag, type=int, default=default, help=help_text)
        else:
            kind = {"int": int, "float": float, "float | None": float}.get(field.type, str)
            parser.add_argument(flag, type=kind, default=default, help=help_text)
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt")
    parser.add_argument("--config", help="JSON file of settings (as written to train_config.json); flags override it")
    parser.set_defaults(func=run_train)


def train_config_from_args(args) -> TrainConfig:
    values = {}
    if args.config:
        values = json.loads(Path(args.config).read_text())
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name)
        if field.name not in values or given != getattr(defaults, field.name):
            values[field.name] = given
    return TrainConfig.from_dict(values)


def run_train(args) -> int:
    from negclip.evaluate import format_table
    from negclip.train import train

    from negclip import distributed

    config = train_config_from_args(args)
    result = train(config, resume=args.resume)
    if not distributed.is_main_process():
        return 0  # under torchrun, rank 0 reports and saves
    print(f"trained {result.steps} of {result.total_steps} steps in {result.seconds:.0f} s; adapter: {result.adapter_dir}")
    if result.before and result.after:
        print(format_table({name: {"base": result.before[name], "tuned": result.after[name]} for name in result.before},
                           with_tuned=True))
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0


# ---------------------------------------------------------------- evaluate


def add_evaluate_parser(subparsers) -> None:
    from negclip.evaluate import BENCHMARKS
    from negclip import sources  # noqa: F401  registers the built-in benchmarks

    parser = subparsers.add_parser(
        "evaluate",
        help="measure negation understanding, base model against tuned adapter",
        description="Run benchmarks on the base model and, with --adapter, on the tuned model, over the same data; "
        "print a table and optionally write JSON.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--adapter", help="adapter folder written by `train`, a Hub id, or negation-world")
    parser.add_argument("--benchmark", action="append", choices=sorted(BENCHMARKS), required=True,
                        help="benchmark to run; repeat for several")
    parser.add_argument("--image-root", help="folder to resolve image paths against")
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--limit", type=_positive_int, help="use only the first N items of each benchmark")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    for benchmark in BENCHMARKS.values():
        if benchmark.add_arguments is not None:
            benchmark.add_arguments(parser)
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    from negclip.evaluate import BENCHMARKS, format_table
    from negclip.models import load_clip
    from negclip.train import resolve_device
    from negclip.tuning import load_adapter

    items = {name: BENCHMARKS[name].load(args) for name in dict.fromkeys(args.benchmark)}
    base = load_clip(args.model, device=resolve_device(args.device))
    print(f"model: {base.name} ({base.note})")
    tuned = load_adapter(base, args.adapter) if args.adapter else None
    results = {}
    for name, loaded in items.items():
        benchmark = BENCHMARKS[name]
        base_result = benchmark.score(base, loaded)
        results[name] = {"base": base_result, "tuned": benchmark.score(tuned, loaded)} if tuned else base_result
    print(format_table(results, with_tuned=tuned is not None))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------- score


def add_score_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score one image against several captions, base against tuned",
        description="Print cosine similarity and softmax probability of each caption for one image.",
    )
    parser.add_argument("image", help="image file")
    parser.add_argument("captions", nargs="+", help="captions, each in quotes")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--adapter", help="adapter folder written by `train`, a Hub id, or negation-world")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.set_defaults(func=run_score)


def run_score(args) -> int:
    from negclip.models import load_clip
    from negclip.scoring import score_captions
    from negclip.train import resolve_device
    from negclip.tuning import load_adapter

    base = load_clip(args.model, device=resolve_device(args.device))
    print(f"model: {base.name} ({base.note})")
    models = {"base": base}
    if args.adapter:
        models["tuned"] = load_adapter(base, args.adapter)
    scores = {label: score_captions(clip, args.image, args.captions) for label, clip in models.items()}
    width = max(len(caption) for caption in args.captions)
    header = f"{'caption'.ljust(width)}  " + "  ".join(f"{label + ' cos':>10}  {label + ' prob':>10}" for label in models)
    print(header)
    for index, caption in enumerate(args.captions):
        cells = "  ".join(
            f"{scores[label].cosine[index]:>10.4f}  {scores[label].probability[index]:>10.3f}" for label in models
        )
        print(f"{caption.ljust(width)}  {cells}")
    for label in models:
        print(f"{label} picks: {args.captions[scores[label].best]}")
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m negclip", description="Omni-NegCLIP: negation-aware CLIP fine-tuning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    add_negations_parser(subparsers)
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_score_parser(subparsers)
    for module_name in EXTRA_COMMAND_MODULES:
        module = _import_optional(module_name)
        if module is not None:
            module.add_parser(subparsers)
    return parser


# Modules that register further commands through add_parser(subparsers).
EXTRA_COMMAND_MODULES = ("negclip.world", "negclip.pretrain")


def _import_optional(module_name: str):
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        logger.debug("command module %s not available: %s", module_name, error)
        return None


def _describe(error: Exception) -> str:
    """Turn an exception into one line for the terminal; OS errors read as "<what>: <file>"."""
    if isinstance(error, FileNotFoundError) and error.filename and not str(error).startswith(("no ", "image")):
        return f"file not found: {error.filename}; check the path"
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON ({error.msg} at line {error.lineno}, column {error.colno}); check the --config file"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from negclip.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as error:
        if args.verbose:
            raise
        print(f"error: {_describe(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a checkpoint was saved where training was running (resume with --resume)", file=sys.stderr)
        return 130
