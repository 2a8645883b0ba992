"""Accuracy of `vlmsae label` on the toy world, over every SAE of a `vlmsae demo` run.

    python benchmarks/label_accuracy.py runs/demo [--k 4] [--json out.json]

For each SAE at the default k, its neurons are labelled with the toy CLIP over the toy
world's concept words (`--vocab toyworld`) from their top images on the held-out split,
and scored against the truth: the share of neurons with oracle MS >= 0.8 whose label is a
concept value that >= 80 % of their top images hold, and the same share over every
labelled neuron. Prints one line per SAE and the pooled figures.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="Output directory of `vlmsae demo`.")
    parser.add_argument("--k", type=int, default=4, help="The demo's default k.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from vlmsae.explore.labels import label_sae

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sae in sorted((args.demo / "saes").iterdir()):
            if not re.search(rf"-k{args.k}(-s\d+)?$", sae.name):  # one SAE per seed
                continue
            hook = sae.name.split("-")[0]
            acts = args.demo / "acts" / "test" / ("post_projection" if hook == "proj" else hook)
            s = label_sae(sae, acts, Path(tmp) / sae.name, clip="toyworld", vocab="toyworld")
            results[sae.name] = {**s["toyworld"], "n_labelled": s["n_labelled"]}
            r = results[sae.name]
            print(f"{sae.name}: {r['n_correct']} of {r['n_monosemantic']} with oracle MS >= 0.8; "
                  f"all labelled {r['accuracy_all_labelled']}")  # fmt: skip
    n_mono = sum(r["n_monosemantic"] for r in results.values())
    n_right = sum(r["n_correct"] for r in results.values())
    n_lab = sum(r["n_labelled"] for r in results.values())
    right_lab = sum(
        round(r["accuracy_all_labelled"] * r["n_labelled"])
        for r in results.values()
        if r["accuracy_all_labelled"] is not None
    )
    pooled = {
        "monosemantic": [n_right, n_mono, n_right / n_mono if n_mono else None],
        "all_labelled": [right_lab, n_lab, right_lab / n_lab if n_lab else None],
    }
    print(f"pooled: {n_right} of {n_mono} neurons with oracle MS >= 0.8 labelled with a true "
          f"concept; {right_lab} of {n_lab} labelled neurons")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"saes": results, "pooled": pooled}, indent=2) + "\n")


if __name__ == "__main__":
    main()
