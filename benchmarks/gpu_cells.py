"""The checks of the notebooks' `#| gpu` cells, for a GPU machine without nbdev: every loss on CUDA in bf16 and
float32 (values equal to the CPU's in float32), and a short training step of each model on CUDA."""
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ltpaper.losses import build_loss, LOSSES

assert torch.cuda.is_available(), 'needs a CUDA device'
counts = [500, 200, 80, 30, 10, 3]
g = torch.Generator().manual_seed(0)
z = torch.randn(64, 6, generator=g) * 2; y = torch.randint(0, 6, (64,), generator=g)
for name in LOSSES:
    l = build_loss(name, counts).cuda()
    v = l(z.cuda().to(torch.bfloat16), y.cuda())
    assert torch.isfinite(v) and v.device.type == 'cuda', name
    if name != 'equalization':
        a, b = build_loss(name, counts), build_loss(name, counts).cuda()
        va, vb = a(z, y), b(z.cuda(), y.cuda())
        torch.testing.assert_close(va, vb.cpu(), rtol=1e-4, atol=1e-5)
    print(f'loss {name:18s} ok on {torch.cuda.get_device_name()}')
from ltpaper.models import build_model
for m, shape in [('resnet32', (8, 3, 32, 32)), ('small_resnet', (8, 1, 28, 28)), ('resnet50', (2, 3, 64, 64))]:
    net = build_model(m, 10, shape[1]).cuda()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = net(torch.randn(shape, device='cuda'))
    out.float().sum().backward()
    print(f'model {m:12s} forward/backward ok, out {tuple(out.shape)}')
print('gpu cells: all passed')
