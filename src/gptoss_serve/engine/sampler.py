"""The sampler: one batched pass from logits to sampled tokens, each row with its own parameters.

Order per row: logit_bias, stop ids masked while `min_tokens` is not reached, OpenAI penalties over
the generated tokens (logit -= frequency * count + presence * [count > 0]); then temperature 0 is
argmax, otherwise logits / temperature, top-k, top-p (on the top-k renormalised distribution),
min-p (relative to the most likely token), and the Gumbel-max trick. The Gumbel noise comes from a
counter-based hash of (seed, sibling index, token index, vocabulary id), so a request with a seed
draws the same tokens whatever else is in the batch, and a recomputed (preempted) sequence
resamples exactly what it sampled before. Logprobs are those of the model's raw distribution
(log_softmax of the logits, before any processing). The whole step syncs with the host once.

Owns the maths of sampling; knows nothing of sequences, blocks or the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gptoss_serve.engine.constraint import apply_bitmask
from gptoss_serve.engine.request import SamplingParams, TokenLogprob
from gptoss_serve.engine.sequence import SampledToken
from gptoss_serve.kernels.logits_cpu import row_argmax

MAX_TOP_LOGPROBS = 20
TOP_CANDIDATES = 1024  # CPU truncation looks at this many best logits first (see _truncate)
WIDEN = 16  # then at this many times more, where that can be enough
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


@dataclass
class SamplingRow:
    """Host-side inputs of one row of the logits."""

    params: SamplingParams
    key: int  # 32-bit noise key, see noise_key()
    output_token_ids: list[int] = field(default_factory=list)  # for penalties
    banned_ids: tuple[int, ...] = ()  # stop ids masked because min_tokens is not reached
    constrained: bool = False  # a structured-output bitmask row comes with the step's masks


def noise_key(seed: int, index: int, token_index: int) -> int:
    """32-bit key of one sampling event (splitmix64 of the three numbers)."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + token_index) & _M64
    for _ in range(2):
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
        x ^= x >> 31
    return x & _M32


def _as_i32(x: torch.Tensor) -> torch.Tensor:
    """int64 tensor of 32-bit values -> int32 with the same bits (two's complement)."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


def _mix32_i32(x: torch.Tensor) -> torch.Tensor:
    """Integer finaliser on int32 bit patterns, in place: x ^= x >>> 16; x *= 0x7FEB352D;
    x ^= x >>> 15; x *= 0x5BD1E995; x ^= x >>> 16 (32-bit wrapping multiplies; the logical
    shifts done as arithmetic shifts plus a mask)."""
    tmp = torch.empty_like(x)
    for shift, factor in ((16, 0x7FEB352D), (15, 0x5BD1E995), (16, 0)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x ^= tmp.bitwise_and_((1 << (32 - shift)) - 1)
        if factor:
            x.mul_(factor)
    return x


def _top_k_min_p(srt: torch.Tensor, k: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask of sorted logits [R, C] outside top-k or below min-p (p_i < min_p * p_max)."""
    rank = torch.arange(srt.shape[1], device=srt.device)[None, :]
    return (rank >= k) | ((srt - srt[:, :1]).exp() < min_p)


def _top_p(kept: torch.Tensor, mask: torch.Tensor, p: torch.Tensor) -> None:
    """Adds to `mask` the tokens after the nucleus: the probability mass before them (`kept`,
    sorted, renormalised over the survivors of top-k and min-p) exceeds p. Keeps the best, and
    every token of rows with p >= 1 (a float cumsum can pass 1.0 before the last token)."""
    mask |= ((kept.cumsum(dim=-1) - kept) > p) & (p < 1)
    mask[:, 0] = False


def _truncate_sorted(scaled: torch.Tensor, limits: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """`Sampler._truncate` by sorting whole rows; limits: (top_k, top_p, min_p) [R, 1] each."""
    srt, idx = scaled.sort(dim=-1, descending=True)
    mask = _top_k_min_p(srt, limits[0], limits[2])
    kept = torch.softmax(srt.masked_fill(mask, float("-inf")), dim=-1)
    _top_p(kept, mask, limits[1])
    return torch.empty_like(scaled).scatter_(1, idx, srt.masked_fill(mask, float("-inf")))


def _truncate_rows(scaled: torch.Tensor, limits: tuple[torch.Tensor, ...],
                   width: int) -> torch.Tensor:
    """`_truncate_top` at `width`, then `WIDEN` times wider, then `_truncate_sorted` for the
    rows whose kept set may reach past their candidates."""
    if width > scaled.shape[1] // 8:
        return _truncate_sorted(scaled, limits)
    out, closed, reach = _truncate_top(scaled, width, limits)
    if bool(closed.all()):
        return out
    # `reach` bounds the mass of WIDEN x more candidates (none is likelier than the first left
    # out): rows without min-p that cannot reach top_p that way go straight to the full sort
    wider = ~closed & ((reach > limits[1]) | (limits[2] > 0))
    for rows, w in ((wider, width * WIDEN), (~closed & ~wider, scaled.shape[1])):
        todo = rows.nonzero()[:, 0]
        if len(todo):
            out[todo] = _truncate_rows(scaled[todo], tuple(t[todo] for t in limits), w)
    return out


def _truncate_top(scaled: torch.Tensor, width: int, limits: tuple[torch.Tensor, ...]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_truncate_sorted` over each row's `width` best logits; [R, 1] whether that is exact
    for the row (top_k <= width, or only min-p applies: a whole-row mask, no ranks, or min-p
    drops the next logit, or the candidates' kept mass already exceeds top_p); and [R, 1] an
    upper bound of the kept mass of `WIDEN` times more candidates."""
    k, p, min_p = limits
    top, idx = scaled.topk(width + 1, dim=-1)
    srt, probe = top[:, :width], top[:, width:]
    mask = _top_k_min_p(srt, k, min_p)
    whole = (scaled - srt[:, :1]).exp_()  # the normaliser: every survivor of min-p in the row,
    below = whole < min_p  # or only the candidates where top-k bounds the survivors
    whole = whole.masked_fill_(below, 0).sum(-1, keepdim=True)
    cand = (srt - srt[:, :1]).exp_().masked_fill_(mask, 0)
    bounded = k <= width
    norm = torch.where(bounded, cand.sum(-1, keepdim=True), whole)
    kept = cand / norm
    mass = kept.sum(-1, keepdim=True)
    reach = mass + (WIDEN - 1) * width * (probe - srt[:, :1]).exp() / norm
    _top_p(kept, mask, p)
    free = ~bounded & (p >= 1)
    closed = bounded | free | ((probe - srt[:, :1]).exp() < min_p) | (mass > p)
    out = torch.full_like(scaled, float("-inf"))
    out.scatter_(1, idx[:, :width], srt.masked_fill(mask, float("-inf")))
    if bool(free.any()):
        out = torch.where(free, scaled.masked_fill(below, float("-inf")), out)
    return out, closed, reach


def check_params(params: SamplingParams) -> None:
    """Raise ValueError when the sampler could not build its tensors for `params` (a number
    float32 or int64 cannot hold, a non-finite value): called at admission, so that such a
    request fails alone instead of failing the step of the whole batch."""
    bias_ids = [t for t, _ in params.logit_bias]
    floats = [params.temperature, params.top_p, params.top_k, params.min_p,
              params.frequency_penalty, params.presence_penalty,
              *(b for _, b in params.logit_bias)]
    try:
        values = torch.tensor(floats, dtype=torch.float64)
        torch.tensor(bias_ids, dtype=torch.int64)
        torch.tensor([params.max_tokens, params.min_tokens, params.logprobs or 0, params.n],
                     dtype=torch.int64)
    except (OverflowError, RuntimeError, TypeError) as exc:
        raise ValueError(f"a sampling parameter is out of range: {exc}") from None
    if not bool(values.abs().le(torch.finfo(torch.float32).max).all()):
        raise ValueError("a sampling parameter is not a finite float32 number")


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Index of each row's largest value, the first on ties (NaN counts as largest): what
    `argmax` returns; on CPU through the C `row_argmax` (one thread, two passes at memory
    speed), else through `max`'s indices."""
    fast = row_argmax(logits) if logits.device.type == "cpu" else None
    return fast if fast is not None else logits.max(dim=-1).indices


class Sampler:
    def __init__(self) -> None:
        self._vocab_hash: dict[tuple[int, str], torch.Tensor] = {}

    def sample(self, logits: torch.Tensor, rows: list[SamplingRow],
               masks: tuple[list[int], torch.Tensor] | None = None) -> list[SampledToken]:
        """logits: float32 [len(rows), V]. Returns one SampledToken per row. `masks`: the
        constrained rows and their bitmask (`engine/constraint.py`), applied after the other
        processing (so they win over logit_bias)."""
        if not rows:
            return []
        processed = self._process(logits, rows)
        if masks is not None:
            if processed is logits and any(r.params.logprobs is not None for r in rows):
                processed = logits.clone()  # logprobs are reported from the unmasked logits
            apply_bitmask(processed, *masks)
        chosen = self._choose(processed, rows)
        return self._collect(logits, chosen, rows)

    @staticmethod
    def argmax_only(rows: list[SamplingRow]) -> bool:
        """Whether `sample` reduces to `greedy(logits)` for every row: temperature 0, no
        logprobs, logit_bias, masked stop ids, penalties or constraint (then a model may find the
        argmax without every logit)."""
        return not any(r.constrained or r.params.temperature > 0 or r.params.logprobs is not None
                       or r.params.logit_bias or r.banned_ids or r.params.frequency_penalty
                       or r.params.presence_penalty for r in rows)

    # ---- logits processing ---------------------------------------------------------------------
    def _process(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        vocab = logits.shape[1]
        adds = [(i, t, b) for i, r in enumerate(rows) for t, b in r.params.logit_bias
                if 0 <= t < vocab]
        bans = [(i, t) for i, r in enumerate(rows) for t in r.banned_ids if 0 <= t < vocab]
        pen = [i for i, r in enumerate(rows)
               if r.params.frequency_penalty or r.params.presence_penalty]
        if not (adds or bans or pen):
            return logits
        out = logits.clone()
        if adds:
            i, t, b = zip(*adds, strict=True)
            out.index_put_(self._idx(out, i, t), self._f32(out, b), accumulate=True)
        if bans:
            i, t = zip(*bans, strict=True)
            out.index_put_(self._idx(out, i, t), torch.tensor(float("-inf"), device=out.device))
        if pen:
            self._penalise(out, [rows[i] for i in pen], pen)
        return out

    def _penalise(self, out: torch.Tensor, rows: list[SamplingRow], which: list[int]) -> None:
        vocab = out.shape[1]
        width = max(1, max(len(r.output_token_ids) for r in rows))
        ids = [r.output_token_ids + [vocab] * (width - len(r.output_token_ids)) for r in rows]
        ids_t = torch.tensor(ids, dtype=torch.int64).to(out.device, non_blocking=True)
        counts = torch.zeros(len(rows), vocab + 1, device=out.device)
        counts.scatter_add_(1, ids_t, torch.ones_like(ids_t, dtype=counts.dtype))
        counts = counts[:, :vocab]
        freq = self._f32(out, [r.params.frequency_penalty for r in rows])[:, None]
        pres = self._f32(out, [r.params.presence_penalty for r in rows])[:, None]
        sel = torch.tensor(which, dtype=torch.int64).to(out.device, non_blocking=True)
        out[sel] -= freq * counts + pres * (counts > 0).float()

    # ---- choosing ------------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        random_rows = [i for i, r in enumerate(rows) if r.params.temperature > 0]
        if not random_rows:
            return greedy(logits)
        sel = torch.tensor(random_rows, dtype=torch.int64).to(logits.device, non_blocking=True)
        sub = [rows[i] for i in random_rows]
        temp = self._f32(logits, [r.params.temperature for r in sub])[:, None]
        scaled = self._truncate(logits[sel] / temp, sub)
        gumbel = self._uniform(sub, logits.shape[1], logits.device).log_().neg_().log_().neg_()
        sampled = greedy(gumbel.add_(scaled))
        if len(random_rows) == len(rows):  # no greedy row: skip the full-vocabulary argmax
            return sampled
        return greedy(logits).index_copy(0, sel, sampled)

    def _truncate(self, scaled: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Mask (to -inf) what top-k, top-p and min-p exclude; the best token always survives.

        On CPU each row is first cut to its best `TOP_CANDIDATES` logits (or its top_k) with
        `topk`, which is exact when the row's kept set lies inside them (checked); rows where it
        may not are retried `WIDEN` times wider, then sorted in full. Other devices sort every
        row (there the check would be a host sync).
        """
        vocab = scaled.shape[1]
        ks = [r.params.top_k if r.params.top_k > 0 else vocab for r in rows]
        ps = [r.params.top_p for r in rows]
        mins = [r.params.min_p for r in rows]
        if all(k >= vocab for k in ks) and all(p >= 1 for p in ps) and not any(mins):
            return scaled
        limits = (self._f32(scaled, ks)[:, None], self._f32(scaled, ps)[:, None],
                  self._f32(scaled, mins)[:, None])
        if scaled.device.type != "cpu":
            return _truncate_sorted(scaled, limits)
        width = max([TOP_CANDIDATES] + [k for k in ks if k < vocab])
        return _truncate_rows(scaled, limits, width)

    def _uniform(self, rows: list[SamplingRow], vocab: int, device: torch.device) -> torch.Tensor:
        """Uniform (0, 1) noise [len(rows), vocab], a pure function of each row's key."""
        cache_key = (vocab, str(device))
        if cache_key not in self._vocab_hash:
            ids = torch.arange(vocab, dtype=torch.int64, device=device)
            self._vocab_hash[cache_key] = _mix32_i32(_as_i32((ids * 0x2545F491 + 0x3C6EF372)
                                                             & _M32))
        keys = _as_i32(torch.tensor([r.key for r in rows], dtype=torch.int64))
        bits = _mix32_i32(keys.to(device, non_blocking=True)[:, None]
                          ^ self._vocab_hash[cache_key][None, :])
        # 23 bits: (2**23 - 0.5) / 2**23 is a float32 below 1; with 24 bits the top value rounds
        # to 1.0, whose Gumbel noise is +inf (a uniformly random token about once in 80 steps
        # at this vocabulary, and NaN against a -inf masked logit)
        u = bits.bitwise_right_shift_(9).bitwise_and_(0x7FFFFF).float()
        return u.add_(0.5).div_(float(1 << 23))

    # ---- results (the one host sync) -----------------------------------------------------------
    def _collect(self, logits: torch.Tensor, chosen: torch.Tensor,
                 rows: list[SamplingRow]) -> list[SampledToken]:
        want = [r.params.logprobs for r in rows if r.params.logprobs is not None]
        if not want:
            return [SampledToken(int(t)) for t in chosen.tolist()]
        k = min(MAX_TOP_LOGPROBS, max(want), logits.shape[1])
        logp = torch.log_softmax(logits.float(), dim=-1)
        top_v, top_i = logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], chosen[:, None][:, :0])
        picked = logp.gather(1, chosen[:, None])
        packed = torch.cat([chosen[:, None].double(), picked.double(), top_i.double(),
                            top_v.double()], dim=1).tolist()
        return [self._token(row, r, k) for row, r in zip(packed, rows, strict=True)]

    @staticmethod
    def _token(packed: list[float], row: SamplingRow, k: int) -> SampledToken:
        token = int(packed[0])
        if row.params.logprobs is None:
            return SampledToken(token)
        n = min(row.params.logprobs, k)
        top = tuple((int(packed[2 + j]), packed[2 + k + j]) for j in range(n))
        return SampledToken(token, TokenLogprob(token, packed[1], top))

    # ---- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _f32(like: torch.Tensor, values) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float32).to(like.device, non_blocking=True)

    @staticmethod
    def _idx(like: torch.Tensor, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
        def t(v):
            return torch.tensor(list(v), dtype=torch.int64).to(like.device, non_blocking=True)
        return t(rows), t(cols)
