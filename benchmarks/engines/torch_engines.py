"""torch, as the lecture's training loop drives it, at its strongest: the model (torch_models.FusedGPT or LectureGPT),
optionally under torch.compile, and `torch.optim.AdamW(..., fused=True)` (adamw="default": torch's default
implementation, the `torch-default-adamw` column); optimizer.zero_grad(set_to_none=True), loss.backward(),
optimizer.step(). Its thread count comes from OMP_NUM_THREADS, and glibc's allocator settings from the environment
the coordinator gives every engine (protocol.ALLOCATORS): torch reads them when it loads; nothing is called at run
time.
"""
import re
import types

import numpy as np
import torch

from benchmarks.engines import fwd_bwd, time_generate
from benchmarks.torch_models import MODELS


class TorchEngine:
    blas = "torch"
    tracemalloc = False

    def __init__(self, bc, state_dict, device="cpu", form="fused", compile=False, adamw="fused", dtype="float32"):
        self.bc, self.form, self.adamw = bc, form, adamw
        self.device = torch.device(device)
        self.name = f"torch-{'compile' if compile else form}" + ("-cuda" if self.device.type == "cuda" else "")
        self.model = MODELS[form](types.SimpleNamespace(**bc.gpt_config()))
        self.model.load_spec_state_dict(state_dict)
        self.model.to(self.device, dtype=getattr(torch, np.dtype(dtype).name)).train()   # float64: a reference
        self.forward = torch.compile(self.model) if compile else self.model
        self.has_layers = not compile                              # the layers alone are timed eager
        # betas, eps, weight decay 0.01: torch's defaults
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=True if adamw == "fused" else None)
        if self.device.type == "cuda":
            self.blas = None

    def versions(self):
        blas = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
        out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "blas": blas.group(1) if blas else "?",
               "adamw": "fused=True" if self.adamw == "fused" else "default (foreach)"}
        if self.device.type == "cuda":
            out["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        return out

    def load_batch(self, x, y):
        self.x = torch.from_numpy(x).to(self.device)               # (B, T) int64
        self.y = torch.from_numpy(y).to(self.device)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        _, loss = self.forward(self.x, self.y)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def loss_float(self, loss):
        return float(loss.detach())

    def device_memory(self, step):
        """cuda: torch.cuda.max_memory_allocated during one step above memory_allocated before it."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - before

    def layer_fns(self, x, dout):
        """Forward + backward of each layer alone, the same layers and inputs as the tinygrad_gpt engine's."""
        m, bc, dev = self.model.layer_modules(), self.bc, self.device
        B, T, V = bc.batch_size, bc.block_size, bc.vocab_size
        x = torch.from_numpy(x).to(dev).requires_grad_()             # (B, T, C)
        dout = torch.from_numpy(dout).to(dev)                        # (B, T, C)
        pos = torch.arange(T, device=dev)

        def layer(forward, modules, scalar=False):
            """fwd_bwd on x and dout, clearing the gradients of the given modules' parameters."""
            return fwd_bwd(x, dout, forward, [p for mod in modules for p in mod.parameters()], scalar)
        self.opt.zero_grad(set_to_none=True)                       # every parameter gets a gradient for AdamW
        self.model(self.x, self.y)[1].backward()
        return {
            "embedding": layer(lambda: m["tok_emb"](self.x) + m["pos_emb"](pos), [m["tok_emb"], m["pos_emb"]]),
            "layernorm": layer(lambda: m["layernorm"](x), [m["layernorm"]]),
            "attention": layer(lambda: m["attention"](x), [m["attention"]]),
            "mlp": layer(lambda: m["mlp"](x), [m["mlp"]]),
            "lm_head+ce": layer(lambda: torch.nn.functional.cross_entropy(
                m["lm_head"](x).view(B * T, V), self.y.view(B * T)), [m["lm_head"]], scalar=True),
            "adamw": self.opt.step,
        }

    def sampling(self, n_tokens):
        """The lecture's generate (no cache; the context slides over the last block_size tokens), batch 1."""
        if self.form != "lecture":
            return None
        torch.manual_seed(0)
        self.model.eval()
        prompt = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        timed = time_generate(lambda n: self.model.generate(prompt, n), n_tokens, self.sync)
        self.model.train()
        return {"lecture generate (no cache)": timed}

