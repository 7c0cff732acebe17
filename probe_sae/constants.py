"""The package version and the names of the files it writes, in one leaf module (it imports
nothing, so every layer may use it)."""

__version__ = "0.1.0.dev0"

#: a saved SAE (and the organism's weights) is a folder holding these two files
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: the two files of an SAELens SAE folder (read and written by ``probe_sae.saes.saelens``)
SAELENS_CONFIG_NAME = "cfg.json"
SAELENS_WEIGHTS_NAME = "sae_weights.safetensors"
#: the metrics log written next to a saved SAE by ``TrainResult.save``
TRAINING_LOG = "training_log.json"
#: the resolved run configuration written into a training run's output folder
RUN_CONFIG_NAME = "run.json"
#: a training checkpoint's state, and each SAE's optimizer and dead-latent tracker in it
CHECKPOINT_STATE_NAME = "trainer.json"
OPTIMIZER_TENSORS_NAME = "optimizer.safetensors"
OPTIMIZER_META_NAME = "optimizer.json"
TRACKER_NAME = "tracker.safetensors"
#: the index of an on-disk activation cache
CACHE_MANIFEST_NAME = "manifest.json"

#: ``format`` / ``format_version`` of each file kind
SAE_FORMAT, SAE_FORMAT_VERSION = "probe_sae.sae", 2
CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION = "probe_sae.checkpoint", 2
CACHE_FORMAT, CACHE_FORMAT_VERSION = "probe_sae.activation_cache", 1
ORGANISM_FORMAT, ORGANISM_FORMAT_VERSION = "probe_sae.organism", 1
RUN_FORMAT, RUN_FORMAT_VERSION = "probe_sae.run", 1
