"""The Gradio page: Compare (your image, your captions, every model side by side) and Generate (Stable Diffusion with
the stock and a negation-aware text encoder, same seed). The numbers come from :mod:`negation_plugins.app.core`."""

from __future__ import annotations

import os
import threading
from html import escape

# Before gradio is imported: no usage statistics or version check from a page that may run on a closed network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from .core import (  # noqa: E402
    AppError,
    Generator,
    Models,
    bar_chart,
    compare_image,
    equivalent_command,
    image_table_html,
    probe,
    probe_table_html,
    short_label,
    text_table_html,
)

MAX_UPLOAD = "10mb"
DEFAULT_CAPTIONS = ("a street with cars.", "a street with no cars.", "a street with cars and no people.")
CSS = """
.negclip-table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
.negclip-table th, .negclip-table td { border: 1px solid #8884; padding: 0.25em 0.6em; text-align: right; }
.negclip-table td.caption { text-align: left; }
.negclip-table td.pick { font-weight: 700; background: #3c83f622; }
.negclip-legend { font-size: 0.8em; list-style: none; padding-left: 0; }
.negclip-error { color: #c22; font-weight: 600; }
#image img, #stock-image img, #aware-image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
"""
INTRO = """# Does the text encoder get “no”?
Upload an image (or pick a held-out scene), type captions — one with “no”, one without, one that negates something
in the picture — and compare the models side by side: the probability each gives every caption (softmax over your
captions, the pick marked ✔) and the cosine behind it. The same numbers as `negclip compare --json`."""
GENERATE_HELP = """Start the page with `--pipeline NAME` (a diffusers Stable Diffusion 1.x/2.x/SDXL pipeline, e.g.
`negclip app --pipeline stable-diffusion-v1-5/stable-diffusion-v1-5 --model hf-hub:jerryray/negationclip/negationclip_ViT-L14.pth`)
to generate one prompt twice, same seed: with the pipeline's stock text encoder and with a negation-aware one."""


def error_html(error: BaseException) -> str:
    return f'<p class="negclip-error">Error: {escape(str(error))}</p>'


def build_page(
    models: Models,
    corrections: list[str],
    generator: Generator | None = None,
    note: str = "",
    examples=(),
) -> gr.Blocks:
    """The page's components and events (not started: see :func:`serve`)."""
    cancel_flags: dict[str, threading.Event] = {}

    def loading(progress):
        return lambda message: progress(0, desc=message)

    def on_compare(image, captions, names, fixes, progress=gr.Progress()):
        try:
            result = compare_image(models, names, image, captions, fixes, loading(progress))
        except AppError as err:
            return error_html(err), "", None, ""
        command = equivalent_command(names, captions, fixes)
        return (
            "",
            image_table_html(result),
            bar_chart(result),
            f"Same numbers on the command line:\n\n```\n{command}\n```",
        )

    def on_probe(captions, names, fixes, progress=gr.Progress()):
        try:
            texts, built_in = probe(models, names, captions, fixes, loading(progress))
        except AppError as err:
            return error_html(err), ""
        return "", text_table_html(texts) + probe_table_html(built_in)

    def on_generate(prompt, name, seed, steps, guidance, route, request: gr.Request, progress=gr.Progress()):
        cancel_flags[request.session_hash] = stop = threading.Event()
        try:
            encoder = models.get(name, loading(progress))
            stock, aware, used = generator.pair(
                prompt,
                encoder,
                seed=seed,
                steps=steps,
                guidance=guidance,
                route=route,
                step_done=lambda done, total: progress((done, total), desc="denoising: stock, then negation-aware"),
                cancelled=stop.is_set,
                progress=loading(progress),
            )
        except AppError as err:
            return error_html(err), None, None
        routed = f"; negative prompt: “{escape(used['negative_prompt'])}”" if used["negative_prompt"] else ""
        return f"<p>prompt: “{escape(used['prompt'])}”{routed}; seed {int(seed)}</p>", stock, aware

    def on_cancel(request: gr.Request):
        flag = cancel_flags.get(request.session_hash)
        if flag is not None:
            flag.set()
        return '<p class="negclip-error">generation cancelled</p>'

    first = list(examples[0].captions) if examples else list(DEFAULT_CAPTIONS)
    with gr.Blocks(title="negclip: does it get “no”?", analytics_enabled=False) as page:
        gr.Markdown(INTRO + (f"\n\n{note}" if note else ""))
        status = gr.HTML(elem_id="status")
        with gr.Tabs():
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                with gr.Row():
                    with gr.Column(scale=2):
                        image = gr.Image(
                            type="filepath", sources=["upload", "clipboard"], label="Image", height=240, elem_id="image"
                        )
                        captions = gr.Textbox(
                            "\n".join(first), lines=4, label="Captions, one per line", elem_id="captions"
                        )
                        chosen = gr.CheckboxGroup(
                            [(short_label(n), n) for n in models.names],
                            value=models.names,
                            label="Models",
                            elem_id="models",
                        )
                        fixes = gr.CheckboxGroup(
                            corrections,
                            value=[],
                            label="Corrections (training-free; each chosen model is also shown with them stacked on)",
                            info="span-subtraction removes each negated phrase's direction; steering:FILE adds a "
                            "direction fitted by `negclip corrections fit` (start the page with --correction steering:FILE)",
                            elem_id="corrections",
                        )
                        with gr.Row():
                            compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                            probe_button = gr.Button("Negation probe", elem_id="probe-button")
                        if examples:
                            gr.Examples(
                                [[str(e.image), "\n".join(e.captions)] for e in examples],
                                inputs=[image, captions],
                                label="Held-out world scenes (never seen in training)",
                            )
                    with gr.Column(scale=3):
                        table = gr.HTML(elem_id="compare-result")
                        chart = gr.Plot(label="Probabilities", elem_id="chart")
                        command = gr.Markdown(elem_id="command")
            compare_button.click(
                on_compare, [image, captions, chosen, fixes], [status, table, chart, command], concurrency_id="models"
            )
            probe_button.click(on_probe, [captions, chosen, fixes], [status, table], concurrency_id="models")
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                if generator is None:
                    gr.Markdown(GENERATE_HELP)
                else:
                    gr.Markdown(
                        f"Pipeline `{generator.name}`: one prompt, the same seed, generated with its stock text "
                        "encoder (left) and with the chosen model's encoder swapped in (right). One generation "
                        "runs at a time; others wait in a queue."
                    )
                    with gr.Row():
                        prompt = gr.Textbox("a street with no cars", label="Prompt", scale=3, elem_id="prompt")
                        encoder = gr.Dropdown(
                            [(short_label(n), n) for n in models.names],
                            value=models.names[-1],
                            label="Negation-aware encoder",
                            elem_id="encoder",
                        )
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                        steps = gr.Slider(1, 100, value=25, step=1, label="Steps", elem_id="steps")
                        guidance = gr.Slider(1.0, 15.0, value=7.5, step=0.5, label="Guidance scale")
                        route = gr.Checkbox(
                            False,
                            label="Route negations to the negative prompt",
                            info="“a street without cars” → prompt “a street”, negative prompt “cars” "
                            "(integrations.prompting)",
                            elem_id="route",
                        )
                    with gr.Row():
                        generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                        cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
                    with gr.Row():
                        stock_image = gr.Image(
                            label="stock text encoder", height=320, elem_id="stock-image", format="png"
                        )
                        aware_image = gr.Image(
                            label="negation-aware text encoder", height=320, elem_id="aware-image", format="png"
                        )
                    generation = generate_button.click(
                        on_generate,
                        [prompt, encoder, seed, steps, guidance, route],
                        [status, stock_image, aware_image],
                        concurrency_limit=1,
                        concurrency_id="generate",
                    )
                    cancel_button.click(on_cancel, None, status, queue=False, cancels=[generation])
    return page


def serve(page: gr.Blocks, host: str | None = "127.0.0.1", port: int | None = 7860, share: bool = False, **launch):
    """Start the server (blocks until stopped). ``host=None``: Gradio's GRADIO_SERVER_NAME or 127.0.0.1."""
    page.queue(default_concurrency_limit=1, max_size=64)
    return page.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=MAX_UPLOAD,
        ssr_mode=False,
        css=CSS,
        **launch,
    )


def build_app(models=(), pipeline: str | None = None, corrections=(), device: str = "cpu") -> gr.Blocks:
    """The page for ``negclip app``: the given models (checked now, loaded on first use), or with none the embedded
    default (the synthetic world's models and held-out scenes as examples)."""
    from .core import check_corrections, check_model_name, default_models, world_examples

    if models:
        names, note, examples = list(models), "", []
        for name in names:
            check_model_name(name)
    else:
        names, note = default_models()
        examples = world_examples()
    choices = check_corrections(corrections)
    generator = Generator(pipeline, device) if pipeline else None
    return build_page(Models(names, device), choices, generator, note, examples)
