"""The search's choice as the stages after it read it: `artifacts/chosen.json` holds the chosen
trial's keys (flat, as `--set` spells them) and whether it met the search's accuracy budget.

Imports no TensorFlow: every run reads it, including one that skips every stage.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.artifacts import Workspace
from tasks.config import Params
from tasks.errors import InputError
from tasks.gate import Decision

Choice = dict[str, Any]  # flat param keys, as `--set` spells them -> one value each


def apply_choice(params: Params, choice: Choice) -> Params:
    """`params` with each `section.key` of `choice` set; the initial sparsity is capped at the
    chosen final one (a polynomial schedule never decreases)."""
    merged = params.model_dump()
    for key, value in choice.items():
        section, name = key.split(".")
        merged[section][name] = value
    sparsify = merged["sparsify"]
    sparsify["initial_sparsity"] = min(sparsify["initial_sparsity"], sparsify["final_sparsity"])
    return Params.model_validate(merged)


def chosen_params(params: Params, ws: Workspace) -> Params:
    """`params` as the stages after the search run them: with the chosen trial's keys (search
    off: as they are)."""
    if not params.search.enabled:
        return params
    if not ws.chosen.exists():
        raise InputError(f"stage input: {ws.chosen} does not exist; run the search stage first")
    return apply_choice(params, json.loads(ws.chosen.read_text())["keys"])


def search_refusal(ws: Workspace) -> Decision | None:
    """A gate refusal when the search found no trial within its budget, else None."""
    chosen = json.loads(ws.chosen.read_text())
    return None if chosen.get("feasible", True) else Decision(False, chosen["reason"])


def search_summary(ws: Workspace) -> str | None:
    """What the search chose and what it cost, in one line; None when it did not run."""
    return json.loads(ws.chosen.read_text()).get("summary")
