"""Rung 2: one head of self-attention. Tokens get an embedding and a position embedding; each position then asks
(query) and offers (key, value), and a causal mask keeps it from reading the future. The head's output goes through
a linear layer to the vocabulary."""
import tinygrad_gpt as torch
import tinygrad_gpt.nn as nn
from tinygrad_gpt.nn import functional as F

from .r1_bigram import Model as Bigram

HP = dict(batch_size=32, block_size=8, max_iters=5000, learning_rate=1e-3, n_embd=32, n_head=1, n_layer=1,
          dropout=0.0)


class Head(nn.Module):
    """one head of causal self-attention"""

    def __init__(self, hp, head_size):
        super().__init__()
        self.key = nn.Linear(hp['n_embd'], head_size, bias=False)
        self.query = nn.Linear(hp['n_embd'], head_size, bias=False)
        self.value = nn.Linear(hp['n_embd'], head_size, bias=False)
        self.register_buffer('tril', torch.tril(torch.ones(hp['block_size'], hp['block_size'])))
        self.dropout = nn.Dropout(hp['dropout'])

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)                                               # (B, T, hs)
        q = self.query(x)                                             # (B, T, hs)
        wei = q @ k.transpose(-2, -1) * k.shape[-1]**-0.5             # (B, T, T) affinities, unit variance
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))  # no looking ahead
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)                                             # (B, T, hs)
        return wei @ v                                                # (B, T, hs)


class LanguageModel(Bigram):
    """token + position embeddings, a body (each rung's), a linear layer to the vocabulary; the loss and generation
    are the bigram's"""

    def __init__(self, hp):
        nn.Module.__init__(self)
        self.block_size = hp['block_size']
        self.token_embedding_table = nn.Embedding(hp['vocab_size'], hp['n_embd'])
        self.position_embedding_table = nn.Embedding(hp['block_size'], hp['n_embd'])
        self.lm_head = nn.Linear(hp['n_embd'], hp['vocab_size'])

    def body(self, x):
        return x

    def logits(self, idx):
        B, T = idx.shape
        tok_emb = self.token_embedding_table(idx)                     # (B, T, C)
        pos_emb = self.position_embedding_table(torch.arange(T))      # (T, C)
        return self.lm_head(self.body(tok_emb + pos_emb))             # (B, T, vocab)


class Model(LanguageModel):

    def __init__(self, hp):
        super().__init__(hp)
        self.sa_head = Head(hp, hp['n_embd'])                         # one head as wide as the embedding

    def body(self, x):
        return self.sa_head(x)
