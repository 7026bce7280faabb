"""PyTorch: a plain training loop (model.train(), zero_grad, backward, step) on the builder's graph module."""
from __future__ import annotations

import time

import numpy as np

import builders.pytorch as builder
from spec import ops
from spec.training import LOSS_CLIP, ends_in_logits
from trainers import masks
from workers import clock

NAME = "pytorch"


def _canonical_rmsprop():
    """torch.optim.RMSprop with epsilon inside the square root: v = rho*v + (1-rho)*g^2; w -= lr*g/sqrt(v+eps).
    torch's own step divides by sqrt(v) + eps; only the step differs, the state ('square_avg', from 0) is its own."""
    import torch

    class CanonicalRMSprop(torch.optim.RMSprop):
        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = torch.tensor(0.0)
                        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["step"] += 1
                    v = state["square_avg"]
                    v.mul_(alpha).addcmul_(p.grad, p.grad, value=1 - alpha)
                    p.addcdiv_(p.grad, v.add(eps).sqrt_(), value=-lr)

    return CanonicalRMSprop


def optimizer(params, opt: dict, report):
    import torch
    if opt["mode"] == "canonical":
        optimizer = _canonical_rmsprop()(params, lr=opt["lr"], alpha=opt["rho"], eps=opt["eps"])
        how = "torch.optim.RMSprop subclass whose step() adds eps inside the sqrt (torch adds it outside)"
        placement = "inside sqrt"
    elif opt["mode"] == "native":
        optimizer = torch.optim.RMSprop(params)  # torch's defaults: lr 1e-2, alpha 0.99, eps 1e-8
        how, placement = "", "outside sqrt"
    else:
        raise ValueError(f"unknown optimizer mode {opt['mode']!r}")
    g = optimizer.defaults
    impl = "torch.optim.RMSprop" if opt["mode"] == "native" else "CanonicalRMSprop(torch.optim.RMSprop)"
    report.optimizer(impl, g["lr"], g["alpha"], g["eps"],
                     0.0, placement, how)
    return optimizer


def loss(p, y):
    """Canonical mean categorical cross-entropy on probabilities: -mean(log(clip(p_y, 1e-7, 1 - 1e-7)))."""
    import torch
    p_y = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return -torch.log(p_y.clamp(LOSS_CLIP, 1 - LOSS_CLIP)).mean()


def _parameters(spec, model) -> dict:
    """{"<node>.<param>": (node, param, its nn.Parameter)} for every trainable parameter the registry names
    (BatchNorm's running statistics are buffers, updated by the forward pass, not by the optimizer)."""
    trainable = {(kind, p.name) for kind, op in ops.REGISTRY.items() for p in op.params if p.trainable}
    found = {f"{node.name}.{param}": (node, param, tensor) for node in spec.parametric()
             for param, tensor in builder.native_parameters(model, node).items() if (node.kind, param) in trainable}
    if len(found) != len(list(model.parameters())):
        raise RuntimeError("the model has parameters outside its spec's parameter tensors")
    return found


def _state(spec, model) -> dict:
    """{"<node>.<param>": (node, param, buffer)} of every parameter no optimizer moves (BatchNorm's running
    statistics, moved by the forward pass in training mode)."""
    return {f"{node.name}.{param}": (node, param, tensor) for node in spec.parametric()
            for param, tensor in builder.native_parameters(model, node).items() if not ops.trainable(node.kind, param)}


def _head(spec):
    """What turns the model's output into the loss's probabilities: the softmax over the classes for a model
    that ends in logits (spec.training.ends_in_logits), else nothing."""
    import torch
    return (lambda out: torch.softmax(out, dim=1)) if ends_in_logits(spec) else (lambda out: out)


def _dump(spec, found: dict, what) -> dict:
    """what(tensor) of every parameter (its .grad or itself), in the canonical layout."""
    return {key: builder.to_canonical(spec, node, param, what(tensor).detach().numpy().copy())
            for key, (node, param, tensor) in found.items()}


def build_options(config: dict) -> dict:
    """The fast path's options, and harness dropout when the run applies the harness's masks."""
    options = dict(config.get("options", {}))
    if masks.uses_harness_masks(config):
        options["dropout_masks"] = masks.HARNESS
    return options


def setup(spec, config):
    """Threads, seed and the model that trains: shared with the plain loop (benchmarks/plain), so that the
    overhead ratio compares like with like."""
    import torch
    torch.set_num_threads(config["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op parallel work of the process
        pass
    torch.manual_seed(config["seed"])  # dropout masks
    return builder.build(spec, **build_options(config))


def train(spec, data, config, report) -> None:
    import torch

    options = build_options(config)
    model = setup(spec, config)
    rmsprop = optimizer(model.parameters(), config["optimizer"], report)
    harness = options.get("dropout_masks") == masks.HARNESS  # the model's HarnessDropout modules take these masks
    holders = {node.name: model.module(node.name) for _, node in masks.dropout_layers(spec)} if harness else {}
    forward = builder.runnable(model, **options)
    y_train = torch.from_numpy(data.y_train)
    x_val, y_val = torch.from_numpy(np.ascontiguousarray(data.x_val)), torch.from_numpy(data.y_val)
    batch_size = config["batch_size"]
    dump_steps, global_step = config.get("dump_steps", 0), 0
    found = _parameters(spec, model) if dump_steps > 0 else None
    state = _state(spec, model) if dump_steps > 0 else None
    head = _head(spec)

    for epoch in range(config["epochs"]):
        loss_sum, correct, seen = 0.0, 0, 0
        model.train()
        started = clock.mark()
        for step, idx in enumerate(data.batches(epoch, batch_size)):
            x = builder.inputs(torch.from_numpy(np.ascontiguousarray(data.images(epoch, idx))), **options)
            y = y_train[torch.from_numpy(idx)]
            for name, mask in (masks.step_masks(spec, config["seed"], global_step, len(y)) if holders else {}).items():
                holders[name].mask = torch.from_numpy(mask)
            rmsprop.zero_grad()
            p = head(forward(x))
            batch = loss(p, y)
            batch.backward()
            dump = global_step < dump_steps
            if dump:
                grads = _dump(spec, found, lambda t: t.grad)
            rmsprop.step()
            if dump:
                report.step_tensors(global_step, grads, {**_dump(spec, found, lambda t: t),
                                                         **_dump(spec, state, lambda t: t)})
            global_step += 1
            batch_loss, n = batch.item(), len(y)
            report.step(epoch, step, batch_loss, n)
            loss_sum += batch_loss * n
            correct += int((p.detach().argmax(1) == y).sum())
            seen += n
        cost = clock.span(started)  # wall, CPU, steal and pressure seconds of the training steps
        train_s = cost["wall_s"]

        model.eval()
        started = time.perf_counter()
        val_loss, val_correct = 0.0, 0
        with torch.inference_mode():
            for i in range(0, len(y_val), batch_size):
                x, y = builder.inputs(x_val[i:i + batch_size], **options), y_val[i:i + batch_size]
                p = head(forward(x))
                val_loss += loss(p, y).item() * len(y)
                val_correct += int((p.argmax(1) == y).sum())
        eval_s = time.perf_counter() - started
        report.epoch(epoch, train_s, loss_sum / seen, correct / seen, eval_s,
                     val_loss / len(y_val), val_correct / len(y_val), cost=cost)
    report.trained(trained(spec, model))


def trained(spec, model) -> dict:
    """Every parameter and BatchNorm statistic of the model, canonical layout."""
    return {f"{node.name}.{param}": builder.to_canonical(spec, node, param, tensor.detach().numpy().copy())
            for node in spec.parametric() for param, tensor in builder.native_parameters(model, node).items()}
