import math

import torch
import torch.nn as nn
from torch.nn import functional as F

# Lecture-style modules, written for torch (our words, the lecture's and its notebooks' structure). The tests build
# them twice, from this same text: under torch, and with only the three import lines above swapped for
# tinygrad_gpt's (tests/test_lecture_code.py). Hyperparameters come from a dict `hp` instead of globals.


class Head(nn.Module):
    """one head of self-attention; `scale`: 'head' (k.shape[-1]**-0.5, the final gpt.py), 'embd' (C**-0.5, the
    notebooks'), 'div' (divided by sqrt(head size))"""

    def __init__(self, hp, head_size, scale='head'):
        super().__init__()
        self.key = nn.Linear(hp['n_embd'], head_size, bias=False)
        self.query = nn.Linear(hp['n_embd'], head_size, bias=False)
        self.value = nn.Linear(hp['n_embd'], head_size, bias=False)
        self.register_buffer('tril', torch.tril(torch.ones(hp['block_size'], hp['block_size'])))
        self.dropout = nn.Dropout(hp['dropout'])
        self.scale = scale

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        if self.scale == 'head':
            wei = q @ k.transpose(-2, -1) * k.shape[-1]**-0.5
        elif self.scale == 'embd':
            wei = q @ k.transpose(-2, -1) * C**-0.5
        else:
            wei = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)
        out = wei @ v
        return out


class PeekingHead(Head):
    """a head that keeps its attention weights (a learner plotting them): they must be read as computed"""

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1]**-0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))
        wei = F.softmax(wei, dim=-1)
        self.entropy = -(wei * (wei + 1e-9).log()).sum(-1).mean()
        out = self.dropout(wei) @ self.value(x)
        return out


class MultiHeadAttention(nn.Module):

    def __init__(self, hp, num_heads, head_size, head=Head, **kw):
        super().__init__()
        self.heads = nn.ModuleList([head(hp, head_size, **kw) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, hp['n_embd'])
        self.dropout = nn.Dropout(hp['dropout'])

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        out = self.dropout(self.proj(out))
        return out


class CausalSelfAttention(nn.Module):
    """what a learner writes next (nanoGPT's shape): one qkv Linear, heads as a 4-D view, SDPA"""

    def __init__(self, hp):
        super().__init__()
        self.c_attn = nn.Linear(hp['n_embd'], 3 * hp['n_embd'])
        self.c_proj = nn.Linear(hp['n_embd'], hp['n_embd'])
        self.n_head = hp['n_head']
        self.dropout = hp['dropout']
        self.resid_dropout = nn.Dropout(hp['dropout'])

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class FeedFoward(nn.Module):

    def __init__(self, hp, act='relu'):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hp['n_embd'], 4 * hp['n_embd']),
            nn.ReLU() if act == 'relu' else nn.GELU(),
            nn.Linear(4 * hp['n_embd'], hp['n_embd']),
            nn.Dropout(hp['dropout']),
        )

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):

    def __init__(self, hp, variant):
        super().__init__()
        head_size = hp['n_embd'] // hp['n_head']
        if variant == 'sdpa':
            self.sa = CausalSelfAttention(hp)
        elif variant == 'peek':
            self.sa = MultiHeadAttention(hp, hp['n_head'], head_size, head=PeekingHead)
        else:
            self.sa = MultiHeadAttention(hp, hp['n_head'], head_size, scale=variant)
        self.ffwd = FeedFoward(hp, act='gelu' if variant == 'sdpa' else 'relu')
        self.ln1 = nn.LayerNorm(hp['n_embd'])
        self.ln2 = nn.LayerNorm(hp['n_embd'])

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        x = x + self.ffwd(self.ln2(x))
        return x


class GPTLanguageModel(nn.Module):
    """variant: 'head', 'embd', 'div' (the Head's scale), 'peek' (PeekingHead), 'sdpa' (CausalSelfAttention)"""

    def __init__(self, hp, variant='head'):
        super().__init__()
        self.block_size = hp['block_size']
        self.token_embedding_table = nn.Embedding(hp['vocab_size'], hp['n_embd'])
        self.position_embedding_table = nn.Embedding(hp['block_size'], hp['n_embd'])
        self.blocks = nn.Sequential(*[Block(hp, variant) for _ in range(hp['n_layer'])])
        self.ln_f = nn.LayerNorm(hp['n_embd'])
        self.lm_head = nn.Linear(hp['n_embd'], hp['vocab_size'])
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
        tok_emb = self.token_embedding_table(idx)
        pos_emb = self.position_embedding_table(torch.arange(T))
        x = tok_emb + pos_emb
        x = self.blocks(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)
        if targets is None:
            loss = None
        else:
            B, T, C = logits.shape
            logits = logits.view(B * T, C)
            targets = targets.view(B * T)
            loss = F.cross_entropy(logits, targets)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.block_size:]
            logits, loss = self(idx_cond)
            logits = logits[:, -1, :]
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


class BigramLanguageModel(nn.Module):

    def __init__(self, vocab_size):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)
        if targets is None:
            loss = None
        else:
            B, T, C = logits.shape
            logits = logits.view(B*T, C)
            targets = targets.view(B*T)
            loss = F.cross_entropy(logits, targets)
        return logits, loss


class LayerNorm1d:
    """the notebook's hand-written LayerNorm (not a Module): mean and var over the features"""

    def __init__(self, dim, eps=1e-5):
        self.eps = eps
        self.gamma = torch.ones(dim)
        self.beta = torch.zeros(dim)

    def __call__(self, x):
        xmean = x.mean(1, keepdim=True)
        xvar = x.var(1, keepdim=True)
        xhat = (x - xmean) / torch.sqrt(xvar + self.eps)
        self.out = self.gamma * xhat + self.beta
        return self.out

    def parameters(self):
        return [self.gamma, self.beta]


def averaging_three_ways(B, T, C):
    """the notebook's 'mathematical trick in self-attention': a running mean over time, three ways"""
    x = torch.randn(B, T, C)
    xbow = torch.zeros((B, T, C))
    for b in range(B):
        for t in range(T):
            xprev = x[b, :t+1]
            xbow[b, t] = torch.mean(xprev, 0)
    wei = torch.tril(torch.ones(T, T))
    wei = wei / wei.sum(1, keepdim=True)
    xbow2 = wei @ x
    tril = torch.tril(torch.ones(T, T))
    wei = torch.zeros((T, T))
    wei = wei.masked_fill(tril == 0, float('-inf'))
    wei = F.softmax(wei, dim=-1)
    xbow3 = wei @ x
    return x, xbow, xbow2, xbow3, torch.allclose(xbow, xbow2), torch.allclose(xbow, xbow3)
