"""The TFLite flatbuffer library: read, edit and rewrite models (the packer and targets use it)."""
