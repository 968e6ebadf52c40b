"""The architecture of the embedded emoji model: small standard CLIP / UNet / VAE components."""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_SIZE = 49408  # the real CLIP vocabulary, shared with the seed models
MAX_TOKENS = 77


@dataclass(frozen=True)
class EmojiArch:
    """Sizes of the three networks; the defaults are the shipped model's."""

    image_size: int = 64
    latent_channels: int = 4
    text_hidden: int = 96
    text_layers: int = 4
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_heads: tuple[int, ...] = (2, 4, 4)
    unet_layers_per_block: int = 1
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_groups: int = 16

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


TINY = EmojiArch(
    image_size=16,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    unet_channels=(32, 32),
    unet_heads=(2, 2),
    vae_channels=(16, 16),
    vae_groups=8,
)  # for tests: the same code path in milliseconds


def build_text_encoder(arch: EmojiArch):
    """A small CLIPTextModel over the full CLIP vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=arch.text_hidden,
        intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=arch.text_hidden,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet(arch: EmojiArch):
    """A small UNet2DConditionModel: cross-attention at every level but the lowest."""
    from diffusers import UNet2DConditionModel

    levels = len(arch.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        layers_per_block=arch.unet_layers_per_block,
        block_out_channels=arch.unet_channels,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=arch.unet_heads,
        norm_num_groups=32 if min(arch.unet_channels) % 32 == 0 else 8,
    )


def build_vae(arch: EmojiArch):
    """A small AutoencoderKL: image_size RGB <-> latent_size x latent_size x latent_channels."""
    from diffusers import AutoencoderKL

    levels = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.vae_groups,
        sample_size=arch.image_size,
    )


def scheduler_config() -> dict:
    """DPM++ 2M over Stable Diffusion v1's noise schedule (what the pipeline loads by default)."""
    return {
        "_class_name": "DPMSolverMultistepScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "timestep_spacing": "leading",
    }


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())
