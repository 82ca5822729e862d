# Post-processing thresholds tuned on the validation images (when the config asks for it).


if TUNING_INPUT:

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
            predict=PREDICT_KEY,
        threads: CFG["predict"]["threads"]
        resources:
            gpu=1,
        log:
            f"{OUT}/logs/tuning/predict/{{image}}.log",
        run:
            stages.predict(model=input.model, image=input.image, out=output[0], task=TASK, axes=AXES,
                           normalize=CFG["normalize"], predict=CFG["predict"], threads=threads, normalized=True,
                           log=log[0])

    rule tune:
        input:
            predictions=expand(f"{OUT}/tuning/predictions/{{image}}.zarr", image=VAL_IDS),
            labels=[W.train_samples[i].label for i in VAL_IDS],
        output:
            TUNING_INPUT[0],
        params:
            postprocess=smk.rerun_key(CFG["postprocess"]),
            evaluate=smk.rerun_key(CFG["evaluate"]),
            voxel_size=CFG["data"]["voxel_size"],
        log:
            f"{OUT}/logs/tune.log",
        benchmark:
            f"{OUT}/benchmarks/tune.tsv"
        run:
            stages.tune(predictions=input.predictions, labels=input.labels, out=output[0], task=TASK, log=log[0])
