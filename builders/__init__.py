"""One module per library: the neutral ModelSpec -> that library's own idiomatic model.

Each builder module defines:
    NAME            the framework's name on the command line
    versions()      {package: version} of what it runs on
    build(spec)     the library's native model, with the spec's weights loaded
    layer_outputs(model, spec, x)
                    forward pass in inference mode on x (float32, canonical NCHW); returns
                    {layer name: output in the canonical layout} for every layer of spec

Framework imports happen inside those functions, so this package can be imported anywhere.
Layout conversions and library quirks live in the builder of that library and nowhere else.
"""

# framework name -> (builder module, worker environment)
FRAMEWORKS = {
    "keras-theano": ("builders.keras_theano", "theano"),
    "keras-tensorflow": ("builders.keras_tensorflow", "main"),
    "pytorch": ("builders.pytorch", "main"),
    "tflearn": ("builders.tflearn", "main"),
    "tensorflow": ("builders.tensorflow", "main"),
    "tensorlayer": ("builders.tensorlayer", "main"),
}


class Unsupported(Exception):
    """The model uses something this library's builder cannot express faithfully."""
