"""Markdown sections of ``report.md``, one renderer per evaluation task (the registry in :mod:`.tasks` names
which renderer draws which task's table). Method rows per table: this model, the random baseline, then any
feature baselines."""

from __future__ import annotations

import math

__all__ = ["DIRECTIONS", "jump_report_sections", "jump_section", "linear_probe_section", "map_section", "methods_of",
           "pct", "retrieval_section", "zeroshot_section"]

DIRECTIONS = (("image_to_molecule", "Structure retrieval"), ("molecule_to_image", "Image retrieval"))


def pct(entry) -> str:
    """'12.3 [10.1, 14.8]' from a proportion entry (percent with Clopper–Pearson interval)."""
    if entry is None:
        return "–"
    if isinstance(entry, (int, float)):
        return f"{100 * entry:.1f}"
    return f"{100 * entry['value']:.1f} [{100 * entry['ci_low']:.1f}, {100 * entry['ci_high']:.1f}]"


def num(x, fmt="{:.1f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def table_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def methods_of(results: dict, task: str):
    """(name, task result) for this model and each baseline that ran ``task``."""
    out = []
    if task in results.get("tasks", {}):
        out.append((results.get("model_name", "CLOOME (this model)"), results["tasks"][task]))
    for name, base in results.get("baselines", {}).items():
        if task in base.get("tasks", {}):
            out.append((name, base["tasks"][task]))
    return out


def retrieval_section(results: dict) -> list[str]:
    methods = methods_of(results, "retrieval")
    if not methods:
        return []
    ks = [k for k in ("top1", "top5", "top10") if k in methods[0][1]["image_to_molecule"]]
    lines = [
        "## Cross-modal retrieval (Table 1)",
        "",
        f"N = {methods[0][1]['n']} matched pairs; accuracies in % with exact 95 % Clopper–Pearson intervals; "
        "ties broken pessimistically.",
        "",
    ]
    header = ["Task", "Method", *[k.replace("top", "Top-") for k in ks], "Top-1 %", "Mean rank", "Median rank"]
    rows = []
    for direction, title in DIRECTIONS:
        for name, res in methods:
            d = res[direction]
            rows.append(
                [title, name, *[pct(d[k]) for k in ks], pct(d.get("top1pct_recall")),
                 num(d["mean_rank"]), num(d["median_rank"])]
            )
        r = methods[0][1][direction]["random"]
        rows.append(
            [title, "Random", *[pct(r[k]) for k in ks], pct(r.get("top1pct_recall")),
             num(r["mean_rank"]), num(r["median_rank"])]
        )
    lines += table_lines(header, rows) + [""]
    variant_key = next((k for k in methods[0][1] if k.startswith("one_in_")), None)
    if variant_key:
        n_cand = methods[0][1][variant_key]["n_candidates"]
        lines += [f"### 1 in {n_cand} (true match plus {n_cand - 1} random non-matches)", ""]
        rows = []
        for direction, title in DIRECTIONS:
            for name, res in methods:
                if variant_key in res:
                    d = res[variant_key][direction]
                    rows.append([title, name, *[pct(d[k]) for k in ks], num(d["mean_rank"])])
            r = methods[0][1][variant_key][direction]["random"]
            rows.append([title, "Random", *[pct(r[k]) for k in ks], num(r["mean_rank"])])
        lines += table_lines(["Task", "Method", *[k.replace("top", "Top-") for k in ks], "Mean rank"], rows) + [""]
    return lines


def linear_probe_section(results: dict) -> list[str]:
    methods = methods_of(results, "linear_probe")
    if not methods:
        return []
    lines = ["## Activity prediction by linear probing (Table 2)", ""]
    header = ["Method", "Tasks", "ROC-AUC", "F1", "# AUC > 0.9", "# AUC > 0.8", "# AUC > 0.7"]
    rows = []
    for name, res in methods:
        above = [str(res["auc_above"][t]["count"]) for t in ("0.9", "0.8", "0.7")]
        rows.append(
            [name, str(res["n_tasks_evaluated"]),
             f"{num(res['auc']['mean'], '{:.3f}')} ± {num(res['auc']['std'], '{:.3f}')}",
             f"{num(res['f1']['mean'], '{:.3f}')} ± {num(res['f1']['std'], '{:.3f}')}", *above]
        )
    rows.append(["Random", "–", "0.500", "–", "0", "0", "0"])
    return lines + table_lines(header, rows) + [""]


def zeroshot_section(results: dict, task: str, title: str) -> list[str]:
    methods = methods_of(results, task)
    if not methods:
        return []
    first = methods[0][1]
    ks = [k for k in ("top1", "top5", "top10") if k in first]
    lines = [
        f"## {title}",
        "",
        f"{first['n_classes']} classes, {first['n_queries']} query sites ({first['n_removed']} removed because they "
        "share molecule and plate with a prototype); accuracies in % with 95 % Clopper–Pearson intervals.",
        "",
    ]
    rows = []
    for name, res in methods:
        rows.append([name, str(res["n_classes"]), str(res["n_queries"]), *[pct(res[k]) for k in ks]])
        rows.append([f"Random ({res['n_classes']} classes)", str(res["n_classes"]), "–",
                     *[pct(res["random"][k]) for k in ks]])
    return lines + table_lines(["Method", "Classes", "Queries", *[k.replace("top", "Top-") for k in ks]], rows) + [""]


def map_section(results: dict) -> list[str]:
    methods = methods_of(results, "map")
    if not methods:
        return []
    lines = ["## Replicate mean average precision (copairs)", ""]
    rows = [
        [name, res["mode"], str(res["n_molecules"]), num(res["mean_map"], "{:.3f}"), pct(res["fraction_retrieved"])]
        for name, res in methods
    ]
    header = ["Method", "Mode", "Molecules", "mAP", f"% retrieved (corrected p < {methods[0][1]['threshold']})"]
    return lines + table_lines(header, rows) + [""]


_TITLES = {"jump_activity": "JUMP phenotypic activity (copairs mAP against the plates' negative controls)",
           "jump_consistency": "JUMP phenotypic consistency (copairs multi-label mAP of shared annotations)"}


def jump_section(results: dict, task: str) -> list[str]:
    """Markdown lines of one JUMP task's table (``jump_activity`` or ``jump_consistency``; empty when it did not
    run)."""
    methods = methods_of(results, task)
    if not methods:
        return []
    first = methods[0][1]
    unit = "Compounds" if task == "jump_activity" else "Labels"
    lines = [f"## {_TITLES[task]}", "",
             f"Null size {first['null_size']}; % retrieved = Benjamini-Hochberg corrected p < "
             f"{first['threshold']}, with 95 % Clopper-Pearson intervals; profiles normalised against the "
             "controls.", ""]
    header = ["Method", "Pipeline", "Controls", unit, "mAP", "% retrieved"]
    if task == "jump_consistency":
        header.insert(4, "Annotated compounds")
    rows = []
    for name, res in methods:
        count = res["n_compounds"] if task == "jump_activity" else res["n_labels"]
        row = [name, ",".join(res["pipeline"]) or "raw", f"`{res['controls']}`", str(count),
               f"{res['mean_map']:.3f}", pct(res["fraction_retrieved"])]
        if task == "jump_consistency":
            row.insert(4, str(res["n_compounds"]))
        rows.append(row)
    return lines + table_lines(header, rows) + [""]


def jump_report_sections(results: dict) -> list[str]:
    """Markdown lines of both JUMP tables (empty when neither task ran)."""
    return [line for task in _TITLES for line in jump_section(results, task)]
