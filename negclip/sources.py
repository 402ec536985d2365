"""Turn data files into what training and the built-in benchmarks need, and register those benchmarks.

Training takes the project's JSONL directly, or any annotated file (COCO captions with labels, a NegBench
retrieval CSV, NegationCLIP captions), which the negation builder turns into presence- and absence-negated
examples on the fly.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path

from negclip.data import (
    DataFormatError,
    ImageRecord,
    McqItem,
    NegationClipCaption,
    NegationExample,
    RetrievalItem,
    load_dataset_file,
    read_coco,
    read_negbench_mcq_csv,
    read_negbench_retrieval_csv,
    read_negbench_retrieval_records,
    retrieval_items,
    write_jsonl,
)
import negclip.benchmarks  # noqa: F401  registers negrefcocog, ccneg, valse-existence and zeroshot
from negclip.evaluate import (
    Benchmark,
    evaluate_mcq,
    evaluate_presence,
    evaluate_retrieval,
    register,
    retrieval_items_from_examples,
)

logger = logging.getLogger(__name__)

NEGATION_FORMATS = ("negation_jsonl", "negation_csv")
RECORD_FORMATS = ("negbench_retrieval", "coco_captions")


def load_negation_examples(path: str | Path, image_root: str | Path | None = None, seed: int = 0) -> list[NegationExample]:
    """Read negation examples from the project's JSONL/CSV, or build them from an annotated data file."""
    from negclip.negations import build_negations

    if not str(path):
        raise ValueError("no training data given; pass --data with a JSONL from `python -m negclip negations`")
    loaded = load_dataset_file(path, image_root, on_missing="skip")
    if loaded.format in NEGATION_FORMATS:
        examples = loaded.items
    elif loaded.format in RECORD_FORMATS:
        examples = build_negations(loaded.items, seed=seed).examples
    elif loaded.format == "negationclip_json":
        examples = negationclip_examples(loaded.items, seed=seed)
    else:
        raise DataFormatError(
            path,
            f"a {loaded.format} file has no object labels to negate; convert it with `python -m negclip negations` "
            "or pass the project's JSONL",
        )
    if not examples:
        raise DataFormatError(path, "no usable negation examples (are object labels missing?)")
    return examples


def negationclip_examples(captions: list[NegationClipCaption], seed: int = 0) -> list[NegationExample]:
    """Pair NegationCLIP's `updated_caption` (true: it negates an absent object) with a presence negation.

    NegationCLIP files carry no object labels, so the objects present are the COCO categories that the caption
    names. Captions that name none are skipped and counted in the log.
    """
    from negclip.negations import COCO_CATEGORIES, PHRASING_NAMES, mentions_object, negate_caption

    rng = random.Random(seed)
    examples = []
    for item in captions:
        objects = [name for name in COCO_CATEGORIES if mentions_object(item.caption, name)]
        if not objects:
            continue
        present = rng.choice(objects)
        examples.append(
            NegationExample(
                image=item.image,
                caption=item.caption,
                presence_negated=negate_caption(item.caption, present, rng.choice(PHRASING_NAMES)),
                absence_negated=item.updated_caption,
                present_object=present,
                absent_object="",
                objects=objects,
                absent_objects=[],
                image_id=item.image_id,
            )
        )
    logger.info(
        "NegationCLIP captions: %d of %d name a COCO category and became examples", len(examples), len(captions)
    )
    return examples


def build_negation_file(
    out: str | Path,
    image_root: str | Path,
    captions_json: str | Path | None = None,
    instances_json: str | Path | None = None,
    negbench_csv: str | Path | None = None,
    captions_per_image: int | None = None,
    seed: int = 0,
) -> str:
    """Write the project's JSONL from COCO captions (+ labels) or a NegBench retrieval CSV; return a summary line."""
    from negclip.negations import build_negations

    if captions_json:
        records = read_coco(captions_json, instances_json, image_root, negbench_csv, on_missing="skip")
    elif negbench_csv:
        records = read_negbench_retrieval_records(negbench_csv, image_root, on_missing="skip")
    else:
        raise ValueError("give --captions (COCO captions JSON) or --negbench-csv (NegBench retrieval CSV)")
    result = build_negations(records, seed=seed, captions_per_image=captions_per_image)
    if not result.examples:
        raise ValueError(
            f"no negation examples could be built ({result.summary()}); object labels come from --instances "
            "(COCO instances JSON) or --negbench-csv (NegBench retrieval CSV), so pass one of them"
        )
    write_jsonl(result.examples, out)
    images = len({example.image for example in result.examples})
    return f"wrote {len(result.examples)} examples over {images} images to {out}; {result.summary()}"


# ---------------------------------------------------------------- built-in benchmarks


def _limit(items: list, args: argparse.Namespace) -> list:
    return items[: args.limit] if getattr(args, "limit", None) else items


def _require(args: argparse.Namespace, option: str, benchmark: str) -> str:
    value = getattr(args, option.lstrip("-").replace("-", "_"), None)
    if not value:
        raise ValueError(f"benchmark {benchmark} needs {option} PATH")
    return value


def load_presence(args: argparse.Namespace) -> list[NegationExample]:
    path = _require(args, "--data", "presence")
    return _limit(load_negation_examples(path, args.image_root, seed=getattr(args, "seed", 0)), args)


def load_mcq(args: argparse.Namespace) -> list[McqItem]:
    path = _require(args, "--mcq", "mcq")
    return _limit(read_negbench_mcq_csv(path, args.image_root, on_missing="skip"), args)


def _retrieval_file(path: str, image_root) -> list[RetrievalItem]:
    loaded = load_dataset_file(path, image_root, on_missing="skip")
    if loaded.format in NEGATION_FORMATS:
        return retrieval_items_from_examples(loaded.items)
    if loaded.format in RECORD_FORMATS:
        return retrieval_items(loaded.items)
    raise DataFormatError(path, f"a {loaded.format} file has no captions per image for retrieval")


def load_retrieval(args: argparse.Namespace) -> dict:
    path = getattr(args, "retrieval", None) or getattr(args, "data", None)
    if not path:
        raise ValueError("benchmark retrieval needs --retrieval PATH (NegBench retrieval CSV, COCO captions JSON or JSONL)")
    sets = {"affirmative": _limit(_retrieval_file(path, args.image_root), args)}
    if getattr(args, "negated_retrieval", None):
        negated = read_negbench_retrieval_csv(args.negated_retrieval, args.image_root, on_missing="skip")
        sets["negated"] = _limit(negated, args)
    return sets


def score_retrieval(clip, sets: dict) -> dict:
    result = evaluate_retrieval(clip, sets["affirmative"])
    if "negated" in sets:
        result["negated"] = evaluate_retrieval(clip, sets["negated"])
    return result


def _add_core_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="presence: the project's JSONL (or an annotated file to build negations from)")
    parser.add_argument("--mcq", help="mcq: NegBench multiple-choice CSV")
    parser.add_argument("--retrieval", help="retrieval: NegBench retrieval CSV, COCO captions JSON or the project's JSONL")
    parser.add_argument("--negated-retrieval", help="retrieval: NegBench negated retrieval CSV (captions stay true)")
    parser.add_argument("--seed", type=int, default=0, help="seed for building negations from annotated files")


register(Benchmark("presence", load_presence, evaluate_presence, [("accuracy", "accuracy")], _add_core_arguments))
register(
    Benchmark(
        "mcq",
        load_mcq,
        evaluate_mcq,
        [
            ("accuracy", "accuracy"),
            ("positive", "by_template.positive"),
            ("negative", "by_template.negative"),
            ("hybrid", "by_template.hybrid"),
        ],
    )
)
register(
    Benchmark(
        "retrieval",
        load_retrieval,
        score_retrieval,
        [(f"{direction} {k}", f"{key}.{k}") for key, direction in (("image_to_text", "i2t"), ("text_to_image", "t2i"))
         for k in ("R@1", "R@5", "R@10")]
        + [
            (f"negated {direction} {k}", f"negated.{key}.{k}")
            for key, direction in (("image_to_text", "i2t"), ("text_to_image", "t2i"))
            for k in ("R@1", "R@5")
        ],
    )
)
