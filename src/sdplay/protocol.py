"""The engine interface every entry point depends on (never on an engine's insides)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sdplay.plan import Limits, Plan
from sdplay.types import Catalog, GenerationRequest, GenerationResult, StepCallback

if TYPE_CHECKING:
    from sdplay.loading import LoadOptions
    from sdplay.loras import AddonFile


@runtime_checkable
class EngineProtocol(Protocol):
    """What every entry point needs from an engine; the real engine, the test fake and the Ray client implement it.

    One engine runs on one device (`device`: its id, or "auto" for a library engine that follows each request's
    device). `plan` is the only resolver; `generate` and `generate_batch` run plans (compatible ones, equal
    `batch_key`, as one UNet batch; each keeps its prompts and seeds) and raise SdplayError subclasses
    (InvalidRequest, ModelNotAvailable, Cancelled, ...); `on_step` is called after every denoising step and raising
    `Cancelled` from it stops the run. `loras` lists the LoRA files plans can name (`refresh_loras` re-reads the
    folder); `embeddings`, `embedding_names`, `vae_files` and `find_vae` do the same for textual-inversion embeddings
    and VAEs, and `refresh_folder` re-reads one add-on folder ("lora", "embeddings", "vae" or "checkpoints").
    """

    device: str

    @property
    def options(self) -> LoadOptions: ...

    def catalog(self) -> Catalog: ...

    def plan(self, request: GenerationRequest, limits: Limits | None = None) -> Plan: ...

    def generate(self, plan: Plan, on_step: StepCallback | None = None) -> GenerationResult: ...

    def generate_batch(self, plans: list[Plan], on_step: StepCallback | None = None) -> list[GenerationResult]: ...

    def load(self, model: str | None) -> object: ...

    def unload(self, model: str | None = None) -> None: ...

    def loras(self) -> list[AddonFile]: ...

    def refresh_loras(self) -> None: ...

    def embeddings(self, model: str | None = None) -> dict[str, dict[str, Any]]: ...

    def embedding_names(self) -> list[str]: ...

    def find_embedding(self, name: str) -> object: ...

    def vae_files(self) -> list[Any]: ...

    def find_vae(self, name: str | None, catalog_only: bool = False) -> object | None: ...

    def refresh_folder(self, kind: str) -> None: ...
