"""Drop-in on the transformers people train: HF GPT-2 and BERT built from tiny configs
(no weights, no network), a word-language-model transformer (the shape of kfac-pytorch's
language-model example: Embedding, nn.TransformerEncoder, Linear decoder), and GPT-2
small's full configuration within a memory limit. A parameter counts as preconditioned
when ``step()`` changes its gradient."""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import kfac_ext

transformers = pytest.importorskip("transformers")


def _coverage(model, batches, skip=lambda name: False):
    """(preconditioned numel, numel) over the parameters not skipped, after two steps."""
    p = kfac_ext.KFACPreconditioner(model, damping=0.1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*never fired.*")
        warnings.filterwarnings("error", message=".*not preconditioned.*")
        for batch in batches:
            model.zero_grad()
            batch().backward()
            before = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
            p.step()
    params = [(n, q) for n, q in model.named_parameters() if not skip(n)]
    changed = sum(q.numel() for n, q in params if n in before and not torch.equal(q.grad, before[n]))
    return changed, sum(q.numel() for _, q in params), p


def test_gpt2_tiny_has_every_parameter_outside_layernorm_preconditioned():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=101, n_positions=24, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 101, (3, 11))
    changed, total, p = _coverage(
        model, [lambda: model(ids, labels=ids).loss] * 2, skip=lambda n: ".ln_" in n or n.startswith("transformer.ln_f")
    )
    assert changed / total >= 0.99, (changed, total)
    assert {l.name for l in p.layers if l.tied} == {"transformer.wte", "lm_head"}


def test_bert_tiny_has_every_parameter_outside_layernorm_preconditioned():
    torch.manual_seed(1)
    cfg = transformers.BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=24,
        type_vocab_size=2,
    )
    model = transformers.BertForMaskedLM(cfg)
    ids = torch.randint(0, 97, (3, 11))
    types = torch.randint(0, 2, (3, 11))  # both token types, so both rows get a gradient
    changed, total, _ = _coverage(
        model, [lambda: model(ids, token_type_ids=types, labels=ids).loss] * 2, skip=lambda n: "LayerNorm" in n
    )
    assert changed / total >= 0.99, (changed, total)


class _WordLM(nn.Module):
    """Embedding -> sinusoidal positions -> nn.TransformerEncoder -> Linear decoder."""

    def __init__(self, ntoken=53, d=16, heads=2, hidden=24, nlayers=2):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, d)
        pos = torch.arange(64)[:, None] * torch.exp(torch.arange(0, d, 2) * (-math.log(1e4) / d))
        self.register_buffer("pe", torch.cat([pos.sin(), pos.cos()], 1))
        layer = nn.TransformerEncoderLayer(d, heads, hidden, dropout=0.1)
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.decoder = nn.Linear(d, ntoken)

    def forward(self, src):  # (T, B) token ids, a causal mask as in the example
        mask = nn.Transformer.generate_square_subsequent_mask(src.shape[0])
        x = self.encoder(src) * math.sqrt(self.pe.shape[1]) + self.pe[: src.shape[0], None]
        return self.decoder(self.transformer_encoder(x, mask))


def test_word_language_model_is_fully_preconditioned_and_trains():
    torch.manual_seed(2)
    model = _WordLM()
    src = torch.randint(0, 53, (9, 4))

    def loss():
        return nn.functional.cross_entropy(model(src[:-1]).reshape(-1, 53), src[1:].reshape(-1))

    changed, total, p = _coverage(model, [loss] * 2, skip=lambda n: "norm" in n)
    assert changed == total
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():  # not a training batch: not captured
        first = float(loss())
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        p.step()
        opt.step()
    with torch.no_grad():
        assert float(loss()) < first


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_gpt2_small_config_takes_one_step_within_20_gb():
    """GPT-2 small (124 M parameters) from its default config (benchmarks/gpt2_small_step.py):
    the 50,257-wide output factor goes diagonal (named in the warning) and construction plus
    one step peak under 20 GB resident. Slow: the step decomposes 102 factors of up to 3,073."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpt2_small_step.py")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..")] + env.get("PYTHONPATH", "").split(os.pathsep)
    )
    out = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env=env, timeout=3500, check=True
    ).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines() if " " in line)
    assert int(lines["params"]) > 124_000_000
    assert "'lm_head' (G)" in lines["warning"]
    assert int(lines["peak_kib"]) * 1024 < 20e9, lines


def _kfac_pytorch_transformer():
    """kfac-pytorch's own language-model example model, when a checkout of kfac-pytorch
    sits in third_party/ (git-ignored; `git clone` it there), else None."""
    import importlib.util

    path = os.path.join(
        os.path.dirname(__file__), "..", "third_party", "kfac-pytorch", "examples", "language", "transformer.py"
    )
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("kfac_pytorch_lm_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TransformerModel


def test_kfac_pytorchs_language_model_example_is_fully_preconditioned_and_trains():
    model_cls = _kfac_pytorch_transformer()
    if model_cls is None:
        pytest.skip("no kfac-pytorch checkout in third_party/")
    torch.manual_seed(3)
    model = model_cls(ntoken=53, d_model=16, nhead=2, d_hid=24, nlayers=2, dropout=0.1)
    src = torch.randint(0, 53, (9, 4))
    mask = nn.Transformer.generate_square_subsequent_mask(8)

    def loss():
        out = model(src[:-1], mask)
        return nn.functional.cross_entropy(out.reshape(-1, 53), src[1:].reshape(-1))

    changed, total, p = _coverage(model, [loss] * 2, skip=lambda n: "norm" in n)
    assert changed == total
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        first = float(loss())
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        p.step()
        opt.step()
    with torch.no_grad():
        assert float(loss()) < first
