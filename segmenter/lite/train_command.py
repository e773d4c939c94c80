"""`medsam3-agent train-lite`: cache embeddings, fit, validate, calibrate presence, write weights + thresholds +
model card."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with <dataset>/manifest.jsonl")
    parser.add_argument("--out", type=Path, default=Path("runs/lite"), help="weights, model card, train state")
    parser.add_argument("--cache", type=Path, default=Path(".cache/lite"), help="embedding cache (resumable)")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated dataset folders (default: the seven MedSAM3-Lite is trained on)")
    parser.add_argument("--max-per-dataset", type=int, default=260, help="cap on train items per dataset (0: all)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from these trained concept weights (e.g. the shipped ones), not stock LiteMedSAM")
    parser.add_argument("--replay", default="",
                        help="comma-separated datasets the --init-from weights learnt, mixed in against forgetting")
    parser.add_argument("--replay-per-dataset", type=int, default=20, help="train items per --replay dataset")
    parser.add_argument("--val-max-per-dataset", type=int, default=0, help="cap on val items per dataset (0: all)")
    parser.add_argument("--val-replay-per-dataset", type=int, default=0,
                        help="cap on val items per --replay dataset (0: all)")
    parser.add_argument("--min-positives", type=int, default=200,
                        help="positives per dataset per epoch (a small dataset's are repeated up to this)")
    parser.add_argument("--gate-epochs", type=int, default=40, help="presence gate epochs after the decoder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4, help="decoder learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="concept head / presence learning rate")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default=None, choices=["auto", "torch", "openvino", "onnx"],
                        help="image encoder runtime for the embedding cache (default: MEDSAM3_ENCODER, else auto)")
    parser.add_argument("--presence-recall", type=float, default=0.97,
                        help="after training, each concept's presence threshold keeps this share of its val "
                             "positives (presence_thresholds.json beside the weights; calibrate-presence redoes it)")
    parser.add_argument("--augment", default="", metavar="DATASET=N[,DATASET=N]",
                        help="cache N augmented copies (new framing, tone, blur, JPEG) of each train item of DATASET, "
                             "e.g. amos_ct=8; each copy costs one encode, once")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def parse_augment(text: str, datasets: list[str]) -> dict[str, int]:
    """``amos_ct=8,chaos_mr_t2=1`` -> {"amos_ct": 8, "chaos_mr_t2": 1}; only datasets being trained on."""
    copies: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"--augment {part!r}: write DATASET=N with a whole number N, e.g. amos_ct=8")
        if name.strip() not in datasets:
            raise ValueError(f"--augment {part!r}: {name.strip()!r} is not among --datasets ({', '.join(datasets)})")
        copies[name.strip()] = int(count)
    return copies


def main(args: argparse.Namespace) -> int:
    import torch

    from segmenter.lite.dataset import DEFAULT_DATASETS  # here, not in configure: it loads the model code
    from segmenter.lite.train import TrainConfig, run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    if args.init_from is not None and not args.init_from.is_file():
        raise FileNotFoundError(f"--init-from {args.init_from}: no such weight file")
    datasets = [d for d in args.datasets.split(",") if d] if args.datasets else list(DEFAULT_DATASETS)
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        cache=args.cache,
        datasets=datasets,
        max_per_dataset=args.max_per_dataset or None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        max_minutes=args.max_minutes,
        seed=args.seed,
        init_from=args.init_from,
        replay=[d for d in args.replay.split(",") if d],
        replay_per_dataset=args.replay_per_dataset,
        val_max_per_dataset=args.val_max_per_dataset or None,
        val_replay_per_dataset=args.val_replay_per_dataset or None,
        gate_epochs=args.gate_epochs,
        min_positives_per_dataset=args.min_positives,
        encoder=args.encoder,
        presence_recall=args.presence_recall,
        augment=parse_augment(args.augment, datasets),
    )
    report = run_training(cfg, log=lambda m: print(m, flush=True))
    print(f"weights: {cfg.out / 'medsam3_lite.safetensors'}  model card: {cfg.out / 'MODEL_CARD.md'}")
    return 0 if report["progress"]["finished"] else 3


if __name__ == "__main__":  # python -m segmenter.lite.train_command ... (same as the subcommand)
    import sys

    _parser = argparse.ArgumentParser(prog="medsam3-agent train-lite")
    configure(_parser)
    sys.exit(main(_parser.parse_args()))
