"""Per-tensor jobs computed: the cheap pass, spectra, where, lens, adapter factors."""
