"""Write EXPERIMENTS.md from the experiments' JSON results (``lenslab experiment report --out DIR``).

Every number in the report is read from ``al-curve.json``, ``table1.json``, ``table2.json``,
``lens-on-classifier.json`` and ``label-curve.json`` under the results directory; a missing file is
reported as not run. The reproduction checks (acquisition beats random, lens beats raw z, lens beats
β-VAE) are evaluated here from the same numbers.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ml.experiment.common import fmt_ms, paired_test

SIGNIFICANCE = 0.05  # a paired t-test p below this counts as a win

# The paper's numbers (ICML 2018, Table 1 and appendix Table 2, MNIST rows).
PAPER_TABLE1_MNIST = {"ILVM": 95.2, "JLVM": 89.8, "InfoGAN": 83.3}
PAPER_TABLE2_MNIST = {"ILVM": -110.4, "JLVM": -111.1}


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _p(test: dict[str, Any] | None, key: str = "p_ttest") -> str:
    if not test or test.get(key) is None:
        return "–"
    return f"{test[key]:.3g}"


def _alpha(settings: dict[str, Any]) -> str:
    a = settings.get("alpha")
    return "from the labelled fraction (`ml.heads.default_alpha`)" if a is None else f"{a:g}"


def _extra(settings: dict[str, Any]) -> str:
    """The lens's regulariser(s) as recorded in a result (older results recorded the pseudo-label threshold)."""
    extra = settings.get("lens_extra")
    if extra is None:
        extra = {"pseudo_label_threshold": settings.get("pseudo_label_threshold")}
    return ", ".join(f"{k} = {v:g}" if isinstance(v, int | float) else f"{k} = {v}" for k, v in extra.items()) or "none"


def _img(out: Path, md_dir: Path, name: str) -> str:
    path = out / name
    if not path.exists():
        return ""
    return f"![{name}]({os.path.relpath(path, md_dir)})\n"


def _run_line(res: dict[str, Any]) -> str:
    m = res["machine"]
    if m.get("commit"):
        source = f"code at commit `{m['commit'][:12]}`" + (" with uncommitted changes" if m.get("dirty") else "")
    else:
        source = "commit not recorded (measured before results kept their provenance)"
    return (
        f"Profile `{res['profile']}`, {res['seeds']} seeds, data sets {', '.join(res['datasets'])}; "
        f"{res['wall_s'] / 60:.1f} min wall on {m['cpu_count']} CPU(s) ({m['platform']}, torch {m['torch']}), "
        f"measured {m['measured_at']}; {source}."
    )


def _variants(s: dict[str, Any], strategies: list[str]) -> str:
    k = s["al_batch"]
    rules = {
        "ilvm-bald": f"`ilvm-bald` takes the {k} items of highest BALD",
        "ilvm-bald-power": f"`ilvm-bald-power` draws them ∝ BALD^{s.get('power_beta', 1.0):g} (Kirsch et al. 2023)",
        "ilvm-bald-diverse": (
            f"`ilvm-bald-diverse` clusters the {s.get('prefilter', 10) * k} items of highest BALD by "
            f"BALD-weighted k-means in z and takes the item nearest each of the {k} centres (Zhdanov 2019)"
        ),
        "ilvm-bald-cover": (
            f"`ilvm-bald-cover` splits z into (labelled + {k}) k-means regions and takes, from each of the "
            f"{k} regions with the fewest labels per item (none first, larger first), the item of highest BALD × "
            f"density (density = 1 / mean distance to its 20 nearest unlabelled neighbours in the region; "
            f"after TypiClust, Hacohen et al. 2022; information density, Settles & Craven 2008)"
        ),
        "typiclust": (
            "`typiclust` is the regions-and-density rule of `ilvm-bald-cover` without BALD (density alone; the control)"
        ),
    }
    return "; ".join(rules[st] for st in strategies if st in rules) or "no BALD strategy in this run"


def _al_table(r: dict[str, Any]) -> list[str]:
    """One data set's AUC table: every metric key and strategy, with the tests against random."""
    lines = [
        "| metric | strategy | AUC | final score | labels → random final | p (t) | p (Wilcoxon) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, summ in r["summary"].items():
        for st, e in summ["strategies"].items():
            vs = e.get("vs_random_auc")
            lines.append(
                f"| {key} | {st} | {fmt_ms(*e['auc_mean_std'])} | {fmt_ms(*e['final_mean_std'])} | "
                f"{e['labels_to_random_final'] if e['labels_to_random_final'] is not None else 'not reached'} "
                f"| {_p(vs)} | {_p(vs, 'p_wilcoxon')} |"
            )
    return lines


def _al_section(out: Path, md_dir: Path, res: dict[str, Any] | None, checks: list[str]) -> str:
    if res is None:
        return "## Figure 8 — active learning\n\nNot run yet (`lenslab experiment al-curve`).\n"
    s = res["settings"]
    lines = [
        "## Figure 8 — active learning (simulated oracle)\n",
        _run_line(res) + "\n",
        f"{s['al_init']} random labels to start, {s['al_batch']} acquired per round, {s['rounds']} rounds; lens: "
        f"{s['n_flows']} planar flows, hidden {s['lens_hidden']}, {s['lens_epochs_first']} epochs on the first fit "
        f"then {s['lens_epochs_warm']} per warm-started round, regularisers: {_extra(s)}, "
        f"α = {_alpha(s)}, "
        f"{s['n_samples']} z* samples for BALD; {_variants(s, res.get('strategies', []))}. The metric is fitted on the "
        "held-out `fit` set and scored on `test` "
        "after every fit. AUC = mean score over the label range (trapezoids); 'labels → random final' = the first "
        "label count at which the strategy's mean curve reaches random acquisition's final mean score; p = paired "
        "t-test (Wilcoxon beside it) of the per-seed AUCs against random's.\n",
    ]
    # Runs kept in subfolders (controls, ablations) beside the main one, each with its own settings.
    others = [
        (sub.parent.relative_to(out).as_posix(), json.loads(sub.read_text()))
        for sub in sorted(out.glob("al-curve-*/al-curve.json"))
    ]
    for name, r in res["results"].items():
        lines.append(f"### {name}\n\n{r['notes']}.\n")
        lines += _al_table(r)
        lines.append("")
        lines.append(_img(out, md_dir, f"al-curve-{name}.png"))
        for rel, other in others:
            if name not in other.get("results", {}):
                continue
            lines.append(
                f"\nAlso run, in `{rel}/` ({other['seeds']} seeds, strategies "
                f"{', '.join(other.get('strategies', []))}; regularisers: {_extra(other['settings'])}):\n"
            )
            lines += _al_table(other["results"][name])
        if name == "mnist":
            for key in ("digit", "thickness", "overall"):
                if key not in r["summary"]:
                    continue
                summ = r["summary"][key]["strategies"]
                rnd = summ.get("random")
                for st, b in summ.items():
                    if not st.startswith("ilvm-bald") or not rnd:
                        continue
                    lb, lr = b["labels_to_random_final"], rnd["labels_to_random_final"]
                    fewer = lb is not None and lr is not None and lb < lr
                    checks.append(
                        f"- MNIST {key}: `{st}` mean AUC {b['auc_mean_std'][0]:.1f} vs random "
                        f"{rnd['auc_mean_std'][0]:.1f} "
                        f"(paired t p = {_p(b.get('vs_random_auc'))}) — "
                        f"{verdict(b['auc_mean_std'][0], rnd['auc_mean_std'][0], b.get('vs_random_auc'))}; "
                        f"labels to reach random's final score: {lb if lb is not None else 'not reached'} vs random "
                        f"{lr} "
                        f"— {'**met**' if fewer else '**not met**'}."
                    )
    return "\n".join(lines) + "\n"


def verdict(ours: float, theirs: float, test: dict[str, Any] | None) -> str:
    """'met' only for a higher mean whose paired t-test is significant: a tie is not a win."""
    p = (test or {}).get("p_ttest")
    if ours > theirs and p is not None and p < SIGNIFICANCE:
        return "**met**"
    if ours > theirs:
        return "**not met** (ahead, but not significantly: a tie)"
    return "**not met**"


# Which method a cached model's name belongs to (table 1's collapse records).
_MODEL_METHODS = {"betavae-": ("beta-VAE",), "jlvm-": ("JLVM",), "vae-": ("ILVM", "no lens (VAE z)")}


def still_collapsed(result: dict[str, Any]) -> dict[str, int]:
    """Methods whose model stayed collapsed after its retry (mean KL below the threshold): seeds each."""
    from ml.experiment.common import COLLAPSE_KL_NATS

    counts: dict[str, int] = {}
    for c in result.get("collapsed_and_retrained", []):
        if c.get("mean_kl", math.inf) >= COLLAPSE_KL_NATS:
            continue
        for prefix, methods in _MODEL_METHODS.items():
            if c["model"].startswith(prefix):
                for m in methods:
                    counts[m] = counts.get(m, 0) + 1
                break
    return counts


def _ilvm_on_designated_dims(out: Path, dataset: str, keys: list[str]) -> dict[str, tuple[int, int]]:
    """From table1.csv: per attribute, (ILVM seeds whose chosen dimension is the designated one, seeds)."""
    path = out / "table1.csv"
    if not path.exists():
        return {}
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "ILVM" and r["dataset"] == dataset]
    counts = {}
    for j, k in enumerate(keys):
        seen = [r for r in rows if r.get(f"{k}_dim") not in (None, "")]
        if seen:
            counts[k] = (sum(int(float(r[f"{k}_dim"])) == j for r in seen), len(seen))
    return counts


def _t1_section(
    out: Path, md_dir: Path, res: dict[str, Any] | None, checks: list[str], bases: dict[str, Any] | None = None
) -> str:
    if res is None:
        return "## Table 1 — interpretability metric\n\nNot run yet (`lenslab experiment table1`).\n"
    s = res["settings"]
    lines = [
        "## Table 1 — interpretability metric\n",
        _run_line(res) + "\n",
        f"ILVM: lens with {s['n_flows']} flows, hidden {s['lens_hidden']}, epochs per data set below, regularisers: "
        f"{_extra(s)}, α = {_alpha(s)}. JLVM: β ∈ {s['jlvm_betas']} chosen per seed by "
        "the metric cross-fitted on the held-out `fit` set; λ from the labelled fraction. β-VAE: β = "
        f"{s['beta_vae_beta']}, "
        "no labels. Scores: mean ± std over seeds; `*` = significant win (paired t-test against every other "
        "method, p < 0.05), the paper's bold.\n",
    ]
    for name, r in res["results"].items():
        keys = r["keys"]
        summ = r["summary"]
        epochs = r.get("lens_epochs", s["lens_epochs"])  # results saved before per-data-set lengths: the profile's
        lines.append(f"### {name} ({r['n_labels']} labelled pool items, lens {epochs} epochs)\n\n{r['notes']}.\n")
        for c in r.get("collapsed_and_retrained", []):
            lines.append(
                f"- Posterior collapse: `{c['model']}` (seed {c['requested_seed']}) had mean KL "
                f"{c['collapsed'][0]['mean_kl']:.2f} nats (z carries nothing); retrained with seed "
                f"{c['used_seed']} (mean KL {c['mean_kl']:.1f}), as the rule in `ml/experiment/common.py` does for "
                "every model."
            )
        if r.get("collapsed_and_retrained"):
            lines.append("")
        lines.append("| method | " + " | ".join(keys) + (" | paper (MNIST) |" if name == "mnist" else " |"))
        lines.append("|---|" + "---|" * len(keys) + ("---|" if name == "mnist" else ""))
        collapsed = still_collapsed(r)
        for m in ("ILVM", "JLVM", "beta-VAE", "no lens (VAE z)"):
            if m in collapsed:  # a model whose z carries nothing is not a competitor: reported, not ranked
                cells = [f"collapsed on {collapsed[m]} of {res['seeds']} seeds (not ranked)" for _ in keys]
            else:
                cells = [
                    fmt_ms(*summ[k]["mean_std"][m]) + (" *" if summ[k]["significant"] and summ[k]["best"] == m else "")
                    for k in keys
                ]
            paper = (
                {"ILVM": "95.2", "JLVM": "89.8", "beta-VAE": "–", "no lens (VAE z)": "–"}[m]
                if name == "mnist"
                else None
            )
            lines.append(f"| {m} | " + " | ".join(cells) + (f" | {paper} |" if paper is not None else " |"))
        if name == "mnist":
            lines += _t1_base_rows(bases, keys)
            lines.append("| InfoGAN (paper only) | " + " | ".join("–" for _ in keys) + " | 83.3 |")
        lines.append("")
        best_p = {k: {m: t for m, t in summ[k]["best_vs"].items() if m not in collapsed} for k in keys}
        lines.append(
            "Paired t-tests of the best method against the others (p): "
            + "; ".join(
                f"{k}: best {summ[k]['best']} — " + ", ".join(f"{m} {_p(t)}" for m, t in best_p[k].items())
                for k in keys
            )
            + ".\n"
        )
        on_dim = _ilvm_on_designated_dims(out, name, [k for k in keys if k != "overall"])
        if on_dim:
            lines.append(
                "ILVM seeds on which the metric's chosen dimension is the lens's designated one (attribute j owns "
                "z*_j): " + ", ".join(f"{k} {n}/{m}" for k, (n, m) in on_dim.items()) + ".\n"
            )
        if name == "mnist":
            for key in ("digit", "thickness"):
                if key not in summ:
                    continue
                ilvm, raw = summ[key]["mean_std"]["ILVM"][0], summ[key]["mean_std"]["no lens (VAE z)"][0]
                t = paired_test(summ[key]["per_seed"]["ILVM"], summ[key]["per_seed"]["no lens (VAE z)"])
                checks.append(
                    f"- MNIST {key}: ILVM {ilvm:.1f} vs raw z {raw:.1f} (+{ilvm - raw:.1f} points, paired t "
                    f"p = {_p(t)}; need +15) — {'**met**' if ilvm >= raw + 15 else '**not met**'}."
                )
            for key in ("overall", "digit", "thickness"):
                if "beta-VAE" in collapsed:
                    checks.append(
                        f"- MNIST {key}: ILVM vs β-VAE — not compared: the β-VAE collapsed on "
                        f"{collapsed['beta-VAE']} of {res['seeds']} seeds."
                    )
                    continue
                ilvm, bv = summ[key]["mean_std"]["ILVM"][0], summ[key]["mean_std"]["beta-VAE"][0]
                t = paired_test(summ[key]["per_seed"]["ILVM"], summ[key]["per_seed"]["beta-VAE"])
                checks.append(
                    f"- MNIST {key}: ILVM {ilvm:.1f} vs β-VAE {bv:.1f} (paired t p = {_p(t)}) — {verdict(ilvm, bv, t)}."
                )
    lines.append(_img(out, md_dir, "table1.png"))
    return "\n".join(lines) + "\n"


def _t1_base_rows(bases: dict[str, Any] | None, keys: list[str]) -> list[str]:
    """Table 1's MNIST rows for both bases, as the bases experiment measured them (same split and labels)."""
    if bases is None or "mnist" not in bases.get("results", {}):
        return []
    summ = bases["results"]["mnist"]["summary"]
    n = len(summ["seeds"])
    out = []
    for base, label in (("vae", "VAE z"), ("contrastive", "contrastive base")):
        for method, key in (("ILVM", "lens"), ("no lens", "raw")):
            cells = [fmt_ms(*summ[base][k][key]) if k in summ[base] else "–" for k in keys]
            paper = "95.2" if (base, method) == ("contrastive", "ILVM") else "–"
            out.append(f"| {method} ({label}; bases run, {n} seeds) | " + " | ".join(cells) + f" | {paper} |")
    return out


def _bases_section(res: dict[str, Any] | None, checks: list[str]) -> str:
    """The two base representations: raw z, the lens and the ceiling per attribute, and the targets."""
    title = "## A stronger base: the contrastive representation against Table 1's VAE\n"
    if res is None or "mnist" not in res.get("results", {}):
        return title + "\nNot run yet (`lenslab experiment bases`).\n"
    from ml.experiment.bases import BASE_NAMES, BASES

    r = res["results"]["mnist"]
    summ, st = r["summary"], res["settings"]
    n = len(summ["seeds"])
    lines = [
        title,
        _run_line(res) + "\n",
        f"{r['notes']}. Both bases are trained on the pool's images without labels; the same "
        f"{st['n_labels']} random pool items are labelled for both (Table 1's labels). `lens` is Table 1's ILVM "
        f"({st['lens_epochs']} epochs); `ceiling` an MLP on all of z trained on the same labels and scored like the "
        "metric; `one dimension of it` the metric on one dimension carrying the MLP's predictions "
        '(see "The ceiling"). One-dimension metric, mean ± std over seeds; `on its dim`: seeds where the metric\'s '
        "chosen dimension is the lens's designated one.\n",
        "| base | attribute | raw z | lens | ceiling (MLP, all of z) | one dimension of it | lens / ceiling | "
        "lens / one dimension | MLP accuracy | lens accuracy | on its dim |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    attributes = [k for k in summ["vae"] if k not in ("overall", "base_s")]
    for base in BASES:
        for a in attributes:
            e = summ[base][a]
            lines.append(
                f"| {BASE_NAMES[base]} | {a} | {fmt_ms(*e['raw'])} | {fmt_ms(*e['lens'])} | {fmt_ms(*e['ceiling'])} | "
                f"{fmt_ms(*e['ceiling_one_dim'])} | {e['ratio']:.2f} | {e['ratio_one_dim']:.2f} | "
                f"{e['ceiling_accuracy'][0]:.3f} | {e['lens_accuracy'][0]:.3f} | {e['on_designated_dim']}/{n} |"
            )
    lines.append("")
    vs = summ["contrastive_vs_vae"]
    lines.append(
        "Lens on the contrastive base against the lens on the VAE (paired t over seeds): "
        + "; ".join(
            f"{a} {summ['contrastive'][a]['lens'][0]:.1f} vs {summ['vae'][a]['lens'][0]:.1f} (p = {_p(vs[a])})"
            for a in [*attributes, "overall"]
        )
        + f". Base training time per seed, on one thread with other runs alongside (a cached model read back "
        f"counts ~0 s): VAE {summ['vae']['base_s'][0]:.0f} s, contrastive {summ['contrastive']['base_s'][0]:.0f} s; "
        "the product's pretrain time is `lenslab bench train`'s.\n"
    )
    targets = {"digit": 80.0, "thickness": 50.0}
    for a, target in targets.items():
        if a in summ["contrastive"]:
            e = summ["contrastive"][a]
            got = e["lens"][0]
            checks.append(
                f"- Stronger base, {a}: lens on the contrastive base {got:.1f} (target ≥ {target:.0f}) — "
                f"{'**met**' if got >= target else '**not met**'}; its ceiling {e['ceiling'][0]:.1f}, "
                f"one-dimension reading {e['ceiling_one_dim'][0]:.1f}."
            )
    for base in BASES:
        for a in attributes:
            e = summ[base][a]
            checks.append(
                f"- Ceiling, {BASE_NAMES[base]} (bases run), {a}: lens {e['lens'][0]:.1f} of ceiling "
                f"{e['ceiling'][0]:.1f} = {e['ratio']:.2f} (target ≥ {CEILING_TARGET}) — "
                f"{'**met**' if e['ratio'] >= CEILING_TARGET else '**not met**'}; of the one-dimension reading: "
                f"{e['ratio_one_dim']:.2f}."
            )
    return "\n".join(lines) + "\n"


def _t2_section(res: dict[str, Any] | None) -> str:
    if res is None:
        return "## Table 2 — test log-likelihood\n\nNot run yet (`lenslab experiment table2`).\n"
    lines = [
        "## Table 2 — test log-likelihood\n",
        _run_line(res) + "\n",
        f"IWAE bound with k = {res['k']} importance samples on the held-out `test` images, nats per image; "
        f"likelihood: {res['likelihood']}. ILVM's value is its base VAE's: the lens is a bijection on z and "
        "leaves p(x) unchanged. JLVM is table 1's model with its validated β.\n",
        "| data | ILVM (base VAE) | JLVM | ILVM − JLVM (paired t p) | paper ILVM | paper JLVM |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["results"].items():
        ms = r["mean_std"]
        t = r["ilvm_vs_jlvm"]
        pi, pj = (PAPER_TABLE2_MNIST["ILVM"], PAPER_TABLE2_MNIST["JLVM"]) if name == "mnist" else ("–", "–")
        lines.append(
            f"| {name} | {fmt_ms(*ms['ILVM (base VAE)'])} | {fmt_ms(*ms['JLVM'])} | "
            f"{t['mean_diff']:.1f} ({_p(t)}) | {pi} | {pj} |"
        )
    return "\n".join(lines) + "\n"


def _clf_section(out: Path, md_dir: Path, res: dict[str, Any] | None) -> str:
    if res is None:
        return "## The lens on a classifier\n\nNot run yet (`lenslab experiment lens-on-classifier`).\n"
    s = res["settings"]
    if "rotation_deg" not in s:  # results of the earlier design (full turn, orientation only)
        return (
            "## The lens on a classifier\n\n"
            "Results predate the current design; rerun `lenslab experiment lens-on-classifier`.\n"
        )
    lines = [
        "## The lens on a classifier (paper 2.1, 6.1.3)\n",
        _run_line(res) + "\n",
        f"A CNN (`ml.classifier`, hidden layer of {s['hidden_dim']} units) trained {s['clf_epochs']} epochs on "
        f"{s['clf_pool']} MNIST training images, each rotated by a seeded angle in "
        f"[−{s['rotation_deg']:g}°, {s['rotation_deg']:g}°) (a full turn makes a 6 a 9); z is its hidden layer. "
        f"The lens ({s['n_flows']} flows) sees orientation ({s['orientation_bins']} bins), thickness and digit "
        f"labels for {s['labels']} random pool items. Metric (one dimension) on held-out rotated test images, "
        "before and after the lens; the ceiling is an MLP on all of the hidden layer trained on the same labels. "
        "`on its dim`: seeds where the metric's chosen dimension is the lens's designated one.\n",
        "| data | CNN test accuracy | attribute | chance | hidden layer | after the lens | paired t p | "
        "ceiling (MLP, all dims) | on its dim |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["results"].items():
        summ = r["summary"]
        acc = fmt_ms(*summ["classifier_accuracy"], digits=3)
        n = len(r["runs"])
        for k in r["attributes"]:
            e = summ[k]
            lines.append(
                f"| {name} | {acc} | {k} | {e['chance']:.1f} | {fmt_ms(*e['before'])} | {fmt_ms(*e['after'])} | "
                f"{_p(e['after_vs_before'])} | {fmt_ms(*e['ceiling'])} | {e['on_designated_dim']}/{n} |"
            )
    lines.append("")
    lines.append(_img(out, md_dir, "lens-on-classifier.png"))
    return "\n".join(lines) + "\n"


def _alignment_section(res: dict[str, Any] | None) -> str:
    title = "## The lens's alignment (`LensConfig.align`)\n"
    if res is None:
        return title + "\nNot run yet (`lenslab experiment alignment`).\n"
    configs = list(res["configs"])
    lines = [
        title,
        _run_line(res) + "\n",
        "Before its flows the lens rotates z so that each attribute's best linear direction, fitted on the training "
        "labels, lies on its designated z\\* dimension (`ml.lens.alignment`; orthogonal, so exactly invertible). "
        "Every seed fits the product's default lens with and without it on the same z and labels: MNIST with "
        "Table 1's split and base VAE and 1,000 random labels; the demo's upright sprites (2,400 in the pool, "
        "100 random labels); and the aligned lens with the demo's eight flows. One-dimension metric on held-out "
        "items; on the sprites "
        "also the traversals: along the size (position) dimension from its 5th to its 95th percentile, the mean "
        "Spearman correlation between step and the decoded sprite's ink area (centre of mass) over 12 items — 1 "
        "when the attribute grows step by step.\n",
        "| data | attribute | raw z | " + " | ".join(configs) + " | aligned − unaligned (paired t p) |",
        "|---|---|---|" + "---|" * len(configs) + "---|",
    ]
    for name, r in res["results"].items():
        summ = r["summary"]
        attrs = [k for k in summ if k not in ("n_labels", "traversal")]
        for a in attrs:
            e = summ[a]
            cells = [fmt_ms(*e[c]) if c in e else "–" for c in configs]
            t = e["aligned_vs_unaligned"]
            lines.append(
                f"| {name} ({summ['n_labels']} labels) | {a} | {fmt_ms(*e['raw z'])} | {' | '.join(cells)} | "
                f"{t['mean_diff']:+.1f} ({_p(t)}) |"
            )
        if "traversal" in summ:
            for k in ("size", "position"):
                cells = [fmt_ms(*summ["traversal"][c][k], digits=2) if c in summ["traversal"] else "–" for c in configs]
                lines.append(f"| {name} | traversal monotonicity, {k} | – | {' | '.join(cells)} | |")
    return "\n".join(lines) + "\n"


# Targets for the lens with 1,000 random MNIST labels: one-dimension score and accuracy.
LABEL_CURVE_TARGETS = {"digit": (40.0, 0.60), "thickness": (55.0, 0.75)}


def _label_curve_section(out: Path, md_dir: Path, res: dict[str, Any] | None, checks: list[str]) -> str:
    if res is None:
        return "## The label curve\n\nNot run yet (`lenslab experiment label-curve`).\n"
    s = res["settings"]
    attrs = ["digit", "thickness"]
    lines = [
        "## The label curve — how many labels the one-dimension score needs\n",
        _run_line(res) + "\n",
        f"{res['notes']}. One base VAE (seed {s['base_vae_seed']}) on the whole pool; per label count and seed, "
        "that many random pool items are labelled and each lens configuration is fitted on the pool. Metric "
        "as everywhere here (one dimension per attribute), fitted and scored on test-split images no lens saw; "
        "the curve is filled in by several runs, and the wall time above is their sum. "
        "Cells: score ± std over seeds (test accuracy); `train acc` is the accuracy on the lens's own "
        "labelled items (a large gap = memorisation). The paper's 95.2 is the dashed line on the plot.\n",
        "Configurations (`ml/experiment/label_curve.py`):\n",
    ]
    for name, cfg in s["configs"].items():
        lines.append(f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    raw = res["raw_z"]
    lines += [
        "",
        "| configuration | labels | seeds | " + " | ".join(f"{a} score (acc) | {a} train acc" for a in attrs) + " |",
        "|---|---|---|" + "---|---|" * len(attrs),
        "| raw z (no lens) | – | – | "
        + " | ".join(f"{raw[a]:.1f} ({100 * raw[f'{a}_accuracy']:.1f}%) | –" for a in attrs)
        + " |",
    ]
    for config, per_n in res["summary"].items():
        for n, e in sorted(per_n.items(), key=lambda kv: int(kv[0])):
            cells = []
            for a in attrs:
                acc, tr = e.get(f"{a}_accuracy"), e.get(f"{a}_train_accuracy")
                cells.append(f"{fmt_ms(*e[a])} ({100 * acc[0]:.1f}%)" if a in e and acc else "–")
                cells.append(f"{100 * tr[0]:.1f}%" if tr else "–")
            lines.append(f"| {config} | {int(n):,} | {e['seeds']} | " + " | ".join(cells) + " |")
            for k_dims in sorted({m.group(1) for k in e if (m := re.fullmatch(r".+_(\d+)d", k))}, key=int):
                cells = []
                for a in attrs:
                    sc, acc = e.get(f"{a}_{k_dims}d"), e.get(f"{a}_accuracy_{k_dims}d")
                    cells += [f"{fmt_ms(*sc)} ({100 * acc[0]:.1f}%)" if sc and acc else "–", "–"]
                lines.append(f"| {config}, {k_dims} dims | {int(n):,} | {e['seeds']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(_img(out, md_dir, "label-curve.png"))
    for config, per_n in res["summary"].items():
        e = per_n.get("1000")
        if not config.startswith("auto") or e is None or e["seeds"] < 3:
            continue
        for a, (score, acc) in LABEL_CURVE_TARGETS.items():
            m, a_m = e[a][0], e[f"{a}_accuracy"][0]
            ok = m >= score and a_m >= acc
            checks.append(
                f"- MNIST, 1,000 random labels, `{config}` ({e['seeds']} seeds): {a} one-dimension score "
                f"{fmt_ms(*e[a])} (need ≥ {score:g}), accuracy {100 * a_m:.1f}% (need ≥ {100 * acc:.0f}%) — "
                f"{'**met**' if ok else '**not met**'}."
            )
    # The lens against raw z of this base VAE, at every label count measured on ≥ 3 seeds.
    from ml.experiment.label_curve import REFERENCE

    for config, per_n in res["summary"].items():
        for n, e in sorted(per_n.items(), key=lambda kv: int(kv[0])):
            if config == REFERENCE or e["seeds"] < 3:
                continue
            gains = {a: e[a][0] - raw[a] for a in attrs}
            checks.append(
                f"- MNIST, full-pool base VAE, {int(n):,} random labels, `{config}` ({e['seeds']} seeds): "
                + ", ".join(f"{a} {e[a][0]:.1f} vs raw z {raw[a]:.1f} ({g:+.1f})" for a, g in gains.items())
                + f"; need +15 on each — {'**met**' if min(gains.values()) >= 15 else '**not met**'}."
            )
    return "\n".join(lines) + "\n"


# The lens configuration of the label curve that Table 1's cpu profile uses (``common.make_lens``), and
# the same lens trained by the earlier, unfused step.
CEILING_LENS_CONFIG = "planar-long+propagation"
EAGER_LENS_CONFIG = "planar-long+propagation-eager"
CEILING_TARGET = 0.9
# The label-curve run behind the ceiling table, in its own folder under the results: it has the MLP's
# one-dimension reading, and its base VAE is today's (the main curve's rows were measured on an earlier one).
CEILING_RUN = "ceiling"


def _fit_seconds(lc: dict[str, Any], config: str) -> float | None:
    secs = [float(r["fit_s"]) for r in lc.get("rows", []) if r["config"] == config and int(r["n_labels"]) == 1000]
    return sum(secs) / len(secs) if secs else None


def _ceiling_section(lc: dict[str, Any] | None, clf: dict[str, Any] | None, checks: list[str]) -> str:
    """Per base representation and attribute: the supervised ceiling, its one-dimension reading, the lens."""
    from ml.experiment.label_curve import REFERENCE

    rows: list[tuple[str, str, list[float] | None, list[float] | None, list[float] | None, int]] = []
    if lc is not None:
        ref = lc["summary"].get(REFERENCE, {}).get("1000")
        lens = lc["summary"].get(CEILING_LENS_CONFIG, {}).get("1000")
        if ref and lens:
            for a in ("digit", "thickness"):
                one = ref.get(f"{a}_one_dim")
                rows.append(("VAE z (10-d)", a, ref.get(a), one, lens.get(a), min(ref["seeds"], lens["seeds"])))
    if clf is not None and "rotation_deg" in clf.get("settings", {}):
        for r in clf["results"].values():
            for a in r["attributes"]:
                e = r["summary"][a]
                rows.append(
                    ("CNN hidden layer (32-d)", a, e["ceiling"], e.get("ceiling_one_dim"), e["after"], len(r["runs"]))
                )
    if not rows:
        return "## The ceiling: what the lens reaches of what z knows\n\nNot run yet.\n"

    def ratio(x: list[float] | None, y: list[float] | None) -> str:
        return f"{x[0] / y[0]:.2f}" if x and y and y[0] > 0 else "–"

    lines = [
        "## The ceiling: what the lens reaches of what z knows\n",
        "MNIST, 1,000 random labels. `ceiling` is an MLP on all of z trained on the same labels, scored like "
        "the metric (100·exp(mean log p(true level)) on the test items); `one dimension` is the metric on a "
        "single dimension holding that MLP's predictions, each item at its predicted level's position "
        "(levels ordered by the shortest path through their class means, `ml.experiment.ceiling`): what a "
        "one-dimension lens could reach if it knew all the MLP knows. `lens` is the one-dimension score of "
        f"the lens (`{CEILING_LENS_CONFIG}` of the label curve on the VAE; the classifier section's lens on the "
        "CNN). Mean over seeds.\n",
        "The metric's geometric mean is ruled by its confidently wrong items: an item that one dimension puts "
        "inside another level's interval gets a probability near zero for its own level, where the MLP, "
        "reading all of z, hedges. So the one-dimension reading of the ceiling falls well below the ceiling "
        "at the same accuracy, most for the 10 digits.\n",
        "| base | attribute | ceiling (MLP, all of z) | one dimension of it | lens | lens / ceiling | "
        "lens / one dimension | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if lc is not None:
        lines.insert(1, f"The VAE rows (`{CEILING_RUN}/`): " + _run_line(lc) + "\n")
    for base, a, ceil, one, lens_score, seeds in rows:
        lines.append(
            f"| {base} | {a} | {fmt_ms(*ceil) if ceil else '–'} | {fmt_ms(*one) if one else '–'} | "
            f"{fmt_ms(*lens_score) if lens_score else '–'} | {ratio(lens_score, ceil)} | {ratio(lens_score, one)} | "
            f"{seeds} |"
        )
        if ceil and lens_score:
            r = lens_score[0] / ceil[0]
            checks.append(
                f"- Ceiling, {base}, {a}: lens {lens_score[0]:.1f} of ceiling {ceil[0]:.1f} = {r:.2f} "
                f"(target ≥ {CEILING_TARGET}) — {'**met**' if r >= CEILING_TARGET else '**not met**'}"
                + (f"; of the one-dimension reading {one[0]:.1f}: {lens_score[0] / one[0]:.2f}." if one else ".")
            )
    fused, eager = (
        lc["summary"].get(c, {}).get("1000") if lc else None for c in (CEILING_LENS_CONFIG, EAGER_LENS_CONFIG)
    )
    if lc is not None and fused and eager:
        lines += [
            "",
            f"The same lens trained by the fused step (served) and by the earlier eager step "
            f"(`{EAGER_LENS_CONFIG}`: flow by flow, two passes), on the same base VAE, labels and seeds:\n",
            "| step | digit | thickness | fit (s, mean) |",
            "|---|---|---|---|",
        ]
        for name, e, config in (("fused", fused, CEILING_LENS_CONFIG), ("eager", eager, EAGER_LENS_CONFIG)):
            secs = _fit_seconds(lc, config)
            lines.append(
                f"| {name} | {fmt_ms(*e['digit'])} | {fmt_ms(*e['thickness'])} | "
                f"{f'{secs:.0f}' if secs is not None else '–'} |"
            )
    return "\n".join(lines) + "\n"


INTRO = """# EXPERIMENTS — reproducing Adel, Ghahramani & Weller (ICML 2018)

Generated by `lenslab experiment report --out {out}` from the JSON results under `{out}/`; do not edit by
hand (edit `ml/experiment/report.py`, or the prose in `served.md` and `discussion.md` beside it). Every score is the interpretability metric of section 4 as
`ml.metrics.interpretability_score` implements it (DESIGN.md): the most informative single dimension
(histogram MI, 20 bins), a Platt-scaled linear SVM, score = 100·exp(mean log p(s|z*_i)), in percent;
per attribute, and "overall" = mean over attributes. The metric is fitted on one held-out labelled
set (`fit`) and scored on another (`test`); neither contains an item whose label trained a model.

## Setup

- **Data.** digits: scikit-learn's 8×8 digits (1,000 pool / 350 fit / 400 test). MNIST (`{data}`):
  a random subset of the 60,000 training images as the pool (size per profile below), metric sets
  from the 10,000 test images; attributes digit (10 classes) and thickness (Morpho-MNIST stroke
  thickness, 5 quantile levels, edges from the pool). shapes: `ml.data.make_shapes` (32×32,
  position range 0.5), attributes shape (3) and scale (6 ordinal levels).
- **Base model.** The conv VAE of the paper's appendix Table 1 (`ml.vae`, 10-d z, Bernoulli
  likelihood on grey values), trained on the pool only, one per (data set, seed, profile), cached;
  the label curve and the cpu profile's active learning share one (seed 0) trained on all 60,000
  MNIST training images, so their seeds vary the labels and the lens, not the representation.
- **Seeds.** Seed k sets the VAE's initialisation, the labelled subset and the lens/JLVM
  initialisation; splits are fixed. All runs use one torch thread on a shared 2-core CPU.
- **Profiles.** `quick` (CI; tiny pools, 2–8 VAE epochs), `cpu` (what was run here: Tables 1
  and 2 on an MNIST pool of 5,000 training images, VAE, JLVM and β-VAE 30 epochs, the lens 200
  epochs (4,000 optimiser steps), 1,000/1,000 metric items; JLVM β ∈ {{1, 10}}; IWAE k = 100; the
  label curve and active learning on one base VAE trained 20 epochs on all 60,000 training images,
  metric on 2,000/8,000 test images, active learning on its first 3,000 images, 6 rounds, 12 lens
  epochs per warm round; the lens's
  settings are recorded with each result below), `full` (the paper's scale, not run here:
  MNIST pool 60,000, 30 VAE epochs, 8,000 test items, AL on the whole pool for 20 rounds, JLVM
  β ∈ {{0.1, 1, 10}}, IWAE k = 1,000; expected ≈ 1–2 h on one GPU, a day or more on this 2-core
  CPU, dominated by the 3 × (VAE + 3 JLVM + β-VAE) trainings on 60,000 images and 9 AL runs of
  21 lens fits each). Sizes are in `ml/experiment/common.py`.

## Commands

```
lenslab experiment al-curve           --profile cpu --out {out} --seeds 5 --data-dir {data}
mkdir -p {out}/al-curve-typiclust && ln -sfn ../cache {out}/al-curve-typiclust/cache   # the control shares the base VAE
lenslab experiment al-curve           --profile cpu --out {out}/al-curve-typiclust --seeds 5 --data-dir {data} \
    --strategies typiclust,random
lenslab experiment table1             --profile cpu --out {out} --seeds 3 --data-dir {data} --datasets mnist,digits,shapes
lenslab experiment table2             --profile cpu --out {out} --seeds 3 --data-dir {data} --datasets mnist,digits,shapes
lenslab experiment lens-on-classifier --profile cpu --out {out} --seeds 3 --data-dir {data}
lenslab experiment label-curve        --profile cpu --out {out} --seeds 1 --data-dir {data} --labels 1000 \
    --configs planar,planar-long,planar-long+propagation,planar-long+pseudo,planar-long+consistency,planar-long+mixup
lenslab experiment label-curve        --profile cpu --out {out} --seeds 1 --data-dir {data} --labels 100,300,3000,10000 \
    --configs planar,planar-long+propagation
lenslab experiment label-curve        --profile cpu --out {out} --seeds 3 --data-dir {data} --labels 1000 \
    --configs auto+propagation,mlp-all-dims
lenslab experiment label-curve        --profile cpu --out {out} --seeds 3 --data-dir {data} --labels 1000 \
    --configs auto+propagation-3folds,planar-long-a1000+propagation,planar-e20+propagation
lenslab experiment label-curve        --profile cpu --out {out} --seeds 2 --first-seed 1 --data-dir {data} \
    --labels 1000,3000 --configs planar-long+propagation
lenslab experiment label-curve        --profile cpu --out {out} --seeds 1 --data-dir {data} --labels 100,300,3000,10000,60000 \
    --configs mlp-all-dims
lenslab experiment label-curve        --profile cpu --out {out}/ceiling --seeds 3 --data-dir {data} --labels 1000 \
    --configs mlp-all-dims,planar-long+propagation,planar-long+propagation-eager
lenslab experiment bases             --profile cpu --out {out} --seeds 3 --data-dir {data}
lenslab experiment report             --out {out}          # regenerates this file
```

`--profile quick` runs every experiment in minutes (the CI test `tests/ml/test_experiment.py`
runs a yet smaller version of each). Models are cached under `{out}/cache/` (ignored by git), so a
rerun re-trains nothing that is there; delete the folder to start afresh.
"""  # noqa: E501 (the reproduction commands are copied as they run, one command a line)


def write_report(
    out: str | os.PathLike[str] = "benchmarks/experiments",
    markdown: str | os.PathLike[str] = "EXPERIMENTS.md",
    data_dir: str = "../shared/data",
    discussion: str | None = None,
) -> Path:
    """Write the markdown report from the JSON results under ``out``; returns its path."""
    out_p, md = Path(out), Path(markdown)
    if not out_p.is_dir():
        raise ValueError(f"results directory {str(out_p)!r} does not exist (run an experiment with --out {out} first)")
    md_dir = md.parent.resolve()
    checks: list[str] = []
    al = _load(out_p, "al-curve")
    t1 = _load(out_p, "table1")
    t2 = _load(out_p, "table2")
    clf = _load(out_p, "lens-on-classifier")
    lc = _load(out_p, "label-curve")
    bases = _load(out_p, "bases")
    # The product's own benchmarks through its REST API (``lenslab bench al``, ``annotators``,
    # ``attribute-added``): their prose and tables, kept beside the library's Figure 8.
    served_path = Path(__file__).with_name("served.md")
    body = [
        INTRO.format(out=out, data=data_dir),
        _al_section(out_p, md_dir, al, checks),
        *([served_path.read_text()] if served_path.exists() else []),
        _t1_section(out_p, md_dir, t1, checks, bases),
        _t2_section(t2),
        _clf_section(out_p, md_dir, clf),
        _label_curve_section(out_p, md_dir, lc, checks),
        _ceiling_section(_load(out_p / CEILING_RUN, "label-curve"), clf, checks),
        _alignment_section(_load(out_p, "alignment")),
        _bases_section(bases, checks),
    ]
    body.append("## Reproduction checks\n\n" + ("\n".join(checks) if checks else "No MNIST results yet.") + "\n")
    disc_path = Path(__file__).with_name("discussion.md")
    text = discussion if discussion is not None else (disc_path.read_text() if disc_path.exists() else "")
    if text:
        body.append(text)
    md.write_text("\n".join(body))
    return md
