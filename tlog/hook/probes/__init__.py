"""Zero-code instrumentation, one module per capability.

``tlog.hook.torch_probe.install`` wires the torch ones in once the script
imports torch; ``args`` is installed when the script imports argparse.  Only
``args`` may be imported without torch.
"""
