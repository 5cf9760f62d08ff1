"""``negclip app``: a web page (Gradio, the ``app`` extra) that shows whether text encoders get "no".

- :mod:`.core`: what the page computes, without Gradio (models loaded once, comparisons through the code of
  ``negclip compare``, Stable Diffusion stock vs negation-aware);
- :mod:`.page`: the Gradio page and :func:`~.page.serve`;
- :mod:`.space`: a Hugging Face Space folder (``negclip app --export-space``);
- :mod:`.commands`: the ``negclip app`` command.
"""
