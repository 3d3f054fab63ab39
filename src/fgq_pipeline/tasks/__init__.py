"""Task functions (config and the run they log to in, metrics out), shared by the DVC stages and the
Hydra apps. Import them from their modules, so a stage loads only what it runs."""
