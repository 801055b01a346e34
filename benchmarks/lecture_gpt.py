import torch
import torch.nn as nn
from torch.nn import functional as F

# The GPT of the "Let's build GPT" lecture, written the way the lecture writes it: one Head module per attention head,
# a ModuleList of heads, a Sequential of blocks, torch's own layers. Plain torch code: benchmarks/lecture_bench.py
# runs this file as it is under torch, and with only its first three lines swapped for another engine's torch-shaped
# imports (what a user does to a lecture-style script), so nothing else here may name anything but torch. Two
# differences from the lecture: the hyperparameters come in a Hyperparameters object instead of module globals, so the
# benchmark can pick the size, and the positions are made on the device of the tokens instead of a global `device`
# (benchmarks/torch_models.py's LectureGPT, the main suite's torch-lecture engine on cpu or cuda, is this model).
#
# Dimension names: B batch, T time (sequence length, T <= block_size), C n_embd, V vocab_size, hs head size.


class Hyperparameters:
    """The lecture's hyperparameters (its defaults: the lecture's final model, 10.8M parameters)."""

    def __init__(self, vocab_size=65, batch_size=64, block_size=256, n_embd=384, n_head=6, n_layer=6, dropout=0.2,
                 learning_rate=3e-4):
        self.vocab_size = vocab_size
        self.batch_size = batch_size
        self.block_size = block_size
        self.n_embd = n_embd
        self.n_head = n_head
        self.n_layer = n_layer
        self.dropout = dropout
        self.learning_rate = learning_rate


class Head(nn.Module):
    """One head of causal self-attention."""

    def __init__(self, n_embd, head_size, block_size, dropout):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer('tril', torch.tril(torch.ones(block_size, block_size)))    # (block_size, block_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B,T,C = x.shape
        k = self.key(x)                                                     # (B, T, hs)
        q = self.query(x)                                                   # (B, T, hs)
        # affinities, scaled by the head size so they keep unit variance at initialisation
        wei = q @ k.transpose(-2,-1) * k.shape[-1]**-0.5                    # (B, T, hs) @ (B, hs, T) -> (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))       # no look at the future
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)                                                   # (B, T, hs)
        out = wei @ v                                                       # (B, T, T) @ (B, T, hs) -> (B, T, hs)
        return out


class MultiHeadAttention(nn.Module):
    """Several heads side by side, their outputs concatenated and projected back to n_embd."""

    def __init__(self, n_embd, num_heads, head_size, block_size, dropout):
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)                # (B, T, num_heads * hs)
        out = self.dropout(self.proj(out))                                  # (B, T, C)
        return out


class FeedFoward(nn.Module):
    """A linear layer 4x wider, a ReLU, and back (the lecture's spelling of the class name)."""

    def __init__(self, n_embd, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),                                  # (B, T, 4C)
            nn.ReLU(),
            nn.Linear(4 * n_embd, n_embd),                                  # (B, T, C)
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each a pre-LayerNorm residual branch."""

    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        head_size = n_embd // n_head
        self.sa = MultiHeadAttention(n_embd, n_head, head_size, block_size, dropout)
        self.ffwd = FeedFoward(n_embd, dropout)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        x = x + self.ffwd(self.ln2(x))
        return x


class GPTLanguageModel(nn.Module):

    def __init__(self, hp):
        super().__init__()
        self.block_size = hp.block_size
        self.token_embedding_table = nn.Embedding(hp.vocab_size, hp.n_embd)
        self.position_embedding_table = nn.Embedding(hp.block_size, hp.n_embd)
        self.blocks = nn.Sequential(*[Block(hp.n_embd, hp.n_head, hp.block_size, hp.dropout)
                                      for _ in range(hp.n_layer)])
        self.ln_f = nn.LayerNorm(hp.n_embd)                                 # the final layer norm
        self.lm_head = nn.Linear(hp.n_embd, hp.vocab_size)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        tok_emb = self.token_embedding_table(idx)                           # (B, T, C)
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))   # (T, C)
        x = tok_emb + pos_emb                                               # (B, T, C)
        x = self.blocks(x)                                                  # (B, T, C)
        x = self.ln_f(x)                                                    # (B, T, C)
        logits = self.lm_head(x)                                            # (B, T, V)

        if targets is None:
            loss = None
        else:
            B, T, C = logits.shape
            logits = logits.view(B*T, C)                                    # (B*T, V)
            targets = targets.view(B*T)                                     # (B*T,)
            loss = F.cross_entropy(logits, targets)
        return logits, loss

    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.block_size:]                            # (B, <= block_size)
            logits, loss = self(idx_cond)
            logits = logits[:, -1, :]                                       # (B, V): the last position only
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)              # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)                         # (B, T+1)
        return idx


def make_optimizer(model, learning_rate, fused=False):
    """The lecture's optimizer line; fused=True asks torch for its fused implementation (one kernel for all
    parameters)."""
    if fused:
        return torch.optim.AdamW(model.parameters(), lr=learning_rate, fused=True)
    return torch.optim.AdamW(model.parameters(), lr=learning_rate)


def train_step(model, optimizer, xb, yb):
    """One iteration of the lecture's training loop, after get_batch: forward, loss, backward, update."""
    logits, loss = model(xb, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@torch.no_grad()
def evaluate_loss(model, xb, yb):
    """The lecture's estimate_loss on one batch: eval mode (no dropout), no graph, back to train mode."""
    model.eval()
    logits, loss = model(xb, yb)
    model.train()
    return loss.item()
