"""A scoring script that forgot run()."""


def init():
    pass
