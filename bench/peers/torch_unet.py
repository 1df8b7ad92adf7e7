"""The PyTorch peer of bench_train.py: a diffusers ``UNet2DModel`` shaped like our DDPM++
U-Net, trained with the same loss, optimizer and EMA on random batches.

    .venv-peers/bin/python bench/peers/torch_unet.py --config cifar10 --dtype bfloat16
    .venv-peers/bin/python bench/peers/torch_unet.py --config unet6m --steps 20 --device cpu

Prints one JSON line: img_per_s, flops_per_step, tflops_per_s, peak_mem_mb, startup_s,
params, and the settings it ran with. The step is ours, written in PyTorch:

* VP SDE (beta_min 0.1, beta_max 20), t ~ U(eps, 1), x_t = mean(t) x + std(t) z, and the
  noise-prediction loss mean ||net(x_t, 999 t) - z||^2 over every pixel, which is our
  continuous DSM loss with reduce_mean and score = -net / std;
* Adam (lr 2e-4, betas 0.9 / 0.999, eps 1e-8), global-norm clipping at 1, EMA 0.9999.

The network matches ours block for block: BigGAN-style resampling (a res block that
up/downsamples inside: diffusers' ``downsample_type='resnet'``), single-head attention
after each down res block at 16x16, one attention in the middle, and, by default, one
attention at the end of the 16x16 up level as ours has (diffusers' ``AttnUpBlock2D`` puts
one after every res block; ``--stock_up_attn`` keeps those). What stays different: our
resampling blocks have a 1x1 conv on the skip path (diffusers': none when channels stay),
so ours has ~0.3M more parameters on cifar10.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the heavy imports: startup_s counts them, as ours does

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

BETA_MIN, BETA_MAX, T_EPS = 0.1, 20.0, 1e-5
LR, BETAS, ADAM_EPS, GRAD_CLIP, EMA_RATE = 2e-4, (0.9, 0.999), 1e-8, 1.0, 0.9999

# Our configs' U-Nets in diffusers' terms; resolution of level i is image_size / 2**i.
SHAPES = {
    # configs/cifar10_ddpmpp_vp.py: nf 128, ch_mult (1, 2, 2, 2), 4 res blocks, attention
    # at 16x16, dropout 0.1.
    "cifar10": dict(image_size=32, channels=3, block_out_channels=(128, 256, 256, 256),
                    layers_per_block=4, attn_resolutions=(16,), dropout=0.1),
    # bench_train.py's unet6m: digits config with nf 64, ch_mult (1, 2, 2), 2 res blocks,
    # no attention besides the middle one, dropout 0.
    "unet6m": dict(image_size=8, channels=1, block_out_channels=(64, 128, 128),
                   layers_per_block=2, attn_resolutions=(), dropout=0.0),
}


def build_unet(shape: dict, stock_up_attn: bool = False) -> nn.Module:
    """A diffusers ``UNet2DModel`` with our U-Net's structure (see the module docstring)."""
    from diffusers import UNet2DModel

    chans = shape["block_out_channels"]
    res = [shape["image_size"] // 2**i for i in range(len(chans))]
    attn = [r in shape["attn_resolutions"] for r in res]
    down = tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn)
    up = tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn))
    model = UNet2DModel(
        sample_size=shape["image_size"], in_channels=shape["channels"],
        out_channels=shape["channels"], block_out_channels=chans,
        layers_per_block=shape["layers_per_block"], down_block_types=down, up_block_types=up,
        downsample_type="resnet", upsample_type="resnet",
        attention_head_dim=None,  # None = one head of all channels, as ours
        dropout=shape["dropout"], mid_block_scale_factor=math.sqrt(2.0),
        time_embedding_type="positional", norm_num_groups=32,
    )
    if not stock_up_attn:
        for block in model.up_blocks:
            if hasattr(block, "attentions"):
                # Ours attends once per up level, after its last res block.
                for i in range(len(block.attentions) - 1):
                    block.attentions[i] = nn.Identity()
    return model


def vp_marginal(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean coefficient and std of p_t(x | x0) of the VP SDE."""
    log_mean = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    return torch.exp(log_mean), torch.sqrt(-torch.expm1(2.0 * log_mean))


def dsm_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Continuous DSM with noise prediction, averaged over pixels and batch."""
    b = x.shape[0]
    t = T_EPS + (1.0 - T_EPS) * torch.rand(b, device=x.device)
    z = torch.randn_like(x)
    mean, std = vp_marginal(t)
    x_t = mean[:, None, None, None] * x + std[:, None, None, None] * z
    pred = model(x_t, 999.0 * t).sample
    return torch.mean(torch.square(pred.float() - z))


class Trainer:
    """One train step: loss, backward, clip, Adam, EMA; bf16 through autocast."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: str, compile_: bool):
        self.model = model
        self.device = device
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        # fused Adam is PyTorch's fastest on CUDA; foreach (the default) elsewhere.
        self.opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=ADAM_EPS,
                                    fused=device.type == "cuda")
        self.ema = [p.detach().clone() for p in params]
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                       enabled=dtype == "bfloat16")
        self.forward = torch.compile(model) if compile_ else model

    def loss(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        with self.autocast:
            return dsm_loss(model or self.forward, x)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - EMA_RATE)
        return loss.detach()


def count_flops(trainer: Trainer, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward (matmuls, convolutions and attention, each
    multiply-add 2 FLOPs), on the eager model: FlopCounterMode does not see into compiled
    graphs. The optimizer and EMA are elementwise and not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer.opt.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        trainer.loss(x, model=trainer.model).backward()
    trainer.opt.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(SHAPES), default="cifar10")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--tf32", action="store_true",
                        help="TF32 matmuls and convolutions (what XLA uses for f32 on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's")
    parser.add_argument("--stock_up_attn", action="store_true",
                        help="diffusers' attention after every up res block at 16x16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # TF32 off unless asked, for both matmuls and cuDNN (whose PyTorch default is on), so
    # float32 means float32.
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(args.seed)

    shape = SHAPES[args.config]
    model = build_unet(shape, args.stock_up_attn).to(device).train()
    # NHWC is what tensor cores want for convolutions (and what XLA uses).
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    n_params = sum(p.numel() for p in model.parameters())
    trainer = Trainer(model, device, args.dtype, args.compile)

    size, chans = shape["image_size"], shape["channels"]
    # A few random batches in [-1, 1] resident on the device: the step is timed, not a
    # data pipeline (bench_train.py feeds ours the same way for cifar10).
    batches = [
        (torch.rand(args.batch, chans, size, size, device=device) * 2 - 1)
        .contiguous(memory_format=memory_format)
        for _ in range(4)
    ]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    trainer.step(batches[0])
    sync()
    startup_s = time.perf_counter() - _T0
    for i in range(args.warmup):
        trainer.step(batches[i % len(batches)])
    sync()
    start = time.perf_counter()
    for i in range(args.steps):
        loss = trainer.step(batches[i % len(batches)])
    sync()
    s_per_step = (time.perf_counter() - start) / max(args.steps, 1)
    peak_mb = peak_memory_mb(device)
    flops = count_flops(trainer, batches[0])
    result = {
        "config": args.config, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": args.dtype, "tf32": args.tf32,
        "compile": args.compile, "batch": args.batch, "params": n_params,
        "startup_s": startup_s, "s_per_step": s_per_step,
        "img_per_s": args.batch / s_per_step, "flops_per_step": flops,
        "tflops_per_s": flops / s_per_step / 1e12, "peak_mem_mb": peak_mb,
        "loss": float(loss),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
