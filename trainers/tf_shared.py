"""What the two TensorFlow 2 trainers (raw tensorflow and tensorlayer) share.

Their tf.functions take no input_signature, so each is traced once per batch shape (twice an epoch:
the full batches and the smaller last one). An open batch size (None) would trace once, but the shape-generic
graph trained 7-10 % slower here than the concrete one (measured against benchmarks/plain), and the one
extra trace lands in the first epoch, which is reported apart."""
from builders import layouts
from spec.training import LOSS_CLIP
from trainers import masks


def loss_and_correct(tf, p, y, logits: bool = False):
    """Canonical mean categorical cross-entropy on probabilities, and the number of correct predictions.
    `logits`: the model ends in logits (spec.training.ends_in_logits); the softmax over the classes is taken here."""
    p = tf.nn.softmax(p, axis=1) if logits else p
    p_y = tf.gather(p, y, axis=1, batch_dims=1)
    loss = -tf.reduce_mean(tf.math.log(tf.clip_by_value(p_y, LOSS_CLIP, 1 - LOSS_CLIP)))
    return loss, tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, axis=1), y), tf.int32))


def evaluate(tf, eval_step, x_val, y_val, batch_size: int) -> tuple:
    """(mean loss, accuracy) of eval_step over the validation set in batches, weighted by batch size."""
    total_loss, total_correct = 0.0, 0
    for i in range(0, len(x_val), batch_size):
        y = y_val[i:i + batch_size]
        loss, n_correct = eval_step(tf.constant(x_val[i:i + batch_size]), tf.constant(y))
        total_loss += float(loss) * len(y)
        total_correct += int(n_correct)
    return total_loss / len(x_val), total_correct / len(x_val)


def step_masks(tf, spec, seed: int, global_step: int, n: int) -> dict:
    """masks.step_masks for optimizer step `global_step` (batch of n), each converted to NHWC (flatten order
    (H, W, C) after a flatten) as a tf.constant: {dropout layer name: (n, ...) float32}."""
    canonical, sources = masks.step_masks(spec, seed, global_step, n), layouts.flatten_sources(spec)
    return {layer.name: tf.constant(layouts.from_canonical(canonical[layer.name], sources[i]))
            for i, layer in masks.dropout_layers(spec)}
