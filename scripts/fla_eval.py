#!/usr/bin/env python3
"""Mean next-token NLL of a student exported by `taylorcal export --to fla`, in PyTorch with
flash-linear-attention (fla 0.6.0) and transformers: the Python side of the check that an
export computes what taylorcal computes (`taylorcal eval --precision f32 --model EXPORT
--text TEXT --max-tokens N` on the same text).

usage: fla_eval.py EXPORT_DIR TEXT_FILE MAX_TOKENS [OUT_JSONL]

The first MAX_TOKENS tokens of the text (the export's tokenizer.json, no BOS) as one
sequence, float32, no autocast. fla's softmax `Attention` layer calls flash-attn's
`flash_attn_func`; where flash-attn is not installed this script substitutes PyTorch's
scaled_dot_product_attention (causal, grouped kv heads repeated) for it, and says so in
its output ("attention": "sdpa substitute").
"""
import json, sys
import torch
import torch.nn.functional as F

export, text_file, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = open(sys.argv[4], 'a') if len(sys.argv) > 4 else None

import fla  # noqa: F401  registers model_type gated_deltanet with transformers' Auto classes
import fla.layers.attn as fla_attn

attention = 'flash-attn'
if fla_attn.flash_attn_func is None:
    def sdpa_flash_attn_func(q, k, v, causal=True, window_size=(-1, -1), **_):
        assert causal and tuple(window_size) == (-1, -1), 'only causal full attention is substituted'
        rep = q.shape[2] // k.shape[2]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        k, v = (t.repeat_interleave(rep, dim=1) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    fla_attn.flash_attn_func = sdpa_flash_attn_func
    attention = 'sdpa substitute'

from transformers import AutoModelForCausalLM, AutoTokenizer

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
tok = AutoTokenizer.from_pretrained(export)
model = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32).cuda().eval()
ids = tok(open(text_file, encoding='utf-8').read(), add_special_tokens=False)['input_ids'][:max_tokens]
x = torch.tensor([ids], device='cuda')
with torch.no_grad():
    logits = model(input_ids=x).logits.float()
nll = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction='mean').item()
row = {"export": export, "tokens": len(ids), "mean_nll": nll, "attention": attention,
       "model_class": type(model).__name__, "fla": fla.__version__}
print(json.dumps(row))
if out:
    out.write(json.dumps(row) + "\n")
