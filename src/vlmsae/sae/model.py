"""The sparse autoencoder: one module, pluggable sparsity, Matryoshka groups on top.

``codes = σ((x - b_dec) @ W_enc + b_enc)`` and ``x_hat = codes @ W_dec + b_dec``, where σ is

- ``relu``: ReLU (trained with an L1 penalty weighted by decoder norms);
- ``topk``: keep the k largest ReLU'd pre-activations of each example;
- ``batchtopk``: keep the k·B largest over a training batch of B examples; at inference
  keep those above a learned threshold (per example and deterministic);
- ``jumprelu``: keep pre-activations above a learned per-latent threshold.

Matryoshka groups split the latents into nested prefixes (the first ``group_ends[g]``
latents); the model reconstructs each prefix and the loss averages their errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmsae.core.errors import CheckpointError
from vlmsae.sae.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    describe_nonfinite,
    load_weights,
    read_config,
    save_sae,
    scale_biases_,
)
from vlmsae.sae.config import SAEConfig
from vlmsae.sae.scratch import release_thread_buffers, scratch
from vlmsae.sae.sparse import (
    ActiveLatents,
    decode_prefixes,
    decode_sparse,
    encode_at,
    jumprelu,
    select_batchtopk,
    select_threshold,
    select_topk,
)

ENCODE_MODES = ("threshold", "batch", "topk")


class SAEOutput(NamedTuple):
    """What :meth:`SAE.forward` returns (shapes for input ``[..., D]``)."""

    x_hat: Tensor
    """[..., D] reconstruction from all latents."""
    codes: Tensor | None
    """[..., S] dense codes (zero for inactive latents); ``None`` when not requested."""
    prefix_x_hats: tuple[Tensor, ...]
    """[..., D] reconstruction from each nested Matryoshka prefix; the last is ``x_hat``."""
    pre_acts: Tensor
    """[B, S] encoder pre-activations with leading dims flattened (differentiable only for
    ``relu`` / ``jumprelu``; AuxK and the BatchTopK threshold read them)."""
    active: ActiveLatents | None
    """Active entries of ``codes`` (``topk`` / ``batchtopk``), else ``None``."""
    prefix_GBD: Tensor | None = None
    """[G, B, D] the prefix reconstructions stacked (``prefix_x_hats`` are its rows) for the
    k-sparse variants, else ``None``; the training loss reads it in one pass."""


class SAE(nn.Module):
    """A sparse autoencoder. Build with ``SAE(SAEConfig(...))``, load with ``SAE.load(dir)``.

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]`` (unit-norm
    rows), ``b_dec [d_in]``, and ``threshold`` (BatchTopK: a scalar buffer, negative until
    training sets it; JumpReLU: a learned ``[d_sae]`` parameter).
    """

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.global_batch = False
        self._scratch_buffers: dict[str, Tensor] = {}  # see pre_acts(reuse_buffers=True)
        """BatchTopK batch mode selects over the global batch of all ranks (set by a
        data-parallel trainer; see :mod:`vlmsae.core.dist`)."""
        d, s = cfg.d_in, cfg.d_sae
        w_dec = torch.randn(s, d, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        # W_enc [d_in, d_sae] starts as the decoder's transpose and is *stored* as [d_sae, d_in]
        # (a transposed view): the sparse backward produces its gradient in that layout.
        self.W_enc = nn.Parameter(w_dec.clone().t())
        self.b_enc = nn.Parameter(torch.zeros(s))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if cfg.sparsity == "batchtopk":
            self.register_buffer("threshold", torch.tensor(-1.0))
        elif cfg.sparsity == "jumprelu":
            self.threshold = nn.Parameter(torch.full((s,), cfg.jumprelu_init_threshold))
        else:
            self.threshold = None

    # -- encoding ----------------------------------------------------------------------
    def pre_acts(self, x_BD: Tensor, *, reuse_buffers: bool = False) -> Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` as ``x @ W_enc + (b_enc - b_dec @ W_enc)``: the
        input never needs a centred copy and its product is the only dense one.

        ``reuse_buffers`` (no gradient): write into ``[B, S]`` buffers kept (per thread)
        from one call to the next instead of fresh ones (a fresh 200 MB tensor costs ~10 %
        of the product in page faults on a CPU); the result is overwritten by the next
        such call. The values are the same bit for bit."""
        device = x_BD.device.type
        if not reuse_buffers or torch.is_grad_enabled():
            if torch.is_autocast_enabled(device):  # low-precision product, fp32 bias
                return (x_BD @ self.W_enc).float() + self._enc_bias()
            return torch.addmm(self._enc_bias(), x_BD, self.W_enc)  # one pass: product + bias
        shape = (x_BD.shape[0], self.cfg.d_sae)
        out_BS = self._scratch("pre", shape, torch.float32, x_BD.device)
        if torch.is_autocast_enabled(device):  # the product autocast computes, then the bias
            low = torch.get_autocast_dtype(device)
            prod_BS = self._scratch("prod", shape, low, x_BD.device)
            torch.mm(x_BD.to(low), self.W_enc.to(low), out=prod_BS)
            bias_S = self._enc_bias()
            for lo in range(0, shape[0], 64):  # the fp32 sum, through cache-sized temporaries
                torch.add(prod_BS[lo : lo + 64], bias_S, out=out_BS[lo : lo + 64])
            return out_BS
        return torch.addmm(self._enc_bias(), x_BD, self.W_enc, out=out_BS)

    _scratch = staticmethod(scratch)  # see vlmsae.sae.scratch

    def release_buffers_(self) -> None:
        """Free the buffers ``reuse_buffers=True`` keeps (this thread's shared ``[B, S]``
        ones and this SAE's recycled gradients); the trainer calls it when training ends."""
        self._scratch_buffers.clear()
        release_thread_buffers()

    def _enc_bias(self) -> Tensor:
        with torch.autocast(self.W_enc.device.type, enabled=False):  # keep the bias in fp32
            return self.b_enc - self.b_dec @ self.W_enc

    def _default_mode(self) -> str:
        if self.cfg.sparsity != "batchtopk":
            return "topk"
        if self.training:
            return "batch"
        return "threshold" if float(self.threshold) >= 0 else "topk"

    def _select(self, pre_BS: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        if self.cfg.sparsity == "topk" or mode == "topk":
            return select_topk(pre_BS, self.cfg.k)
        if mode == "batch":
            return select_batchtopk(pre_BS, self.cfg.k, across_ranks=self.global_batch)
        if float(self.threshold) < 0:
            raise ValueError(
                "this BatchTopK SAE has no inference threshold yet (it is set during training "
                "from step threshold_start_step); use mode='batch' or mode='topk'"
            )
        return select_threshold(pre_BS, self.threshold)

    def _as_tensor(self, x: Any) -> Tensor:
        """A Tensor, NumPy array (a store slice ``store[i:j]``, memory-mapped float16
        included), scipy sparse matrix or nested list, as a tensor on the SAE's device."""
        if not isinstance(x, Tensor):
            if hasattr(x, "toarray"):  # scipy.sparse
                x = x.toarray()
            x = np.asarray(x)
            # read-only (memory-mapped) arrays are copied: torch cannot share them
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        return x.to(self.W_enc.device)

    def _check_input(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"input width {x.shape[-1]} does not match the SAE's d_in={self.cfg.d_in}"
            )
        return x.reshape(-1, self.cfg.d_in).to(self.W_enc.dtype)

    def _encode_2d(
        self, x_BD: Tensor, mode: str | None, reuse_buffers: bool = False
    ) -> tuple[Tensor, ActiveLatents | None]:
        """Pre-activations and, for the k-sparse variants, the active entries."""
        if mode is not None and mode not in ENCODE_MODES:
            raise ValueError(f"mode must be one of {ENCODE_MODES}, got {mode!r}")
        mode = mode or self._default_mode()
        if self.cfg.sparsity in ("relu", "jumprelu"):
            return self.pre_acts(x_BD), None
        with torch.no_grad():
            pre_BS = self.pre_acts(x_BD, reuse_buffers=reuse_buffers)
            rows, cols = self._select(pre_BS, mode)
        pool = self._scratch_buffers if reuse_buffers else None
        values = F.relu(
            encode_at(pre_BS, x_BD, self.W_enc, self.b_enc, self.b_dec, rows, cols, pool)
        )
        return pre_BS, ActiveLatents(rows, cols, values, x_BD.shape[0], self.cfg.d_sae)

    def _dense_codes(self, pre_BS: Tensor) -> Tensor:
        if self.cfg.sparsity == "relu":
            return F.relu(pre_BS)
        return F.relu(jumprelu(pre_BS, self.threshold, self.cfg.jumprelu_bandwidth))

    def encode(self, x: Tensor | Any, mode: str | None = None) -> Tensor:
        """Dense codes ``[..., d_sae]`` (a tensor) of inputs ``[..., d_in]``: a tensor, a
        NumPy array such as a store slice ``store[:100]``, or a scipy sparse matrix.

        ``mode`` (BatchTopK only): ``"threshold"`` (default once trained; per example),
        ``"batch"`` (the k·B largest over the batch, as in training) or ``"topk"`` (k per
        example; the default before a threshold exists).
        """
        x = self._as_tensor(x)
        x_BD = self._check_input(x)
        pre_BS, active = self._encode_2d(x_BD, mode)
        codes_BS = self._dense_codes(pre_BS) if active is None else active.to_dense()
        return codes_BS.reshape(*x.shape[:-1], self.cfg.d_sae)

    def encode_sparse(self, x: Tensor | Any, mode: str | None = None) -> ActiveLatents:
        """Active latents of inputs ``[..., d_in]`` (rows index the flattened leading dims)."""
        x_BD = self._check_input(self._as_tensor(x))
        pre_BS, active = self._encode_2d(x_BD, mode)
        if active is not None:
            return active
        codes_BS = self._dense_codes(pre_BS)
        rows, cols = codes_BS.nonzero(as_tuple=True)
        return ActiveLatents(rows, cols, codes_BS[rows, cols], x_BD.shape[0], self.cfg.d_sae)

    # -- decoding ----------------------------------------------------------------------
    def decode(self, codes: Tensor | ActiveLatents | Any) -> Tensor:
        """Reconstruction ``[..., d_in]`` (a tensor) of dense codes ``[..., d_sae]`` (a
        tensor, NumPy array or scipy sparse matrix) or of active entries."""
        if isinstance(codes, ActiveLatents):
            return decode_sparse(codes, self.W_dec) + self.b_dec
        codes = self._as_tensor(codes)
        if codes.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"codes have width {codes.shape[-1]}, the SAE has {self.cfg.d_sae}")
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(
        self,
        x: Tensor,
        mode: str | None = None,
        *,
        return_codes: bool = True,
        reuse_buffers: bool = False,
    ) -> SAEOutput:
        """Encode and decode, with every nested Matryoshka prefix reconstructed.

        ``return_codes=False`` skips building the dense ``[B, S]`` codes of the k-sparse
        variants (``out.codes`` is then ``None``; ``out.active`` has them); training does.
        ``reuse_buffers=True`` (k-sparse variants; training does): ``out.pre_acts``,
        ``out.x_hat`` and the prefix reconstructions live in buffers that the next such
        call overwrites (see :meth:`pre_acts`)."""
        x_BD = self._check_input(self._as_tensor(x))
        pre_BS, active = self._encode_2d(x_BD, mode, reuse_buffers)
        x_hat_BD, prefix_GBD = self.b_dec.expand_as(x_BD), None
        prefixes, lo = [], 0
        if active is None:
            codes_BS = self._dense_codes(pre_BS)
            for hi in self.cfg.group_ends:  # prefix g adds group g's contribution to g-1's
                x_hat_BD = x_hat_BD + codes_BS[:, lo:hi] @ self.W_dec[lo:hi]
                prefixes.append(x_hat_BD)
                lo = hi
        else:
            codes_BS = active.to_dense() if return_codes else None
            pool = self._scratch_buffers if reuse_buffers else None
            prefix_GBD = decode_prefixes(active, self.W_dec, self.b_dec, self.cfg.group_ends, pool)
            prefixes, x_hat_BD = list(prefix_GBD.unbind(0)), prefix_GBD[-1]
        lead = x.shape[:-1]
        return SAEOutput(
            x_hat=x_hat_BD.reshape(*lead, self.cfg.d_in),
            codes=None if codes_BS is None else codes_BS.reshape(*lead, self.cfg.d_sae),
            prefix_x_hats=tuple(p.reshape(*lead, self.cfg.d_in) for p in prefixes),
            pre_acts=pre_BS,
            active=active,
            prefix_GBD=prefix_GBD,
        )

    # -- constraints used by the trainer -----------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale every decoder row to unit norm."""
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min(1e-8))

    def recycle_grads_(self) -> None:
        """Drop the weight gradients (``zero_grad(set_to_none=True)``) but keep their
        storage for the next ``forward(..., reuse_buffers=True)``'s backward to write into
        (a fresh ``[S, D]`` gradient costs page faults on a CPU): a gradient read after
        the step is overwritten by the next one."""
        k_sparse = self.cfg.sparsity in ("topk", "batchtopk")  # the only users
        if self.W_enc.grad is not None and k_sparse:
            self._scratch_buffers["grad:W_enc"] = self.W_enc.grad.t()  # [S, D] storage
        if self.W_dec.grad is not None and k_sparse:
            self._scratch_buffers["grad:W_dec"] = self.W_dec.grad
        for p in self.parameters():
            p.grad = None

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component parallel to each decoder row (it would only change
        the row's norm, which :meth:`normalize_decoder_` undoes)."""
        if self.W_dec.grad is None:
            return
        w, g = self.W_dec, self.W_dec.grad
        norm_sq_S = torch.linalg.vector_norm(w, dim=1).square()
        dot_S = torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1)  # no [S, D] temporary
        coef_S1 = (dot_S / norm_sq_S).unsqueeze(1)
        g.addcmul_(coef_S1, w, value=-1.0)

    @torch.no_grad()
    def scale_biases_(self, scale: float) -> None:
        """Multiply biases and thresholds by ``scale``: an SAE trained on ``x / scale`` then
        encodes raw ``x`` to ``scale`` × its codes and reconstructs raw ``x`` (how a trainer
        folds its input normalisation back into the weights)."""
        scale_biases_(self.state_dict(), scale, threshold=self.has_threshold)

    @property
    def has_threshold(self) -> bool:
        """A threshold is in use: JumpReLU's, or a BatchTopK one set by training (>= 0)."""
        if self.cfg.sparsity == "jumprelu":
            return True
        return self.cfg.sparsity == "batchtopk" and float(self.threshold) >= 0

    # -- checkpoints -------------------------------------------------------------------
    def save(self, path: str | Path, **extra: object) -> Path:
        """Write ``config.json`` and ``sae.safetensors`` into directory ``path``."""
        return save_sae(self, path, **extra)

    def save_pretrained(self, path: str | Path, **extra: object) -> Path:
        """:meth:`save`, by the name transformers and SAELens users type; the folder loads
        with :meth:`from_pretrained` / :meth:`load`."""
        return self.save(path, **extra)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> SAE:
        """Load a checkpoint directory written by :meth:`save` (never unpickles); a hub id or
        an SAELens / dictionary_learning folder works too (see :meth:`from_pretrained`)."""
        from vlmsae.formats.hub import load_pretrained

        return load_pretrained(path, device=str(device))

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path,
        subfolder: str | None = None,
        revision: str | None = None,
        **kwargs: object,
    ) -> SAE:
        """An SAE from a hub repository (``org/name``) or a local folder, in vlmsae, SAELens
        or dictionary_learning format; ``kwargs``: ``device``, ``cache_dir``, ``token``
        (see :func:`vlmsae.formats.hub.load_pretrained`)."""
        from vlmsae.formats.hub import load_pretrained

        return load_pretrained(id_or_path, subfolder, revision, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: object) -> str:
        """Upload this SAE (``config.json`` + ``sae.safetensors``) to hub repository
        ``repo_id``; ``kwargs``: ``private``, ``token``, ``revision``, ``path_in_repo``,
        ``commit_message``. Returns the commit URL."""
        from vlmsae.formats.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def extra_repr(self) -> str:
        c = self.cfg
        groups = f", groups={list(c.group_sizes)}" if c.is_matryoshka else ""
        k = f", k={c.k}" if c.sparsity in ("topk", "batchtopk") else ""
        return f"d_in={c.d_in}, d_sae={c.d_sae}, sparsity={c.sparsity}{k}{groups}"


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> Any:
    """Load an SAE from a checkpoint directory (``config.json`` + ``sae.safetensors``)."""
    path = Path(path)
    config = read_config(path)
    try:
        cfg = SAEConfig.from_dict(config["sae"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path / CONFIG_FILE}: its 'sae' section is not a valid SAE config "
            f"({type(e).__name__}: {e}); restore the file or save the SAE again"
        ) from e
    weights_path = path / WEIGHTS_FILE
    tensors = load_weights(path, config, device=str(device))  # checked against its checksum
    with torch.device("meta"):
        sae = SAE(cfg)  # shapes only: the weights come from the file
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise CheckpointError(
            f"{weights_path} does not match its config ({cfg.sparsity}, d_in={cfg.d_in}, "
            f"d_sae={cfg.d_sae}): expected tensors {expected}, found {found}"
        )
    if problem := describe_nonfinite(tensors):
        raise CheckpointError(
            f"{weights_path} holds non-finite weights ({problem}): the training diverged or "
            "the file is damaged; use an earlier checkpoint or train again"
        )
    tensors["W_enc"] = tensors["W_enc"].t().contiguous().t()  # the SAE's [d_sae, d_in] storage
    sae.load_state_dict(tensors, assign=True)
    return sae.eval()
