"""Display names of schemes and their variants, for tables and figures.

A run's curve is named, in order of preference, by its preset's ``name`` (e.g.
``name = "ACP-SL, ℓ0 scores"`` in a ``[[runs]]`` entry), else from its scheme and the
parameters that make it an ablation (``acp`` with ``scorer = "l0"`` is "ACP-SL, ℓ0 scores"),
never by its folder label (``acp-l0``). Curves of one report whose names would coincide get
the parameters that tell them apart (``RandTopk, α = 0.2`` / ``RandTopk, α = 0.5``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The schemes' names as the papers write them.
SCHEME_TITLES = {
    "standard": "Standard SL",
    "acp": "ACP-SL",
    "randtopk": "RandTopk",
    "topk": "Top-k",
    "sizered": "Size reduction",
    "quant": "Quantization",
    "l1": "L1 regularization",
    "dropgroup": "Channel-group drop",
}
#: ACP-SL's ablations (paper Figs. 3, 5, 6) by parameter value.
_ACP_VARIANTS = {
    ("scorer", "l0"): "ℓ0 scores",
    ("scorer", "random"): "random scores",
    ("ratio", "fixed"): "fixed ratio P_base",
    ("ratio", "random"): "random ratio",
    ("score_mode", "inst"): "S_inst only",
    ("score_mode", "hist"): "S_hist only",
    ("group_score", "paper"): "eqs. 10-13 as printed",
}
#: How a parameter is written in a name.
_PARAM_SYMBOLS = {"alpha": "α", "lam": "λ", "bits": "bits", "p_base": "P_base"}


def scheme_title(scheme: str) -> str:
    """``"ACP-SL"`` for ``"acp"``; a scheme without a title (a user's) keeps its name."""
    return SCHEME_TITLES.get(scheme, scheme)


def display_name(scheme: str, params: Mapping[str, Any] | None = None) -> str:
    """The name of a run of ``scheme`` with ``params``: its title plus its ablation."""
    title = scheme_title(scheme)
    if scheme != "acp":
        return title
    parts = [
        text for (key, value), text in _ACP_VARIANTS.items() if (params or {}).get(key) == value
    ]
    return ", ".join([title, *parts])


def _param_text(key: str, value: Any) -> str:
    return (
        f"{_PARAM_SYMBOLS.get(key, key)} = {value:g}"
        if isinstance(value, float)
        else (f"{_PARAM_SYMBOLS.get(key, key)} = {value}")
    )


def unique_names(
    entries: Sequence[tuple[str, str]], params: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Names made unique: ``entries`` are ``(label, name)``; a name shared by several labels
    gets the parameters in which those runs differ, else the label, appended."""
    names = [name for _, name in entries]
    out = list(names)
    for name in set(names):
        same = [i for i, n in enumerate(names) if n == name]
        if len(same) < 2:
            continue
        keys = sorted({k for i in same for k in params[i]})
        differing = [k for k in keys if len({repr(params[i].get(k)) for i in same}) > 1]
        for i in same:
            extra = [_param_text(k, params[i][k]) for k in differing if k in params[i]]
            out[i] = f"{name}, {', '.join(extra)}" if extra else f"{name} ({entries[i][0]})"
    # still equal (same parameters, different labels): the label tells them apart
    for i, name in enumerate(out):
        if out.count(name) > 1:
            out[i] = f"{name} ({entries[i][0]})"
    return out
