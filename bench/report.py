"""Aggregate rounds into figures, print the table, write JSON, draw the chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .core import Figure, Target
from .servers import DEFAULT_REF_CMD

SIDES = ("ours", "ref")


def custom_ref_cmd(meta: dict[str, Any]) -> str | None:
    """The "ref" side's command when ``--ref-cmd`` gave it; None when it came from
    ``--reference`` (or, in results from before that option, was Debian's docker-registry)."""
    if "ref_custom" in meta:
        return meta["ref_cmd"] if meta["ref_custom"] else None
    cmd = meta.get("ref_cmd", DEFAULT_REF_CMD)
    return None if cmd == DEFAULT_REF_CMD else cmd


def reference_name(meta: dict[str, Any]) -> str:
    """What the "ref" side was: ``distribution <version> (<binary>)``, or the ``--ref-cmd``
    command itself."""
    cmd = custom_ref_cmd(meta)
    if cmd is not None:
        return f"`{cmd}`"
    version = meta.get("ref_version") or "(version unknown)"
    where = meta.get("ref_path") or "Debian's docker-registry"
    return f"distribution {version} ({where})"


def short_reference(meta: dict[str, Any]) -> str:
    """The reference's name for a chart title: its version, or its command's program."""
    cmd = custom_ref_cmd(meta)
    if cmd is None:
        return f"distribution {meta.get('ref_version') or '?'}"
    words = [w for w in cmd.split() if "/" in w or w.startswith("registry")]
    return words[0].rsplit("/", 1)[-1] if words else cmd


# Issue 14's targets, on the medians: (mode, figure, scenario, figure key, target).
ISSUE_TARGETS: list[tuple[str, str, str, str, Target]] = [
    ("2 cores", "monolithic push", "push_monolithic", "mbps", Target("ratio", 1.0)),
    ("2 cores", "streamed push", "push_streamed", "mbps", Target("ratio", 1.0)),
    ("2 cores", "16 concurrent pushes", "concurrent_push", "c16_mbps", Target("ratio", 1.0)),
    ("2 cores", "pull", "pull", "mbps", Target("ratio", 1.3)),
    ("2 cores", "manifest GET, 32 connections", "small_requests", "manifest_get_c32_rps",
     Target("ratio", 0.8)),
    ("2 cores", "peak memory (PSS), 16 pushes", "concurrent_push", "c16_rss", Target("max", 150)),
    ("2 cores", "peak memory (PSS), 64 pushes", "concurrent_push", "c64_rss", Target("max", 256)),
    ("limited", "monolithic push", "limits", "push_mbps", Target("ratio", 1.0)),
    ("limited", "streamed push", "limits", "stream_mbps", Target("ratio", 1.0)),
    ("limited", "pull", "limits", "pull_mbps", Target("ratio", 1.0)),
    ("limited", "16 concurrent pushes", "limits", "c16_mbps", Target("ratio", 1.0)),
    ("limited", "manifest GET, 32 connections", "limits", "mget_rps", Target("ratio", 0.7)),
    ("limited", "OOM kills", "limits", "oom_kills", Target("max", 0)),
    ("limited", "failed requests", "limits", "failed", Target("max", 0)),
]  # fmt: skip


def mode_name(scenario: str, meta: dict[str, Any]) -> str:
    """Which box a scenario's figures come from: the limits group or the whole machine."""
    if scenario == "limits":
        return f"limited ({meta.get('limits') or 'cgroup'})"
    return f"unlimited ({meta.get('machine', '?').split(' ', 1)[0]} cores)"


def targets_table(results: dict[str, Any]) -> list[list[str]]:
    """One row per issue target that this run measured: mode, figure, target, ours, ref,
    ratio, met (ok / MISS / ? when a side has no figure)."""
    rows = [["mode", "figure", "target", "ours", "ref", "ours/ref", "met"]]
    for mode, label, scenario, key, target in ISSUE_TARGETS:
        sc = results["scenarios"].get(scenario)
        if not sc or sc.get("skipped"):
            continue
        fig = next((f for f in sc.get("figures", []) if f["key"] == key), None)
        if fig is None:
            continue
        ours, ref = fig["ours"]["median"], fig["ref"]["median"]
        met = target.met(ours, ref)
        ratio = f"{ours / ref:.2f}" if ours is not None and ref else "-"
        rows.append([mode_name(scenario, results["meta"]), label, target.describe(), fmt(ours),
                     fmt(ref), ratio, {True: "ok", False: "MISS", None: "?"}[met]])  # fmt: skip
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def summarize(values: list[float | None]) -> dict[str, Any]:
    good = [v for v in values if v is not None]
    return {
        "values": values,
        "median": statistics.median(good) if good else None,
        "min": min(good) if good else None,
        "max": max(good) if good else None,
        "rounds_ok": len(good),
    }


def aggregate(figures: list[Figure], rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per figure with per-side median/min/max over the rounds that succeeded."""
    out = []
    for fig in figures:
        entry: dict[str, Any] = {
            "key": fig.key,
            "label": fig.label,
            "unit": fig.unit,
            "better": fig.better,
            "zero_ok": fig.zero_ok,
            "target": fig.target.describe() if fig.target else None,
        }
        for side in SIDES:
            vals = [
                r["values"].get(fig.key) if r["ok"] else None for r in rounds if r["side"] == side
            ]
            entry[side] = summarize(vals)
        ours, ref = entry["ours"]["median"], entry["ref"]["median"]
        entry["ratio"] = ours / ref if ours is not None and ref else None
        entry["target_met"] = fig.target.met(ours, ref) if fig.target else None
        out.append(entry)
    return out


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_side(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return "-"
    if s["min"] == s["max"]:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}..{fmt(s['max'])})"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = [
        ["scenario", "figure", "unit", "ours (min..max)", "ref (min..max)", "ours/ref", "target"]
    ]
    for name, sc in results["scenarios"].items():
        if sc.get("skipped"):
            rows.append([name, f"skipped: {sc['skipped']}", "", "", "", "", ""])
            continue
        for f in sc["figures"]:
            ratio = f"{f['ratio']:.2f}" if f["ratio"] is not None else "-"
            target = ""
            if f["target"]:
                mark = {True: "ok", False: "MISS", None: "?"}[f["target_met"]]
                target = f"{f['target']} {mark}"
            rows.append(
                [
                    name,
                    f["label"],
                    f["unit"],
                    fmt_side(f["ours"]),
                    fmt_side(f["ref"]),
                    ratio,
                    target,
                ]
            )
    return rows


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    rows = table_rows(results)
    if markdown:
        return markdown_table(rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_errors(results: dict[str, Any]) -> str:
    lines = []
    for name, sc in results["scenarios"].items():
        for r in sc.get("rounds", []):
            if not r["ok"]:
                first = (r["error"] or "").strip().splitlines()
                lines.append(f"{name} round {r['round']} {r['side']}: {first[0] if first else '?'}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def draw_chart(results: dict[str, Any], path: Path) -> str | None:
    """Draw ours-vs-reference bars; returns None on success, else why no chart was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart drawn"
    labels, advantage = [], []
    for name, sc in results["scenarios"].items():
        for f in sc.get("figures", []):
            if f["zero_ok"] or f["ratio"] is None or f["ratio"] <= 0:
                continue
            where = "[limited]" if name == "limits" else f"[unlimited] {name}:"
            labels.append(f"{where} {f['label']} ({f['unit']})")
            advantage.append(f["ratio"] if f["better"] == "higher" else 1 / f["ratio"])
    if not labels:
        return "no figure has values on both sides: no chart drawn"
    height = 1.5 + 0.24 * len(labels)
    fig, ax = plt.subplots(figsize=(10, height))
    ys = list(range(len(labels)))[::-1]
    colors = ["#2e7d32" if a >= 1 else "#c62828" for a in advantage]
    ax.barh(ys, advantage, color=colors, left=0)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    lo, hi = min(advantage + [1.0]) / 1.3, max(advantage + [1.0]) * 1.5
    ax.set_xlim(lo, hi)
    ticks = [2.0**k for k in range(-6, 7) if lo <= 2.0**k <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    for y, a in zip(ys, advantage, strict=True):
        ax.text(a, y, f" {a:.2f}x", va="center", fontsize=6)
    meta = results["meta"]
    ax.set_title(
        f"ours vs {short_reference(meta)} "
        f"(>1 = ours better; medians of {meta['rounds']} rounds)\n"
        f"[unlimited]: {mode_name('', meta)}; "
        f"[limited]: each side in a cgroup of {meta.get('limits', '?')}\n"
        f"{meta['date']} - {meta['machine']}",
        fontsize=9,
    )
    ax.set_xlabel("advantage of ours (throughput: ours/ref; time, latency, memory: ref/ours)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
