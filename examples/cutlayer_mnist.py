"""Your own model, ACP-SL's cut inside, a plain loop: python cutlayer_mnist.py [DATA_DIR]"""

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import acpsl
from acpsl.data import load_dataset

root = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ACPSL_DATA", "../shared/data")
train = load_dataset("mnist", root=root, train=True).subset(4096)
test = load_dataset("mnist", root=root, train=False).subset(2000)
epochs, batch = 2, 64
torch.manual_seed(0)  # a script may seed globally; the library never does
cut = acpsl.CutLayer("acp", total_iterations=epochs * len(train) // batch)
client = nn.Sequential(nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU())
server = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(1152, 10))
opt = torch.optim.SGD([*client.parameters(), *server.parameters()], lr=0.05, momentum=0.9)
for epoch in range(1, epochs + 1):
    for idx in torch.randperm(len(train)).split(batch):
        x, y = train.batch(idx)
        loss = F.cross_entropy(server(cut(client(x), labels=y)), y) + cut.extra_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    cut.eval()
    with torch.no_grad():
        x, y = test.batch(torch.arange(len(test)))
        acc = (server(cut(client(x))).argmax(1) == y).float().mean().item()
    cut.train()
    print(
        f"epoch {epoch}: test acc {acc:.3f}, uplink {cut.bytes_up:,} B, "
        f"downlink {cut.bytes_down:,} B, channels pruned {cut.stats()['ratio']:.2f}"
    )
