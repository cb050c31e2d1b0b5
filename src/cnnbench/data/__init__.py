"""Data layer: raw formats -> decoded uint8 cache -> batches on the device."""
