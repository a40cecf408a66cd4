"""Offline accuracy evaluation (`sirius-local eval`): the same problems through dense, sparse and Sirius decoding,
scored, summarised with confidence intervals and plotted. Data comes from PyPI packages only (the `eval` extra)."""
