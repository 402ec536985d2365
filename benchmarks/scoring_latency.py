"""Time scoring one photo against 8 captions: plain eager transformers against the project's path.

Plain transformers is what a user of the library writes: CLIPModel with eager attention, CLIPProcessor with
padding to the longest caption, one model(**inputs) call under torch.no_grad, in fp32. The project's path is
`negclip.scoring.score_captions`: the project's image preprocessing, caption features through shared-prefix
packing, the lean forward pass of `negclip.inference` (oneDNN-prepared weights, fused query-key-value products,
only the pooled token in the last layer) and per-model caches of photo and caption features. Both run the same
ViT-B/32-shaped random weights (`vit-b32-random`) in the same process, alternating round by round, on real COCO
photos. Each round uses a photo that neither side has seen.

The 8 captions of a photo are one of its COCO captions and 7 negations of it built by the project's negation
builder, as in the app's Compare tab. The script also times UMAP on 2,000 embeddings, cold (numba compiles) and
warm, each in a fresh process.

    python benchmarks/scoring_latency.py
    python benchmarks/scoring_latency.py --repeats 15 --json runs/scoring.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import COCO_NEG, describe_machine, format_machine, median, time_interleaved  # noqa: E402

from negclip.encode import ImageFeatureCache  # noqa: E402
from negclip.models import build_random_clip, load_clip, vit_b32_config  # noqa: E402
from negclip.scoring import TextFeatureCache, score_captions  # noqa: E402

CAPTIONS_PER_PHOTO = 8
SCORE_TOLERANCE = 1e-3  # largest allowed difference in cosine between the two paths
TARGET_SPEEDUP = 1.5


@dataclass
class Photo:
    """A photo with the 8 captions scored against it."""

    path: str
    captions: list[str]


def load_photos(data_dir: Path, count: int) -> list[Photo]:
    """Load photos of the COCO subset, each with a COCO caption and 7 negations of it from the negation builder."""
    from negclip.negations import PHRASING_NAMES, negate_caption
    from negclip.sources import load_negation_examples

    csv_path = data_dir / "negbench" / "COCO_val_retrieval.csv"
    if not csv_path.is_file():
        raise SystemExit(f"data not found: {csv_path}. Pass --data-dir with the coco-val2017-neg folder")
    examples = load_negation_examples(csv_path, image_root=data_dir / "images", seed=0)
    photos: dict[str, Photo] = {}
    for example in examples:
        if example.image in photos:
            continue
        captions = [example.caption, example.presence_negated, example.absence_negated]
        absent = [name for name in example.absent_objects if name != example.absent_object]
        for index, phrasing in enumerate(PHRASING_NAMES):
            if len(captions) == CAPTIONS_PER_PHOTO:
                break
            objects = [example.present_object, *absent]
            captions.append(negate_caption(example.caption, objects[index % len(objects)], phrasing))
        photos[example.image] = Photo(example.image, list(dict.fromkeys(captions))[:CAPTIONS_PER_PHOTO])
    usable = [photo for photo in photos.values() if len(photo.captions) == CAPTIONS_PER_PHOTO]
    if len(usable) < count:
        raise SystemExit(f"need {count} photos with {CAPTIONS_PER_PHOTO} distinct captions, found {len(usable)}")
    return usable[:count]


class PlainTransformers:
    """CLIP as a transformers user scores a photo: processor, one forward pass, eager attention, fp32."""

    def __init__(self, tokenizer):
        from transformers import CLIPProcessor

        try:
            from transformers import CLIPImageProcessorPil as image_processor_class  # without torchvision
        except ImportError:
            from transformers import CLIPImageProcessor as image_processor_class
        # The image processor's defaults are openai/clip-vit-base-patch32's: shortest edge 224, bicubic, centre
        # crop 224, OpenAI mean and standard deviation.
        self.processor = CLIPProcessor(image_processor=image_processor_class(), tokenizer=tokenizer)
        self.model = build_random_clip(vit_b32_config(), attn_implementation="eager")

    @torch.no_grad()
    def score(self, path: str, captions: list[str]) -> torch.Tensor:
        from PIL import Image

        image = Image.open(path).convert("RGB")
        inputs = self.processor(text=captions, images=image, return_tensors="pt", padding=True)
        outputs = self.model(**inputs)
        return (outputs.text_embeds @ outputs.image_embeds.t())[:, 0]  # both are normalised by CLIPModel

    @torch.no_grad()
    def image_embeds(self, path: str) -> torch.Tensor:
        from PIL import Image

        pixel_values = self.processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
        return F.normalize(self.model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)[0]

    @torch.no_grad()
    def score_cached_image(self, image_embeds: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Score against a photo whose features the user kept: only the text tower runs."""
        inputs = self.processor.tokenizer(captions, return_tensors="pt", padding=True)
        text_embeds = F.normalize(self.model.get_text_features(**inputs).pooler_output, dim=-1)
        return text_embeds @ image_embeds


WITHOUT_LEAN = "new photo, new captions, transformers' forward"


def score_case(args, plain: PlainTransformers, clip, photos: list[Photo], case: str) -> dict:
    """Time one case for both paths, alternating, and compare their scores.

    The WITHOUT_LEAN case runs the project's path with NEGCLIP_LEAN_SCORING=0, that is with transformers' own
    forward pass in place of negclip.inference, to show what the lean forward pass adds.
    """
    image_cache = ImageFeatureCache()
    text_cache = TextFeatureCache()
    rounds = photos[: args.repeats + 1]  # one warm-up round, then a photo per timed round
    fixed_captions = photos[-1].captions  # scored once before timing, for the warm-caption case
    differences = []
    plain_image_embeds = {}

    if case == "new photo, captions scored before":
        score_captions(clip, photos[-1].path, fixed_captions, cache=image_cache, text_cache=text_cache)
    if case == "photo scored before, new captions":
        for photo in rounds:
            score_captions(clip, photo.path, photos[-1].captions, cache=image_cache, text_cache=text_cache)
            plain_image_embeds[photo.path] = plain.image_embeds(photo.path)

    def captions_for(photo: Photo) -> list[str]:
        return fixed_captions if case == "new photo, captions scored before" else photo.captions

    def run_plain(round_index: int) -> None:
        photo = rounds[round_index + 1]
        if case == "photo scored before, new captions":
            results["plain"] = plain.score_cached_image(plain_image_embeds[photo.path], captions_for(photo))
        else:
            results["plain"] = plain.score(photo.path, captions_for(photo))

    def run_project(round_index: int) -> None:
        photo = rounds[round_index + 1]
        with lean_scoring(case != WITHOUT_LEAN):
            scores = score_captions(clip, photo.path, captions_for(photo), cache=image_cache, text_cache=text_cache)
        results["project"] = torch.tensor(scores.cosine)
        differences.append((results["project"] - results["plain"]).abs().max().item())

    results: dict[str, torch.Tensor] = {}
    seconds = time_interleaved({"plain": run_plain, "project": run_project}, args.repeats)
    plain_ms, project_ms = median(seconds["plain"]) * 1e3, median(seconds["project"]) * 1e3
    return {
        "case": case,
        "plain_ms": plain_ms,
        "project_ms": project_ms,
        "speedup": plain_ms / project_ms,
        "max_score_difference": max(differences),
        "plain_all_ms": [value * 1e3 for value in seconds["plain"]],
        "project_all_ms": [value * 1e3 for value in seconds["project"]],
    }


@contextlib.contextmanager
def lean_scoring(enabled: bool):
    previous = os.environ.get("NEGCLIP_LEAN_SCORING")
    os.environ["NEGCLIP_LEAN_SCORING"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["NEGCLIP_LEAN_SCORING"]
        else:
            os.environ["NEGCLIP_LEAN_SCORING"] = previous


UMAP_PROBE = """
import json, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from analysis.maps import UmapWarmup, umap_layout

rng = np.random.default_rng(0)
centres = rng.standard_normal((20, 512))
points = centres[rng.integers(0, 20, {count})] + 0.5 * rng.standard_normal(({count}, 512))
result = {{}}
if {warm_up_first}:
    started = time.perf_counter()
    UmapWarmup().start().wait()
    result["warm_up_seconds"] = time.perf_counter() - started
for name in ("first_map_seconds", "second_map_seconds"):
    started = time.perf_counter()
    umap_layout(points, seed=0)
    result[name] = time.perf_counter() - started
print(json.dumps(result))
"""


def time_umap(count: int, warm_up_first: bool) -> dict:
    """Time two UMAP maps of `count` points in a fresh process, optionally after the app's warm-up."""
    code = UMAP_PROBE.format(repo=str(REPO), count=count, warm_up_first=warm_up_first)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds per case, alternating the two paths")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--umap-points", type=int, default=2000, help="embeddings in the UMAP timing")
    parser.add_argument("--no-umap", action="store_true", help="skip the UMAP timing")
    parser.add_argument("--data-dir", type=Path, default=COCO_NEG, help="the coco-val2017-neg folder")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe_machine()
    print(f"machine: {format_machine(machine)}")

    clip = load_clip("vit-b32-random")
    plain = PlainTransformers(clip.tokenizer)
    cases = [
        "new photo, captions scored before",
        "new photo, new captions",
        "photo scored before, new captions",
        WITHOUT_LEAN,
    ]
    photos = load_photos(args.data_dir, len(cases) * (args.repeats + 1) + 1)
    print(f"{CAPTIONS_PER_PHOTO} captions per photo, e.g. {photos[0].captions[:3]}")

    rows = []
    print(f"\nmedian of {args.repeats} rounds, alternating plain and project:")
    print(f"{'case':46} {'plain ms':>9} {'project ms':>11} {'speedup':>8} {'max |d cos|':>12}")
    for index, case in enumerate(cases):
        share = photos[index * (args.repeats + 1) : (index + 1) * (args.repeats + 1)] + [photos[-1]]
        row = score_case(args, plain, clip, share, case)
        rows.append(row)
        print(
            f"{case:46} {row['plain_ms']:9.1f} {row['project_ms']:11.1f} {row['speedup']:7.2f}x "
            f"{row['max_score_difference']:12.1e}"
        )
    for row in rows:
        if row["max_score_difference"] > SCORE_TOLERANCE:
            print(f"FAILED: scores of '{row['case']}' differ by {row['max_score_difference']:.1e} > {SCORE_TOLERANCE}")

    umap = {}
    if not args.no_umap:
        umap["fresh process"] = time_umap(args.umap_points, warm_up_first=False)
        umap["after the app's warm-up"] = time_umap(args.umap_points, warm_up_first=True)
        cold, warmed = umap["fresh process"], umap["after the app's warm-up"]
        print(
            f"\nUMAP of {args.umap_points} points: first map in a fresh process {cold['first_map_seconds']:.1f} s "
            f"(numba compiles), second {cold['second_map_seconds']:.1f} s. After the app's warm-up "
            f"({warmed['warm_up_seconds']:.1f} s at start-up) the first map takes {warmed['first_map_seconds']:.1f} s"
        )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine, "repeats": args.repeats, "rows": rows, "umap": umap}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
