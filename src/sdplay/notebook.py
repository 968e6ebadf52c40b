"""The Jupyter playground: `Playground()` shows model, prompt, number of images and Generate, with a progress bar
and an image grid, running the local engine in a background thread so the kernel stays free."""

from __future__ import annotations

import html
import re
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w

from sdplay.errors import Cancelled, SdplayError
from sdplay.protocol import EngineProtocol
from sdplay.types import MAX_IMAGES, MAX_SEED, MAX_STEPS, GenerationRequest, GenerationResult, StepInfo

DEFAULT_MODEL = "sdplay-emoji"


class Playground:
    """Model dropdown, prompt, number of images, Generate; progress bar and image grid (`scripts/setup.sh ui`).
    A LoRA dropdown lists the engine's LoRA folder: choosing one adds `<lora:name:1>` to the prompt, or takes the
    LoRA's tag out when the prompt has one.

    `engine` defaults to a new `sdplay.engine.Engine()`; `model` preselects a catalog name, alias, local
    diffusers folder or .safetensors file (one not in the catalog is added to the dropdown).
    """

    def __init__(self, engine: EngineProtocol | None = None, *, model: str | None = None, columns: int = 4):
        if engine is None:
            from sdplay.accel.runtime import configure_torch
            from sdplay.engine import Engine

            configure_torch()  # the notebook's kernel: process-wide torch settings, once
            engine = Engine()
        self.engine = engine
        self.result: GenerationResult | None = None
        self.error: SdplayError | None = None
        self.thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._build(columns)
        self._fill_models(model)
        self.refresh_loras()

    # -- widgets -----------------------------------------------------------------------------
    def _build(self, columns: int) -> None:
        wide = w.Layout(width="100%")
        self.model = w.Dropdown(description="Model", layout=wide)
        self.prompt = w.Textarea(description="Prompt", placeholder="a red heart, emoji style", layout=wide)
        self.negative_prompt = w.Text(description="Negative", placeholder="blurry, low quality", layout=wide)
        self.lora = w.Dropdown(description="LoRA", tooltip="Adds <lora:name:1> to the prompt, or takes it out")
        self.lora_refresh = w.Button(description="Refresh", icon="refresh", tooltip="Read the LoRA folder again")
        self.lora.observe(self._on_lora, names="value")
        self.lora_refresh.on_click(lambda _: self.refresh_loras(rescan=True))
        self.n_images = w.BoundedIntText(1, min=1, max=MAX_IMAGES, description="Images")
        self.steps = w.BoundedIntText(0, min=0, max=MAX_STEPS, description="Steps", tooltip="0: the model's default")
        self.seed = w.BoundedIntText(-1, min=-1, max=MAX_SEED, description="Seed", tooltip="-1: random")
        self.init_image = w.FileUpload(accept="image/png,image/jpeg,image/webp", multiple=False,
                                       description="Init image")  # fmt: skip
        self.strength = w.FloatSlider(0.75, min=0.0, max=1.0, step=0.05, description="Strength",
                                      tooltip="denoising strength of image-to-image")  # fmt: skip
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.progress = w.IntProgress(0, min=0, max=1, description="", layout=w.Layout(width="60%"))
        self.status = w.HTML("")
        self.grid = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat({columns}, max-content)", grid_gap="8px"))
        self.generate_button.on_click(lambda _: self.generate())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.widget = w.VBox(
            [
                self.model,
                self.prompt,
                self.negative_prompt,
                w.HBox([self.lora, self.lora_refresh]),
                w.HBox([self.n_images, self.steps, self.seed]),
                w.HBox([self.init_image, self.strength]),
                w.HBox([self.generate_button, self.cancel_button, self.progress]),
                self.status,
                self.grid,
            ]
        )
        self._fields = {"model": self.model, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                        "n_images": self.n_images, "steps": self.steps, "seed": self.seed,
                        "init_image": self.init_image, "strength": self.strength, "loras": self.lora}  # fmt: skip

    def _fill_models(self, wanted: str | None) -> None:
        """Catalog models (marked when their weights are missing), plus `wanted` if it is a path or other name."""
        infos = list(self.engine.catalog().models)
        usable = {m.name: m.usable for m in infos}  # weights here, or random weights make every model runnable
        options = [(m.name if usable[m.name] else f"{m.name} (weights not here)", m.name) for m in infos]
        names = [m.name for m in infos]
        aliases = {a: m.name for m in infos for a in m.aliases}
        if wanted and wanted not in names and wanted not in aliases:
            options.insert(0, (wanted, wanted))
        self.model.options = options
        ready = [m.name for m in infos if usable[m.name]]
        default = DEFAULT_MODEL if DEFAULT_MODEL in ready else (ready or names or [None])[0]
        self.model.value = aliases.get(wanted, wanted) if wanted else default

    def refresh_loras(self, rescan: bool = False) -> list[str]:
        """Fill the LoRA dropdown from the engine's LoRA folder (`rescan`: read the folder again); the names."""
        from sdplay.loras import default_folder

        if rescan:
            self.engine.refresh_loras()
        names = sorted(f.name for f in self.engine.loras())
        where = f" in {self.engine.options.lora_dir or default_folder('Lora')}"
        first = ("Add a LoRA…", "") if names else (f"No LoRA files{where}", "")
        self.lora.options = [first, *((n, n) for n in names)]
        self.lora.value = ""
        self.lora.disabled = not names
        return names

    def _on_lora(self, change: dict) -> None:
        if change["new"]:
            self.prompt.value = toggle_lora(self.prompt.value, change["new"])
            self.lora.value = ""  # back to the placeholder, so the same LoRA can be chosen again

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- running -----------------------------------------------------------------------------
    def request(self) -> GenerationRequest:
        """The request the form describes (0 steps means the model's default; an uploaded image means
        image-to-image at the chosen strength)."""
        image = self._uploaded_image()
        return GenerationRequest(
            prompt=self.prompt.value,
            negative_prompt=self.negative_prompt.value,
            model=self.model.value,
            n_images=self.n_images.value,
            steps=self.steps.value or None,
            seed=self.seed.value,
            init_image=image,
            strength=self.strength.value if image is not None else None,
        )

    def _uploaded_image(self):
        from sdplay.image_input import decode_image

        files = self.init_image.value
        if not files:
            return None
        return decode_image(bytes(files[0]["content"]), "init_image")

    def generate(self) -> threading.Thread | None:
        """Start generating in a background thread (the kernel stays free); None if a run is already going."""
        if self.running:
            return None
        self._clear_errors()
        self._cancel.clear()
        self.error = None
        self._set_running(True)
        self._show_status("Starting…")
        self.progress.value, self.progress.max = 0, 1
        try:
            request = self.request()
        except SdplayError as exc:
            self.error = exc
            self._show_error(exc)
            self._set_running(False)
            return None
        self.thread = threading.Thread(target=self._run, args=(request,), name="sdplay-playground", daemon=True)
        self.thread.start()
        return self.thread

    def cancel(self) -> None:
        """Stop the running generation at its next step."""
        if self.running:
            self._cancel.set()
            self._show_status("Cancelling…")

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        """Block until the current run ends; its result, or None if it failed or was cancelled."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.result if self.error is None else None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def images(self) -> list:
        """The PIL images of the last successful run."""
        return list(self.result.images) if self.result else []

    def save(self, out_dir: str | Path = "outputs") -> list[Path]:
        """Write the last run's images as PNGs with their generation parameters; the paths written."""
        from sdplay.images import save_png

        if self.result is None:
            return []
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return [save_png(self.result, i, out_dir) for i in range(len(self.result.images))]

    def _run(self, request: GenerationRequest) -> None:
        started = time.perf_counter()
        try:
            result = self.engine.generate(self.engine.plan(request), on_step=self._on_step)
        except Cancelled:
            self.error = Cancelled("Cancelled.")
            self._show_status("Cancelled.")
        except SdplayError as exc:
            self.error = exc
            self._show_error(exc)
        except Exception as exc:  # a bug: still say so in the UI instead of dying silently in a thread
            self.error = SdplayError(f"{type(exc).__name__}: {exc}", hint="Please report this.")
            self._show_error(self.error)
        else:
            self.result = result
            self._show_result(result, time.perf_counter() - started)
        finally:
            self._set_running(False)

    def _on_step(self, info: StepInfo) -> None:
        if self._cancel.is_set():
            raise Cancelled("Cancelled between two steps.")
        total = max(1, info.batch_count * info.total_steps)
        self.progress.max = total
        self.progress.value = info.batch_index * info.total_steps + info.step
        batch = f", batch {info.batch_index + 1}/{info.batch_count}" if info.batch_count > 1 else ""
        self._show_status(f"Step {info.step}/{info.total_steps}{batch}")

    # -- showing -----------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.generate_button.disabled = running
        self.generate_button.description = "Generating…" if running else "Generate"
        self.cancel_button.disabled = not running

    def _show_status(self, text: str, colour: str | None = None) -> None:
        style = f' style="color:{colour}"' if colour else ""
        self.status.value = f"<span{style}>{html.escape(text)}</span>"

    def _show_error(self, exc: SdplayError) -> None:
        self.progress.value = 0
        where = f" ({exc.field})" if exc.field else ""
        self._show_status(f"Failed{where}: {exc}", colour="#c0362c")
        widget = self._fields.get(exc.field or "")
        if widget is not None:
            widget.add_class("sdplay-invalid")
            widget.layout.border = "2px solid #c0362c"

    def _clear_errors(self) -> None:
        for widget in self._fields.values():
            widget.remove_class("sdplay-invalid")
            widget.layout.border = None

    def _show_result(self, result: GenerationResult, seconds: float) -> None:
        from sdplay.images import png_bytes

        self.progress.value = self.progress.max
        cells = []
        for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
            size = f"{max(128, image.width)}px"
            picture = w.Image(value=png_bytes(result, i), format="png", layout=w.Layout(width=size, height="auto"))
            cells.append(w.VBox([picture, w.Label(f"seed {seed}")]))
        self.grid.children = cells
        r = result.request
        self._show_status(
            f"{len(cells)} image(s) in {seconds:.1f} s: {r.model}, {r.width}×{r.height}, {r.steps} steps, "
            f"{r.sampler}, guidance {r.guidance:g}, seeds {', '.join(map(str, result.seeds))}"
        )


def toggle_lora(prompt: str, name: str) -> str:
    """The prompt without the LoRA's `<lora:name…>` tags (and the blank before each) if it has one, else with
    `<lora:name:1>` added at the end, as the browser UI's LoRA cards do."""
    tag = re.compile(rf"[ \t]*<lora:{re.escape(name)}(?::[^>]*)?>")
    if tag.search(prompt):
        return tag.sub("", prompt).lstrip(" \t")
    return f"{prompt}{' ' if prompt and not prompt[-1].isspace() else ''}<lora:{name}:1>"
