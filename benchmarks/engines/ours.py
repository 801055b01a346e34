"""tinygrad_gpt through its plain public API, as a user's loop drives it: GPT(cfg), AdamW(...), then
opt.zero_grad(); loss.backward(); opt.step(). The benchmark calls nothing process-wide: the library makes its own
first-use settings (kernels/cpu/setup.py) as it does in a user's script, so the step time is what that script gets.
The same class is the `tinygrad_gpt-numpy` engine when its process has TINYGRAD_GPT_KERNELS=0, and
`tinygrad_gpt-cuda` on device cuda.
"""
import os

import numpy as np

import tinygrad_gpt
from benchmarks.engines import fwd_bwd, time_generate
from tinygrad_gpt import GPT, AdamW, GPTConfig, Tensor, no_grad
from tinygrad_gpt import fused as F
from tinygrad_gpt.backend import get_device


class TinygradGPT:
    blas = "numpy"
    tracemalloc = True

    def __init__(self, bc, state_dict, device="cpu", dtype=np.float32):
        self.bc = bc
        self.device = get_device(device)
        self.name = "tinygrad_gpt" + ("-cuda" if self.device.name == "cuda" else "")
        self.model = GPT(GPTConfig(**bc.gpt_config()), device=self.device, dtype=np.dtype(dtype))
        self.model.load_state_dict(state_dict)
        self.model.train()
        self.opt = AdamW(self.model.parameters(), lr=1e-3)       # torch's defaults: betas, eps, weight_decay 0.01
        if self.device.name == "cuda":
            self.blas = None

    def versions(self):
        from tinygrad_gpt.kernels.cpu import blas
        lib = blas.find() if self.device.name == "cpu" else None
        return {"tinygrad_gpt": tinygrad_gpt.__version__, "numpy": np.__version__,
                "TINYGRAD_GPT_KERNELS": os.environ.get("TINYGRAD_GPT_KERNELS", "(unset: on)"),
                "kernels_blas": f"{lib.name} {lib.version or ''}".strip() if lib else "none (NumPy's matmul)"}

    def load_batch(self, x, y):
        self.x, self.y = x, y                                      # host int64 (B, T), as a training loop feeds it

    def step(self):
        _, loss = self.model(self.x, self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss

    def sync(self):
        if self.device.name == "cuda":
            self.device.xp.cuda.Device().synchronize()

    def loss_float(self, loss):
        return float(loss.numpy())

    def device_memory(self, step):
        """cuda: bytes the CuPy pool holds after one step (its cached blocks: the step's high point) above those in
        use before it."""
        if self.device.name != "cuda":
            return None
        pool = self.device.xp.get_default_memory_pool()
        self.sync()
        pool.free_all_blocks()
        used = pool.used_bytes()
        step()
        return int(pool.total_bytes() - used)

    def layer_fns(self, x, dout):
        """Forward + backward of each layer of block 0 alone; parameter gradients reset before each call."""
        m, xp = self.model, self.device.xp
        x = Tensor(xp.asarray(x), requires_grad=True)              # (B, T, C)
        dout = xp.asarray(dout)                                    # (B, T, C)
        idx, tgt = xp.asarray(self.x), xp.asarray(self.y)          # (B, T)
        blk = m.blocks[0]
        _, loss = m(self.x, self.y)                                # every parameter gets a gradient for AdamW
        self.opt.zero_grad()
        loss.backward()
        return {
            "embedding": fwd_bwd(x, dout, lambda: F.embedding(idx, m.tok_emb.weight, m.pos_emb.weight),
                                 [m.tok_emb.weight, m.pos_emb.weight]),
            "layernorm": fwd_bwd(x, dout, lambda: blk.ln1(x), blk.ln1.parameters()),
            "attention": fwd_bwd(x, dout, lambda: blk.attn(x), blk.attn.parameters()),
            "mlp": fwd_bwd(x, dout, lambda: blk.mlp(x), blk.mlp.parameters()),
            "lm_head+ce": fwd_bwd(x, dout, lambda: F.cross_entropy(m.lm_head(x), tgt), m.lm_head.parameters(),
                                  scalar=True),
            "adamw": self.opt.step,
        }

    def sampling(self, n_tokens):
        """Tokens/s of GPT.generate (batch 1, one-token prompt) with and without the key/value cache, under both
        window rules: "shift" (the oldest quarter dropped once the context is full) and "slide" (the lecture's rule:
        past block_size every token needs the whole window again)."""
        prompt = np.zeros((1, 1), dtype=np.int64)
        out = {}
        with no_grad():
            for mode, cache, window in (("kv_cache", True, "shift"), ("no_cache", False, "shift"),
                                        ("kv_cache_slide", True, "slide"), ("no_cache_slide", False, "slide")):
                def generate(n, cache=cache, window=window):       # (called at once, in this iteration)
                    return self.model.generate(prompt, n, seed=0, use_cache=cache, window=window)
                out[mode] = time_generate(generate, n_tokens, self.sync)
        out["speedup"] = out["kv_cache"]["tokens_per_s"] / out["no_cache"]["tokens_per_s"]
        out["speedup_slide"] = out["kv_cache_slide"]["tokens_per_s"] / out["no_cache_slide"]["tokens_per_s"]
        return out
