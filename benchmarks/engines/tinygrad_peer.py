"""The GPT training step in tinygrad (github.com/tinygrad/tinygrad, not this project), as its examples write one:
modules from tinygrad.nn with SPEC's attribute names (so tinygrad.nn.state.load_state_dict takes our state dict as
it is), Tensor.scaled_dot_product_attention(is_causal=True), sparse_categorical_crossentropy, tinygrad.nn.optim.AdamW
(decoupled weight decay, the same update as torch's), and the whole step under TinyJit, on the CPU device; the loss
is realized together with the optimizer's update (`loss.realize(*opt.schedule_step())`, as tinygrad's MNIST example).

tinygrad's CPU device compiles every kernel with clang (apt-get install clang). The engine's process environment
selects the device (DEV=CPU) and its thread count (NUM_CPU_THREADS). Dimension names as in torch_models.py.
"""
import importlib.metadata

import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit, dtypes, nn

DEVICE = "CPU"


class Attention:
    def __init__(self, c, n_head):
        self.n_head = n_head
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.proj = nn.Linear(c, c)

    def __call__(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                      # 3 x (B, T, C)
        q, k, v = (a.reshape(B, T, self.n_head, C // self.n_head).transpose(1, 2) for a in (q, k, v))  # (B, H, T, hs)
        y = q.scaled_dot_product_attention(k, v, is_causal=True)  # (B, H, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))        # (B, T, C)


class MLP:
    def __init__(self, c):
        self.fc, self.proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def __call__(self, x):
        return self.proj(self.fc(x).relu())


class Block:
    def __init__(self, c, n_head):
        self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(c), Attention(c, n_head), nn.LayerNorm(c), MLP(c)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT:
    def __init__(self, cfg):
        c = cfg["n_embd"]
        self.tok_emb = nn.Embedding(cfg["vocab_size"], c)
        self.pos_emb = nn.Embedding(cfg["block_size"], c)
        self.blocks = [Block(c, cfg["n_head"]) for _ in range(cfg["n_layer"])]
        self.ln_f = nn.LayerNorm(c)
        self.lm_head = nn.Linear(c, cfg["vocab_size"])

    def __call__(self, idx):
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(Tensor.arange(T))   # (B, T, C)
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))                          # (B, T, V)


class TinygradPeer:
    tracemalloc = False

    def __init__(self, bc, state_dict, device="cpu"):
        self.name, self.bc = "tinygrad", bc
        self.model = GPT(bc.gpt_config())
        nn.state.load_state_dict(self.model, {k: Tensor(np.ascontiguousarray(v), device=DEVICE)
                                              for k, v in state_dict.items()}, verbose=False)
        self.opt = nn.optim.AdamW(nn.state.get_parameters(self.model), lr=1e-3)   # b1, b2, eps, wd 0.01: torch's
        model, opt = self.model, self.opt

        @TinyJit
        def train_step(x, y):
            with Context(TRAINING=1):
                opt.zero_grad()
                loss = model(x).sparse_categorical_crossentropy(y).backward()
                # realized with the update in one schedule: realized after opt.step(), the lazy loss would be
                # computed from the updated weights
                return loss.realize(*opt.schedule_step())
        self.train_step = train_step

    def versions(self):
        return {"tinygrad": importlib.metadata.version("tinygrad"), "device": DEVICE}

    def load_batch(self, x, y):
        self.x = Tensor(x.astype(np.int32), device=DEVICE, dtype=dtypes.int32).realize()   # (B, T)
        self.y = Tensor(y.astype(np.int32), device=DEVICE, dtype=dtypes.int32).realize()

    def step(self):
        return self.train_step(self.x, self.y)

    def sync(self):
        Device[DEVICE].synchronize()

    def loss_float(self, loss):
        return float(loss.item())
