# Tiled prediction per image. Runs in the long-lived Snakemake process (threads), so the
# model is loaded once per process and reused for every image, not once per image.
# Test images are normalized inside this job (no normalize job per test image: planning
# thousands of images stays fast, and predict reruns whenever normalization would).
# Cluster grouping of the per-image rules lives in profiles/slurm (`groups:`), not in the
# rules: Snakemake's group checks cost O(images^2) even in local runs (docs/cluster.md).
# Large images split across jobs (predict.split) use rules/large.smk instead.


rule predict:
    input:
        model=f"{OUT}/model/best.pt",
        image=TEST_IMAGE,
        stats=STATS_INPUT,
    output:
        directory(f"{OUT}/predictions/{{image}}.zarr"),
    params:
        normalize=CFG["normalize"],
        axes=CFG["data"]["axes"],
        predict=PREDICT_PARAMS,
    threads: CFG["predict"]["threads"]
    resources:
        gpu=1,
    wildcard_constraints:
        image=NOT_SPLIT,
    log:
        f"{OUT}/logs/predict/{{image}}.log",
    run:
        stages.run("predict", input.model, input.image, output[0], CFG, threads, (input.stats[0] if input.stats else None), wildcards.image, log=log[0])
