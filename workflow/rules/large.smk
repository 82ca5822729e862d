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


if SEGMENT_BLOCKS:

    rule raw_labels:
        input:
            prediction=f"{OUT}/predictions/{{image}}.zarr",
            blocks=block_markers,
        output:
            directory(f"{OUT}/large/{{image}}/raw_labels.zarr"),
        wildcard_constraints:
            image=_id_regex(SPLIT_IDS),
        log:
            f"{OUT}/logs/postprocess/{{image}}/raw_labels.log",
        run:
            stages.run("raw_labels", input.prediction, output[0], log=log[0])

    # Watershed of one block (with its halo) into the shared id store, chunk-aligned like the
    # prediction blocks; postprocess_large then merges objects cut by block faces.
    rule segment_block:
        input:
            prediction=f"{OUT}/predictions/{{image}}.zarr",
            blocks=block_markers,
            raw=f"{OUT}/large/{{image}}/raw_labels.zarr",
            tuning=TUNING_INPUT,
        output:
            f"{OUT}/large/{{image}}/segment/{{block}}.npz",
        params:
            postprocess=CFG["postprocess"],
            halo=CFG["predict"]["halo"],
        resources:
            mem_mb=int(CFG["predict"]["memory_gb"] * 1024 * 1.5),
        wildcard_constraints:
            image=_id_regex(SPLIT_IDS),
            block=r"\d+",
        log:
            f"{OUT}/logs/postprocess/{{image}}/{{block}}.log",
        run:
            stages.run("segment_block", input.prediction, input.raw, int(wildcards.block), output[0], CFG, log=log[0])
