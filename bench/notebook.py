"""The teaching notebook's pipeline as a standalone script: the baseline tlwork is timed against.

Independent of tlwork (it imports nothing from core/ or tui/), written from the notebook
(../shared/seed/): an ImageFolder read with PIL, ``Resize((size, size))`` + ``ToTensor`` +
``Normalize`` (CIFAR-10 mean/std) in a DataLoader with ``num_workers=0``, batch 256, fp32;
a pretrained backbone with a new 10-class head; linear probing (only the head trains, SGD
lr 1e-3, momentum 0.9) or fine-tuning (SGD lr 5e-4, StepLR(5, 0.1)); ``loss.item()`` every
batch; test accuracy at the end.

The one choice the notebook leaves open is the model under ``model.train()`` during a
probe: the notebook lets the frozen backbone's BatchNorm statistics drift. ``--bn-eval``
keeps them fixed, as tlwork does (its probe is the same model as the notebook's then).

  python bench/notebook.py --data DIR --mode linear-probe --epochs 5 --image-size 64 \\
      --backbone timm:tf_efficientnet_lite0 --weights ../shared/models/tf_efficientnet_lite0.in1k.safetensors

DIR holds train/<class>/*.jpg and test/<class>/*.jpg. Prints one JSON line with the
accuracy and the seconds spent.
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn, optim  # noqa: E402
from torchvision import transforms  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def build(backbone: str, weights: str, classes: int) -> tuple[nn.Module, str]:
    """The backbone with its weights loaded and a new ``classes``-way head; returns the head's name."""
    if backbone.startswith("timm:"):
        import timm

        model = timm.create_model(backbone[5:], pretrained=False)
        if weights != "none":
            from safetensors.torch import load_file

            model.load_state_dict(load_file(weights))
        model.reset_classifier(classes)
        return model, model.default_cfg.get("classifier", "classifier")
    model = getattr(torchvision.models, backbone)(weights=None)
    if weights != "none":
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.fc = nn.Linear(model.fc.in_features, classes)
    return model, "fc"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=("linear-probe", "finetune"), default="linear-probe")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="none")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bn-eval", action="store_true", help="keep the frozen backbone's BatchNorm in eval mode while probing")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    transform = transforms.Compose([transforms.Resize((args.image_size, args.image_size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    trainset = torchvision.datasets.ImageFolder(f"{args.data}/train", transform=transform)
    testset = torchvision.datasets.ImageFolder(f"{args.data}/test", transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=args.batch_size, shuffle=True)
    testloader = torch.utils.data.DataLoader(testset, batch_size=args.batch_size, shuffle=False)

    model, head = build(args.backbone, args.weights, len(trainset.classes))
    model = model.to(device)
    train_loop(model, head, trainloader, device, args.epochs, args.mode == "linear-probe", args.bn_eval)
    correct, total = test_accuracy(model, testloader, device)
    print(json.dumps({"accuracy": correct / total, "test_images": total, "seconds": time.perf_counter() - START}))


def train_loop(model: nn.Module, head: str, trainloader, device: torch.device, epochs: int, probe: bool, bn_eval: bool, log: bool = True) -> None:
    """The notebook's loop: freeze (probe), SGD, forward, loss, backward, step, ``loss.item()`` every batch."""
    if probe:
        for name, param in model.named_parameters():
            if not name.startswith(head + "."):
                param.requires_grad = False
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1e-3 if probe else 5e-4, momentum=0.9)
    scheduler = None if probe else optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.1)
    for epoch in range(epochs):
        model.train()
        if probe and bn_eval:
            for name, module in model.named_modules():
                if name and not name.startswith(head):
                    module.eval()
        running_loss = 0.0
        for inputs, labels in trainloader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        if scheduler is not None:
            scheduler.step()
        if log:
            print(f"[Epoch {epoch + 1}/{epochs}] loss {running_loss / len(trainloader):.4f}", flush=True)


def test_accuracy(model: nn.Module, testloader, device: torch.device) -> tuple[int, int]:
    """(correct, total) over the test loader, in eval mode without gradients."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in testloader:
            inputs, labels = inputs.to(device), labels.to(device)
            correct += (model(inputs).argmax(1) == labels).sum().item()
            total += labels.size(0)
    return correct, total

if __name__ == "__main__":
    main()
