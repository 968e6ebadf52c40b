"""The benchmark report as JSON and as a markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = ("model", "variant", "end to end s", "images/s b1", "images/s (batch)", "text ms",
           "UNet step ms (b2)", "UNet in loop ms/step", "VAE ms", "peak GiB", "first image s",
           "restart first s", "MFU", "UNet MFU")  # fmt: skip


def write(report: dict[str, Any], json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(report, indent=2, default=str))
    if markdown_path:
        markdown_path.write_text(to_markdown(report))


def to_markdown(report: dict[str, Any]) -> str:
    """One row per model and variant, then the setup each figure depends on."""
    dev, v = report["device"], report["versions"]
    lines = [f"Device: {dev['name']} ({dev['id']}), dtype {report['dtype']}; "
             f"torch {v.get('torch')}, diffusers {v.get('diffusers')}, transformers {v.get('transformers')}.",
             f"Matmul ceiling measured here: {_num(report.get('matmul_tflops'), 0)} TFLOP/s; "
             f"datasheet peak used for MFU: {_num(report.get('peak_tflops'), 0)} TFLOP/s.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]  # fmt: skip
    for model in report["models"]:
        for name, res in model["variants"].items():
            lines.append("| " + " | ".join(_row(model, name, res)) + " |")
    lines.append("")
    for model in report["models"]:
        lines.append(f"{model['model']}: {model['width']}x{model['height']}, {model['steps']} steps, "
                     f"{model['sampler']}, guidance {model['guidance']}"
                     + (", random weights" if model["random_weights"] else "")
                     + f"; FLOPs from {model['flops']['source']}: {_num(model['flops']['image_tflop'], 1)} "
                     f"TFLOP per image.")  # fmt: skip
        lines += _exactness_lines(model)
    return "\n".join(lines) + "\n"


def _row(model: dict, name: str, res: dict) -> list[str]:
    phases, big = res.get("phases_s", {}), res.get("large_batch")
    restart = (model.get("restart") or {}).get(name, {})
    in_loop = phases.get("unet_total")
    per_step = in_loop / model["steps"] if in_loop else None
    peak = (res.get("memory") or {}).get("peak")  # in-process: weights + run peak + graph pool, same for all
    return [model["model"], name, _num(res["e2e_s"]["median"], 3), _num(res["images_per_s"], 2),
            f"{_num(big['images_per_s'], 2)} (b{big['batch']})" if big else "n/a",
            _ms(phases.get("text")), _ms(res["unet_step_s"]["median"]), _ms(per_step), _ms(phases.get("vae")),
            _num(peak / 2**30, 2) if peak else "n/a", _num(res.get("first_run_s"), 1),
            _num(restart.get("first_image_s"), 2), _pct(res.get("mfu")), _pct(res.get("unet_mfu"))]  # fmt: skip


def _exactness_lines(model: dict) -> list[str]:
    out = []
    for pair, res in (model.get("exactness") or {}).items():
        parts = [f"image PSNR {_num(res['image_psnr_db'], 1)} dB (max |diff| {res['image_max_abs_diff']})"]
        for u in res.get("unet", []):
            parts.append(f"UNet b{u['batch']} {u['width']}x{u['height']} rel. error {u['rel_error']:.2e}")
        if "vae" in res:
            parts.append(f"VAE rel. error {res['vae']['rel_error']:.2e}")
        if "text_encoder" in res:
            parts.append(f"text encoder rel. error {res['text_encoder']['rel_error']:.2e}")
        out.append(f"- {pair}: " + "; ".join(parts))
    return out


def _num(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "inf" if x == math.inf else f"{x:.{digits}f}"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.1f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"
