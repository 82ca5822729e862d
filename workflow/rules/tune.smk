# Post-processing thresholds tuned on the validation images (when the config asks for it).


if TASK.tuning_file():

    # Validation images are normalized for training, so predicting them inside the per_image
    # group would put train between two jobs of one group; they get their own rule (and, on a
    # cluster, their own group: profiles/slurm).
    rule predict_for_tuning:
        input:
            model=f"{OUT}/model/best.pt",
            image=f"{OUT}/normalized/{{image}}.zarr",
        output:
            directory(f"{OUT}/tuning/predictions/{{image}}.zarr"),
        params:
            predict=PREDICT_PARAMS,
        threads: CFG["predict"]["threads"]
        resources:
            gpu=1,
        log:
            f"{OUT}/logs/tuning/predict/{{image}}.log",
        run:
            stages.run("predict", input.model, input.image, output[0], CFG, threads, None, wildcards.image, True, log=log[0])

    rule tune:
        input:
            predictions=expand(f"{OUT}/tuning/predictions/{{image}}.zarr", image=VAL_IDS),
            labels=[SAMPLES[i].label for i in VAL_IDS],
        output:
            TASK.tuning_file(),
        params:
            postprocess=CFG["postprocess"],
            evaluate=CFG["evaluate"],
            voxel_size=CFG["data"]["voxel_size"],
        log:
            f"{OUT}/logs/tune.log",
        benchmark:
            f"{OUT}/benchmarks/tune.tsv"
        run:
            stages.run("tune", input.predictions, input.labels, output[0], CFG, log=log[0])
