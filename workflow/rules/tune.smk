# Post-processing thresholds tuned on the validation images (when the config asks for it).


if TASK.tuning_file():

    # Validation images are normalized for training, so predicting them inside the per_image
    # group would put train between two jobs of one group; they get their own rule and group.
    use rule predict as predict_for_tuning with:
        output:
            directory(f"{OUT}/tuning/predictions/{{image}}.zarr"),
        log:
            f"{OUT}/logs/tuning/predict/{{image}}.log",
        benchmark:
            f"{OUT}/benchmarks/tuning/predict/{{image}}.tsv"
        group:
            "tuning"

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
