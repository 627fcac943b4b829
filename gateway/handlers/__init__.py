"""HTTP handlers, one module per endpoint family; each parses, calls the core and renders."""
