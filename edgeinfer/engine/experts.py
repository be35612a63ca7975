"""How often each expert of a Mixture-of-Experts model was chosen: the figures `run --verbose` and
`bench` print, for people deciding which experts to keep in fast memory.

counts: int (n_moe_layer, n_expert), one routing per token and chosen expert (a token with k experts
adds k), as DecoderModel.expert_counts() returns them.
"""

from __future__ import annotations

import numpy as np


def expert_summary(counts: np.ndarray, top: int = 4) -> dict:
    """JSON-ready figures: per layer the `top` most chosen experts with their shares of the layer's
    routings, the experts never chosen, and how uneven the load is (the busiest expert's count over the
    mean count: 1.0 is perfectly even, n_expert means one expert took every token)."""
    counts = np.asarray(counts, dtype=np.int64)
    n_layer, n_expert = counts.shape
    layers = []
    for il, row in enumerate(counts):
        total = int(row.sum())
        order = np.argsort(-row, kind="stable")[:top]
        layers.append(
            {
                "layer": il,
                "routings": total,
                "top": [[int(e), float(row[e] / total) if total else 0.0] for e in order],
                "unused": int((row == 0).sum()),
                "imbalance": float(row.max() / row.mean()) if total else 0.0,
            }
        )
    return {
        "n_expert": n_expert,
        "n_layer": n_layer,
        "routings": int(counts.sum()),
        "unused": int((counts == 0).sum()),
        "counts": counts.tolist(),
        "layers": layers,
    }


def format_expert_counts(counts: np.ndarray, top: int = 4, title: str = "experts") -> str:
    """Lines for a terminal: a headline, then one line per MoE layer with its busiest experts."""
    s = expert_summary(counts, top)
    head = (
        f"{title}: {s['n_layer']} MoE layers x {s['n_expert']} experts, {s['routings']} routings; "
        f"{s['unused']} of {s['n_layer'] * s['n_expert']} (layer, expert) pairs never chosen"
    )
    lines = [head]
    width = len(str(s["n_layer"] - 1))
    for layer in s["layers"]:
        busiest = " ".join(f"e{e} {share:4.0%}" for e, share in layer["top"])
        lines.append(
            f"  layer {layer['layer']:>{width}}: {busiest} | unused {layer['unused']}/{s['n_expert']}, "
            f"busiest/mean {layer['imbalance']:.2f}"
        )
    return "\n".join(lines)


__all__ = ["expert_summary", "format_expert_counts"]
