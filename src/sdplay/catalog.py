"""The model registry: built-in specs, and resolution of any name a user may type."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sdplay import families
from sdplay.errors import ModelNotAvailable
from sdplay.families import Family, FamilySpec

__all__ = ["BUILTIN", "Family", "ModelSpec", "builtin", "catalog_names", "resolve"]

ASSETS = Path(str(resources.files("sdplay") / "assets"))
DEFAULT_MODEL = "sdplay-emoji"


@dataclass(frozen=True)
class ModelSpec:
    """Everything sdplay knows about a model before loading it."""

    name: str
    family_spec: FamilySpec
    repo_id: str | None
    native_size: int
    prediction_type: str
    default_sampler: str
    default_steps: int
    default_guidance: float
    aliases: tuple[str, ...] = ()
    config_dir: Path | None = None
    weights_dir: Path | None = None
    description: str = ""
    size_presets: tuple[tuple[int, int], ...] = ()
    inpainting: bool = False  # a dedicated inpainting model (9-channel UNet) in a single file

    @property
    def family(self) -> Family:
        return self.family_spec.family

    @property
    def pipeline_class(self) -> str:
        """The pipeline class it loads as: text-to-image, or inpainting for a dedicated inpainting model (other
        tasks: `family_spec.pipeline_class(task)`)."""
        return self.family_spec.pipeline_class("inpaint" if self.inpainting else "txt2img")

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """Size presets, native first."""
        native = (self.native_size, self.native_size)
        return (native, *tuple(s for s in self.size_presets if s != native))


def _configs(name: str) -> Path:
    return ASSETS / "configs" / name


BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="sdplay-emoji",
        family_spec=families.EMBEDDED,
        repo_id=None,
        native_size=64,
        prediction_type="epsilon",
        default_sampler="DPM++ 2M",
        default_steps=20,
        default_guidance=4.0,
        aliases=("emoji", "default"),
        weights_dir=ASSETS / "sdplay-emoji",
        config_dir=ASSETS / "sdplay-emoji",
        description="Small emoji model trained and shipped by sdplay; works offline on CPU.",
        size_presets=((64, 64),),
    ),
    ModelSpec(
        name="sd-v1-4",
        family_spec=families.SD1,
        repo_id="CompVis/stable-diffusion-v1-4",
        native_size=512,
        prediction_type="epsilon",
        default_sampler="PNDM",
        default_steps=50,
        default_guidance=7.5,
        aliases=("sd14", "sd-1.4", "stable-diffusion-v1-4"),
        config_dir=_configs("sd-v1-4"),
        description="CompVis Stable Diffusion v1-4 (512x512, CLIP ViT-L/14).",
        size_presets=((512, 512), (512, 768), (768, 512), (384, 384)),
    ),
    ModelSpec(
        name="sd-v2-1",
        family_spec=families.SD2,
        repo_id="stabilityai/stable-diffusion-2-1",
        native_size=768,
        prediction_type="v_prediction",
        default_sampler="DDIM",
        default_steps=50,
        default_guidance=7.5,
        aliases=("sd21", "sd-2.1", "stable-diffusion-2-1"),
        config_dir=_configs("sd-v2-1"),
        description="Stability AI Stable Diffusion 2.1 (768x768, v-prediction, OpenCLIP ViT-H).",
        size_presets=((768, 768), (512, 512), (768, 512), (512, 768)),
    ),
    ModelSpec(
        name="sdxl-base-1.0",
        family_spec=families.SDXL,
        repo_id="stabilityai/stable-diffusion-xl-base-1.0",
        native_size=1024,
        prediction_type="epsilon",
        default_sampler="Euler",
        default_steps=30,
        default_guidance=5.0,
        aliases=("sdxl", "sdxl-base", "stable-diffusion-xl-base-1.0"),
        config_dir=_configs("sdxl-base-1.0"),
        description="Stability AI SDXL base 1.0 (1024x1024, two text encoders).",
        size_presets=((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344)),
    ),
)


def builtin(name: str) -> ModelSpec | None:
    """The built-in spec called `name` (or one of its aliases, or its hub id), if any."""
    key = name.strip().lower()
    for spec in BUILTIN:
        if key in (spec.name, *spec.aliases) or (spec.repo_id and key == spec.repo_id.lower()):
            return spec
    return None


def catalog_names() -> list[str]:
    return [spec.name for spec in BUILTIN]


def resolve(name: str | None, *, allow_pickle: bool = False) -> ModelSpec:
    """Turn whatever the user typed into a spec: built-in name, local folder, file or hub id."""
    if not name:
        return builtin(DEFAULT_MODEL)  # type: ignore[return-value]
    spec = builtin(name)
    if spec is not None:
        return spec
    path = Path(name).expanduser()
    if path.is_dir():
        return spec_for_folder(path)
    if path.is_file():
        return spec_for_file(path, allow_pickle=allow_pickle)
    if _looks_like_path(name):
        raise ModelNotAvailable(
            f"No model at {name!r}: that path does not exist.",
            field="model",
            hint=f"Point at a diffusers folder or a .safetensors file, or pick one of: {', '.join(catalog_names())}.",
        )
    if "/" in name and name.count("/") == 1:
        return spec_for_repo(name)
    raise ModelNotAvailable(
        f"Unknown model {name!r}.",
        field="model",
        hint=f"Choose one of: {', '.join(catalog_names())}, a hub id such as 'org/name', "
        "a local diffusers folder, or a .safetensors checkpoint.",
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith((".safetensors", ".ckpt", ".pt", ".bin"))


def spec_for_folder(path: Path) -> ModelSpec:
    """A spec for a local diffusers folder, deriving the family from its model_index.json."""
    import json

    index = path / "model_index.json"
    if not index.is_file():
        raise ModelNotAvailable(
            f"{path} is not a diffusers model folder: it has no model_index.json.",
            field="model",
            hint="Point at the folder that holds model_index.json, unet/, vae/, text_encoder/ ...",
        )
    info = json.loads(index.read_text())
    base = _base_for_index(info, path)
    return ModelSpec(
        **{**base.__dict__, "name": str(path), "aliases": (), "repo_id": None, "config_dir": path, "weights_dir": path}
    )


def _base_for_index(info: dict, path: Path) -> ModelSpec:
    """The built-in spec of the family a model_index.json (plus its scheduler and UNet configs) belongs to."""
    import json

    def config(sub: str) -> dict:
        file = path / sub
        return json.loads(file.read_text()) if file.is_file() else {}

    family = families.from_index(
        info.get("_class_name", ""),
        config("scheduler/scheduler_config.json").get("prediction_type", "epsilon"),
        config("unet/config.json").get("sample_size"),
    )
    return builtin(family.base_model)  # type: ignore[return-value]


def spec_for_file(path: Path, *, allow_pickle: bool = False) -> ModelSpec:
    """A spec for a single-file checkpoint; the family comes from its tensor names."""
    from sdplay.checkpoints import INPAINTING_IN_CHANNELS, inspect_checkpoint

    family, in_channels = inspect_checkpoint(path, allow_pickle=allow_pickle)
    spec = builtin(family.base_model)
    own = path.with_suffix("")  # x.safetensors + x/model_index.json: the configs of a non-standard architecture
    config_dir = own if (own / "model_index.json").is_file() else spec.config_dir  # type: ignore[union-attr]
    fields = {"name": str(path), "aliases": (), "repo_id": None, "config_dir": config_dir, "weights_dir": path}
    if in_channels == INPAINTING_IN_CHANNELS:
        fields |= _inpainting_fields(spec, own_configs=config_dir == own)  # type: ignore[arg-type]
    return ModelSpec(**{**spec.__dict__, **fields})  # type: ignore[union-attr]


# The published SD 2.x inpainting model (stabilityai/stable-diffusion-2-inpainting, and A1111's
# v2-inpainting-inference.yaml) predicts noise at 512x512, unlike SD 2.1's v-prediction at 768.
SD2_INPAINTING = {"native_size": 512, "prediction_type": "epsilon", "size_presets": ((512, 512), (512, 768),
                                                                                     (768, 512))}  # fmt: skip


def _inpainting_fields(base: ModelSpec, own_configs: bool) -> dict:
    """A dedicated inpainting model of a family: its inpainting pipeline, and SD 2.x's inpainting defaults
    (unless configs beside the file say otherwise)."""
    fields: dict = {"inpainting": True, "description": f"{base.family_spec.label} inpainting (9-channel UNet)"}
    if base.family is Family.SD2 and not own_configs:
        fields |= SD2_INPAINTING
    return fields


def spec_for_repo(repo_id: str) -> ModelSpec:
    """A spec for an arbitrary hub id; the family is found when its model_index.json is read."""
    base = builtin("sd-v1-4")
    return ModelSpec(**{**base.__dict__, "name": repo_id, "aliases": (), "repo_id": repo_id, "config_dir": None})  # type: ignore[union-attr]
