"""SARE, a sharpness-aware unlearning method, shipped as a halluc-bench plug-in.

``sare.sam`` contains the targeted-SAM optimizer (torch only), and ``sare.unlearner`` contains
the ``SARE`` unlearner, which halluc-bench finds through the ``halluc_bench.unlearners`` entry
point. Importing this package registers nothing.
"""
