"""How well the same-math check separates rounding from different math (the numbers in benchmarks/README.md).

    python benchmarks/check_power.py                        # small, nanogpt-cpu and mid
    python benchmarks/check_power.py --update-readme        # and write the table into benchmarks/README.md

1. False alarms: N float32 runs of tinygrad_gpt from perturbed copies of the weights (protocol.perturbed: every
   weight scaled by 1 + 2^-20 or 1 - 2^-20, the sign at random), resampled as "the reference's runs + one more
   correct engine": how often the extra engine falls outside the tolerance (protocol.check_tolerance) for a few
   spread factors.
2. Power: the HIPS autograd engine (the same math as ours) and variants of it with one difference each, run from
   the same weights on the same batches: their largest |loss - exact| over the tolerance.
Runs in one process (nothing is timed); needs autograd (pip install -e ".[peers]").
"""
import argparse
import os
import re
import sys

import numpy as np
from autograd import value_and_grad

if __name__ == "__main__":
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

from benchmarks import protocol  # noqa: E402 (after the sys.path insert above)
from benchmarks.engines import autograd_gpt as ag  # noqa: E402 (after the sys.path insert above)
from benchmarks.engines.ours import TinygradGPT  # noqa: E402 (after the sys.path insert above)
from tinygrad_gpt import GPT, GPTConfig  # noqa: E402 (after the sys.path insert above)

START, END = "<!-- check-power:start -->", "<!-- check-power:end -->"
RESAMPLED_RUNS = (4, 8, 16)      # reference runs R in the false-alarm resampling
FACTORS = (2, 3, 4)              # spread factors tried there


class NoBiasCorrection(ag.AutogradGPT):
    def step(self):
        loss, grads = self.loss_and_grad(self.params, self.x, self.y, self.bc.n_layer, self.bc.n_head)
        for k, p in self.params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            p -= np.float32(ag.LR * ag.WEIGHT_DECAY) * p
            m[...] = ag.BETA1 * m + (1 - ag.BETA1) * g
            v[...] = ag.BETA2 * v + (1 - ag.BETA2) * g * g
            p -= np.float32(ag.LR) * m / (np.sqrt(v) + np.float32(ag.EPS))
        return loss


class AdamL2(ag.AutogradGPT):
    """Adam with the decay added to the gradient (torch.optim.Adam(weight_decay=0.01)), not decoupled."""

    def step(self):
        loss, grads = self.loss_and_grad(self.params, self.x, self.y, self.bc.n_layer, self.bc.n_head)
        self.t += 1
        bc1, bc2 = 1 - ag.BETA1 ** self.t, 1 - ag.BETA2 ** self.t
        for k, p in self.params.items():
            g, m, v = grads[k] + np.float32(ag.WEIGHT_DECAY) * p, self.m[k], self.v[k]
            m[...] = ag.BETA1 * m + (1 - ag.BETA1) * g
            v[...] = ag.BETA2 * v + (1 - ag.BETA2) * g * g
            p -= np.float32(ag.LR / bc1) * m / (np.sqrt(v / np.float32(bc2)) + np.float32(ag.EPS))
        return loss


class NoWeightDecay(AdamL2):
    def step(self):
        saved, ag.WEIGHT_DECAY = ag.WEIGHT_DECAY, 0.0
        try:
            return super().step()
        finally:
            ag.WEIGHT_DECAY = saved


def lecture_scale_loss(p, idx, targets, n_layer, n_head):
    """Attention scaled by C**-0.5 (the lecture notebooks' bug) instead of hs**-0.5: the query rows of W_qkv times
    sqrt(hs / C) is the same function."""
    C = p["tok_emb.weight"].shape[1]
    q = dict(p)
    for i in range(n_layer):
        w = p[f"blocks.{i}.attn.qkv.weight"]
        q[f"blocks.{i}.attn.qkv.weight"] = ag.anp.concatenate([w[:C] * (C // n_head / C) ** 0.5, w[C:]], axis=0)
    return ag.gpt_loss(q, idx, targets, n_layer, n_head)


def variants():
    def with_loss(fn):
        def make(bc, sd):
            e = ag.AutogradGPT(bc, sd)
            e.loss_and_grad = value_and_grad(fn)
            return e
        return make
    return {"autograd, the same math": ag.AutogradGPT,
            "AdamW without bias correction": NoBiasCorrection,
            "Adam + L2 decay instead of decoupled": AdamL2,
            "weight decay 0 instead of 0.01": NoWeightDecay,
            "attention scaled by C**-0.5": with_loss(lecture_scale_loss),
            "no causal mask": with_loss(lambda p, i, t, L, H: ag.gpt_loss(p, i, t, L, H, causal=False))}


def check_tolerance(runs, exact, n_terms, factor):
    """protocol.check_tolerance with another spread factor."""
    saved, protocol.SPREAD_FACTOR = protocol.SPREAD_FACTOR, factor
    try:
        return protocol.check_tolerance(runs, exact, n_terms)
    finally:
        protocol.SPREAD_FACTOR = saved


def losses(engine, batches):
    out = []
    for x, y in batches:
        engine.load_batch(x, y)
        out.append(engine.loss_float(engine.step()))
    return np.array(out)


def study(bc, n_runs, trials=4000):
    sd = {k: v.numpy() for k, v in GPT(GPTConfig(**bc.gpt_config()), seed=protocol.INIT_SEED).state_dict().items()}
    batches = [protocol.make_batch(bc, protocol.CHECK_SEED + i) for i in range(bc.check_steps)]
    exact = losses(TinygradGPT(bc, sd, dtype=np.float64), batches)
    runs = np.array([losses(TinygradGPT(bc, protocol.perturbed(sd, seed) if seed else sd), batches)
                     for seed in range(n_runs)])                                   # (n_runs, K)
    rng = np.random.default_rng(0)
    alarms = {}
    for r in RESAMPLED_RUNS:
        for factor in FACTORS:
            fails = 0
            for _ in range(trials):
                pick = rng.permutation(n_runs)
                tol = check_tolerance(runs[pick[:r + 1]], exact, bc.tokens, factor)
                fails += not protocol.check_trajectory(runs[pick[r + 1]], exact, tol)["passed"]
            alarms[(r, factor)] = fails / trials
    tol = protocol.check_tolerance(runs[:bc.check_runs + 1], exact, bc.tokens)
    power = {}
    for name, make in variants().items():
        v = protocol.check_trajectory(losses(make(bc, sd), batches), exact, tol)
        power[name] = (v["diff_at_worst"] / v["tol_at_worst"], v["worst_step"], v["passed"])
    spread = np.abs(runs - exact).max()
    return {"alarms": alarms, "power": power, "spread": spread}


def markdown(results, n_runs):
    L = ["| config | float32 spread S (all runs) | engine | worst \\|loss - exact\\| / tolerance | verdict |",
         "|---|---:|---|---:|---|"]
    for cname, r in results.items():
        for name, (ratio, step, passed) in r["power"].items():
            L.append(f"| {cname} | {r['spread']:.1e} | {name} | {ratio:.3g} (step {step}) | "
                     f"{'same math' if passed else 'caught'} |")
    L += ["", f"False alarms (a correct engine outside the tolerance; {n_runs} perturbed runs resampled as R "
          "reference runs + one more engine), with the spread factor at " + " / ".join(map(str, FACTORS)) + ":", ""]
    for cname, r in results.items():
        L.append(f"- {cname}: " + "; ".join(
            f"R = {rr}: " + " / ".join(f"{r['alarms'][(rr, f)]:.1%}" for f in FACTORS) for rr in RESAMPLED_RUNS))
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["small", "nanogpt-cpu", "mid"], choices=list(protocol.CONFIGS))
    ap.add_argument("--runs", type=int, default=40, help="perturbed float32 runs per config [40]")
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args(argv)
    results = {c: study(protocol.CONFIGS[c], args.runs) for c in args.configs}
    md = markdown(results, args.runs)
    print(md)
    if args.update_readme:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
        with open(path) as f:
            text = f.read()
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{md}\n{END}", text, flags=re.S)
        with open(path, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
