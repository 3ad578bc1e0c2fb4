"""Where a trained federation's model leaves it: packages for the Hugging Face Hub, with provenance.

The model files themselves (GaNDLF's model directory, ONNX) are written by cofe_cli/engine/gandlf_model.py,
the only place that touches torch and GaNDLF; this package only assembles and describes them.
"""
