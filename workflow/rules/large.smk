# Large images split across jobs (predict.split: auto or N; biapipe.large): one job makes the
# empty prediction store (and the image's normalization statistics), then one job per block
# predicts its chunk-aligned region into it (no two jobs write the same chunk; on SLURM they
# run in parallel, each on its GPU), then post-processing waits for every block's marker.


if SPLIT_IDS:

    rule predict_store:
        input:
            image=W.image_of,
            stats=STATS_INPUT,
        output:
            directory(f"{OUT}/predictions/{{image}}.zarr"),
        params:
            normalize=NORMALIZE_KEY,
            axes=AXES,
            predict=PREDICT_KEY,
        wildcard_constraints:
            image=smk.id_regex(SPLIT_IDS),
        log:
            f"{OUT}/logs/predict/{{image}}.log",
        run:
            stages.prepare_prediction(image=input.image, store=output[0], task=TASK,
                                      stats=input.stats[0] if input.stats else None, log=log[0])

    rule predict_block:
        input:
            model=MODEL,
            store=f"{OUT}/predictions/{{image}}.zarr",
            image=W.image_of,
        output:
            f"{OUT}/large/{{image}}/predict/{{block}}.done",
        params:
            predict=PREDICT_KEY,
            model=MODEL_STAMP,
        threads: CFG["predict"]["threads"]
        resources:
            gpu=1,
            mem_mb=int(CFG["predict"]["memory_gb"] * 1024 * 1.5),
        wildcard_constraints:
            image=smk.id_regex(SPLIT_IDS),
            block=r"\d+",
        log:
            f"{OUT}/logs/predict/{{image}}/{{block}}.log",
        run:
            stages.predict_block(model=input.model, image=input.image, store=input.store,
                                 block=int(wildcards.block), marker=output[0], task=TASK, threads=threads,
                                 log=log[0], echo=True)


if PLAN.segment_blocks:

    rule segment_store:
        input:
            prediction=f"{OUT}/predictions/{{image}}.zarr",
            blocks=W.block_markers,
        output:
            directory(f"{OUT}/large/{{image}}/segments.zarr"),
        wildcard_constraints:
            image=smk.id_regex(SPLIT_IDS),
        log:
            f"{OUT}/logs/postprocess/{{image}}/segments.log",
        run:
            stages.segment_store(prediction=input.prediction, out=output[0], task=TASK, log=log[0])

    # One block (with its halo) into the shared store, chunk-aligned like the prediction
    # blocks; postprocess_large then merges objects cut by block faces.
    rule segment_block:
        input:
            prediction=f"{OUT}/predictions/{{image}}.zarr",
            blocks=W.block_markers,
            store=f"{OUT}/large/{{image}}/segments.zarr",
            tuning=TUNING_INPUT,
        output:
            f"{OUT}/large/{{image}}/segment/{{block}}.npz",
        params:
            postprocess=smk.rerun_key(CFG["postprocess"]),
            halo=CFG["predict"]["halo"],
        resources:
            mem_mb=int(CFG["predict"]["memory_gb"] * 1024 * 1.5),
        wildcard_constraints:
            image=smk.id_regex(SPLIT_IDS),
            block=r"\d+",
        log:
            f"{OUT}/logs/postprocess/{{image}}/{{block}}.log",
        run:
            stages.segment_block(prediction=input.prediction, store=input.store, block=int(wildcards.block),
                                 out=output[0], task=TASK, log=log[0])
