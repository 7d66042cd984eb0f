"""cpool's ONNX converters, one module per layer family (the layer module of the same
name): pooling, conv, linear, activation, normalization, binned, unpool, fractional, roi,
sequence. cpool.onnx.registry imports them all on first use."""
