"""PyTorch's fp32 figures for what the GPU check's bench and speed steps time: the same
matrix products, and one ViT-B MAE pretraining step at batch 64 (transformers'
ViTMAEForPreTraining, mask ratio 0.75, AdamW), each a JSON line on stdout.

Run by tools/gpu-check/run.sh when python3 has torch and transformers (the lent machines'
image does); never in CI. TF32 is off, so the products are fp32 as the engine's are.
"""

import json
import sys
import time

import torch


def median_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def matmul(batch, m, k, n, trans_a=False, trans_b=False):
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.rand((batch, k, m) if trans_a else (batch, m, k), device="cuda", generator=g)
    b = torch.rand((batch, n, k) if trans_b else (batch, k, n), device="cuda", generator=g)
    a = a.transpose(1, 2) if trans_a else a
    b = b.transpose(1, 2) if trans_b else b
    ms = median_ms(lambda: torch.matmul(a, b))
    gflops = 2.0 * batch * m * k * n / (ms * 1e-3) / 1e9
    shape = [m, k, n] if batch == 1 else [batch, m, k, n]
    print(json.dumps({"torch": "matmul", "shape": shape, "trans_a": trans_a, "trans_b": trans_b,
                      "ms": round(ms, 3), "gflops": round(gflops, 1)}), flush=True)


def mae_step(batch):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(mask_ratio=0.75, layer_norm_eps=1e-6)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.randn(batch, 3, 224, 224, device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        model(pixel_values=x).loss.backward()
        opt.step()

    ms = median_ms(step, warmup=3, reps=5)
    print(json.dumps({"torch": "pretrain_step", "preset": "mae_vit_base_patch16", "batch": batch,
                      "mask_ratio": 0.75, "ms": round(ms, 1),
                      "img_per_s": round(batch / (ms * 1e-3), 1)}), flush=True)


def main():
    if not torch.cuda.is_available():
        print(json.dumps({"torch": "unavailable", "why": "no CUDA device"}))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}), flush=True)
    for s in (1024, 2048, 4096):
        matmul(1, s, s, s)
    tokens = 64 * 197
    matmul(1, tokens, 768, 2304)
    matmul(1, tokens, 768, 3072)
    matmul(1, tokens, 3072, 768)
    matmul(1, 768, tokens, 2304, trans_a=True)
    matmul(1, 3072, tokens, 768, trans_a=True)
    matmul(64 * 12, 197, 64, 197, trans_b=True)
    matmul(64 * 12, 197, 197, 64)
    mae_step(64)
    return 0


if __name__ == "__main__":
    start = time.time()
    code = main()
    print(json.dumps({"torch": "done", "seconds": round(time.time() - start, 1)}))
    sys.exit(code)
