"""This machine's processes, as every layer above needs them: sessions, signals, the
subreaper, leftovers found by a run's marker (standard library only: it runs on SSH hosts
too)."""
