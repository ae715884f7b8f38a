"""ZO step time and memory against the forward, the MeZO-style step and the hardware floor, in one run.

    python -m benchmarks.step_time --model smollm2-135m-instruct --dtype bfloat16     # or a .gguf path
    python -m benchmarks.step_time --model smollm2 --dtype bfloat16                   # its shape, random weights
    python -m benchmarks.step_time --model llama-1b --dtype bfloat16                  # random Llama-3.2-1B shape
    python -m benchmarks.step_time --model llama-3b --dtype bfloat16                  # random Llama-3.2-3B shape

Batch: `--batch` random sequences of `--length` tokens, the last 4 tokens of each scored (LM loss, LM head only
at those positions). Measured, medians after warm-up:
  forward        one scoring forward under no_grad (ours: compiled and CUDA-graphed with --fast-forward),
                 back to back (5 calls, then one wait: the steady state) and one at a time (wait after each);
  eager forward  the same forward without compilation (what the MeZO-style step uses);
  MeZO-style     the usual step: one torch.normal per tensor per pass, global reseeding, four passes
                 (+eps, -2 eps, +eps, update), arithmetic in the weights' dtype, losses read on the host;
  ours           ZOSGD with --noise (philox: one fused Triton pass per weight pass on CUDA, g kept on the
                 device: sync=False), back to back and one at a time;
  copy bandwidth torch's copy of a 1 GiB buffer (read + write bytes / time);
  floor          2 x forward (back to back) + 2 full read+write passes over the weights at that bandwidth.
Also peak allocated memory of the forward (inference) and of our step, and a check of the kernel's noise
against the PyTorch reference definition (philox.py) on the GPU.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import peak_mib, timed
from zolightning.data.encoding import EncodedExample, collate
from zolightning.forward.fast_forward import FastScoringModel
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim import ZOOptimizer
from zolightning.optim.kernels.philox import philox_normal

BACK_TO_BACK = 5  # calls per timed repeat when measuring the steady state
SHAPES = {  # Llama-architecture configurations (tied embeddings), weights drawn at random: timing needs no file
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8),
    "llama-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                     num_attention_heads=24, num_key_value_heads=8),
}  # fmt: skip


def build_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    if name not in SHAPES:
        return load_causal_lm(name, dtype=str(dtype).removeprefix("torch.")).cuda()
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=True, **SHAPES[name])
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(dtype).eval()


def random_batch(vocab: int, batch: int, length: int, answer: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    examples = [
        EncodedExample((tuple(torch.randint(vocab, (length,), generator=generator).tolist()),), (answer,), 0, False)
        for _ in range(batch)
    ]
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in collate(examples, 0, kind="lm").items()}


class MezoStyleStep:
    """The reference implementations' step: per pass, reseed the global RNG and draw z tensor by tensor."""

    def __init__(self, params, lr: float = 1e-7, eps: float = 1e-3):
        self.params, self.lr, self.eps, self.step_index = list(params), lr, eps, 0

    def _pass(self, seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        for p in self.params:
            z = torch.normal(0, 1, size=p.shape, device=p.device, dtype=p.dtype)
            p.data.add_(z, alpha=scale)

    @torch.no_grad()
    def step(self, closure) -> None:
        seed = self.step_index
        self._pass(seed, self.eps)
        plus = float(closure())
        self._pass(seed, -2 * self.eps)
        minus = float(closure())
        self._pass(seed, self.eps)
        self._pass(seed, -self.lr * (plus - minus) / (2 * self.eps))
        self.step_index += 1


def copy_bandwidth(repeats: int = 20) -> float:
    """Bytes read + written per second by a device-to-device copy of 1 GiB."""
    source = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return 2 * 2**30 / timed(lambda: target.copy_(source), repeats)  # the buffers are freed on return


def noise_check(params: list[torch.Tensor]) -> float:
    """Max |kernel z - reference z| over the first 1M elements of the two largest tensors."""
    from zolightning.optim.kernels import fused

    seed, worst = 2**40 + 12345, 0.0
    for key, p in sorted(enumerate(params), key=lambda kp: -kp[1].numel())[:2]:
        n = min(p.numel(), 2**20)
        out = torch.zeros(n, device="cuda")
        one = torch.ones(1, device="cuda")
        fused.shift([out], [key], seed, 0 * one, one, one)
        worst = max(worst, (out - philox_normal(seed, key, n, device="cuda")).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="smollm2, llama-1b, llama-3b (random) or a model name/path"
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--noise", default="philox", choices=["philox", "generator"])
    parser.add_argument("--fast-forward", action="store_true", help="our forward compiled (fast_forward.py)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    bandwidth = copy_bandwidth()
    torch.cuda.empty_cache()
    model = build_model(args.model, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    batch = random_batch(model.config.vocab_size, args.batch, args.length)

    scorer = FastScoringModel(model, bucket=64) if args.fast_forward else model

    def closure():
        return batch_loss(scorer, batch)[0]

    def eager_closure():
        return batch_loss(model, batch)[0]

    def forward():
        with torch.no_grad():
            return closure().item()

    def forward_queued():
        with torch.no_grad():
            return closure()

    def eager_forward():
        with torch.no_grad():
            return eager_closure().item()

    ours = ZOOptimizer(params, lr=1e-9, eps=1e-3, seed=0, noise=args.noise, sync=args.noise == "generator")
    mezo = MezoStyleStep(params)
    forward()
    inference_peak, step_peak = peak_mib(forward), peak_mib(lambda: ours.step(closure))
    # Back to back (the steady state of training: nothing waits for the GPU between calls) and one at a time.
    forward_s = timed(lambda: [forward_queued() for _ in range(BACK_TO_BACK)], args.repeats) / BACK_TO_BACK
    forward_one_s = timed(forward, args.repeats)
    ours_s = timed(lambda: [ours.step(closure) for _ in range(BACK_TO_BACK)], args.repeats) / BACK_TO_BACK
    ours_one_s = timed(lambda: ours.step(closure), args.repeats)
    mezo_s = timed(lambda: mezo.step(eager_closure), args.repeats)
    eager_s = timed(eager_forward, args.repeats)
    ones = [1.0] * len(params)
    pass_s = timed(lambda: [ours.engine.perturb(0, 0.0, ones) for _ in range(BACK_TO_BACK)], args.repeats)
    pass_s /= BACK_TO_BACK
    weight_pass = 2 * weight_bytes / bandwidth
    floor = 2 * forward_s + 2 * weight_pass
    print(f"{args.model} {args.dtype}, batch {args.batch} x {args.length}, {weight_bytes / 2**30:.2f} GiB of weights, "
          f"{torch.cuda.get_device_name()}, noise={args.noise}, fast_forward={args.fast_forward}, "
          f"sync={ours.sync}")  # fmt: skip
    print("| quantity | value |\n|---|---|")
    print(f"| copy bandwidth (read + write) | {bandwidth / 1e9:.0f} GB/s |")
    print(f"| our forward (back to back / one at a time) | {forward_s * 1e3:.2f} / {forward_one_s * 1e3:.2f} ms |")
    print(f"| eager forward (one at a time) | {eager_s * 1e3:.2f} ms |")
    print(f"| one read+write pass over the weights at copy bandwidth | {weight_pass * 1e3:.2f} ms |")
    print(f"| one pass of ours over the weights (back to back) | {pass_s * 1e3:.2f} ms |")
    print(f"| floor = 2 forwards + 2 passes (back to back) | {floor * 1e3:.2f} ms |")
    print(f"| our step (back to back / one at a time) | {ours_s * 1e3:.2f} / {ours_one_s * 1e3:.2f} ms |")
    print(f"| MeZO-style step | {mezo_s * 1e3:.2f} ms |")
    print(f"| our step / floor (target <= 1.10) | {ours_s / floor:.3f} |")
    print(f"| MeZO-style / our step (1B target >= 2.5) | {mezo_s / ours_s:.2f} |")
    print(f"| our step / 2 forwards | {ours_s / (2 * forward_s):.3f} |")
    print(f"| inference peak / our step peak | {inference_peak:.0f} / {step_peak:.0f} MiB |")
    print(f"| step peak / inference peak (target <= 1.01) | {step_peak / inference_peak:.3f} |")
    if args.noise == "philox":
        print(f"| kernel z vs reference z, max abs difference | {noise_check(params):.2e} |")


if __name__ == "__main__":
    main()
