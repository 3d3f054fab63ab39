"""DVC stage `prepare`: make the dataset's splits available and record a manifest of them."""

from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.data.fingerprint import directory_fingerprint
from fgq_pipeline.experiment import build_datamodule, resolve_path, write_json
from fgq_pipeline.params import load_params
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage prepare")
def main() -> None:
    cfg = load_params()
    with tracking.tracked_run(cfg.mlflow.experiment, "prepare", OmegaConf.masked_copy(cfg, ["data", "seed"])):
        datamodule = build_datamodule(cfg)  # writes the splits where the dataset is made, not found
        manifest = {
            "dataset": cfg.data.name,
            "root": str(cfg.data.root),  # as configured: the lock file stays the same in every clone
            "train_images": datamodule.num_train_images,
            "test_images": datamodule.num_test_images,
            "classes": datamodule.num_classes,
            "fingerprint": directory_fingerprint(resolve_path(cfg.data.root)),
        }
        tracking.log_metrics(manifest)
        write_json(cfg.paths.data_manifest, manifest)


if __name__ == "__main__":
    main()
