#!/usr/bin/env python3
"""Record TRL's GRPO advantages and losses on random inputs: tests/fixtures/grpo/trl_losses.json.

The Rust GRPO engine (trainer/src/grpo/) must give the numbers TRL's GRPOTrainer gives where the two
overlap. This script runs TRL's own `GRPOTrainer._compute_loss` (unbound, on a stand-in `self` that
carries only the attributes the loss reads, and whose log-prob hook returns recorded log-probs) so
that the fixture is what TRL computes, not a restatement of it. The advantages are computed with
TRL's `nanstd` and the formula of `_generate_and_score_completions` (that method needs a model and
reward functions, so it cannot be called alone).

Recorded per case: rewards, advantages for scale_rewards group/batch/none, per-token log-probs, old
and reference log-probs, the completion mask; and per loss configuration (loss_type grpo, bnpo,
dr_grpo, dapo; beta 0 and 0.04; epsilon_high 0.2 and 0.28): the aggregated loss, its gradient with
respect to the per-token log-probs, and the per-token loss (read off by aggregating with `bnpo` over
a one-hot mask, one token at a time).

Usage (from the repository root, with the venv of tools/reference/requirements.txt):
    python tools/reference/make_trl_loss_fixture.py
Deterministic (fixed seeds): running it again gives identical files.
"""

import collections
import json
import types
from pathlib import Path

import numpy as np
import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "grpo" / "trl_losses.json"
EPS_STD = 1e-4  # TRL's constant in the advantage denominator


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def stand_in(loss_type, beta, eps_low, eps_high, max_completion_length, grad_accum, logps):
    """The attributes `_compute_loss` reads, with the log-prob hook returning `logps`."""
    return types.SimpleNamespace(
        loss_type=loss_type,
        beta=beta,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        max_completion_length=max_completion_length,
        current_gradient_accumulation_steps=grad_accum,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        model=types.SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=True, steps_per_generation=grad_accum),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
    )


def trl_loss(cfg, logps, old, ref, adv, mask):
    inputs = {
        "prompt_ids": torch.zeros((mask.shape[0], 1), dtype=torch.long),
        "prompt_mask": torch.ones((mask.shape[0], 1), dtype=torch.long),
        "completion_ids": torch.zeros(mask.shape, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    return GRPOTrainer._compute_loss(stand_in(logps=logps, **cfg), None, inputs)


def advantages(rewards, group, scale):
    mean = torch.nanmean(rewards.view(-1, group), dim=1).repeat_interleave(group, dim=0)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(rewards.view(-1, group), dim=1).repeat_interleave(group, dim=0)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + EPS_STD)
    return torch.nan_to_num(adv, nan=0.0)


def case(seed, groups, group, length):
    g = torch.Generator().manual_seed(seed)
    b = groups * group
    logps = -torch.rand((b, length), generator=g, dtype=torch.float64) * 3.0
    # Old log-probs far enough from the current ones that both clip bounds are crossed.
    old = logps + (torch.rand((b, length), generator=g, dtype=torch.float64) - 0.5) * 0.8
    ref = logps + (torch.rand((b, length), generator=g, dtype=torch.float64) - 0.5) * 1.0
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
    rewards = torch.randint(0, 3, (b,), generator=g).to(torch.float64) / 2.0
    rewards[:group] = 1.0  # one group with zero variance: its advantages must be 0
    out = {
        "seed": seed,
        "group_size": group,
        "rewards": rewards.tolist(),
        "logps": logps.tolist(),
        "old_logps": old.tolist(),
        "ref_logps": ref.tolist(),
        "mask": mask.tolist(),
        "advantages": {s: advantages(rewards, group, s).tolist() for s in ("group", "batch", "none")},
        "losses": [],
    }
    adv = torch.tensor(out["advantages"]["group"], dtype=torch.float64)
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        for beta in (0.0, 0.04):
            for eps_high in (0.2, 0.28):
                cfg = dict(
                    loss_type=loss_type,
                    beta=beta,
                    eps_low=0.2,
                    eps_high=eps_high,
                    max_completion_length=length + 2,
                    grad_accum=1,
                )
                x = logps.clone().requires_grad_(True)
                loss = trl_loss(cfg, x, old, ref, adv, mask)
                loss.backward()
                per_token = torch.zeros_like(logps)
                one = dict(cfg, loss_type="bnpo")
                for i in range(b):
                    for t in range(length):
                        hot = torch.zeros_like(mask)
                        hot[i, t] = 1
                        per_token[i, t] = trl_loss(one, logps.clone(), old, ref, adv, hot).detach()
                out["losses"].append(
                    {
                        "loss_type": loss_type,
                        "beta": beta,
                        "epsilon_low": 0.2,
                        "epsilon_high": eps_high,
                        "max_completion_length": length + 2,
                        "loss": loss.item(),
                        "grad_logps": x.grad.tolist(),
                        "per_token_loss": per_token.tolist(),
                    }
                )
    return out


def main():
    torch.manual_seed(0)
    np.random.seed(0)
    data = {
        "generator": "tools/reference/make_trl_loss_fixture.py",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "advantage_eps": EPS_STD,
        "kl_bias_correction": True,
        "cases": [case(1, 2, 4, 6), case(2, 3, 3, 5)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
