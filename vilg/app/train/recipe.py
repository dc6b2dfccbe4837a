"""What a preset means for each training stage: the data pools, the text corpus, and the model
and training configs (shared by `train_run`, the prepared-shard path and `vilg plan`)."""

from __future__ import annotations

from vilg.app.data import prompts, shapes
from vilg.app.data.pool import Pool, shapes_pool
from vilg.app.data.user import user_pool
from vilg.app.model.transformer import GPTConfig
from vilg.app.model.vqgan import VQConfig
from vilg.app.train.trainer import TrainConfig


def build_pools(preset: dict, data: str | None, seed: int) -> tuple[Pool, Pool]:
    d = preset["data"]
    if data is None:
        return (
            # training may lean on the harder many-object scenes; val keeps the benchmark's mix
            shapes_pool(
                "train",
                d["train_size"],
                seed,
                d["image_size"],
                d.get("train_count_probs", shapes.COUNT_PROBS),
            ),
            shapes_pool("val", d["val_size"], seed, d["image_size"]),
        )
    pool = user_pool(data, d["image_size"], limit=d["train_size"] + d["val_size"])
    nv = min(d["val_size"], max(1, len(pool) // 10))
    split = len(pool) - nv

    def mk(sl):
        return Pool(pool.images[sl], {"raw": pool.texts["raw"][sl]}, None, pool.stats)

    return mk(slice(0, split)), mk(slice(split, None))


def train_config(preset: dict, stage: str, seed: int, progress: bool = True) -> TrainConfig:
    """A stage's TrainConfig; end2end fine-tunes the generator, so it takes the generator's
    recipe with any end2end.train.* entries on top."""
    train = (
        preset[stage]["train"]
        if stage != "end2end"
        else {
            **preset["generator"]["train"],
            **preset.get("end2end", {}).get("train", {}),
        }
    )
    return TrainConfig(**{**train, "seed": seed, "progress": progress})


def vq_config(preset: dict) -> VQConfig:
    return VQConfig(image_size=preset["data"]["image_size"], **preset["vq"]["model"])


def generator_config(
    preset: dict, vq_cfg: VQConfig, text_vocab: int, text_len: int, stage: str = "generator"
) -> GPTConfig:
    """The generator of a preset; `vilg plan` builds the same one without data."""
    return GPTConfig(
        text_vocab=text_vocab,
        image_vocab=vq_cfg.codebook_size,
        text_len=text_len,
        grid=vq_cfg.grid,
        code_dim=vq_cfg.code_dim if stage == "end2end" else 0,
        **preset["generator"]["model"],
    )


def any_order_prompts(preset: dict) -> bool:
    """Whether the text->image prompts of the shapes data come in any object order or wording
    (generator.tasks.t2i_shuffle / t2i_paraphrase; off by default: see docs/prompts.md)."""
    tasks = preset["generator"].get("tasks", {})
    return bool(tasks.get("t2i_shuffle", False) or tasks.get("t2i_paraphrase", 0.0))


def corpus(pool: Pool, seed: int) -> list[str]:
    texts = [t for caps in pool.texts.values() for t in caps]
    if pool.scenes is not None:  # questions / answers and every wording of the prompt grammar
        texts += prompts.corpus_text(seed, 2000)
    return texts
