"""The one place that imports sae-lens, with the install hint when it is missing.

Everything else in :mod:`tlsteer.sae` sees only what it needs of an SAE (``encode``, ``decode``,
``W_dec``, ``cfg.d_in``, ``cfg.d_sae`` and the hook name), so any sae-lens architecture works.
"""

from __future__ import annotations

INSTALL_HINT = 'tlsteer.sae needs sae-lens; install it with: pip install "tlsteer[sae]"'

try:
    import sae_lens
except ModuleNotFoundError as err:  # the optional extra is not installed
    raise ModuleNotFoundError(f"{INSTALL_HINT} ({err})", name=err.name) from err

SAE = sae_lens.SAE

__all__ = ["INSTALL_HINT", "SAE", "sae_lens"]
