"""ZO optimizers that turn the two-point estimate into an update rule with state: the ZO-Bench family.

ZO-Bench (Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark", arXiv 2402.11592) compares ZO-SGD, ZO-SGD with momentum, ZO-SGD-Sign, ZO-SGD-Conserve and
ZO-Adam. All of them share ZOSGD's perturbation engine (the seeded or counter-based noise, learned block
scales, the skip of non-finite steps); they differ only in what they do with the estimate

    ĝ = (1/q) Σ_i g_i s ⊙ z_i,   g_i = (L(θ + ε s⊙z_i) − L(θ − ε s⊙z_i)) / (2ε),

which is regenerated tensor by tensor from the seeds (never stored whole). q > 1 (`queries`) averages q
directions per step (2q forward passes); query 0 uses the seed plain ZOSGD would use, so with q = 1 the
directions are MeZO's. Weight decay is decoupled, as in ZOSGD: θ ← (1 − lr·wd) θ before the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from zolightning.optim import fused_rules
from zolightning.optim.noise import NoiseSource, step_seed
from zolightning.optim.perturbation import Scratch, add_normal
from zolightning.optim.zo_sgd import ZOSGD, ZOStepOutput


class EstimatedZO(ZOSGD):
    """Base: q two-point queries at θ, weights restored after each, then `update(group, p, grad, state)`.

    With philox noise and weights the fused pass can address (CUDA + Triton), a rule that names its
    `fused_rule()` runs restore, estimate, state and update as one pass over all q queries' z (`fused_rules.py`);
    each earlier query's restore is a perturbation pass: a step costs what q MeZO steps' passes do, plus the
    state's memory traffic. Rules with `DEVICE_STEP` may also keep g on the device
    there (`sync=False`, as ZOSGD); elsewhere they read it on the host.

    Args (beyond ZOSGD's):
        queries: directions averaged per step (q; 2q forward passes a step).
    """

    DEVICE_STEP = False  # whether the fused path may skip non-finite steps on the device (no per-tensor host state)

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, queries: int = 1, **kwargs):
        if queries < 1:
            raise ValueError(f"queries must be >= 1, got {queries}")
        if not kwargs.get("sync", True) and not self.DEVICE_STEP:
            raise ValueError(f"{type(self).__name__} reads g on the host (sync=True)")
        super().__init__(params, lr=lr, eps=eps, **kwargs)
        self.scratch = Scratch()
        if self.sharded:
            raise ValueError(f"{type(self).__name__} does not run on sharded (FSDP2) weights yet; zo_sgd does")
        self.queries = queries

    # ---- the estimate, tensor by tensor ----------------------------------------------------------
    def _directions(self, seed: int) -> Iterator[Tensor]:
        tensors = [p for _, p in self._tensors()]
        return NoiseSource().directions(tensors, seed)  # a source of its own: streams of several seeds interleave

    def gradient_estimates(self, estimates: list[tuple[int, float]], scales) -> Iterator[tuple[dict, Tensor, Tensor]]:
        """(group, p, ĝ_p in float32, or float64 for float64 weights) for every tensor, from each query's (seed, g).

        With philox noise each query's g z is added into the estimate by the fused pass (`add_normal`), in a
        scratch buffer that the next tensor of the same shape reuses: consume each estimate before the next.
        """
        scale_list = scales.tolist() if torch.is_tensor(scales) else scales
        tensors = self._tensors()
        device = tensors[0][1].device if tensors else None
        if self.noise == "philox":  # one host-to-device copy per query: every tensor's coefficient
            coefficients = [
                torch.tensor([g * s / len(estimates) for s in scale_list], dtype=torch.float32).to(device)
                for _, g in estimates
            ]
        else:
            streams = [self._directions(seed) for seed, _ in estimates]
        for i, ((group, p), s) in enumerate(zip(tensors, scale_list)):
            wide = torch.promote_types(p.dtype, torch.float32)
            if self.noise == "philox":
                grad = self.scratch.zeros(p.shape, wide, p.device)
                for (seed, _), coefficient in zip(estimates, coefficients):
                    add_normal(grad, seed, i, coefficient[i : i + 1])
                yield group, p, grad
                continue
            grad = torch.zeros(p.shape, dtype=wide, device=p.device)
            for (_, g), stream in zip(estimates, streams):
                grad.add_(next(stream), alpha=g)
            yield group, p, grad.mul_(s / len(estimates))

    # ---- the step ------------------------------------------------------------------------------------
    def query_seeds(self) -> list[int]:
        first = step_seed(self.seed, self.num_steps)
        return [first] + [step_seed(first, i) for i in range(1, self.queries)]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor | float]) -> ZOStepOutput:  # type: ignore[override]
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure returning the loss")
        scales, all_finite = self._scales([p for _, p in self._tensors()])
        if self._fuses():
            return self._fused_step(closure, scales, all_finite)
        estimates, plus, minus = [], [], []
        for seed in self.query_seeds():
            self._perturb(seed, +1.0, scales)
            plus.append(float(closure()))
            self._perturb(seed, -2.0, scales)
            minus.append(float(closure()))
            self._perturb(seed, +1.0, scales)  # back at θ before the next query and the update
            estimates.append((seed, (plus[-1] - minus[-1]) / (2 * self.eps)))
            if not math.isfinite(estimates[-1][1]):
                return self._skip(plus[-1], minus[-1])
        loss_plus, loss_minus = sum(plus) / len(plus), sum(minus) / len(minus)
        if not bool(all_finite):
            return self._skip(loss_plus, loss_minus)
        self.apply_update(estimates, scales, closure)
        return self._completed(loss_plus, loss_minus, sum(g for _, g in estimates) / len(estimates))

    # ---- the fused path (philox, fused-pass weights) ----------------------------------------------------
    def fused_rule(self) -> str | None:
        """This rule's name in `fused_rules.RULES`, or None: the update runs tensor by tensor."""
        return None

    def _fuses(self) -> bool:
        if not hasattr(self, "_fusable"):  # the tensors never change: decide once
            tensors = [p for _, p in self._tensors()]
            self._fusable = self.noise == "philox" and fused_rules.usable(tensors)
        return self._fusable and self.fused_rule() is not None

    def _fused_step(self, closure: Callable, scales, all_finite) -> ZOStepOutput:
        """The queries' perturbation passes (each query's restore is its own pass, the last one's is folded into
        the update), then the rule's update in one pass over all queries' z."""
        seeds, plus, minus = self.query_seeds(), [], []
        for j, seed in enumerate(seeds):
            if j:
                self._perturb(seeds[j - 1], +1.0, scales)  # back at θ before the next query
            self._perturb(seed, +1.0, scales)
            plus.append(closure())
            self._perturb(seed, -2.0, scales)
            minus.append(closure())
        if not self.sync:  # as ZOSGD's device step: a non-finite g turns the pass into a plain restore
            plus, minus = self._on_device(plus), self._on_device(minus)  # 0-dim with one query: no stack, no mean
            g = (plus.double() - minus.double()) / (2 * self.eps)
            ok = torch.isfinite(g) if g.dim() == 0 else torch.isfinite(g).all()
            self._fused_apply(seeds, scales, torch.where(ok, g, 0.0), ok, closure)
            self._skips.add(~ok)
            self.num_steps += 1
            if g.dim():
                plus, minus, g = plus.mean(), minus.mean(), g.mean()
            return ZOStepOutput((plus + minus) / 2, g.float(), plus, minus, ~ok)
        plus, minus = [float(v) for v in plus], [float(v) for v in minus]
        g = [(a - b) / (2 * self.eps) for a, b in zip(plus, minus)]
        loss_plus, loss_minus = sum(plus) / len(plus), sum(minus) / len(minus)
        if not (all(map(math.isfinite, g)) and bool(all_finite)):
            self._perturb(seeds[-1], +1.0, scales)
            return self._skip(loss_plus, loss_minus)
        self._fused_apply(seeds, scales, g, None, closure)
        return self._completed(loss_plus, loss_minus, sum(g) / len(g))

    def _on_device(self, losses: list) -> Tensor:
        """The queries' losses as float32 on the weights' device: a 0-dim tensor for one query, else a vector."""
        device = self.param_groups[0]["params"][0].device
        values = [torch.as_tensor(v, device=device).detach().float() for v in losses]
        return values[0] if len(values) == 1 else torch.stack(values)

    def _fused_apply(self, seeds: list[int], scales, g, ok: Tensor | None, closure: Callable) -> None:
        """From θ + offset·ε·s⊙z (the last query's z) to the rule's new θ; Conserve adds its trial steps here."""
        self._fused_update(seeds, scales, g, ok)

    def _coefficients(self, scales, g) -> Tensor:
        """[queries, tensors]: c_jt = g_j s_t / q, the weight of query j's z in tensor t's estimate, rounded once
        from float64 as the reference path's host product."""
        s = self._vector(scales).double()
        if torch.is_tensor(g):
            product = g.double().reshape(-1, 1) * s
            return (product if g.numel() == 1 else product / g.numel()).float()
        rows = [s * (value / len(g)) for value in g]
        return (rows[0][None] if len(rows) == 1 else torch.stack(rows)).float()

    def _fused_update(self, seeds: list[int], scales, g, ok: Tensor | None) -> None:
        """The restore of the last query and the rule's update in one pass (`fused_rules.update`)."""
        rule = self.fused_rule()
        last = (self._vector(scales) * (self._offset * self.eps))[None]  # only the last query's z is on the weights
        pre = last if len(seeds) == 1 else torch.cat([last.new_zeros(len(seeds) - 1, last.shape[1]), last])
        lrs = self._per_group([group["lr"] for group in self.param_groups])
        mults = self._per_group([1.0 - group["lr"] * group["weight_decay"] for group in self.param_groups])
        self._rule_pass(rule, seeds, pre, self._coefficients(scales, g), lrs, mults, ok)
        self._offset = 0.0

    def _rule_pass(self, rule: str, seeds: list[int], pre: Tensor, coefficient: Tensor, lrs, mults, ok) -> None:
        tensors = self._params()
        states = []
        for p in tensors:
            state = self.state[p]
            for name in fused_rules.STATE_NAMES[rule]:
                if name not in state:
                    state[name] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            states.append([state[name] for name in fused_rules.STATE_NAMES[rule]])
        hyper = self.fused_hyper().reshape(len(tensors), fused_rules.HYPER_WIDTH)
        flag = self._vector([1.0]) if ok is None else ok
        fused_rules.update(tensors, states, rule, seeds, pre, coefficient, lrs, mults, hyper, flag)

    def fused_hyper(self) -> Tensor:
        """Per tensor, `fused_rules.HYPER_WIDTH` float32 numbers the rule reads (see fused_rules)."""
        return self._group_hyper(lambda group: [0.0] * fused_rules.HYPER_WIDTH)

    def _group_hyper(self, row: Callable[[dict], list[float]]) -> Tensor:
        """Rows set by each group's options alone: the device table is rebuilt only when those change."""
        rows = tuple(tuple(row(group)) for group in self.param_groups)
        if getattr(self, "_hyper", (None,))[0] != rows:
            values = [x for group, r in zip(self.param_groups, rows) for _ in group["params"] for x in r]
            self._hyper = (rows, self._vector(values))
        return self._hyper[1]

    def apply_update(self, estimates: list[tuple[int, float]], scales, closure: Callable) -> None:
        for group, p, grad in self.gradient_estimates(estimates, scales):
            wide = p.detach().to(torch.promote_types(p.dtype, torch.float32))
            if group["weight_decay"]:
                wide.mul_(1.0 - group["lr"] * group["weight_decay"])
            wide.sub_(self.update(group, grad, self.state[p]), alpha=group["lr"])
            p.copy_(wide)

    def update(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        """The step direction d (θ ← θ − lr·d) from this tensor's estimate; may update `state`."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"]["queries"] = self.queries
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        queries = state_dict.get("zo", {}).get("queries", self.queries)
        if queries != self.queries:
            raise ValueError(f"the checkpoint was trained with queries={queries}, this run has {self.queries}")
        super().load_state_dict(state_dict)


class ZOSGDMomentum(EstimatedZO):
    """ZO-SGD with heavy-ball momentum (ZO-Bench's ZO-SGD-MMT): m ← μ m + ĝ, θ ← θ − lr m.

    With `momentum=0` it is plain ZO-SGD on the q-query estimate (no state). The buffer is float32, one
    model-sized tensor: the memory MeZO saves is spent here.
    """

    DEVICE_STEP = True

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, momentum: float = 0.9, **kwargs):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, lr=lr, eps=eps, **kwargs)
        for group in self.param_groups:
            group.setdefault("momentum", momentum)

    def fused_rule(self) -> str:
        return "momentum" if any(group["momentum"] for group in self.param_groups) else "plain"

    def fused_hyper(self) -> Tensor:
        return self._group_hyper(lambda group: [group["momentum"]] + [0.0] * (fused_rules.HYPER_WIDTH - 1))

    def update(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        if group["momentum"] == 0:
            return grad
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
        return state["momentum_buffer"]


class ZOSGDSign(EstimatedZO):
    """ZO-SGD-Sign (signSGD on the ZO estimate; ZO-Bench, after Liu et al. 2019): θ ← θ − lr sign(ĝ)."""

    DEVICE_STEP = True

    def fused_rule(self) -> str:
        return "sign"

    def update(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        return grad.sign_()


class ZOAdam(EstimatedZO):
    """ZO-Adam (ZO-AdaMM, Chen et al. 2019; ZO-Bench): Adam's moments and bias correction on ĝ.

    Two float32 states per weight (m, v): twice the memory of the model in fp32.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        **kwargs,
    ):
        if not all(0 <= b < 1 for b in betas) or adam_eps <= 0:
            raise ValueError(f"need 0 <= betas < 1 and adam_eps > 0, got {betas}, {adam_eps}")
        super().__init__(params, lr=lr, eps=eps, **kwargs)
        for group in self.param_groups:
            group.setdefault("betas", tuple(betas))
            group.setdefault("adam_eps", adam_eps)

    def fused_rule(self) -> str:
        return "adam"

    def fused_hyper(self) -> Tensor:
        """Counts this step in each tensor's state (the fused path calls it once per applied update)."""
        rows = []
        for group, p in self._tensors():
            state = self.state[p]
            state["step"] = state.get("step", 0) + 1
            (beta1, beta2), t = group["betas"], state["step"]
            rows.append([beta1, 1 - beta1, beta2, 1 - beta2, 1 - beta1**t, 1 - beta2**t, group["adam_eps"], 0.0])
        device = self.param_groups[0]["params"][0].device
        return torch.tensor(rows, dtype=torch.float32).to(device, non_blocking=True)

    def update(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
        state["step"] += 1
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
        return m_hat / (v_hat.sqrt() + group["adam_eps"])


class ZOSGDConserve(EstimatedZO):
    """ZO-SGD-Conserve (ZO-Bench): take the ZO-SGD step only if it lowers the minibatch loss.

    After the estimate: L0 = L(θ); try θ − lr ĝ (L1); if L1 > L0 try the opposite θ + lr ĝ (L2); if that is
    no better than L0 either, stay at θ. 2q + 2 or 2q + 3 forward passes a step.
    """

    def update(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        return grad

    def _move(self, estimates, scales, factor: float) -> None:
        for group, p, grad in self.gradient_estimates(estimates, scales):
            wide = p.detach().to(torch.promote_types(p.dtype, torch.float32))
            p.copy_(wide.sub_(grad, alpha=factor * group["lr"]))

    def fused_rule(self) -> str:
        return "plain"

    def _fused_apply(self, seeds: list[int], scales, g, ok: Tensor | None, closure: Callable) -> None:
        """The trials as passes of the fused rule: from w = round(θ − x·lr·ĝ) the pass to position y removes
        x·lr·ĝ (θ recovered on its dtype grid, as after a perturbation) and subtracts y·lr·ĝ."""
        coefficient = self._coefficients(scales, g)
        lrs = self._per_group([group["lr"] for group in self.param_groups])
        ones = torch.ones_like(lrs)
        self._perturb(seeds[-1], +1.0, scales)  # θ itself, for L0
        where = 0.0

        def move(to: float) -> None:
            nonlocal where
            self._rule_pass("plain", seeds, -where * lrs * coefficient, coefficient, to * lrs, ones, None)
            where = to

        before = float(closure())
        move(1.0)
        if float(closure()) <= before:
            self.last_choice = "descent"
        else:
            move(-1.0)
            if float(closure()) <= before:
                self.last_choice = "ascent"
            else:
                move(0.0)
                self.last_choice = "stay"
        self._decay()

    def _decay(self) -> None:
        for group in self.param_groups:  # decoupled decay after the choice
            if group["weight_decay"]:
                torch._foreach_mul_(group["params"], 1.0 - group["lr"] * group["weight_decay"])

    def apply_update(self, estimates: list[tuple[int, float]], scales, closure: Callable) -> None:
        before = float(closure())
        self._move(estimates, scales, +1.0)
        if float(closure()) <= before:
            self.last_choice = "descent"
        else:
            self._move(estimates, scales, -2.0)
            if float(closure()) <= before:
                self.last_choice = "ascent"
            else:
                self._move(estimates, scales, +1.0)
                self.last_choice = "stay"
        self._decay()
