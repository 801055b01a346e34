"""Rung 1: the bigram model. Each character predicts the next one from a table of scores: row i of a
(vocab, vocab) embedding holds the logits of whatever follows character i. No context beyond one character."""
import tinygrad_gpt as torch
import tinygrad_gpt.nn as nn
from tinygrad_gpt.nn import functional as F

# the lecture's settings for this rung
HP = dict(batch_size=32, block_size=8, max_iters=3000, learning_rate=1e-2, n_embd=32, n_head=4, n_layer=1,
          dropout=0.0)


class Model(nn.Module):

    def __init__(self, hp):
        super().__init__()
        self.block_size = hp['block_size']
        self.token_embedding_table = nn.Embedding(hp['vocab_size'], hp['vocab_size'])

    def logits(self, idx):
        return self.token_embedding_table(idx)                       # (B, T, vocab)

    def forward(self, idx, targets=None):
        logits = self.logits(idx)
        if targets is None:
            return logits, None
        B, T, C = logits.shape
        loss = F.cross_entropy(logits.view(B * T, C), targets.view(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size:])
            probs = F.softmax(logits[:, -1, :], dim=-1)               # (B, vocab)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx
