"""SAE codes for code stores: sparse rows straight from the SAE, and its source hook point."""

from __future__ import annotations

from typing import TYPE_CHECKING

import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE


def sae_source(sae: SAE) -> int | str | None:
    """The hook point an SAE's config records (``hookpoint`` / ``layer``), if any."""
    cfg = getattr(sae, "cfg", None)
    sources = [cfg, getattr(cfg, "source", None), getattr(sae, "source", None)]
    for src in sources:
        get = src.get if isinstance(src, dict) else (lambda k, s=src: getattr(s, k, None))
        if src is None:
            continue
        if get("hookpoint") == "post_projection":
            return "post_projection"
        if get("layer") is not None:
            return int(get("layer"))
    return None


@torch.inference_mode()
def sae_codes(sae: SAE, acts_RD: torch.Tensor, chunk_rows: int = 4096) -> sp.csr_matrix:
    """SAE codes of ``acts_RD`` as a CSR matrix ``[R, d_sae]``, encoded ``chunk_rows`` at a
    time so that no dense ``R x d_sae`` array is held for long (none at all when the SAE
    has ``encode_sparse``, as ``vlmsae.SAE`` does)."""
    params = list(sae.parameters()) if hasattr(sae, "parameters") else []
    dtype = params[0].dtype if params else torch.float32
    parts = []
    for lo in range(0, acts_RD.shape[0], chunk_rows):
        x_RD = acts_RD[lo : lo + chunk_rows].to(dtype)
        n_rows = x_RD.shape[0]
        if hasattr(sae, "encode_sparse"):  # entries sorted by row, then latent
            active = sae.encode_sparse(x_RD)
            row_N, col_N, val_N, d_sae = active.rows, active.cols, active.values, active.n_latents
        else:
            codes_RS = sae.encode(x_RD)
            row_N, col_N = codes_RS.nonzero(as_tuple=True)  # row-major: CSR order
            val_N, d_sae = codes_RS[row_N, col_N], codes_RS.shape[-1]
        keep_N = val_N != 0  # a selected latent can still be 0 after the ReLU
        row_N, col_N, val_N = row_N[keep_N], col_N[keep_N], val_N[keep_N]
        indptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=row_N.device)
        indptr[1:] = torch.bincount(row_N, minlength=n_rows).cumsum(0)
        parts.append(
            sp.csr_matrix(
                (
                    val_N.float().cpu().numpy(),
                    col_N.cpu().numpy(),
                    indptr.cpu().numpy(),
                ),
                shape=(n_rows, int(d_sae)),
            )
        )
    return sp.vstack(parts, format="csr")
