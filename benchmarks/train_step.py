"""Time the project's training step against the authors'-style step on a ViT-B/32-shaped CLIP.

The authors'-style step follows the authors' released loop (Jingqi-Xu/Omni-NegCLIP on GitHub,
src/training_omni_negclip.py). It runs the frozen image tower on every step for the presence batch and again for
the absence batch, and pads every caption to 77 tokens. It encodes [T+; T-], then Ta, then T+ of the absence
batch in three text-encoder calls, and updates with PyTorch's default AdamW. The project's step is `negclip.train.step_losses` with
`negclip.train.build_optimizer`, as `train()` runs it. Both compute the same objectives on the same batches of
real COCO captions from the same weights, which the script checks before timing.

Random weights cost the same compute as trained ones, so the model is `vit-b32-random`. Decoding and resizing
photos is left out of the authors'-style time, because their DataLoader workers do it beside the training loop;
that favours the authors'-style step.

    python benchmarks/train_step.py                      # authors'-style versus project, batch 32
    python benchmarks/train_step.py --levers             # also each speed lever on its own
    python benchmarks/train_step.py --levers --json runs/train_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import COCO_NEG, describe_machine, format_machine, median, peak_rss_bytes, rss_bytes, time_interleaved  # noqa: E402

from negclip.config import TrainConfig  # noqa: E402
from negclip.data import NegationExample  # noqa: E402
from negclip.encode import encode_images, image_features, text_features, tokenize  # noqa: E402
from negclip.images import load_image  # noqa: E402
from negclip.losses import OmniNegLoss  # noqa: E402
from negclip.models import MAX_TEXT_LENGTH, LoadedClip, load_clip  # noqa: E402
from negclip.packing import DEFAULT_MAX_ROW_TOKENS, pack_token_ids, token_id_lists  # noqa: E402
from negclip.train import MAX_LOGIT_SCALE, batch_order, build_optimizer, step_losses  # noqa: E402
from negclip.tuning import prepare_for_training, select_layers  # noqa: E402

logger = logging.getLogger("train_step")

AUTHORS = "authors'-style"
PROJECT = "project"
CHUNK_SIZE = 32  # captions per text-encoder call in the length-sorted-chunks lever


@dataclass
class Batches:
    """The presence and absence batches of one step, as `train()` draws them."""

    presence: list[NegationExample]
    absence: list[NegationExample]


class Workbench:
    """One model, its training setup and the data that every step variant shares."""

    def __init__(self, clip: LoadedClip, examples: list[NegationExample], batch_size: int, layers: str, seed: int = 0):
        self.clip = clip
        self.tokenizer = clip.tokenizer
        self.examples = examples
        self.batch_size = batch_size
        self.config = TrainConfig(layers=layers, mode="full", batch_size=batch_size, seed=seed).resolved()
        self.layers = select_layers(layers, clip.num_text_layers)
        self.model = prepare_for_training(clip.model, self.layers, self.config)
        self.model.train()
        self.trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.loss_fn = OmniNegLoss()
        self.images = sorted({example.image for example in examples})
        self.image_index = {image: index for index, image in enumerate(self.images)}
        presence_order = batch_order(len(examples), batch_size, seed, 0, 0)
        absence_order = batch_order(len(examples), batch_size, seed, 0, 1)
        self.batches = [
            Batches([examples[i] for i in presence], [examples[i] for i in absence])
            for presence, absence in zip(presence_order, absence_order)
        ]
        self.pixel_values: dict[str, torch.Tensor] = {}
        self.image_embeds: torch.Tensor | None = None

    def batches_for(self, round_index: int) -> Batches:
        return self.batches[round_index % len(self.batches)]

    def prepare_pixels(self, batches: list[Batches]) -> None:
        """Decode and preprocess the photos of these batches once, outside every timed step."""
        for step in batches:
            for example in step.presence + step.absence:
                if example.image not in self.pixel_values:
                    self.pixel_values[example.image] = self.clip.preprocess([load_image(example.image)])[0]

    def cache_image_features(self) -> float:
        """Encode every training photo once, as `train()` does before its first step; return the seconds taken."""
        started = time.perf_counter()
        self.image_embeds = encode_images(self.clip, self.images)
        self.model.train()  # prepare_for_training may return a wrapper around clip.model (LoRA)
        return time.perf_counter() - started

    def default_optimizer(self) -> torch.optim.AdamW:
        """AdamW built as the authors build it, with PyTorch's default implementation.

        It takes the project's parameter groups and settings, so that both steps make the same update.
        """
        groups = [
            {"params": group["params"], "weight_decay": group["weight_decay"]}
            for group in build_optimizer(self.model, self.config).param_groups
        ]
        return torch.optim.AdamW(groups, lr=self.config.learning_rate, betas=(0.9, 0.98), eps=1e-6)

    # ---------------------------------------------------------------- losses of one step

    def authors_losses(self, step: Batches, pad_to: int | None, image_tower: bool) -> torch.Tensor:
        """Compute the authors'-style loss: three text-encoder calls and the image tower run per objective.

        pad_to=77 pads every caption to 77 tokens as the authors' `clip.tokenize` does; None pads each call to its
        longest caption. With image_tower=False the cached image features are used instead.
        """
        presence_images = self._images(step.presence, image_tower)
        presence_texts = self._encode_call([e.caption for e in step.presence] + [e.presence_negated for e in step.presence], pad_to)
        absence_images = self._images(step.absence, image_tower)
        absence_texts = self._encode_call([e.absence_negated for e in step.absence], pad_to)
        original_texts = self._encode_call([e.caption for e in step.absence], pad_to)
        size = len(step.presence)
        presence_batch = {
            "image_embeds": presence_images,
            "text_embeds": presence_texts[:size],
            "negated_embeds": presence_texts[size:],
        }
        absence_batch = {"image_embeds": absence_images, "text_embeds": original_texts, "absence_embeds": absence_texts}
        return self.loss_fn(presence_batch, absence_batch, self.model.logit_scale.exp())["loss"]

    def chunked_losses(self, step: Batches, chunk_size: int | None) -> torch.Tensor:
        """Compute the loss with each distinct caption of the step encoded once, without prefix sharing.

        The captions are sorted by length and encoded `chunk_size` at a time, each call padded to its longest
        caption; chunk_size=None encodes them all in one call padded to the longest caption of the step.
        """
        captions = list(dict.fromkeys(step_captions(step)))
        lengths = [len(ids) for ids in self.tokenizer(captions)["input_ids"]]
        distinct = [caption for _, caption in sorted(zip(lengths, captions), key=lambda pair: pair[0])]
        chunk_size = chunk_size or len(distinct)
        embedded = {}
        for start in range(0, len(distinct), chunk_size):
            chunk = distinct[start : start + chunk_size]
            embedded.update(zip(chunk, self._encode_call(chunk, pad_to=None)))
        return self._losses_from(step, embedded)

    def project_losses(self, step: Batches) -> torch.Tensor:
        """Compute the loss with the library's step, `negclip.train.step_losses`, on the cached image features."""
        return step_losses(
            self.model,
            self.tokenizer,
            self.loss_fn,
            self.image_embeds,
            step.presence,
            self._image_ids(step.presence),
            step.absence,
            self._image_ids(step.absence),
        )["loss"]

    def _losses_from(self, step: Batches, embedded: dict[str, torch.Tensor]) -> torch.Tensor:
        def stack(texts: list[str]) -> torch.Tensor:
            return torch.stack([embedded[text] for text in texts])

        presence_batch = {
            "image_embeds": self.image_embeds[self._image_ids(step.presence)],
            "text_embeds": stack([e.caption for e in step.presence]),
            "negated_embeds": stack([e.presence_negated for e in step.presence]),
        }
        absence_batch = {
            "image_embeds": self.image_embeds[self._image_ids(step.absence)],
            "text_embeds": stack([e.caption for e in step.absence]),
            "absence_embeds": stack([e.absence_negated for e in step.absence]),
        }
        return self.loss_fn(presence_batch, absence_batch, self.model.logit_scale.exp())["loss"]

    def _image_ids(self, examples: list[NegationExample]) -> torch.Tensor:
        return torch.tensor([self.image_index[e.image] for e in examples])

    def _images(self, examples: list[NegationExample], image_tower: bool) -> torch.Tensor:
        if not image_tower:
            return self.image_embeds[self._image_ids(examples)]
        pixel_values = torch.stack([self.pixel_values[e.image] for e in examples])
        return F.normalize(image_features(self.model, pixel_values), dim=-1)

    def _encode_call(self, captions: list[str], pad_to: int | None) -> torch.Tensor:
        if pad_to is None:
            batch = tokenize(self.tokenizer, captions)
            input_ids, attention_mask = batch.input_ids, batch.attention_mask
        else:
            # The authors' encoder masks only the future, never the padding, which the causal mask already hides.
            input_ids = self.tokenizer(
                captions, padding="max_length", max_length=pad_to, truncation=True, return_tensors="pt"
            )["input_ids"]
            attention_mask = None
        return F.normalize(text_features(self.model, input_ids, attention_mask), dim=-1)

    # ---------------------------------------------------------------- one optimiser step

    def train_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        """Backward, clip, update and clamp, as `train()` does after its forward pass; return the loss."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
        return loss.item()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        parameters = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                parameters[name].copy_(tensor)


# ---------------------------------------------------------------- step variants


@dataclass
class Variant:
    """One way to run a training step: how it computes the loss and which optimiser it updates with."""

    name: str
    losses: Callable[[Batches], torch.Tensor]
    optimizer: torch.optim.Optimizer
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # around the whole step
    autocast: bool = False  # bf16 autocast around the forward pass only, as PyTorch recommends
    lever: str = ""

    def run(self, bench: Workbench, round_index: int) -> float:
        with self.context():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.losses(bench.batches_for(round_index))
            return bench.train_step(loss, self.optimizer)


def main_variants(bench: Workbench) -> dict[str, Variant]:
    authors = Variant(AUTHORS, lambda step: bench.authors_losses(step, MAX_TEXT_LENGTH, image_tower=True), bench.default_optimizer())
    project = Variant(
        PROJECT,
        bench.project_losses,
        build_optimizer(bench.model, bench.config),
        lever="the library's step with its fused AdamW",
    )
    return {authors.name: authors, project.name: project}


def lever_variants(bench: Workbench, main: dict[str, Variant]) -> dict[str, Variant]:
    """Return the authors'-style step with one lever added at a time, then ablations of the project's step."""
    default_optimizer = main[AUTHORS].optimizer
    fused_optimizer = main[PROJECT].optimizer
    return {
        "+ cached image features": Variant(
            "+ cached image features",
            lambda step: bench.authors_losses(step, MAX_TEXT_LENGTH, image_tower=False),
            default_optimizer,
            lever="the image tower is run once per photo before training, not twice per step",
        ),
        "+ per-batch padding": Variant(
            "+ per-batch padding",
            lambda step: bench.authors_losses(step, None, image_tower=False),
            default_optimizer,
            lever="each text-encoder call is padded to its longest caption, not to 77 tokens",
        ),
        "+ each distinct caption once": Variant(
            "+ each distinct caption once",
            lambda step: bench.chunked_losses(step, None),
            default_optimizer,
            lever="one text-encoder call per step over the distinct captions, padded to the step's longest",
        ),
        "+ length-sorted chunks": Variant(
            "+ length-sorted chunks",
            lambda step: bench.chunked_losses(step, CHUNK_SIZE),
            default_optimizer,
            lever=f"captions sorted by length and encoded {CHUNK_SIZE} at a time, each call padded to its longest",
        ),
        "+ shared-prefix packing": Variant(
            "+ shared-prefix packing",
            bench.project_losses,
            default_optimizer,
            lever="the library's step: captions packed into prefix trees, each shared prefix computed once",
        ),
        "project, eager attention": Variant(
            "project, eager attention",
            bench.project_losses,
            fused_optimizer,
            context=lambda: _attention(bench.model, "eager"),
            lever="transformers' eager attention in place of PyTorch's scaled_dot_product_attention",
        ),
        "project, gradients for all text weights": Variant(
            "project, gradients for all text weights",
            bench.project_losses,
            fused_optimizer,
            context=lambda: _all_text_gradients(bench.model),
            lever="weight gradients also for the frozen text layers, which the optimiser then ignores",
        ),
        "project, bf16 autocast": Variant(
            "project, bf16 autocast",
            bench.project_losses,
            fused_optimizer,
            autocast=True,
            lever="torch.autocast to bfloat16 on the CPU; the loss then differs beyond float error",
        ),
    }


@contextlib.contextmanager
def _attention(model, implementation: str):
    previous = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def _all_text_gradients(model):
    frozen = [p for name, p in model.named_parameters() if name.startswith("text_model.") and not p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)
            parameter.grad = None


# ---------------------------------------------------------------- checks and probes


def compare_losses(bench: Workbench, steps: int) -> dict:
    """Run both steps from the same weights over the same batches; return their losses and weight differences."""
    start = bench.trainable_state()
    results = {}
    for name in (AUTHORS, PROJECT):
        bench.load_trainable_state(start)
        variant = main_variants(bench)[name]  # fresh optimiser state for each side
        results[name] = [variant.run(bench, step) for step in range(steps)]
        results[name + " weights"] = bench.trainable_state()
    bench.load_trainable_state(start)
    authors_weights, project_weights = results.pop(AUTHORS + " weights"), results.pop(PROJECT + " weights")
    weight_difference = max((authors_weights[n] - project_weights[n]).abs().max().item() for n in authors_weights)
    loss_difference = max(abs(a - b) for a, b in zip(results[AUTHORS], results[PROJECT]))
    return {
        "losses": results,
        "max_loss_difference": loss_difference,
        "max_relative_loss_difference": loss_difference / max(abs(v) for v in results[AUTHORS]),
        "max_weight_difference": weight_difference,
        "learning_rate": bench.config.learning_rate,
    }


def step_captions(step: Batches) -> list[str]:
    """Return every caption a step encodes, in the order of the authors' three calls."""
    return (
        [e.caption for e in step.presence]
        + [e.presence_negated for e in step.presence]
        + [e.absence_negated for e in step.absence]
        + [e.caption for e in step.absence]
    )


def token_counts(bench: Workbench, step: Batches) -> dict[str, int]:
    """Count the token positions the text encoder processes in one step (captions times padded length)."""
    tokenizer = bench.tokenizer

    def lengths(captions: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(captions)["input_ids"]]

    size = len(step.presence)
    captions = step_captions(step)
    calls = [captions[: 2 * size], captions[2 * size : 3 * size], captions[3 * size :]]
    distinct_captions = list(dict.fromkeys(captions))
    distinct = sorted(lengths(distinct_captions))
    packed = pack_token_ids(token_id_lists(tokenizer, distinct_captions), DEFAULT_MAX_ROW_TOKENS)
    chunks = [distinct[i : i + CHUNK_SIZE] for i in range(0, len(distinct), CHUNK_SIZE)]
    return {
        "captions per step": sum(len(call) for call in calls),
        "distinct captions per step": len(distinct),
        "tokens without padding": sum(distinct),
        "padded to 77": sum(len(call) for call in calls) * MAX_TEXT_LENGTH,
        "padded per call": sum(len(call) * max(lengths(call)) for call in calls),
        "padded per step": len(distinct) * max(distinct),
        "padded per chunk": sum(len(chunk) * max(chunk) for chunk in chunks),
        "prefix-tree nodes": packed.nodes,
        "prefix-tree rows padded": packed.input_ids.numel(),
    }


def memory_probe(name: str, args: argparse.Namespace) -> dict:
    """Run two steps of one variant in this process; return its resident memory before and at peak."""
    bench = build_workbench(args)
    variants = main_variants(bench)
    if name == AUTHORS:
        bench.prepare_pixels(bench.batches[:2])
    else:
        # Stand-in features of the right shape. The step's memory does not depend on their values, and encoding
        # every photo here would add the caching's own peak, which belongs to no step.
        bench.image_embeds = F.normalize(torch.randn(len(bench.images), bench.clip.model.config.projection_dim), dim=-1)
    variant = variants[name]
    before = rss_bytes()
    for step in range(2):
        variant.run(bench, step)
    return {"rss_before_steps": before, "peak_rss": peak_rss_bytes()}


def measure_memory(args: argparse.Namespace) -> dict[str, dict]:
    """Measure the peak memory of each step, each in a fresh process so that neither counts the other's memory."""
    results = {}
    for name in (AUTHORS, PROJECT):
        command = [sys.executable, __file__, "--memory-probe", name, "--batch-size", str(args.batch_size)]
        command += ["--layers", args.layers, "--data-dir", str(args.data_dir)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
    return results


# ---------------------------------------------------------------- main


def load_examples(data_dir: Path) -> list[NegationExample]:
    """Build negation examples with the project's pipeline from real COCO captions and NegBench object labels."""
    from negclip.sources import load_negation_examples

    csv_path = data_dir / "negbench" / "COCO_val_retrieval.csv"
    if not csv_path.is_file():
        raise SystemExit(f"data not found: {csv_path}. Pass --data-dir with the coco-val2017-neg folder")
    return load_negation_examples(csv_path, image_root=data_dir / "images", seed=0)


def build_workbench(args: argparse.Namespace) -> Workbench:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return Workbench(load_clip("vit-b32-random"), load_examples(args.data_dir), args.batch_size, args.layers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="examples per presence batch and per absence batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant, alternating between variants")
    parser.add_argument("--levers", action="store_true", help="also time each speed lever on its own")
    parser.add_argument("--layers", default="front", help="text layers to train (front is the authors' setting)")
    parser.add_argument("--loss-steps", type=int, default=2, help="steps run by both variants to compare losses")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--data-dir", type=Path, default=COCO_NEG, help="the coco-val2017-neg folder")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args)))
        return 0

    bench = build_workbench(args)
    machine = describe_machine()
    print(f"machine: {format_machine(machine)}")
    print(f"model: vit-b32-random, layers {args.layers}, batch {args.batch_size}, {len(bench.examples)} examples")

    rounds = max(args.repeats, args.loss_steps) + 1
    bench.prepare_pixels([bench.batches_for(index) for index in range(-1, rounds)])
    caching_seconds = bench.cache_image_features()
    per_photo = caching_seconds / len(bench.images)
    print(f"image features cached once: {len(bench.images)} photos in {caching_seconds:.1f} s ({per_photo:.3f} s each)")

    counts = token_counts(bench, bench.batches_for(0))
    print("text-encoder token positions in step 1: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    check = compare_losses(bench, args.loss_steps)
    print(
        f"losses over {args.loss_steps} steps from the same weights: {AUTHORS} {check['losses'][AUTHORS]}, "
        f"{PROJECT} {check['losses'][PROJECT]}; max difference {check['max_loss_difference']:.2e} "
        f"(relative {check['max_relative_loss_difference']:.1e}); max weight difference "
        f"{check['max_weight_difference']:.1e} at learning rate {check['learning_rate']:g}"
    )

    main = main_variants(bench)
    variants = dict(main)
    if args.levers:
        variants.update(lever_variants(bench, main))
    cases = {name: (lambda round_index, v=variant: v.run(bench, round_index)) for name, variant in variants.items()}
    seconds = time_interleaved(cases, args.repeats)

    authors_seconds = median(seconds[AUTHORS])
    rows = []
    print(f"\nmedian of {args.repeats} steps each, alternating between variants:")
    print(f"{'variant':42} {'s/step':>8} {'samples/s':>10} {'vs authors':>10}")
    for name, values in seconds.items():
        step_seconds = median(values)
        row = {
            "variant": name,
            "seconds_per_step": step_seconds,
            "samples_per_second": args.batch_size / step_seconds,
            "speedup_vs_authors": authors_seconds / step_seconds,
            "all_seconds": values,
            "lever": variants[name].lever,
        }
        rows.append(row)
        print(f"{name:42} {step_seconds:8.2f} {row['samples_per_second']:10.2f} {row['speedup_vs_authors']:9.1f}x")

    ratio = authors_seconds / median(seconds[PROJECT])
    steps_per_epoch = len(bench.batches)
    epoch_ratio = (steps_per_epoch * authors_seconds) / (steps_per_epoch * median(seconds[PROJECT]) + caching_seconds)
    print(f"\nproject / {AUTHORS}: {ratio:.1f}x samples per second at batch {args.batch_size}")
    print(f"first epoch ({steps_per_epoch} steps) with the one-off feature caching counted: {epoch_ratio:.1f}x")

    memory = None
    if not args.no_memory:
        memory = measure_memory(args)
        for name, probe in memory.items():
            print(
                f"peak memory, {name}: {probe['peak_rss'] / 2**30:.2f} GiB resident "
                f"({(probe['peak_rss'] - probe['rss_before_steps']) / 2**30:.2f} GiB above the set-up)"
            )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": machine,
            "batch_size": args.batch_size,
            "layers": args.layers,
            "repeats": args.repeats,
            "image_caching_seconds": caching_seconds,
            "photos": len(bench.images),
            "token_counts": counts,
            "loss_check": check,
            "rows": rows,
            "speedup": ratio,
            "first_epoch_speedup": epoch_ratio,
            "memory": memory,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
