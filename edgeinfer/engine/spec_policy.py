"""Speculation policy: how many drafts a pass carries, where a draft model stops, and whether
speculation is worth it at all. Mechanism lives elsewhere (proposers.py makes drafts, verify.py judges
them); a policy only chooses.

- `FixedPolicy` (the default): `draft_max` drafts per pass (as many as fit), a draft model stopping at
  the first draft whose confidence (top probability) falls under `draft_p_min` (llama.cpp's rule).
  No clock: the same request gives the same drafts on every run.
- `AdaptivePolicy` (opt-in, `SpecConfig(adaptive=True)`): a `Tuner` over a `CostModel` measured as it
  runs, through an injected clock (tests pass a fake one and drive it deterministically).

Self-tuning (`Tuner`, `CostModel`, `Calibration`): costs per LLM, measured as it runs (seconds of a
pass of m tokens, m = 1 being a plain decode step, and of a draft step; low quantiles, so that other
programs' load does not sway the choices); how often a draft model's drafts stand at each confidence
(per LLM); the acceptance of n-gram drafts (per sequence). n-gram rounds draft the k that maximizes
E[tokens] / (t_lookup + t_pass(k+1)) with E[tokens] = (1 - a^(k+1)) / (1 - a); a draft model drafts
while one more draft raises the expected tokens per second. When recent rounds yield fewer tokens per
second than plain decoding (1 / t_pass(1)), speculation is off for the sequence, and probed again after
a cooldown that doubles while it keeps not paying.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgeInferError

MODES = ("draft", "ngram")


@dataclass
class SpecConfig:
    """Speculation settings. draft_max: the most tokens drafted per pass; draft_p_min: a draft model
    stops drafting at a draft whose top probability falls under this (None: never on that account);
    ngram_min, ngram_max: the n-gram lengths looked up (longest first); adaptive: let a tuner choose
    the draft length from measured costs and turn speculation off when it does not pay (default off:
    a fixed draft length); reprobe: with adaptive, try again after a cooldown once off."""

    draft_max: int = 16
    draft_p_min: float | None = 0.75
    ngram_min: int = 2
    ngram_max: int = 4
    adaptive: bool = False
    reprobe: bool = True

    def validate(self) -> "SpecConfig":
        for name in ("draft_max", "ngram_min", "ngram_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EdgeInferError(f"{name} must be a positive integer, got {v!r}.")
        if self.ngram_min > self.ngram_max:
            raise EdgeInferError(f"ngram_min ({self.ngram_min}) must not exceed ngram_max ({self.ngram_max}).")
        p = self.draft_p_min
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0):
            raise EdgeInferError(f"draft_p_min must be None or a number in [0, 1], got {p!r}.")
        return self


class Calibration:
    """How often a draft model's draft stands, by its confidence (top probability): decayed counts per
    band, shared by the requests of one LLM (a property of the model pair). A band with few
    observations leans on the overall rate (optimistic enough to get explored)."""

    EDGES = np.array([0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97])
    DECAY = 0.99  # per observation in a band
    PRIOR_ALPHA, PRIOR_WEIGHT = 0.6, 2.0

    def __init__(self):
        n = len(self.EDGES) + 1
        self.accepted = np.zeros(n)
        self.seen = np.zeros(n)
        self.total_accepted = 0.0
        self.total_seen = 0.0

    def band(self, confidence: float) -> int:
        return int(np.searchsorted(self.EDGES, confidence, side="right"))

    @property
    def overall(self) -> float:
        return (self.total_accepted + self.PRIOR_ALPHA * self.PRIOR_WEIGHT) / (self.total_seen + self.PRIOR_WEIGHT)

    def estimate(self, confidence: float) -> float:
        b = self.band(confidence)
        lo = self.EDGES[b - 1] if b > 0 else 0.0
        hi = self.EDGES[b] if b < len(self.EDGES) else 1.0
        prior = max(0.5 * (lo + hi), self.overall)
        return float((self.accepted[b] + prior * 2.0) / (self.seen[b] + 2.0))

    def observe(self, confidence: float, accepted: bool) -> None:
        b = self.band(confidence)
        self.accepted[b] = self.DECAY * self.accepted[b] + float(accepted)
        self.seen[b] = self.DECAY * self.seen[b] + 1.0
        self.total_accepted = 0.998 * self.total_accepted + float(accepted)
        self.total_seen = 0.998 * self.total_seen + 1.0


class CostModel:
    """Seconds measured on this machine, shared by the requests of one LLM: a pass of m tokens with its
    verification (m = 1: a plain decode step), one draft step, one n-gram lookup; and the draft's
    calibration.

    Every figure tracks a low quantile of its readings (it follows a faster reading at once and a
    slower one only slowly): what the work costs on this machine when nothing else runs. Other programs'
    load slows every pass alike and would otherwise make the tuner's choices follow the noise; the
    choices compare costs, and the on/off judgement compares what a round yielded against these costs,
    so a busy moment changes neither.

    A pass length's cost is a straight line a + b (m - 1), fitted to every length measured (weighted by
    how often, up to 10), pulled towards that length's own figure as it is measured more often (the
    kernels' token tiles make some lengths cheaper than the line): one odd reading neither sticks to a
    length nor keeps the tuner from trying it again. Before two lengths are known the slope is a prior,
    0.3 x t(1) per extra token. A draft step that feeds two tokens (the last draft and the bonus token,
    after a pass that kept every draft) has its own figure."""

    PRIOR_SLOPE = 0.3
    DOWN, UP = 0.3, 0.03  # how far a reading below / above the figure moves it
    TRUST = 3.0  # readings of a length at which its own figure and the line weigh the same

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock  # when each pass length was last measured (age(): a stale t(1) is measured again)
        self.passes: dict[int, float] = {}  # m -> moving average of its seconds
        self.counts: dict[int, int] = {}
        self.passes_at: dict[int, float] = {}  # clock() of each pass length's latest measurement
        self.steps: dict[int, float] = {}  # tokens fed (1 or 2) -> seconds of a draft step
        self.lookup: float = 0.0  # seconds of one n-gram lookup (a round, not per token)
        self.calibration = Calibration()
        self.cooldowns: dict[str, int] = {}  # kind -> the first cooldown of a new sequence (Tuner)
        self.frozen = False  # nominal costs that measurements do not change (see nominal())
        self._line: tuple[float, float] | None = None

    @property
    def draft_step(self) -> float | None:
        """Seconds of a draft step that feeds one token."""
        return self.steps.get(1)

    def step_cost(self, n_fed: int) -> float:
        one = self.steps.get(1, 0.0)
        return self.steps.get(n_fed, one * n_fed) if n_fed > 1 else one

    @classmethod
    def nominal(cls, draft_ratio: float = 0.0, max_pass: int = 257) -> "CostModel":
        """Costs in units of a plain decode step that no measurement changes, for a seeded sampled
        request: a pass of m tokens costs 1 + 0.3 (m - 1), a draft step `draft_ratio` (the draft's
        bytes of weights over the model's: decoding reads each once per token). The tuner's choices
        then depend on the request's own tokens only, so the seed gives the same text every run."""
        c = cls()
        c.passes = {1: 1.0}
        c.counts = {1: 1}
        c._line = (1.0, cls.PRIOR_SLOPE)
        c.steps = {1: float(draft_ratio), 2: 1.5 * float(draft_ratio)}
        c.frozen = True
        return c

    def _track(self, old: float | None, new: float) -> float:
        if old is None:
            return new
        return old + (self.DOWN if new < old else self.UP) * (new - old)

    def observe_pass(self, m: int, seconds: float) -> None:
        if not self.frozen:
            self.passes[m] = self._track(self.passes.get(m), seconds)
            self.counts[m] = self.counts.get(m, 0) + 1
            self.passes_at[m] = self.clock()
            self._line = None

    def observe_draft_step(self, seconds: float, n_fed: int = 1) -> None:
        if not self.frozen:
            self.steps[n_fed] = self._track(self.steps.get(n_fed), seconds)

    def observe_lookup(self, seconds: float) -> None:
        if not self.frozen:
            self.lookup = self._track(self.lookup or None, seconds)

    def age(self, m: int) -> float:
        """Seconds since a pass of m tokens was last measured (inf: never; 0 for nominal costs)."""
        if self.frozen:
            return 0.0
        return self.clock() - self.passes_at[m] if m in self.passes_at else math.inf

    def line(self) -> tuple[float, float] | None:
        """(t(1), seconds per extra token) of the fitted line; None before t(1) is measured."""
        if self._line is None and 1 in self.passes:
            ms = sorted(self.passes)
            if len(ms) == 1:
                self._line = (self.passes[1], self.PRIOR_SLOPE * self.passes[1])
            else:
                x = np.array(ms, np.float64) - 1.0
                y = np.array([self.passes[m] for m in ms])
                w = np.array([min(self.counts.get(m, 1), 10) for m in ms], np.float64)
                xm, ym = np.average(x, weights=w), np.average(y, weights=w)
                var = np.average((x - xm) ** 2, weights=w)
                b = max(float(np.average((x - xm) * (y - ym), weights=w) / var), 0.0) if var > 0 else 0.0
                self._line = (float(ym - b * xm), b)
        return self._line

    def t_pass(self, m: int) -> float | None:
        """Seconds of a pass of m tokens (with its verification); None before a plain step is measured."""
        line = self.line()
        if line is None:
            return None
        fit = max(line[0] + line[1] * (m - 1), 1e-9)
        n = self.counts.get(m, 0)
        if n == 0:
            return fit
        w = n / (n + self.TRUST)
        return w * self.passes[m] + (1.0 - w) * fit


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a pass with k drafts yields when each draft stands with probability alpha (independently):
    1 + alpha + ... + alpha^k."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


class Tuner:
    """One sequence's draft length and on/off switch.

    - n-gram drafts: each stands with probability alpha (decayed counts of this sequence's rounds, a
      prior of 0.6); the pass drafts the k maximizing E[tokens](alpha, k) / (t_lookup + t_pass(k+1)).
    - draft-model drafts: decided position by position. Each draft step is taken only while it is
      expected to raise the pass's tokens per second (`proceed`: its chance to stand, all drafts before
      it too, estimated from the draft's calibration at the last draft's confidence, against a draft
      step and the pass's growth by one token); a draft it made is verified unless its own confidence
      says the pass's growth is not worth it (`include`).
    - on/off: the tokens recent speculative rounds yielded over what they cost (their draft steps and
      passes, by the cost model) against a plain decode step's 1 / t_pass(1). Below it, speculation is
      off for `cooldown` tokens, then a probe of a few rounds; the cooldown doubles (16 .. 512) while it
      keeps not paying. The first cooldown of a sequence is learned per LLM: it doubles with each
      judgement that speculation does not pay (up to 256) and halves with each that it does.
    """

    PRIOR_ALPHA = 0.6  # belief before any evidence, worth PRIOR_WEIGHT rounds
    PRIOR_WEIGHT = 2.0
    DECAY = 0.85  # per round: recent rounds weigh most
    RATE_DECAY = 0.8  # per round, for the measured rate
    COOLDOWN = 16
    MAX_COOLDOWN = 512
    MAX_START = 256  # the first cooldown of a sequence, learned per LLM (a draft's catch-up after a
    # cooldown costs about a tenth of the plain steps it skipped: where probes keep failing, fewer)
    K_START = 4  # the first pass of a cold cost model
    MIN_ROUNDS = 3  # measured rounds (of a request, or of a probe) before it may be judged not to pay
    REFRESH_S = 5.0  # a plain step when t_pass(1) is older than this: the machine's speed drifts

    def __init__(self, costs: CostModel, cfg: SpecConfig, kind: str):
        self.costs, self.cfg, self.kind = costs, cfg, kind
        self.successes = 0.0  # decayed counts of drafts accepted, and of rounds that ended in a rejection
        self.failures = 0.0
        self.rounds = 0
        self.rate_tokens = 0.0  # decayed sums over speculative rounds: tokens yielded, seconds spent
        self.rate_seconds = 0.0
        self.rate_rounds = 0
        self.off = False
        self.was_off = False
        self.cooldown = costs.cooldowns.get(kind, self.COOLDOWN)
        self.off_left = 0
        self.k_last = 0
        self._E = self._T = self._P = 0.0

    @property
    def alpha(self) -> float:
        a0, w = self.PRIOR_ALPHA, self.PRIOR_WEIGHT
        return (self.successes + a0 * w) / (self.successes + self.failures + w)

    def rate(self, k: int) -> float | None:
        """Expected tokens per second with k n-gram drafts (k = 0: plain decoding); None before t(1) is known."""
        t1 = self.costs.t_pass(1)
        if t1 is None:
            return None
        if k == 0:
            return 1.0 / t1
        return expected_tokens(self.alpha, k) / (self.costs.lookup + self.costs.t_pass(k + 1))

    def best_k(self, k_cap: int) -> int:
        ks = range(1, max(1, min(self.cfg.draft_max, k_cap)) + 1)
        return max(ks, key=lambda k: self.rate(k))

    def measured_rate(self) -> float | None:
        return self.rate_tokens / self.rate_seconds if self.rate_seconds > 0 else None

    def draft_length(self, k_cap: int) -> int:
        """The most drafts for the next pass (0: a plain step), at most k_cap."""
        if k_cap <= 0:
            return 0
        if not self.cfg.adaptive:
            return min(self.cfg.draft_max, k_cap)
        if self.costs.t_pass(1) is None or self.costs.age(1) > self.REFRESH_S:
            return 0  # measure a plain step (first, and now and then: what speculation must beat)
        if self.off:
            if self.off_left > 0 or not self.cfg.reprobe:
                self.off_left -= 1
                return 0
            self.off = False  # a probe: MIN_ROUNDS speculative rounds, then judged again
            self.rate_tokens *= 0.2
            self.rate_seconds *= 0.2
            self.rate_rounds = 0
            self.successes *= 0.25
            self.failures *= 0.25
        cap = min(self.cfg.draft_max, k_cap)
        if self.kind == "draft":
            k = cap  # include() and proceed() decide where to stop
        elif self.rounds == 0:
            k = min(self.K_START, cap)
        else:
            k = self.best_k(k_cap)
        self.k_last = k
        return k

    def begin_round(self) -> None:
        """A draft-model round starts: its first draft step is taken (the tuner chose k > 0)."""
        self._E, self._P = 1.0, 1.0  # expected tokens of the pass, chance that every draft so far stands
        t1, step = self.costs.t_pass(1), self.costs.draft_step
        self._T = (t1 or 0.0) + (step or 0.0)  # expected seconds of the round

    def _warm(self) -> bool:
        return self.costs.draft_step is not None and self.costs.t_pass(1) is not None

    def include(self, i: int, confidence: float) -> bool:
        """Whether draft i (1-based, already made, with this confidence) is worth verifying: the pass
        grows by one token."""
        if not self.cfg.adaptive or not self._warm():
            return True
        P = self._P * self.costs.calibration.estimate(confidence)
        E = self._E + P
        T = self._T + max(self.costs.t_pass(i + 1) - self.costs.t_pass(i), 0.0)
        if E * self._T < self._E * T:  # E / T < self._E / self._T: verifying it lowers the rate
            return False
        self._E, self._T, self._P = E, T, P
        return True

    def proceed(self, i: int, confidence: float) -> bool:
        """Whether to take draft step i + 1 after draft i (with this confidence): the next draft's chance
        is guessed from this one's confidence; its cost is a draft step and one more token in the pass."""
        if not self.cfg.adaptive:
            return True
        if not self._warm():
            return i < self.K_START  # cold: a short first pass, which measures the costs
        P = self._P * self.costs.calibration.estimate(confidence)
        E = self._E + P
        T = self._T + self.costs.draft_step + max(self.costs.t_pass(i + 2) - self.costs.t_pass(i + 1), 0.0)
        if E * self._T < self._E * T:
            return False
        self._T += self.costs.draft_step  # the step is taken; include() adds the pass's growth
        return True

    def observe(self, n_drafted: int, n_accepted: int) -> None:
        """Acceptance of a verified pass: n_drafted drafts, the first n_accepted of them kept."""
        if n_drafted <= 0:
            return
        self.rounds += 1
        d = self.DECAY
        self.successes = d * self.successes + n_accepted
        self.failures = d * self.failures + (1.0 if n_accepted < n_drafted else 0.0)

    def observe_round(self, n_tokens: int, seconds: float) -> None:
        """A speculative round (drafting included) yielded n_tokens in `seconds`: judge whether it pays."""
        d = self.RATE_DECAY
        self.rate_tokens = d * self.rate_tokens + n_tokens
        self.rate_seconds = d * self.rate_seconds + seconds
        self.rate_rounds += 1
        if not self.cfg.adaptive or self.rate_rounds < self.MIN_ROUNDS:
            return
        t1 = self.costs.t_pass(1)
        if t1 is None:
            return
        starts = self.costs.cooldowns  # per LLM: the first cooldown of the next sequences
        if self.measured_rate() < 1.0 / t1:
            self.off = self.was_off = True
            self.off_left = self.cooldown
            self.cooldown = min(2 * self.cooldown, self.MAX_COOLDOWN)
            starts[self.kind] = min(2 * starts.get(self.kind, self.COOLDOWN), self.MAX_START)
        else:
            self.cooldown = self.COOLDOWN
            starts[self.kind] = max(starts.get(self.kind, self.COOLDOWN) // 2, self.COOLDOWN)


# -- policies ------------------------------------------------------------------------------------------------


class FixedPolicy:
    """draft_max drafts per pass (as many as the reply and the context leave room for); a draft model
    stops at a draft under draft_p_min. Reads no clock."""

    adaptive = False
    was_off = False
    tuner = None

    def __init__(self, cfg: SpecConfig, kind: str):
        self.cfg, self.kind = cfg, kind

    def draft_length(self, k_cap: int) -> int:
        return min(self.cfg.draft_max, k_cap) if k_cap > 0 else 0

    def decide(self, i: int, confidence: float) -> tuple[bool, bool]:
        p = self.cfg.draft_p_min
        keep = p is None or confidence >= p
        return keep, keep

    def begin(self) -> None:
        pass

    def proposed(self, fed: Sequence[int]) -> None:
        pass

    def verified(self, n_drafts: int, n_accepted: int, confidences: Sequence[float]) -> None:
        pass

    def observe_pass(self, m: int, seconds: float) -> None:
        pass

    def observe_round(self, n_tokens: int, n_drafts: int) -> None:
        pass


class AdaptivePolicy:
    """The Tuner's choices over a CostModel, timed with `clock` (seconds; tests inject a fake one)."""

    adaptive = True

    def __init__(self, costs: CostModel, cfg: SpecConfig, kind: str, clock: Callable[[], float] = time.perf_counter):
        self.costs, self.cfg, self.kind, self.clock = costs, cfg, kind, clock
        self.tuner = Tuner(costs, cfg, kind)
        self._t0 = self._t = 0.0
        self._steps: list[float] = []
        self._fed: list[int] = []  # tokens fed by the latest proposal's draft steps (catch-ups left out)

    @property
    def was_off(self) -> bool:
        return self.tuner.was_off

    def draft_length(self, k_cap: int) -> int:
        return self.tuner.draft_length(k_cap)

    def begin(self) -> None:
        self._t0 = self._t = self.clock()
        self._steps = []
        if self.kind == "draft":
            self.tuner.begin_round()

    def decide(self, i: int, confidence: float) -> tuple[bool, bool]:
        now = self.clock()
        self._steps.append(now - self._t)
        self._t = now
        p = self.cfg.draft_p_min
        keep = (p is None or confidence >= p) and self.tuner.include(i, confidence)
        return keep, keep and self.tuner.proceed(i, confidence)

    def proposed(self, fed: Sequence[int]) -> None:
        """The proposal is made: a draft model's steps (tokens fed by each) or a lookup are costed."""
        if self.kind == "draft":
            self._fed = [n for n in fed if n <= 2]
            for n, s in zip(fed, self._steps):
                if n <= 2:  # catch-ups over more tokens, after plain steps, are left out
                    self.costs.observe_draft_step(s, n)
        else:
            self._fed = []
            self.costs.observe_lookup(self.clock() - self._t0)

    def verified(self, n_drafts: int, n_accepted: int, confidences: Sequence[float]) -> None:
        self.tuner.observe(n_drafts, n_accepted)
        calib = self.costs.calibration
        for i, c in enumerate(confidences[: n_accepted + 1]):  # up to the first rejection
            calib.observe(c, i < n_accepted)

    def observe_pass(self, m: int, seconds: float) -> None:
        self.costs.observe_pass(m, seconds)

    def round_cost(self, n_drafts: int) -> float:
        """What the latest round cost by the cost model (not the clock): its draft steps (or lookup)
        and a pass over n_drafts + 1 tokens."""
        c = self.costs
        steps = sum(c.step_cost(n) for n in self._fed)
        return steps + (c.lookup if self.kind == "ngram" else 0.0) + (c.t_pass(n_drafts + 1) or 0.0)

    def observe_round(self, n_tokens: int, n_drafts: int) -> None:
        """A round that drafted (or tried to) yielded n_tokens: judged on its cost by the cost model, so
        that others' load on the machine does not sway the judgement."""
        self.tuner.observe_round(n_tokens, self.round_cost(n_drafts))


def make_policy(cfg: SpecConfig, kind: str, costs: CostModel | None = None, clock: Callable[[], float] | None = None):
    """FixedPolicy, or AdaptivePolicy when cfg.adaptive (over `costs`, shared per LLM)."""
    if cfg.adaptive:
        return AdaptivePolicy(costs if costs is not None else CostModel(), cfg, kind, clock or time.perf_counter)
    return FixedPolicy(cfg, kind)


__all__ = ["MODES", "AdaptivePolicy", "Calibration", "CostModel", "FixedPolicy", "SpecConfig", "Tuner",
           "expected_tokens", "make_policy"]  # fmt: skip
