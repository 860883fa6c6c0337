"""Everything that touches an ``nn.Module``: layout, hooks, keys, values, templates, statistics.

Import the submodules directly (``from betaedit_plugin.plumbing.layout import ModelLayout``);
this package imports nothing heavy on its own.
"""
