"""Text tables of measurement results and agreement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from maht_net.formatting import fmt_number

# ---- text ------------------------------------------------------------------------------------

def format_measurements(result: Mapping[str, Any]) -> str:
    """A plain-text measurement table of one analysis (value, interval, class, review)."""
    lines = [f"{'measurement':<14} {'value':>9} {'interval':>19} {'unit':<5} {'class':<32} review"]
    for r in result["measurements"]:
        iv = "" if r["interval"] is None else f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]"
        cls = "" if r["class"] is None else f"{r['class']['code']} {r['class']['label']}"
        if r["class_probability"] is not None:
            cls += f" ({r['class_probability']:.0%})"
        flag = "; ".join((["REVIEW: " + "; ".join(r["review_reasons"])] if r["needs_review"] else []) + ([r["note"]] if r["note"] else []))
        lines.append(f"{r['name']:<14} {fmt_number(r['value']):>9} {iv:>19} {r['unit']:<5} {cls:<32} {flag}")
    s = result["skeletal_class"]
    if s["class"]:
        lines.append(f"skeletal class {s['class']} (ANB {s['anb']:.2f} deg; {s['source']})" + (" REVIEW" if s["needs_review"] else ""))
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def format_agreement(table: Mapping[str, Any], what: str = "difference") -> str:
    """Plain-text agreement table (:func:`agreement_table`)."""
    lines = [f"{'measurement':<14} {'n':>4} {'mean |' + what[:4] + '|':>12} {'bias':>8} {'sd':>7} {'unit':<5} {'class agr.':>10} {'kappa':>6}"]
    for r in table["measurements"]:
        ca = "" if r["class_agreement"] is None else f"{r['class_agreement']:.0%}"
        lines.append(
            f"{r['name']:<14} {r['n']:>4} {fmt_number(r['mean_abs']):>12} {fmt_number(r['mean']):>8} {fmt_number(r['sd']):>7} "
            f"{r['unit'] or '':<5} {ca:>10} {fmt_number(r['kappa']):>6}"
        )
    s = table["skeletal_class"]
    if s["n"]:
        lines.append(f"skeletal class agreement: {s['agreement']:.0%} (kappa {fmt_number(s['kappa'])}, n={s['n']})")
    return "\n".join(lines)
