"""``report.md`` and the Dice-distribution plots of a run, from its summary rows and records.

The first table is laid out like the MedSAM3 paper's: datasets as rows, methods as columns,
the published numbers (``evals.paper``, marked as quoted) beside ours. Volumes (volumetric Dice,
HD95 in mm, seconds per volume) and measurements (CDR / CTR error) have sections of their own.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from evals import paper

MODE_TITLES = {"direct": "Ours: text (direct)", "box": "Ours: text + GT box (box)", "agent": "Ours: agent"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _index(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    return {(r["mode"], r["dataset"], r["concept"]): r for r in rows}


def paper_table(rows: list[dict], titles: dict[str, str] = MODE_TITLES) -> list[str]:
    """Dice per dataset: quoted published methods, then our modes."""
    index = _index(rows)
    modes = [m for m in MODE_TITLES if any(r["mode"] == m for r in rows)]
    ours = sorted({r["dataset"] for r in rows if r["dataset"] != "*"})
    header = ["Dataset", *[f"{m} (quoted)" for m in paper.METHODS], *[titles[m] for m in modes]]
    body = []
    for dataset in ours:
        quoted = paper.DICE.get(paper.SAME_DATASET.get(dataset, ""), {})
        name = dataset if dataset not in paper.SAME_DATASET else f"{dataset} ({paper.SAME_DATASET[dataset]})"
        body.append([name, *[_fmt(quoted.get(m)) for m in paper.METHODS],
                     *[_fmt(index.get((m, dataset, "*"), {}).get("dice")) for m in modes]])
    for name, quoted in paper.DICE.items():
        if name in paper.SAME_DATASET.values():
            continue
        body.append([f"{name} (paper only)", *[_fmt(quoted.get(m)) for m in paper.METHODS], *["–" for _ in modes]])
    body.append(["**all our cases**", *["" for _ in paper.METHODS],
                 *[_fmt(index.get((m, "*", "*"), {}).get("dice")) for m in modes]])
    return _table(header, body)


def metrics_table(rows: list[dict], *, by: str) -> list[str]:
    """All metrics; ``by="dataset"`` (concept = *) or ``by="concept"`` (dataset = *) or ``by="both"``."""
    if by == "dataset":
        chosen = [r for r in rows if r["concept"] == "*"]
    elif by == "concept":
        chosen = [r for r in rows if r["dataset"] == "*" and r["concept"] != "*"]
    else:
        chosen = [r for r in rows if r["dataset"] != "*" and r["concept"] != "*"]
    header = ["Mode", "Dataset", "Concept", "n", "Dice", "IoU", "gIoU", "cIoU", "Presence sens. (n+)",
              "Presence spec. (n−)", "HD95 (px)", "s / case", "Errors"]
    body = [[r["mode"], r["dataset"], r["concept"], str(r["n"]), _fmt(r["dice"]), _fmt(r["iou"]), _fmt(r["giou"]),
             _fmt(r["ciou"]), _presence(r, "presence_sens", "n_pos"), _presence(r, "presence_acc", "n_neg"),
             _fmt(r["hd95"], 1), _fmt(r["seconds_per_case"], 2), str(r["errors"])] for r in chosen]
    return _table(header, body)


def _presence(row: dict, share: str, count: str) -> str:
    """'0.9412 (17)'; rows of summaries written before sensitivity was reported have no counts."""
    value = _fmt(row.get(share))
    return value if row.get(count) is None else f"{value} ({row[count]})"


def category_table(records: list[dict]) -> list[str]:
    """Reasoning sets whose rows carry a ``category``: the metrics per mode and question category."""
    from evals.metrics import CaseScore, aggregate
    from evals.summary import case_score

    groups: dict[tuple[str, str], list[CaseScore]] = defaultdict(list)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        if r.get("category") is None:
            continue
        key = (r["mode"], str(r["category"]))
        errors[key] += bool(r.get("error"))
        groups[key].append(case_score(r))  # a failure counts as its empty prediction, as in summary rows
    header = ["Mode", "Question category", "n", "Dice", "gIoU", "cIoU", "Presence acc.", "Errors"]
    body = []
    for key in sorted(set(groups) | set(errors)):
        agg = aggregate(groups[key])
        body.append([key[0], key[1], str(agg["n"]), _fmt(agg["dice"]), _fmt(agg["giou"]), _fmt(agg["ciou"]),
                     _fmt(agg["presence_acc"]), str(errors[key])])
    return _table(header, body) if body else []


def plot_dice(out: Path, records: list[dict]) -> list[Path]:
    """One PNG per dataset: per-case Dice (non-empty targets) per mode, as box plots with the cases on top."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if not r.get("error") and not r.get("target_empty", True):
            values[r["dataset"]][r["mode"]].append(float(r["dice"]))
    paths = []
    rng = np.random.default_rng(0)  # fixed jitter: the same run draws the same picture
    for dataset in sorted(values):
        modes = [m for m in MODE_TITLES if m in values[dataset]]
        fig = Figure(figsize=(1.6 + 1.6 * len(modes), 3.6), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        data = [values[dataset][m] for m in modes]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(modes) + 1), labels=modes)
        for i, series in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(series)), series, s=8, alpha=0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Dice per case")
        ax.set_title(f"{dataset} (n = {', '.join(str(len(s)) for s in data)})", fontsize=10)
        fig.tight_layout()
        path = out / f"dice_{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in dataset)}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def volume_section(rows: list[dict], records: list[dict], slices: str | None) -> list[str]:
    """Volumetric rows and one line per scored volume (Dice, HD95 mm, mL predicted / labelled, slices run)."""
    vol = [r for r in records if r.get("source") == "volume"]
    if not vol:
        return []
    names = {r["dataset"] for r in vol}
    chosen = [r for r in rows if r["dataset"] in names]
    body = [[r["mode"], r["dataset"], r["concept"], str(r["n"]), _fmt(r["dice"]), _fmt(r["iou"]),
             _fmt(r["hd95_mm"], 1), _fmt(r["seconds_per_volume"], 1), str(r["errors"])] for r in chosen]
    if slices is None:
        where = "every slice of each volume was segmented."
    elif slices == "target":
        where = ("only the slices spanned by each volume's labels were segmented (`--slices target`, an oracle "
                 "restriction: no false positive outside that span is possible, so these scores flatter the model).")
    else:
        where = f"only slices `{slices}` were segmented (`--slices`); the scores are still over the whole volume."
    lines = ["## Volumes", "", *_table(["Mode", "Dataset", "Concept", "n", "Dice (3D)", "IoU (3D)", "HD95 (mm)",
                                        "s / volume", "Errors"], body), "",
             ("Volumetric Dice / IoU over all voxels of each volume; HD95 in millimetres with the volume's "
              f"spacing. s / volume: the volume's one pass (every slice encoded once, all its concepts prompted "
              f"on it), per-concept rows showing that concept's share. In this run {where}"), "",
             *_table(["Mode", "Volume", "Concept", "Dice", "HD95 (mm)", "mL predicted", "mL labelled", "Slices"],
                     [[r["mode"], r["id"], r["concept"], _fmt(r.get("dice")), _fmt(r.get("hd95_mm"), 1),
                       _fmt(r.get("pred_ml"), 1), _fmt(r.get("target_ml"), 1),
                       "–" if not r.get("slices") else f"{r['slices'][0]}:{r['slices'][1]}"] for r in vol[:40]]), ""]
    return lines


def measure_section(rows: list[dict], records: list[dict]) -> list[str]:
    """Mean absolute error of each ratio, then the cases: predicted, reference (ground-truth masks), error."""
    chosen = [r for r in rows if r["n_measured"] is not None]
    if not chosen:
        return []
    body = [[r["mode"], r["dataset"], r["concept"], str(r["n"]), str(r["n_measured"]), _fmt(r["mae"]),
             str(r["errors"])] for r in chosen]
    cases = [r for r in records if r.get("measure")]
    lines = ["## Measurements", "", *_table(["Mode", "Dataset", "Measurement", "n", "Measured", "MAE", "Errors"],
                                            body), "",
             ("The same ratio (tools/measure.py) on the mode's masks and on the ground-truth masks; MAE = mean "
              "absolute difference over the cases that gave a ratio (Measured). A case whose masks allow no ratio "
              "(one came back empty) counts in n, not in the MAE."), "",
             *_table(["Mode", "Case", "Measurement", "Predicted", "Reference", "Abs. error"],
                     [[r["mode"], r["id"], r["concept"], _fmt(r.get("value"), 3), _fmt(r.get("reference"), 3),
                       _fmt(r.get("abs_error"), 3) if r.get("value") is not None
                       else (r.get("unmeasured") or r.get("error") or "–")] for r in cases[:40]]), ""]
    return lines


def _agent_line(identity: dict) -> list[str]:
    """The planner half of the run's identity, when the run had agent mode."""
    if not identity.get("planner"):
        return []
    model = f", model `{identity['model']}` at `{identity['endpoint']}`" if identity.get("model") else ""
    prompts = (identity.get("prompts_sha256") or "")[:12]
    return [f"Agent: planner `{identity['planner']}`{model}, max rounds {identity.get('max_rounds') or 'default'}, "
            f"prompts sha256 {prompts}…"]


def _experts(identity: dict) -> str:
    """", expert `abdomen` (sha256 1a2b…)" per catalog expert the run used beside the main weights."""
    experts = identity.get("experts") or {}
    return "".join(f", expert `{name}` (sha256 {sha[:12]}…)" for name, sha in sorted(experts.items()))


def write_report(out: Path, rows: list[dict], records: list[dict], run_info: dict) -> Path:
    identity = run_info.get("identity", {})
    config = run_info.get("config", {})
    all_rows = rows
    volume_sets = {r["dataset"] for r in records if r.get("source") == "volume"}
    rows = [r for r in rows if r["dataset"] not in volume_sets and r.get("n_measured") is None]  # 2D segmentation
    n_cases = len({(r["mode"], r["key"]) for r in records})
    sha = (identity.get("weights_sha256") or "")[:12]
    titles = dict(MODE_TITLES)
    if identity.get("box_text") is False:
        titles["box"] = "Ours: GT box only (box)"
    lines = [
        "# Evaluation report",
        "",
        f"Command: `{run_info.get('command') or 'medsam3-agent eval'}`  ",
        (f"Started {run_info.get('started', '?')}; backend `{identity.get('backend')}`, weights "
        f"`{identity.get('weights')}`{f' (sha256 {sha}…)' if sha else ''}{_experts(identity)}; "
        f"split `{config.get('split')}`; "
        f"modes {', '.join(config.get('modes', []))}; box prompts: {identity.get('box_strategy')}"
         f"{'' if identity.get('box_text', True) else ', without text'}; "
        f"{n_cases} scored (mode, case) pairs."),
        *_agent_line(identity),
        "",
        "## Dice by dataset",
        "",
        *paper_table(rows, titles),
        "",
        f"Quoted columns: {paper.SOURCE} Published numbers are on the paper's own test splits; ours are on this "
        "run's split, so compare them as orders of magnitude, not as a ranking. "
        + "; ".join(f"{k}: nearest data here is {v}, a different dataset" for k, v in paper.NEAREST.items()) + ".",
        "",
        ("Ours: mean per-case Dice over cases with a non-empty target. *direct* prompts the known concept name only; "
        "*box* adds the ground-truth box of each connected target component (or one union box, per the run's "
        "setting), like the paper's text + image-prompt setting (or sends the boxes alone with --box-prompt box); "
        "cases with an empty target have no box and are left out of *box*; *agent* answers the question "
        "(reasoning sets) or \"Segment the <concept> in this image.\"."),
        "",
        "## All metrics by dataset",
        "",
        ("gIoU counts an empty prediction on an empty target as 1; cIoU = Σ intersection / Σ union; presence "
        "sensitivity is the share of the n+ cases with a target answered with a mask at all, presence specificity "
        "(the summary's presence_acc) the share of the n− cases without one (an empty target: BUSI normal images, "
        "tumour-free slices) answered with an empty mask; HD95 in pixels (MONAI), over "
        "cases where both masks are non-empty. s / case includes a share of the once-per-image encoder time. "
        "n counts every case: one that failed (Errors) is scored as an empty prediction, or as a miss where "
        "its target could not be read."),
        "",
        *metrics_table(rows, by="dataset"),
        "",
        "## By concept (all datasets)",
        "",
        *metrics_table(rows, by="concept"),
        "",
    ]
    multi = {d for d in {r["dataset"] for r in rows} - {"*"} if len({r["concept"] for r in rows
                                                              if r["dataset"] == d and r["concept"] != "*"}) > 1}
    if multi:
        lines += ["## By dataset and concept", "",
                  *metrics_table([r for r in rows if r["dataset"] in multi], by="both"), ""]
    lines += volume_section(all_rows, records, config.get("slices"))
    lines += measure_section(all_rows, records)
    categories = category_table(records)
    if categories:
        lines += ["## By question category (reasoning sets)", "", *categories, ""]
    plots = plot_dice(out, records)
    if plots:
        lines += ["## Dice distributions", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    failed = [r for r in records if r.get("error")]
    if failed:
        lines += [f"## Errors ({len(failed)})", ""]
        lines += [f"- {r['mode']} `{r['key']}`: {r['error']}" for r in failed[:30]]
        if len(failed) > 30:
            lines.append(f"- … and {len(failed) - 30} more in results.jsonl")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
