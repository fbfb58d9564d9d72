"""``patchdb train``: train a CNN baseline (ResNet / UNet / UNet+attention) on a dataset."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from patchdb.baselines import (
    ARCHS,
    PADDINGS,
    PREDICTS,
    ModelConfig,
    TrainConfig,
    read_config,
    train,
)
from patchdb.errors import PatchdbError
from patchdb.store import claim_output

from .options import SEED, FiniteFloatRange, dataset_options, load_from_options, resolve_device


@click.command()
@dataset_options
@click.option("--arch", type=click.Choice(ARCHS), default="resnet", help="Network architecture.")
@click.option("--padding", type=click.Choice(PADDINGS), default="zeros", help="Convolution padding.")
@click.option("--predict", type=click.Choice(PREDICTS), default="eps",
              help="What the output convolution predicts: eps (the paper's networks) or v (eps_hat = b_t x + a_t v_hat; "
                   "same loss, bounded D at t = 1).")
@click.option("--conditional", is_flag=True, help="Class-conditional (a class embedding is added to the time embedding).")
@click.option("--width", type=click.IntRange(min=1), default=64, help="Feature channels (paper: 256).")
@click.option("--depth", type=click.IntRange(min=1), default=6, help="ResNet: conv layers (blocks); UNet: blocks per level.")
@click.option("--epochs", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Epochs to train (total, also when resuming).")
@click.option("--minutes", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Wall-time budget in minutes (total).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=128, help="Images per optimizer step.")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=1e-3, help="Initial AdamW learning rate.")
@click.option("--lr-final", type=FiniteFloatRange(min=0, min_open=True), default=1e-4, help="Learning rate at the end (exponential decay).")
@click.option("--weight-decay", type=FiniteFloatRange(min=0), default=0.0, help="AdamW weight decay.")
@click.option("--ema", type=FiniteFloatRange(min=0, max=1, max_open=True), default=0.999, help="EMA decay of the weights (0: off).")
@click.option("--seed", type=SEED, default=0, help="Seed of initialisation, batches and noise (0..2**32-1).")
@click.option("--device", default="cpu", help="cpu, cuda, cuda:N or auto.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--save-every", type=FiniteFloatRange(min=1), default=300.0, help="Seconds between checkpoints.")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Checkpoint folder.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out (same model settings).")
@click.option("--force", is_flag=True, help="Start over in a --out that holds files (replacing its checkpoint), "
                                           "and create a missing parent folder.")
def command(dataset, root, split, download, limit, only_classes, policy, arch, padding, predict, conditional, width, depth,
            epochs, minutes, batch_size, lr, lr_final, weight_decay, ema, seed, device, threads, save_every, out, resume,
            force):
    """Train a convolution-only diffusion baseline (epsilon prediction, the cosine schedule of docs/math.md)."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    if resume and force:
        raise PatchdbError("--resume continues the checkpoint in --out and --force starts over; give one of them")
    if out.is_dir() and any(out.iterdir()) and not (resume or force):
        raise PatchdbError(f"{out} already holds files; pass --resume to continue it, --force to start over, "
                           "or choose another --out")
    if resume and not (out / "train_state.pt").is_file():
        raise PatchdbError(f"--resume: {out / 'train_state.pt'} does not exist; train without --resume first")
    out = claim_output(out, force or resume, what="--out", folder=True)
    if epochs is None and minutes is None:
        epochs = 10.0
    dev = resolve_device(device)
    data = load_from_options(dataset, root, split, download, limit, only_classes, policy)
    if data.height != data.width:
        raise PatchdbError(f"the networks take square images; the dataset is {data.height}x{data.width}")
    cfg = ModelConfig(arch=arch, channels=data.channels, image_size=data.height, width=width, depth=depth,
                      padding=padding, num_classes=data.num_classes if conditional else None, predict=predict)
    tc = TrainConfig(epochs=epochs, minutes=minutes, batch_size=batch_size, lr=lr, lr_final=lr_final,
                     weight_decay=weight_decay, ema=ema, seed=seed, save_every=save_every)
    data_info = {"name": data.name, "count": len(data), "fingerprint": data.fingerprint(), "meta": data.meta,
                 "command_options": {"dataset": dataset, "split": split, "limit": limit, "only_classes": only_classes,
                                     "policy": policy}}
    if resume:
        old = read_config(out)
        if old.get("dataset", {}).get("fingerprint") not in (None, data.fingerprint()):
            raise PatchdbError(f"{out} was trained on another dataset (fingerprint differs); resume with the same data")
    click.echo(f"{arch} ({padding}, width {width}, depth {depth}{', conditional' if conditional else ''}"
               f"{', predicts v' if predict == 'v' else ''}) on "
               f"{len(data)} images of {data.name} ({data.channels}x{data.height}x{data.width}), device {dev}", err=True)
    result = train(cfg, tc, data.to_float(), data.labels, out, resume=resume, device=dev, data_info=data_info,
                   progress=True)
    click.echo(f"wrote {out}/config.json, model.pt, train_state.pt, loss.png: {result['steps']} steps "
               f"({result['epochs_done']:.2f} epochs) in {result['seconds']:.0f} s, loss {result['final_loss']:.4f}")
