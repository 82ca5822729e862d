# Tiled prediction per image, in the long-lived Snakemake process (threads), so the model is
# loaded once per process; test images are normalized inside this job. Cluster grouping of the
# per-image rules lives in profiles/slurm (docs/architecture.md, "start-up cost" and
# "planning cost"). Large images split across jobs (predict.split) use rules/large.smk.


rule predict:
    input:
        model=MODEL,
        image=TEST_IMAGE,
        stats=STATS_INPUT,
    output:
        directory(f"{OUT}/predictions/{{image}}.zarr"),
    params:
        normalize=NORMALIZE_KEY,
        axes=AXES,
        predict=PREDICT_KEY,
        model=MODEL_STAMP,
    threads: CFG["predict"]["threads"]
    resources:
        gpu=1,
    wildcard_constraints:
        image=NOT_SPLIT,
    log:
        f"{OUT}/logs/predict/{{image}}.log",
    run:
        stages.predict(**W.predict(input, output, wildcards, threads), log=log[0])
