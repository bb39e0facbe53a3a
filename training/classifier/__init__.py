"""tokfilter.training.classifier: fine-tune the token and document classifiers (train), export them to ONNX (export), score them on the test split (evaluate)."""
