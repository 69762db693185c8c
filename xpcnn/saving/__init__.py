"""The checkpoint file format: an .npz archive with a JSON header, written atomically, read
without pickle (no knowledge of models: :meth:`xpcnn.Sequential.save` fills it)."""
