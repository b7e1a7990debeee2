"""Target profiles as data (one TOML file per board/accelerator); see edgekit.targets."""
