"""The portability canary: 40 SGD steps of small_resnet with the paper's loss (`ours`) on the first 512 images of
Fashion-MNIST-LT (IF 100), no augmentation, one thread; prints the SHA-1 of the final weights, optimizer state and
loss buffers with this process's numeric fingerprint, as JSON. tests/test_numerics.py runs it and compares the hash
with tests/canary.json, made under the AVX2 pins: equal on every x86-64 machine with AVX2 when pinned.
`python tests/canary.py --write` rewrites tests/canary.json (only after a change that is meant to change the bits)."""
import hashlib, json, sys
from pathlib import Path

from ltpaper.numerics import fingerprint, pin

pin()                                   # before torch loads (LTPAPER_NUMERICS=native: the processor's own kernels)
import torch

from ltpaper.data import build_dataset
from ltpaper.losses import build_loss
from ltpaper.models import build_model

STEPS, BATCH, IMAGES = 40, 64, 512


def canary() -> dict:
    torch.set_num_threads(1)
    ds = build_dataset('fmnist_lt', imbalance_factor=100)
    x = (ds.images[:IMAGES].float() / 255 - ds.mean[0]) / ds.std[0]
    y = ds.targets[:IMAGES]
    torch.manual_seed(0)
    model = build_model('small_resnet', ds.num_classes, in_channels=1)
    loss_fn = build_loss('ours', ds.class_counts)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(STEPS):
        i = torch.arange(step * BATCH, (step + 1) * BATCH) % IMAGES
        loss = loss_fn(model(x[i]), y[i], i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
    state = [*model.state_dict().values(), *loss_fn.state_dict().values(),
             *(opt.state[p]['momentum_buffer'] for p in model.parameters())]
    h = hashlib.sha1(b''.join(t.detach().contiguous().numpy().tobytes() for t in state)).hexdigest()[:16]
    return dict(hash=h, loss=loss.item(), steps=STEPS, batch=BATCH, images=IMAGES, fingerprint=fingerprint())


if __name__ == '__main__':
    out = canary()
    if '--write' in sys.argv[1:]:
        (Path(__file__).parent/'canary.json').write_text(json.dumps(out, indent=1) + '\n')
    print(json.dumps(out))
