"""Storage drivers: keys and bytes only (DESIGN.md, Layers). No driver knows what a manifest is."""
