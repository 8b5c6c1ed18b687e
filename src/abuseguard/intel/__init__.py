"""Network intelligence: MaxMind readers (geo), hosting ASNs, user-agent classes.

Import from the submodules (``abuseguard.intel.geo``, ``abuseguard.intel.hosting``) so that
each stays independent of the others' dependencies.
"""
