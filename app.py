"""Omni-NegCLIP workbench: compare vanilla and negation-tuned CLIP, map embeddings, fine-tune and evaluate.

    python app.py [--model openai/clip-vit-base-patch32] [--adapter <folder>] [--server-port 7860]

The layout lives here; every handler is a plain function in webapp/ (tested without a browser). Without
network the default Hub model cannot load, so the app falls back to a bundled offline model and shows a notice.
GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, GRADIO_ROOT_PATH and the other GRADIO_* variables apply as usual.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import signal

import gradio as gr

from negclip.config import TrainConfig
from negclip.models import DEFAULT_MODEL
from webapp import compare, evaluation, explore, finetune
from webapp.datasets import BUNDLED, EXAMPLES_DIR, SOURCES, WORLD, example_photos
from webapp.errors import PAGE_ERRORS, page_message
from webapp.models import (
    NO_ADAPTER,
    STARTUP_ADAPTERS,
    STORE,
    StartupModel,
    adapter_choices,
    load_startup_model,
    model_choices,
)
from webapp.session import delete_session, new_session, remove_own_sessions, remove_stale_sessions, work_root

logger = logging.getLogger("app")

INTRO = """# Omni-NegCLIP workbench
CLIP often scores *"a dog on a boat"* and *"a boat with no dog"* alike. Omni-NegCLIP fine-tunes the front layers
of CLIP's text encoder so that a caption that negates a present object (false) scores lower, and one that negates
an absent object (true) stays high. Compare a vanilla model with a tuned one, look inside, and tune your own."""

TRAIN_HELP = {field.name: field.metadata.get("help", "") for field in dataclasses.fields(TrainConfig)}


def model_status(model_name: str, adapter_choice: str | None, session) -> str:
    """Load the picked model and adapter (once per server) and describe them."""
    try:
        models = compare.compared_models(model_name, adapter_choice, session)
    except PAGE_ERRORS as error:  # shown in the status line; the handlers raise the same error on use
        return f"**Not loaded:** {page_message(error)}"
    notes = [f"**{label}**: {clip.note}" for label, clip in models.items()]
    return "  \n".join(notes)


def build_demo(startup: StartupModel) -> gr.Blocks:
    """Lay out the five tabs and wire each widget to its handler."""
    examples = example_photos()
    world_default = startup.model == "negation-world"
    defaults = TrainConfig()
    layer_caption, layer_variants = explore.default_layer_inputs()
    models = model_choices()
    if startup.model not in models:
        models.insert(0, startup.model)
    if startup.adapter not in adapter_choices():
        STARTUP_ADAPTERS.append(startup.adapter)
    adapters = adapter_choices()

    with gr.Blocks(title="Omni-NegCLIP workbench") as demo:
        session = gr.State(new_session, delete_callback=delete_session)
        gr.Markdown(INTRO)
        gr.Markdown(startup.notice, visible=bool(startup.notice), elem_id="offline-notice")
        with gr.Row():
            model = gr.Dropdown(
                models, value=startup.model, allow_custom_value=True, label="Model",
                info="a Hugging Face Hub id, a local model folder, negation-world or tiny-random",
            )
            adapter = gr.Dropdown(
                adapters, value=startup.adapter, allow_custom_value=True, label="Adapter (the tuned model)",
                info="none, the bundled one, an adapter folder or Hub id, or the one fine-tuned in this session",
            )
        status = gr.Markdown(elem_id="model-status")

        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=2):
                        photo = gr.Image(label="Photo", type="filepath", interactive=False, height=300, elem_id="photo")
                        # No file_types, because Gradio (6.31) then rejects other files in File.preprocess before
                        # set_photo runs. set_photo's message names the file and the formats it accepts.
                        photo_file = gr.File(
                            label="Upload a photo (JPEG, PNG or WebP)", type="filepath", elem_id="photo-upload"
                        )
                        gallery = gr.Gallery(
                            [(item.path, item.label) for item in examples], label="Example photos (click one)",
                            columns=3, height=260, allow_preview=False, elem_id="examples",
                        )
                    with gr.Column(scale=3):
                        captions = gr.Textbox(
                            label="Captions, one per line (affirmative and negated)", lines=7, elem_id="captions"
                        )
                        truth = gr.CheckboxGroup(
                            label="Mark the captions that are true for the photo", choices=[], elem_id="truth"
                        )
                        with gr.Row():
                            compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                            suggest_button = gr.Button("Suggest negations")
                        guess_note = gr.Markdown()
                compare_summary = gr.Markdown(elem_id="compare-summary")
                scores = gr.Dataframe(label="Scores", elem_id="compare-scores", wrap=True)
                scores_plot = gr.Plot(label="Softmax probability per caption", elem_id="compare-plot")

            with gr.Tab("Embedding map", id="map"):
                with gr.Row():
                    map_source = gr.Radio(
                        list(explore.MAP_SOURCES), value=WORLD if world_default else BUNDLED, label="Captions from"
                    )
                    map_size = gr.Slider(4, explore.MAX_MAP_EXAMPLES, value=30, step=1, label="Images to sample")
                    map_seed = gr.Number(0, precision=0, label="Seed")
                map_button = gr.Button("Draw maps", variant="primary", elem_id="map-button")
                map_plot = gr.Plot(label="UMAP of captions, negations and images", elem_id="map-plot")
                map_numbers = gr.Dataframe(label="What the maps summarise")
                map_note = gr.Markdown()

            with gr.Tab("Fine-tune", id="finetune"):
                train_source = gr.Radio(list(SOURCES), value=WORLD if world_default else BUNDLED, label="Training data")
                with gr.Accordion("Upload your own data (also used by Embedding map and Evaluate)", open=False):
                    gr.Markdown(
                        "A `.jsonl` in the project's format or a `.csv` with its columns (or a NegBench CSV), and a "
                        "`.zip` of the images it names, with paths relative to the zip's top folder."
                    )
                    with gr.Row():
                        data_file = gr.File(label="Data file", file_types=[".jsonl", ".csv", ".json"], type="filepath")
                        images_zip = gr.File(label="Images (.zip)", file_types=[".zip"], type="filepath")
                    upload_button = gr.Button("Check and use the upload")
                    upload_status = gr.Markdown()
                with gr.Row():
                    layers = gr.Radio(list(finetune.LAYER_CHOICES), value="front", label="Text layers to tune",
                                      info=TRAIN_HELP["layers"])
                    custom_layers = gr.Textbox(label="Custom layers", placeholder="0-3 or 0,2,4")
                    mode = gr.Radio(["full", "lora"], value="full", label="Mode", info=TRAIN_HELP["mode"])
                with gr.Row():
                    epochs = gr.Number(defaults.epochs, precision=0, label="Epochs", info=TRAIN_HELP["epochs"])
                    max_steps = gr.Number(0, precision=0, label="Max steps", info="0: run all epochs")
                    batch_size = gr.Number(16, precision=0, label="Batch size", info=TRAIN_HELP["batch_size"])
                    learning_rate = gr.Number(
                        defaults.learning_rate, label="Learning rate", info=TRAIN_HELP["learning_rate"]
                    )
                    train_seed = gr.Number(0, precision=0, label="Seed")
                with gr.Row():
                    lambda_abs = gr.Number(defaults.lambda_abs, label="λ_abs", info=TRAIN_HELP["lambda_abs"])
                    lambda_orig = gr.Number(defaults.lambda_orig, label="λ_orig", info=TRAIN_HELP["lambda_orig"])
                    lambda_text = gr.Number(defaults.lambda_text, label="λ_text", info=TRAIN_HELP["lambda_text"])
                    margin = gr.Number(defaults.margin, label="Margin m", info=TRAIN_HELP["margin"])
                with gr.Row():
                    start_button = gr.Button("Start fine-tuning", variant="primary", elem_id="start-button")
                    cancel_button = gr.Button("Cancel", variant="stop")
                train_status = gr.Markdown(elem_id="train-status")
                loss_plot = gr.Plot(label="Training loss")
                before_after = gr.Dataframe(label="Held-out images before and after tuning")
                adapter_zip = gr.File(label="Download the adapter (zip)")

            with gr.Tab("Layer analysis", id="layers"):
                layer_caption_box = gr.Textbox(layer_caption, label="Caption")
                layer_variants_box = gr.Textbox(layer_variants, lines=4, label="Its negations, one per line")
                layer_button = gr.Button("Measure per layer", variant="primary")
                layer_plot = gr.Plot(label="Cosine between the caption and each negation, per text-encoder layer")
                layer_table = gr.Dataframe(label="Per-layer cosine")

            with gr.Tab("Evaluate", id="evaluate"):
                eval_source = gr.Radio(list(SOURCES), value=WORLD if world_default else BUNDLED, label="Data",
                                       info="upload your own data in the Fine-tune tab; mcq needs a NegBench MCQ CSV")
                benchmarks = gr.CheckboxGroup(list(evaluation.BENCHMARK_CHOICES), value=list(evaluation.BENCHMARK_CHOICES),
                                              label="Benchmarks")
                eval_button = gr.Button("Evaluate", variant="primary")
                eval_table = gr.Dataframe(label="Vanilla against tuned")
                eval_note = gr.Markdown()

        # Models and session
        picker_inputs = [model, adapter, session]
        demo.load(model_status, picker_inputs, status)
        model.change(model_status, picker_inputs, status)
        adapter.change(model_status, picker_inputs, status)

        # Compare: the first example photo is loaded with the page, so Compare works at once.
        photo_file.upload(
            compare.clear_photo, [session], [photo, scores, compare_summary, scores_plot, session], queue=False
        ).then(compare.set_photo, [photo_file, session], [photo, session])

        def on_example(session_value, event: gr.SelectData):
            return compare.choose_example(event.index, session_value)

        def load_first_example(session_value):
            return compare.choose_example(0, session_value)

        demo.load(load_first_example, [session], [photo, captions, truth, session])

        gallery.select(on_example, [session], [photo, captions, truth, session])
        captions.change(compare.sync_truth_choices, [captions, truth], truth, show_progress="hidden")
        compare_button.click(
            compare.compare, [session, captions, truth, model, adapter], [scores, compare_summary, scores_plot]
        )
        suggest_button.click(compare.suggest, [session, captions, truth, model], [captions, truth, guess_note])

        # Embedding map and layers
        map_button.click(
            explore.embedding_map,
            [map_source, map_size, map_seed, captions, model, adapter, session],
            [map_plot, map_numbers, map_note],
            concurrency_limit=1,
            concurrency_id="map",
        )
        layer_button.click(
            explore.layer_analysis,
            [layer_caption_box, layer_variants_box, model, adapter, session],
            [layer_plot, layer_table],
        )

        # Fine-tune: one run at a time across all sessions; Cancel skips the queue.
        custom_layers.input(finetune.select_custom_layers, [custom_layers], layers, queue=False)
        upload_button.click(finetune.upload_data, [data_file, images_zip, session], [upload_status, session])
        start_button.click(finetune.request_finetune, [session], None, queue=False).then(
            finetune.run_finetune,
            [train_source, layers, custom_layers, mode, epochs, max_steps, batch_size, learning_rate,
             lambda_abs, lambda_orig, lambda_text, margin, train_seed, model, session],
            [train_status, loss_plot, before_after, adapter_zip, adapter, session],
            concurrency_limit=1,
            concurrency_id="finetune",
        )
        cancel_button.click(finetune.cancel_finetune, [session], train_status, queue=False)

        # Evaluate
        eval_button.click(
            evaluation.evaluate,
            [eval_source, benchmarks, model, adapter, session],
            [eval_table, eval_note],
            concurrency_limit=1,
            concurrency_id="evaluate",
        )
    return demo


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Omni-NegCLIP workbench (a Gradio app).")
    parser.add_argument("--model", default=os.environ.get("NEGCLIP_APP_MODEL", DEFAULT_MODEL),
                        help="model to start with: Hub id, local folder, negation-world or tiny-random "
                        f"(default: $NEGCLIP_APP_MODEL or {DEFAULT_MODEL}; offline, a bundled model is used instead)")
    parser.add_argument("--adapter", default=os.environ.get("NEGCLIP_APP_ADAPTER"),
                        help="adapter to start with: a folder, a Hub id or negation-world (default: none, or the "
                        "bundled one with the negation-world model)")
    parser.add_argument("--server-name", default=None, help="address to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--server-port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--max-file-size", default="200mb", help="largest upload Gradio accepts, e.g. 200mb")
    return parser.parse_args(argv)


def _stop_on_sigterm(signal_number: int, frame) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that Gradio closes the server and atexit handlers run."""
    logger.info("received SIGTERM, stopping the server")
    raise KeyboardInterrupt


def install_session_cleanup() -> None:
    """Remove session folders left by stopped servers now, and this server's own ones when it stops.

    Covers a normal exit, Ctrl-C and SIGTERM. A server killed with SIGKILL leaves its folders until the
    next start.
    """
    remove_stale_sessions()
    atexit.register(remove_own_sessions)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_arguments(argv)
    install_session_cleanup()
    explore.UMAP_WARMUP.start()
    startup = load_startup_model(STORE, args.model, args.adapter)
    if startup.adapter != NO_ADAPTER:
        try:
            STORE.tuned(startup.model, startup.adapter)
            STORE.pin(startup.model, startup.adapter)
        except PAGE_ERRORS as error:
            logger.error("could not load adapter %s, starting without one: %s", startup.adapter, error)
            notice = f"⚠️ **Adapter `{startup.adapter}` could not be loaded**, so the app starts without one: "
            notice += page_message(error)
            notices = "\n\n".join(text for text in (startup.notice, notice) if text)
            startup = dataclasses.replace(startup, adapter=NO_ADAPTER, notice=notices)
    logger.info("starting with model %s and adapter %s", startup.model, startup.adapter)
    demo = build_demo(startup)
    demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=args.server_name,
        server_port=args.server_port,
        share=args.share or None,
        allowed_paths=[str(EXAMPLES_DIR), str(work_root())],  # example photos and generated world scenes
        max_file_size=args.max_file_size,
    )


if __name__ == "__main__":
    main()
