"""Benchmark the RT-1 model: parameters, training step time, policy step time with and without the cache.

    python benchmarks/bench_model.py                       # rt1 preset, batch 2 (a few minutes on 2 cores)
    python benchmarks/bench_model.py --preset tiny --batch-size 8 --repeats 20

One run prints, for one config, one batch and the same random inputs:
  - our parameter count and forward+backward time (training mode, cross-entropy loss) per sample;
  - the policy's inference time per step with the token cache (encode the new frame only) and
    without it (re-encode all 6 frames every step);
  - if `robotic-transformer-pytorch` (the model the original pipeline trained) is importable, its
    parameter count and forward+backward time at the same config, interleaved with ours, and the
    ratios. It is optional:
        pip install --no-deps robotic-transformer-pytorch==0.2.3 classifier-free-guidance-pytorch==0.7.1 beartype
    (--no-deps: it must not pull torch, torchvision or open-clip). Its text conditioner wants a T5
    model from a hub; the benchmark gives it a hub-free stand-in of the same width as our text
    embeddings and passes precomputed embeddings, so no text model is loaded or downloaded.

Timings are the median over --repeats after one warm-up; other processes on the machine add noise,
so the minimum is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rt1.config import PRESETS, RT1Config  # noqa: E402
from rt1.model import RT1, action_loss  # noqa: E402
from rt1.policy import RT1Policy  # noqa: E402

# ---- the optional reference model ---------------------------------------------------------------


def _stub_missing_modules() -> None:
    """classifier_free_guidance_pytorch imports transformers, open_clip and environs at import time
    for its text encoders. None is needed with precomputed embeddings: stub the missing ones."""
    import importlib.util

    for name in ("transformers", "open_clip", "environs"):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        module = types.ModuleType(name)
        if name == "transformers":
            class _NoHub:
                @classmethod
                def from_pretrained(cls, *args, **kwargs):
                    raise RuntimeError("benchmark stub: no model hub")

            for attr in ("T5Tokenizer", "T5EncoderModel", "T5Config", "AutoTokenizer", "AutoModel", "AutoConfig"):
                setattr(module, attr, _NoHub)
            module.logging = types.SimpleNamespace(set_verbosity_error=lambda: None)
        elif name == "environs":
            class Env:
                def read_env(self, *args, **kwargs):
                    pass

                def bool(self, key, default=False):
                    return default

            module.Env = Env
        sys.modules[name] = module


def build_reference(config: RT1Config):
    """robotic_transformer_pytorch.RT1 at `config`, or (None, reason)."""
    import importlib.util

    if importlib.util.find_spec("robotic_transformer_pytorch") is None:
        return None, "robotic-transformer-pytorch is not installed"
    try:
        _stub_missing_modules()
        import classifier_free_guidance_pytorch.classifier_free_guidance_pytorch as cfg
        from robotic_transformer_pytorch import RT1 as RefRT1
        from robotic_transformer_pytorch import MaxViT as RefMaxViT
    except Exception as error:  # an incompatible version: report, keep benchmarking ours
        return None, f"robotic-transformer-pytorch could not be imported: {error!r}"

    class PrecomputedTextAdapter:
        """Stands in for T5Adapter: same interface, no model; width = our text embedding width."""

        def __init__(self, name=None, text_embed_pad_value=0.0):
            self.name = name

        dim_latent = config.text_embed_dim
        max_text_len = 256

        def embed_text(self, texts, **kwargs):
            raise RuntimeError("pass text_embeds: this benchmark has no text model")

    cfg.CONDITION_CONFIG["t5"] = PrecomputedTextAdapter
    vit = RefMaxViT(
        num_classes=1000, dim=config.dim, depth=config.depth, dim_head=config.dim_head,
        dim_conv_stem=config.conv_stem_dim, window_size=config.attention_window,
        mbconv_expansion_rate=config.mbconv_expansion, mbconv_shrinkage_rate=config.mbconv_shrinkage,
        dropout=config.dropout, channels=config.channels,
    )
    model = RefRT1(
        vit=vit, num_actions=config.num_actions, action_bins=config.num_bins, depth=config.transformer_depth,
        heads=config.transformer_heads, dim_head=config.transformer_dim_head,
        token_learner_ff_mult=config.token_learner_ff_mult,
        token_learner_num_output_tokens=config.num_learned_tokens, cond_drop_prob=config.cond_drop_prob,
    )
    return model, ""


def film_t5_extra_params(config: RT1Config, t5_dim: int = 768) -> int:
    """Extra parameters the reference's FiLM conditioner has with a real T5-base (768-d) encoder
    instead of 512-d embeddings: the text stem is t5_dim -> 2*t5_dim and every FiLM generator's first
    layer reads 2*t5_dim values."""
    def stem(e):
        return e * 2 * e + 2 * e

    widths = []
    dim_in = config.conv_stem_dim
    for dim, depth in zip(config.stage_dims, config.depth):
        for _ in range(depth):
            widths.append(dim_in)
            dim_in = dim
    widths += [config.embed_dim] * (2 * config.transformer_depth)
    first = sum(4 * w for w in widths)  # FiLM first layer outputs (mult 4 in the reference)
    e = config.text_embed_dim
    return (stem(t5_dim) - stem(e)) + first * 2 * (t5_dim - e) + (t5_dim - e)  # + null embedding


def reference_fixed_differences(config: RT1Config) -> list[str]:
    """Our config fields that robotic-transformer-pytorch hard-codes to other values."""
    fixed = {"cond_dim": 2 * config.text_embed_dim, "film_mult": 4, "ff_mult": 4, "transformer_dropout": 0.0}
    return [f"{name}={value} (ours: {getattr(config, name)})" for name, value in fixed.items()
            if getattr(config, name) != value]


# ---- timing -------------------------------------------------------------------------------------


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(model, video, text_embeds, tokens, cond_drop_prob, reference: bool) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    if reference:
        logits = model(video, text_embeds=text_embeds, cond_drop_prob=cond_drop_prob)
    else:
        logits = model(video, text_embeds, cond_drop_prob=cond_drop_prob)
    action_loss(logits, tokens).backward()
    return time.perf_counter() - start


def policy_step_times(model: RT1, images: np.ndarray, text_embed: np.ndarray, use_cache: bool, repeats: int):
    """Seconds per step over `repeats` steps taken once the 6-frame history is full."""
    policy = RT1Policy(model, use_cache=use_cache)
    frames = model.config.num_frames
    for t in range(frames):  # fill the history (and warm up)
        policy.step(images[t % len(images)], text_embed)
    times = []
    for t in range(repeats):
        start = time.perf_counter()
        policy.step(images[(frames + t) % len(images)], text_embed)
        times.append(time.perf_counter() - start)
    return times


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="rt1", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--policy-repeats", type=int, default=None, help="timed policy steps (default 2 x repeats)")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's image size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-reference", action="store_true", help="skip robotic-transformer-pytorch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    config = RT1Config.preset(args.preset, **({"image_size": args.image_size} if args.image_size else {}))
    torch.manual_seed(args.seed)
    b, f, s = args.batch_size, config.num_frames, config.image_size
    video = torch.randn(b, config.channels, f, s, s)
    text_embeds = torch.randn(b, config.text_embed_dim)
    tokens = torch.randint(0, config.num_bins, (b, f, config.num_actions))

    print(f"RT-1 model benchmark: preset={args.preset} image={s}x{s} frames={f} batch={b} "
          f"repeats={args.repeats} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"load average={os.getloadavg()[0]:.1f} (other processes add noise)")
    print(f"config: {config}")

    ours = RT1(config).train()
    reference, reason = (None, "--no-reference") if args.no_reference else build_reference(config)
    if reference is not None:
        reference.train()

    ours_params = count(ours)
    print("\n== parameters ==")
    print(f"ours (rt1.model.RT1):                  {ours_params:>13,}")
    if reference is not None:
        ref_params = count(reference)
        ref_head = count(reference.vit.mlp_head)
        ref_used = ref_params - ref_head
        print(f"robotic-transformer-pytorch 0.2.3:     {ref_params:>13,}  (with 512-d text embeddings, like ours)")
        print(f"  of which its unused MaxViT ImageNet head: {ref_head:,} -> {ref_used:,} used in RT-1")
        print(f"  ratio ours / theirs: {ours_params / ref_params:.4f} (all)   {ours_params / ref_used:.4f} (used)")
        print(f"  note: with its default T5-base conditioner (768-d text) it would have "
              f"{film_t5_extra_params(config):,} more parameters,\n"
              f"        all in the FiLM text stem/generators (text width 768 instead of 512); the rest is as above.")
        print("  layer differences: ours has no MaxViT memory key/values (4 per attention), no conv biases\n"
              "  before BatchNorms, and a LayerNorm before the TokenLearner MLP; the rest matches layer for layer.")
        fixed = reference_fixed_differences(config)
        if fixed:
            print(f"  NOTE: the reference hard-codes {', '.join(fixed)},\n"
                  "        so parameter counts and times are not like for like here (the rt1 preset is).")
    else:
        print(f"robotic-transformer-pytorch: not compared ({reason}).\n  To compare: pip install --no-deps "
              "robotic-transformer-pytorch==0.2.3 classifier-free-guidance-pytorch==0.7.1 beartype")

    # ---- training step ----
    print(f"\n== forward + backward (training mode, cond_drop_prob={config.cond_drop_prob}, "
          f"batch {b} x {f} frames x {s}x{s}) ==")
    models = [("ours", ours, False)] + ([("theirs", reference, True)] if reference is not None else [])
    times = {name: [] for name, _, _ in models}
    for name, model, is_ref in models:  # warm-up
        train_step(model, video, text_embeds, tokens, config.cond_drop_prob, is_ref)
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        for name, model, is_ref in models:
            times[name].append(train_step(model, video, text_embeds, tokens, config.cond_drop_prob, is_ref))
    for name, _, _ in models:
        med, low = statistics.median(times[name]), min(times[name])
        print(f"{name:7s} per batch {fmt(med)} (min {fmt(low)})   per sample {fmt(med / b)} (min {fmt(low / b)})")
    if reference is not None:
        ratio = statistics.median(times["ours"]) / statistics.median(times["theirs"])
        ratio_min = min(times["ours"]) / min(times["theirs"])
        print(f"time ratio ours / theirs: {ratio:.3f} (median)  {ratio_min:.3f} (min)   target <= 0.8")
    for model in (ours, reference):
        if model is not None:
            model.zero_grad(set_to_none=True)

    # ---- policy step ----
    repeats = args.policy_repeats or 2 * args.repeats
    ours.eval()
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (f + repeats, s, s, 3), dtype=np.uint8)
    text = rng.standard_normal(config.text_embed_dim).astype(np.float32)
    cached = policy_step_times(ours, images, text, True, repeats)
    uncached = policy_step_times(ours, images, text, False, repeats)
    print(f"\n== policy step (eval, batch 1, full {f}-frame history, {repeats} steps) ==")
    print(f"with token cache (encode the new frame):   {fmt(statistics.median(cached))} (min {fmt(min(cached))})")
    print(f"without cache (re-encode all {f} frames):    {fmt(statistics.median(uncached))} "
          f"(min {fmt(min(uncached))})")
    print(f"speed-up from the cache: {statistics.median(uncached) / statistics.median(cached):.2f}x   target >= 4x")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
