"""T5 text conditioning is not built in.

The fractal dataset ships a 512-d Universal Sentence Encoder embedding of every instruction, and
RT1 conditions on it (`RT1Config.text_embed_dim = 512`). Conditioning on free text through a T5
encoder (as robotic-transformer-pytorch does) needs the optional `classifier-free-guidance-pytorch`
package, `transformers` and access to a model hub to download the T5 weights.
"""

from __future__ import annotations


def t5_text_embeds(texts, model_name: str = "google/t5-v1_1-base"):
    """Always raises: explains how to condition on text."""
    raise RuntimeError(
        f"T5 conditioning ({model_name}) is not part of rt1: it needs the optional packages "
        "`classifier-free-guidance-pytorch` and `transformers` plus a model hub to download the weights. "
        "Use the dataset's 512-d `natural_language_embedding` (the default, RT1Config.text_embed_dim=512), "
        "or compute embeddings of your own elsewhere and pass them as text_embeds."
    )
