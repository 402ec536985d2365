"""Rebuild the app's example set from the COCO val2017 negation subset.

    python assets/examples/build_examples.py --coco <folder with images/, annotations/, negbench/, image_licenses.jsonl>

Writes, next to this script: the photos, examples.json (captions, COCO labels, NegBench absent objects,
licences and the Compare tab's default captions), negations.jsonl (the library's negation builder, seed 0),
mcq.csv (NegBench's multiple-choice rows for these photos) and LICENSES.md.
"""

from __future__ import annotations

import argparse
import ast
import csv
import sys
import json
import shutil
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]

# Default captions for the Compare tab, each marked true or false for its photo by hand.
COMPARE_CAPTIONS = {
    "000000177015.jpg": [
        ("A man using his laptop computer while a cat sits on his lap.", True),
        ("A man using his laptop computer, but there is no cat.", False),
        ("A man using his laptop computer, but there is no dog.", True),
        ("A man with a dog on his lap.", False),
    ],
    "000000190140.jpg": [
        ("A man and a dog on a small boat.", True),
        ("A man on a small boat with no dog.", False),
        ("A man and a dog on a small boat, with no car in sight.", True),
        ("A man and a cat on a small boat.", False),
    ],
    "000000062554.jpg": [
        ("A bowl of broccoli, noodles and other various foods.", True),
        ("A bowl of noodles and other foods, but there is no broccoli.", False),
        ("A bowl of broccoli and noodles, but there is no cup.", True),
        ("A person eating broccoli at a table.", False),
    ],
    "000000085772.jpg": [
        ("A young man taking a swing at a tennis ball.", True),
        ("A young man on a tennis court without a tennis racket.", False),
        ("A young man swinging a tennis racket, and no car is visible.", True),
        ("A young man swinging a baseball bat.", False),
    ],
    "000000148719.jpg": [
        ("A red truck parked in grass next to other trucks.", True),
        ("A grassy field with no truck.", False),
        ("A red truck parked in grass, but there is no car.", True),
        ("A red bus parked in grass.", False),
    ],
    "000000054931.jpg": [
        ("A woman leading a white horse with a rope.", True),
        ("A woman holding a rope, but there is no horse.", False),
        ("A woman leading a horse, and there is no car.", True),
        ("A woman riding a bicycle.", False),
    ],
}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco", required=True, type=Path, help="the COCO val2017 negation subset folder")
    args = parser.parse_args()

    sys.path.insert(0, str(REPOSITORY))
    from negclip.data import ImageRecord, write_jsonl
    from negclip.negations import build_negations

    licences = {}
    for line in (args.coco / "image_licenses.jsonl").read_text().splitlines():
        entry = json.loads(line)
        licences[Path(entry["file"]).name] = entry
    captions_by_id = defaultdict(list)
    for annotation in json.loads((args.coco / "annotations" / "captions_val2017.json").read_text())["annotations"]:
        captions_by_id[annotation["image_id"]].append(" ".join(annotation["caption"].split()))
    retrieval = {Path(row["filepath"]).name: row for row in read_rows(args.coco / "negbench" / "COCO_val_retrieval.csv")}
    mcq_rows = read_rows(args.coco / "negbench" / "COCO_val_mcq_llama3.1_rephrased.csv")

    examples, records = [], []
    for name, compare in COMPARE_CAPTIONS.items():
        shutil.copyfile(args.coco / "images" / name, HERE / name)
        (HERE / name).chmod(0o644)
        licence = licences[name]
        row = retrieval[name]
        objects = ast.literal_eval(row["positive_objects"])
        absent = [item for item in ast.literal_eval(row["negative_objects"]) if item not in objects]
        captions = captions_by_id[licence["image_id"]]
        examples.append(
            {
                "file": name,
                "image_id": licence["image_id"],
                "captions": captions,
                "objects": objects,
                "absent_objects": absent,
                "compare_captions": [{"caption": caption, "true": truth} for caption, truth in compare],
                "license_name": licence["license_name"],
                "license_url": licence["license_url"],
                "flickr_url": licence["flickr_url"],
                "coco_url": licence["coco_url"],
            }
        )
        records.append(ImageRecord(name, captions, objects, absent, str(licence["image_id"])))

    (HERE / "examples.json").write_text(json.dumps(examples, indent=2, ensure_ascii=False) + "\n")
    write_jsonl(build_negations(records, seed=0).examples, HERE / "negations.jsonl")

    columns = ["image_path", "correct_answer", "caption_0", "caption_1", "caption_2", "caption_3", "correct_answer_template"]
    with open(HERE / "mcq.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in mcq_rows:
            name = Path(row["image_path"]).name
            if name in COMPARE_CAPTIONS:
                writer.writerow([name] + [row[column] for column in columns[1:]])

    lines = [
        "# Example photos and their licences",
        "",
        "Six unmodified photos from the COCO 2017 validation set (cocodataset.org), each under the Flickr licence",
        "listed below, with COCO's human captions and object labels (CC-BY 4.0) and NegBench's multiple-choice",
        "rows (`mcq.csv`; NegBench, Alhamoud et al., CVPR 2025, code MIT; its negated captions were rephrased with",
        "Llama 3.1, \"Built with Llama\"). `negations.jsonl` was written by this project's negation builder.",
        "COCO's metadata names no photographers; each Flickr link is the photo's original file.",
        "Rebuild everything with `python assets/examples/build_examples.py --coco <COCO negation subset>`.",
        "",
        "| photo | licence | source |",
        "| --- | --- | --- |",
    ]
    for example in examples:
        lines.append(
            f"| `{example['file']}` | [{example['license_name']}]({example['license_url']}) | "
            f"[Flickr]({example['flickr_url']}), [COCO]({example['coco_url']}) |"
        )
    (HERE / "LICENSES.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(examples)} photos, examples.json, negations.jsonl, mcq.csv and LICENSES.md to {HERE}")


if __name__ == "__main__":
    main()
