"""The reference's pretraining input pipeline (main_pretrain.py: ImageFolder,
RandomResizedCrop(224, scale=(0.2, 1.0), bicubic), RandomHorizontalFlip, ToTensor,
Normalize) through a DataLoader of batch 64 with N workers: images per second over an
epoch, after a first epoch that warms the page cache. The figure the `loader` example is
compared with, side by side on one machine (see docs/data.md's loader table).

    /tmp/torchvenv/bin/python tools/loader-bench/torchvision_loader.py DIR WORKERS
"""
import sys
import time

import torch
from torchvision import datasets, transforms

root, workers = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
transform = transforms.Compose([
    transforms.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.RandomHorizontalFlip(),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])
data = datasets.ImageFolder(root, transform=transform)
loader = torch.utils.data.DataLoader(data, batch_size=64, num_workers=workers, shuffle=True,
                                     drop_last=True, persistent_workers=workers > 0)
for epoch in range(2):
    start, images = time.perf_counter(), 0
    for x, _ in loader:
        images += x.shape[0]
    seconds = time.perf_counter() - start
print(f'{{"loader":"torchvision {torch.__version__.split("+")[0]}","workers":{workers},"images":{images},"img_per_s":{images / seconds:.1f}}}')
