"""One module per tab, each with `build(shared)`; see webui.shared for the contract."""
