"""The networks of a small SD 1.x-layout model in plain torch, op for op as diffusers 0.42 and transformers 5 run
them (UNet2DConditionModel, AutoencoderKL's decoder, CLIPTextModel), so they give the same tensors bit for bit.

Attribute names are the state-dict keys of the diffusers/transformers folder, so its safetensors load as they are.
Only what `sdplay.light.folder.check` accepts is built: conv-projection cross-attention blocks
(CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D), positional timestep
embeddings, the KL decoder with its mid-block attention, and a CLIP text transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdplay.light.config import Config


class _Module(nn.Module):
    """A component: its config, and the dtype and device of its parameters (as diffusers' ModelMixin has them)."""

    config: Config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# -- building blocks ---------------------------------------------------------------------------------------------
# Layers whose weights come from the file: nothing is drawn for them at construction (torch's own forward).


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class Conv2d(nn.Conv2d):
    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """Sinusoidal timestep embeddings (DDPM), as diffusers' get_timestep_embedding at scale 1."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half - shift)
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.linear_1 = Linear(channels, dim)
        self.linear_2 = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Resnet(nn.Module):
    """diffusers' ResnetBlock2D (pre-norm, time embedding added after the first convolution)."""

    def __init__(self, cin: int, cout: int, temb: int | None, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps, affine=True)
        self.conv1 = Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = Linear(temb, cout) if temb is not None else None
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps, affine=True)
        self.conv2 = Conv2d(cout, cout, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = Conv2d(cin, cout, kernel_size=1, stride=1, padding=0) if cin != cout else None
        self.output_scale_factor = scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to `size`, for latents not divisible by the UNet's total factor), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: Any = None) -> torch.Tensor:
        if x.shape[0] >= 64:
            x = x.contiguous()
        factor = 2 if size is None else max(f / s for f, s in zip(size, x.shape[-2:], strict=True))
        if x.numel() * factor > 2**31:
            x = x.contiguous()
        x = (
            F.interpolate(x, scale_factor=2.0, mode="nearest")
            if size is None
            else F.interpolate(x, size=size, mode="nearest")
        )
        return self.conv(x)


class Attention(nn.Module):
    """diffusers' Attention with AttnProcessor2_0: multi-head scaled dot-product attention over tokens, or over the
    pixels of a (B, C, H, W) map with a group norm and a residual (the VAE's mid-block attention)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, bias: bool = False,
                 groups: int | None = None, eps: float = 1e-5, residual: bool = False):  # fmt: skip
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.group_norm = nn.GroupNorm(groups, dim, eps=eps, affine=True) if groups else None
        self.to_q = Linear(dim, inner, bias=bias)
        self.to_k = Linear(context_dim or dim, inner, bias=bias)
        self.to_v = Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([Linear(inner, dim, bias=True), nn.Dropout(0.0)])
        self.residual = residual

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        residual = x
        spatial = x.ndim == 4
        if spatial:
            b, c, h, w = x.shape
            x = x.view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        batch = x.shape[0] if context is None else context.shape[0]
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        query = self.to_q(x)
        context = x if context is None else context
        key, value = self.to_k(context), self.to_v(context)
        head_dim = key.shape[-1] // self.heads
        query = query.view(batch, -1, self.heads, head_dim).transpose(1, 2)  # (B, heads, L, D)
        key = key.view(batch, -1, self.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, self.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * head_dim).to(query.dtype)
        out = self.to_out[0](out)
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if self.residual:
            out = out + residual
        return out / 1.0  # diffusers' rescale_output_factor


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * 4), nn.Dropout(0.0), Linear(dim * 4, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """diffusers' BasicTransformerBlock: self-attention, cross-attention to the text, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2D(nn.Module):
    """diffusers' Transformer2DModel on a feature map: group norm, projection in, blocks, projection out, residual."""

    def __init__(self, heads: int, channels: int, context_dim: int, groups: int, layers: int, linear: bool):
        super().__init__()
        head_dim = channels // heads
        inner = heads * head_dim
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = Linear(channels, inner) if linear else Conv2d(channels, inner, 1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(inner, heads, head_dim, context_dim) for _ in range(layers)]
        )
        self.proj_out = Linear(inner, channels) if linear else Conv2d(inner, channels, 1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        inner = x.shape[1]
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, inner)  # (B, HW, C)
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, inner).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        if not self.linear:
            x = self.proj_out(x)
        return x + residual


# -- the UNet ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Level:
    """What one down/up block of the UNet is built from."""

    cin: int
    cout: int
    heads: int
    attention: bool
    resample: bool


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (with attention) or DownBlock2D: resnet (+ transformer) per layer, then stride 2."""

    def __init__(self, level: _Level, layers: int, temb: int, u: Config, ctx: int, t_layers: int):
        super().__init__()
        groups, eps = u.norm_num_groups, u.norm_eps
        cins = [level.cin] + [level.cout] * (layers - 1)
        self.resnets = nn.ModuleList([Resnet(c, level.cout, temb, groups, eps) for c in cins])
        self.attentions = (
            nn.ModuleList([Transformer2D(level.heads, level.cout, ctx, groups, t_layers, u.use_linear_projection)
                           for _ in range(layers)]) if level.attention else None
        )  # fmt: skip
        self.downsamplers = nn.ModuleList([Downsample(level.cout)]) if level.resample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        outputs: tuple[torch.Tensor, ...] = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            outputs += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs += (x,)
        return x, outputs


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet)."""

    def __init__(self, channels: int, heads: int, temb: int, u: Config, ctx: int, t_layers: int):
        super().__init__()
        groups, eps, scale = u.norm_num_groups, u.norm_eps, u.mid_block_scale_factor
        self.resnets = nn.ModuleList([Resnet(channels, channels, temb, groups, eps, scale) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [Transformer2D(heads, channels, ctx, groups, t_layers, u.use_linear_projection)]
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D (with attention) or UpBlock2D: skip concatenated, resnet (+ transformer), then x2."""

    def __init__(self, level: _Level, prev: int, layers: int, temb: int, u: Config, ctx: int, t_layers: int):
        super().__init__()
        groups, eps = u.norm_num_groups, u.norm_eps
        resnets = []
        for i in range(layers):
            skip = level.cin if i == layers - 1 else level.cout
            resnets.append(Resnet((prev if i == 0 else level.cout) + skip, level.cout, temb, groups, eps))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = (
            nn.ModuleList([Transformer2D(level.heads, level.cout, ctx, groups, t_layers, u.use_linear_projection)
                           for _ in range(layers)]) if level.attention else None
        )  # fmt: skip
        self.upsamplers = nn.ModuleList([Upsample(level.cout)]) if level.resample else None

    def forward(self, x: torch.Tensor, skips: tuple, temb: torch.Tensor, context: torch.Tensor, size=None):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1]], dim=1)
            skips = skips[:-1]
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


@dataclass
class Output:
    """A module's output as diffusers and transformers hand it over: by index ([0]) and by name."""

    sample: torch.Tensor
    pooler_output: Any = None
    hidden_states: tuple | None = None

    def __getitem__(self, i: int) -> Any:
        return (self.sample, self.pooler_output)[i]

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self.sample


class UNet(_Module):
    """UNet2DConditionModel for the configs sdplay.light.folder accepts."""

    def __init__(self, config: Config):
        super().__init__()
        u = self.config = config
        ch = list(u.block_out_channels)
        n = len(ch)
        heads = _per_block(u.num_attention_heads or u.attention_head_dim, n)
        ctx, t_layers, layers = u.cross_attention_dim, u.transformer_layers_per_block, u.layers_per_block
        temb = ch[0] * 4
        self.conv_in = Conv2d(u.in_channels, ch[0], u.conv_in_kernel, padding=(u.conv_in_kernel - 1) // 2)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(u.down_block_types):
            level = _Level(ch[max(i - 1, 0)], ch[i], heads[i], kind.startswith("CrossAttn"), i < n - 1)
            self.down_blocks.append(DownBlock(level, layers, temb, u, ctx, t_layers))
        self.mid_block = MidBlock(ch[-1], heads[-1], temb, u, ctx, t_layers)
        self.up_blocks = nn.ModuleList()
        rch, rheads = ch[::-1], heads[::-1]
        for i, kind in enumerate(u.up_block_types):
            level = _Level(rch[min(i + 1, n - 1)], rch[i], rheads[i], kind.startswith("CrossAttn"), i < n - 1)
            self.up_blocks.append(UpBlock(level, rch[max(i - 1, 0)], layers + 1, temb, u, ctx, t_layers))
        self.conv_norm_out = nn.GroupNorm(num_channels=ch[0], num_groups=u.norm_num_groups, eps=u.norm_eps)
        self.conv_out = Conv2d(ch[0], u.out_channels, u.conv_out_kernel, padding=(u.conv_out_kernel - 1) // 2)
        self.num_upsamplers = n - 1

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = True) -> Any:  # fmt: skip
        factor = 2**self.num_upsamplers
        forward_size = any(d % factor != 0 for d in sample.shape[-2:])
        # 1. Time: the step's embedding, one row per image.
        t = timestep[None].to(sample.device) if timestep.ndim == 0 else timestep
        c = self.config
        t_emb = timestep_embedding(t.expand(sample.shape[0]), c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        t_emb = t_emb.to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb)
        # 2. Down, keeping every block's outputs for the skip connections.
        context = encoder_hidden_states
        x = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            x, out = block(x, emb, context)
            skips += out
        # 3. Middle, then up.
        x = self.mid_block(x, emb, context)
        for i, block in enumerate(self.up_blocks):
            mine, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if forward_size and i < len(self.up_blocks) - 1 else None
            x = block(x, mine, emb, context, size)
        # 4. Out.
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return (x,) if not return_dict else Output(x)


def _per_block(value: Any, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


# -- the VAE (decoder) ---------------------------------------------------------------------------------------------


class DecoderUpBlock(nn.Module):
    """UpDecoderBlock2D: resnets without time embedding, then x2."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([Resnet(cin if i == 0 else cout, cout, None, groups, 1e-6) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, None)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class DecoderMidBlock(nn.Module):
    """UNetMidBlock2D of the VAE: resnet, single-head attention over the pixels, resnet."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([Resnet(channels, channels, None, groups, 1e-6) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [Attention(channels, 1, channels, bias=True, groups=groups, eps=1e-6, residual=True)] if attention else []
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, None)
        if len(self.attentions):
            x = self.attentions[0](x)
        return self.resnets[1](x, None)


class Decoder(nn.Module):
    def __init__(self, v: Config):
        super().__init__()
        ch, groups = list(v.block_out_channels), v.norm_num_groups
        self.conv_in = Conv2d(v.latent_channels, ch[-1], kernel_size=3, stride=1, padding=1)
        self.mid_block = DecoderMidBlock(ch[-1], groups, v.mid_block_add_attention)
        rch = ch[::-1]
        self.up_blocks = nn.ModuleList(
            [DecoderUpBlock(rch[max(i - 1, 0)], rch[i], v.layers_per_block + 1, groups, i < len(ch) - 1)
             for i in range(len(ch))]
        )  # fmt: skip
        self.conv_norm_out = nn.GroupNorm(num_channels=ch[0], num_groups=groups, eps=1e-6)
        self.conv_out = Conv2d(ch[0], v.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAEDecoder(_Module):
    """AutoencoderKL for decoding only (text-to-image never encodes): post-quant conv, then the decoder."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        lc = config.latent_channels
        self.post_quant_conv = Conv2d(lc, lc, 1) if config.get("use_post_quant_conv", True) else None
        self.decoder = Decoder(config)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        x = self.decoder(z)
        return (x,) if not return_dict else Output(x)


# -- the text encoder ----------------------------------------------------------------------------------------------


class CLIPEmbeddings(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.token_embedding = Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = Embedding(c.max_position_embeddings, c.hidden_size)
        self.register_buffer("position_ids", torch.arange(c.max_position_embeddings).expand((1, -1)), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding(self.position_ids[:, : ids.shape[-1]])


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention through SDPA, as transformers' sdpa attention runs it."""

    def __init__(self, c: Config):
        super().__init__()
        d = c.hidden_size
        self.heads, self.head_dim = c.num_attention_heads, d // c.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (B, heads, T, D)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=self.scale, is_causal=True)
        out = out.transpose(1, 2).contiguous()
        return self.out_proj(out.reshape(*x.shape[:-1], -1).contiguous())


class CLIPLayer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.self_attn = CLIPAttention(c)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = Linear(c.hidden_size, c.intermediate_size)
        self.mlp.fc2 = Linear(c.intermediate_size, c.hidden_size)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        h = self.mlp.fc1(self.layer_norm2(x))
        h = h * torch.sigmoid(1.702 * h)  # quick GELU
        return x + self.mlp.fc2(h)


class CLIPTextModel(_Module):
    """transformers' CLIPTextModel (5.x layout: no `text_model.` prefix)."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([CLIPLayer(config) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.eos_token_id = config.eos_token_id

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> Output:
        ids = input_ids.view(-1, input_ids.shape[-1])
        x = self.embeddings(ids)
        hidden = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            hidden.append(x)
        last = self.final_layer_norm(x)
        rows = torch.arange(last.shape[0], device=last.device)
        ids = ids.to(dtype=torch.int, device=last.device)
        eos = ids.argmax(dim=-1) if self.eos_token_id == 2 else (ids == self.eos_token_id).int().argmax(dim=-1)
        return Output(last, last[rows, eos], tuple(hidden) if output_hidden_states else None)
