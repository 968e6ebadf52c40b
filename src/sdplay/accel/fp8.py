"""Float8 linear layers with static scales: each weight scaled once, each activation by a scale calibrated at load.

Dynamic float8 (torchao, `fp8=dynamic`) measures every activation's maximum at every call, a reduction over the whole
tensor before each matmul; on SD's 320-1280 wide layers that costs more than float8 saves. Static scales remove it:
a short calibration at load (a few UNet steps on two everyday prompts, the model's own text encoders, random
latents) records each layer's largest input, and the layer casts its input with that fixed scale (times a margin)
inside the kernel that made it. e4m3 keeps about 6% relative precision at any magnitude, so the margin costs almost
nothing; inputs beyond it saturate instead of overflowing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch  # this module is imported only by the fast path, never by `import sdplay`

from sdplay.families import FamilySpec

E4M3_MAX = 448.0
MARGIN = 2.0  # headroom over the calibrated maximum for prompts and steps the calibration did not see
SCOPE = ".attentions."  # the transformer blocks: their linear layers hold most of the UNet's matmul work
# Projections of the text states (77 tokens a prompt): too small to gain, and CLIP's outlier features would set
# their scale; they stay in the model's dtype
SKIP = ("attn2.to_k", "attn2.to_v", "attn2.to_kv")
CALIBRATION_PROMPTS = ("a photograph of a cat sitting on a wooden table, detailed", "a colourful painting of a city")
CALIBRATION_NEGATIVES = ("", "blurry, low quality")
CALIBRATION_TIMESTEPS = (999, 800, 600, 400, 200, 50)


def candidates(unet: Any) -> dict[str, Any]:
    """The linear layers static float8 may replace: in the transformer blocks, widths a multiple of 16."""
    return {name: m for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and SCOPE in f".{name}" and not name.endswith(SKIP)
            and m.in_features % 16 == 0 and m.out_features % 16 == 0}  # fmt: skip


def calibrate(unet: Any, run: Any) -> dict[str, float]:
    """The largest absolute input each candidate layer sees while `run()` calls the UNet; unused layers left out.

    Fused QKV leaves the separate projections as views that the forward never calls, so they drop out here.
    """
    seen: dict[str, Any] = {}

    def hook(name: str):
        def record(_module: Any, args: tuple, _out: Any) -> None:
            peak = args[0].detach().abs().amax().float()
            seen[name] = peak if name not in seen else torch.maximum(seen[name], peak)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in candidates(unet).items()]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()
    return {name: float(peak) for name, peak in seen.items()}


def quantize(unet: Any, peaks: dict[str, float], margin: float = MARGIN) -> dict[str, Any]:
    """Replace each calibrated layer by a StaticFloat8Linear; returns what was done."""
    layers = candidates(unet)
    for name, peak in peaks.items():
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent) if parent else unet, child, StaticFloat8Linear(layers[name], peak * margin))
    return {"layers": len(peaks), "scales": "static, per tensor", "margin": margin}


def install(pipe: Any, spec: FamilySpec, margin: float = MARGIN) -> dict[str, Any]:
    """Calibrate on the pipeline's own text encoders, then swap in the float8 layers (before any compile)."""
    peaks = calibrate(pipe.unet, calibration_run(pipe, spec))
    return quantize(pipe.unet, peaks, margin)


def calibration_run(pipe: Any, spec: FamilySpec) -> Callable[[], None]:
    """UNet calls at native size over the noise levels of sampling, guided, on two everyday prompts."""
    unet = pipe.unet
    cfg = unet.config

    def run() -> None:  # one prompt and its negative at a time: the batch of one guided image, no larger
        for prompt, negative in zip(CALIBRATION_PROMPTS, CALIBRATION_NEGATIVES, strict=True):
            states, pooled = _conditioning(pipe, spec, prompt, negative)
            n, side = states.shape[0], _latent_side(cfg.sample_size)
            noise = torch.randn(n, cfg.in_channels, side, side, generator=torch.Generator().manual_seed(0))
            kwargs: dict[str, Any] = {"encoder_hidden_states": states.to(unet.device, unet.dtype),
                                      "return_dict": False}  # fmt: skip
            if cfg.addition_embed_type == "text_time":
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(unet.device, unet.dtype),
                                               "time_ids": _time_ids(pipe, cfg, pooled.shape[-1], n)}  # fmt: skip
            for t in CALIBRATION_TIMESTEPS:
                unet(noise.to(unet.device, unet.dtype), torch.tensor(t, device=unet.device), **kwargs)

    return run


def _conditioning(pipe: Any, spec: FamilySpec, prompt: str, negative: str) -> tuple[Any, Any]:
    """(text states, pooled or None), negative first, encoded as generation encodes them for this pipeline: sdplay's
    prompt encoder, or the pipeline's own for a model without the first text encoder (the SDXL refiner)."""
    if pipe.tokenizer is not None:
        from sdplay.prompts import encode

        emb = encode(pipe, spec, [prompt], [negative]).step_inputs(0, guidance=True)
        return emb["prompt_embeds"], emb.get("add_text_embeds")
    out = pipe.encode_prompt(prompt=[prompt], negative_prompt=[negative],
                             device=pipe.unet.device, num_images_per_prompt=1,
                             do_classifier_free_guidance=True)  # fmt: skip
    states = torch.cat([out[1], out[0]])
    return states, torch.cat([out[3], out[2]]) if len(out) == 4 else None


def _time_ids(pipe: Any, cfg: Any, pooled_width: int, n: int) -> Any:
    """SDXL's size conditioning at native size: six ids (original size, crop, target size), or five for a UNet
    conditioned on an aesthetic score (original size, crop, score 6, diffusers' default)."""
    count = (cfg.projection_class_embeddings_input_dim - pooled_width) // cfg.addition_time_embed_dim
    px = _latent_side(cfg.sample_size) * pipe.vae_scale_factor
    ids = ([px, px, 0, 0, px, px] if count == 6 else [px, px, 0, 0, 6.0] + [0] * count)[:count]
    return torch.tensor([ids] * n, device=pipe.unet.device, dtype=pipe.unet.dtype)


def _latent_side(sample_size: Any) -> int:
    return int(sample_size[0] if isinstance(sample_size, list | tuple) else sample_size or 64)


def layers(unet: Any) -> int:
    """How many static float8 layers `unet` holds."""
    return sum(isinstance(m, StaticFloat8Linear) for m in unet.modules())


class StaticFloat8Linear(torch.nn.Module):
    """y = x W^T + b with x and W as float8 e4m3, each with one fixed scale, through torch._scaled_mm.

    The float8 weight and the float32 scales are kept as their bytes, so a cast of the whole model to another dtype
    (`.to(torch.float16)`) leaves them exactly as they are.
    """

    # the inverse input scale meets the input in its dtype: float16 must hold it whatever the model's dtype is now
    # or becomes (an input maximum below ~0.03 would not fit); smaller inputs lose only e4m3's subnormal range
    MIN_INPUT_MAX = 4 * E4M3_MAX / 65504.0

    def __init__(self, linear: torch.nn.Linear, input_max: float):
        super().__init__()
        w = linear.weight.detach()
        w_scale = (w.float().abs().amax() / E4M3_MAX).clamp(min=1e-12)
        x_scale = torch.tensor(max(input_max, self.MIN_INPUT_MAX) / E4M3_MAX, device=w.device)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight_t = (w.float() / w_scale).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants it
        self.weight_bytes = torch.nn.Buffer(weight_t.view(torch.uint8), persistent=False)
        scales = torch.stack([w_scale, x_scale, 1 / x_scale]).float()  # weight, input, inverse input
        self.scale_bytes = torch.nn.Buffer(scales.view(torch.int32), persistent=False)
        self.bias = linear.bias

    def scales(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight scale, input scale, inverse input scale), float32 scalars."""
        s = self.scale_bytes.view(torch.float32)
        return s[0], s[1], s[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        w_scale, x_scale, inverse = self.scales()
        x8 = (x.reshape(-1, self.in_features) * inverse.to(x.dtype)).clamp(-E4M3_MAX, E4M3_MAX)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        fused = bias if x.dtype != torch.float32 else None  # CUDA's kernel takes no bias with a float32 output
        out = torch._scaled_mm(x8.to(torch.float8_e4m3fn), self.weight_bytes.view(torch.float8_e4m3fn),
                               scale_a=x_scale, scale_b=w_scale, bias=fused, out_dtype=x.dtype)  # fmt: skip
        if bias is not None and fused is None:
            out = out + bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3fn, static scales"
