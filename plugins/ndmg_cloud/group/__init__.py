"""The group level (``ndmg_group``): graph statistics of every succeeded scan's connectomes,
the mean connectome, discriminability, and group.json / group.csv / group.html.

Imports ``report``, ``participant`` and ``core``.
"""
