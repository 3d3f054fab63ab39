"""DVC stage `prepare`: write the dataset's train/test splits where the data module reads them."""

from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.experiment import build_datamodule
from fgq_pipeline.params import load_params


def main() -> None:
    cfg = load_params()
    with tracking.tracked_run(cfg.mlflow.experiment, "prepare", OmegaConf.masked_copy(cfg, ["data", "seed"])):
        datamodule = build_datamodule(cfg)
        datamodule.prepare_data()
        datamodule.setup()
        tracking.log_metrics({"train_images": datamodule.num_train_images, "test_images": datamodule.num_test_images})


if __name__ == "__main__":
    main()
