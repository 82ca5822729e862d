# Training: one job per experiment, on a GPU when there is one.


rule train:
    input:
        train_images=expand(f"{OUT}/normalized/{{image}}.zarr", image=TRAIN_IDS),
        train_targets=expand(f"{OUT}/targets/{{image}}.zarr", image=TRAIN_IDS),
        val_images=expand(f"{OUT}/normalized/{{image}}.zarr", image=VAL_IDS),
        val_targets=expand(f"{OUT}/targets/{{image}}.zarr", image=VAL_IDS),
    output:
        best=f"{OUT}/model/best.pt",
        last=f"{OUT}/model/last.pt",
        history=f"{OUT}/model/history.csv",
        curve=f"{OUT}/model/training_curve.png",
    params:
        train=_train_params(),
        workflow=CFG["workflow"],
        seed=CFG["seed"],
        targets=CFG["targets"],
        ndim=CFG["ndim"],
    threads: CFG["train"]["threads"]
    resources:
        gpu=1,
    log:
        f"{OUT}/logs/train.log",
    benchmark:
        f"{OUT}/benchmarks/train.tsv"
    conda:
        "../../environment.yml"
    script:
        "../scripts/train.py"
