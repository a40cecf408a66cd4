"""The correction loop's figures, derived from its raw counters in one place: LLM's per-call stats, bench's
pooled repeats, the eval's summary and benchmarks/aal_sweep.py all call these.

* AAL: tokens advanced per verification (of K);
* effective density: full-model weight passes per generated token (a sparse draft step reads
  sparse_param_fraction of one, a verification or a dense step one);
* acceptance rate: accepted drafts over judged ones (a draft is judged when every draft before it passed);
* agreement with dense: the share of the dense tokens reproduced before the first difference.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def aal(advanced: int, periods: int) -> float | None:
    return advanced / periods if periods else None


def effective_density(reads: float, tokens: int) -> float | None:
    return reads / tokens if tokens else None


def accept_rate(accepted: int, rejected: int) -> float | None:
    return accepted / (accepted + rejected) if accepted + rejected else None


def prefix_agreement(ids: Sequence[int], dense_ids: Sequence[int]) -> float:
    n = 0
    for a, b in zip(ids, dense_ids):
        if a != b:
            break
        n += 1
    return n / len(dense_ids) if dense_ids else 1.0


def pooled(calls: Iterable[dict]) -> dict:
    """AAL, effective density and acceptance rate over several calls' stats, from their summed counters (not an
    average of per-call ratios, which would weigh a short call like a long one)."""
    calls = list(calls)

    def total(key):
        return sum(c.get(key) or 0 for c in calls)

    return {"aal": aal(total("advanced"), total("periods")),
            "effective_density": effective_density(total("parameter_reads"), total("loop_tokens")),
            "accept_rate": accept_rate(total("accepted"), total("corrections"))}
