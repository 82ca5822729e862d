# Tiled prediction per image. Runs in the long-lived Snakemake process (threads), so the
# model is loaded once per process and reused for every image, not once per image.
# Cluster grouping of the per-image rules lives in profiles/slurm (`groups:`), not in the
# rules: Snakemake's group checks cost O(images^2) even in local runs (docs/cluster.md).


rule predict:
    input:
        model=f"{OUT}/model/best.pt",
        image=f"{OUT}/normalized/{{image}}.zarr",
    output:
        directory(f"{OUT}/predictions/{{image}}.zarr"),
    params:
        mode=CFG["predict"]["mode"],
        tile_size=CFG["predict"]["tile_size"],
        overlap=CFG["predict"]["overlap"],
        blend=CFG["predict"]["blend"],
        precision=CFG["predict"]["precision"],
        trim=CFG["predict"]["trim"],
        tta=CFG["predict"]["tta"],
    threads: CFG["predict"]["threads"]
    resources:
        gpu=1,
    log:
        f"{OUT}/logs/predict/{{image}}.log",
    benchmark:
        f"{OUT}/benchmarks/predict/{{image}}.tsv"
    run:
        stages.run("predict", input.model, input.image, output[0], CFG, threads, log=log[0])
