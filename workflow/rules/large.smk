# Large images split across jobs (predict.split: auto or N; biapipe.large): one job makes the
# empty prediction store (and the image's normalization statistics), then one job per block
# predicts its chunk-aligned region into it (no two jobs write the same chunk; on SLURM they
# run in parallel, each on its GPU), then post-processing waits for every block's marker.


if SPLIT_IDS:

    rule predict_store:
        input:
            image=image_of,
            stats=STATS_INPUT,
        output:
            directory(f"{OUT}/predictions/{{image}}.zarr"),
        params:
            normalize=CFG["normalize"],
            axes=CFG["data"]["axes"],
            predict=PREDICT_PARAMS,
        wildcard_constraints:
            image=_id_regex(SPLIT_IDS, exclude=False),
        log:
            f"{OUT}/logs/predict/{{image}}.log",
        run:
            stages.run("prepare_prediction", input.image, output[0], CFG, (input.stats[0] if input.stats else None), log=log[0])

    rule predict_block:
        input:
            model=f"{OUT}/model/best.pt",
            store=f"{OUT}/predictions/{{image}}.zarr",
            image=image_of,
        output:
            f"{OUT}/large/{{image}}/predict/{{block}}.done",
        params:
            predict=PREDICT_PARAMS,
        threads: CFG["predict"]["threads"]
        resources:
            gpu=1,
            mem_mb=int(CFG["predict"]["memory_gb"] * 1024 * 1.5),
        wildcard_constraints:
            image=_id_regex(SPLIT_IDS, exclude=False),
            block=r"\d+",
        log:
            f"{OUT}/logs/predict/{{image}}/{{block}}.log",
        run:
            stages.run("predict_block", input.model, input.image, input.store, int(wildcards.block), output[0], CFG, threads, log=log[0])
