"""Where ``pbmodel.Item`` moves in the rename benchmark.

zodbupdate pickles the class it finds, so the target must be a real class
whose ``__module__`` is this module.
"""

import pbmodel


class Item(pbmodel.Item):
    pass
