"""Each library's own RMSprop, as read from its installed sources (not from what its trainer reports), and the
float64 reference's losses of the first steps under any of them: what the optimizer tests predict and check."""
import functools

from verify.steps import clipped, declared_rmsprop

CANONICAL = {"lr": 1e-3, "rho": 0.9, "eps": 1e-7, "eps_placement": "inside sqrt", "ms_init": 0.0,
             "grad_clip_norm": 0.0}
# native: the RMSprop the library's own API offers in the version we run, with its defaults
NATIVE = {
    "keras-theano": {**CANONICAL, "eps_placement": "outside sqrt"},  # Keras 2.3.1: w -= lr*g/(sqrt(v)+eps)
    "keras-tensorflow": CANONICAL,  # Keras 3
    "pytorch": {**CANONICAL, "lr": 1e-2, "rho": 0.99, "eps": 1e-8, "eps_placement": "outside sqrt"},
    # tf.compat.v1.train.RMSPropOptimizer under tflearn.optimizers.RMSProp; tflearn.DNN clips at global norm 5
    "tflearn": {**CANONICAL, "eps": 1e-10, "ms_init": 1.0, "grad_clip_norm": 5.0},
    "tensorflow": CANONICAL,  # tf.optimizers.RMSprop, which is Keras 3's
    "tensorlayer": CANONICAL,  # none of its own: tf.optimizers.RMSprop
}


def key(optimizer: dict) -> tuple:
    return tuple(sorted(optimizer.items()))


@functools.cache
def reference_losses(optimizer_key: tuple, steps: int = 3) -> list:
    """The float64 reference's loss of each of the first `steps` seed-2017 batches (no shuffling, dropout off),
    training from the seed model with the RMSprop `dict(optimizer_key)`."""
    import cifar10
    from spec import experiments
    from spec import training as harness
    from spec.onnx_import import import_model
    from spec.reference64 import Reference

    optimizer = dict(optimizer_key)
    experiment = experiments.load("seed-2017")
    spec = harness.without_dropout(import_model(experiments.model_path(experiment)))
    x, y, *_ = harness.datasets(cifar10.find(None), experiment)
    ref, state, losses, n = Reference(spec, spec.weights), {}, [], experiment["batch_size"]
    for k in range(steps):
        loss, grads = ref.loss_and_grads(x[k * n:(k + 1) * n], y[k * n:(k + 1) * n])
        declared_rmsprop(ref.params, clipped(grads, optimizer["grad_clip_norm"]), state, optimizer)
        losses.append(loss)
    return losses
