"""``spin-diffusion demo``: base, SFT, Diffusion-DPO and SPIN iterations on the toy world, judged exactly.

The demo is the short version of ``spin-diffusion toy reproduce`` (one seed, a
smaller data set and evaluation, the same training settings), and every run in
it is an ordinary :func:`spin_diffusion.selfplay.driver.run`, so it exercises the same
code path as a real Stable Diffusion run. Around it the demo scores the curated
data itself with the oracle (the ceiling the fine-tuned models approach) and
prints a table like the paper's Table 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spin_diffusion.errors import UserError
from spin_diffusion.infra.atomic import write_text_atomic

# Sizes chosen so the whole demo takes a few minutes on 2 CPU cores; every training setting is the
# reproduction's default (spin_diffusion.studies.settings.ReproduceConfig), only the budget is smaller.
FULL = {"pairs": 1000, "eval_prompts": 100, "images_per_prompt": 2}
QUICK = {"pairs": 48, "eval_prompts": 8, "images_per_prompt": 2, "sample_steps": 8, "steps": 4}


def demo_study(iterations: int, quick: bool) -> Any:
    """The reproduction's settings on one seed, a smaller data set and evaluation, no ablation."""
    from spin_diffusion.studies.settings import ReproduceConfig

    defaults = ReproduceConfig().model_dump()
    its = defaults["spin"]["iterations"]
    spin_its = [dict(its[min(k, len(its) - 1)]) for k in range(iterations)]
    size = QUICK if quick else FULL
    raw = {
        **defaults,
        "seeds": [0],
        "methods": ["sft", "dpo", "spin"],
        "pairs": size["pairs"],
        "eval_prompts": size["eval_prompts"],
        "images_per_prompt": size["images_per_prompt"],
        "spin": {**defaults["spin"], "iterations": spin_its},
    }
    if quick:
        steps = size["steps"]
        raw["sample_steps"] = size["sample_steps"]
        raw["warmup_steps"] = 1
        for it in spin_its:
            it["max_steps"] = steps
        raw["sft"] = {**defaults["sft"], "max_steps": 2 * steps, "eval_every": steps}
        raw["dpo"] = {**defaults["dpo"], "max_steps": steps}
    return ReproduceConfig.model_validate(raw)


def curated_reference(curated_dir: Path, limit: int = 200) -> dict[str, float]:
    """Oracle scores of the curated images themselves: the data the fine-tuning imitates."""
    from PIL import Image

    from spin_diffusion.toy.oracle import OracleScorer

    rows = [json.loads(line) for line in (curated_dir / "metadata.jsonl").read_text().splitlines()]
    rows = rows[:limit]
    images = [Image.open(curated_dir / r["file_name"]).convert("RGB") for r in rows]
    prompts = [r["text"] for r in rows]
    return {
        "toy_fidelity": float(OracleScorer("fidelity").score(images, prompts).mean()),
        "toy_style": float(OracleScorer("style").score(images, prompts).mean()),
    }


def run_demo(output_dir: Path = Path("runs"), iterations: int = 3, quick: bool = False) -> dict[str, Any]:
    """Run the short reproduction (base, SFT, DPO, SPIN iterations) and print its table."""
    from spin_diffusion.studies.reproduce import reproduce
    from spin_diffusion.studies.tables import attribute_table, results_table
    from spin_diffusion.toy import base_model_path

    if not (base_model_path() / "model_index.json").is_file():
        raise UserError(
            f"the shipped toy model is missing at {base_model_path()}; rebuild it with `spin-diffusion toy pretrain`"
        )
    study = demo_study(iterations, quick)
    out = Path(output_dir) / ("demo-quick" if quick else "demo")
    command = f"spin-diffusion demo --output-dir {output_dir} --iterations {iterations}" + (
        " --quick" if quick else ""
    )
    result = reproduce(study, out, command)
    curated = curated_reference(out / "seed-0" / "data" / "curated")
    curated_row = f"| curated data | - | {curated['toy_fidelity']:.3f} | {curated['toy_style']:.3f} | - | - | - | - | - | - | - |"
    table = "\n".join(results_table(study, result["seeds"], [curated_row])) + "\n"
    write_text_atomic(out / "demo_table.md", table)
    attributes = "\n".join(attribute_table(study, result["seeds"])) + "\n"
    write_text_atomic(out / "demo_attributes.md", attributes)
    print()
    print(
        f"Base, SFT, Diffusion-DPO and {iterations} SPIN iterations on the same {study.pairs} toy "
        f"image-caption pairs, judged by the exact oracle on {study.eval_prompts} held-out prompts "
        f"x {study.images_per_prompt} images (one seed; the multi-seed study is docs/results.md):"
    )
    print(table)
    print(
        "Prompt fidelity by attribute (share of the oracle's checks passed; objects found per object asked;"
    )
    print("images with no object found):")
    print(attributes)
    print(
        f"study directory: {out}  (curves: {out / 'plots' / 'curves.png'}, grid: {out / 'seed-0' / 'eval' / 'grid.png'})"
    )
    return result
