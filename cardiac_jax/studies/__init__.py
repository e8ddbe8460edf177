"""Studies beside the core: peers run in their own environments and external test beds."""
